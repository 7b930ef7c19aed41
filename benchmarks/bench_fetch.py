"""Downloads: tihub vs curl on one big file, and -j 8 vs -j 1 on many small files.

1. One 512 MB file (128 MB with --quick) from a loopback server running in its own process:
   `curl -o` (the ceiling) vs tihub's downloader (streamed to a locked temp file, sha256 hashed
   while writing, size-checked, atomically renamed). Rounds interleaved; medians and the
   throughput ratio tihub/curl are printed (target >= 0.9x).
2. 200 small embedding files (50 with --quick) from a loopback server that waits 50 ms before
   every answer: the full `tihub fetch` path (verify, read, place) with -j 8 vs -j 1 (target
   >= 3x).

    .venv/bin/python benchmarks/bench_fetch.py
    .venv/bin/python benchmarks/bench_fetch.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def big_file(args: argparse.Namespace, work: Path) -> None:
    from tihub.download import Downloader, Request

    size = (128 if args.quick else 512) * 1024 * 1024
    src = work / "big.bin"
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    with open(src, "wb") as fh:
        for i in range(size >> 20):
            chunk = block[i % 7 :] + block[: i % 7]
            fh.write(chunk)
            h.update(chunk)
    sha = h.hexdigest()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fileserver.py"), str(src), "/big.bin"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/big.bin"
        out = work / "out"
        out.mkdir()
        curl_t, tihub_t = [], []
        curl_cpu, tihub_cpu = [], []
        for r in range(args.rounds):
            order = ["curl", "tihub"] if r % 2 == 0 else ["tihub", "curl"]
            for who in order:
                dest = out / f"{who}.bin"
                t0 = time.perf_counter()
                if who == "curl":
                    c0 = _cpu(resource.RUSAGE_CHILDREN)
                    subprocess.run(["curl", "-s", "-o", str(dest), url], check=True)
                    curl_t.append(time.perf_counter() - t0)
                    curl_cpu.append(_cpu(resource.RUSAGE_CHILDREN) - c0)
                else:
                    c0 = _cpu(resource.RUSAGE_SELF)
                    with Downloader(out, max_bytes=1 << 40, env={}) as d:
                        tr = d.fetch_raw(Request(url, trusted=True, sha256=sha, size=size), dest)
                    tihub_t.append(time.perf_counter() - t0)
                    tihub_cpu.append(_cpu(resource.RUSAGE_SELF) - c0)
                    assert tr.sha256 == sha
                assert dest.stat().st_size == size
                dest.unlink()
        mb = size / 1e6
        c, t = statistics.median(curl_t), statistics.median(tihub_t)
        print(f"big file {size >> 20} MiB, {args.rounds} rounds (interleaved)")
        print(f"  curl -o        median {c:.3f} s  {mb / c:8.1f} MB/s")
        print(f"  tihub (+sha256) median {t:.3f} s  {mb / t:8.1f} MB/s")
        print(f"  ratio tihub/curl throughput: {c / t:.2f}x (target >= 0.9x)")
        print(
            f"  CPU seconds (user+sys) median: curl {statistics.median(curl_cpu):.2f}, tihub {statistics.median(tihub_cpu):.2f}"
            f" (the difference is mostly sha256; on a busy machine it shows up as wall time)"
        )
    finally:
        server.terminate()
        server.wait()


def small_files(args: argparse.Namespace, work: Path) -> None:
    from fileserver import FileServer, embedding_bytes
    from tihub.download import Downloader, Request

    n = 50 if args.quick else 200
    srv = FileServer(latency=0.05).start()
    try:
        reqs = []
        for i in range(n):
            data = embedding_bytes(name=f"e{i}", seed=i)
            url = srv.add(f"/e/e{i}.safetensors", data)
            reqs.append(Request(url, trusted=True, sha256=hashlib.sha256(data).hexdigest()))
        times: dict[int, list[float]] = {1: [], 8: []}
        for r in range(args.small_rounds):
            for jobs in ((1, 8) if r % 2 == 0 else (8, 1)):
                folder = work / f"small-{jobs}-{r}"
                t0 = time.perf_counter()
                with Downloader(folder, jobs=jobs, env={}) as d:
                    results = d.fetch_all(reqs)
                times[jobs].append(time.perf_counter() - t0)
                assert all(x.status == "fetched" for x in results), [x.error for x in results if x.error][:3]
                shutil.rmtree(folder)
        one, eight = statistics.median(times[1]), statistics.median(times[8])
        print(f"{n} small files, 50 ms latency per request, {args.small_rounds} rounds")
        print(f"  -j 1 median {one:.3f} s")
        print(f"  -j 8 median {eight:.3f} s")
        print(f"  speed-up -j 8 / -j 1: {one / eight:.2f}x (target >= 3x)")
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--small-rounds", type=int, default=None)
    args = ap.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.small_rounds = args.small_rounds or (2 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="tihub-bench-fetch-"))
    try:
        big_file(args, work)
        small_files(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
