"""Similar and near-duplicate embeddings: a per-encoder cosine index over every measured vector.

**The rule for multi-vector embeddings.** Each embedding is summarised per text encoder (clip_l
768, clip_h 1024, clip_g 1280) by one vector: every one of its vectors is scaled to unit length,
the unit vectors are averaged, and the average is scaled to unit length again. The order and the
count of vectors are ignored, so a 1-vector concept, a 16-vector negative and a re-upload with
its vectors reordered are all comparable, and a vector's length (which training drifts) does not
dominate. The score of two embeddings is the cosine of their summaries, averaged over the
encoders both have (an SDXL pair: clip_l and clip_g; an SD1 file against an SDXL file: clip_l
only, the space they share). Scores run from -1 to 1; 1.0 means the same directions.

**Search.** Up to `APPROX_MIN` embeddings per encoder the search is exact brute force with
numpy (one matrix-vector product and `argpartition`). Above it, a query scans the whole matrix
(100,000 x 768 float32 is 307 MB of memory traffic, about 0.1 s on a busy two-core box), so the
index adds a faiss inverted-file index (`IndexIVFFlat`, inner product, about 2*sqrt(N) lists, a
`nprobe` of 1/16 of them but at least 16): a query reads a few percent of the vectors and scores
them exactly; the lists it does not visit are where recall can be lost (measured in
benchmarks/bench_similar.py against the exact numpy scan). Without faiss installed the exact
scan is used at every size. Multi-encoder queries take each encoder's candidates and rank their
union by the exact combined score. `dupes` finds pairs above its threshold with faiss range
searches where the IVF index exists (visiting 1/64 of the lists, at least 4, for thresholds of
0.9 and above, where near-duplicates fall into the same or a neighbouring list; the query's
nprobe below), else with exact blocked all-pairs products; every candidate pair is then scored
exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DUPES_THRESHOLD = 0.95
APPROX_MIN = 20_000  # items per encoder from which queries use the faiss IVF index (if installed)


def _faiss() -> Any:
    try:
        import faiss  # noqa: PLC0415 - optional, imported only for big indexes

        return faiss
    except ImportError:
        return None


def ivf_index(mat: np.ndarray, seed: int = 0) -> Any:
    """A faiss IndexIVFFlat (inner product) over the unit rows of `mat`, or None without faiss."""
    faiss = _faiss()
    if faiss is None:
        return None
    n, d = mat.shape
    nlist = int(min(4096, max(8, 2 * np.sqrt(n), n // 1000)))
    nlist = min(nlist, max(1, n // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = mat[rng.choice(n, nlist * 40, replace=False)] if n > nlist * 40 else mat  # faiss wants >= 39 per list
    index.cp.niter = 10  # k-means iterations: the lists only need to be roughly balanced
    index.train(np.ascontiguousarray(sample))
    index.add(mat)
    index.nprobe = max(16, nlist // 16)
    return index


def summarize(vectors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{encoder: unit summary vector} following the module's rule (encoders with no usable
    vector, e.g. all zeros or non-finite, are left out)."""
    out: dict[str, np.ndarray] = {}
    for enc, arr in vectors.items():
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] == 0 or not np.isfinite(a).all():
            continue
        norms = np.linalg.norm(a, axis=1, keepdims=True)
        keep = norms[:, 0] > 0
        if not keep.any():
            continue
        mean = (a[keep] / norms[keep]).mean(axis=0)
        n = float(np.linalg.norm(mean))
        if n > 0:
            out[enc] = (mean / n).astype(np.float32)
    return out


def score(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float | None:
    """The similarity of two summaries (None when they share no encoder)."""
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not shared:
        return None
    return float(np.mean([float(a[k] @ b[k]) for k in shared]))


@dataclass
class SimilarityIndex:
    """Summaries of N items, stored per encoder as one [n_enc, width] float32 matrix."""

    keys: list[Any] = field(default_factory=list)  # item key (e.g. file id) by global position
    mats: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> [n_enc, width]
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> global position of each row
    summaries: list[dict[str, np.ndarray]] = field(default_factory=list)
    ann: dict[str, Any] = field(default_factory=dict)  # encoder -> faiss IVF index (big encoders only)

    @classmethod
    def build(cls, items: Iterable[tuple[Any, Mapping[str, Any]]], *, summarized: bool = False,
              approx: bool | None = None) -> "SimilarityIndex":
        """Index `(key, vectors)` pairs (`vectors`: {encoder: [n, width]}, or summaries).
        `approx`: None builds the faiss IVF index for encoders with >= APPROX_MIN items, True for
        every encoder, False never (exact scans only)."""
        idx = cls()
        parts: dict[str, list[np.ndarray]] = {}
        pos: dict[str, list[int]] = {}
        for key, vecs in items:
            s = {k: np.asarray(v, dtype=np.float32) for k, v in vecs.items()} if summarized else summarize(vecs)
            if not s:
                continue
            g = len(idx.keys)
            idx.keys.append(key)
            idx.summaries.append(s)
            for enc, v in s.items():
                parts.setdefault(enc, []).append(v)
                pos.setdefault(enc, []).append(g)
        for enc, vs in parts.items():
            idx.mats[enc] = np.ascontiguousarray(np.vstack(vs), dtype=np.float32)
            idx.rows[enc] = np.asarray(pos[enc], dtype=np.int64)
            if approx or (approx is None and len(vs) >= APPROX_MIN):
                ann = ivf_index(idx.mats[enc])
                if ann is not None:
                    idx.ann[enc] = ann
        return idx

    def __len__(self) -> int:
        return len(self.keys)

    # -- on disk (integer keys): a folder of .npy files, faiss indexes and a fingerprint -------

    def save(self, folder: str | os.PathLike[str], fingerprint: str) -> None:
        import shutil
        import tempfile

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".similar-", dir=folder.parent))
        try:
            np.save(tmp / "keys.npy", np.asarray(self.keys, dtype=np.int64))
            for enc, mat in self.mats.items():
                np.save(tmp / f"{enc}.npy", mat)
                np.save(tmp / f"{enc}.rows.npy", self.rows[enc])
                if enc in self.ann:
                    _faiss().write_index(self.ann[enc], str(tmp / f"{enc}.ivf"))
            (tmp / "fingerprint").write_text(fingerprint)
            old = folder.with_name(folder.name + f".old-{os.getpid()}")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a cache that cannot be written is only slower

    @classmethod
    def load(cls, folder: str | os.PathLike[str], fingerprint: str) -> "SimilarityIndex | None":
        folder = Path(folder)
        try:
            if (folder / "fingerprint").read_text() != fingerprint:
                return None
            idx = cls(keys=np.load(folder / "keys.npy").tolist())
            for f in sorted(folder.glob("*.rows.npy")):
                enc = f.name[: -len(".rows.npy")]
                idx.rows[enc] = np.load(f)
                idx.mats[enc] = np.load(folder / f"{enc}.npy")
                if (folder / f"{enc}.ivf").is_file() and _faiss() is not None:
                    idx.ann[enc] = _faiss().read_index(str(folder / f"{enc}.ivf"))
        except (OSError, ValueError):
            return None
        idx.summaries = [{} for _ in idx.keys]
        for enc, rows in idx.rows.items():
            for i, g in enumerate(rows.tolist()):
                idx.summaries[g][enc] = idx.mats[enc][i]
        return idx

    def _scores(self, query: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(global positions, scores) of every item sharing an encoder with `query`."""
        encs = [e for e in query if e in self.mats and self.mats[e].shape[1] == query[e].shape[0]]
        if not encs:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if len(encs) == 1:  # the common case: one matrix-vector product
            e = encs[0]
            return self.rows[e], self.mats[e] @ query[e]
        total = np.zeros(len(self.keys), np.float32)
        count = np.zeros(len(self.keys), np.float32)
        for e in encs:
            total[self.rows[e]] += self.mats[e] @ query[e]
            count[self.rows[e]] += 1
        hit = np.nonzero(count)[0]
        return hit, total[hit] / count[hit]

    def _ann_scores(self, query: Mapping[str, np.ndarray], want: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Candidates from the faiss indexes, scored exactly; None when no encoder has one."""
        encs = [e for e in query if e in self.mats and self.mats[e].shape[1] == query[e].shape[0]]
        if not encs or not all(e in self.ann for e in encs):
            return None
        cand: set[int] = set()
        k = max(1, want) * (4 if len(encs) > 1 else 1)
        for e in encs:
            _d, ids = self.ann[e].search(query[e][None, :], min(k, len(self.mats[e])))
            cand.update(int(self.rows[e][i]) for i in ids[0] if i >= 0)
        if len(encs) == 1:
            e = encs[0]
            pos = np.fromiter(cand, np.int64)
            local = np.searchsorted(self.rows[e], pos)  # rows[e] is increasing
            return pos, self.mats[e][local] @ query[e]
        pos = np.fromiter(cand, np.int64)
        sc = np.array([score(query, self.summaries[int(g)]) or -2.0 for g in pos], np.float32)
        return pos, sc

    def query(self, vectors: Mapping[str, Any], limit: int = 10, exclude: Iterable[Any] = (),
              *, summarized: bool = False) -> list[tuple[Any, float]]:
        """The `limit` nearest items (key, score), best first; `exclude`: keys to leave out."""
        q = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()} if summarized else summarize(vectors)
        got = self._ann_scores(q, max(0, limit) + len(set(exclude))) if self.ann else None
        pos, sc = got if got is not None else self._scores(q)
        if len(pos) == 0:
            return []
        skip = set(exclude)
        want = min(len(pos), max(0, limit) + len(skip))
        if want <= 0:
            return []
        if want < len(pos):
            top = np.argpartition(-sc, want - 1)[:want]
        else:
            top = np.arange(len(pos))
        top = top[np.argsort(-sc[top], kind="stable")]
        out = []
        for t in top:
            key = self.keys[int(pos[t])]
            if key in skip:
                continue
            out.append((key, float(sc[t])))
            if len(out) >= limit:
                break
        return out

    def pairs(self, threshold: float, block: int = 2048) -> dict[tuple[int, int], float]:
        """{(i, j): score} of every pair of global positions i < j scoring >= `threshold`."""
        found: dict[tuple[int, int], float] = {}
        cand: set[tuple[int, int]] = set()
        for enc, mat in self.mats.items():
            rows = self.rows[enc]
            for start in range(0, len(mat), block):
                if enc in self.ann:  # faiss: every pair above the threshold within the probed lists
                    ann = self.ann[enc]
                    probe = ann.nprobe
                    if threshold >= 0.9:  # near-duplicates share a list or its neighbours: probe fewer
                        ann.nprobe = max(4, ann.nlist // 64)
                    try:
                        lims, _d, found_ids = ann.range_search(mat[start : start + block], float(threshold) - 1e-6)
                    finally:
                        ann.nprobe = probe
                    ii = np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
                    jj = found_ids
                else:  # exact: one block of the all-pairs product
                    sims = mat[start : start + block] @ mat.T
                    ii, jj = np.nonzero(sims >= threshold - 1e-6)
                for a, b in zip(ii.tolist(), jj.tolist()):
                    i, j = int(rows[start + a]), int(rows[b])
                    if i < j:
                        cand.add((i, j))
        for i, j in cand:
            s = score(self.summaries[i], self.summaries[j])
            if s is not None and s >= threshold - 1e-6:
                found[(i, j)] = s
        return found

    def groups(self, threshold: float = DEFAULT_DUPES_THRESHOLD) -> list[dict[str, Any]]:
        """Near-duplicate groups: items linked by pairs scoring >= `threshold` (single linkage),
        biggest group first; each group gives its keys and its lowest and highest pair score."""
        found = self.pairs(threshold)
        parent = list(range(len(self.keys)))

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for i, j in found:
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
        members: dict[int, list[int]] = {}
        for i, j in found:
            r = root(i)
            members.setdefault(r, [])
            for x in (i, j):
                if x not in members[r]:
                    members[r].append(x)
        out = []
        for r, ms in members.items():
            scores = [s for (i, j), s in found.items() if root(i) == r]
            out.append({"keys": [self.keys[m] for m in sorted(ms)], "min_score": min(scores), "max_score": max(scores)})
        out.sort(key=lambda g: (-len(g["keys"]), -g["max_score"]))
        return out


# --------------------------------------------------------------------------------------------
# the catalogue's index


def backfill_local(catalog: Any) -> int:
    """Read the vectors of local files recorded without them (fetched or imported before the
    index existed, or by a path that skips sync) with the safe readers; returns how many."""
    from sqlalchemy import text

    from tihub.catalog import vectors as V
    from tihub.catalog.db import read
    from tihub.errors import TihubError
    from tihub.formats import read_embedding

    with read(catalog.engine) as conn:
        todo = conn.execute(
            text("SELECT f.sha256, f.local_path FROM files f LEFT JOIN file_vectors v ON v.file_id = f.id "
                 "WHERE f.local_path IS NOT NULL AND f.sha256 IS NOT NULL AND v.file_id IS NULL")
        ).all()
    found: dict[str, dict[str, Any]] = {}
    for sha, path in todo:
        try:
            found[sha] = dict(read_embedding(path).vectors)
        except (TihubError, OSError):
            continue
    return V.save(catalog.engine, found)


def file_facts(catalog: Any, file_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """For each file id: the entry users know it by (a local file's own name first), its source,
    base, widths, vector count, sha256 and local path."""
    import json

    from sqlalchemy import text

    from tihub.catalog.db import read

    ids = sorted({int(i) for i in file_ids})
    out: dict[int, dict[str, Any]] = {}
    with read(catalog.engine) as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = conn.execute(
                text(
                    "SELECT f.id, f.sha256, f.local_path, f.widths, f.vectors, f.base, e.id, e.name, e.base, s.name, "
                    "e.removed_at FROM files f JOIN entry_files ef ON ef.file_id = f.id JOIN entries e ON e.id = ef.entry_id "
                    f"JOIN sources s ON s.id = e.source_id WHERE f.id IN ({', '.join(str(i) for i in chunk)}) "
                    "ORDER BY f.id, (s.kind = 'local') DESC, (e.removed_at IS NULL) DESC, e.id"
                )
            ).all()
            for fid, sha, lp, widths, nvec, fbase, eid, ename, ebase, sname, _removed in rows:
                if fid in out:
                    out[fid]["also"].append({"entry_id": eid, "name": ename, "source": sname})
                    continue
                out[fid] = {"entry_id": eid, "name": ename, "source": sname, "sha256": sha, "path": lp,
                            "widths": json.loads(widths) if widths else None, "vectors": nvec,
                            "base": fbase or ebase, "also": []}
    return out


def catalog_index(catalog: Any) -> SimilarityIndex:
    """Every catalogued vector (local files and deep-synced ones), keyed by file id. Built from
    the stored summaries and kept in `WORKSPACE/.tihub-cache/similar/` until the set changes."""
    from tihub.catalog import vectors as V

    backfill_local(catalog)
    fp = V.fingerprint(catalog.engine)
    folder = Path(catalog.workspace.root) / ".tihub-cache" / "similar" if catalog.workspace is not None else None
    if folder is not None:
        cached = SimilarityIndex.load(folder, fp)
        if cached is not None:
            return cached
    idx = SimilarityIndex.build(((fid, s) for fid, _sha, s in V.summaries(catalog.engine)), summarized=True)
    if folder is not None:
        idx.save(folder, fp)
    return idx


def vectors_of(catalog: Any, name: str) -> tuple[dict[str, Any], set[int], dict[str, Any]]:
    """(vectors, its file ids, the entry) of a catalogue name, or of an embedding file path."""
    from pathlib import Path

    from tihub.catalog import vectors as V
    from tihub.errors import NotFound
    from tihub.formats import read_embedding

    p = Path(name).expanduser()
    if p.is_file():
        emb = read_embedding(p)
        return dict(emb.vectors), set(), {"name": p.stem, "id": None}
    entry = catalog.entry(name)
    fids = {int(f["id"]) for f in entry["files"]}
    for fid, _sha, vecs in V.rows(catalog.engine):
        if fid in fids:
            return vecs, fids, entry
    for f in entry["files"]:
        if f.get("local_path") and Path(f["local_path"]).is_file():
            return dict(read_embedding(f["local_path"]).vectors), fids, entry
    raise NotFound(
        f"The vectors of {entry['name']!r} are not known yet; `tihub fetch {entry['name']}` it, or run "
        "`tihub sync` with a --deep-budget that covers it."
    )


def similar(catalog: Any, name: str, limit: int = 10, index: SimilarityIndex | None = None) -> list[dict[str, Any]]:
    """The `limit` catalogued embeddings nearest to `name` (a catalogue name or a file), best first."""
    vecs, fids, _entry = vectors_of(catalog, name)
    idx = index if index is not None else catalog_index(catalog)
    hits = idx.query(vecs, limit=limit, exclude=fids)
    facts = file_facts(catalog, [k for k, _ in hits])
    out = []
    for fid, sc in hits:
        f = facts.get(int(fid), {})
        out.append({"ok": True, "name": f.get("name"), "score": round(sc, 4), "source": f.get("source"),
                    "base": f.get("base"), "widths": f.get("widths"), "vectors": f.get("vectors"),
                    "sha256": f.get("sha256"), "path": f.get("path"), "entry_id": f.get("entry_id")})
    return out


def dupes(catalog: Any, threshold: float = DEFAULT_DUPES_THRESHOLD, index: SimilarityIndex | None = None) -> list[dict[str, Any]]:
    """Groups of near-duplicate catalogued embeddings (re-uploads, renamed copies, light
    fine-tunes): pairs scoring >= `threshold`, linked into groups."""
    idx = index if index is not None else catalog_index(catalog)
    groups = idx.groups(threshold)
    facts = file_facts(catalog, [k for g in groups for k in g["keys"]])
    out = []
    for n, g in enumerate(groups, 1):
        members = []
        for fid in g["keys"]:
            f = facts.get(int(fid), {})
            members.append({"name": f.get("name"), "source": f.get("source"), "base": f.get("base"),
                            "sha256": f.get("sha256"), "path": f.get("path"), "entry_id": f.get("entry_id"),
                            "also": [a["name"] for a in f.get("also", []) if a["name"] != f.get("name")]})
        out.append({"ok": True, "group": n, "min_score": round(g["min_score"], 4),
                    "max_score": round(g["max_score"], 4), "members": members})
    return out
