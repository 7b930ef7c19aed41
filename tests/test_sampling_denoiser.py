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


# -- NGMS and Skip Early CFG: A1111's CFG denoiser skipping the negative -------------------------


def _a1111_cfg(unet, wrap, parts, neg, cfg, total, s_min_uncond=0.0, all_steps=False, skip_early=0.0):
    """A1111's CFGDenoiser.forward for one image, written out: a call counter from 0, Skip Early
    CFG first, then NGMS on odd calls (every call with "all steps") below the level; a skipped
    call runs the parts only, the first part standing in for the negative, at scale 1."""
    state = {"step": 0, "skipped": []}

    def model(x, sigma):
        step = state["step"]
        skip = (skip_early != 0 and step / total <= skip_early) or bool((step % 2 or all_steps) and s_min_uncond > 0 and sigma[0] < s_min_uncond)
        conds = [c for c, _ in parts] + ([] if skip else [neg])
        out = wrap(torch.cat([x] * len(conds)), torch.cat([sigma] * len(conds)), cond=torch.stack(conds))
        uncond = out[0:1] if skip else out[-1:]
        denoised = uncond.clone()
        for k, (_, w) in enumerate(parts):
            denoised += (out[k : k + 1] - uncond) * (w * (1.0 if skip else cfg))
        if skip:
            state["skipped"].append(step)
        state["step"] += 1
        return denoised

    return model, state


def _run_tihub(pipe, sampler, steps, parts, neg, seed, **options):
    from tihub.engine.sampling import Randomness, make_plan, run
    from tihub.engine.sampling.rng import ImageNoise

    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    plan = make_plan(sampler, "Automatic", steps, base, "sd1", [seed], Randomness(rng="cpu", **options))
    conds = StepConds([[(Cond(c), w) for c, w in parts]], [Cond(neg)])
    den = Denoiser(pipe.unet, base, "epsilon", lambda _i: conds, 7.0)
    with torch.no_grad():
        return plan, den, run(plan, den, ImageNoise("cpu", [seed], (4, 8, 8), torch.device("cpu")))


@pytest.mark.parametrize(("sampler", "options"), [
    ("Euler", {"s_min_uncond": 2.0}),
    ("Euler", {"s_min_uncond": 2.0, "s_min_uncond_all": True}),
    ("Euler", {"skip_early_cond": 0.25}),
    ("Heun", {"skip_early_cond": 0.3}),  # second order: over twice the steps of calls
    ("Heun", {"s_min_uncond": 1.0, "skip_early_cond": 0.1}),
])
def test_ngms_and_skip_early_cfg_as_a1111(sampler, options):
    from kdiffusion_ref import CompVisModel, load_kdiffusion, reference_sigmas, rel_l2, wrapper

    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    g = torch.Generator().manual_seed(3)
    a, b, neg = (torch.randn(77, 32, generator=g) for _ in range(3))
    parts = [(a, 0.7), (b, 0.5)]  # AND parts: the first stands in for a skipped negative
    steps = 8
    plan, den, got = _run_tihub(pipe, sampler, steps, parts, neg, 5, **options)
    ks, _ = load_kdiffusion()
    wrap = wrapper(CompVisModel(pipe.unet), "epsilon", sampler)
    sigmas = reference_sigmas("Uniform", steps, wrap)
    model, state = _a1111_cfg(pipe.unet, wrap, parts, neg, 7.0, steps * (2 if sampler == "Heun" else 1),
                              options.get("s_min_uncond", 0.0), options.get("s_min_uncond_all", False), options.get("skip_early_cond", 0.0))
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5)) * sigmas[0]
    with torch.no_grad():
        want = getattr(ks, "sample_euler" if sampler == "Euler" else "sample_heun")(model, x, sigmas, disable=True)
    assert den.skipped == state["skipped"] and den.skipped  # the same calls skip the negative
    assert rel_l2(got, want) < 1e-4
    _, plain_den, plain = _run_tihub(pipe, sampler, steps, parts, neg, 5)
    assert plain_den.skipped == [] and rel_l2(plain, got) > 2e-5  # (the tiny model: small guidance effects)
    info = plan.infotext()
    assert info.get("NGMS") == (f"{options['s_min_uncond']:g}" if "s_min_uncond" in options else None)
    assert info.get("NGMS all steps") == (True if options.get("s_min_uncond_all") else None)
    assert info.get("Skip Early CFG") == (f"{options['skip_early_cond']:g}" if "skip_early_cond" in options else None)


def test_ngms_compares_the_timestep_on_the_timestep_samplers():
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    g = torch.Generator().manual_seed(4)
    a, neg = torch.randn(77, 32, generator=g), torch.randn(77, 32, generator=g)
    # DDIM, 4 steps, calls at timesteps 751, 501, 251: A1111 compares those with NGMS
    assert _run_tihub(pipe, "DDIM", 4, [(a, 1.0)], neg, 1, s_min_uncond=300.0)[1].skipped == []  # call 2 is even
    assert _run_tihub(pipe, "DDIM", 4, [(a, 1.0)], neg, 1, s_min_uncond=300.0, s_min_uncond_all=True)[1].skipped == [2]
    # UniPC, 4 steps: calls at 999, 749.25, 499.5, 249.75
    assert _run_tihub(pipe, "UniPC", 4, [(a, 1.0)], neg, 1, s_min_uncond=600.0)[1].skipped == [3]


def test_guidance_settings_out_of_range_are_refused():
    from tihub.engine.sampling import Randomness, make_plan
    from tihub.errors import ConfigError

    base = ModelSchedule.from_config({})
    with pytest.raises(ConfigError, match="NGMS -1 is out of range"):
        make_plan("Euler", "Automatic", 4, base, "sd1", [1], Randomness(s_min_uncond=-1))
    with pytest.raises(ConfigError, match="Skip Early CFG 1.5 is out of range; use a fraction of the steps from 0 \\(off\\) to 1"):
        make_plan("Euler", "Automatic", 4, base, "sd1", [1], Randomness(skip_early_cond=1.5))
