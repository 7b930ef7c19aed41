"""The model's noise levels and A1111's schedule types (its "Schedule type" dropdown).

`ModelSchedule` holds the noise levels the model was trained on: from its betas (the scheduler
config's `beta_schedule`, `beta_start`, `beta_end`, `num_train_timesteps` or `trained_betas`) the
cumulative alphas are computed in float64 and kept in float32, as the original LDM/SGM code that
A1111 runs keeps them; each training timestep t has the noise level
`sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`. Between two timesteps the
mapping sigma <-> t is linear in log sigma (a fractional t reaches the UNet as is).

The scheduler class named in the config (PNDM, Euler, DDIM, ...) and its timestep spacing play no
part: a diffusers folder, a single file and an in-memory pipeline with the same betas give the same
sigmas, as A1111 gives one set per checkpoint.

`sigmas(kind, n, ...)` is one schedule type: n steps as n+1 noise levels from high to low, the last
normally 0 (KL Optimal ends at the model's lowest level, as in A1111).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tihub.errors import ConfigError

# Align Your Steps (NVIDIA's published 10-step schedules), as A1111 ships them
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]

# A1111's option defaults for the schedules that take parameters
KARRAS_RHO = 7.0
POLYEXPONENTIAL_RHO = 1.0
BETA_ALPHA = 0.6
BETA_BETA = 0.6


def alphas_cumprod(config: dict[str, Any]) -> Any:
    """float32 cumulative alphas of a diffusers scheduler config (computed in float64)."""
    import numpy as np
    import torch

    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    kind = config.get("beta_schedule", "scaled_linear")
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
    elif kind == "scaled_linear":  # LDM's "linear": evenly spaced in sqrt(beta)
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif kind == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif kind == "squaredcos_cap_v2":  # cosine schedule, s = 0.008, betas capped at 0.999
        f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=np.float64)
    else:
        raise ConfigError(f"The model's noise schedule '{kind}' is not one tihub can sample; use an SD1, SD2 or SDXL model (scaled_linear betas).")
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


class ModelSchedule:
    """The model's training noise levels, and the sigma <-> timestep mapping between them."""

    def __init__(self, alphas_cumprod: Any) -> None:
        self.alphas_cumprod = alphas_cumprod  # float32, [T]
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # ascending with t
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelSchedule:
        return cls(alphas_cumprod(config))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Any) -> Any:
        """Fractional timestep(s) of noise level(s): linear in log sigma between neighbours."""
        import torch

        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        shape = log_sigma.shape
        flat = log_sigma.reshape(-1)
        # index of the last training level at or below each sigma (never the top one)
        low = (flat[None, :] >= self.log_sigmas[:, None]).sum(dim=0) - 1
        low = low.clamp(0, len(self.log_sigmas) - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - flat) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).reshape(shape)

    def uniform_timesteps(self, n: int) -> Any:
        """n evenly spaced timesteps from the last to the first."""
        import torch

        return torch.linspace(len(self.sigmas) - 1, 0, n)

    def t_to_sigma(self, t: Any) -> Any:
        """Noise level(s) of fractional timestep(s)."""
        import torch

        t = torch.as_tensor(t).float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def _with_zero(sigmas: Any) -> Any:
    import torch

    return torch.cat([sigmas, sigmas.new_zeros([1])])


# -- the schedule types ------------------------------------------------------------------------
# Each takes (n, model schedule, family) and returns n+1 float32 noise levels.


def uniform(n: int, m: ModelSchedule, family: str) -> Any:
    """The model's own levels at n evenly spaced timesteps from the last to the first."""
    return _with_zero(m.t_to_sigma(m.uniform_timesteps(n)))


def karras(n: int, m: ModelSchedule, family: str, rho: float = KARRAS_RHO) -> Any:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    import torch

    ramp = torch.linspace(0, 1, n)
    lo, hi = m.sigma_min ** (1 / rho), m.sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, m: ModelSchedule, family: str) -> Any:
    """Evenly spaced in log sigma."""
    import torch

    return _with_zero(torch.linspace(math.log(m.sigma_max), math.log(m.sigma_min), n).exp())


def polyexponential(n: int, m: ModelSchedule, family: str, rho: float = POLYEXPONENTIAL_RHO) -> Any:
    """log sigma falls as a polynomial (power rho) in the step fraction."""
    import torch

    ramp = torch.linspace(1, 0, n) ** rho
    lo, hi = math.log(m.sigma_min), math.log(m.sigma_max)
    return _with_zero(torch.exp(ramp * (hi - lo) + lo))


def sgm_uniform(n: int, m: ModelSchedule, family: str) -> Any:
    """n+1 evenly spaced timesteps from the highest to the lowest level, the last one dropped."""
    import torch

    start, end = m.sigma_to_t(torch.tensor(m.sigma_max)), m.sigma_to_t(torch.tensor(m.sigma_min))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1]
    return _with_zero(m.t_to_sigma(ts).float())


def normal(n: int, m: ModelSchedule, family: str) -> Any:
    """n evenly spaced timesteps from the highest to the lowest level, both included."""
    import torch

    start, end = m.sigma_to_t(torch.tensor(m.sigma_max)), m.sigma_to_t(torch.tensor(m.sigma_min))
    return _with_zero(m.t_to_sigma(torch.linspace(float(start), float(end), n)).float())


def simple(n: int, m: ModelSchedule, family: str) -> Any:
    """Every (T/n)-th training level counted down from the top (ComfyUI's "simple")."""
    import torch

    stride = len(m.sigmas) / n
    picked = [float(m.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim(n: int, m: ModelSchedule, family: str) -> Any:
    """Training levels 1, 1+s, 1+2s, ... (s = T // n), reversed: may give one step more than n
    when T is not a multiple of n, as in A1111."""
    import torch

    stride = max(len(m.sigmas) // n, 1)
    picked = [float(m.sigmas[i]) for i in range(1, len(m.sigmas), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def kl_optimal(n: int, m: ModelSchedule, family: str) -> Any:
    """Evenly spaced in arctan(sigma); ends at the model's lowest level, not at 0 (as A1111)."""
    import torch

    a_min, a_max = torch.arctan(torch.tensor(m.sigma_min)), torch.arctan(torch.tensor(m.sigma_max))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * a_min + (1.0 - frac) * a_max)


def align_your_steps(n: int, m: ModelSchedule, family: str) -> Any:
    """NVIDIA's 10-step schedule (SDXL's for SDXL, SD1's otherwise), log-linearly resampled to n."""
    import numpy as np
    import torch

    table = AYS_SDXL if family == "sdxl" else AYS_SD1
    if n == len(table):
        return torch.tensor([*table, 0.0], dtype=torch.float32)
    rising = np.log(np.array(table[::-1]))
    resampled = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), rising))[::-1]
    return torch.tensor([*resampled.tolist(), 0.0], dtype=torch.float32)


def beta(n: int, m: ModelSchedule, family: str, a: float = BETA_ALPHA, b: float = BETA_BETA) -> Any:
    """Beta-distribution quantiles of evenly spaced fractions, mapped onto [sigma_min, sigma_max]."""
    import numpy as np
    import torch
    from scipy import stats

    fractions = [float(stats.beta.ppf(x, a, b)) for x in 1 - np.linspace(0, 1, n)]
    lo, hi = m.sigma_min, m.sigma_max
    return torch.tensor([lo + x * (hi - lo) for x in fractions] + [0.0], dtype=torch.float32)


@dataclass(frozen=True)
class ScheduleType:
    label: str  # A1111's label, as infotext writes it
    name: str  # A1111's internal name (what its sampler table's `scheduler` option says)
    function: Callable[..., Any] | None  # None: the sampler's own default


SCHEDULE_TYPES: dict[str, ScheduleType] = {
    s.label: s
    for s in (
        ScheduleType("Automatic", "automatic", None),
        ScheduleType("Uniform", "uniform", uniform),
        ScheduleType("Karras", "karras", karras),
        ScheduleType("Exponential", "exponential", exponential),
        ScheduleType("Polyexponential", "polyexponential", polyexponential),
        ScheduleType("SGM Uniform", "sgm_uniform", sgm_uniform),
        ScheduleType("KL Optimal", "kl_optimal", kl_optimal),
        ScheduleType("Align Your Steps", "align_your_steps", align_your_steps),
        ScheduleType("Simple", "simple", simple),
        ScheduleType("Normal", "normal", normal),
        ScheduleType("DDIM", "ddim", ddim),
        ScheduleType("Beta", "beta", beta),
    )
}
_BY_KEY = {k.lower(): s for s in SCHEDULE_TYPES.values() for k in (s.label, s.name, s.label.replace(" ", ""))}


def schedule_type(name: str | None) -> ScheduleType:
    """A schedule type by A1111 label or internal name (case-insensitive); None is Automatic."""
    if not name or not name.strip():
        return SCHEDULE_TYPES["Automatic"]
    found = _BY_KEY.get(name.strip().lower())
    if found is None:
        raise ConfigError(f"Unknown schedule type '{name}'; choose one of: {', '.join(SCHEDULE_TYPES)}.")
    return found


# -- A1111's sigma min / max / rho settings ------------------------------------------------------
# A1111 hands them to every schedule type but the model's own (Automatic for a sampler without a
# default type): a non-zero sigma min / max other than the model's replaces the ends of Karras,
# Exponential, Polyexponential, SGM Uniform, KL Optimal, Normal and Beta (Uniform, Simple, DDIM and
# Align Your Steps take no ends, but the keys are written all the same); rho, when not 0 and not
# the type's own, applies to Karras (7) and Polyexponential (1) only.
DEFAULT_RHO = {"Karras": KARRAS_RHO, "Polyexponential": POLYEXPONENTIAL_RHO}


class SigmaRange:
    """A model schedule with other lowest / highest levels (the rest is the model's)."""

    def __init__(self, base: ModelSchedule, lowest: float, highest: float) -> None:
        self.base = base
        self.sigma_min = lowest
        self.sigma_max = highest

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def check_overrides(sigma_min: float, sigma_max: float, rho: float) -> None:
    for name, value in (("--sigma-min", sigma_min), ("--sigma-max", sigma_max), ("--rho", rho)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} {value:g} is out of range; use 0 (the default) or a positive number.")
    if sigma_min and sigma_max and sigma_min >= sigma_max:
        raise ConfigError(f"--sigma-min {sigma_min:g} is not below --sigma-max {sigma_max:g}; swap them.")


def overrides(kind: str, model: ModelSchedule, sigma_min: float = 0.0, sigma_max: float = 0.0, rho: float = 0.0) -> dict[str, float]:
    """What A1111 applies (and writes) of sigma min / max / rho for schedule type `kind` (a
    label, not Automatic) on this model: {"sigma_min": ..., "sigma_max": ..., "rho": ...}."""
    out: dict[str, float] = {}
    if sigma_min and sigma_min != model.sigma_min:
        out["sigma_min"] = sigma_min
    if sigma_max and sigma_max != model.sigma_max:
        out["sigma_max"] = sigma_max
    if kind in DEFAULT_RHO and rho and rho != DEFAULT_RHO[kind]:
        out["rho"] = rho
    return out


def sigmas(kind: str, n: int, model: ModelSchedule, family: str, discard_penultimate: bool = False, sigma_min: float = 0.0,
           sigma_max: float = 0.0, rho: float = 0.0) -> Any:
    """n steps of schedule type `kind` (a label, not Automatic); with `discard_penultimate` one
    more level is made and the next-to-last dropped (A1111's DPM2 / DPM2 a / DPM++ 3M SDE).
    `sigma_min`, `sigma_max`, `rho`: A1111's settings (0: off; see `overrides`)."""
    import torch

    function = schedule_type(kind).function
    if function is None:
        function = uniform
    given = overrides(kind, model, sigma_min, sigma_max, rho)
    kwargs = {"rho": given["rho"]} if "rho" in given else {}
    if "sigma_min" in given or "sigma_max" in given:
        model = SigmaRange(model, given.get("sigma_min", model.sigma_min), given.get("sigma_max", model.sigma_max))  # type: ignore[assignment]
    out = function(n + 1 if discard_penultimate else n, model, family, **kwargs).float()
    if discard_penultimate:
        out = torch.cat([out[:-2], out[-1:]])
    return out
