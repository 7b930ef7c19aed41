"""`tihub list` rescan of an unchanged embeddings/ folder vs a bare `os.stat` loop.

Builds an embeddings/ folder of 10,000 small embedding files (2,000 with --quick) spread over
subfolders, lists it once (cold: every file is read and described, the per-file index is
written), then times, interleaved:

- tihub: `list_collection()` (walk, per-file size+mtime check against the index, catalogue
  entry lookup by sha256, problem detection, rows) — what `tihub list --json` does minus printing;
- ceiling: a bare loop of `os.stat` over the same (pre-listed) paths.

Prints medians and the ratio (target <= 3x).

    .venv/bin/python benchmarks/bench_list.py
    .venv/bin/python benchmarks/bench_list.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    n = 2000 if args.quick else 10000

    from fileserver import embedding_bytes
    from tihub.catalog.db import open_engine
    from tihub.catalog.store import Catalog
    from tihub.collection import list_collection
    from tihub.config import Workspace

    work = Path(tempfile.mkdtemp(prefix="tihub-bench-list-"))
    try:
        ws = Workspace.locate(work / "home")
        ws.ensure()
        variants = [embedding_bytes(name=f"v{i}", seed=i) for i in range(50)]
        paths = []
        for i in range(n):
            sub = ws.embeddings_dir / f"group{i % 20:02d}"
            sub.mkdir(exist_ok=True)
            p = sub / f"emb{i:05d}.safetensors"
            p.write_bytes(variants[i % len(variants)] + b"")
            paths.append(str(p))
        catalog = Catalog(open_engine(ws.db_url), ws)
        t0 = time.perf_counter()
        rows = list_collection(ws, catalog)
        cold = time.perf_counter() - t0
        assert len(rows) == n

        def stat_loop() -> None:
            for p in paths:
                os.stat(p)

        tihub_t, stat_t = [], []
        del rows  # freeing the previous rows must not be timed inside the next call
        for r in range(args.rounds):
            for who in (("tihub", "stat") if r % 2 == 0 else ("stat", "tihub")):
                t0 = time.perf_counter()
                if who == "tihub":
                    rows = list_collection(ws, catalog)
                    tihub_t.append(time.perf_counter() - t0)
                    assert len(rows) == n
                    del rows
                else:
                    stat_loop()
                    stat_t.append(time.perf_counter() - t0)
        t, s = statistics.median(tihub_t), statistics.median(stat_t)
        print(f"{n} unchanged files in 20 subfolders, {args.rounds} rounds (interleaved); cold first list {cold:.2f} s")
        print(f"  bare os.stat loop  median {s * 1000:8.1f} ms")
        print(f"  tihub list rescan  median {t * 1000:8.1f} ms")
        print(f"  ratio tihub/stat: {t / s:.2f}x (target <= 3x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
