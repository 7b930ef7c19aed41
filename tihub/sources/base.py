"""What every indexer yields, and the registry of indexers.

An indexer is a function `index(spec, ctx) -> Iterator[Candidate]`; it lists a source and yields
one Candidate per file (or per manual-download link). The catalogue turns candidates into
entries and files, keyed by (source, remote_id), so re-indexing is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# File suffixes a remote listing (HF tree, git tree, link page) takes as embeddings; a local
# folder (tihub.formats.EMBEDDING_SUFFIXES) also takes .png/.webp/.ckpt.
EMBED_SUFFIXES = (".pt", ".bin", ".safetensors")


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
    # the measured vectors ({encoder: float32 [n, width]}) when the file was read (local files,
    # deep sync); stored in `file_vectors` for the similarity index, never in `extra`
    vector_data: dict[str, Any] | None = field(default=None, repr=False, compare=False)


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


# --------------------------------------------------------------------------------------------
# What an indexer gets besides its SourceSpec (see tihub.sync).


class SourceUnchanged(Exception):
    """Raised by an indexer when its source has not changed since the last sync (its previous
    state, e.g. an ETag or commit, says so). The catalogue keeps the source's entries exactly as
    they are; state recorded with `ctx.set_state` before raising is still saved."""


@dataclass
class IndexContext:
    """Everything an indexer may use besides its spec.

    - `state`: what this source's indexer recorded at its last successful sync (read it);
      `set_state(key, value)` records new values (saved only if the sync succeeds).
    - `keep(remote_id)`: the item is still there and unchanged, but not yielded again (e.g. the
      HF repo sha did not move); the catalogue keeps it instead of marking it removed.
    - `partial()`: this listing is not the whole source; nothing missing is marked removed.
    - `client()`: an httpx client (tihub user agent, timeouts, no automatic redirects); use it
      with `tihub.net.stream(..., policy=ctx.policy)` so URLs and redirects are checked.
    - `deadline`: `time.monotonic()` value after which `check_deadline()` raises SourceError.
    - `progress(message, done, total)`: report progress (never required).
    - `deep`: a `tihub.deep.DeepReader` when small files should be read now (deep sync), else None.
    """

    spec: Any  # tihub.config.SourceSpec
    state: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    root: Any = None  # workspace root (pathlib.Path) for relative paths, or None
    progress_cb: Any = None  # Callable[[str, int | None, int | None], None] | None
    new_state: dict[str, Any] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)
    complete: bool = True
    deep: Any = None  # tihub.deep.DeepReader when this sync reads small files (deep sync), else None

    def __post_init__(self) -> None:
        if not self.new_state:
            self.new_state = dict(self.state)

    @property
    def policy(self) -> Any:
        from tihub.net import URLPolicy

        return URLPolicy(allow_private=bool(getattr(self.spec, "allow_private", False)))

    def client(self, **kwargs: Any) -> Any:
        """A fresh httpx.Client from `tihub.net.make_client` (close it when done)."""
        from tihub.net import make_client

        timeout = kwargs.pop("timeout", None)
        left = self.remaining()
        if left is not None and timeout is None:
            import httpx

            cap = max(1.0, left)
            timeout = httpx.Timeout(connect=min(10.0, cap), read=min(30.0, cap), write=min(30.0, cap), pool=min(10.0, cap))
        return make_client(timeout=timeout, **kwargs)

    def set_state(self, key: str, value: Any) -> None:
        self.new_state[key] = value

    def keep(self, remote_id: str) -> None:
        self.kept.add(str(remote_id))

    def partial(self) -> None:
        self.complete = False

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        import time

        return self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        """Raise SourceError once the source's deadline has passed."""
        left = self.remaining()
        if left is not None and left <= 0:
            from tihub.errors import SourceError

            raise SourceError(
                f"The source {getattr(self.spec, 'name', '?')!r} ran past its deadline; try again or sync it alone."
            )

    def progress(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if self.progress_cb is not None:
            try:
                self.progress_cb(message, done, total)
            except Exception:  # a progress display must never break a sync
                pass
