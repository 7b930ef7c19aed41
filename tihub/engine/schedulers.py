"""Samplers diffusers lacks, written as diffusers schedulers so the stock pipelines drive them.

`DPMPP2SAncestralScheduler` is A1111's "DPM++ 2S a" (k-diffusion's `sample_dpmpp_2s_ancestral`,
eta 1): per step, an ancestral split of the next sigma into a deterministic part `sigma_down` and a
noise part `sigma_up`, then one DPM-Solver++(2S) step from sigma to sigma_down through the
log-space midpoint `sqrt(sigma * sigma_down)`, then fresh noise times `sigma_up`. The last step
(to sigma 0) is a plain Euler step, as in k-diffusion.

The timestep sequence (sigma, midpoint, next sigma, ...) is exactly DPM2 a's, so the class reuses
diffusers' KDPM2 ancestral schedule (including Karras sigmas and v-prediction) and replaces only
the update rule. Each step costs two model calls; `order = 2` tells the pipeline so.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import KDPM2AncestralDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class DPMPP2SAncestralScheduler(KDPM2AncestralDiscreteScheduler):  # type: ignore[misc]
    """DPM-Solver++(2S) with ancestral noise; see the module docstring."""

    def set_timesteps(self, num_inference_steps: int, device: Any = None, num_train_timesteps: int | None = None) -> None:  # type: ignore[override]
        super().set_timesteps(num_inference_steps, device, num_train_timesteps)
        # step() reads these as Python floats: keep them on the CPU so reading one never waits
        # for the GPU (the parent leaves all but `sigmas` on the pipeline's device)
        self.sigmas_interpol = self.sigmas_interpol.cpu()
        self.sigmas_up = self.sigmas_up.cpu()
        self.sigmas_down = self.sigmas_down.cpu()

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model's estimate of the clean sample at noise level `sigma`."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        raise ValueError(f"DPM++ 2S a supports epsilon and v_prediction models, not '{kind}'.")

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        # the schedule arrays repeat each step's values, so the step's own index is this call's
        # index in the first call and the previous one in the second
        k = self.step_index if first else self.step_index - 1
        # the schedule lives on the CPU: plain floats, no device copies per step
        sigma = float(self.sigmas[k])
        sigma_mid = float(self.sigmas_interpol[k])
        sigma_down = float(self.sigmas_down[k])
        sigma_up = float(self.sigmas_up[k])

        if first:
            # 1. the model was called at sigma: its clean estimate
            denoised = self._denoised(model_output, sample, sigma)
            if sigma_mid == 0:
                # last step: Euler to sigma 0 lands exactly on the clean estimate; no noise
                prev = denoised
            else:
                # 2. half a DPM-Solver++ step to the midpoint; keep x for the full step
                self.sample = sample
                prev = (sigma_mid / sigma) * sample + (1 - sigma_mid / sigma) * denoised
        else:
            # 3. the model was called at the midpoint: full step from the kept x to sigma_down
            denoised = self._denoised(model_output, sample, sigma_mid)
            x = self.sample
            self.sample = None
            prev = (sigma_down / sigma) * x + (1 - sigma_down / sigma) * denoised
            # 4. ancestral noise for the part of the next sigma the step did not cover
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
            prev = prev + noise * sigma_up

        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return SchedulerOutput(prev_sample=prev)
