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
