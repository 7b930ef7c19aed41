"""DDIM and PLMS as A1111 runs them: on its fixed grid of training timesteps.

A1111's grid for n steps is 1, 1 + 1000 // n, 1 + 2 (1000 // n), ... below 1000 (clipped to 999);
the samplers walk it from the top and stop at its lowest entry (so they make one model call fewer
than the grid has entries), starting from the unscaled noise. The model gives eps at each
timestep; alphas are the model's cumulative alphas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Eps = Callable[[Any, int], Any]


def grid(steps: int, total: int = 1000) -> list[int]:
    return [min(max(t + 1, 0), total - 1) for t in range(0, total, total // steps)]


def ddim(eps_model: Eps, x: Any, timesteps: list[int], alphas_cumprod: Any, noise: Callable[[], Any], eta: float = 0.0, uncond: Callable[[], Any] | None = None) -> Any:
    """DDIM; with `uncond` (DDIM CFG++) the direction term uses the negative's eps of the call."""
    alphas = [float(alphas_cumprod[t]) for t in timesteps]
    previous = [float(alphas_cumprod[0])] + alphas[:-1]  # the alpha of the timestep below each one
    for index in range(len(timesteps) - 1, 0, -1):
        e = eps_model(x, timesteps[index])
        a_t, a_prev = alphas[index], previous[index]
        sigma_t = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        direction = (1.0 - a_prev - sigma_t**2) ** 0.5 * (e if uncond is None else uncond())
        fresh = noise()  # A1111 draws it every step, also at eta 0
        x = a_prev**0.5 * x0 + direction + sigma_t * fresh
    return x


def plms(eps_model: Eps, x: Any, timesteps: list[int], alphas_cumprod: Any) -> Any:
    alphas = [float(alphas_cumprod[t]) for t in timesteps]
    previous = [float(alphas_cumprod[0])] + alphas[:-1]

    def step(x: Any, e: Any, index: int) -> Any:
        a_t, a_prev = alphas[index], previous[index]
        x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        return a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * e

    old: list[Any] = []
    for index in range(len(timesteps) - 1, 0, -1):
        e = eps_model(x, timesteps[index])
        if not old:  # pseudo improved Euler: a trial step, then the mean of both slopes
            trial = step(x, e, index)
            e_next = eps_model(trial, timesteps[max(index - 1, 0)])
            e_prime = (e + e_next) / 2
        elif len(old) == 1:  # Adams-Bashforth, orders 2, 3 and 4
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = step(x, e_prime, index)
        old.append(e)
        if len(old) >= 4:
            old.pop(0)
    return x
