"""What every indexer yields, and the registry of indexers.

An indexer is a function `index(spec, ctx) -> Iterator[Candidate]`; it lists a source and yields
one Candidate per file (or per manual-download link). The catalogue turns candidates into
entries and files, keyed by (source, remote_id), so re-indexing is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CandidateFile:
    """One downloadable (or manual) file of a candidate."""

    file_name: str  # as the source names it, e.g. "learned_embeds.bin"
    url: str | None  # direct download URL; None for manual-download entries
    size: int | None = None
    sha256: str | None = None  # lower-case hex, when the source provides it
    hashes: dict[str, str] = field(default_factory=dict)  # other hashes: AutoV2, CRC32, BLAKE3, ...
    format: str | None = None  # "safetensors", "pt", "bin", "png", ... when known
    vectors: int | None = None
    widths: dict[str, int] | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    step: int | None = None
    manual: bool = False  # cannot be downloaded automatically (mega, Drive folders, ...)
    local_path: str | None = None  # for local sources
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """One catalogue entry as a source sees it."""

    remote_id: str  # stable within the source (repo id, model version id, file path, link URL)
    name: str  # the suggested trigger/file name
    files: list[CandidateFile] = field(default_factory=list)
    title: str | None = None
    description: str | None = None
    triggers: dict[str, str] = field(default_factory=dict)  # app -> trigger ("a1111": "name", "diffusers": "<tok>")
    kind: str | None = None  # "object" | "style" | "negative"
    tags: list[str] = field(default_factory=list)
    base_model: str | None = None  # declared base, e.g. "SD 1.5", "SDXL 1.0", "NAI"
    nsfw: bool | None = None  # None: take the source's flag
    licence: str | None = None
    page_url: str | None = None
    status: str = "ok"  # "ok" | "gated" | "disabled" | "empty" | "manual"
    previews: list[dict[str, Any]] = field(default_factory=list)  # {url, width, height, meta:{...}}
    extra: dict[str, Any] = field(default_factory=dict)
