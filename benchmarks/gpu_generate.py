"""GPU generation throughput: tihub vs a plain diffusers pipeline, SD1.5 architecture.

Random weights with the real SD1.5 shapes (tihub.engine.tiny.sd15_arch_pipeline), so the compute
is the real model's. 512x512, 20 steps, CFG, bf16. The peer is diffusers with default settings:
`pipe(prompt, num_inference_steps=20)`, one image per call. tihub runs the same pipeline object
through `Engine.run` with a batch of images (prompts encoded once, CPU-seeded noise, channels-last
UNet). Rounds are interleaved; medians of images/s, the ratio, and the achieved fraction of the
GPU's bf16 peak (36.2 TFLOP per image: 20 x 1.68 UNet CFG pair + 2.54 VAE decode, from
research/performance.md) are printed with the GPU name and software versions.

    python benchmarks/gpu_generate.py                      # on a GPU, < 4 minutes
    python benchmarks/gpu_generate.py --quick --device cpu # tiny model, smoke test anywhere
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

TFLOP_PER_IMAGE = 20 * 1.68 + 2.54 + 0.03  # SD1.5 512x512, 20 steps with CFG
PEAK_BF16 = {"H200": 790.0, "H100": 790.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model, 64x64, 2 steps")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--peak", type=float, default=None, help="bf16 peak TFLOP/s of the GPU (default: from its name)")
    args = ap.parse_args()

    import diffusers
    import torch
    import transformers

    from tihub.engine.generate import Engine, Settings
    from tihub.engine.models import from_pipeline, pick_device, quiet
    from tihub.engine.tiny import sd15_arch_pipeline, tiny_sd1_pipeline

    quiet()
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.quick:
        args.steps, args.size, args.batch, args.rounds = 2, 64, 2, 2
        pipe = tiny_sd1_pipeline()
    else:
        pipe = sd15_arch_pipeline()
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu} | torch {torch.__version__} | diffusers {diffusers.__version__} | transformers {transformers.__version__} | dtype {dtype}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    prompt = "a photo of a cat sitting on a sofa, detailed, soft light"
    scheduler_config = dict(pipe.scheduler.config)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def peer(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            pipe(prompt, num_inference_steps=args.steps, height=args.size, width=args.size, generator=torch.Generator("cpu").manual_seed(i))
        sync()
        return n / (time.perf_counter() - t0)

    engine = Engine(from_pipeline(pipe, "sd15-arch"))
    settings = Settings(steps=args.steps, sampler="Euler", cfg_scale=7.5, width=args.size, height=args.size)

    def tihub(n: int) -> float:
        if device.type == "cuda":
            pipe.unet.to(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        engine.run([prompt] * n, [""] * n, list(range(n)), settings)
        sync()
        rate = n / (time.perf_counter() - t0)
        pipe.unet.to(memory_format=torch.contiguous_format)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(scheduler_config)
        return rate

    tihub(args.batch)
    peer(1)  # warm-up
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(tihub(args.batch))
        theirs.append(peer(args.batch))
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"SD1.5 architecture, {args.size}x{args.size}, {args.steps} steps, CFG, {args.rounds} rounds of {args.batch} images")
    print(f"  tihub Engine.run, batch {args.batch}:        median {mo:.3f} images/s")
    print(f"  diffusers default, one image per call: median {mt:.3f} images/s")
    print(f"  ratio: {mo / mt:.2f}x")
    if not args.quick and device.type == "cuda":
        peak = args.peak or next((v for k, v in PEAK_BF16.items() if k in gpu), None)
        scale = args.steps / 20 * (args.size / 512) ** 2
        achieved = mo * TFLOP_PER_IMAGE * scale
        if peak:
            print(f"  tihub: {achieved:.0f} TFLOP/s = {achieved / peak:.1%} of {peak:.0f} TFLOP/s bf16 peak (peer {mt * TFLOP_PER_IMAGE * scale / peak:.1%})")
        else:
            print(f"  tihub: {achieved:.0f} TFLOP/s (pass --peak for the fraction of peak)")
        print(f"  peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
