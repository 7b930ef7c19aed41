"""`tihub farm verify` throughput against the one-process verify loop, on this machine.

The same N embeddings (catalogue entries with files on disk) are verified with their standard
preview grid:
  - loop: one process, the model loaded once, `tihub.engine.verify.verify` + `record` per entry
    (what a shell loop over `tihub verify` does, without paying the model load per entry);
  - farm with 1 and 2 workers on a local Ray instance (one Ray start, reused), each run on a
    fresh catalogue so nothing is skipped. "wall" includes starting the workers and loading the
    model in each; "steady" counts from the first finished batch.

    .venv/bin/python benchmarks/bench_farm.py --quick                   # tiny SD1 model, 12 entries
    .venv/bin/python benchmarks/bench_farm.py --model /models/sd15 --device cuda --size 512 --steps 20 -n 64

With a real SD1.5 model on a GPU it prints entries per GPU-hour and what 100,000 entries take.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from tihub.catalog.db import dispose_all, open_engine  # noqa: E402
from tihub.catalog.store import Catalog  # noqa: E402
from tihub.config import SourceSpec  # noqa: E402
from tihub.sources.base import Candidate, CandidateFile  # noqa: E402


def make_catalogue(url: str, folder: Path, n: int, width: int) -> list[Path]:
    import hashlib

    from engine_helpers import vec, write_emb

    paths = [write_emb(folder / f"bench{i}.safetensors", vec(1 + i % 2, width=width, seed=i) * 0.2) for i in range(n)]
    cands = [Candidate(remote_id=p.stem, name=p.stem, kind="object", files=[CandidateFile(
        p.name, None, size=p.stat().st_size, sha256=hashlib.sha256(p.read_bytes()).hexdigest(), local_path=str(p))])
        for p in paths]
    Catalog(open_engine(url)).ingest(SourceSpec("bench", "local"), cands)
    return paths


def loop(model: str, url: str, paths: list[Path], steps: int, size: str, device: str, tiny: bool, out: Path) -> float:
    from engine_helpers import tiny_reader

    from tihub.engine.generate import Engine
    from tihub.engine.verify import record, verify

    t0 = time.perf_counter()
    engine = Engine.load(model, None, device=device)
    if tiny:
        engine.vocabulary.reader = tiny_reader
    cat = Catalog(open_engine(url))
    for p in paths:
        v = verify(engine, p.stem, path=p, steps=steps, size=size, out=out)
        record(cat, v)
    return time.perf_counter() - t0


def farm_run(model: str, url: str, n: int, workers: int, steps: int, size: str, device: str, tiny: bool,
             tmp: Path) -> tuple[float, float]:
    from tihub.farm import FarmSettings, farm

    first: list[float] = []
    t0 = time.perf_counter()

    def seen(p) -> None:  # type: ignore[no-untyped-def]
        if not first and p.done + p.failed:
            first.append((time.perf_counter() - t0, p.done + p.failed))

    settings = FarmSettings(action="verify", steps=steps, size=size, batch=4,
                            reader="farm_helpers:read" if tiny else None)
    report = farm(Catalog(open_engine(url)), [model], settings, "", {}, workers=workers, gpus_per_worker=0
                  if device == "cpu" else 1, device=device, threads=1 if device == "cpu" else None,
                  cache_dir=tmp / "cache", out_dir=tmp / f"grids{workers}", on_progress=seen)
    wall = time.perf_counter() - t0
    assert report.failed == 0, [r.error for r in report.results if not r.ok][:3]
    steady = (n - first[0][1]) / (wall - first[0][0]) if first and wall > first[0][0] and n > first[0][1] else n / wall
    return n / wall, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 entries on the tiny model")
    ap.add_argument("-n", type=int, default=None, help="entries [default 12 quick, 48]")
    ap.add_argument("--model", default=None, help="a model folder/file [default: a tiny random SD1 model]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", default="64")
    args = ap.parse_args()
    n = args.n or (12 if args.quick else 48)
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="tihub-bench-farm-"))
    tiny = args.model is None
    model = args.model
    if tiny:
        from tihub.engine.tiny import build_tiny_sd1

        model = str(build_tiny_sd1(tmp / "tiny-sd1"))
    width = 32 if tiny else 768
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE.parent / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2 if args.device == "cpu" else None, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "HF_HUB_OFFLINE": "1"}})
    try:
        url0 = f"sqlite:///{tmp / 'loop.db'}"
        paths = make_catalogue(url0, tmp / "emb", n, width)
        t_loop = loop(model, url0, paths, args.steps, args.size, args.device, tiny, tmp / "loop-grids")
        dispose_all()
        print(f"{n} entries, verify + preview grid ({args.steps} steps, {args.size}px), {args.device}, model {Path(model).name}")
        print(f"  one-process verify loop : {n / t_loop:7.2f} entries/s  (model load included, {t_loop:.1f} s)")
        rates = {}
        for workers in (1, 2):
            url = f"sqlite:///{tmp / f'farm{workers}.db'}"
            make_catalogue(url, tmp / "emb", n, width)
            wall, steady = farm_run(model, url, n, workers, args.steps, args.size, args.device, tiny, tmp)
            dispose_all()
            rates[workers] = steady
            print(f"  farm, {workers} worker(s)      : {wall:7.2f} entries/s wall (worker start + model load included), "
                  f"{steady:7.2f} steady  ({wall * t_loop / n:.2f}x the loop, wall)")
        if args.device != "cpu":
            per_hour = rates[1] * 3600
            print(f"  per GPU: {per_hour:,.0f} entries/GPU-hour; 100,000 entries: {100_000 / per_hour:,.1f} GPU-hours")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
