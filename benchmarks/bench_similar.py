"""`tihub similar` over N embeddings: the index's query latency against the exact numpy scan.

Data: N SD1-shaped embeddings (1-8 vectors of 768) drawn around 5,000 random "concepts" (each
embedding = its concept + noise), which is how re-uploads, variants and fine-tunes of one idea
cluster; plus the same number of queries taken from the set. Printed:

- index build time (summaries + faiss IVF training and adding), and the exact matrix alone;
- query latency p50/p95 of `SimilarityIndex.query(limit=10)` (faiss IVF above APPROX_MIN) side
  by side with the exact numpy scan (`mat @ q` + `argpartition`, the brute-force ceiling of
  recall and the peer of latency), interleaved query by query;
- recall@10 of the index against the exact scan, and recall of the neighbours that are really
  similar (exact score >= 0.5; below that the order of the top 10 is noise among unrelated ones);
- `dupes` (all pairs above 0.95) time at a smaller size (it is quadratic).

    .venv/bin/python benchmarks/bench_similar.py [--quick] [--n N] [--queries Q]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tihub.similar import SimilarityIndex, summarize  # noqa: E402


def make(n: int, seed: int = 0) -> list[tuple[int, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    concepts = rng.standard_normal((5000, 768)).astype(np.float32)
    out = []
    for i in range(n):
        if i % 100 == 99:  # 1%: a re-upload / light fine-tune of an earlier one
            src = out[int(rng.integers(0, i))][1]["clip_l"]
            out.append((i, {"clip_l": src + 0.05 * rng.standard_normal(src.shape).astype(np.float32)}))
            continue
        k = int(rng.integers(1, 9))
        c = concepts[int(rng.integers(0, len(concepts)))]
        out.append((i, {"clip_l": c[None, :] + 0.8 * rng.standard_normal((k, 768)).astype(np.float32)}))
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 embeddings, 100 queries")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--dupes-n", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    nq = args.queries or (100 if args.quick else 400)
    dn = args.dupes_n or (5_000 if args.quick else 20_000)
    items = make(n)

    t0 = time.perf_counter()
    sums = [(k, summarize(v)) for k, v in items]
    t1 = time.perf_counter()
    exact = SimilarityIndex.build(sums, summarized=True, approx=False)
    t2 = time.perf_counter()
    index = SimilarityIndex.build(sums, summarized=True)  # faiss IVF at this size (if installed)
    t3 = time.perf_counter()
    mat = exact.mats["clip_l"]

    rng = np.random.default_rng(1)
    qs = rng.integers(0, n, nq)
    t_index, t_scan, recall, close_recall = [], [], [], []
    for qi in qs:  # interleaved: one index query, one exact scan, per query
        q = sums[int(qi)][1]
        a = time.perf_counter()
        got = index.query(q, limit=10, exclude=[int(qi)], summarized=True)
        b = time.perf_counter()
        s = mat @ q["clip_l"]
        top = np.argpartition(-s, 11)[:11]
        top = top[np.argsort(-s[top])]
        c = time.perf_counter()
        t_index.append(b - a)
        t_scan.append(c - b)
        want = {int(x) for x in top if int(x) != int(qi)}
        found = {k for k, _ in got}
        recall.append(len(want & found) / 10)
        close = {int(x) for x in top if int(x) != int(qi) and s[x] >= 0.5}  # the truly similar ones
        if close:
            close_recall.append(len(close & found) / len(close))

    d0 = time.perf_counter()
    exact_groups = SimilarityIndex.build(sums[:dn], summarized=True, approx=False).groups(0.95)
    d1 = time.perf_counter()
    small = SimilarityIndex.build(sums[:dn], summarized=True, approx=True)
    d2 = time.perf_counter()
    small_groups = small.groups(0.95)
    d3 = time.perf_counter()
    agree = {tuple(sorted(g["keys"])) for g in small_groups} == {tuple(sorted(g["keys"])) for g in exact_groups}
    d4 = time.perf_counter()
    big_groups = index.groups(0.95) if index.ann else []
    d5 = time.perf_counter()

    kind = "faiss IVF" if index.ann else "exact numpy (faiss not installed)"
    print(f"similar over {n:,} embeddings (768 wide, 1-8 vectors), {nq} queries, limit 10; index: {kind}")
    print(f"  build: summaries {t1 - t0:.2f} s + exact matrix {t2 - t1:.2f} s; index with IVF {t3 - t2:.2f} s")
    p50i, p95i = pct(t_index, 50) * 1e3, pct(t_index, 95) * 1e3
    p50s, p95s = pct(t_scan, 50) * 1e3, pct(t_scan, 95) * 1e3
    print(f"  tihub index query : p50 {p50i:7.2f} ms  p95 {p95i:7.2f} ms  recall@10 vs exact {statistics.mean(recall):.3f}"
          f" (of neighbours scoring >= 0.5: {statistics.mean(close_recall) if close_recall else float('nan'):.3f})")
    print(f"  exact numpy scan  : p50 {p50s:7.2f} ms  p95 {p95s:7.2f} ms  recall 1.000 (ceiling)")
    print(f"  ratio p95 scan/index: {p95s / p95i:.1f}x")
    print(f"  dupes over {dn:,} (pairs >= 0.95): exact all-pairs {d1 - d0:.2f} s, {len(exact_groups)} groups; "
          f"with the IVF index {d3 - d2:.2f} s (+{d2 - d1:.2f} s build), same groups: {agree}")
    if index.ann:
        print(f"  dupes over {n:,} with the IVF index: {d5 - d4:.2f} s, {len(big_groups)} groups")
    ok = p95i <= 50.0
    print("target: p95 <= 50 ms:", "MET" if ok else "NOT MET")


if __name__ == "__main__":
    main()
