"""Hires. fix: upscalers (latent modes, Lanczos/Nearest/None, ESRGAN files via spandrel), infotext, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tihub.engine.sampling.hires import Hires, img2img_steps, upscale_image, upscaler_name  # noqa: E402
from tihub.errors import ConfigError, FormatError  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_sd1_dir):
    from tihub.engine.generate import Engine
    from tihub.engine.models import load_model

    return Engine(load_model(tiny_sd1_dir, device="cpu", compute_hash=False))


def test_img2img_steps_are_a1111s():
    # hires steps 10 at denoising 0.5: a 20-step schedule, its last 10 sigmas (from index 9)
    assert img2img_steps(10, 0.5) == (20, 9)
    assert img2img_steps(20, 1.0) == (20, 19)  # min(d, 0.999): int(20 / 0.999) = 20


def test_image_upscalers_follow_a1111s_resize():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    lanczos = upscale_image(image, "Lanczos", 96, 96)
    assert lanczos.size == (96, 96) and np.array_equal(np.asarray(lanczos), np.asarray(image.resize((96, 96), Image.LANCZOS)))
    nearest = upscale_image(image, "Nearest", 128, 128)
    assert np.array_equal(np.asarray(nearest), np.asarray(image.resize((128, 128), Image.NEAREST)))
    # a 2x model on a 1.5x request: one model pass to 128, then Lanczos down to 96
    doubled = upscale_image(image, "model", 96, 96, model=lambda im: im.resize((im.width * 2, im.height * 2), Image.NEAREST))
    assert np.array_equal(np.asarray(doubled), np.asarray(image.resize((128, 128), Image.NEAREST).resize((96, 96), Image.LANCZOS)))
    assert upscale_image(image, "None", 80, 72).size == (80, 72)


def test_bad_hires_settings_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="Unknown hires upscaler 'Bilinear'; use one of: Latent, .*None, Lanczos, Nearest, or the path"):
        upscaler_name("Bilinear")
    with pytest.raises(ConfigError, match="does not exist"):
        upscaler_name(str(tmp_path / "4x-missing.pth"))
    with pytest.raises(ConfigError, match="Denoising strength 0 is out of range"):
        Hires(denoising=0).check()
    with pytest.raises(ConfigError, match="Hires scale 1.3 makes 64x64 into 83x83, not a multiple of 8"):
        Hires(scale=1.3).target(64, 64)
    assert upscaler_name("latent (BICUBIC)") == "Latent (bicubic)"


@pytest.mark.parametrize("upscaler", ["Latent (antialiased)", "Lanczos", "Nearest", "None"])
def test_hires_pass_makes_the_bigger_picture_and_writes_a1111_keys(engine, upscaler):
    from tihub.infotext import parse_infotext

    r = engine.generate("a cat", steps=3, seed=2, size=64, sampler="Euler a", hires=Hires(scale=1.5, steps=2, denoising=0.55, upscaler=upscaler))
    assert r.images[0].size == (96, 96)
    p = parse_infotext(r.infotexts[0]).parameters
    assert (p["Size"], p["Denoising strength"], p["Hires upscale"], p["Hires steps"], p["Hires upscaler"]) == ("64x64", "0.55", "1.5", "2", upscaler)
    assert r.infotexts[0].rstrip().endswith(f"Version: {p['Version']}")  # A1111 keeps Version last
    plan = r.plans[0].to_json()
    assert plan["hires"]["size"] == "96x96" and plan["hires"]["plan"]["denoising"] == 0.55 and len(plan["hires"]["plan"]["sigmas"]) == 3
    again = engine.generate("a cat", steps=3, seed=2, size=64, sampler="Euler a", hires=Hires(scale=1.5, steps=2, denoising=0.55, upscaler=upscaler))
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(again.images[0]))


def test_hires_ddim_runs_on_the_timestep_grid(engine):
    r = engine.generate("a cat", steps=4, seed=2, size=64, sampler="DDIM", hires=Hires(scale=1.5, steps=3, denoising=0.5))
    hp = r.plans[0].hires["plan"]
    # A1111: a 6-step grid, noised to its 3rd entry, run from below it
    assert r.images[0].size == (96, 96) and hp["timesteps"] == [1, 167]


def _tiny_esrgan(path):
    from tihub.engine.sampling.hires import _import_spandrel

    _import_spandrel()
    import importlib

    rrdb = importlib.import_module("spandrel.architectures.ESRGAN.__arch.RRDB").RRDBNet
    torch.manual_seed(0)
    torch.save(rrdb(num_filters=8, num_blocks=1, scale=2).state_dict(), path)
    return path


def test_model_upscaler_file_through_spandrel(engine, tmp_path):
    import importlib.util

    if importlib.util.find_spec("spandrel") is None:
        pytest.skip("spandrel is not installed (pip install --no-deps -r requirements/ci-nodeps.txt)")
    from tihub.infotext import parse_infotext

    path = _tiny_esrgan(tmp_path / "2x-TinyESRGAN.pth")
    r = engine.generate("a cat", steps=2, seed=4, size=64, sampler="Euler", hires=Hires(scale=2, steps=2, denoising=0.5, upscaler=str(path)))
    assert r.images[0].size == (128, 128)
    assert parse_infotext(r.infotexts[0]).parameters["Hires upscaler"] == "2x-TinyESRGAN"
    import sys

    assert not isinstance(sys.modules.get("torchvision"), type(sys)) or sys.modules["torchvision"].__spec__ is not None  # no stub left behind


def test_hostile_upscaler_file_never_runs(engine, tmp_path):
    from hostile_files import os_system, torch_zip

    canary = tmp_path / "canary"
    path = tmp_path / "4x-evil.pth"
    path.write_bytes(torch_zip([("archive/data.pkl", os_system(canary))]))
    with pytest.raises(FormatError):
        engine.generate("a cat", steps=1, seed=4, size=64, hires=Hires(scale=2, steps=1, upscaler=str(path)))
    assert not canary.exists()


def test_cli_hires_options(home, tiny_sd1_dir, tmp_path):
    from click.testing import CliRunner

    from tihub.cli import cli

    r = CliRunner().invoke(cli, ["generate", "a cat", "--model", str(tiny_sd1_dir), "--steps", "2", "--size", "64", "--seed", "3", "--hires-scale", "1.5",
                                 "--hires-upscaler", "lanczos", "--denoising", "0.4", "--out", str(tmp_path / "o"), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    [res] = json.loads(r.stdout)  # one object per picture
    assert "Denoising strength: 0.4" in res["infotext"] and "Hires upscaler: Lanczos" in res["infotext"] and "Hires steps" not in res["infotext"]
    assert res["plan"]["hires"]["upscaler"] == "Lanczos"
    from PIL import Image

    assert Image.open(res["path"]).size == (96, 96)


# -- A1111 1.10's hires leftovers: its own sampler, schedule type, prompts, CFG; prompt editing ----


def test_hires_prompt_schedule_is_a1111s():
    from tihub.engine.prompts import prompt_schedule

    # A1111's own doctests for hires scheduling (first pass 10 steps, hires 10)
    assert prompt_schedule("a [b:.5] c", 10, first_pass=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, first_pass=10) == [(5, "a  c"), (10, "a b c")]
    # a whole number counts on from the first pass; a switch inside it has already happened
    assert prompt_schedule("x [a:b:25]", 10, first_pass=20) == [(5, "x a"), (10, "x b")]
    assert prompt_schedule("x [a:b:12]", 10, first_pass=20) == [(10, "x b")]
    assert prompt_schedule("[a|b] z", 3, first_pass=20) == [(1, "a z"), (2, "b z"), (3, "a z")]


def _same(a, b):
    return np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_prompt_editing_continues_into_the_hires_pass(engine):
    kw = dict(steps=2, seed=6, size=64, sampler="Euler")
    hires = dict(scale=1.5, steps=4, denoising=0.6)
    # first pass 2 calls: [cat:dog:4] is "cat" there and switches at hires step 4 - 2 = 2, as
    # A1111's [cat:dog:1.5] does over 4 hires steps
    edited = engine.generate("[cat:dog:4]", hires=Hires(**hires), **kw)
    texts = edited.plans[0].hires["plan"]["chunks"][0]["parts"][0]["texts"]
    assert [(t["text"], t["until_call"]) for t in texts] == [("cat", 2), ("dog", 4)]
    assert _same(edited, engine.generate("cat", hires=Hires(**hires, prompt="[cat:dog:1.5]"), **kw))
    # a switch inside the first pass ([cat:dog:2]) leaves the hires pass with "dog" only
    early = engine.generate("[cat:dog:2]", hires=Hires(**hires), **kw)
    assert _same(early, engine.generate("cat", hires=Hires(**hires, prompt="dog"), **kw)) and not _same(early, edited)
    # a second-order hires sampler counts its model calls: 4 steps are 8 calls, switching at 8 - 2
    heun = engine.generate("[cat:dog:8]", hires=Hires(**hires, sampler="Heun"), **kw)
    texts = heun.plans[0].hires["plan"]["chunks"][0]["parts"][0]["texts"]
    assert [(t["text"], t["until_call"]) for t in texts] == [("cat", 6), ("dog", 8)]


def _karras(n, lo, hi, rho=7.0):
    ramp = np.linspace(0, 1, n)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return np.append(s, 0.0)


def test_hires_sampler_schedule_cfg_and_prompts(engine):
    from tihub.infotext import parse_infotext

    kw = dict(steps=2, seed=6, size=64, sampler="Euler a")
    base = Hires(scale=1.5, steps=3, denoising=0.5)
    r = engine.generate("a cat", "blurry", hires=Hires(scale=1.5, steps=3, denoising=0.5, sampler="DPM++ 2M", cfg_scale=4,
                                                       prompt="a big cat", negative_prompt="noisy"), **kw)
    hp = r.plans[0].hires["plan"]
    # "Use same scheduler" is the first pass's Automatic, so DPM++ 2M runs its own Karras; 3 hires
    # steps at 0.5 are the last 3 of a 6-step schedule (A1111: sigmas[6 - 2 - 1:])
    sched = engine.model_schedule()
    want = _karras(6, float(sched.sigma_min), float(sched.sigma_max))[3:]
    assert (hp["sampler"], hp["schedule"]) == ("DPM++ 2M", "Karras")
    assert np.allclose(hp["sigmas"], want, rtol=1e-5, atol=1e-5)
    assert [t["text"] for t in hp["chunks"][0]["parts"][0]["texts"]] == ["a big cat"] and hp["chunks"][0]["negative"][0]["text"] == "noisy"
    p = parse_infotext(r.infotexts[0]).parameters
    assert (p["Hires sampler"], p["Hires schedule type"], p["Hires prompt"], p["Hires negative prompt"], p["Hires CFG Scale"]) == (
        "DPM++ 2M", "Karras", "a big cat", "noisy", "4")
    keys = list(p)
    assert keys.index("Hires sampler") < keys.index("Hires prompt") < keys.index("Hires schedule type") < keys.index("Hires upscale")
    # the same sampler, CFG and prompts as the first pass: the plain hires picture, and no keys
    same = engine.generate("a cat", "blurry", hires=Hires(scale=1.5, steps=3, denoising=0.5, sampler="Euler a", cfg_scale=7,
                                                          prompt="a cat", negative_prompt="blurry"), **kw)
    plain = engine.generate("a cat", "blurry", hires=base, **kw)
    assert _same(same, plain) and not _same(r, plain)
    assert not any(k in parse_infotext(same.infotexts[0]).parameters for k in ("Hires sampler", "Hires schedule type", "Hires prompt", "Hires CFG Scale"))
    assert not _same(engine.generate("a cat", "blurry", hires=Hires(scale=1.5, steps=3, denoising=0.5, cfg_scale=3), **kw), plain)
    # an explicit hires schedule type; a first pass with its own type keeps it unless told
    p = parse_infotext(engine.generate("a cat", hires=Hires(scale=1.5, steps=3, denoising=0.5, schedule_type="Exponential"), **kw).infotexts[0]).parameters
    assert p["Hires schedule type"] == "Exponential"
    k = engine.generate("a cat", hires=Hires(scale=1.5, steps=3, denoising=0.5, sampler="Euler"), **{**kw, "schedule_type": "Karras"})
    assert k.plans[0].hires["plan"]["schedule"] == "Karras" and "Hires schedule type" not in parse_infotext(k.infotexts[0]).parameters
    with pytest.raises(ConfigError, match="Unknown sampler 'Eulr'"):
        engine.generate("a cat", hires=Hires(sampler="Eulr"), **kw)


def test_hires_keys_are_read_back_to_the_same_png(home, tiny_sd1_dir, tmp_path):
    from click.testing import CliRunner

    from tihub.cli import cli

    def gen(*args):
        r = CliRunner().invoke(cli, ["generate", *args, "--model", str(tiny_sd1_dir), "--json"], catch_exceptions=False)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)[0], r.stderr

    first, _ = gen("a [cat:dog:3]", "-n", "blurry", "--steps", "2", "--size", "64", "--seed", "3", "--sampler", "Euler a", "--hires-scale", "1.5",
                   "--hires-steps", "2", "--denoising", "0.5", "--hires-sampler", "DPM++ 2M", "--hires-cfg", "5", "--hires-prompt", "a cat, sharp",
                   "--hires-negative", "noisy", "--out", str(tmp_path / "a"))
    assert 'Hires prompt: "a cat, sharp"' in first["infotext"]
    again, err = gen("--from-image", first["path"], "--out", str(tmp_path / "b"))
    assert "Hires" not in err
    with open(first["path"], "rb") as a, open(again["path"], "rb") as b:
        assert a.read() == b.read()


# -- the VAE encode of an image-space upscaler: A1111's posterior sample ---------------------------


def test_image_upscaler_encode_samples_the_posterior_as_a1111(engine):
    from PIL import Image

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    vae = engine.model.pipe.vae
    with torch.no_grad():
        x = [torch.from_numpy(np.moveaxis(np.asarray(im, dtype=np.float32) / 255.0, 2, 0))[None] * 2 - 1 for im in images]
        post = [vae.encode(t).latent_dist for t in x]
    # A1111: torch.randn(mean.shape) from the global CPU generator, left seeded with the batch's
    # last seed; the batch's images draw one after another
    g = torch.Generator().manual_seed(42)
    eps = [torch.randn(tuple(p.mean.shape), generator=g) for p in post]
    want = torch.stack([(p.mean + p.std * e)[0] * vae.config.scaling_factor for p, e in zip(post, eps)])
    got = engine.encode(images, [(42, 0), (42, 1)])
    assert torch.allclose(got, want, atol=1e-6)
    alone = engine.encode(images[1:], [(42, 0)])
    assert torch.allclose(alone[0], (post[1].mean + post[1].std * torch.randn(tuple(post[1].mean.shape), generator=torch.Generator().manual_seed(42)))[0] * vae.config.scaling_factor, atol=1e-6)
    # the NV source leaves A1111's generator unseeded: the mean
    assert torch.allclose(engine.encode(images, None), torch.stack([p.mean[0] for p in post]) * vae.config.scaling_factor, atol=1e-6)


def test_image_upscaler_batch_draws_follow_a1111_and_grid_cells_lone_images(engine):
    hires = Hires(scale=1.5, steps=2, denoising=0.5, upscaler="Lanczos")
    batch = engine.generate("a cat", steps=2, seed=30, size=64, sampler="Euler", hires=hires, batch_size=2, rng="cpu")
    lone = engine.generate("a cat", steps=2, seed=31, size=64, sampler="Euler", hires=hires, rng="cpu")
    # in an A1111 batch the second image draws the posterior noise after the first, from seed 31
    # alone, it draws first from its own seed 31: the pictures differ (slightly)
    assert not np.array_equal(np.asarray(batch.images[1]), np.asarray(lone.images[0]))
    from tihub.engine.generate import Settings

    settings = Settings(steps=2, sampler="Euler", width=64, height=64, hires=hires, rng="cpu")
    cells, _ = engine.run(["a cat", "a cat"], ["", ""], [30, 31], settings)  # as grid cells: each alone
    assert np.array_equal(np.asarray(cells[1]), np.asarray(lone.images[0]))
