"""The diffusers UNet as the denoiser A1111's samplers call, with classifier-free guidance.

A1111 wraps its UNet in k-diffusion's CompVis denoiser: for a latent x at noise level sigma the
UNet sees `x / sqrt(sigma^2 + 1)` at the fractional timestep of sigma (the model's schedule,
linear in log sigma), and its output becomes the clean estimate: `x - sigma * eps` for an
epsilon model, `x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)` for a v-prediction model.
DDIM and PLMS ask for eps at whole timesteps instead (`eps`), LCM uses its own 50-level schedule
and output scaling (`lcm=True`).

Guidance: per model call the conditioning in force is asked for (`conds(call)`: prompt editing
counts model calls, as A1111 does); every image's prompt (each `AND` part with its weight) and
negative are run through the UNet, images whose conditionings have the same token length in one
forward, prompts before negatives (A1111's order), and combined as
`uncond + sum(weight * scale * (cond - uncond))` on the clean estimates (on eps for DDIM/PLMS),
with the scalings computed in float32 in k-diffusion's order: DPM adaptive's step sizes feed on
differences of nearly equal latents, so even rounding has to follow A1111's.

Skipping the negative, as A1111's CFG denoiser does (counting model calls from 0, over a total of
steps x 2 for second-order samplers): "Skip Early CFG" (`skip_early_cond`) skips it on every call
whose index / total is at most the setting; "NGMS" (`s_min_uncond`) on every other call (the odd
ones; every call with `s_min_uncond_all`) whose level is below the setting, the level being the
sigma for k-diffusion samplers and the UNet timestep for DDIM, PLMS and UniPC, as A1111 compares
them. A skipped call runs the prompt parts only and guides at scale 1 around the image's first
part: `first + sum(weight * (part - first))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tihub.engine.sampling.schedule import ModelSchedule
from tihub.errors import ConfigError


@dataclass
class StepConds:
    """The conditioning of one model call: per image, its prompt parts and its negative.

    A part or negative is any object with `hidden` ([tokens, width]) and `pooled` (SDXL's pooled
    vector, else None), e.g. tihub.engine.conditioning.Cond."""

    positive: list[list[tuple[Any, float]]]  # per image: [(cond, weight), ...]
    negative: list[Any]  # per image


class LCMSchedule(ModelSchedule):
    """A1111's LCM view of the model: 50 of its 1000 levels (every 20th, ending at 999); sigma maps
    to the nearest of them as timestep 20k + 19."""

    skip = 20

    def __init__(self, base: ModelSchedule) -> None:
        import torch

        total = len(base.alphas_cumprod)
        count = total // self.skip
        picked = torch.zeros(count, dtype=torch.float32)
        for k in range(count):
            picked[count - 1 - k] = base.alphas_cumprod[total - 1 - k * self.skip]
        super().__init__(picked)

    def sigma_to_t(self, sigma: Any) -> Any:
        import torch

        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        nearest = (log_sigma.reshape(-1)[None, :] - self.log_sigmas[:, None]).abs().argmin(dim=0)
        return (nearest * self.skip + (self.skip - 1)).reshape(log_sigma.shape)

    def t_to_sigma(self, t: Any) -> Any:
        import torch

        t = torch.clamp(((torch.as_tensor(t) - (self.skip - 1)) / self.skip).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(t)

    def uniform_timesteps(self, n: int) -> Any:
        import torch

        start, end = self.sigma_to_t(torch.tensor(self.sigma_max)), self.sigma_to_t(torch.tensor(self.sigma_min))
        return torch.linspace(float(start), float(end), n)


@dataclass
class _Group:
    """Entries with the same token length: one UNet forward."""

    members: list[int]  # entry indices (prompt parts first, then negatives)
    rows: list[int]  # the image of each member
    hidden: Any
    pooled: Any


@dataclass
class _Prepared:
    conds: StepConds
    groups: list[_Group]
    parts: list[list[tuple[int, float]]]  # per image: (entry, weight) of its prompt parts
    negatives: list[int]  # per image: the entry of its negative
    entries: list[tuple[int, Any]]  # (image, cond): prompt parts first, then negatives
    positive_groups: list[_Group] | None = None  # the prompt parts alone (made when a call skips the negative)

    def without_negatives(self, make: Callable[[list[tuple[int, Any]], list[int]], _Group]) -> list[_Group]:
        if self.positive_groups is None:
            by_length: dict[int, list[int]] = {}
            for k in range(self.negatives[0] if self.negatives else len(self.entries)):
                by_length.setdefault(int(self.entries[k][1].hidden.shape[0]), []).append(k)
            self.positive_groups = [make(self.entries, members) for members in by_length.values()]
        return self.positive_groups


def check_guidance(s_min_uncond: float, skip_early_cond: float) -> None:
    """Refuse out-of-range NGMS / Skip Early CFG settings (one sentence)."""
    if s_min_uncond < 0:
        raise ConfigError(f"NGMS {s_min_uncond:g} is out of range; use 0 (off) or a sigma above it, e.g. 1.")
    if not 0 <= skip_early_cond <= 1:
        raise ConfigError(f"Skip Early CFG {skip_early_cond:g} is out of range; use a fraction of the steps from 0 (off) to 1.")


class Denoiser:
    def __init__(
        self,
        unet: Any,
        schedule: ModelSchedule,
        prediction: str,
        conds: Callable[[int], StepConds],
        cfg_scale: float,
        time_ids: Any = None,
        lcm: bool = False,
    ) -> None:
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction
        self.conds = conds
        self.cfg_scale = float(cfg_scale)
        self.time_ids = time_ids  # SDXL: [1, 6] (size, crop, target size)
        self.lcm = lcm
        self.calls = 0
        self.last_uncond: Any = None  # the negatives' outputs of the last call (DDIM CFG++)
        self.on_level: Callable[[float], None] | None = None  # told the sigma/timestep of each call (progress)
        self._prepared: _Prepared | None = None
        # skipping the negative (A1111's NGMS and Skip Early CFG; `sampling.run` sets them from the plan)
        self.s_min_uncond = 0.0
        self.s_min_uncond_all = False
        self.skip_early_cond = 0.0
        self.total_calls = 1  # A1111's total_steps: steps, twice for second-order samplers
        self.skipped: list[int] = []  # the calls that ran without the negative
        self._level = 0.0  # the sigma or timestep of the current call

    # -- the UNet with guidance ----------------------------------------------------------------

    def _prepare(self, c: StepConds) -> _Prepared:
        """The forward groups of a conditioning, stacked once per distinct conditioning."""
        if self._prepared is not None and self._prepared.conds is c:
            return self._prepared
        entries: list[tuple[int, Any]] = []  # (image, cond): prompt parts first, then negatives
        parts: list[list[tuple[int, float]]] = []
        for i, image_parts in enumerate(c.positive):
            parts.append([])
            for cond, weight in image_parts:
                parts[-1].append((len(entries), float(weight)))
                entries.append((i, cond))
        negatives = []
        for i, cond in enumerate(c.negative):
            negatives.append(len(entries))
            entries.append((i, cond))
        by_length: dict[int, list[int]] = {}
        for k, (_, cond) in enumerate(entries):
            by_length.setdefault(int(cond.hidden.shape[0]), []).append(k)
        groups = [self._group(entries, members) for members in by_length.values()]
        self._prepared = _Prepared(c, groups, parts, negatives, entries)
        return self._prepared

    def _group(self, entries: list[tuple[int, Any]], members: list[int]) -> _Group:
        import torch

        device, dtype = self.unet.device, self.unet.dtype
        hidden = torch.stack([entries[k][1].hidden for k in members]).to(device=device, dtype=dtype)
        pooled = None
        if self.time_ids is not None:
            pooled = torch.stack([entries[k][1].pooled for k in members]).to(device=device, dtype=dtype)
        return _Group(members, [entries[k][0] for k in members], hidden, pooled)

    def skips_negative(self, call: int, level: float) -> bool:
        """Whether A1111 runs this call without the negative (Skip Early CFG, then NGMS)."""
        if self.skip_early_cond != 0 and call / self.total_calls <= self.skip_early_cond:
            return True
        return bool((call % 2 or self.s_min_uncond_all) and self.s_min_uncond > 0 and level < self.s_min_uncond)

    def guided(self, x_in: Any, t: Any, convert: Callable[[Any, Any], Any] | None = None) -> Any:
        """Guided output for every image: x_in [B, C, H, W] float32, t [B] timesteps; `convert`
        (UNet output, rows of the batch) turns each part's output into what is guided."""
        import torch

        prepared = self._prepare(self.conds(self.calls))
        skip = self.skips_negative(self.calls, self._level)
        if skip:
            self.skipped.append(self.calls)
        self.calls += 1
        outputs: dict[int, Any] = {}
        for g in prepared.without_negatives(self._group) if skip else prepared.groups:
            index = torch.tensor(g.rows, device=x_in.device)
            kwargs: dict[str, Any] = {}
            if g.pooled is not None:
                kwargs["added_cond_kwargs"] = {"text_embeds": g.pooled, "time_ids": self.time_ids.to(device=g.hidden.device, dtype=g.hidden.dtype).repeat(len(g.rows), 1)}
            out = self.unet(
                x_in.index_select(0, index).to(dtype=self.unet.dtype),
                t.index_select(0, index.to(t.device)).to(self.unet.device),
                encoder_hidden_states=g.hidden,
                return_dict=False,
                **kwargs,
            )[0].float()
            if convert is not None:
                out = convert(out, index)
            for j, k in enumerate(g.members):
                outputs[k] = out[j]
        parts, negatives = prepared.parts, prepared.negatives
        # a skipped negative: the image's first part stands in for it, guided at scale 1
        uncond_of = [outputs[parts[i][0][0]] if skip else outputs[negatives[i]] for i in range(len(parts))]
        scale = 1.0 if skip else self.cfg_scale
        self.last_uncond = torch.stack(uncond_of)
        guided = []
        for i, image_parts in enumerate(parts):
            uncond = uncond_of[i]
            result = uncond.clone()
            for k, weight in image_parts:
                result += (outputs[k] - uncond) * (weight * scale)
            guided.append(result)
        return torch.stack(guided)

    # -- the sampler-facing views --------------------------------------------------------------

    def __call__(self, x: Any, sigma: float) -> Any:
        """The clean estimate at noise level sigma (k-diffusion samplers)."""
        import torch

        if self.on_level is not None:
            self.on_level(float(sigma))
        self._level = float(sigma)

        s = torch.tensor(sigma, dtype=torch.float32, device=x.device)
        c_in = 1 / (s**2 + 1.0) ** 0.5
        t = self.schedule.sigma_to_t(torch.tensor([sigma], dtype=torch.float32)).expand(x.shape[0])
        if self.lcm:
            scaled_t = t[0].float().to(x.device) * 10.0
            c_skip, c_out = 0.25 / (scaled_t**2 + 0.25), scaled_t / (scaled_t**2 + 0.25) ** 0.5

            def convert(out: Any, rows: Any) -> Any:
                x_rows = x.index_select(0, rows)
                return c_out * (x_rows + out * -s) + c_skip * x_rows

        elif self.prediction == "v_prediction":
            c_skip, c_out = 1.0 / (s**2 + 1.0), -s * 1.0 / (s**2 + 1.0) ** 0.5

            def convert(out: Any, rows: Any) -> Any:
                return out * c_out + x.index_select(0, rows) * c_skip

        else:

            def convert(out: Any, rows: Any) -> Any:
                return x.index_select(0, rows) + out * -s

        return self.guided(x * c_in, t, convert)

    def eps(self, x: Any, timestep: float) -> Any:
        """The predicted noise at a training timestep (DDIM, PLMS; UniPC's fractional ones),
        guided on eps; v-prediction is converted with the alphas of the whole step below, as
        A1111's timestep denoiser indexes them."""
        import torch

        if self.on_level is not None:
            self.on_level(float(timestep))
        self._level = float(timestep)

        if self.prediction == "v_prediction":
            a = self.schedule.alphas_cumprod[int(timestep)].to(x.device)

            def convert(out: Any, rows: Any) -> Any:
                return a.sqrt() * out + (1 - a).sqrt() * x.index_select(0, rows)

            return self.guided(x, torch.full((x.shape[0],), float(timestep)), convert)
        return self.guided(x, torch.full((x.shape[0],), float(timestep)))
