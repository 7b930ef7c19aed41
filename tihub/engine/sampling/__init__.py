"""Sampling as A1111 does it: noise levels, samplers, noise sources, on the diffusers UNet.

`make_plan` decides everything about a run before it starts (the sampler, the schedule type that
runs, the sigmas or timesteps, the noise source, the per-image seeds and the stochastic options)
and refuses what tihub cannot follow; `run` carries a plan out with a `Denoiser` and an
`ImageNoise`; `Plan.infotext()` gives the keys A1111 writes for it, `Plan.to_json()` what
`generate --json` reports.

Modules: schedule (the model's sigmas and A1111's schedule types), solvers (the k-diffusion
samplers), timesteps (DDIM, PLMS), unipc (UniPC), denoiser (the UNet with guidance), rng (gpu/cpu/nv noise),
brownian (the SDE samplers' seeded Brownian trees).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tihub.engine.samplers import SAMPLERS, check_schedule_type, effective_schedule, infotext_schedule
from tihub.engine.sampling.rng import INFOTEXT, ImageNoise, rng_source
from tihub.engine.sampling.schedule import BETA_ALPHA, BETA_BETA, DEFAULT_RHO, ModelSchedule, overrides, sigmas
from tihub.errors import ConfigError


# Randomness's fields for A1111's other sampler settings (beyond rng, ENSD, eta and the churn options)
SAMPLER_SETTINGS = ("sigma_min", "sigma_max", "rho", "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final",
                    "s_min_uncond", "s_min_uncond_all", "skip_early_cond")


@dataclass
class Randomness:
    """A1111's stochastic settings and its other sampler settings (its defaults; `s_tmax` 0 means
    no upper bound, as in A1111)."""

    rng: str = "gpu"
    ensd: int = 0
    eta: float | None = None  # None: the sampler's default (1 for ancestral/SDE, 0 for DDIM)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    # A1111's other sampler settings, by its option names (0 / its defaults: off)
    sigma_min: float = 0.0  # schedule's lowest sigma (0: the model's)
    sigma_max: float = 0.0  # schedule's highest sigma (0: the model's)
    rho: float = 0.0  # Karras / Polyexponential rho (0: 7 / 1)
    uni_pc_variant: str = "bh1"  # bh1, bh2, vary_coeff
    uni_pc_skip_type: str = "time_uniform"  # time_uniform, time_quadratic, logSNR
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    s_min_uncond: float = 0.0  # NGMS: skip the negative below this sigma (every other call)
    s_min_uncond_all: bool = False  # NGMS on every call
    skip_early_cond: float = 0.0  # Skip Early CFG: no negative for this fraction of the first calls

    def check(self, sampler: str) -> None:
        """Normalise, and refuse an option the sampler does not take (A1111 would not pass it)."""
        from tihub.engine.sampling.denoiser import check_guidance
        from tihub.engine.sampling.schedule import check_overrides
        from tihub.engine.sampling.unipc import check_options

        check_options(self, sampler)
        check_overrides(self.sigma_min, self.sigma_max, self.rho)
        check_guidance(self.s_min_uncond, self.skip_early_cond)
        self.rng = rng_source(self.rng)
        self.ensd = int(self.ensd or 0)
        spec = SAMPLERS[sampler]
        if self.eta is not None and spec.eta is None:
            raise ConfigError(f"Sampler {sampler} takes no eta; drop --eta, or use e.g. Euler a or DDIM.")
        if self.eta is not None and (self.eta < 0 or self.eta > 10):
            raise ConfigError(f"Eta {self.eta:g} is out of range; use 0 to 10 (1 is A1111's default).")
        for key, value, default in (("s_churn", self.s_churn, 0.0), ("s_tmin", self.s_tmin, 0.0), ("s_tmax", self.s_tmax, 0.0), ("s_noise", self.s_noise, 1.0)):
            if value != default and key not in spec.extra:
                takes = [n for n, s in SAMPLERS.items() if key in s.extra]
                raise ConfigError(f"Sampler {sampler} takes no --{key.replace('_', '-')} (A1111 does not pass it); use one of: {', '.join(takes)}.")
        if self.s_churn < 0 or self.s_noise < 0:
            raise ConfigError("--s-churn and --s-noise must not be negative.")


@dataclass
class Plan:
    sampler: str
    schedule_type: str  # as chosen: "Automatic" or a type
    schedule: str  # the type that runs (Automatic resolved; "Timesteps" for DDIM/PLMS)
    steps: int
    sigmas: list[float]
    timesteps: list[int]
    seeds: list[int]
    randomness: Randomness
    eta: float | None  # in force (the sampler's default where not given)
    calls_per_step: int
    sigma_range: tuple[float, float] = (0.0, 0.0)  # the model's lowest and highest noise level
    notes: list[str] = field(default_factory=list)
    hires: dict[str, Any] | None = None  # the hires pass, when there is one
    chunks: Any = None  # the conditioning's chunk layout, filled in by the conditioning stage
    denoising: float | None = None  # img2img (the hires pass): the strength; sigmas are the tail run
    full_sigmas: list[float] = field(default_factory=list)  # img2img: the whole schedule
    init_timestep: int = 0  # img2img on the timestep grid: where the start is noised to
    variation: dict[str, Any] | None = None  # variation seeds: subseeds, strength, seed resize
    times: list[float] = field(default_factory=list)  # UniPC: its time grid, 1 (or img2img's start) down to 1/N
    schedule_overrides: dict[str, float] = field(default_factory=dict)  # A1111's sigma min / max / rho in force

    def infotext(self) -> dict[str, Any]:
        """The keys A1111 writes for these settings (values None are left out)."""
        spec = SAMPLERS[self.sampler]
        r = self.randomness
        params: dict[str, Any] = {"Schedule type": infotext_schedule(self.sampler, self.schedule_type)}
        if spec.eta is not None and self.eta != spec.eta:
            params["Eta DDIM" if spec.timesteps else "Eta"] = f"{self.eta:g}"
        if "s_churn" in spec.extra and r.s_churn != 0:
            params["Sigma churn"] = f"{r.s_churn:g}"
        if "s_tmin" in spec.extra and r.s_tmin != 0:
            params["Sigma tmin"] = f"{r.s_tmin:g}"
        if "s_tmax" in spec.extra and r.s_tmax != 0:
            params["Sigma tmax"] = f"{r.s_tmax:g}"
        if "s_noise" in spec.extra and r.s_noise != 1:
            params["Sigma noise"] = f"{r.s_noise:g}"
        if self.schedule == "Beta":
            params["Beta schedule alpha"] = f"{BETA_ALPHA:g}"
            params["Beta schedule beta"] = f"{BETA_BETA:g}"
        for key, name in (("Schedule min sigma", "sigma_min"), ("Schedule max sigma", "sigma_max"), ("Schedule rho", "rho")):
            if name in self.schedule_overrides:
                params[key] = f"{self.schedule_overrides[name]:g}"
        if spec.algorithm == "unipc":
            from tihub.engine.sampling.unipc import infotext as unipc_infotext

            params.update(unipc_infotext(r))
        if r.s_min_uncond > 0:  # written when set, as A1111 1.6-1.9 (1.10: once a call skipped)
            params["NGMS"] = f"{r.s_min_uncond:g}"
            if r.s_min_uncond_all:
                params["NGMS all steps"] = True
        if r.skip_early_cond > 0:  # its first call always skips
            params["Skip Early CFG"] = f"{r.skip_early_cond:g}"
        params["ENSD"] = r.ensd if r.ensd and spec.uses_ensd and self.eta != 0 else None
        params["RNG"] = INFOTEXT[r.rng]
        return params

    def to_json(self) -> dict[str, Any]:
        r = self.randomness
        return {
            "sampler": self.sampler,
            "schedule_type": self.schedule_type,
            "schedule": self.schedule,
            "steps": self.steps,
            "sigmas": [round(s, 6) for s in self.sigmas],
            "timesteps": self.timesteps,
            "model_calls_per_step": self.calls_per_step,
            "rng": r.rng,
            "seeds": self.seeds,
            "ensd": r.ensd,
            "eta": self.eta,
            "s_churn": r.s_churn,
            "s_tmin": r.s_tmin,
            "s_tmax": r.s_tmax if r.s_tmax else None,
            "s_noise": r.s_noise,
            "brownian_noise": SAMPLERS[self.sampler].brownian,
            "denoising": self.denoising,
            "unipc": self._unipc_json(),
            "schedule_overrides": self.schedule_overrides or None,
            "ngms": r.s_min_uncond or None,
            "ngms_all_steps": r.s_min_uncond_all if r.s_min_uncond else None,
            "skip_early_cfg": r.skip_early_cond or None,
            "hires": self.hires,
            "chunks": self.chunks,
            "notes": self.notes,
            "variation": self.variation,
        }


    def _unipc_json(self) -> dict[str, Any] | None:
        if SAMPLERS[self.sampler].algorithm != "unipc":
            return None
        r = self.randomness
        return {"variant": r.uni_pc_variant, "skip_type": r.uni_pc_skip_type, "order": r.uni_pc_order,
                "lower_order_final": r.uni_pc_lower_order_final, "steps_run": len(self.times) - 1,
                "times": [round(t, 6) for t in self.times]}


def model_schedule(sampler: str, schedule: ModelSchedule) -> ModelSchedule:
    """The schedule the sampler sees (LCM: its 50-level view)."""
    if SAMPLERS[sampler].algorithm == "lcm":
        from tihub.engine.sampling.denoiser import LCMSchedule

        return LCMSchedule(schedule)
    return schedule


def make_plan(sampler: str, schedule_type: str, steps: int, schedule: ModelSchedule, family: str, seeds: list[int], randomness: Randomness, denoising: float | None = None) -> Plan:
    """Everything a run will do, decided up front (sampler and schedule type already canonical).

    With `denoising` the run is A1111's img2img (the hires pass): the schedule is made for
    int(steps / min(denoising, 0.999)) steps and its last `steps` are run."""
    from tihub.engine.sampling.hires import img2img_steps
    from tihub.engine.sampling.timesteps import grid

    spec = SAMPLERS[sampler]
    check_schedule_type(sampler, schedule_type)
    randomness.check(sampler)
    eta = randomness.eta if randomness.eta is not None else spec.eta
    notes: list[str] = []
    total, start = (steps, 0) if denoising is None else img2img_steps(steps, denoising)
    full: list[float] = []
    init_timestep = 0
    times: list[float] = []
    given: dict[str, float] = {}
    _check_overrides_apply(sampler, schedule_type, randomness)
    if spec.timesteps:
        ts = grid(total + (1 if spec.discard_penultimate else 0))
        if denoising is not None:  # A1111: noised to grid[start], then run from below it
            ts, init_timestep = ts[:start], ts[start]
        plan_sigmas: list[float] = []
        kind = "Timesteps"
        if spec.algorithm == "unipc":
            times = _unipc_times(ts, schedule, randomness, denoising is not None)
    else:
        m = model_schedule(sampler, schedule)
        kind = effective_schedule(sampler, schedule_type)
        r = randomness
        if schedule_type != "Automatic" or spec.scheduler:  # A1111 passes its settings to the type's function
            given = overrides(kind, m, r.sigma_min, r.sigma_max, r.rho)
        plan_sigmas = [float(s) for s in sigmas(kind, total, m, family, spec.discard_penultimate, **given)]
        if denoising is not None:
            full, plan_sigmas = plan_sigmas, plan_sigmas[total - start - 1 :]
        ts = []
        if spec.algorithm in ("dpm_fast", "dpm_adaptive"):
            notes.append(f"{sampler} chooses its own steps between sigma {m.sigma_min:.4g} and {m.sigma_max:.4g}; the sigmas only set the starting noise.")
        if spec.algorithm == "restart" and steps >= 20:
            notes.append("Restart with 20 or more steps replaces the schedule by Karras sigmas plus restart segments, as A1111.")
    return Plan(
        sampler=sampler,
        schedule_type=schedule_type,
        schedule=kind,
        steps=steps,
        sigmas=plan_sigmas,
        timesteps=ts,
        seeds=[int(s) for s in seeds],
        randomness=randomness,
        eta=eta,
        calls_per_step=2 if spec.second_order else 1,
        sigma_range=_sigma_range(sampler, schedule, plan_sigmas if denoising is not None and plan_sigmas else None),
        notes=notes,
        denoising=denoising,
        full_sigmas=full,
        init_timestep=init_timestep,
        times=times,
        schedule_overrides=given,
    )


def _check_overrides_apply(sampler: str, schedule_type: str, r: Randomness) -> None:
    """Refuse sigma min / max / rho where A1111 ignores them and writes nothing."""
    spec = SAMPLERS[sampler]
    if not (r.sigma_min or r.sigma_max or r.rho):
        return
    if spec.timesteps or spec.algorithm in ("dpm_fast", "dpm_adaptive"):
        raise ConfigError(f"Sampler {sampler} makes no sigma schedule, so A1111 ignores sigma min / max / rho there; drop --sigma-min/--sigma-max/--rho.")
    if schedule_type == "Automatic" and not spec.scheduler:
        raise ConfigError(f"Sampler {sampler} with schedule type Automatic runs the model's own sigmas, where A1111 ignores sigma min / max / rho; add --schedule-type (e.g. Karras).")
    kind = effective_schedule(sampler, schedule_type)
    if r.rho and kind not in DEFAULT_RHO:
        raise ConfigError(f"Schedule type {kind} takes no rho (A1111 ignores it there); use Karras or Polyexponential, or drop --rho.")


def _unipc_times(ts: list[int], schedule: ModelSchedule, r: Randomness, img2img: bool) -> list[float]:
    """UniPC's time grid: as many steps as A1111's timestep grid has entries (img2img: from
    just above the last one it keeps, grid[-1] / 1000 + 1/1000, as A1111)."""
    import torch

    from tihub.engine.sampling.unipc import VPSchedule, check_order, time_grid

    check_order(r.uni_pc_order, len(ts))
    start = float(torch.tensor(ts[-1]) / 1000 + 1 / 1000) if img2img else None
    return [float(t) for t in time_grid(VPSchedule(schedule.alphas_cumprod), r.uni_pc_skip_type, len(ts), start)]


def _sigma_range(sampler: str, schedule: ModelSchedule, tail: list[float] | None) -> tuple[float, float]:
    """Where DPM fast / adaptive run: the model's range; img2img: the tail's (A1111)."""
    if tail is not None:
        return tail[-2], tail[0]
    m = model_schedule(sampler, schedule)
    return m.sigma_min, m.sigma_max


def run(plan: Plan, denoiser: Any, noise: ImageNoise, init: Any = None,
        on_step: Callable[[int, int], None] | None = None) -> Any:
    """Carry out the plan: starting noise (over `init` for img2img), then the sampler; returns
    the final latents (float32). `on_step(done, total)` is told the steps done as they run."""
    if on_step is None:
        return _run(plan, denoiser, noise, init)
    # a model call at level L means every step starting above L is done; this holds for every
    # solver (one or two calls a step, churned sigmas, DDIM/PLMS timesteps) without touching them
    spec = SAMPLERS[plan.sampler]
    levels = [float(v) for v in (plan.timesteps[1:] if spec.timesteps else plan.sigmas[:-1])]
    if spec.algorithm == "unipc":  # one call at each time of the grid but the last, at its UNet timestep
        import torch

        from tihub.engine.sampling.unipc import VPSchedule

        ns = VPSchedule(denoiser.schedule.alphas_cumprod)
        levels = [float(ns.model_time(torch.tensor([t], dtype=torch.float32))) for t in plan.times[:-1]]
    total = len(levels)
    done = 0
    on_step(0, total)

    def seen(level: float) -> None:
        nonlocal done
        now = min(total, sum(1 for v in levels if v > level))
        if now > done:
            done = now
            on_step(done, total)

    denoiser.on_level = seen
    try:
        latents = _run(plan, denoiser, noise, init)
    finally:
        denoiser.on_level = None
    on_step(total, total)
    return latents


def _run(plan: Plan, denoiser: Any, noise: ImageNoise, init: Any = None) -> Any:
    import torch

    from tihub.engine.sampling import solvers, timesteps

    spec = SAMPLERS[plan.sampler]
    r = plan.randomness
    # A1111's CFG denoiser: NGMS and Skip Early CFG, over steps x (1 or 2) calls
    denoiser.s_min_uncond, denoiser.s_min_uncond_all, denoiser.skip_early_cond = r.s_min_uncond, r.s_min_uncond_all, r.skip_early_cond
    denoiser.total_calls = plan.steps * plan.calls_per_step
    x = noise.first()
    if spec.timesteps:
        # DDIM / PLMS / UniPC on A1111's timestep grid, from the unscaled noise (img2img: noised init)
        if init is not None:
            a = denoiser.schedule.alphas_cumprod[plan.init_timestep]
            x = init * a.sqrt() + x * (1 - a).sqrt()
        if spec.algorithm == "unipc":
            from tihub.engine.sampling.unipc import UniPC, VPSchedule

            solver = UniPC(denoiser.eps, VPSchedule(denoiser.schedule.alphas_cumprod), r.uni_pc_variant)
            return solver.sample(x, torch.tensor(plan.times, dtype=torch.float32), r.uni_pc_order, r.uni_pc_lower_order_final)
        if spec.algorithm == "ddim":
            return timesteps.ddim(denoiser.eps, x, plan.timesteps, denoiser.schedule.alphas_cumprod, lambda: noise.randn_like(x), plan.eta or 0.0)
        if spec.algorithm == "ddim_cfgpp":
            # CFG++: the guidance scale mapped from [0, 12.5] to [0, 1], the negative's eps as direction
            denoiser.cfg_scale /= 12.5
            return timesteps.ddim(denoiser.eps, x, plan.timesteps, denoiser.schedule.alphas_cumprod, lambda: noise.randn_like(x), plan.eta or 0.0, uncond=lambda: denoiser.last_uncond)
        return timesteps.plms(denoiser.eps, x, plan.timesteps, denoiser.schedule.alphas_cumprod)
    x = x * plan.sigmas[0] if init is None else init + x * plan.sigmas[0]
    if spec.brownian:
        # SDE samplers: one Brownian tree per image, seeded with the image's seed, spanning the
        # whole schedule (img2img too)
        from tihub.engine.sampling.brownian import BrownianNoise

        levels = torch.tensor(plan.full_sigmas or plan.sigmas, dtype=torch.float32)
        tree = BrownianNoise(x, levels[levels > 0].min(), levels.max(), plan.seeds)
        step_noise = tree
    else:
        def step_noise(_sigma: float, _sigma_next: float) -> Any:
            return noise.randn_like(x)

    options = solvers.Options(
        eta=plan.eta if plan.eta is not None else 1.0,
        s_churn=r.s_churn,
        s_tmin=r.s_tmin,
        s_tmax=r.s_tmax or math.inf,
        s_noise=r.s_noise,
        solver_type=spec.options.get("solver_type", "midpoint"),
        sigma_min=plan.sigma_range[0],
        sigma_max=plan.sigma_range[1],
        steps=plan.steps if plan.denoising is None else len(plan.sigmas) - 1,
    )
    return solvers.SOLVERS[spec.algorithm](denoiser, x, plan.sigmas, step_noise, options)
