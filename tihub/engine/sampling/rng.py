"""Where the noise comes from: A1111's three random number sources, per image.

A1111's "Random number generator source" setting (infotext `RNG:`, absent for the default GPU):

- `gpu`: torch.randn on the GPU with a generator seeded by the image seed. On a machine without
  an NVIDIA GPU tihub draws what such a GPU draws, through the Philox emulation below (A1111 itself
  would fall back to the CPU generator there, which no GPU user's image was made with).
- `cpu`: torch.randn with a CPU generator seeded by the image seed; the same on every machine.
- `nv`: A1111's CPU emulation of NVIDIA's Philox generator ("NV"); the same on every machine.

`ImageNoise` follows A1111's per-image generators: image i of a batch has its own generator seeded
with its own seed, so an image does not depend on the batch it is in; `first()` is the starting
noise, `next()` the noise an ancestral or stochastic sampler draws later, continuing the same
generators, or, with an eta noise seed delta (ENSD), fresh generators seeded with seed + ENSD.

Variation seeds (A1111's "Variation seed", "Variation seed strength", "Seed resize from") shape
only the starting noise, as A1111's ImageRNG.first does, per image:

1. the noise is drawn at the seed-resize size (latent (C, H/8, W/8) of "Seed resize from" WxH)
   when one is given, from a fresh generator of the image seed, else at the latent size from the
   image's own generator;
2. with a strength other than 0 it is slerped towards the first draw of a fresh generator of the
   image's variation seed (`slerp`), at the same size;
3. with a seed-resize size, a fresh draw of the image seed at the latent size gets the noise of
   step 2 pasted into its middle (cropped where the resize size is larger).

The later noise, the ENSD re-seeding and the SDE samplers' Brownian trees (sampling.brownian)
follow the image seed only, as in A1111.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tihub.errors import ConfigError

SOURCES = ("gpu", "cpu", "nv")
INFOTEXT = {"gpu": None, "cpu": "CPU", "nv": "NV"}  # A1111 writes RNG only when not GPU

# Philox 4x32-10 constants (Salmon et al., 2011)
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
# the float32 constants of curand's Box-Muller: 2^-32 and 2^-32 * 2pi
_INV32 = float(np.float32(2.3283064e-10))
_INV32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def rng_source(name: str | None) -> str:
    """`gpu`, `cpu` or `nv` (case-insensitive; A1111's infotext spellings GPU/CPU/NV too)."""
    key = (name or "gpu").strip().lower()
    if key not in SOURCES:
        raise ConfigError(f"Unknown RNG source '{name}'; use gpu, cpu or nv.")
    return key


def _mulhilo(a: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    product = b.astype(np.uint64) * np.uint64(a)
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox4x32(counter: list[np.ndarray], key: tuple[int, int], rounds: int = 10) -> list[np.ndarray]:
    """Philox 4x32 on arrays of counters (four uint32 words each), one key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
    return [c0, c1, c2, c3]


class PhiloxGenerator:
    """A1111's "NV" source: normal numbers as torch.randn on an NVIDIA GPU gives them, on the CPU.

    Number i of a draw takes Philox's counter (offset, 0, i, 0) under the key (seed's low and high
    32 bits) and turns its first two words into one normal by Box-Muller (the sine branch); each
    draw moves the offset on by one."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        index = np.arange(n, dtype=np.uint32)
        zeros = np.zeros(n, dtype=np.uint32)
        counter = [np.full(n, self.offset & 0xFFFFFFFF, dtype=np.uint32), zeros, index, zeros.copy()]
        self.offset += 1
        x, y, _, _ = philox4x32(counter, (self.seed & 0xFFFFFFFF, self.seed >> 32))
        u = x.astype(np.float64) * _INV32 + _INV32 / 2
        v = y.astype(np.float64) * _INV32_2PI + _INV32_2PI / 2
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


LATENT_FACTOR = 8  # A1111's opt_f: pixels per latent cell, for "Seed resize from"


def slerp(t: float, low: Any, high: Any) -> Any:
    """A1111's spherical interpolation of one image's noise [C, H, W] from `low` (t = 0) to
    `high` (t = 1): the angle is taken per channel and column, between the two tensors
    normalised over their rows (dim 1); nearly parallel noise (mean cosine above 0.9995) is mixed
    linearly as `low * t + high * (1 - t)`, exactly as A1111 does it."""
    import torch

    a = low / torch.norm(low, dim=1, keepdim=True)
    b = high / torch.norm(high, dim=1, keepdim=True)
    cos = (a * b).sum(1)
    if cos.mean() > 0.9995:
        return low * t + high * (1 - t)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    return (torch.sin((1.0 - t) * angle) / sin).unsqueeze(1) * low + (torch.sin(t * angle) / sin).unsqueeze(1) * high


def paste_center(big: Any, small: Any) -> Any:
    """A1111's seed resize: `small` [C, h, w] written into the middle of `big` [C, H, W] (the
    middle of `small` where it is the larger one); returns `big`."""
    dx, dy = (big.shape[2] - small.shape[2]) // 2, (big.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    big[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return big


class ImageNoise:
    """Per-image noise for one batch, as A1111's ImageRNG (see the module docstring).

    `subseeds`: each image's variation seed (an image past the list's end takes 0, as A1111);
    `subseed_strength`: 0 (off) to 1; `seed_resize`: "Seed resize from" as (width, height) in
    pixels, or None."""

    def __init__(self, source: str, seeds: list[int], shape: tuple[int, ...], device: Any, ensd: int = 0,
                 subseeds: list[int] | None = None, subseed_strength: float = 0.0, seed_resize: tuple[int, int] | None = None) -> None:
        self.source = rng_source(source)
        self.seeds = [int(s) for s in seeds]
        self.shape = tuple(shape)  # one image's latent: (C, H, W)
        self.device = device
        self.ensd = int(ensd or 0)
        self.subseeds = [int(s) for s in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength or 0.0)
        self.seed_resize = tuple(seed_resize) if seed_resize and seed_resize[0] > 0 and seed_resize[1] > 0 else None
        self._generators = [self._generator(s) for s in self.seeds]
        self._first = True

    def _kind(self) -> str:
        """Which generator family draws: torch CPU, torch CUDA, or the Philox emulation."""
        if self.source == "cpu":
            return "cpu"
        if self.source == "gpu" and getattr(self.device, "type", str(self.device)) == "cuda":
            return "cuda"
        return "philox"  # nv, or gpu without an NVIDIA GPU: what that GPU would draw

    def _generator(self, seed: int) -> Any:
        import torch

        kind = self._kind()
        if kind == "philox":
            return PhiloxGenerator(seed)
        return torch.Generator(self.device if kind == "cuda" else "cpu").manual_seed(int(seed))

    def _draw(self, generator: Any, shape: tuple[int, ...] | None = None) -> Any:
        import torch

        shape = self.shape if shape is None else shape
        if isinstance(generator, PhiloxGenerator):
            return torch.from_numpy(generator.randn(shape)).to(self.device)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(self.device)

    def _start(self, i: int) -> Any:
        """Image i's starting noise with the variation seed and seed resize (module docstring)."""
        seed, own = self.seeds[i], self._generators[i]
        at = self.shape
        if self.seed_resize is not None:
            at = (self.shape[0], self.seed_resize[1] // LATENT_FACTOR, self.seed_resize[0] // LATENT_FACTOR)
        if at != self.shape:
            noise = self._draw(self._generator(seed), at)  # a fresh generator of the seed
        else:
            noise = self._draw(own)
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[i] if i < len(self.subseeds) else 0
            noise = slerp(self.subseed_strength, noise, self._draw(self._generator(subseed), at))
        if at != self.shape:
            noise = paste_center(self._draw(own), noise)  # the image's own generator's first draw
        return noise

    def first(self) -> Any:
        """The starting noise (unit variance), [B, C, H, W] float32 on the device."""
        import torch

        self._first = False
        out = torch.stack([self._start(i) for i in range(len(self.seeds))]).to(self.device)
        if self.ensd:
            # A1111: later noise comes from generators seeded with seed + ENSD
            self._generators = [self._generator(s + self.ensd) for s in self.seeds]
        return out

    def next(self) -> Any:
        """The next noise of every image, continuing its generator."""
        import torch

        if self._first:
            return self.first()
        return torch.stack([self._draw(g) for g in self._generators]).to(self.device)

    def randn_like(self, x: Any) -> Any:
        """Noise for a sampler step: per-image draws where the shape is the batch's latents."""
        import torch

        if tuple(x.shape[1:]) == self.shape and x.shape[0] == len(self.seeds):
            return self.next().to(dtype=x.dtype)
        return torch.randn_like(x)
