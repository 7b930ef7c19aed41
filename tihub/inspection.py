"""What files are, read without the catalogue: embedding files (`tihub inspect`) and model files
(`tihub hash`). Everything here is read safely (pickles are never executed).

This module must stay light: no torch, no sqlalchemy, no httpx (`tihub inspect` starts in well
under 0.5 s); each function imports what it needs.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from tihub.errors import FormatError, NotAnEmbedding, NotFound, TihubError
from tihub.formats.regular import regular_opener

# Files up to this size are read once and both parsed and hashed from memory; larger ones (never
# an embedding, but users point at checkpoints too) are left to the reader, which refuses them.
READ_AT_ONCE = 64 * 1024 * 1024


def embedding_files(path: str) -> list[str]:
    """`path` itself, or every embedding-suffixed file under a folder (recursive, sorted)."""
    from tihub.formats import EMBEDDING_SUFFIXES

    if not os.path.isdir(path):
        return [path]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and f.lower().endswith(EMBEDDING_SUFFIXES))
    return found


def _blank(path: str) -> dict[str, Any]:
    return {
        "path": path,
        "ok": False,
        "error": None,
        "file_kind": None,
        "format": None,
        "layout": None,
        "name": os.path.splitext(os.path.basename(path))[0],
        "internal_name": None,
        "vectors": 0,
        "widths": {},
        "base": "unknown",
        "dtype": None,
        "step": None,
        "trained_on": None,
        "trained_on_name": None,
        "size": None,
        "sha256": None,
        "shorthash": None,
    }


def _with_path(message: str, path: str) -> str:
    """Make sure the sentence names the file by the path the user gave (folders hold same names)."""
    if path in message:
        return message
    base = os.path.basename(path)
    for quoted in (f"'{base}'", f'"{base}"'):
        if quoted in message:
            return message.replace(quoted, f"'{path}'", 1)
    return f"{path}: {message}"


def inspect_file(path: str) -> dict[str, Any]:
    """One result object (the `--json` schema) for one file; never raises for a bad file."""
    from tihub.formats import read_embedding

    row = _blank(path)
    data: bytes | None = None
    try:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist; check the path.") from None
        except OSError as exc:
            raise FormatError(f"Cannot read {path}: {exc.strerror or exc}.") from None
        row["size"] = st.st_size
        if st.st_size <= READ_AT_ONCE:
            try:
                with open(path, "rb", opener=regular_opener) as f:  # never blocks on a FIFO
                    data = f.read()
            except OSError as exc:
                raise FormatError(f"Cannot read {path}: {exc.strerror or exc}.") from None
            row["sha256"] = hashlib.sha256(data).hexdigest()
            row["shorthash"] = row["sha256"][:12]  # as `tihub.hashing.shorthash` (not imported: start-up)
        emb = read_embedding(path, data)
    except NotAnEmbedding as exc:
        row["error"] = _with_path(str(exc), path)
        row["file_kind"] = exc.kind
        return row
    except TihubError as exc:
        row["error"] = _with_path(str(exc), path)
        return row
    except Exception as exc:  # a reader bug must not stop the batch; still one line
        row["error"] = f"{path} could not be read ({type(exc).__name__}: {exc}); this is a tihub bug, please report it."
        return row
    if row["sha256"] is None:
        from tihub.hashing import sha256_file

        row["sha256"] = sha256_file(path)
        row["shorthash"] = row["sha256"][:12]
    row.pop("error", None)  # `error` only on failures (README "JSON output")
    row.update(
        ok=True,
        format=emb.container,
        layout=emb.layout,
        name=emb.name,
        internal_name=emb.internal_name,
        vectors=emb.vector_count,
        widths=emb.widths,
        base=emb.base,
        dtype=emb.dtype,
        step=emb.step,
        trained_on=emb.sd_checkpoint,
        trained_on_name=emb.sd_checkpoint_name,
    )
    return row


def inspect_paths(paths: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """Inspect every file named or found under the folders named, in order."""
    from tihub.formats import EMBEDDING_SUFFIXES

    rows: list[dict[str, Any]] = []
    for p in paths:
        files = embedding_files(p)
        if not files:
            row = _blank(p)
            row["error"] = f"{p} is a folder holding no embedding files ({', '.join(EMBEDDING_SUFFIXES)})."
            rows.append(row)
        rows.extend(inspect_file(f) for f in files)
    return rows


def model_paths(path: str) -> list[str]:
    """A file or diffusers folder is one model; any other folder is walked for model files."""
    from tihub.hashing import WEIGHT_SUFFIXES, is_diffusers_folder

    if not os.path.isdir(path) or is_diffusers_folder(path):
        return [path]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if is_diffusers_folder(dirpath) and dirpath != path:
            found.append(dirpath)
            dirnames[:] = []
            continue
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and f.lower().endswith(WEIGHT_SUFFIXES))
    return found


def hash_models(paths: tuple[str, ...] | list[str], cache: Any = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Hash and inspect every model under `paths` (files, diffusers folders, folders holding
    them), through the hash `cache` (a tihub.hashing.HashCache) when given; return (result
    rows, (path, error sentence) pairs)."""
    from tihub.checkpoints import inspect_model
    from tihub.hashing import ModelHashes, model_hashes

    errors: list[tuple[str, str]] = []
    targets: list[str] = []
    for p in paths:
        if not os.path.exists(p):
            errors.append((p, f"{p} does not exist; check the path."))
            continue
        found = model_paths(p)
        if not found:
            errors.append((p, f"{p} holds no model files (.safetensors, .ckpt, .pt, .pth, .bin) or diffusers folders."))
        targets.extend(found)

    # Plain files are hashed as one batch: one cache query and one cache write for all of them.
    files = [t for t in targets if not os.path.isdir(t)]
    hashed: dict[str, ModelHashes | Exception] = {}
    if cache is not None and files:
        for f, res in zip(files, cache.hashes_or_errors(files), strict=True):
            hashed[f] = res if isinstance(res, Exception) else ModelHashes(f, res.sha256, res.autov2, res.old_hash, res.shorthash)
    rows: list[dict[str, Any]] = []
    for t in targets:
        try:
            h = hashed.get(t) or model_hashes(t, cache)
            if isinstance(h, Exception):
                raise h
        except TihubError as exc:
            errors.append((t, str(exc)))
            continue
        try:
            info = inspect_model(t)
            family, widths, prediction, reason = info.family, info.widths, info.prediction, info.reason
        except TihubError as exc:
            family, widths, prediction, reason = "other", {}, None, str(exc).rstrip(".")
        rows.append(
            {
                "path": t,
                "sha256": h.sha256,
                "autov2": h.autov2,
                "old_hash": h.old_hash,
                "shorthash": h.shorthash,
                "family": family,
                "widths": widths,
                "prediction": prediction,
                "note": reason,
                "folder": h.folder,
            }
        )
    return rows, errors
