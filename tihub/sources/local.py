"""Kind `local`: a folder of embedding files (e.g. an A1111 `embeddings/` directory).

Option `path`: relative to the workspace root, or absolute. Every file with an embedding
suffix is read with the safe readers and recorded with everything it contains; a file that
cannot be read becomes an entry with status `error` and the reason, never a crash.
Incremental: a file whose size and mtime did not change since the last sync is not read again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tihub.errors import FormatError, NotAnEmbedding, NotFound, SourceError
from tihub.formats import EMBEDDING_SUFFIXES
from tihub.formats.regular import read_regular
from tihub.hashing import sha256_file
from tihub.sources.base import Candidate, CandidateFile, IndexContext, SourceUnchanged

READ_WHOLE = 64 * 1024 * 1024  # files up to this size are read once for both hash and parse
_SKIP_MARKERS = (".preview.", ".thumb.")  # A1111/Civitai preview pictures beside embeddings


def folder_of(spec: Any, root: Path | None) -> Path:
    raw = spec.get("path")
    if not raw:
        raise SourceError(f"The local source {spec.name!r} has no `path`; set one in sources.yaml.")
    p = Path(os.path.expanduser(str(raw)))
    if not p.is_absolute():
        p = Path(root or os.getcwd()) / p
    return p


def walk(folder: Path) -> list[Path]:
    """Embedding-suffixed files under `folder`, sorted; symlinked folders are not entered and
    hidden folders are skipped."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            low = fn.lower()
            if low.endswith(EMBEDDING_SUFFIXES) and not any(m in low for m in _SKIP_MARKERS):
                out.append(Path(dirpath) / fn)
    return out


def index(spec: Any, ctx: IndexContext) -> Iterator[Candidate]:
    folder = folder_of(spec, ctx.root)
    if not folder.is_dir():
        raise SourceError(
            f"The local source {spec.name!r} points at {folder}, which is not a folder; fix `path` in sources.yaml."
        )
    same_folder = ctx.state.get("folder") == str(folder)
    prev: dict[str, list[Any]] = (ctx.state.get("files") or {}) if same_folder else {}
    seen: dict[str, list[Any]] = {}
    paths = walk(folder)
    changed = False
    for i, p in enumerate(paths):
        ctx.check_deadline()
        rid = p.relative_to(folder).as_posix()
        try:
            st = p.stat()
        except OSError:
            continue  # vanished while walking
        old = prev.get(rid)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            ctx.keep(rid)
            seen[rid] = old
            continue
        changed = True
        ctx.progress(rid, i + 1, len(paths))
        cand = read_candidate(p, rid, st.st_size)
        seen[rid] = [st.st_size, st.st_mtime_ns]
        yield cand
    ctx.set_state("folder", str(folder))
    ctx.set_state("files", seen)
    if not changed and set(seen) == set(prev) and same_folder:
        raise SourceUnchanged(spec.name)


def read_candidate(p: Path, rid: str, size: int) -> Candidate:
    """One local file as a Candidate: read safely, hashed, everything it says recorded."""
    from tihub.formats import read_embedding

    fmt = p.suffix.lstrip(".").lower()
    stem = p.stem
    local_path = str(p.resolve())
    data: bytes | None = None
    try:
        if size <= READ_WHOLE:
            data = read_regular(p)  # a FIFO or device is refused without blocking
            sha = hashlib.sha256(data).hexdigest()
        else:
            sha = sha256_file(p)
    except (OSError, FormatError, NotFound) as exc:  # sha256_file turns OSError into these
        reason = f"{p} cannot be read ({exc.strerror or exc})." if isinstance(exc, OSError) else str(exc)
        return Candidate(
            remote_id=rid,
            name=stem,
            files=[CandidateFile(file_name=p.name, url=None, size=size, format=fmt, local_path=local_path)],
            status="error",
            extra={"error": reason},
        )
    cf = CandidateFile(file_name=p.name, url=None, size=size, sha256=sha, format=fmt, local_path=local_path)
    try:
        emb = read_embedding(p, data) if data is not None else read_embedding(p)
    except FormatError as exc:
        extra: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, NotAnEmbedding):
            extra["error_kind"] = exc.kind
        return Candidate(remote_id=rid, name=stem, files=[cf], status="error", extra=extra,
                         triggers={"a1111": stem})
    cf.vectors = emb.vector_count
    cf.widths = emb.widths
    cf.step = emb.step
    cf.sd_checkpoint = emb.sd_checkpoint
    cf.sd_checkpoint_name = emb.sd_checkpoint_name
    cf.extra = {"layout": emb.layout, "container": emb.container, "dtype": emb.dtype}
    cf.vector_data = dict(emb.vectors)
    triggers = {"a1111": stem}
    if emb.internal_name and emb.internal_name != stem:
        triggers["internal"] = emb.internal_name
    extra = {"layout": emb.layout, "container": emb.container, "dtype": emb.dtype}
    if emb.internal_name:
        extra["internal_name"] = emb.internal_name
    cand = Candidate(
        remote_id=rid,
        name=stem,
        files=[cf],
        title=emb.internal_name if emb.internal_name and emb.internal_name != stem else None,
        triggers=triggers,
        extra=extra,
    )
    add_sidecar_facts(cand, p)
    return cand


def add_sidecar_facts(cand: Candidate, p: Path) -> None:
    """What sits beside the file: `NAME.preview.*` pictures and the `NAME.json` user metadata
    A1111 and Civitai Helper write (see `tihub.collection.read_sidecar`)."""
    from tihub.collection import preview_files, read_sidecar

    for pic in preview_files(p):
        cand.previews.append({"url": pic.resolve().as_uri(), "path": str(pic.resolve()), "kind": "local"})
    meta = read_sidecar(p)
    if not meta:
        return
    if meta.get("description") and not cand.description:
        cand.description = meta["description"]
    if meta.get("activation text"):
        cand.triggers["activation_text"] = meta["activation text"]
    if meta.get("sd version") and meta["sd version"].lower() != "unknown":
        cand.base_model = meta["sd version"]
    cand.extra["sidecar"] = meta
