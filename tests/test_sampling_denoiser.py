"""The guided denoiser: AND parts with weights, conditionings of different lengths, A1111's CFG."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tihub.engine.conditioning import Cond  # noqa: E402
from tihub.engine.sampling.denoiser import Denoiser, StepConds  # noqa: E402
from tihub.engine.sampling.schedule import ModelSchedule  # noqa: E402


def test_parts_weights_and_mixed_lengths_are_guided_as_a1111():
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    unet = pipe.unet
    ms = ModelSchedule.from_config(dict(pipe.scheduler.config))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(77, 32, generator=g), torch.randn(154, 32, generator=g)  # one and two chunks
    neg0, neg1 = torch.randn(77, 32, generator=g), torch.randn(154, 32, generator=g)
    conds = StepConds([[(Cond(a), 0.7), (Cond(b), 0.3)], [(Cond(b), 1.0)]], [Cond(neg0), Cond(neg1)])
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, args, kw: calls.append(kw["encoder_hidden_states"].shape), with_kwargs=True)
    den = Denoiser(unet, ms, "epsilon", lambda _i: conds, 5.0)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3.0
    with torch.no_grad():
        got = den(x, 3.0)
    handle.remove()
    assert sorted(s[1] for s in calls) == [77, 154]  # one forward per token length

    def denoised(xi, hidden):
        sigma = torch.tensor([3.0])
        eps = unet(xi[None] / (sigma**2 + 1) ** 0.5, ms.sigma_to_t(sigma), encoder_hidden_states=hidden[None], return_dict=False)[0][0]
        return xi - 3.0 * eps

    with torch.no_grad():
        u0, u1 = denoised(x[0], neg0), denoised(x[1], neg1)
        want0 = u0 + (denoised(x[0], a) - u0) * (0.7 * 5.0) + (denoised(x[0], b) - u0) * (0.3 * 5.0)
        want1 = u1 + (denoised(x[1], b) - u1) * 5.0
    assert torch.allclose(got[0], want0, rtol=1e-4, atol=1e-4) and torch.allclose(got[1], want1, rtol=1e-4, atol=1e-4)
    assert den.calls == 1
