"""UniPC as A1111 runs it, against the update rules written out here from the UniPC paper.

There is no k-diffusion UniPC, so `reference_unipc` below writes A1111's UniPC independently: the
schedule's log alpha linear in t between (n + 1) / 1000 and the model's 0.5 log(alphas_cumprod),
half log-SNR lambda, the phi functions phi_1(z) = (e^z - 1) / z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z
in float64, the B(h) variants' order conditions (R rho = b with R_ij = r_j^(i-1),
b_i = z phi_{i+1}(z) i! / B(h), z = -h), vary_coeff's inverse matrix C_ij = r_i^j / (j+1)!, and
A1111's choices: rho = 1/2 for the order-2 predictor and the order-1 corrector, the last step
uncorrected, the lower-order final steps, no final denoising, 7 steps run as 8, eps guided with
the negative in one batch (v-prediction converted with the alphas of the whole step below).
Final latents on the tiny SD1 model in fp32 agree within 1e-4 relative L2.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tihub.engine.conditioning import Cond  # noqa: E402
from tihub.engine.sampling import Randomness, make_plan, run  # noqa: E402
from tihub.engine.sampling.denoiser import Denoiser, StepConds  # noqa: E402
from tihub.engine.sampling.rng import ImageNoise  # noqa: E402
from tihub.engine.sampling.schedule import ModelSchedule  # noqa: E402
from tihub.errors import ConfigError  # noqa: E402

TOLERANCE = 1e-4
VARIANTS = ["bh1", "bh2", "vary_coeff"]
SKIPS = ["time_uniform", "time_quadratic", "logSNR"]


# -- the reference ---------------------------------------------------------------------------------


def _alphas_cumprod() -> np.ndarray:
    """LDM's schedule: betas evenly spaced in sqrt between 0.00085 and 0.012, float32 products."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas).astype(np.float32)


AC = _alphas_cumprod()
T_NODES = np.arange(1, 1001, dtype=np.float64) / 1000.0
LOG_ALPHA = 0.5 * np.log(AC.astype(np.float64))


def _log_alpha(t: float) -> float:
    return float(np.interp(t, T_NODES, LOG_ALPHA))


def _lam(t: float) -> float:
    la = _log_alpha(t)
    return la - 0.5 * math.log(1.0 - math.exp(2 * la))


def _t_of_lam(lam: float) -> float:
    la = -0.5 * np.logaddexp(0.0, -2.0 * lam)
    return float(np.interp(la, LOG_ALPHA[::-1], T_NODES[::-1]))


def reference_grid(skip: str, steps: int, n: int | None = None, t_start: float = 1.0) -> list[float]:
    """A1111's UniPC times: n + 1 from 1 (img2img: t_start) to 1/1000, float32 as A1111 holds them."""
    if n is None:
        n = len(range(0, 1000, 1000 // steps))  # A1111 runs as many steps as its DDIM grid has entries
    if skip == "time_uniform":
        ts = np.linspace(t_start, 0.001, n + 1)
    elif skip == "time_quadratic":
        ts = np.linspace(t_start**0.5, 0.001**0.5, n + 1) ** 2
    else:
        ts = np.array([_t_of_lam(v) for v in np.linspace(_lam(t_start), _lam(0.001), n + 1)])
    return [float(np.float32(t)) for t in ts]


def _phi(z: float, k: int) -> float:
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def reference_unipc(unet, cond, uncond, seed: int, steps: int, variant: str, skip: str, order: int = 3, lower_final: bool = True,
                    cfg: float = 7.0, prediction: str = "epsilon", init: torch.Tensor | None = None, denoising: float = 0.0) -> torch.Tensor:
    """A1111's UniPC; with `init` its img2img (the hires pass, `steps` being the hires steps)."""
    ac = torch.tensor(AC)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed)).double()
    times = reference_grid(skip, steps)
    if init is not None:  # A1111: the grid of int(steps / denoising) steps; noised to its entry t_enc, run from the one below
        grid = [min(t + 1, 999) for t in range(0, 1000, 1000 // int(steps / min(denoising, 0.999)))]
        t_enc = steps - 1
        a = float(AC[grid[t_enc]])
        x = (init.double() * math.sqrt(a) + x * math.sqrt(1 - a))
        times = reference_grid(skip, steps, n=t_enc, t_start=float(np.float32(np.float32(grid[t_enc - 1]) / np.float32(1000) + np.float32(0.001))))
    n = len(times) - 1

    def x0(x: torch.Tensor, t: float) -> torch.Tensor:
        t_in = float((torch.tensor(t, dtype=torch.float32) - 0.001) * 1000.0)  # A1111's float32 UNet time
        xf = x.float()
        out = unet(torch.cat([xf, xf]), torch.full((2,), t_in), encoder_hidden_states=torch.cat([cond, uncond]), return_dict=False)[0]
        if prediction == "v_prediction":
            a = ac[int(t_in)]
            out = a.sqrt() * out + (1 - a).sqrt() * torch.cat([xf, xf])
        c, u = out.chunk(2)
        eps = (u + (c - u) * cfg).double()
        la = _log_alpha(t)
        return (x - math.sqrt(1 - math.exp(2 * la)) * eps) / math.exp(la)

    def update(x, hist, t, p, correct):
        (s, m_s), older = hist[-1], hist[-p:-1][::-1]  # the last point and the p - 1 before it
        h = _lam(t) - _lam(s)
        z = -h
        alpha_t, ratio = math.exp(_log_alpha(t)), math.sqrt(1 - math.exp(2 * _log_alpha(t))) / math.sqrt(1 - math.exp(2 * _log_alpha(s)))
        r = [(_lam(u) - _lam(s)) / h for u, _ in older]
        d = [(m - m_s) / ri for (_, m), ri in zip(older, r, strict=True)]
        base = ratio * x - alpha_t * math.expm1(z) * m_s
        if variant in ("bh1", "bh2"):
            b_h = z if variant == "bh1" else math.expm1(z)
            rks = r + [1.0]
            big_r = np.array([[rk ** i for rk in rks] for i in range(p)])
            b = np.array([z * _phi(z, i + 1) * math.factorial(i) / b_h for i in range(1, p + 1)])
            pred = base
            if d:
                rho_p = [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1])
                pred = base - alpha_t * b_h * sum(w * di for w, di in zip(rho_p, d, strict=True))
            if not correct:
                return pred, None
            rho_c = [0.5] if p == 1 else np.linalg.solve(big_r, b)
            m_t = x0(pred, t)
            return base - alpha_t * b_h * (sum(w * di for w, di in zip(rho_c[:-1], d, strict=True)) + rho_c[-1] * (m_t - m_s)), m_t
        # vary_coeff
        rks = r + [1.0]
        c_mat = np.array([[rk**j / math.factorial(j + 1) for j in range(p)] for rk in rks])
        hphi = [z * _phi(z, k + 1) for k in range(p + 1)]  # z phi_{k+1}(z)
        pred = base
        if d:
            a_p = np.linalg.inv(c_mat[:-1, :-1])
            pred = base - alpha_t * sum(hphi[k + 1] * sum(a_p[k][j] * d[j] for j in range(p - 1)) for k in range(p - 1))
        if not correct:
            return pred, None
        a_c = np.linalg.inv(c_mat)
        m_t = x0(pred, t)
        out = base - alpha_t * sum(hphi[k + 1] * sum(a_c[k][j] * d[j] for j in range(p - 1)) for k in range(p - 1)) if d else base
        return out - alpha_t * hphi[p] * a_c[max(p - 2, 0)][-1] * (m_t - m_s), m_t

    with torch.no_grad():
        hist = [(times[0], x0(x, times[0]))]
        for k in range(1, n + 1):
            p = min(k, order) if k < order else (min(order, n + 1 - k) if lower_final else order)
            x, m = update(x, hist, times[k], p, correct=k < n)
            hist = (hist + [(times[k], m)])[-order:]
    return x.float()


# -- tihub ------------------------------------------------------------------------------------------


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def tiny():
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    g = torch.Generator().manual_seed(0)
    return pipe, torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)


def tihub_unipc(pipe, cond, uncond, seed, steps, prediction="epsilon", **options):
    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    plan = make_plan("UniPC", "Automatic", steps, base, "sd1", [seed], Randomness(rng="cpu", **options))
    conds = StepConds([[(Cond(cond[0]), 1.0)]], [Cond(uncond[0])])
    den = Denoiser(pipe.unet, base, prediction, lambda _i: conds, 7.0)
    with torch.no_grad():
        return plan, den, run(plan, den, ImageNoise("cpu", [seed], (4, 8, 8), torch.device("cpu")))


def _log(line: str) -> None:
    if os.environ.get("TIHUB_PARITY_LOG"):
        with open(os.environ["TIHUB_PARITY_LOG"], "a") as f:
            f.write(line + "\n")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("steps", [3, 4, 7])
def test_unipc_matches_the_update_rules(tiny, variant, skip, steps):
    pipe, cond, uncond = tiny
    plan, den, got = tihub_unipc(pipe, cond, uncond, 5, steps, uni_pc_variant=variant, uni_pc_skip_type=skip)
    assert plan.times == pytest.approx(reference_grid(skip, steps), abs=2e-7)
    want = reference_unipc(pipe.unet, cond, uncond, 5, steps, variant, skip)
    err = rel_l2(got, want)
    _log(f"UniPC {variant}\t{skip}\t{steps}\t{err:.3e}")
    assert err < TOLERANCE, f"{variant} / {skip} / {steps} steps: relative L2 {err:.2e}"
    assert den.calls == len(plan.times) - 1  # one call a step: the start, then each corrector


@pytest.mark.parametrize(("order", "lower_final"), [(1, True), (2, True), (2, False), (4, False)])
def test_unipc_order_and_lower_order_final(tiny, order, lower_final):
    pipe, cond, uncond = tiny
    _, _, got = tihub_unipc(pipe, cond, uncond, 6, 5, uni_pc_order=order, uni_pc_lower_order_final=lower_final, uni_pc_variant="bh2")
    want = reference_unipc(pipe.unet, cond, uncond, 6, 5, "bh2", "time_uniform", order=order, lower_final=lower_final)
    assert rel_l2(got, want) < TOLERANCE


def test_the_options_change_the_picture(tiny):
    """The variants, skip types and orders give other latents (well beyond the tolerance)."""
    pipe, cond, uncond = tiny
    runs = {(v, s): tihub_unipc(pipe, cond, uncond, 5, 4, uni_pc_variant=v, uni_pc_skip_type=s)[2] for v in VARIANTS for s in SKIPS}
    keys = list(runs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert rel_l2(runs[a], runs[b]) > 10 * TOLERANCE, (a, b)
    # at 4 steps lower_order_final never reaches order 3 (1, 2, 2, 1): the same as order 2; at 7 (8 run) it does
    assert torch.equal(tihub_unipc(pipe, cond, uncond, 5, 4, uni_pc_order=2)[2], runs[("bh1", "time_uniform")])
    assert rel_l2(tihub_unipc(pipe, cond, uncond, 5, 7, uni_pc_order=2)[2], tihub_unipc(pipe, cond, uncond, 5, 7)[2]) > 10 * TOLERANCE


def test_unipc_v_prediction(tiny):
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline(prediction_type="v_prediction")
    _, cond, uncond = tiny
    for variant, skip in (("bh1", "time_uniform"), ("vary_coeff", "logSNR")):
        _, _, got = tihub_unipc(pipe, cond, uncond, 8, 4, prediction="v_prediction", uni_pc_variant=variant, uni_pc_skip_type=skip)
        want = reference_unipc(pipe.unet, cond, uncond, 8, 4, variant, skip, prediction="v_prediction")
        assert rel_l2(got, want) < TOLERANCE


@pytest.mark.parametrize("skip", SKIPS)
def test_unipc_img2img_as_the_hires_pass(tiny, skip):
    """A1111's UniPC img2img: noised to the grid entry t_enc, run from just above the entry below."""
    pipe, cond, uncond = tiny
    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    init = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(11))
    plan = make_plan("UniPC", "Automatic", 4, base, "sd1", [5], Randomness(rng="cpu", uni_pc_skip_type=skip), denoising=0.6)
    assert plan.timesteps == [1, 167, 333] and plan.init_timestep == 499 and plan.times[0] == pytest.approx(0.334)
    conds = StepConds([[(Cond(cond[0]), 1.0)]], [Cond(uncond[0])])
    den = Denoiser(pipe.unet, base, "epsilon", lambda _i: conds, 7.0)
    with torch.no_grad():
        got = run(plan, den, ImageNoise("cpu", [5], (4, 8, 8), torch.device("cpu")), init=init)
    want = reference_unipc(pipe.unet, cond, uncond, 5, 4, "bh1", skip, init=init, denoising=0.6)
    assert rel_l2(got, want) < TOLERANCE


def test_time_grid_by_hand():
    base = ModelSchedule(torch.tensor(AC))
    plan = make_plan("UniPC", "Automatic", 4, base, "sd1", [1], Randomness())
    assert plan.times == pytest.approx([1.0, 0.75025, 0.5005, 0.25075, 0.001], abs=1e-7)
    # the UNet sees (t - 1/1000) * 1000: 999, 749.25, 499.5, 249.75 (and no call at the last time)
    assert [round((t - 0.001) * 1000, 3) for t in plan.times[:-1]] == [999.0, 749.25, 499.5, 249.75]
    quadratic = make_plan("UniPC", "Automatic", 4, base, "sd1", [1], Randomness(uni_pc_skip_type="time_quadratic")).times
    s = [1 - k * (1 - 0.001**0.5) / 4 for k in range(5)]
    assert quadratic == pytest.approx([v * v for v in s], abs=1e-6)
    # 7 steps run 8, as A1111's DDIM grid for 7 steps has 8 entries (0, 142, ..., 994)
    assert len(make_plan("UniPC", "Automatic", 7, base, "sd1", [1], Randomness()).times) == 9
    # logSNR, 2 steps: the middle time has the mean half log-SNR of t = 1 and t = 1/1000
    ac = [1.0]
    for i in range(1000):
        beta = (0.00085**0.5 + i * (0.012**0.5 - 0.00085**0.5) / 999) ** 2
        ac.append(ac[-1] * (1 - beta))
    lam = [0.5 * math.log(a / (1 - a)) for a in ac[1:]]  # at t = (n + 1) / 1000
    target = (lam[999] + lam[0]) / 2
    n = max(i for i in range(1000) if lam[i] >= target)  # lambda falls with t; log alpha is linear in t
    la = [0.5 * math.log(a) for a in ac[1:]]
    want_la = -0.5 * math.log1p(math.exp(-2 * target))
    t_mid = (n + 1 + (want_la - la[n]) / (la[n + 1] - la[n])) / 1000
    log_snr = make_plan("UniPC", "Automatic", 2, base, "sd1", [1], Randomness(uni_pc_skip_type="logSNR", uni_pc_order=2)).times
    assert log_snr[0] == pytest.approx(1.0, abs=1e-6) and log_snr[2] == pytest.approx(0.001, abs=1e-6)
    assert log_snr[1] == pytest.approx(t_mid, abs=2e-5)


def test_unipc_plan_infotext_and_refusals():
    base = ModelSchedule(torch.tensor(AC))
    plan = make_plan("UniPC", "Automatic", 10, base, "sd1", [1], Randomness(uni_pc_variant="BH2", uni_pc_skip_type="logsnr", uni_pc_order=2, uni_pc_lower_order_final=False))
    info = plan.infotext()
    assert (info["UniPC variant"], info["UniPC skip type"], info["UniPC order"], info["UniPC lower order final"]) == ("bh2", "logSNR", 2, False)
    assert "UniPC variant" not in make_plan("UniPC", "Automatic", 10, base, "sd1", [1], Randomness()).infotext()  # defaults are not written
    js = plan.to_json()["unipc"]
    assert (js["variant"], js["order"], js["steps_run"], len(js["times"])) == ("bh2", 2, 10, 11)
    with pytest.raises(ConfigError, match="UniPC order 3 needs at least 3 steps; raise --steps or lower --uni-pc-order to 2"):
        make_plan("UniPC", "Automatic", 2, base, "sd1", [1], Randomness())
    with pytest.raises(ConfigError, match="Sampler Euler takes no UniPC options; drop the --uni-pc-\\* options or use --sampler UniPC"):
        make_plan("Euler", "Automatic", 4, base, "sd1", [1], Randomness(uni_pc_order=2))
    with pytest.raises(ConfigError, match="UniPC variant 'bh3' is not one of A1111's; use one of: bh1, bh2, vary_coeff"):
        make_plan("UniPC", "Automatic", 4, base, "sd1", [1], Randomness(uni_pc_variant="bh3"))
    with pytest.raises(ConfigError, match="takes no schedule type"):
        make_plan("UniPC", "Karras", 4, base, "sd1", [1], Randomness())


def test_unipc_same_seed_same_png_bytes(tmp_path):
    from tihub.engine.generate import generate
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    a = generate("a cat", pipe=pipe, sampler="UniPC", steps=4, seed=3, size=64, rng="cpu", out=tmp_path / "a").paths[0]
    b = generate("a cat", pipe=pipe, sampler="UniPC", steps=4, seed=3, size=64, rng="cpu", out=tmp_path / "b").paths[0]
    assert a.read_bytes() == b.read_bytes()


# -- the CLI: options, infotext, --from-image ------------------------------------------------------


def _cli(*args: str):
    from click.testing import CliRunner

    from tihub.cli import cli

    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("options", [
    ["--sampler", "UniPC", "--uni-pc-variant", "bh2", "--uni-pc-skip-type", "logSNR", "--uni-pc-order", "2", "--no-uni-pc-lower-order-final", "--ngms", "500"],
    ["--sampler", "DPM++ 2M", "--sigma-min", "0.1", "--sigma-max", "10", "--rho", "5", "--skip-early-cfg", "0.3"],
    ["--sampler", "Euler", "--schedule-type", "Exponential", "--sigma-max", "8", "--ngms", "2", "--ngms-all-steps"],
])
def test_cli_sampler_settings_are_written_and_followed_from_the_image(home, tiny_sd1_dir, tmp_path, options):
    import json

    code, stdout, err = _cli("generate", "a cat", "--model", str(tiny_sd1_dir), "--steps", "4", "--size", "64", "--seed", "9", "--rng", "cpu",
                             "--out", str(tmp_path / "a"), "--json", *options)
    assert code == 0, err
    (res,) = json.loads(stdout)
    info, plan = res["infotext"], res["plan"]
    if "UniPC" in options:
        assert "UniPC variant: bh2, UniPC skip type: logSNR, UniPC order: 2, UniPC lower order final: False" in info and "NGMS: 500" in info
        assert (plan["unipc"]["variant"], plan["unipc"]["skip_type"], plan["unipc"]["steps_run"]) == ("bh2", "logSNR", 4)
    elif "--rho" in options:
        assert "Schedule min sigma: 0.1, Schedule max sigma: 10, Schedule rho: 5" in info and "Skip Early CFG: 0.3" in info
        assert plan["sigmas"][0] == pytest.approx(10.0) and plan["schedule_overrides"] == {"sigma_min": 0.1, "sigma_max": 10.0, "rho": 5.0}
    else:
        assert "Schedule max sigma: 8" in info and "NGMS: 2, NGMS all steps: True" in info
    code, stdout, err = _cli("generate", "--from-image", res["path"], "--model", str(tiny_sd1_dir), "--out", str(tmp_path / "b"), "--json")
    assert code == 0, err
    (again,) = json.loads(stdout)
    assert again["infotext"] == info and again["plan"]["sigmas"] == plan["sigmas"] and "not followed" not in err
    with open(res["path"], "rb") as a, open(again["path"], "rb") as b:
        assert a.read() == b.read()


def test_unipc_progress_counts_one_step_per_call(tiny):
    pipe, cond, uncond = tiny
    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    for skip in SKIPS:
        plan = make_plan("UniPC", "Automatic", 7, base, "sd1", [5], Randomness(rng="cpu", uni_pc_skip_type=skip))
        conds = StepConds([[(Cond(cond[0]), 1.0)]], [Cond(uncond[0])])
        den = Denoiser(pipe.unet, base, "epsilon", lambda _i: conds, 7.0)
        seen = []
        with torch.no_grad():
            run(plan, den, ImageNoise("cpu", [5], (4, 8, 8), torch.device("cpu")), on_step=lambda done, total: seen.append((done, total)))
        assert seen == [(k, 8) for k in range(9)], skip  # 7 steps run 8: each call one more done


def test_vary_coeff_batch_gives_each_image_as_alone(tiny):
    """A1111's vary_coeff works on one image at a time; tihub's batch gives each image alone."""
    pipe, cond, uncond = tiny
    base = ModelSchedule.from_config(dict(pipe.scheduler.config))
    plan = make_plan("UniPC", "Automatic", 4, base, "sd1", [5, 6], Randomness(rng="cpu", uni_pc_variant="vary_coeff"))
    conds = StepConds([[(Cond(cond[0]), 1.0)], [(Cond(cond[0]), 1.0)]], [Cond(uncond[0]), Cond(uncond[0])])
    den = Denoiser(pipe.unet, base, "epsilon", lambda _i: conds, 7.0)
    with torch.no_grad():
        both = run(plan, den, ImageNoise("cpu", [5, 6], (4, 8, 8), torch.device("cpu")))
    for i, seed in enumerate((5, 6)):
        alone = tihub_unipc(pipe, cond, uncond, seed, 4, uni_pc_variant="vary_coeff")[2]
        assert rel_l2(both[i : i + 1], alone) < 1e-5
