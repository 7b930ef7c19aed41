"""A1111 sampler names -> diffusers schedulers (built from the model's own scheduler config).

The mapping follows diffusers' published A1111 correspondence. diffusers has no ancestral
single-step DPM++, so "DPM++ 2S a" is tihub's own scheduler (tihub.engine.schedulers).
"DPM++ SDE" needs `torchsde` and "LMS" needs `scipy` (both in tihub's dependencies); an
installation without them gives a one-sentence error naming the package.

Second-order samplers (scheduler `order` 2: Heun, DPM2, DPM2 a, DPM++ SDE, DPM++ 2S a) call the
model twice per step; A1111 schedules prompt editing over twice the steps for them and counts
model calls, and `calls_per_step` lets the engine do the same.

Schedule types (A1111 1.9+ writes `Schedule type` beside `Sampler`): Karras, Exponential, SGM
Uniform and Beta map to diffusers options. tihub's names keep the older A1111 style, where
"DPM++ 2M" is the uniform schedule and "DPM++ 2M Karras" the Karras one; `from_infotext` reads
newer infotext ("Automatic" meaning A1111's default for the sampler), and `infotext_schedule`
writes "Uniform" where newer A1111 would otherwise read its own default.
"""

from __future__ import annotations

from typing import Any

from tihub.errors import ConfigError, EngineError

# name -> (diffusers class, extra config, note)
SAMPLERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, ""),
    "Euler": ("EulerDiscreteScheduler", {}, ""),
    "LMS": ("LMSDiscreteScheduler", {}, "needs scipy"),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, "needs scipy"),
    "Heun": ("HeunDiscreteScheduler", {}, ""),
    "DPM2": ("KDPM2DiscreteScheduler", {}, ""),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, ""),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, ""),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}, ""),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, ""),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, ""),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, ""),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, ""),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, ""),
    "DPM++ 3M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "use_karras_sigmas": True}, ""),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}, "needs torchsde"),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}, "needs torchsde"),
    "DPM++ 2S a": ("DPMPP2SAncestralScheduler", {}, ""),
    "DPM++ 2S a Karras": ("DPMPP2SAncestralScheduler", {"use_karras_sigmas": True}, ""),
    "DDIM": ("DDIMScheduler", {}, ""),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, ""),
    "UniPC": ("UniPCMultistepScheduler", {}, ""),
    "DEIS": ("DEISMultistepScheduler", {}, ""),
}

DEFAULT = "Euler a"
_BY_LOWER = {k.lower(): k for k in SAMPLERS}

# A1111's "Schedule type" (infotext of v1.9 and later) -> diffusers scheduler options. "Uniform" is
# the model's own evenly spaced sigmas, which is what "Automatic" gives for these samplers. Other
# A1111 types (Polyexponential, Align Your Steps, Simple, Normal, DDIM, KL Optimal) have no
# diffusers equivalent.
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Beta": {"use_beta_sigmas": True},
}
_SCHEDULE_BY_LOWER = {k.lower(): k for k in SCHEDULE_TYPES}

# What A1111 1.9 and later mean by "Schedule type: Automatic" for samplers whose own default is not
# the uniform schedule (its sampler table's `scheduler` option). Infotext without the key comes
# from older A1111 (or tihub), where "DPM++ 2M" meant the uniform schedule.
A1111_AUTOMATIC = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2S a": "Karras",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 3M SDE": "Exponential",
}
_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def canonical_schedule(name: str | None) -> str:
    """The A1111 name of a schedule type (case-insensitive); None is "Automatic"."""
    if not name:
        return "Automatic"
    key = name.strip().lower()
    if key not in _SCHEDULE_BY_LOWER:
        raise ConfigError(f"Unknown schedule type '{name}'; choose one of: {', '.join(SCHEDULE_TYPES)}.")
    return _SCHEDULE_BY_LOWER[key]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def missing_package(name: str) -> str | None:
    """The optional package a sampler needs and this installation lacks, if any."""
    note = SAMPLERS[canonical(name)][2]
    if note.startswith("needs "):
        pkg = note.split()[1]
        return None if _installed(pkg) else pkg
    return None


def available() -> list[str]:
    """Sampler names usable in this installation."""
    return [n for n in SAMPLERS if missing_package(n) is None]


def canonical(name: str | None, schedule_type: str | None = None) -> str:
    """The A1111 name for `name` (case-insensitive); `schedule_type` "Karras" as newer infotext writes it."""
    if not name:
        return DEFAULT
    key = name.strip().lower()
    if schedule_type and schedule_type.strip().lower() == "karras" and not key.endswith(" karras"):
        if key + " karras" in _BY_LOWER:
            key += " karras"
    if key not in _BY_LOWER:
        raise ConfigError(f"Unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}.")
    return _BY_LOWER[key]


def from_infotext(sampler: str, schedule: str | None) -> tuple[str, str, str | None]:
    """(sampler, schedule type, warning) for an infotext's `Sampler` and `Schedule type` values.

    "Automatic" from A1111 1.9+ becomes that sampler's A1111 default; Karras folds into the
    sampler name where tihub has a Karras variant; a type tihub cannot follow gives a warning and
    the sampler's own schedule."""
    name = canonical(sampler)
    if schedule is None or not schedule.strip():
        return name, "Automatic", None
    kind = schedule.strip()
    if kind.lower() == "automatic":
        kind = A1111_AUTOMATIC.get(name, "Automatic")
    name = canonical(sampler, kind)
    if kind.lower() == "karras" and name.endswith(" Karras"):
        return name, "Automatic", None
    try:
        kind = canonical_schedule(kind)
        check_schedule_type(name, kind)
    except ConfigError:
        return name, "Automatic", f"The image's schedule type '{schedule.strip()}' has no equivalent for tihub's {name} sampler; its own schedule is used, so the image will differ."
    return name, kind, None


def infotext_schedule(sampler: str, kind: str) -> str | None:
    """The `Schedule type` to write: the chosen type, or "Uniform" where A1111 1.9+ would read a
    missing key as its own default for this sampler (None: nothing to write)."""
    if kind != "Automatic":
        return kind
    return "Uniform" if sampler in A1111_AUTOMATIC else None


def check_schedule_type(sampler: str, kind: str) -> None:
    """Refuse a schedule type the sampler cannot follow (one sentence)."""
    options = SCHEDULE_TYPES[kind]
    if not options:
        return
    if sampler.endswith(" Karras") and kind != "Karras":
        raise ConfigError(f"Sampler '{sampler}' already uses the Karras schedule; pass '{sampler[: -len(' Karras')]}' with schedule type {kind}.")
    import inspect

    cls = _scheduler_class(SAMPLERS[sampler][0])
    accepted = inspect.signature(cls.__init__).parameters
    if any(key not in accepted for key in options):
        raise ConfigError(f"Schedule type {kind} does not apply to the {sampler} sampler; use Automatic, or a sampler such as Euler or DPM++ 2M.")


def _scheduler_class(cls_name: str) -> Any:
    if cls_name == "DPMPP2SAncestralScheduler":
        from tihub.engine.schedulers import DPMPP2SAncestralScheduler

        return DPMPP2SAncestralScheduler
    import diffusers

    return getattr(diffusers, cls_name)


def make_scheduler(name: str | None, base_config: Any, kind: str | None = None) -> Any:
    """A diffusers scheduler for the A1111 sampler `name` (and schedule type `kind`), from the
    model's scheduler config."""
    canon = canonical(name)
    kind = canonical_schedule(kind)
    check_schedule_type(canon, kind)
    cls_name, extra, note = SAMPLERS[canon]
    pkg = missing_package(canon)
    if pkg is not None:
        alt = "DPM++ 2M SDE Karras" if pkg == "torchsde" else "Euler"
        raise EngineError(f"Sampler '{canon}' needs the optional package {pkg} (pip install {pkg}); or use '{alt}', which needs nothing extra.")
    cls = _scheduler_class(cls_name)
    config = dict(base_config)
    # keep the model's prediction type and betas; drop options the target does not take
    for key in (*_SIGMA_OPTIONS, "algorithm_type", "solver_order", "skip_prk_steps"):
        config.pop(key, None)
    config.update(extra)
    config.update(SCHEDULE_TYPES[kind])
    if cls_name in ("DDIMScheduler", "PNDMScheduler") and config.get("prediction_type") == "v_prediction":
        config.setdefault("rescale_betas_zero_snr", False)
    return cls.from_config(config)


def calls_per_step(scheduler: Any) -> int:
    """Model calls per sampling step: 2 for second-order schedulers, as A1111 counts them."""
    return 2 if getattr(scheduler, "order", 1) == 2 else 1
