"""A 16-cell grid on the tiny SD1 model: tihub's batched grid vs one diffusers call per image.

Both sides use the same pipeline object, the same settings (Euler a, CFG 7, 64x64, N steps) and
the same 16 cells (4 prompts x 4 seeds); tihub samples as A1111 (its own Euler a over the model's
sigmas), the peer with diffusers' Euler a scheduler. The peer is what a simple script does: one
`pipe(prompt, negative_prompt, generator=...)` call per cell. tihub groups cells with the same
settings into one sampling run (prompts and seeds differ within the batch) and encodes each
distinct prompt once. Rounds are interleaved; medians and the ratio are printed.

    .venv/bin/python benchmarks/bench_grid.py            # 20 steps, 5 rounds
    .venv/bin/python benchmarks/bench_grid.py --quick    # 8 steps, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    steps, rounds = (8, 3) if args.quick else (20, 5)

    import torch

    torch.set_num_threads(args.threads)
    from tihub.engine.generate import Engine, Settings
    from tihub.engine.grid import make_grid, parse_axis
    from tihub.engine.models import from_pipeline, quiet
    from diffusers import EulerAncestralDiscreteScheduler
    from tihub.engine.tiny import tiny_sd1_pipeline

    quiet()
    pipe = tiny_sd1_pipeline()
    pipe.set_progress_bar_config(disable=True)
    engine = Engine(from_pipeline(pipe, "tiny"))
    euler_a = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    prompts = ["a photo of a cat", "a dog on a beach", "a red car, detailed", "a castle at night"]
    seeds = [1, 2, 3, 4]
    axes = [parse_axis("prompt:" + ",".join(f'"{p}"' for p in prompts)), parse_axis("seed:" + ",".join(map(str, seeds)))]
    settings = Settings(steps=steps, sampler="Euler a", cfg_scale=7.0, width=64, height=64)

    def tihub_grid() -> int:
        r = make_grid(lambda _m: engine, prompts[0], "", axes, Settings(**vars(settings)), batch=16, save_cells=False)
        return r.calls

    def peer() -> int:
        pipe.scheduler = euler_a
        for p in prompts:
            for s in seeds:
                pipe(prompt=p, negative_prompt="", num_inference_steps=steps, guidance_scale=7.0, width=64, height=64,
                     generator=torch.Generator("cpu").manual_seed(s))
        return len(prompts) * len(seeds)

    tihub_grid()
    peer()  # warm-up both
    t_tihub, t_peer, calls = [], [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        calls = tihub_grid()
        t_tihub.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peer()
        t_peer.append(time.perf_counter() - t0)
    mt, mp = statistics.median(t_tihub), statistics.median(t_peer)
    print(f"16-cell grid, tiny SD1, 64x64, {steps} steps, Euler a, CFG 7, {args.threads} thread(s), {rounds} rounds")
    print(f"  tihub batched grid ({calls} sampling run(s)): median {mt:.3f} s")
    print(f"  diffusers, one call per image (16 calls):     median {mp:.3f} s")
    print(f"  ratio (one-at-a-time / batched): {mp / mt:.2f}x  (target >= 1.5x)")


if __name__ == "__main__":
    main()
