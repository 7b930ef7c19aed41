"""The sampling settings of an A1111 infotext, as generate's keyword arguments.

`read_sampling(parameters)` turns the keys A1111 writes for sampling (Sampler, Schedule type, RNG,
ENSD, Eta, Eta DDIM, Sigma churn/tmin/tmax/noise, the variation-seed keys, Schedule min/max sigma
and rho, the UniPC keys, NGMS, Skip Early CFG, Denoising strength and the Hires keys) into
keyword arguments of `Engine.generate` and lists, one sentence each, the settings tihub cannot
follow (so the picture will differ). No torch is imported.
"""

from __future__ import annotations

import re
from typing import Any

from tihub.engine.samplers import from_infotext
from tihub.errors import ConfigError
from tihub.infotext import SETTING_KEYS

# A1111 keys for settings tihub has no option for
NOT_FOLLOWED = {
    "Discard penultimate sigma": "dropping the next-to-last sigma for every sampler",
    "SGM noise multiplier": "the SGM noise multiplier",
}


# A1111 keys of sampler settings tihub follows beyond the ones above: key -> (Randomness field,
# type), as tihub.infotext's table of settings has them
SAMPLER_KEYS: dict[str, tuple[str, type]] = {
    key: SETTING_KEYS[key]
    for key in ("Schedule min sigma", "Schedule max sigma", "Schedule rho", "UniPC variant", "UniPC skip type", "UniPC order",
                "UniPC lower order final", "NGMS", "NGMS all steps", "Skip Early CFG")
}


def _number(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"The image's {what} '{value}' is not a number.") from exc


def read_sampling(parameters: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(keyword arguments for Engine.generate, warnings) from an infotext's parameters."""
    out: dict[str, Any] = {}
    warnings: list[str] = []
    if "Sampler" in parameters:
        try:
            out["sampler"], out["schedule_type"], warning = from_infotext(parameters["Sampler"], parameters.get("Schedule type"))
        except ConfigError as exc:
            warnings.append(f"The image's sampler cannot be followed ({exc}); the default sampler is used, so the image will differ.")
        else:
            if warning:
                warnings.append(warning)
    rng = parameters.get("RNG")
    if rng:
        if rng.strip().lower() in ("gpu", "cpu", "nv"):
            out["rng"] = rng.strip().lower()
        else:
            warnings.append(f"The image's RNG '{rng}' is not one tihub has (GPU, CPU, NV); the GPU source is used, so the image will differ.")
    if "ENSD" in parameters:
        out["ensd"] = int(_number(parameters["ENSD"], "ENSD"))
    for key in ("Eta", "Eta DDIM"):
        if key in parameters:
            out["eta"] = _number(parameters[key], key)
    for key, name in (("Sigma churn", "s_churn"), ("Sigma tmin", "s_tmin"), ("Sigma tmax", "s_tmax"), ("Sigma noise", "s_noise")):
        if key in parameters:
            out[name] = _number(parameters[key], key)
    if "Variation seed strength" in parameters:
        out["subseed_strength"] = _number(parameters["Variation seed strength"], "Variation seed strength")
        out["subseed"] = int(_number(parameters.get("Variation seed", "-1"), "Variation seed"))
    if "Seed resize from" in parameters:
        out["seed_resize_from"] = parameters["Seed resize from"]
    # A1111's other sampler settings (sigma min / max / rho, UniPC, NGMS, Skip Early CFG)
    for key, (name, kind) in SAMPLER_KEYS.items():
        if key in parameters:
            value = parameters[key].strip()
            if kind is bool:
                out[name] = value.lower() in ("true", "1", "yes")
            elif kind is str:
                out[name] = value
            else:
                out[name] = kind(_number(value, key))
    hires_keys = ("Hires upscale", "Hires steps", "Hires upscaler", "Hires resize")
    if any(k in parameters for k in hires_keys):
        from tihub.engine.sampling.hires import Hires, upscaler_name

        upscaler = parameters.get("Hires upscaler", "Latent")
        try:
            upscaler = upscaler_name(upscaler)
        except ConfigError:
            warnings.append(f"The image's hires upscaler '{upscaler}' is not one tihub has; Lanczos is used, so the image will differ.")
            upscaler = "Lanczos"
        steps = parameters.get("Hires steps", "0")
        out["hires"] = Hires(
            scale=_number(parameters.get("Hires upscale", "2"), "Hires upscale"),
            steps=int(_number(steps, "Hires steps")),
            denoising=_number(parameters.get("Denoising strength", "0.7"), "Denoising strength"),
            upscaler=upscaler,
            sampler=parameters.get("Hires sampler"),
            schedule_type=parameters.get("Hires schedule type"),
            cfg_scale=_number(parameters["Hires CFG Scale"], "Hires CFG Scale") if "Hires CFG Scale" in parameters else None,
            prompt=parameters.get("Hires prompt", ""),
            negative_prompt=parameters.get("Hires negative prompt", ""),
        )
    for key, what in NOT_FOLLOWED.items():
        if key in parameters:
            warnings.append(f"The image uses {what} ({key}: {parameters[key]}), which tihub does not follow; the image will differ.")
    if "Hires resize" in parameters and "hires" in out:
        # a target size is a scale when both sides grow by the same factor
        target = re.fullmatch(r"\s*(\d+)x(\d+)\s*", parameters["Hires resize"])
        size = re.fullmatch(r"\s*(\d+)x(\d+)\s*", parameters.get("Size", ""))
        if target and size and int(size.group(1)) and int(target.group(1)) * int(size.group(2)) == int(target.group(2)) * int(size.group(1)):
            out["hires"].scale = int(target.group(1)) / int(size.group(1))
        else:
            warnings.append(f"The image's hires target size ({parameters['Hires resize']}) is not a plain scale of its size; tihub scales by {out['hires'].scale:g}, so the image will differ.")
    return out, warnings
