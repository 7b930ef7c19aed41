"""Prompt encoding with 2 embeddings used: 20 vs 2,000 files in the embeddings folder.

A long-lived Engine encodes the same prompt (two embedding names in it) over and over, as a
server would; between prompts the folder is re-checked for added/replaced/removed files. The
cost per prompt must not grow with the number of files in the folder: tihub re-lists a folder
only when its mtime moved, and stats/loads only the embeddings the prompt names. As the
reference point, the same engine is also timed with a forced full re-scan per prompt (what a
naive "reload the folder before every generation" costs). Rounds interleaved; medians printed.

    .venv/bin/python benchmarks/bench_prompt_encoding.py           # 200 prompts per round, 5 rounds
    .venv/bin/python benchmarks/bench_prompt_encoding.py --quick   # 50 prompts, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_folder(root: Path, n: int) -> Path:
    import numpy as np
    from engine_helpers import write_emb

    folder = root / f"emb{n}"
    rng = np.random.default_rng(n)
    for i in range(n):
        sub = folder / f"group{i % 10}"
        write_emb(sub / f"word{i:05d}.safetensors", rng.standard_normal((2, 32)).astype("float32"))
    old = time.time() - 60  # settle folder mtimes outside the racy window
    for d in [folder, *folder.iterdir()]:
        os.utime(d, (old, old))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    prompts, rounds = (50, 3) if args.quick else (200, 5)

    import torch

    torch.set_num_threads(1)
    from engine_helpers import tiny_reader

    from tihub.engine.generate import Engine
    from tihub.engine.models import from_pipeline, quiet
    from tihub.engine.tiny import tiny_sd1_pipeline

    quiet()
    model = from_pipeline(tiny_sd1_pipeline(), "tiny")
    tmp = Path(tempfile.mkdtemp(prefix="tihub-bench-"))
    engines = {}
    for n in (20, 2000):
        eng = Engine(model, make_folder(tmp, n))
        eng.vocabulary.reader = tiny_reader
        engines[n] = eng
    prompt = "a photo of word00003 next to (word00011:1.2), detailed"

    def run(n: int, force: bool) -> float:
        eng = engines[n]
        enc = eng.encoder()
        t0 = time.perf_counter()
        for _ in range(prompts):
            if force:
                eng.vocabulary._dirs = {}
            cond, tok = enc.encode(prompt)
            assert tok.used == ["word00003", "word00011"], tok.used
        return (time.perf_counter() - t0) / prompts

    cold = {}
    for n in (20, 2000):
        t0 = time.perf_counter()
        engines[n].encoder().encode(prompt)
        cold[n] = time.perf_counter() - t0
    res: dict[tuple[int, bool], list[float]] = {(n, f): [] for n in (20, 2000) for f in (False, True)}
    for _ in range(rounds):
        for key in res:
            res[key].append(run(*key))
    med = {k: statistics.median(v) * 1000 for k, v in res.items()}
    print(f"encode one prompt using 2 embeddings, tiny SD1 text encoder, {prompts} prompts x {rounds} rounds")
    print(f"  first prompt (folder scan + 2 loads): 20 files {cold[20] * 1000:.1f} ms, 2000 files {cold[2000] * 1000:.1f} ms")
    print(f"  tihub, 20 files:    median {med[(20, False)]:.3f} ms/prompt")
    print(f"  tihub, 2000 files:  median {med[(2000, False)]:.3f} ms/prompt")
    print(f"  ratio 2000/20 files: {med[(2000, False)] / med[(20, False)]:.2f}x  (target ~1.0: independent of folder size)")
    print(f"  reference, full re-scan per prompt: 20 files {med[(20, True)]:.3f} ms, 2000 files {med[(2000, True)]:.3f} ms "
          f"({med[(2000, True)] / med[(20, True)]:.2f}x)")


if __name__ == "__main__":
    main()
