"""On an NVIDIA GPU: does tihub's Philox emulation draw what torch.randn draws on the GPU?

tihub's `--rng gpu` uses the GPU's own generator where there is one and the emulation elsewhere;
A1111's "NV" source is the same emulation. This prints, per seed and latent shape, the largest
difference between the emulation and torch.randn(device="cuda") for the first draw (the starting
noise) and the second (the first ancestral noise). A check, not a benchmark.

    python3 benchmarks/gpu_rng.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import numpy as np
    import torch

    from tihub.engine.sampling.rng import PhiloxGenerator

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    worst = 0.0
    for seed in (0, 42, 1234567, 2**32 - 1):
        for shape in ((4, 64, 64), (4, 96, 64), (4, 128, 128)):
            g = torch.Generator("cuda").manual_seed(seed)
            emulated = PhiloxGenerator(seed)
            for draw in ("first", "second"):
                gpu = torch.randn(shape, generator=g, device="cuda").cpu().numpy()
                cpu = emulated.randn(shape)
                diff = float(np.abs(gpu - cpu).max())
                worst = max(worst, diff) if draw == "first" else worst
                print(f"seed {seed:>10} shape {shape} {draw:6s} draw: max |gpu - emulation| = {diff:.3g}")
    print(f"first draws: worst {worst:.3g} ({'equal to float rounding' if worst < 1e-5 else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
