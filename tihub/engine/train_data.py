"""Training data: pictures, captions, prompt templates, flips, batches and the latent cache.

Everything random here is derived from `(seed, index)` alone, never from a running generator, so a
resumed run draws exactly the batches, prompts, noise and timesteps an uninterrupted run would.
Only `encode_latents` and `draw_latents` import torch.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tihub.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TEMPLATES = ("subject", "style", "subject_filewords", "style_filewords")
MIN_SIDE = 32  # smaller pictures carry nothing a 64x64-latent UNet can learn from
MAX_PIXELS = 64 * 1024 * 1024  # above this a picture is treated as a decompression bomb
MAX_FILE_BYTES = 256 * 1024 * 1024

_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")  # "00012-a cat" -> "a cat", as A1111 does


# --------------------------------------------------------------------------------------------
# Templates and captions


def load_template(spec: str) -> list[str]:
    """The prompt lines of a built-in template (`subject`, `style`, ...) or of a text file."""
    if spec in TEMPLATES:
        text = resources.files("tihub.data").joinpath("templates", f"{spec}.txt").read_text("utf-8")
        where = f"built-in template {spec!r}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--template {spec!r} is neither one of {', '.join(TEMPLATES)} nor a readable file; pick one of those or give a text file with one prompt per line.")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Template file {path} could not be read as UTF-8 text ({exc}); save it as UTF-8 with one prompt per line.") from None
        where = f"template file {path}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"The {where} has no prompt lines; write one prompt per line, each using [name].")
    if not any("[name]" in line for line in lines):
        raise ConfigError(f"No line of the {where} contains [name], so the embedding would never be trained; add [name] where the new word goes.")
    return lines


def caption_for(image: Path) -> str:
    """The picture's caption: its same-name `.txt` file, else the file name without leading numbers."""
    txt = image.with_suffix(".txt")
    if txt.is_file():
        try:
            return " ".join(txt.read_text("utf-8", errors="replace").split())
        except OSError:
            pass
    return _LEADING_NUMBERS.sub("", image.stem).strip()


def make_prompt(line: str, name: str, filewords: str, shuffle_tags: bool = False, tag_dropout: float = 0.0, rng: random.Random | None = None) -> str:
    """Fill one template line: tags of the caption (split on commas) are dropped with probability
    `tag_dropout` and shuffled when asked, joined back with commas into `[filewords]`;
    `[name]` becomes the embedding's name."""
    rng = rng or random.Random(0)
    tags = filewords.split(",")
    if tag_dropout > 0:
        tags = [t for t in tags if rng.random() >= tag_dropout]
    if shuffle_tags:
        rng.shuffle(tags)
    words = ",".join(tags)
    return line.replace("[filewords]", words).replace("[name]", name)


# --------------------------------------------------------------------------------------------
# Pictures


@dataclass
class Picture:
    """One training picture at its training size (a flipped copy is its own Picture)."""

    path: Path
    caption: str
    pixels: np.ndarray  # uint8 [H, W, 3]
    alpha: np.ndarray | None  # float32 [H, W] in 0..1, when the file had transparency
    original_size: tuple[int, int]  # (height, width) before resizing, for SDXL's time ids
    crop_top_left: tuple[int, int] = (0, 0)
    flipped: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the training pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


@dataclass
class PictureSet:
    pictures: list[Picture]
    skipped: list[str] = field(default_factory=list)  # one sentence per skipped file
    originals: int = 0  # pictures before flips

    def describe(self) -> str:
        """'53 pictures (106 with flips)'."""
        word = "picture" if self.originals == 1 else "pictures"
        if len(self.pictures) != self.originals:
            return f"{self.originals} {word} ({len(self.pictures)} with flips)"
        return f"{self.originals} {word}"


def image_files(folder: Path) -> list[Path]:
    """The picture files of a folder, sorted by name (no recursion, hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _fit(img: Any, size: tuple[int, int] | None) -> tuple[Any, tuple[int, int]]:
    """Scale to cover `size` and centre-crop; without a size, crop to a multiple of 8."""
    from PIL import Image

    w, h = img.size
    if size is None:
        tw, th = (w // 8) * 8, (h // 8) * 8
        left, top = (w - tw) // 2, (h - th) // 2
        return img.crop((left, top, left + tw, top + th)), (top, left)
    tw, th = size
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return img.crop((left, top, left + tw, top + th)), (top, left)


def load_picture(path: Path, size: tuple[int, int] | None) -> Picture:
    """Read one picture; raises ValueError with a one-sentence reason when it is unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        nbytes = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    if nbytes > MAX_FILE_BYTES:
        raise ValueError(f"is {nbytes} bytes, larger than the {MAX_FILE_BYTES // 2**20} MiB limit")
    try:
        with Image.open(path) as im:
            w, h = im.size  # header only: nothing decoded yet
            if w * h > MAX_PIXELS:
                raise ValueError(f"claims {w}x{h} pixels, more than {MAX_PIXELS} (a decompression bomb?)")
            if min(w, h) < MIN_SIDE:
                raise ValueError(f"is only {w}x{h} pixels, smaller than {MIN_SIDE} on a side")
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            img = im.convert("RGBA" if has_alpha else "RGB")
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"is not a readable picture ({type(exc).__name__}: {exc})") from None
    if size is None and min(w, h) < 8:
        raise ValueError(f"is only {w}x{h} pixels")
    fitted, crop = _fit(img, size)
    arr = np.asarray(fitted)
    alpha = arr[..., 3].astype(np.float32) / 255.0 if has_alpha else None
    return Picture(path, caption_for(path), np.ascontiguousarray(arr[..., :3]), alpha, (h, w), crop)


def load_pictures(folder: Path, size: tuple[int, int] | None, flip: bool = False) -> PictureSet:
    """All usable pictures of `folder` (and their mirror images with `flip`); unusable files are
    listed in `skipped`, one sentence each."""
    if not folder.is_dir():
        raise ConfigError(f"--images {folder} is not a folder; point it at a folder of PNG, JPEG or WEBP pictures.")
    out = PictureSet([])
    for path in image_files(folder):
        try:
            pic = load_picture(path, size)
        except ValueError as exc:
            out.skipped.append(f"Skipped {path.name}: it {exc}.")
            continue
        out.pictures.append(pic)
    out.originals = len(out.pictures)
    if not out.pictures:
        extra = f" ({len(out.skipped)} files could not be used)" if out.skipped else ""
        raise ConfigError(f"--images {folder} holds no usable pictures{extra}; add PNG, JPEG or WEBP files of at least {MIN_SIDE}x{MIN_SIDE} pixels.")
    if flip:
        for pic in list(out.pictures):
            out.pictures.append(
                Picture(
                    pic.path,
                    pic.caption,
                    np.ascontiguousarray(pic.pixels[:, ::-1]),
                    None if pic.alpha is None else np.ascontiguousarray(pic.alpha[:, ::-1]),
                    pic.original_size,
                    pic.crop_top_left,
                    flipped=True,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Deterministic randomness and batches


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from `seed` and any labels (step numbers, picture indices, ...)."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def epoch_batches(sizes: Sequence[tuple[int, int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of picture indices: pictures are grouped by size (a batch never mixes
    sizes), shuffled by `(seed, epoch)`, and every batch is full (a short group wraps around)."""
    rng = random.Random(derive_seed(seed, "epoch", epoch))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(s, []).append(i)
    batches: list[list[int]] = []
    for key in sorted(groups):
        idx = groups[key][:]
        rng.shuffle(idx)
        n = max(1, -(-len(idx) // batch_size))
        for b in range(n):
            batches.append([idx[(b * batch_size + k) % len(idx)] for k in range(batch_size)])
    rng.shuffle(batches)
    return batches


class BatchPlan:
    """Maps a micro-batch number (0, 1, 2, ... over the whole run) to picture indices."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int, seed: int) -> None:
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.per_epoch = len(epoch_batches(self.sizes, batch_size, seed, 0))
        self._cache: dict[int, list[list[int]]] = {}

    def batch(self, micro: int) -> tuple[int, int, list[int]]:
        """(epoch, index within the epoch, picture indices) of micro-batch `micro`."""
        epoch, j = divmod(micro, self.per_epoch)
        if epoch not in self._cache:
            self._cache = {epoch: epoch_batches(self.sizes, self.batch_size, self.seed, epoch)}
        return epoch, j, self._cache[epoch][j]


def prompts_for(pictures: Sequence[Picture], indices: Sequence[int], lines: Sequence[str], seed: int, micro: int, shuffle_tags: bool, tag_dropout: float, name: str = "[name]") -> list[str]:
    """The prompts of one micro-batch (template line, tag dropout and shuffle drawn per picture)."""
    rng = random.Random(derive_seed(seed, "prompt", micro))
    return [make_prompt(rng.choice(list(lines)), name, pictures[i].caption, shuffle_tags, tag_dropout, rng) for i in indices]


# --------------------------------------------------------------------------------------------
# Latent cache


@dataclass
class LatentCache:
    """VAE latents of every picture, computed once.

    mode `once`: one sample of the VAE's distribution per picture, drawn at cache time;
    `deterministic`: the distribution's mean; `random`: mean and std kept, a fresh sample each step.
    """

    mode: str
    mean: list[Any]  # torch tensors [4, h, w] (scaled), on the training device
    std: list[Any] | None
    weights: list[Any] | None  # alpha loss weights [1, h, w] or None

    def draw(self, indices: Sequence[int], generator: Any) -> Any:
        import torch

        lat = torch.stack([self.mean[i] for i in indices])
        if self.mode == "random" and self.std is not None:
            std = torch.stack([self.std[i] for i in indices])
            eps = torch.randn(lat.shape, generator=generator, dtype=torch.float32, device=lat.device).to(lat.dtype)
            lat = lat + std * eps
        return lat

    def weight(self, indices: Sequence[int]) -> Any:
        import torch

        if self.weights is None:
            return None
        return torch.stack([self.weights[i] for i in indices])


def encode_latents(
    vae: Any,
    pictures: Sequence[Picture],
    mode: str,
    seed: int,
    device: Any,
    store_dtype: Any,
    alpha_weights: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> LatentCache:
    """Encode every picture once with the VAE (fp32, no gradients) and keep the latents."""
    import torch
    import torch.nn.functional as F

    cfg = vae.config
    scale = float(getattr(cfg, "scaling_factor", 0.18215) or 0.18215)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    means: list[Any] = []
    stds: list[Any] = []
    weights: list[Any] = []
    vae_dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        for i, pic in enumerate(pictures):
            x = torch.from_numpy(pic.pixels.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)[None]
            dist = vae.encode(x.to(device, vae_dtype)).latent_dist
            mean = dist.mean.float()
            std = dist.std.float()
            if mode == "once":
                g = torch.Generator().manual_seed(derive_seed(seed, "latent", i))
                eps = torch.randn(mean.shape, generator=g, dtype=torch.float32).to(mean.device)
                mean = mean + std * eps
            means.append(((mean[0] - shift) * scale).to(store_dtype))
            if mode == "random":
                stds.append((std[0] * scale).to(store_dtype))
            if alpha_weights:
                if pic.alpha is None:
                    w = torch.ones((1, *mean.shape[-2:]), device=mean.device)
                else:
                    a = torch.from_numpy(pic.alpha)[None, None].to(mean.device)
                    w = F.interpolate(a, size=mean.shape[-2:], mode="area")[0]
                weights.append(w.float())
            if on_progress:
                on_progress(i + 1)
    return LatentCache(mode, means, stds if mode == "random" else None, weights if alpha_weights else None)
