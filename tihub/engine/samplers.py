"""A1111's samplers by name: what each one runs, its default schedule type and its options.

The table follows A1111 1.10's sampler list (sd_samplers_kdiffusion, sd_samplers_timesteps,
sd_samplers_lcm): the algorithm, the schedule type "Automatic" stands for, whether the
next-to-last sigma is dropped, whether it is second order (two model calls per step, so A1111
schedules prompt editing over twice the steps), whether its noise comes from a Brownian tree
seeded with the image seed, whether eta applies and whether ENSD is written for it. The
algorithms themselves live in tihub.engine.sampling.

Names from older A1111 ("DPM++ 2M Karras", "Euler a Exponential") are the sampler plus a
schedule type, as A1111 1.9+ reads them. Every A1111 sampler is followed; none is ever run as
another (a name tihub did not follow would be refused by name in one sentence: NOT_FOLLOWED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tihub.errors import ConfigError

DEFAULT = "Euler a"


@dataclass(frozen=True)
class Sampler:
    name: str
    algorithm: str  # key into tihub.engine.sampling.solvers (or "ddim", "plms" on timesteps)
    scheduler: str | None = None  # the schedule type "Automatic" means (None: the uniform one)
    discard_penultimate: bool = False
    second_order: bool = False
    brownian: bool = False  # SDE noise from a Brownian tree seeded with each image's seed
    uses_ensd: bool = False  # A1111 writes ENSD for it (when eta is not 0)
    eta: float | None = None  # default eta where the algorithm takes one
    extra: tuple[str, ...] = ()  # of s_churn, s_tmin, s_tmax, s_noise it takes
    timesteps: bool = False  # DDIM/PLMS/UniPC: A1111's fixed timestep grid, no schedule type
    options: dict[str, Any] = field(default_factory=dict)


_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_NOISE = ("s_noise",)

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("DPM++ 2M", "dpmpp_2m", scheduler="Karras"),
        Sampler("DPM++ SDE", "dpmpp_sde", scheduler="Karras", second_order=True, brownian=True, eta=1.0, extra=_NOISE),
        Sampler("DPM++ 2M SDE", "dpmpp_2m_sde", scheduler="Exponential", brownian=True, eta=1.0, extra=_NOISE),
        Sampler("DPM++ 2M SDE Heun", "dpmpp_2m_sde", scheduler="Exponential", brownian=True, eta=1.0, extra=_NOISE, options={"solver_type": "heun"}),
        Sampler("DPM++ 2S a", "dpmpp_2s_ancestral", scheduler="Karras", second_order=True, uses_ensd=True, eta=1.0, extra=_NOISE),
        Sampler("DPM++ 3M SDE", "dpmpp_3m_sde", scheduler="Exponential", discard_penultimate=True, brownian=True, eta=1.0, extra=_NOISE),
        Sampler("Euler a", "euler_ancestral", uses_ensd=True, eta=1.0),
        Sampler("Euler", "euler", extra=_CHURN),
        Sampler("LMS", "lms"),
        Sampler("Heun", "heun", second_order=True, extra=_CHURN),
        Sampler("DPM2", "dpm_2", scheduler="Karras", discard_penultimate=True, second_order=True, extra=_CHURN),
        Sampler("DPM2 a", "dpm_2_ancestral", scheduler="Karras", discard_penultimate=True, second_order=True, uses_ensd=True, eta=1.0, extra=_NOISE),
        Sampler("DPM fast", "dpm_fast", uses_ensd=True, eta=1.0, extra=_NOISE),
        Sampler("DPM adaptive", "dpm_adaptive", uses_ensd=True, eta=1.0),
        Sampler("Restart", "restart", scheduler="Karras", second_order=True),
        Sampler("DDIM", "ddim", timesteps=True, eta=0.0),
        Sampler("DDIM CFG++", "ddim_cfgpp", timesteps=True, eta=0.0),
        Sampler("PLMS", "plms", timesteps=True),
        Sampler("UniPC", "unipc", timesteps=True),
        Sampler("LCM", "lcm"),
    )
}

# A1111 samplers tihub does not follow: refused by name (one sentence), never run as another.
NOT_FOLLOWED: dict[str, str] = {}

_BY_LOWER = {k.lower(): k for k in SAMPLERS}
# A1111's old names and aliases (k_euler_a, ...)
_ALIASES = {
    "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpmpp_2s_a": "DPM++ 2S a", "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE", "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "k_dpmpp_3m_sde": "DPM++ 3M SDE", "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive", "restart": "Restart",
    "ddim": "DDIM", "ddim_cfgpp": "DDIM CFG++", "plms": "PLMS", "unipc": "UniPC", "k_lcm": "LCM",
}


def _schedule_labels() -> list[str]:
    from tihub.engine.sampling.schedule import SCHEDULE_TYPES

    return list(SCHEDULE_TYPES)


def canonical_schedule(name: str | None) -> str:
    """The A1111 label of a schedule type (case-insensitive); None is "Automatic"."""
    from tihub.engine.sampling.schedule import schedule_type

    return schedule_type(name).label


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"Unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}.")


def resolve(name: str | None, schedule: str | None = None) -> tuple[str, str]:
    """(sampler, schedule type) for a sampler name and an optional schedule type.

    An old-style name ("DPM++ 2M Karras") carries its schedule type; given together with a
    different explicit one, that is refused."""
    kind = canonical_schedule(schedule)
    if not name or not name.strip():
        return DEFAULT, kind
    key = name.strip().lower()
    for bad in NOT_FOLLOWED:
        if key == bad.lower():
            raise ConfigError(f"Sampler '{bad}': {NOT_FOLLOWED[bad]}.")
    if key in _BY_LOWER:
        return _BY_LOWER[key], kind
    if key in _ALIASES:
        return _ALIASES[key], kind
    for label in sorted(_schedule_labels(), key=len, reverse=True):
        suffix = " " + label.lower()
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_LOWER and label != "Automatic":
            base = _BY_LOWER[key[: -len(suffix)]]
            if kind not in ("Automatic", label):
                raise ConfigError(f"Sampler '{name}' already names the {label} schedule; pass '{base}' with schedule type {kind}.")
            return base, label
    raise _unknown(name)


def canonical(name: str | None, schedule_type: str | None = None) -> str:
    """The A1111 1.9+ sampler name for `name` (case-insensitive; old "X Karras" names give X)."""
    return resolve(name, schedule_type)[0]


def spec(name: str) -> Sampler:
    return SAMPLERS[canonical(name)]


def available() -> list[str]:
    """Sampler names tihub runs."""
    return list(SAMPLERS)


def effective_schedule(sampler: str, kind: str) -> str:
    """The schedule type that runs: "Automatic" becomes the sampler's A1111 default (or Uniform)."""
    if kind != "Automatic":
        return kind
    return SAMPLERS[sampler].scheduler or "Uniform"


def check_schedule_type(sampler: str, kind: str) -> None:
    """Refuse a schedule type the sampler does not take (one sentence)."""
    s = SAMPLERS[sampler]
    if s.timesteps and kind != "Automatic":
        raise ConfigError(f"Sampler {sampler} runs on A1111's fixed timestep grid and takes no schedule type; drop --schedule-type {kind} (or use Automatic).")
    if s.algorithm in ("dpm_fast", "dpm_adaptive") and kind != "Automatic":
        raise ConfigError(f"Sampler {sampler} picks its own steps between the model's lowest and highest noise levels and takes no schedule type; drop --schedule-type {kind}.")


def infotext_schedule(sampler: str, kind: str) -> str:
    """The `Schedule type` A1111 1.9+ writes: the type that ran, "Automatic" where the sampler
    has no default of its own (or takes none)."""
    s = SAMPLERS[sampler]
    if kind == "Automatic":
        return s.scheduler or "Automatic"
    return kind


def from_infotext(sampler: str, schedule: str | None) -> tuple[str, str, str | None]:
    """(sampler, schedule type, warning) for an infotext's `Sampler` and `Schedule type`.

    Without the key the image comes from A1111 before 1.9, where a plain name ran the model's
    uniform schedule and "X Karras" the Karras one; with it, A1111 1.9+ semantics. A value tihub
    cannot read gives a warning and the sampler's own schedule."""
    try:
        name, kind = resolve(sampler, None)
    except ConfigError:
        raise
    if schedule is None or not schedule.strip():
        if kind == "Automatic" and SAMPLERS[name].scheduler and not SAMPLERS[name].timesteps:
            kind = "Uniform"
        return name, kind, None
    try:
        given = canonical_schedule(schedule)
    except ConfigError:
        return name, kind, f"The image's schedule type '{schedule.strip()}' is not one tihub knows; the sampler's own schedule is used, so the image will differ."
    if SAMPLERS[name].timesteps or SAMPLERS[name].algorithm in ("dpm_fast", "dpm_adaptive"):
        return name, "Automatic", None  # A1111 ignores the type for these
    return name, given, None


def calls_per_step(sampler: str) -> int:
    """2 for A1111's second-order samplers (prompt editing is scheduled over twice the steps)."""
    return 2 if SAMPLERS[canonical(sampler)].second_order else 1
