"""Re-run a picture from its settings, and measure how close the result is to the original.

* `rerun_settings(info)`: A1111 infotext (or Civitai's preview metadata, through
  `infotext.from_civitai_meta`) -> keyword arguments of `Engine.generate`, plus one sentence per
  setting this engine cannot follow (a LoRA in the prompt, a model upscaler, face restoration...).
  What the engine can follow is read off `Engine.generate`'s own keywords, so a new engine
  setting is followed as soon as it exists.
* `similarity(a, b)`: how alike two pictures are. Both are converted to luminance (ITU-R 601)
  and resized (Lanczos) to the same 128 px on the longer side, then `ssim` is the mean
  structural similarity over 7x7 windows (Wang et al. 2004 constants, L = 255; 1.0 identical),
  and `mad` the mean absolute difference of the RGB pixels at that size, in 0..255.
* `reproduce_previews(engine, previews, fetch)`: regenerate the catalogue's published previews
  made on this engine's model (their `Model hash` names it) and compare each with its picture.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tihub.errors import ConfigError, FormatError, TihubError
from tihub.infotext import Infotext, Reproduction, from_civitai_meta, read_infotext, reproduction

SIDE = 128  # similarity is measured at this size (longer side)
MAX_PIXELS = 40_000_000  # a published picture larger than this is refused (decompression bombs)


HIRES_OPTIONS = ("hires_scale", "hires_steps", "hires_upscaler", "denoising", "hires_sampler", "hires_schedule_type",
                 "hires_cfg_scale", "hires_prompt", "hires_negative_prompt")  # as the CLI's --hires-* options


def _generate_params() -> set[str]:
    from tihub.engine.generate import Engine

    return {n for n in inspect.signature(Engine.generate).parameters if n not in ("self", "prompt", "negative_prompt")}


def _supported() -> set[str]:
    """Setting names `rerun_settings` may hand out: Engine.generate's keywords, and the hires
    options when the engine takes a `hires` object (`engine_kwargs` folds them)."""
    names = _generate_params()
    if "hires" in names:
        names |= set(HIRES_OPTIONS)
    return names


def engine_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """`rerun_settings(...).settings` as Engine.generate keywords: the hires options become
    the engine's `hires` object (A1111's defaults for the ones the infotext leaves out)."""
    out = dict(settings)
    found = {k: out.pop(k) for k in HIRES_OPTIONS if k in out}
    if found and "hires" in _generate_params():
        from tihub.engine.sampling.hires import Hires

        out["hires"] = Hires(
            scale=found.get("hires_scale", 2.0), steps=found.get("hires_steps", 0),
            denoising=found.get("denoising", 0.7), upscaler=found.get("hires_upscaler", "Latent"),
            sampler=found.get("hires_sampler"), schedule_type=found.get("hires_schedule_type"), cfg_scale=found.get("hires_cfg_scale"),
            prompt=found.get("hires_prompt", ""), negative_prompt=found.get("hires_negative_prompt", ""),
        )
    return out


def rerun_settings(info: Infotext) -> Reproduction:
    """What `generate --from-image` runs for this infotext (see the module docstring)."""
    from tihub.engine.samplers import from_infotext

    rep = reproduction(info, _supported())
    if rep.sampler:
        try:
            sampler, kind, warning = from_infotext(rep.sampler, rep.schedule_type)
        except ConfigError:
            rep.notes.insert(0, f"The sampler '{rep.sampler}' is not one tihub has; the default sampler is used, so the picture will differ.")
        else:
            rep.settings["sampler"] = sampler
            rep.settings["schedule_type"] = kind
            if warning:
                rep.notes.insert(0, warning)
    return rep


def read_rerun(path: str | Path) -> Reproduction:
    """`rerun_settings` for an image file's infotext (raises NoInfotext)."""
    return rerun_settings(read_infotext(path))


def model_matches(model: Any, model_hash: str | None) -> bool:
    """Whether an infotext `Model hash` (AutoV2, sha256 prefix or A1111's 8-hex old hash) names
    this loaded model."""
    if not model_hash:
        return False
    h = model_hash.strip().strip("[]").lower()
    sha = (getattr(model, "sha256", None) or "").lower()
    if len(h) >= 10 and sha.startswith(h):
        return True
    if getattr(model, "hash", None) and h == str(model.hash).lower():
        return True
    if len(h) == 8 and getattr(model, "path", None) and Path(model.path).is_file():
        from tihub.hashing import old_hash_file

        try:
            return old_hash_file(model.path) == h
        except TihubError:
            return False
    return False


# ---------------------------------------------------------------------------------------------
# Similarity


def _prepare(image: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rgb = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    a = np.asarray(rgb).astype(np.float64)
    lum = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return a, lum


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions only)."""
    c = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), axis=0), axis=1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def similarity(a: Any, b: Any, side: int = SIDE) -> dict[str, float]:
    """`{"ssim", "mad"}` of two PIL images, measured as the module docstring says."""
    w, h = b.size
    scale = side / max(w, h)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    ra, la = _prepare(a, size)
    rb, lb = _prepare(b, size)
    k = 7
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _box(la, k), _box(lb, k)
    var_a = _box(la * la, k) - mu_a**2
    var_b = _box(lb * lb, k) - mu_b**2
    cov = _box(la * lb, k) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return {"ssim": round(float(ssim.mean()), 4), "mad": round(float(np.abs(ra - rb).mean()), 3)}


def open_picture(data: bytes, what: str) -> Any:
    """A published picture's bytes as a PIL image, refused when it is not an image or too big."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ConfigError(f"The picture {what} is {img.width}x{img.height}, too large to compare; skip it.")
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FormatError(f"The picture {what} is not an image tihub can read ({exc}).") from None
    return img


# ---------------------------------------------------------------------------------------------
# Published previews


@dataclass
class PreviewCheck:
    url: str | None
    ok: bool
    ssim: float | None = None
    mad: float | None = None
    seed: int | None = None
    path: str | None = None  # the regenerated picture
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"url": self.url, "ok": self.ok, "ssim": self.ssim, "mad": self.mad, "seed": self.seed, "path": self.path, "notes": self.notes}
        if self.error:
            d["error"] = self.error
        return d


def preview_infotext(record: dict[str, Any]) -> Infotext | None:
    """The generation settings stored with a catalogue preview record (Civitai's `meta`)."""
    params = record.get("params") or {}
    meta = params.get("meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and meta.get("prompt") is not None:
        return from_civitai_meta(meta)
    if isinstance(params, dict) and isinstance(params.get("infotext"), str):
        from tihub.infotext import parse_infotext

        return parse_infotext(params["infotext"])
    return None


def _meta_model_hash(record: dict[str, Any]) -> str | None:
    """Civitai's other place for it: `meta.hashes.model`."""
    params = record.get("params") or {}
    meta = params.get("meta") if isinstance(params, dict) else None
    hashes = meta.get("hashes") if isinstance(meta, dict) else None
    value = hashes.get("model") if isinstance(hashes, dict) else None
    return value if isinstance(value, str) else None


def reproduce_previews(
    engine: Any,
    previews: list[dict[str, Any]],
    fetch: Callable[[str], bytes],
    out: Path | None = None,
    steps_cap: int | None = None,
) -> list[PreviewCheck]:
    """Regenerate each preview record whose `Model hash` names the engine's model and compare it
    with the published picture (`fetch(url) -> bytes`). Records of other models are left out;
    each kept one gives a PreviewCheck (ok False with `error` when it cannot be compared)."""
    checks = []
    for rec in previews:
        info = preview_infotext(rec)
        mh = rec.get("model_hash") or (info.parameters.get("Model hash") if info else None) or _meta_model_hash(rec)
        if info is None or not model_matches(engine.model, mh):
            continue
        url = rec.get("url")
        check = PreviewCheck(url, False)
        checks.append(check)
        try:
            rep = rerun_settings(info)
            check.notes = rep.notes
            kwargs = engine_kwargs(rep.settings)
            if steps_cap is not None and kwargs.get("steps", 20) > steps_cap:
                kwargs["steps"] = steps_cap
                check.notes.append(f"Steps were capped at {steps_cap}.")
            if url is None:
                raise ConfigError("The preview record has no picture URL.")
            published = open_picture(fetch(url), url)
            if "size" not in kwargs:
                kwargs["size"] = f"{published.width // 8 * 8}x{published.height // 8 * 8}"
            result = engine.generate(rep.prompt, rep.negative_prompt, out=out, **kwargs)
            check.seed = result.seeds[0]
            check.path = str(result.paths[0]) if result.paths else None
            sim = similarity(result.images[0], published)
            check.ssim, check.mad, check.ok = sim["ssim"], sim["mad"], True
        except TihubError as exc:
            check.error = str(exc)
    return checks
