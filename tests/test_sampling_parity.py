"""Parity with A1111: tihub's sampling against k-diffusion driven as A1111 drives it (kdiffusion_ref).

On the tiny SD1 model in fp32, 4 steps at 64px: for every A1111 sampler x schedule type the sigmas
are equal and the final latents within 1e-4 relative L2 (SDE samplers with A1111's Brownian
seeding; UniPC against the update rules of test_sampling_unipc); for every sampler and model source (diffusers folders with PNDM and Euler configs, a
single file whose config says "leading" spacing, an in-memory pipeline) the same through `Engine`.
The full matrices (test_sampling_parity_matrix.py, a file of their own so `make test` runs them
beside this one) are marked slow; a handful runs always.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from kdiffusion_ref import load_kdiffusion, reference_latents, reference_sigmas, reference_timesteps, rel_l2, wrapper, CompVisModel  # noqa: E402

from tihub.engine.conditioning import Cond  # noqa: E402
from tihub.engine.samplers import SAMPLERS  # noqa: E402
from tihub.engine.sampling import Randomness, make_plan, model_schedule, run  # noqa: E402
from tihub.engine.sampling.denoiser import Denoiser, StepConds  # noqa: E402
from tihub.engine.sampling.rng import ImageNoise  # noqa: E402
from tihub.engine.sampling.schedule import SCHEDULE_TYPES, ModelSchedule  # noqa: E402

STEPS = 4
TOLERANCE = 1e-4
SCHEDULED = [n for n, s in SAMPLERS.items() if not s.timesteps and s.algorithm not in ("dpm_fast", "dpm_adaptive")]
MATRIX = [(n, k) for n in SCHEDULED for k in SCHEDULE_TYPES] + [(n, "Automatic") for n in SAMPLERS if n not in SCHEDULED]
pytestmark = [pytest.mark.filterwarnings("ignore:Should have:UserWarning"), pytest.mark.filterwarnings("ignore:To copy construct:UserWarning")]  # torchsde and k-diffusion, in the reference
ALWAYS = [("Euler a", "Automatic"), ("DPM++ 2M", "Karras"), ("DPM++ SDE", "Automatic"), ("DPM++ 3M SDE", "Beta"), ("DPM2 a", "SGM Uniform"), ("DDIM", "Automatic"), ("DDIM CFG++", "Automatic"), ("PLMS", "Automatic"), ("UniPC", "Automatic")]


@pytest.fixture(scope="module")
def tiny():
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 77, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    return pipe, cond, uncond


def _tihub(pipe, sampler, schedule, cond, uncond, seeds, prediction="epsilon", ensd=0):
    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    plan = make_plan(sampler, schedule, STEPS, base, "sd1", seeds, Randomness(rng="cpu", ensd=ensd))
    conds = StepConds([[(Cond(cond[i]), 1.0)] for i in range(len(seeds))], [Cond(uncond[i]) for i in range(len(seeds))])
    den = Denoiser(pipe.unet, model_schedule(sampler, base), prediction, lambda _i: conds, 7.0, lcm=SAMPLERS[sampler].algorithm == "lcm")
    with torch.no_grad():
        return plan, run(plan, den, ImageNoise("cpu", seeds, (4, 8, 8), torch.device("cpu"), ensd))


def _reference_unipc(unet, cond, uncond, seeds):
    """UniPC has no k-diffusion counterpart: the update rules of test_sampling_unipc, per image."""
    from test_sampling_unipc import reference_unipc

    return torch.cat([reference_unipc(unet, cond[i : i + 1], uncond[i : i + 1], s, STEPS, "bh1", "time_uniform") for i, s in enumerate(seeds)])


def _check(pipe, sampler, schedule, cond, uncond, seeds):
    plan, got = _tihub(pipe, sampler, schedule, cond[: len(seeds)], uncond[: len(seeds)], seeds)
    if sampler == "UniPC":
        want = _reference_unipc(pipe.unet, cond, uncond, seeds)
    elif SAMPLERS[sampler].timesteps:
        want = reference_timesteps(pipe.unet, sampler, STEPS, cond[: len(seeds)], uncond[: len(seeds)], seeds)
    else:
        sigmas, want = reference_latents(pipe.unet, sampler, schedule, STEPS, cond[: len(seeds)], uncond[: len(seeds)], seeds)
        assert torch.allclose(torch.tensor(plan.sigmas), sigmas.float(), rtol=1e-6, atol=0), (plan.sigmas, sigmas.tolist())
    err = rel_l2(got, want)
    _log(f"{sampler}\t{schedule}\t{err:.3e}")
    assert err < TOLERANCE, f"{sampler} / {schedule}: relative L2 {err:.2e}"
    return err


def _log(line):
    """TIHUB_PARITY_LOG=FILE collects every combination's error (for the README's numbers)."""
    if os.environ.get("TIHUB_PARITY_LOG"):
        with open(os.environ["TIHUB_PARITY_LOG"], "a") as f:
            f.write(line + "\n")


@pytest.mark.parametrize(("sampler", "schedule"), ALWAYS)
def test_a1111_parity_core(tiny, sampler, schedule):
    pipe, cond, uncond = tiny
    _check(pipe, sampler, schedule, cond, uncond, [7, 8])


def test_matrix_covers_every_a1111_name():
    assert len(SCHEDULE_TYPES) == 12 and len(MATRIX) == len(SCHEDULED) * 12 + 6
    assert {"DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Restart", "DPM adaptive", "DPM fast", "LCM", "PLMS", "UniPC"} <= set(SAMPLERS)


def test_v_prediction_parity(tiny):
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline(prediction_type="v_prediction")
    _, cond, uncond = tiny
    for sampler in ("Euler", "DPM++ 2M SDE"):
        plan, got = _tihub(pipe, sampler, "Automatic", cond[:1], uncond[:1], [5], prediction="v_prediction")
        _, ke = load_kdiffusion()
        assert isinstance(wrapper(CompVisModel(pipe.unet), "v_prediction", sampler), ke.CompVisVDenoiser)
        _, want = reference_latents(pipe.unet, sampler, "Automatic", STEPS, cond[:1], uncond[:1], [5], prediction="v_prediction")
        assert rel_l2(got, want) < TOLERANCE
    got = _tihub(pipe, "DDIM", "Automatic", cond[:1], uncond[:1], [5], prediction="v_prediction")[1]
    assert rel_l2(got, reference_timesteps(pipe.unet, "DDIM", STEPS, cond[:1], uncond[:1], [5], prediction="v_prediction")) < TOLERANCE


def test_ensd_reseeds_the_ancestral_noise_as_a1111(tiny):
    pipe, cond, uncond = tiny
    _, plain = _tihub(pipe, "Euler a", "Automatic", cond[:1], uncond[:1], [9])
    _, delta = _tihub(pipe, "Euler a", "Automatic", cond[:1], uncond[:1], [9], ensd=31337)
    _, want = reference_latents(pipe.unet, "Euler a", "Automatic", STEPS, cond[:1], uncond[:1], [9], ensd=31337)
    assert rel_l2(delta, want) < TOLERANCE and rel_l2(plain, delta) > 1e-3


# -- model sources ------------------------------------------------------------------------------


def _with_scheduler(src, dst, config):
    shutil.copytree(src, dst)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def sources(tiny_sd1_dir, tmp_path_factory):
    from engine_helpers import to_ldm
    from safetensors.numpy import save_file

    from tihub.engine.models import from_pipeline, load_model
    from tihub.engine.tiny import tiny_sd1_pipeline

    tmp = tmp_path_factory.mktemp("sources")
    betas = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    pndm = _with_scheduler(tiny_sd1_dir, tmp / "pndm", {"_class_name": "PNDMScheduler", **betas, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1})
    leading = _with_scheduler(tiny_sd1_dir, tmp / "leading", {"_class_name": "EulerDiscreteScheduler", **betas, "timestep_spacing": "leading", "steps_offset": 1})
    folder = load_model(tiny_sd1_dir, device="cpu", compute_hash=False)
    single = tmp / "tiny-single.safetensors"
    save_file(to_ldm(folder.pipe), str(single))
    return {
        "pndm-folder": load_model(pndm, device="cpu", compute_hash=False),
        "euler-folder": folder,
        "single-file": load_model(single, device="cpu", config=leading, compute_hash=False),
        "in-memory": from_pipeline(tiny_sd1_pipeline()),
    }


_REFERENCE: dict[str, torch.Tensor] = {}


def _source_check(sources, name, sampler):
    from tihub.engine.generate import Engine, Settings

    model = sources[name]
    engine = Engine(model)
    settings = Settings(steps=STEPS, sampler=sampler, width=64, height=64, rng="cpu")
    with torch.no_grad():
        got, _ = engine.sample(["a cat"], [""], [11], settings)
    if sampler not in _REFERENCE:
        enc = engine.encoder()
        cond, uncond = enc.encode("a cat")[0].hidden[None], enc.encode("")[0].hidden[None]
        if sampler == "UniPC":
            _REFERENCE[sampler] = _reference_unipc(model.pipe.unet, cond, uncond, [11])
        elif SAMPLERS[sampler].timesteps:
            _REFERENCE[sampler] = reference_timesteps(model.pipe.unet, sampler, STEPS, cond, uncond, [11])
        else:
            sigmas, _REFERENCE[sampler] = reference_latents(model.pipe.unet, sampler, "Automatic", STEPS, cond, uncond, [11])
            assert torch.allclose(torch.tensor(engine.plan.sigmas), sigmas.float(), rtol=1e-6, atol=0)
    err = rel_l2(got, _REFERENCE[sampler])
    _log(f"{sampler}\t{name}\t{err:.3e}")
    assert err < TOLERANCE, f"{name} / {sampler}: relative L2 {err:.2e}"


@pytest.mark.parametrize("name", ["pndm-folder", "euler-folder", "single-file", "in-memory"])
def test_every_model_source_samples_as_a1111(sources, name):
    # the same sigmas whatever the scheduler config says (PNDM, Euler "leading" for single files)
    schedules = {n: ModelSchedule.from_config(dict(m.pipe.scheduler.config)) for n, m in sources.items()}
    for other in schedules.values():
        assert torch.equal(schedules[name].sigmas, other.sigmas)
    _, kwrap = load_kdiffusion()
    assert torch.equal(schedules[name].sigmas, kwrap.CompVisDenoiser(CompVisModel(None)).sigmas)
    for kind in SCHEDULE_TYPES:
        ours = torch.tensor(make_plan("Euler", kind, 7, schedules[name], "sd1", [1], Randomness()).sigmas)
        want = reference_sigmas(kind, 7, kwrap.CompVisDenoiser(CompVisModel(None)))
        assert torch.allclose(ours, want.float(), rtol=1e-6, atol=0), kind
    _source_check(sources, name, "DPM++ 2M")


# -- hires fix -------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "mode"), [("Euler a", "Latent"), ("DPM++ 2M SDE", "Latent (bicubic antialiased)"), ("DPM adaptive", "Latent (nearest)")])
def test_hires_fix_latent_modes_match_a1111(sources, sampler, mode):
    from tihub.engine.generate import Engine, Settings
    from tihub.engine.sampling.hires import LATENT_MODES, Hires

    model = sources["in-memory"]
    engine = Engine(model)
    hires = Hires(scale=1.5, steps=3, denoising=0.6, upscaler=mode)
    settings = Settings(steps=STEPS, sampler=sampler, width=64, height=64, rng="cpu", hires=hires)
    with torch.no_grad():
        got, _ = engine.sample(["a cat"], [""], [21], settings)
    assert got.shape == (1, 4, 12, 12) and engine.plan.hires["size"] == "96x96"
    enc = engine.encoder()
    cond, uncond = enc.encode("a cat")[0].hidden[None], enc.encode("")[0].hidden[None]
    _, first = reference_latents(model.pipe.unet, sampler, "Automatic", STEPS, cond, uncond, [21])
    how, antialias = LATENT_MODES[mode]
    init = torch.nn.functional.interpolate(first, size=(12, 12), mode=how, antialias=antialias)
    sigmas, want = reference_latents(model.pipe.unet, sampler, "Automatic", 3, cond, uncond, [21], shape=(4, 12, 12), init=init, denoising=0.6)
    assert torch.allclose(torch.tensor(engine.plan.hires["plan"]["sigmas"]), sigmas.float(), rtol=1e-5, atol=1e-6)
    err = rel_l2(got, want)
    _log(f"hires {sampler}\t{mode}\t{err:.3e}")
    assert err < TOLERANCE


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_sdxl_parity_with_size_conditioning(sampler):
    from tihub.engine.generate import Engine, Settings
    from tihub.engine.models import from_pipeline
    from tihub.engine.tiny import tiny_sdxl_pipeline

    engine = Engine(from_pipeline(tiny_sdxl_pipeline()))
    settings = Settings(steps=STEPS, sampler=sampler, width=64, height=64, rng="cpu")
    with torch.no_grad():
        got, _ = engine.sample(["a cat"], ["ugly"], [31], settings)
    enc = engine.encoder()
    c, u = enc.encode("a cat")[0], enc.encode("ugly")[0]
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])  # original size, crop, target size
    _, want = reference_latents(engine.model.pipe.unet, sampler, "Automatic", STEPS, (c.hidden[None], c.pooled[None]), (u.hidden[None], u.pooled[None]), [31], time_ids=time_ids)
    assert rel_l2(got, want) < TOLERANCE


# -- A1111's sigma min / max / rho settings ------------------------------------------------------

OVERRIDE_LO, OVERRIDE_HI, OVERRIDE_RHO = 0.1, 10.0, 5.0


def _overridden_reference_sigmas(kind, n, wrap, family="sd1", rho=0.0):
    """A1111's get_sigmas with sigma min 0.1 / max 10 (and rho) handed to the type's function."""
    import kdiffusion_ref

    ks, _ = load_kdiffusion()
    lo, hi = OVERRIDE_LO, OVERRIDE_HI
    if kind == "Karras":
        return ks.get_sigmas_karras(n, lo, hi, rho=rho or 7.0)
    if kind == "Exponential":
        return ks.get_sigmas_exponential(n, lo, hi)
    if kind == "Polyexponential":
        return ks.get_sigmas_polyexponential(n, lo, hi, rho=rho or 1.0)
    if kind in ("SGM Uniform", "Normal"):
        start, end = wrap.sigma_to_t(torch.tensor(hi)), wrap.sigma_to_t(torch.tensor(lo))
        ts = torch.linspace(start, end, n + 1)[:-1] if kind == "SGM Uniform" else torch.linspace(start, end, n)
        return torch.FloatTensor([wrap.t_to_sigma(t) for t in ts] + [0.0])
    if kind == "KL Optimal":
        k = torch.arange(n + 1)
        return torch.tan(k / n * torch.arctan(torch.tensor(lo)) + (1.0 - k / n) * torch.arctan(torch.tensor(hi)))
    if kind == "Beta":
        from scipy import stats

        fr = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([lo + x * (hi - lo) for x in fr] + [0.0])
    return kdiffusion_ref._original_reference_sigmas(kind, n, wrap, family)  # Uniform, Simple, DDIM, AYS: no ends


@pytest.mark.parametrize("kind", list(SCHEDULE_TYPES))
def test_sigma_min_max_rho_as_a1111(tiny, monkeypatch, kind):
    import kdiffusion_ref

    pipe, cond, uncond = tiny
    rho = OVERRIDE_RHO if kind in ("Karras", "Polyexponential") else 0.0
    sampler = "DPM++ 2M"  # its Automatic is Karras, so A1111 passes the settings on there too
    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    r = Randomness(rng="cpu", sigma_min=OVERRIDE_LO, sigma_max=OVERRIDE_HI, rho=rho)
    plan = make_plan(sampler, kind, STEPS, base, "sd1", [4], r)
    conds = StepConds([[(Cond(cond[0]), 1.0)]], [Cond(uncond[0])])
    den = Denoiser(pipe.unet, base, "epsilon", lambda _i: conds, 7.0)
    with torch.no_grad():
        got = run(plan, den, ImageNoise("cpu", [4], (4, 8, 8), torch.device("cpu")))
    monkeypatch.setattr(kdiffusion_ref, "_original_reference_sigmas", kdiffusion_ref.reference_sigmas, raising=False)
    monkeypatch.setattr(kdiffusion_ref, "reference_sigmas", lambda k, n, wrap, family="sd1": _overridden_reference_sigmas(k, n, wrap, family, rho))
    sigmas, want = kdiffusion_ref.reference_latents(pipe.unet, sampler, kind, STEPS, cond[:1], uncond[:1], [4])
    assert torch.allclose(torch.tensor(plan.sigmas), sigmas.float(), rtol=1e-6, atol=0), (plan.sigmas, sigmas.tolist())
    err = rel_l2(got, want)
    _log(f"{sampler} overrides\t{kind}\t{err:.3e}")
    assert err < TOLERANCE
    # written as A1111 writes them: min / max for every type with a function, rho where it applies
    info = plan.infotext()
    assert (info["Schedule min sigma"], info["Schedule max sigma"]) == ("0.1", "10")
    assert info.get("Schedule rho") == ("5" if rho else None)
    plain = make_plan(sampler, kind, STEPS, base, "sd1", [4], Randomness()).sigmas
    assert (plan.sigmas != plain) == (kind not in ("Uniform", "Simple", "DDIM", "Align Your Steps"))


def test_sigma_settings_are_refused_where_a1111_ignores_them():
    from tihub.errors import ConfigError

    base = ModelSchedule.from_config({})
    for sampler, kind, r, message in (
        ("Euler a", "Automatic", Randomness(sigma_min=0.1), "Sampler Euler a with schedule type Automatic runs the model's own sigmas"),
        ("DDIM", "Automatic", Randomness(sigma_max=10), "Sampler DDIM makes no sigma schedule"),
        ("DPM fast", "Automatic", Randomness(sigma_max=10), "Sampler DPM fast makes no sigma schedule"),
        ("Euler", "Exponential", Randomness(rho=3), "Schedule type Exponential takes no rho"),
        ("Euler", "Karras", Randomness(sigma_min=2, sigma_max=1), "--sigma-min 2 is not below --sigma-max 1; swap them"),
        ("Euler", "Karras", Randomness(rho=-1), "--rho -1 is out of range"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_plan(sampler, kind, STEPS, base, "sd1", [1], r)
    # the model's own value, or rho at the type's own, change nothing and are not written
    m = ModelSchedule.from_config({})
    same = make_plan("Euler", "Karras", STEPS, m, "sd1", [1], Randomness(sigma_max=m.sigma_max, rho=7.0))
    assert same.sigmas == make_plan("Euler", "Karras", STEPS, m, "sd1", [1], Randomness()).sigmas
    assert not {"Schedule max sigma", "Schedule rho"} & set(same.infotext())
