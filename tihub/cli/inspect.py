"""`tihub inspect`: what an embedding file is, read safely, without touching the catalogue.

This module must stay light: no torch, no sqlalchemy, no httpx (start-up well under 0.5 s).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import click

from tihub.cli._common import echo_json, exit_status, fail
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


def _table(rows: list[dict[str, Any]]) -> None:
    from tihub.tables import Column, render

    table = []
    for r in rows:
        ckpt = r["trained_on"] or ""
        if r["trained_on_name"]:
            ckpt = f"{r['trained_on_name']} [{ckpt}]" if ckpt else r["trained_on_name"]
        table.append(
            (
                r["name"],
                r["base"],
                r["vectors"],
                "+".join(str(v) for v in r["widths"].values()),
                f"{r['format']}/{r['layout']}",
                r["step"],
                ckpt,
                r["shorthash"],
                r["path"],
            )
        )
    header = [Column("NAME", max_width=32), "BASE", Column("VEC", "right"), Column("WIDTH", "right"), "FORMAT",
              Column("STEP", "right"), Column("CHECKPOINT", max_width=40), "SHORTHASH", "PATH"]
    click.echo(render(header, table))


@click.command("inspect")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per file (failures included, with ok=false).")
def inspect_cmd(paths: tuple[str, ...], as_json: bool) -> None:
    """Show what embedding files are: name, base model, vectors, width, training checkpoint, hash.

    Every format is read safely (pickles are never executed). Folders are walked recursively.
    Files that are not embeddings (LoRA, checkpoints, HTML pages, ...) are reported as errors,
    one line each, and the exit status is 1 if any file failed. The catalogue is not touched.

    \b
    Example:
      tihub inspect embeddings/easynegative.safetensors
      tihub inspect ~/sd/embeddings --json
    """
    rows = inspect_paths(paths)
    for r in rows:
        if not r["ok"]:
            fail(r["error"])
    if as_json:
        echo_json(rows)
    else:
        good = [r for r in rows if r["ok"]]
        if good:
            _table(good)
    exit_status(any(not r["ok"] for r in rows))
