"""Start-up benchmark: `tihub inspect one.safetensors` as a user runs it, a fresh process each time.

Contestants, interleaved over N rounds (after a discarded warm-up):
  tihub     `tihub inspect emb.safetensors --json` (the console script)
  floor     `python -c pass` (the interpreter alone: no command can start faster)
  numpy     `python -c "import numpy"` (what reading tensors as arrays costs at minimum)
  torch     `python -c "import torch; torch.load('emb.pt', weights_only=True)"` (what a
            torch-based tool pays to read one embedding)
It also runs `python -X importtime -m tihub inspect ...` once and proves that neither torch nor
sqlalchemy nor httpx is imported. Target: tihub median < 0.5 s, no torch.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORBIDDEN = ("torch", "sqlalchemy", "httpx", "diffusers", "transformers")


def make_files(work: Path) -> tuple[Path, Path]:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    vec = rng.standard_normal((8, 768)).astype(np.float32)
    st = work / "emb.safetensors"
    save_file({"emb_params": vec}, str(st), metadata={"name": "emb", "step": "500"})
    pt = work / "emb.pt"
    torch.save({"string_to_param": {"*": torch.from_numpy(vec)}, "name": "emb", "step": 500}, pt)
    return st, pt


def wall(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one run; CPU time is what a busy machine distorts least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imported_modules(py: str, st: Path) -> set[str]:
    out = subprocess.run([py, "-X", "importtime", "-m", "tihub", "inspect", str(st), "--json"], capture_output=True, text=True, check=True)
    mods = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip())
    return mods


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="5 rounds")
    args = ap.parse_args()
    rounds = 5 if args.quick else args.rounds
    py = sys.executable
    tihub = str(Path(py).with_name("tihub"))
    if not Path(tihub).exists():
        tihub_cmd = [py, "-m", "tihub"]
    else:
        tihub_cmd = [tihub]
    work = Path(tempfile.mkdtemp(prefix="tihub-bench-startup-"))
    try:
        st, pt = make_files(work)
        contestants = {
            "tihub": [*tihub_cmd, "inspect", str(st), "--json"],
            "floor": [py, "-c", "pass"],
            "numpy": [py, "-c", "import numpy"],
            "torch": [py, "-c", f"import torch; torch.load({str(pt)!r}, weights_only=True)"],
        }
        check = subprocess.run(contestants["tihub"], capture_output=True, text=True, check=False)
        assert check.returncode == 0 and '"ok": true' in check.stdout, check.stderr
        for cmd in contestants.values():  # warm-up: page cache, .pyc files
            wall(cmd)
        times: dict[str, list[float]] = {k: [] for k in contestants}
        cpu: dict[str, list[float]] = {k: [] for k in contestants}
        for _ in range(rounds):
            for name, cmd in contestants.items():
                w, c = wall(cmd)
                times[name].append(w)
                cpu[name].append(c)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"start-up, median of {rounds} interleaved rounds (fresh process each); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs:")
        for k, v in med.items():
            print(
                f"   {k:6s} wall {v * 1000:7.1f} ms (min {min(times[k]) * 1000:.1f}, max {max(times[k]) * 1000:.1f})"
                f"   cpu {statistics.median(cpu[k]) * 1000:7.1f} ms"
            )
        ratios_torch = [t / s for s, t in zip(times["tihub"], times["torch"], strict=True)]
        print(f"   torch-load peer / tihub: median {statistics.median(ratios_torch):.2f}x (tihub is that much faster)")
        print(f"   tihub - floor: {(med['tihub'] - med['floor']) * 1000:.1f} ms of tihub's own work (imports included)")
        mods = imported_modules(py, st)
        heavy = sorted(m for m in mods if m.split(".")[0] in FORBIDDEN)
        print(f"   modules imported by `tihub inspect`: {len(mods)}; torch/sqlalchemy/httpx among them: {heavy or 'none'}")
        ok = med["tihub"] < 0.5 and not heavy
        print(f"\n{'PASS' if ok else 'MISS'}: tihub inspect median {med['tihub'] * 1000:.0f} ms (target < 500 ms, no torch)")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
