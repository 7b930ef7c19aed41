"""UniPC as A1111 runs it: the multistep predictor-corrector of Zhao et al. (2023) on a VP schedule.

A1111 runs UniPC with its timestep samplers (DDIM, PLMS): the model gives the guided noise
prediction at a (fractional) training timestep, and the solver works on the data prediction
`x0 = (x - sigma_t * eps) / alpha_t` (no thresholding) in continuous time t in (0, 1]:

- The model's schedule is read as a variance-preserving one, "discrete" kind: training step n
  sits at time t_n = (n + 1) / N (N = 1000), where log alpha_t = log(alphas_cumprod[n]) / 2;
  between those points log alpha is linear in t, and beyond the ends the outer two points are
  extended. sigma_t = sqrt(1 - alpha_t^2) and lambda_t = log alpha_t - log sigma_t (half the log
  signal-to-noise ratio). Time t reaches the UNet as the timestep (t - 1/N) * 1000.
- The time grid (`skip_type`): `time_uniform` evenly spaced from 1 to 1/N, `time_quadratic`
  evenly spaced in sqrt(t) and squared, `logSNR` evenly spaced in lambda and mapped back to t.
  The number of steps is the length of A1111's DDIM grid for the chosen steps (so 7 steps run
  8, as in A1111); img2img starts at the grid's last kept timestep / 1000 + 1/N.
- The run: one model call at the start, then `order - 1` warm-up steps of rising order, then
  steps of `order` (lower near the end with `lower_order_final`); every step but the last is
  corrected with the model's output at its end, which is then reused by the next step. The
  last step is a predictor step only, and no final denoising follows: the result keeps the
  noise of time 1/N, as in A1111.
- Variants: `bh1` and `bh2` (B(h) = h or e^h - 1, coefficients solved from the order
  conditions), `vary_coeff` (coefficients from the inverted Vandermonde-like matrix; its last
  correction weight is the one A1111's code picks). Scalars are float32 torch values as in
  A1111, so a run gives A1111's latents to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tihub.errors import ConfigError

VARIANTS = ("bh1", "bh2", "vary_coeff")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")

# A1111's defaults (its settings uni_pc_variant, uni_pc_skip_type, uni_pc_order, uni_pc_lower_order_final)
DEFAULT_VARIANT = "bh1"
DEFAULT_SKIP_TYPE = "time_uniform"
DEFAULT_ORDER = 3
DEFAULT_LOWER_ORDER_FINAL = True

Eps = Callable[[Any, float], Any]  # (x, UNet timestep) -> guided noise prediction


def variant_name(value: str) -> str:
    """A1111's spelling of a UniPC variant (case-insensitive)."""
    for v in VARIANTS:
        if value.strip().lower() == v:
            return v
    raise ConfigError(f"UniPC variant '{value}' is not one of A1111's; use one of: {', '.join(VARIANTS)}.")


def skip_type_name(value: str) -> str:
    """A1111's spelling of a UniPC skip type (case-insensitive)."""
    for v in SKIP_TYPES:
        if value.strip().lower() == v.lower():
            return v
    raise ConfigError(f"UniPC skip type '{value}' is not one of A1111's; use one of: {', '.join(SKIP_TYPES)}.")


class VPSchedule:
    """The model's noise schedule as a continuous-time VP schedule (A1111's 'discrete' kind)."""

    def __init__(self, alphas_cumprod: Any) -> None:
        import torch

        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        self.total = len(ac)
        self.log_alpha_nodes = 0.5 * torch.log(ac)  # decreasing in t
        self.t_nodes = torch.linspace(0.0, 1.0, self.total + 1)[1:]

    @staticmethod
    def _piecewise(x: Any, xp: Any, yp: Any) -> Any:
        """Piecewise-linear y(x) through (xp, yp), xp increasing; the outer segments extended."""
        import torch

        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1)
        k = len(xp)
        # the segment [j, j+1] holding x: j = (number of nodes below x) - 1, kept inside 0..k-2
        j = (torch.searchsorted(xp, x, right=False) - 1).clamp(0, k - 2)
        x0, x1, y0, y1 = xp[j], xp[j + 1], yp[j], yp[j + 1]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def log_alpha(self, t: Any) -> Any:
        return self._piecewise(t, self.t_nodes, self.log_alpha_nodes)

    def alpha(self, t: Any) -> Any:
        return self.log_alpha(t).exp()

    def sigma(self, t: Any) -> Any:
        import torch

        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: Any) -> Any:
        """Half log-SNR: log alpha_t - log sigma_t."""
        import torch

        la = self.log_alpha(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    def t_of_lambda(self, lam: Any) -> Any:
        """The time of a half log-SNR value (the inverse of `lam`)."""
        import torch

        lam = torch.as_tensor(lam, dtype=torch.float32)
        la = -0.5 * torch.logaddexp(torch.zeros((1,)), -2.0 * lam)
        return self._piecewise(la, self.log_alpha_nodes.flip(0), self.t_nodes.flip(0))

    def model_time(self, t: Any) -> Any:
        """The UNet timestep of time t: (t - 1/N) * 1000."""
        return (t - 1.0 / self.total) * 1000.0


def steps_run(steps: int) -> int:
    """How many UniPC steps A1111 runs for `steps`: the length of its DDIM grid (7 gives 8)."""
    return len(range(0, 1000, 1000 // steps))


def time_grid(schedule: VPSchedule, skip_type: str, n: int, t_start: float | None = None) -> Any:
    """n + 1 times from t_start (default 1) down to 1/N, float32 as A1111 computes them."""
    import torch

    t_0 = 1.0 / schedule.total
    t_T = 1.0 if t_start is None else t_start
    if skip_type == "logSNR":
        lam_T = float(schedule.lam(torch.tensor(t_T, dtype=torch.float32)))
        lam_0 = float(schedule.lam(torch.tensor(t_0, dtype=torch.float32)))
        return schedule.t_of_lambda(torch.linspace(lam_T, lam_0, n + 1))
    if skip_type == "time_quadratic":
        return torch.linspace(t_T**0.5, t_0**0.5, n + 1).pow(2)
    if skip_type == "time_uniform":
        return torch.linspace(t_T, t_0, n + 1)
    raise ConfigError(f"UniPC skip type '{skip_type}' is not one of A1111's; use one of: {', '.join(SKIP_TYPES)}.")


class UniPC:
    """One UniPC run over a time grid; `eps(x, timestep)` is the guided noise prediction."""

    def __init__(self, eps: Eps, schedule: VPSchedule, variant: str = DEFAULT_VARIANT) -> None:
        self.eps = eps
        self.ns = schedule
        self.variant = variant

    def data_prediction(self, x: Any, t: Any) -> Any:
        """x0 from the model's noise prediction at time t (a one-element float32 tensor)."""
        e = self.eps(x, float(self.ns.model_time(t)))
        # 0-dim scalars (CPU), so that latents on any device combine with them
        return (x - self.ns.sigma(t)[0] * e) / self.ns.alpha(t)[0]

    def sample(self, x: Any, times: Any, order: int = DEFAULT_ORDER, lower_order_final: bool = DEFAULT_LOWER_ORDER_FINAL) -> Any:
        n = len(times) - 1
        t = [times[i].reshape(1) for i in range(n + 1)]
        # 1. the model at the start
        models = [self.data_prediction(x, t[0])]
        past = [t[0]]
        # 2. warm-up: steps of order 1, 2, ..., order - 1, each corrected
        for k in range(1, order):
            x, m = self.step(x, models, past, t[k], k, correct=True)
            models.append(m)
            past.append(t[k])
        # 3. steps of the full order (lower at the end), corrected but for the last one
        for k in range(order, n + 1):
            step_order = min(order, n + 1 - k) if lower_order_final else order
            x, m = self.step(x, models, past, t[k], step_order, correct=k != n)
            models, past = models[1:] + [models[-1]], past[1:] + [t[k]]
            if k < n:
                models[-1] = m
        return x

    # -- one step ----------------------------------------------------------------------------

    def step(self, x: Any, models: list[Any], past: list[Any], t: Any, order: int, correct: bool) -> tuple[Any, Any]:
        if self.variant == "vary_coeff":
            return self._step_vary(x, models, past, t, order, correct)
        return self._step_bh(x, models, past, t, order, correct)

    def _common(self, models: list[Any], past: list[Any], t: Any, order: int) -> tuple[Any, Any, Any, list[Any], list[Any]]:
        """h, sigma ratio, alpha_t, the ratios r_i and the scaled differences D_i of the last
        `order` model outputs."""
        ns = self.ns
        lam_prev, lam_t = ns.lam(past[-1]), ns.lam(t)
        h = lam_t - lam_prev
        ratios, diffs = [], []
        for i in range(1, order):
            r = (ns.lam(past[-(i + 1)]) - lam_prev) / h
            ratios.append(r[0])
            diffs.append((models[-(i + 1)] - models[-1]) / r[0])
        return h[0], ns.sigma(t)[0] / ns.sigma(past[-1])[0], ns.alpha(t)[0], ratios, diffs

    def _step_bh(self, x: Any, models: list[Any], past: list[Any], t: Any, order: int, correct: bool) -> tuple[Any, Any]:
        import torch

        h, ratio, alpha_t, ratios, diffs = self._common(models, past, t, order)
        rks = torch.stack([*ratios, torch.tensor(1.0)])
        hh = -h  # data prediction
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        factorial = 1
        for i in range(1, order + 1):
            rows.append(rks.pow(i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat, b_vec = torch.stack(rows), torch.stack(b)
        base = ratio * x - alpha_t * h_phi_1 * models[-1]
        # predictor: order 2 uses 1/2, higher orders solve the order conditions
        x_t = base
        if diffs:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
            x_t = base - alpha_t * b_h * sum(rho * d for rho, d in zip(rhos_p, diffs, strict=True))
        if not correct:
            return x_t, None
        # corrector: the model at the predicted point, then the step again with it
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b_vec)
        m_t = self.data_prediction(x_t, t)
        residual = rhos_c[-1] * (m_t - models[-1])
        if diffs:
            residual = sum(rho * d for rho, d in zip(rhos_c[:-1], diffs, strict=True)) + residual
        return base - alpha_t * b_h * residual, m_t

    def _step_vary(self, x: Any, models: list[Any], past: list[Any], t: Any, order: int, correct: bool) -> tuple[Any, Any]:
        import torch

        h, ratio, alpha_t, ratios, diffs = self._common(models, past, t, order)
        rks = torch.stack([*ratios, torch.tensor(1.0)])
        size = len(rks)
        # C[i][j] = r_i^j / (j + 1)!
        cols, col = [], torch.ones_like(rks)
        for k in range(1, size + 1):
            cols.append(col)
            col = col * rks / (k + 1)
        c_mat = torch.stack(cols, dim=1)
        hh = -h
        h_phi = [torch.expm1(hh)]
        factorial = 1
        for k in range(1, size + 1):
            h_phi.append(h_phi[-1] / hh - 1 / factorial)
            factorial *= k + 1
        base = ratio * x - alpha_t * h_phi[0] * models[-1]

        def weighted(a: Any) -> Any:  # sum over k of h_phi[k+1] * (D . a[k])
            out = 0
            for k in range(size - 1):
                out = out + h_phi[k + 1] * sum(a[k][j] * diffs[j] for j in range(size - 1))
            return out

        x_t = base
        if diffs:
            x_t = base - alpha_t * weighted(torch.linalg.inv(c_mat[:-1, :-1]))
        if not correct:
            return x_t, None
        a_c = torch.linalg.inv(c_mat)
        m_t = self.data_prediction(x_t, t)
        last = a_c[max(size - 2, 0)][-1]  # the weight A1111's loop leaves in place
        x_t = base - alpha_t * weighted(a_c) if diffs else base
        return x_t - alpha_t * h_phi[size] * (m_t - models[-1]) * last, m_t


def check_order(order: int, steps: int) -> None:
    """A1111 stops when the order exceeds the steps it runs; tihub refuses first."""
    if order < 1:
        raise ConfigError(f"UniPC order {order} is out of range; use 1 or more (3 is A1111's default).")
    if steps < order:
        raise ConfigError(f"UniPC order {order} needs at least {order} steps; raise --steps or lower --uni-pc-order to {max(steps, 1)}.")


def sample(eps: Eps, x: Any, alphas_cumprod: Any, steps: int, variant: str = DEFAULT_VARIANT, skip_type: str = DEFAULT_SKIP_TYPE,
           order: int = DEFAULT_ORDER, lower_order_final: bool = DEFAULT_LOWER_ORDER_FINAL, t_start: float | None = None) -> Any:
    """A1111's UniPC over `steps` steps (already A1111's count: `steps_run`) from x (unit noise,
    or the noised start of img2img at `t_start`)."""
    check_order(order, steps)
    ns = VPSchedule(alphas_cumprod)
    times = time_grid(ns, skip_type, steps, t_start)
    return UniPC(eps, ns, variant).sample(x, times, order, lower_order_final)


def check_options(r: Any, sampler: str) -> None:
    """Normalise the UniPC settings of a `Randomness`; refuse them for another sampler."""
    given = (r.uni_pc_variant, r.uni_pc_skip_type, r.uni_pc_order, r.uni_pc_lower_order_final)
    if sampler != "UniPC":
        if given != (DEFAULT_VARIANT, DEFAULT_SKIP_TYPE, DEFAULT_ORDER, DEFAULT_LOWER_ORDER_FINAL):
            raise ConfigError(f"Sampler {sampler} takes no UniPC options; drop the --uni-pc-* options or use --sampler UniPC.")
        return
    r.uni_pc_variant = variant_name(r.uni_pc_variant)
    r.uni_pc_skip_type = skip_type_name(r.uni_pc_skip_type)
    r.uni_pc_order = int(r.uni_pc_order)
    r.uni_pc_lower_order_final = bool(r.uni_pc_lower_order_final)
    if r.uni_pc_order < 1 or r.uni_pc_order > 50:
        raise ConfigError(f"UniPC order {r.uni_pc_order} is out of range; use 1 to 50 (3 is A1111's default).")


def infotext(r: Any) -> dict[str, Any]:
    """The UniPC keys A1111 1.1-1.5 writes: each setting that differs from its default."""
    out: dict[str, Any] = {}
    if r.uni_pc_variant != DEFAULT_VARIANT:
        out["UniPC variant"] = r.uni_pc_variant
    if r.uni_pc_skip_type != DEFAULT_SKIP_TYPE:
        out["UniPC skip type"] = r.uni_pc_skip_type
    if r.uni_pc_order != DEFAULT_ORDER:
        out["UniPC order"] = r.uni_pc_order
    if r.uni_pc_lower_order_final != DEFAULT_LOWER_ORDER_FINAL:
        out["UniPC lower order final"] = r.uni_pc_lower_order_final
    return out
