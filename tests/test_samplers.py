"""DPM++ 2S a: tihub's scheduler against an independent k-diffusion-style loop on an exact denoiser."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tihub.engine.samplers import calls_per_step, make_scheduler  # noqa: E402

SD_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}
MU, S = 0.3, 0.5  # the "data": every latent value ~ N(MU, S^2)
SHAPE = (2, 4, 3, 3)


def clean_estimate(x, sigma):
    """The exact denoiser for Gaussian data: E[x0 | x0 + sigma * noise = x]."""
    return (x * S**2 + MU * sigma**2) / (S**2 + sigma**2)


def model_output(x, sigma, prediction_type):
    """What a perfect network outputs at noise level sigma (diffusers' conventions)."""
    d = clean_estimate(x, sigma)
    if prediction_type == "epsilon":
        return (x - d) / sigma
    return (x / (sigma**2 + 1) - d) * math.sqrt(sigma**2 + 1) / sigma


def run_scheduler(scheduler, x, steps, seed, prediction_type):
    """Drive a scheduler the way diffusers' pipelines do: one model call per timestep."""
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    calls = 0
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(x, t)
        # the noise level the model is asked about, read from the public input scaling
        sigma = math.sqrt(float((x.norm() / scaled.norm()) ** 2) - 1)
        x = scheduler.step(model_output(x, sigma, prediction_type), t, x, generator=gen).prev_sample
        calls += 1
    return x, calls


def reference(sigmas, x, seed):
    """k-diffusion's DPM++(2S) ancestral loop, eta 1, written out from its published equations."""
    gen = torch.Generator().manual_seed(seed)
    sigmas = [float(s) for s in sigmas]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = clean_estimate(x, s)
        up = min(s_next, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        down = math.sqrt(s_next**2 - up**2)
        if down == 0:
            x = x + (x - d) / s * (down - s)  # Euler
        else:
            t, t_next = -math.log(s), -math.log(down)
            h = t_next - t
            mid = math.exp(-(t + h / 2))
            x2 = (mid / s) * x - math.expm1(-h / 2) * d
            d2 = clean_estimate(x2, mid)
            x = (down / s) * x - math.expm1(-h) * d2
        if s_next > 0:
            x = x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * up
    return x


@pytest.mark.parametrize("name", ["DPM++ 2S a", "DPM++ 2S a Karras"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_dpmpp_2s_ancestral_matches_the_reference_loop(name, prediction_type, steps):
    config = dict(SD_CONFIG, prediction_type=prediction_type)
    sched = make_scheduler(name, config)
    assert calls_per_step(sched) == 2
    # the same sigma schedule, from a first-order scheduler of the same family
    euler = diffusers.EulerDiscreteScheduler.from_config(dict(config, use_karras_sigmas=name.endswith("Karras")))
    euler.set_timesteps(steps)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * float(euler.sigmas[0])
    got, calls = run_scheduler(sched, x0.clone(), steps, seed=5, prediction_type=prediction_type)
    want = reference(euler.sigmas, x0.clone(), seed=5)
    assert calls == 2 * steps - 1  # two model calls per step, one for the last (Euler) step
    # (the sigma read back from the float32 input scaling limits agreement to about 1e-3)
    assert torch.allclose(got, want, rtol=0, atol=2e-3), float((got - want).abs().max())
    # a perfect denoiser lands near the data distribution
    assert abs(float(got.mean()) - MU) < 0.5


def test_dpmpp_2s_ancestral_is_stochastic_and_seeded():
    sched = make_scheduler("DPM++ 2S a", SD_CONFIG)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.6
    a, _ = run_scheduler(sched, x0.clone(), 6, seed=1, prediction_type="epsilon")
    b, _ = run_scheduler(sched, x0.clone(), 6, seed=1, prediction_type="epsilon")
    c, _ = run_scheduler(sched, x0.clone(), 6, seed=2, prediction_type="epsilon")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)  # ancestral: the noise seed changes the result


def test_calls_per_step_marks_second_order_samplers():
    second = {"Heun", "DPM2", "DPM2 a", "DPM++ 2S a"}
    for name in ["Euler a", "Euler", "Heun", "DPM2", "DPM2 a", "DPM++ 2M Karras", "DPM++ 2S a", "DDIM", "UniPC"]:
        assert calls_per_step(make_scheduler(name, SD_CONFIG)) == (2 if name in second else 1), name


def test_schedule_types_set_the_matching_diffusers_options():
    from tihub.engine.samplers import SCHEDULE_TYPES, canonical_schedule
    from tihub.errors import ConfigError

    euler = {kind: make_scheduler("Euler", SD_CONFIG, kind) for kind in SCHEDULE_TYPES}
    assert euler["Karras"].config.use_karras_sigmas and euler["Exponential"].config.use_exponential_sigmas and euler["Beta"].config.use_beta_sigmas
    assert euler["SGM Uniform"].config.timestep_spacing == "trailing" and euler["Automatic"].config.timestep_spacing == "linspace"
    for s in euler.values():
        s.set_timesteps(10)
    # exponential sigmas are evenly spaced in log sigma; the default ones are not
    logs = euler["Exponential"].sigmas[:-1].double().log()
    steps = logs[:-1] - logs[1:]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-4)
    assert not torch.allclose(euler["Automatic"].sigmas, euler["Exponential"].sigmas)
    assert canonical_schedule(None) == "Automatic" and canonical_schedule("sgm uniform") == "SGM Uniform"
    with pytest.raises(ConfigError, match="Unknown schedule type 'Align Your Steps'; choose one of: Automatic, Uniform, Karras"):
        canonical_schedule("Align Your Steps")
    with pytest.raises(ConfigError, match="Schedule type Exponential does not apply to the DDIM sampler"):
        make_scheduler("DDIM", SD_CONFIG, "Exponential")
    with pytest.raises(ConfigError, match="Sampler 'DPM\\+\\+ 2M Karras' already uses the Karras schedule; pass 'DPM\\+\\+ 2M' with schedule type Beta"):
        make_scheduler("DPM++ 2M Karras", SD_CONFIG, "Beta")
    # the model's own option never leaks into another schedule type
    assert not make_scheduler("Euler", dict(SD_CONFIG, use_karras_sigmas=True), "Exponential").config.use_karras_sigmas


def test_infotext_schedule_types_read_as_a1111_means_them():
    from tihub.engine.samplers import from_infotext, infotext_schedule

    # no key: older A1111 (or tihub), the sampler's own schedule
    assert from_infotext("DPM++ 2M", None) == ("DPM++ 2M", "Automatic", None)
    assert from_infotext("DPM++ 2M Karras", None) == ("DPM++ 2M Karras", "Automatic", None)
    # A1111 1.9+: "Automatic" is the sampler's A1111 default
    assert from_infotext("DPM++ 2M", "Automatic") == ("DPM++ 2M Karras", "Automatic", None)
    assert from_infotext("DPM++ 2M SDE", "Automatic") == ("DPM++ 2M SDE", "Exponential", None)
    assert from_infotext("Euler", "Automatic") == ("Euler", "Automatic", None)
    assert from_infotext("dpm++ 2m", "Karras") == ("DPM++ 2M Karras", "Automatic", None)
    assert from_infotext("DPM++ 2M", "Uniform") == ("DPM++ 2M", "Uniform", None)
    assert from_infotext("Euler", "SGM Uniform") == ("Euler", "SGM Uniform", None)
    name, kind, warning = from_infotext("Euler a", "Karras")
    assert (name, kind) == ("Euler a", "Automatic") and warning and "'Karras' has no equivalent for tihub's Euler a sampler" in warning
    name, kind, warning = from_infotext("DPM++ 2M", "Align Your Steps")
    assert (name, kind) == ("DPM++ 2M", "Automatic") and warning
    # what tihub writes reads back to the same schedule, in tihub and in A1111 1.9+
    for sampler in ("DPM++ 2M", "DPM++ 2M Karras", "Euler", "DPM++ 2M SDE"):
        for kind in ("Automatic", "Exponential"):
            if sampler.endswith("Karras") and kind != "Automatic":
                continue
            written = infotext_schedule(sampler, kind)
            back_name, back_kind, _ = from_infotext(sampler, written)
            a = make_scheduler(sampler, SD_CONFIG, kind)
            b = make_scheduler(back_name, SD_CONFIG, back_kind)
            a.set_timesteps(8)
            b.set_timesteps(8)
            assert torch.equal(a.sigmas, b.sigmas), (sampler, kind, written)
