"""Hashing benchmarks: tihub against the ceiling and an A1111-style peer, interleaved rounds.

H1 throughput: one big file of seeded random bytes (1 GiB; `--quick` 256 MiB, in the page
   cache), `tihub.hashing.hash_file` (sha256 + old hash in one pass) vs `openssl dgst -sha256`
   (the ceiling) vs A1111's `calculate_sha256` (hashlib, 1 MiB `read()` calls). Target:
   tihub >= 0.9x openssl.
H2 rescan: 10,000 unchanged small files in 100 folders; `HashCache.hashes` (stat + one indexed
   query) vs a bare `os.stat` loop (the ceiling) vs A1111's `sha256_from_cache` (JSON cache dict
   + `getmtime` per file). Target: tihub <= 3x the stat loop.

    .venv/bin/python benchmarks/bench_hash.py [--quick] [--rounds N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tihub.catalog.db import open_engine  # noqa: E402
from tihub.hashing import HashCache, hash_file  # noqa: E402

MIB = 1 << 20


def make_big(path: Path, size: int, seed: int = 1234) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MIB)
            f.write(rng.bytes(n))
            left -= n


def openssl_sha256(path: Path) -> str:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def a1111_sha256(path: Path) -> str:
    # modules/hashes.py calculate_sha256: blksize = 1024 * 1024; iter(lambda: f.read(blksize), b"")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def summary(name: str, ratios: list[float]) -> str:
    return f"{name}: median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})"


def bench_throughput(work: Path, size: int, rounds: int) -> float:
    path = work / "big.bin"
    print(f"H1 hash throughput: {size / MIB:.0f} MiB file, {rounds} interleaved rounds after a warm-up")
    make_big(path, size)
    try:
        sha, old = hash_file(path)  # warm-up (and page cache)
        assert sha == openssl_sha256(path) == a1111_sha256(path), "digests differ"
        print(f"   sha256 {sha}  AutoV2 {sha[:10]}  old hash {old}")
        times: dict[str, list[float]] = {"tihub": [], "openssl": [], "a1111": []}
        ratios_ossl: list[float] = []
        ratios_a1111: list[float] = []
        for _ in range(rounds):
            t_ossl, _ = timed(openssl_sha256, path)
            t_tihub, _ = timed(hash_file, path)
            t_a1111, _ = timed(a1111_sha256, path)
            times["openssl"].append(t_ossl)
            times["tihub"].append(t_tihub)
            times["a1111"].append(t_a1111)
            ratios_ossl.append(t_ossl / t_tihub)  # throughput ratio tihub / openssl
            ratios_a1111.append(t_a1111 / t_tihub)
        gbs = {k: size / statistics.median(v) / 1e9 for k, v in times.items()}
        print("   median GB/s: " + ", ".join(f"{k} {v:.2f}" for k, v in gbs.items()))
        print("   " + summary("throughput tihub/openssl (target >= 0.9)", ratios_ossl))
        print("   " + summary("throughput tihub/A1111-style", ratios_a1111))
        return statistics.median(ratios_ossl)
    finally:
        path.unlink(missing_ok=True)


def bench_rescan(work: Path, n_files: int, rounds: int) -> float:
    root = work / "embeddings"
    per = 100
    paths: list[str] = []
    for i in range(n_files // per):
        sub = root / f"set{i:03d}"
        sub.mkdir(parents=True)
        for j in range(per):
            p = sub / f"emb{j:03d}.safetensors"
            p.write_bytes(os.urandom(256 + (i * per + j) % 4096))
            paths.append(str(p))
    print(f"\nH2 rescan of {len(paths)} unchanged files, {rounds} interleaved rounds after a warm-up")
    engine = open_engine(f"sqlite:///{work / 'catalog.db'}")
    t0, first = timed(HashCache(engine).hashes, paths)
    print(f"   first scan (hash {len(paths)} files + store in one transaction): {t0 * 1000:.0f} ms")

    # A1111: cache.json {"hashes": {title: {"mtime": float, "sha256": hex}}}, checked by getmtime
    a1111_cache = {f"textual_inversion/{p}": {"mtime": os.path.getmtime(p), "sha256": fh.sha256} for p, fh in zip(paths, first, strict=True)}
    (work / "cache.json").write_text(json.dumps({"hashes": a1111_cache}))

    def a1111_rescan() -> int:
        hits = 0
        for p in paths:
            entry = a1111_cache.get(f"textual_inversion/{p}")
            if entry is not None and os.path.getmtime(p) <= entry["mtime"]:
                hits += 1
        return hits

    def stat_loop() -> int:
        n = 0
        for p in paths:
            os.stat(p)
            n += 1
        return n

    def tihub_rescan() -> int:
        cache = HashCache(engine)
        cache.hashes(paths)
        return cache.hits

    tihub_rescan(), stat_loop(), a1111_rescan()  # warm-up
    times: dict[str, list[float]] = {"stat": [], "tihub": [], "a1111": []}
    ratios: list[float] = []
    for _ in range(rounds):
        t_stat, n = timed(stat_loop)
        t_tihub, hits = timed(tihub_rescan)
        t_a1111, _ = timed(a1111_rescan)
        assert hits == n == len(paths), (hits, n)
        times["stat"].append(t_stat)
        times["tihub"].append(t_tihub)
        times["a1111"].append(t_a1111)
        ratios.append(t_tihub / t_stat)
    print("   median ms: " + ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in times.items()))
    print("   " + summary("time tihub/stat loop (target <= 3)", ratios))
    print("   " + summary("time tihub/A1111-style", [a / b for a, b in zip(times["tihub"], times["a1111"], strict=True)]))
    engine.dispose()
    return statistics.median(ratios)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB file instead of 1 GiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a new one in /tmp)")
    args = ap.parse_args()
    if shutil.which("openssl") is None:
        print("openssl is not installed; it is the ceiling this benchmark compares against.")
        return 2
    work = Path(tempfile.mkdtemp(prefix="tihub-bench-hash-", dir=args.dir))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (ratios are per interleaved round, so both sides see the same load)\n")
    try:
        size = (256 if args.quick else 1024) * MIB
        r1 = bench_throughput(work, size, args.rounds)
        r2 = bench_rescan(work, args.files, max(args.rounds, 7))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok1, ok2 = r1 >= 0.9, r2 <= 3.0
    print(f"\nH1 {'PASS' if ok1 else 'MISS'} (tihub {r1:.2f}x openssl), H2 {'PASS' if ok2 else 'MISS'} (rescan {r2:.2f}x stat loop)")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
