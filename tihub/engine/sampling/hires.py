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

As A1111 1.10: the pass may use its own sampler ("Hires sampler"; none: the first pass's) and
schedule type ("Hires schedule type"; none: the first pass's chosen type, so "Automatic" is the
hires sampler's own), its own prompt and negative ("Hires prompt", "Hires negative prompt"; empty:
the first pass's). Its conditioning is the prompt's editing schedule over the hires pass
(prompts.prompt_schedule with the first pass's model calls), so `[a:b:25]` after 20 steps
switches at hires step 5. "Hires CFG Scale" (Forge's key; A1111 1.10 has none) sets the pass's
CFG scale.
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
    sampler: str | None = None  # None: the first pass's (A1111's "Use same sampler")
    schedule_type: str | None = None  # None: the first pass's chosen type ("Use same scheduler")
    cfg_scale: float | None = None  # None: the first pass's
    prompt: str = ""  # "": the first pass's prompt
    negative_prompt: str = ""  # "": the first pass's negative prompt

    def check(self) -> None:
        if not 1.0 <= self.scale <= 8.0:
            raise ConfigError(f"Hires scale {self.scale:g} is out of range; use 1 to 8 (e.g. 2).")
        if self.steps < 0 or self.steps > 1000:
            raise ConfigError(f"Hires steps {self.steps} is out of range; use 0 (the first pass's steps) to 1000.")
        if not 0.0 < self.denoising <= 1.0:
            raise ConfigError(f"Denoising strength {self.denoising:g} is out of range; use a value above 0 and at most 1 (e.g. 0.7).")
        self.upscaler = upscaler_name(self.upscaler)
        from tihub.engine.samplers import canonical_schedule, resolve

        if self.sampler is not None and self.sampler.strip().lower() in ("", "use same sampler"):
            self.sampler = None
        if self.schedule_type is not None and self.schedule_type.strip().lower() in ("", "use same scheduler"):
            self.schedule_type = None
        if self.sampler is not None:
            # an old-style name ("DPM++ 2M Karras") carries its schedule type
            self.sampler, kind = resolve(self.sampler, self.schedule_type)
            if self.schedule_type is not None or kind != "Automatic":
                self.schedule_type = kind
        elif self.schedule_type is not None:
            self.schedule_type = canonical_schedule(self.schedule_type)
        if self.cfg_scale is not None and not (0 <= self.cfg_scale <= 100):
            raise ConfigError(f"Hires CFG scale {self.cfg_scale:g} is out of range; use 0 to 100 (or leave it out for the first pass's).")

    def pass_settings(self, sampler: str, schedule_type: str, cfg_scale: float) -> tuple[str, str, float]:
        """(sampler, schedule type, CFG scale) of the hires pass after a first pass with these."""
        from tihub.engine.samplers import SAMPLERS

        hs = self.sampler or sampler
        kind = self.schedule_type or schedule_type
        if SAMPLERS[hs].timesteps and self.schedule_type is None:
            kind = "Automatic"  # A1111's DDIM/PLMS ignore an inherited schedule type
        return hs, kind, cfg_scale if self.cfg_scale is None else self.cfg_scale

    def target(self, width: int, height: int) -> tuple[int, int]:
        w, h = int(width * self.scale), int(height * self.scale)
        if w % 8 or h % 8:
            raise ConfigError(f"Hires scale {self.scale:g} makes {width}x{height} into {w}x{h}, not a multiple of 8; pick a scale that does (e.g. 1.5 or 2).")
        return w, h

    def infotext(self, sampler: str | None = None, schedule_type: str | None = None, cfg_scale: float | None = None,
                 prompt: str | None = None, negative_prompt: str | None = None) -> dict[str, Any]:
        """A1111's keys, in A1111 1.10's order (Size stays the first pass's), given the first
        pass's sampler, schedule type, CFG scale, prompt and negative: "Hires sampler" when it
        differs, "Hires prompt"/"Hires negative prompt" when they differ, "Hires schedule type"
        when the type that ran differs from the one the first pass wrote, and (Forge's)
        "Hires CFG Scale" when it differs from the CFG scale."""
        params: dict[str, Any] = {"Denoising strength": f"{self.denoising:g}"}
        if sampler is not None and self.sampler is not None and self.sampler != sampler:
            params["Hires sampler"] = self.sampler
        if prompt is not None and self.prompt and self.prompt != prompt:
            params["Hires prompt"] = self.prompt
        if negative_prompt is not None and self.negative_prompt and self.negative_prompt != negative_prompt:
            params["Hires negative prompt"] = self.negative_prompt
        if cfg_scale is not None and self.cfg_scale is not None and self.cfg_scale != cfg_scale:
            params["Hires CFG Scale"] = f"{self.cfg_scale:g}"
        if sampler is not None and schedule_type is not None:
            hs, kind, _ = self.pass_settings(sampler, schedule_type, 0.0)
            ran = written_schedule(hs, kind)
            if ran is not None and ran != written_schedule(sampler, schedule_type):
                params["Hires schedule type"] = ran
        params.update({
            "Hires upscale": f"{self.scale:g}",
            "Hires steps": self.steps or None,
            "Hires upscaler": Path(self.upscaler).stem if is_model_file(self.upscaler) else self.upscaler,
        })
        return params

    def to_json(self, width: int, height: int) -> dict[str, Any]:
        w, h = self.target(width, height)
        return {"scale": self.scale, "steps": self.steps, "denoising": self.denoising, "upscaler": self.upscaler, "size": f"{w}x{h}",
                "sampler": self.sampler, "schedule_type": self.schedule_type, "cfg_scale": self.cfg_scale,
                "prompt": self.prompt or None, "negative_prompt": self.negative_prompt or None}


def written_schedule(sampler: str, kind: str) -> str | None:
    """The schedule label A1111 1.10 records for a pass (its get_sigmas): the type that ran, or
    None where the sampler has no schedule function (DDIM, PLMS; "Automatic" on a sampler
    without a default type, which runs the model's own uniform sigmas)."""
    from tihub.engine.samplers import SAMPLERS, effective_schedule

    spec = SAMPLERS[sampler]
    if spec.timesteps or (kind == "Automatic" and spec.scheduler is None):
        return None
    return effective_schedule(sampler, kind)


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
