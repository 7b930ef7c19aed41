"""A1111's "Hires. fix": a second, img2img pass over an upscaled first picture.

The first picture (at Size) is upscaled to `int(width * scale) x int(height * scale)`:
- in latent space with one of A1111's latent modes ("Latent" = bilinear, "Latent (antialiased)",
  "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)");
- or as pixels ("Lanczos", "Nearest", "None" = a plain Lanczos resize, or a model upscaler file
  of the ESRGAN family read through spandrel), then encoded by the VAE (its posterior mean; A1111
  samples the posterior from its global generator, a difference of the posterior's small spread).

The second pass is A1111's img2img schedule: with hires steps n (0: the first pass's steps) and
denoising d, the sampler's schedule is made for int(n / min(d, 0.999)) steps and its last n
sigmas run, from the upscaled latent plus fresh noise of each image's seed at the first of them.
The conditioning is each prompt's final text (A1111 continues prompt editing into the hires pass
only for `[a:b:when]` with when past the first pass, which is not followed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tihub.errors import ConfigError

# A1111's latent upscale modes: (torch interpolate mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass
class Hires:
    scale: float = 2.0
    steps: int = 0  # 0: the first pass's steps
    denoising: float = 0.7
    upscaler: str = "Latent"

    def check(self) -> None:
        if not 1.0 <= self.scale <= 8.0:
            raise ConfigError(f"Hires scale {self.scale:g} is out of range; use 1 to 8 (e.g. 2).")
        if self.steps < 0 or self.steps > 1000:
            raise ConfigError(f"Hires steps {self.steps} is out of range; use 0 (the first pass's steps) to 1000.")
        if not 0.0 < self.denoising <= 1.0:
            raise ConfigError(f"Denoising strength {self.denoising:g} is out of range; use a value above 0 and at most 1 (e.g. 0.7).")
        self.upscaler = upscaler_name(self.upscaler)

    def target(self, width: int, height: int) -> tuple[int, int]:
        w, h = int(width * self.scale), int(height * self.scale)
        if w % 8 or h % 8:
            raise ConfigError(f"Hires scale {self.scale:g} makes {width}x{height} into {w}x{h}, not a multiple of 8; pick a scale that does (e.g. 1.5 or 2).")
        return w, h

    def infotext(self) -> dict[str, Any]:
        """A1111's keys (Size stays the first pass's)."""
        return {
            "Denoising strength": f"{self.denoising:g}",
            "Hires upscale": f"{self.scale:g}",
            "Hires steps": self.steps or None,
            "Hires upscaler": Path(self.upscaler).stem if is_model_file(self.upscaler) else self.upscaler,
        }

    def to_json(self, width: int, height: int) -> dict[str, Any]:
        w, h = self.target(width, height)
        return {"scale": self.scale, "steps": self.steps, "denoising": self.denoising, "upscaler": self.upscaler, "size": f"{w}x{h}"}


def is_model_file(name: str) -> bool:
    return name.lower().endswith(MODEL_SUFFIXES)


def upscaler_name(name: str | None) -> str:
    """A1111's upscaler name (case-insensitive), or the path of a model upscaler file."""
    if not name:
        return "Latent"
    key = name.strip()
    for known in (*LATENT_MODES, *IMAGE_UPSCALERS):
        if key.lower() == known.lower():
            return known
    if is_model_file(key):
        if not os.path.isfile(key):
            raise ConfigError(f"Upscaler model file '{key}' does not exist; give the path of an ESRGAN-family .pth or .safetensors file.")
        return key
    raise ConfigError(f"Unknown hires upscaler '{name}'; use one of: {', '.join((*LATENT_MODES, *IMAGE_UPSCALERS))}, or the path of a model upscaler file (.pth/.safetensors).")


def upscale_latents(latents: Any, mode: str, width: int, height: int) -> Any:
    import torch

    how, antialias = LATENT_MODES[mode]
    return torch.nn.functional.interpolate(latents, size=(height // 8, width // 8), mode=how, antialias=antialias)


def _pil_resize(image: Any, width: int, height: int, nearest: bool = False) -> Any:
    from PIL import Image

    return image.resize((width, height), resample=Image.NEAREST if nearest else Image.LANCZOS)


def upscale_image(image: Any, upscaler: str, width: int, height: int, model: Any = None) -> Any:
    """A1111's resize_image(0, ...) with an upscaler: the upscaler's own steps to the scale
    (rounded down to multiples of 8, at most 3 rounds), then a Lanczos resize to the exact size."""
    if upscaler == "None":
        return _pil_resize(image, width, height)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
        for _ in range(3):
            if image.width >= dest_w and image.height >= dest_h and scale != 1:
                break
            shape = image.size
            if model is not None:
                image = model(image)
            else:
                image = _pil_resize(image, int(image.width * scale), int(image.height * scale), nearest=upscaler == "Nearest")
            if shape == image.size:
                break
        if image.size != (dest_w, dest_h):
            image = _pil_resize(image, dest_w, dest_h)
    if image.size != (width, height):
        image = _pil_resize(image, width, height)
    return image


def load_model_upscaler(path: str, device: Any) -> Any:
    """A model upscaler (ESRGAN family) from a file read by tihub's safe readers, built by
    spandrel; returns image -> upscaled image."""
    import numpy as np
    import torch

    from tihub.errors import EngineError, FormatError

    state = _read_state_dict(Path(path))
    try:
        spandrel = _import_spandrel()
    except ImportError as exc:
        raise EngineError("Model upscalers need the package spandrel (pip install spandrel); or use --hires-upscaler Lanczos or Latent.") from exc
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(state)
    except Exception as exc:  # spandrel: unknown architecture
        raise FormatError(f"{path} is not an upscaler model spandrel knows ({exc}); use an ESRGAN-family file, or --hires-upscaler Lanczos.") from exc
    descriptor.eval()

    def run(image: Any) -> Any:
        from PIL import Image

        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            y = descriptor(x.to(device)).clamp(0, 1)
        return Image.fromarray((y[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8))

    return run


def _import_spandrel() -> Any:
    """spandrel, also where torchvision is absent: its registry imports torchvision at import time
    for two architectures that are not upscalers (RestoreFormer, LaMa); tihub then gives those
    imports placeholder names, which fail if ever called, and removes them again."""
    import importlib
    import sys
    import types

    try:
        return importlib.import_module("spandrel")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("torchvision"):
            raise
    for name in [m for m in sys.modules if m == "spandrel" or m.startswith("spandrel.")]:
        del sys.modules[name]

    def missing(*_args: Any, **_kwargs: Any) -> Any:
        raise ImportError("This spandrel architecture needs torchvision, which is not installed.")

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    stubs = {n: types.ModuleType(n) for n in names}
    stubs["torchvision"].transforms = stubs["torchvision.transforms"]  # type: ignore[attr-defined]
    stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    functional = stubs["torchvision.transforms.functional"]
    functional.normalize = functional.rotate = missing  # type: ignore[attr-defined]
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest", BICUBIC="bicubic")  # type: ignore[attr-defined]
    sys.modules.update(stubs)
    try:
        return importlib.import_module("spandrel")
    finally:
        for n in names:  # other libraries probe for torchvision: leave no stub behind
            if sys.modules.get(n) is stubs[n]:
                del sys.modules[n]


def _read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a .safetensors or pickled .pth/.pt file, read without running any of its code."""
    import torch

    from tihub.errors import FormatError

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise FormatError(f"{path} is not a readable safetensors file.") from exc
    from tihub.formats.containers import is_legacy_torch, read_legacy_torch, read_torch_zip

    data = path.read_bytes()
    obj = read_legacy_torch(data, str(path), model=True) if is_legacy_torch(data) else read_torch_zip(data, str(path), max_storage_bytes=len(data) * 2, model=True)
    if isinstance(obj, dict) and "params_ema" in obj:
        obj = obj["params_ema"]
    elif isinstance(obj, dict) and "params" in obj:
        obj = obj["params"]
    if not isinstance(obj, dict):
        raise FormatError(f"{path} holds no state dict of tensors; use an ESRGAN-family upscaler file.")
    return {k: torch.as_tensor(v) for k, v in obj.items() if hasattr(v, "shape")}


def img2img_steps(steps: int, denoising: float) -> tuple[int, int]:
    """(steps the schedule is made for, index of the first sigma run) as A1111's
    setup_img2img_steps with fixed steps: the last `steps` sigmas of a longer schedule."""
    total = int(steps / min(denoising, 0.999))
    return total, steps - 1
