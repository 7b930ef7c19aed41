"""The reference for the sampler parity suite: k-diffusion driven the way A1111 drives it.

k-diffusion (PyPI `k-diffusion`, test-only, installed with --no-deps) is loaded without its package
__init__, which imports its training stack (torchvision, clip, wandb); only `sampling` and
`external` are used, and torchvision is stubbed just while they import.

What is A1111's here, written from its documented behaviour (not tihub's code):
- the model's alphas from LDM's linear schedule constants (sqrt-spaced betas, float64 -> float32);
- k-diffusion's CompVis(V)Denoiser around the UNet, classifier-free guidance on denoised outputs
  with [cond, uncond] in one batch;
- sigmas: k-diffusion's own functions for Uniform/Karras/Exponential/Polyexponential, A1111's
  recipes over k-diffusion's DiscreteSchedule for the others, next-to-last dropped where A1111 does;
- noise: A1111's per-image generators (CPU source), k-diffusion's `torch.randn_like` hijacked to
  them; SDE samplers get k-diffusion's BrownianTreeNoiseSampler seeded with the image seeds;
- Restart: A1111's plan of Heun steps and restarts, each step k-diffusion's own sample_heun;
- LCM, DDIM, PLMS (no k-diffusion counterpart): A1111's published update rules.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from typing import Any

import numpy as np
import torch

LINEAR_START, LINEAR_END = 0.00085, 0.012  # LDM/SGM configs of SD1, SD2 and SDXL


def load_kdiffusion() -> tuple[Any, Any]:
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        import pytest

        pytest.skip("k-diffusion is not installed (pip install --no-deps -r requirements/ci-nodeps.txt)")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations or [])
    sys.modules["k_diffusion"] = pkg
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    added = [n for n in names if n not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    try:
        import k_diffusion.external as external
        import k_diffusion.sampling as sampling
    finally:
        for name in added:  # diffusers probes for torchvision: leave no stub behind
            del sys.modules[name]
    return sampling, external


def ldm_alphas_cumprod() -> torch.Tensor:
    betas = np.linspace(LINEAR_START**0.5, LINEAR_END**0.5, 1000, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


class CompVisModel:
    """The bits of an LDM model k-diffusion's CompVis wrappers use."""

    def __init__(self, unet: Any, time_ids: Any = None) -> None:
        self.unet = unet
        self.alphas_cumprod = ldm_alphas_cumprod()
        self.time_ids = time_ids

    def apply_model(self, x: Any, t: Any, cond: Any) -> Any:
        kwargs = {}
        if isinstance(cond, tuple):
            cond, pooled = cond
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self.time_ids.repeat(x.shape[0], 1)}
        return self.unet(x, t, encoder_hidden_states=cond, return_dict=False, **kwargs)[0]


class A1111Noise:
    """A1111's ImageRNG with the CPU source: one generator per image, ENSD re-seeds after the first."""

    def __init__(self, seeds: list[int], shape: tuple[int, ...], ensd: int = 0) -> None:
        self.seeds, self.shape, self.ensd = seeds, shape, ensd
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]

    def first(self) -> torch.Tensor:
        out = torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])
        if self.ensd:
            self.gens = [torch.Generator().manual_seed(s + self.ensd) for s in self.seeds]
        return out

    def next(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])


class _Hijack:
    """What A1111 puts in place of k_diffusion.sampling.torch: randn_like draws the images' noise."""

    def __init__(self, noise: A1111Noise) -> None:
        self.noise = noise

    def randn_like(self, x: Any) -> Any:
        return self.noise.next()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


# A1111 1.10's sampler table: name -> (k-diffusion function, Automatic's schedule, discard, kwargs)
K_SAMPLERS: dict[str, tuple[str, str | None, bool, dict[str, Any]]] = {
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", False, {}),
    "DPM++ SDE": ("sample_dpmpp_sde", "karras", False, {"eta": 1.0, "brownian": True}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", False, {"eta": 1.0, "brownian": True}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", "exponential", False, {"eta": 1.0, "brownian": True, "solver_type": "heun"}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras", False, {"eta": 1.0}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", "exponential", True, {"eta": 1.0, "brownian": True}),
    "Euler a": ("sample_euler_ancestral", None, False, {"eta": 1.0}),
    "Euler": ("sample_euler", None, False, {}),
    "LMS": ("sample_lms", None, False, {}),
    "Heun": ("sample_heun", None, False, {}),
    "DPM2": ("sample_dpm_2", "karras", True, {}),
    "DPM2 a": ("sample_dpm_2_ancestral", "karras", True, {"eta": 1.0}),
    "DPM fast": ("sample_dpm_fast", None, False, {"eta": 1.0}),
    "DPM adaptive": ("sample_dpm_adaptive", None, False, {"eta": 1.0}),
    "Restart": ("restart", "karras", False, {}),
    "LCM": ("lcm", None, False, {}),
}
AYS = {"sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
       "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]}


def reference_sigmas(kind: str, n: int, wrap: Any, family: str = "sd1") -> torch.Tensor:
    """A1111's sigmas for schedule type `kind` (label) over k-diffusion's DiscreteSchedule `wrap`."""
    ks, _ = load_kdiffusion()
    lo, hi = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    if kind in ("Uniform", "Automatic"):
        return wrap.get_sigmas(n)
    if kind == "Karras":
        return ks.get_sigmas_karras(n, lo, hi, rho=7.0)
    if kind == "Exponential":
        return ks.get_sigmas_exponential(n, lo, hi)
    if kind == "Polyexponential":
        return ks.get_sigmas_polyexponential(n, lo, hi, rho=1.0)
    if kind in ("SGM Uniform", "Normal"):
        start, end = wrap.sigma_to_t(torch.tensor(hi)), wrap.sigma_to_t(torch.tensor(lo))
        ts = torch.linspace(start, end, n + 1)[:-1] if kind == "SGM Uniform" else torch.linspace(start, end, n)
        return torch.FloatTensor([wrap.t_to_sigma(t) for t in ts] + [0.0])
    if kind == "KL Optimal":
        k = torch.arange(n + 1)
        return torch.tan(k / n * math.atan(lo) + (1.0 - k / n) * math.atan(hi))
    if kind == "Align Your Steps":
        table = AYS["sdxl" if family == "sdxl" else "sd1"]
        if n == len(table):
            return torch.FloatTensor(table + [0.0])
        ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), np.log(table[::-1]))
        return torch.FloatTensor(np.append(np.exp(ys)[::-1].copy(), [0.0]))
    if kind == "Simple":
        ss = len(wrap.sigmas) / n
        return torch.FloatTensor([float(wrap.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0])
    if kind == "DDIM":
        ss = max(len(wrap.sigmas) // n, 1)
        picked = [float(wrap.sigmas[x]) for x in range(1, len(wrap.sigmas), ss)]
        return torch.FloatTensor(picked[::-1] + [0.0])
    if kind == "Beta":
        from scipy import stats

        fr = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([lo + x * (hi - lo) for x in fr] + [0.0])
    raise ValueError(kind)


def _lcm_wrap(model: CompVisModel) -> Any:
    """A1111's LCM denoiser: k-diffusion's eps wrapper over 50 of the 1000 levels."""
    _, ke = load_kdiffusion()
    skip = 20

    class LCM(ke.DiscreteEpsDDPMDenoiser):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            valid = torch.zeros(50, dtype=torch.float32)
            for x in range(50):
                valid[49 - x] = model.alphas_cumprod[999 - x * skip]
            super().__init__(model, valid, quantize=None)

        def get_sigmas(self, n: Any = None) -> Any:
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            ks, _ = load_kdiffusion()
            return ks.append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

        def sigma_to_t(self, sigma: Any, quantize: Any = None) -> Any:
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)

        def t_to_sigma(self, t: Any) -> Any:
            return super().t_to_sigma(torch.clamp(((t - (skip - 1)) / skip).float(), min=0, max=49))

        def get_eps(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner_model.apply_model(*args, **kwargs)

        def forward(self, x: Any, sigma: Any, **kwargs: Any) -> Any:
            c_out, c_in = [v[:, None, None, None] for v in self.get_scalings(sigma)]
            denoised = x + self.get_eps(x * c_in, self.sigma_to_t(sigma), **kwargs) * c_out
            st = (self.sigma_to_t(sigma) * 10.0)[:, None, None, None]
            return st / (st**2 + 0.25) ** 0.5 * denoised + 0.25 / (st**2 + 0.25) * x

    return LCM()


def wrapper(model: CompVisModel, prediction: str, sampler: str) -> Any:
    _, ke = load_kdiffusion()
    if sampler == "LCM":
        return _lcm_wrap(model)
    return ke.CompVisVDenoiser(model) if prediction == "v_prediction" else ke.CompVisDenoiser(model)


def reference_latents(unet: Any, sampler: str, schedule: str, steps: int, cond: Any, uncond: Any, seeds: list[int], cfg: float = 7.0,
                      prediction: str = "epsilon", ensd: int = 0, time_ids: Any = None, shape: tuple[int, ...] = (4, 8, 8),
                      init: Any = None, denoising: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, final latents) of A1111 with k-diffusion: cond/uncond are [B, T, C] (or (hidden, pooled)).

    With `init` and `denoising`: A1111's img2img (the hires pass) over `init`, `steps` being the
    hires steps: the schedule of int(steps / min(denoising, 0.999)) steps, its last `steps` run."""
    ks, _ = load_kdiffusion()
    model = CompVisModel(unet, time_ids)
    wrap = wrapper(model, prediction, sampler)
    noise = A1111Noise(seeds, shape, ensd)

    def cat(a: Any, b: Any) -> Any:
        return (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) if isinstance(a, tuple) else torch.cat([a, b])

    def cfg_denoiser(x: Any, sigma: Any) -> Any:
        out = wrap(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=cat(cond, uncond))
        c, u = out.chunk(2)
        return u + (c - u) * cfg

    func, default, discard, kwargs = K_SAMPLERS[sampler]
    kind = schedule if schedule != "Automatic" else {"karras": "Karras", "exponential": "Exponential", None: "Uniform"}[default]
    total = steps if denoising is None else int(steps / min(denoising, 0.999))
    n = total + (1 if discard else 0)
    full = reference_sigmas(kind, n, wrap)
    if discard:
        full = torch.cat([full[:-2], full[-1:]])
    sigmas = full if denoising is None else full[total - (steps - 1) - 1:]
    kwargs = dict(kwargs)
    brownian = kwargs.pop("brownian", False)
    x = noise.first() * sigmas[0] if init is None else init + noise.first() * sigmas[0]
    old = ks.torch
    ks.torch = _Hijack(noise)
    try:
        with torch.no_grad():
            if brownian:
                kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, full[full > 0].min(), full.max(), seed=seeds)
            if func in ("sample_dpm_fast", "sample_dpm_adaptive"):
                extra = {"n": len(sigmas) - 1} if func == "sample_dpm_fast" else {}
                lo, hi = (wrap.sigmas[0].item(), wrap.sigmas[-1].item()) if init is None else (sigmas[-2], sigmas[0])
                out = getattr(ks, func)(cfg_denoiser, x, lo, hi, disable=True, **extra, **kwargs)
            elif func == "restart":
                out = _restart(ks, cfg_denoiser, x, sigmas, noise)
            elif func == "lcm":
                out = x
                for i in range(len(sigmas) - 1):
                    out = cfg_denoiser(out, sigmas[i] * out.new_ones([out.shape[0]]))
                    if sigmas[i + 1] > 0:
                        out = out + sigmas[i + 1] * noise.next()
            else:
                out = getattr(ks, func)(cfg_denoiser, x, sigmas, disable=True, **kwargs)
    finally:
        ks.torch = old
    return sigmas, out


def _restart(ks: Any, model: Any, x: Any, sigmas: Any, noise: A1111Noise) -> Any:
    """A1111's Restart plan; every step one k-diffusion Heun step (Euler to sigma 0)."""
    steps = len(sigmas) - 1
    restart_list: dict[float, list[int]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = ks.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    at = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in at:
            rs, times, top = at[i + 1]
            hi_idx = int(torch.argmin(abs(sigmas - top), dim=0))
            if hi_idx < i + 1:
                seg = ks.get_sigmas_karras(rs, sigmas[i + 1].item(), sigmas[hi_idx].item())[:-1]
                for _ in range(times):
                    pairs.extend(zip(seg[:-1], seg[1:], strict=True))
    last = None
    for old, new in pairs:
        if last is not None and last < old:
            x = x + noise.next() * (old**2 - last**2) ** 0.5
        x = ks.sample_heun(model, x, torch.stack([old, new]), disable=True)
        last = new
    return x


def reference_timesteps(unet: Any, sampler: str, steps: int, cond: Any, uncond: Any, seeds: list[int], cfg: float = 7.0, prediction: str = "epsilon") -> torch.Tensor:
    """A1111's DDIM (eta 0) / DDIM CFG++ / PLMS on its grid, eps from the guided UNet."""
    ac = ldm_alphas_cumprod()
    ts = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    noise = A1111Noise(seeds, (4, 8, 8))
    x = noise.first()

    scale = cfg / 12.5 if sampler == "DDIM CFG++" else cfg
    last_u: list[Any] = []

    def eps(x: Any, t: int) -> Any:
        out = unet(torch.cat([x, x]), torch.full((2 * x.shape[0],), float(t)), encoder_hidden_states=torch.cat([cond, uncond]), return_dict=False)[0]
        if prediction == "v_prediction":
            out = ac[t].sqrt() * out + (1 - ac[t]).sqrt() * torch.cat([x, x])
        c, u = out.chunk(2)
        last_u[:] = [u]
        return u + (c - u) * scale

    a = ac[ts].double()
    a_prev = ac[torch.nn.functional.pad(ts[:-1], (1, 0))].double()

    def update(x: Any, e: Any, k: int, direction: Any = None) -> Any:
        x0 = (x - (1 - a[k]).sqrt() * e) / a[k].sqrt()
        return (a_prev[k].sqrt() * x0 + (1 - a_prev[k]).sqrt() * (e if direction is None else direction)).float()

    old: list[Any] = []
    with torch.no_grad():
        for k in range(len(ts) - 1, 0, -1):
            e = eps(x, int(ts[k]))
            if sampler in ("DDIM", "DDIM CFG++"):
                x = update(x, e, k, last_u[0] if sampler == "DDIM CFG++" else None)
                continue
            if not old:
                e_prime = (e + eps(update(x, e, k), int(ts[max(k - 1, 0)]))) / 2
            elif len(old) == 1:
                e_prime = (3 * e - old[-1]) / 2
            elif len(old) == 2:
                e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
            else:
                e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
            x = update(x, e_prime, k)
            old = (old + [e])[-3:]
    return x


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())
