"""The sampling algorithms A1111 runs, over a list of noise levels (sigmas).

Each solver takes `model(x, sigma) -> denoised` (the model's estimate of the clean latent at noise
level sigma, classifier-free guidance included), the starting latent `x` (noise already scaled to
the first sigma), the sigmas from high to low, `noise(sigma, sigma_next)` (unit-variance noise:
the images' generators for ancestral steps, Brownian-tree increments for the SDE solvers) and the
options. They follow the published algorithms as k-diffusion implements them (Karras et al. 2022;
DPM-Solver and DPM-Solver++, Lu et al. 2022; Restart, Xu et al. 2023; LCM) and A1111 drives them,
so a run gives A1111's latents to float rounding. Scalars are Python floats; the latents keep
their own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Model = Callable[[Any, float], Any]
Noise = Callable[[float, float], Any]


@dataclass
class Options:
    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    solver_type: str = "midpoint"  # DPM++ 2M SDE: midpoint or heun
    sigma_min: float = 0.0  # DPM fast / adaptive: the model's range and the step count
    sigma_max: float = 0.0
    steps: int = 0


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise sigma_up."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def _derivative(x: Any, sigma: float, denoised: Any) -> Any:
    return (x - denoised) / sigma


def _churn(x: Any, sigmas: list[float], i: int, noise: Noise, o: Options) -> tuple[Any, float]:
    """Karras' stochastic "churn": raise the noise level by a factor (1 + gamma) first."""
    gamma = min(o.s_churn / (len(sigmas) - 1), 2**0.5 - 1) if o.s_tmin <= sigmas[i] <= o.s_tmax else 0.0
    if o.s_churn > 0:  # A1111 draws this noise each step, used or not
        eps = noise(sigmas[i], sigmas[i + 1]) * o.s_noise
        if gamma > 0:
            sigma_hat = sigmas[i] * (gamma + 1)
            return x + eps * math.sqrt(sigma_hat**2 - sigmas[i] ** 2), sigma_hat
    return x, sigmas[i] * (gamma + 1)


def euler(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, o)
        d = _derivative(x, sigma_hat, model(x, sigma_hat))
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], o.eta)
        x = x + _derivative(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * o.s_noise * up
    return x


def heun(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, o)
        d = _derivative(x, sigma_hat, model(x, sigma_hat))
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:  # last step: Euler
            x = x + d * dt
        else:  # trapezoid: average the slopes at both ends
            x2 = x + d * dt
            d2 = _derivative(x2, sigmas[i + 1], model(x2, sigmas[i + 1]))
            x = x + (d + d2) / 2 * dt
    return x


def _log_midpoint(a: float, b: float) -> float:
    return math.exp((math.log(a) + math.log(b)) / 2)


def dpm_2(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, o)
        d = _derivative(x, sigma_hat, model(x, sigma_hat))
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:  # DPM-Solver-2: the slope at the log-space midpoint carries the whole step
            mid = _log_midpoint(sigma_hat, sigmas[i + 1])
            x2 = x + d * (mid - sigma_hat)
            d2 = _derivative(x2, mid, model(x2, mid))
            x = x + d2 * (sigmas[i + 1] - sigma_hat)
    return x


def dpm_2_ancestral(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], o.eta)
        d = _derivative(x, sigmas[i], denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            mid = _log_midpoint(sigmas[i], down)
            x2 = x + d * (mid - sigmas[i])
            d2 = _derivative(x2, mid, model(x2, mid))
            x = x + d2 * (down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * o.s_noise * up
    return x


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j}."""
    import numpy as np
    from numpy.polynomial import polynomial as P

    poly = np.array([1.0])
    for k in range(order):
        if k != j:
            poly = P.polymul(poly, np.array([-t[i - k], 1.0]) / (t[i - j] - t[i - k]))
    antiderivative = P.polyint(poly)
    return float(P.polyval(t[i + 1], antiderivative) - P.polyval(t[i], antiderivative))


def lms(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options, order: int = 4) -> Any:
    slopes: list[Any] = []
    for i in range(len(sigmas) - 1):
        slopes.append(_derivative(x, sigmas[i], model(x, sigmas[i])))
        if len(slopes) > order:
            slopes.pop(0)
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, sigmas, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(slopes), strict=False))
    return x


def dpmpp_2s_ancestral(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], o.eta)
        if down == 0:
            x = x + _derivative(x, sigmas[i], denoised) * (down - sigmas[i])
        else:  # DPM-Solver++(2S) in log sigma, through the midpoint
            h = math.log(sigmas[i]) - math.log(down)
            mid = sigmas[i] * math.exp(-h / 2)
            x2 = (mid / sigmas[i]) * x - math.expm1(-h / 2) * denoised
            denoised2 = model(x2, mid)
            x = (down / sigmas[i]) * x - math.expm1(-h) * denoised2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * o.s_noise * up
    return x


def dpmpp_sde(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options, r: float = 0.5) -> Any:
    import torch

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + _derivative(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        # DPM-Solver++ (stochastic): t = -log sigma, an intermediate point at t + r h. The points
        # where the Brownian tree is read are computed in float32 as k-diffusion does, so the
        # same seed reads the same increments.
        t32 = -torch.tensor(sigmas[i]).log()
        t_next32 = -torch.tensor(sigmas[i + 1]).log()
        s32 = t32 + (t_next32 - t32) * r
        sigma_t, sigma_s, sigma_next = (float((-v).exp()) for v in (t32, s32, t_next32))
        t = float(t32)
        # 1. ancestral step to the intermediate point
        down, up = ancestral_step(sigma_t, sigma_s, o.eta)
        s_ = -math.log(down)
        x2 = (down / sigma_t) * x - math.expm1(t - s_) * denoised
        x2 = x2 + noise(sigma_t, sigma_s) * o.s_noise * up
        denoised2 = model(x2, sigma_s)
        # 2. the full step with the blended estimate
        down, up = ancestral_step(sigma_t, sigma_next, o.eta)
        t_next_ = -math.log(down)
        fac = 1 / (2 * r)
        blended = (1 - fac) * denoised + fac * denoised2
        x = (down / sigma_t) * x - math.expm1(t - t_next_) * blended
        x = x + noise(sigma_t, sigma_next) * o.s_noise * up
    return x


def dpmpp_2m(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        h = _h(sigmas[i], sigmas[i + 1])
        if previous is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * denoised
        else:  # second order: extrapolate the estimate with the previous step's
            r = (math.log(sigmas[i - 1]) - math.log(sigmas[i])) / h
            blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * blended
        previous = denoised
    return x


def _h(sigma: float, sigma_next: float) -> float:
    """The step in t = -log sigma (inf to sigma 0)."""
    return math.inf if sigma_next == 0 else math.log(sigma) - math.log(sigma_next)


def dpmpp_2m_sde(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    previous, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            h = None
        else:
            h = _h(sigmas[i], sigmas[i + 1])
            eta_h = o.eta * h
            x = sigmas[i + 1] / sigmas[i] * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
            if previous is not None:
                r = h_last / h
                phi = -math.expm1(-h - eta_h)
                if o.solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - previous)
            if o.eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * o.s_noise
        previous, h_last = denoised, h
    return x


def dpmpp_3m_sde(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            h = None
        else:
            h = _h(sigmas[i], sigmas[i + 1])
            h_eta = h * (o.eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            if h_2 is not None:  # third order from the two previous estimates
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:  # second order
                r = h_1 / h
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * ((denoised - d_1) / r)
            if o.eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * h * o.eta)) * o.s_noise
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


def lcm(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x


# -- Restart (Xu et al. 2023), as A1111's restart sampler -----------------------------------------


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    import torch

    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [*((hi + ramp * (lo - hi)) ** rho).tolist(), 0.0]


def restart(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    steps = len(sigmas) - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        # A1111's automatic plan: fewer main steps, and restart segments from sigma 2 down to 0.1
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = _karras(steps - restart_steps * restart_times, sigmas[-2], sigmas[0])
        restarts = {0.1: (restart_steps + 1, restart_times, 2.0)}

    def nearest(value: float) -> int:
        return min(range(len(sigmas)), key=lambda k: (abs(sigmas[k] - value), k))

    at = {nearest(key): value for key, value in restarts.items()}
    plan: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in at:
            n, times, top = at[i + 1]
            low_idx, high_idx = i + 1, nearest(top)
            if high_idx < low_idx:
                segment = _karras(n, sigmas[low_idx], sigmas[high_idx])[:-1]
                for _ in range(times):
                    plan.extend(zip(segment[:-1], segment[1:], strict=True))

    last = None
    for old, new in plan:
        if last is not None and last < old:  # restart: renoise back up to `old`
            x = x + noise(last, old) * o.s_noise * math.sqrt(old**2 - last**2)
        d = _derivative(x, old, model(x, old))
        if new == 0:
            x = x + d * (new - old)
        else:
            x2 = x + d * (new - old)
            d2 = _derivative(x2, new, model(x2, new))
            x = x + (d + d2) / 2 * (new - old)
        last = new
    return x


# -- DPM-Solver fast / adaptive (Lu et al. 2022), in t = -log sigma -------------------------------
# The step sizes of the adaptive solver feed back on themselves, so its scalars are float32 tensors
# computed in k-diffusion's order: float64 scalars would drift apart from A1111's run.


class _DPMSolver:
    def __init__(self, model: Model) -> None:
        self.model = model

    @staticmethod
    def sigma(t: Any) -> Any:
        return t.neg().exp()

    @staticmethod
    def t(sigma: Any) -> Any:
        return sigma.log().neg()

    def eps(self, cache: dict[str, Any], key: str, x: Any, t: Any) -> Any:
        if key not in cache:
            cache[key] = (x - self.model(x, float(self.sigma(t)))) / float(self.sigma(t))
        return cache[key]

    def step_1(self, x: Any, t: Any, t_next: Any, cache: dict[str, Any]) -> Any:
        h = t_next - t
        return x - float(self.sigma(t_next) * h.expm1()) * self.eps(cache, "eps", x, t)

    def step_2(self, x: Any, t: Any, t_next: Any, cache: dict[str, Any], r1: float = 1 / 2) -> Any:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - float(self.sigma(s1) * (r1 * h).expm1()) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sn = self.sigma(t_next)
        return x - float(sn * h.expm1()) * eps - float(sn / (2 * r1) * h.expm1()) * (eps_r1 - eps)

    def step_3(self, x: Any, t: Any, t_next: Any, cache: dict[str, Any], r1: float = 1 / 3, r2: float = 2 / 3) -> Any:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - float(self.sigma(s1) * (r1 * h).expm1()) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - float(self.sigma(s2) * (r2 * h).expm1()) * eps - float(self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1)) * (eps_r1 - eps)
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sn = self.sigma(t_next)
        return x - float(sn * h.expm1()) * eps - float(sn / r2 * (h.expm1() / h - 1)) * (eps_r2 - eps)

    def ancestral(self, s: Any, t: Any, t_end: Any, eta: float) -> tuple[Any, float]:
        """(t to step to, noise to add) for an ancestral step from s to t."""
        import torch

        if not eta:
            return t, 0.0
        sigma_from, sigma_to = self.sigma(s), self.sigma(t)
        up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
        down = (sigma_to**2 - up**2) ** 0.5
        t_ = torch.minimum(t_end, self.t(down))
        return t_, float((self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5)


def _t_range(o: Options) -> tuple[Any, Any]:
    import torch

    return -torch.tensor(o.sigma_max).log(), -torch.tensor(o.sigma_min).log()


def dpm_fast(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options) -> Any:
    import torch

    solver = _DPMSolver(model)
    t_start, t_end = _t_range(o)
    nfe = o.steps
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, Any] = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, up = solver.ancestral(t, t_next, t_end, o.eta)
        step = (solver.step_1, solver.step_2, solver.step_3)[order - 1]
        x = step(x, t, t_next_, cache)
        x = x + up * o.s_noise * noise(float(solver.sigma(t)), float(solver.sigma(t_next)))
    return x


def dpm_adaptive(model: Model, x: Any, sigmas: list[float], noise: Noise, o: Options, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, accept_safety: float = 0.81) -> Any:
    import torch

    solver = _DPMSolver(model)
    t_start, t_end = _t_range(o)
    # integral (I) step-size controller: factor = (1 / error) ^ (1 / order), softened by atan
    exponent = 1 / (1.5 if o.eta else order)
    h = h_init
    s = t_start
    x_prev = x
    while s < t_end - 1e-5:
        cache: dict[str, Any] = {}
        t = torch.minimum(t_end, s + h)
        t_, up = solver.ancestral(s, t, t_end, o.eta)
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(torch.tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
        factor = (1 / (error + 1e-8)) ** exponent
        factor = 1 + math.atan(factor - 1)
        h *= factor
        if factor >= accept_safety:
            x_prev = x_low
            x = x_high + up * o.s_noise * noise(float(solver.sigma(s)), float(solver.sigma(t)))
            s = t
    return x


SOLVERS: dict[str, Callable[..., Any]] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "dpm_fast": dpm_fast,
    "dpm_adaptive": dpm_adaptive,
    "restart": restart,
    "lcm": lcm,
}
