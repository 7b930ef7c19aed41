"""Measured vectors of catalogued files (table `file_vectors`, migration m006_knowledge).

One row per file: `shapes` is JSON `{encoder: [n, width]}` in storage order and `data` the float32
little-endian values of each encoder's [n, width] array one after the other. `summary` holds the
file's per-encoder summary vectors (`tihub.similar.summarize`) in the same encoding behind a JSON
line of their shapes: the similarity index is built from the summaries alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from sqlalchemy import Engine, text

from tihub.catalog.db import read, write


def encode(vectors: Mapping[str, Any]) -> tuple[str, bytes]:
    shapes: dict[str, list[int]] = {}
    parts: list[bytes] = []
    for enc in sorted(vectors):
        arr = np.ascontiguousarray(np.asarray(vectors[enc], dtype="<f4"))
        if arr.ndim == 1:
            arr = arr[None, :]
        shapes[enc] = [int(arr.shape[0]), int(arr.shape[1])]
        parts.append(arr.tobytes())
    return json.dumps(shapes), b"".join(parts)


def decode(shapes: str, data: bytes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    pos = 0
    for enc, (n, w) in json.loads(shapes).items():
        size = int(n) * int(w) * 4
        out[enc] = np.frombuffer(data, dtype="<f4", count=int(n) * int(w), offset=pos).reshape(int(n), int(w))
        pos += size
    return out


def save(engine: Engine, by_sha: Mapping[str, Mapping[str, Any]]) -> int:
    """Store vectors for files known by sha256 (files without a `files` row are skipped).
    Returns how many rows were written."""
    if not by_sha:
        return 0
    rows = []
    with write(engine) as conn:
        shas = list(by_sha)
        ids: dict[str, int] = {}
        for i in range(0, len(shas), 500):
            chunk = shas[i : i + 500]
            params = {f"s{j}": s for j, s in enumerate(chunk)}
            q = f"SELECT id, sha256 FROM files WHERE sha256 IN ({', '.join(':' + k for k in params)})"
            for fid, sha in conn.execute(text(q), params):
                ids[sha] = int(fid)
        for sha, vecs in by_sha.items():
            if sha in ids and vecs:
                shapes, data = encode(vecs)
                rows.append({"f": ids[sha], "s": sha, "sh": shapes, "d": data, "m": encode_summary(vecs)})
        if rows:
            if conn.dialect.name != "sqlite":
                conn.execute(text("DELETE FROM file_vectors WHERE file_id = :f"), [{"f": r["f"]} for r in rows])
            conn.execute(
                text(("INSERT OR REPLACE" if conn.dialect.name == "sqlite" else "INSERT")
                     + " INTO file_vectors (file_id, sha256, shapes, data, summary) VALUES (:f, :s, :sh, :d, :m)"),
                rows,
            )
    return len(rows)


def encode_summary(vecs: Mapping[str, Any]) -> bytes:
    from tihub.similar import summarize

    shapes, data = encode(summarize(vecs))
    return shapes.encode("utf-8") + b"\n" + data


def summaries(engine: Engine) -> Iterator[tuple[int, str | None, dict[str, np.ndarray]]]:
    """(file_id, sha256, {encoder: unit summary [width]}) of every stored file."""
    with read(engine) as conn:
        got = conn.execute(text("SELECT file_id, sha256, summary FROM file_vectors ORDER BY file_id")).all()
    for fid, sha, summary in got:
        if summary is None:
            continue
        head, _, data = bytes(summary).partition(b"\n")
        yield int(fid), sha, {k: v[0] for k, v in decode(head.decode("utf-8"), data).items()}


def fingerprint(engine: Engine) -> str:
    """Changes whenever a stored file is added, replaced or removed (for on-disk index caches)."""
    import hashlib

    h = hashlib.sha256()
    with read(engine) as conn:
        for fid, sha in conn.execute(text("SELECT file_id, sha256 FROM file_vectors ORDER BY file_id")):
            h.update(f"{fid}:{sha};".encode())
    return h.hexdigest()


def measured_shas(engine: Engine) -> set[str]:
    """sha256 of every file whose vectors are stored (deep sync skips them)."""
    with read(engine) as conn:
        return {r[0] for r in conn.execute(text("SELECT sha256 FROM file_vectors WHERE sha256 IS NOT NULL"))}


def rows(engine: Engine) -> Iterator[tuple[int, str | None, dict[str, np.ndarray]]]:
    """(file_id, sha256, vectors) of every stored file."""
    with read(engine) as conn:
        got = conn.execute(text("SELECT file_id, sha256, shapes, data FROM file_vectors ORDER BY file_id")).all()
    for fid, sha, shapes, data in got:
        yield int(fid), sha, decode(shapes, bytes(data))


def collect(candidates: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """{sha256: vectors} of the candidate files that carry measured vectors."""
    out: dict[str, dict[str, Any]] = {}
    for c in candidates:
        for f in getattr(c, "files", []) or []:
            if f.vector_data and f.sha256:
                out[f.sha256.lower()] = f.vector_data
    return out
