"""Brownian-tree noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE).

As in A1111, each image of a batch has its own Brownian tree (torchsde's), seeded with the image's
seed and spanning the run's lowest to highest nonzero sigma, so the same seed gives the same
picture in any batch and in any process. The noise between two sigmas is the tree's increment
scaled to unit variance.
"""

from __future__ import annotations

import warnings
from typing import Any

from tihub.errors import EngineError


class BrownianNoise:
    def __init__(self, x: Any, sigma_min: Any, sigma_max: Any, seeds: list[int]) -> None:
        import torch

        try:
            import torchsde
        except ImportError as exc:  # pragma: no cover - a dependency
            raise EngineError("The SDE samplers need the package torchsde (pip install torchsde); or use DPM++ 2M, which needs nothing extra.") from exc
        lo, hi = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.flip = 1
        if not lo < hi:
            lo, hi, self.flip = hi, lo, -1
        start = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(lo, start, hi, entropy=int(s)) for s in seeds]

    def __call__(self, sigma: Any, sigma_next: Any) -> Any:
        import torch

        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():
            # torchsde notes queries a rounding error outside the tree's span; it clamps them
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.flip * sign)
        return w / (b - a).abs().sqrt()
