"""Model loading: shipped config folders, safe .ckpt conversion, refusals, device/dtype choice."""

from __future__ import annotations

import json

import numpy as np

import pytest

torch = pytest.importorskip("torch")

from tihub.engine.models import _ckpt_to_safetensors, config_folder, family_of, load_model, pick_device, pick_dtype  # noqa: E402
from tihub.errors import ConfigError, FormatError  # noqa: E402


def test_config_folders_are_complete_and_match_real_model_sizes():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    expected = {"sd1": 859.52, "sd2": 865.91, "sdxl": 2567.46}
    for family, params in expected.items():
        folder = config_folder(family)
        index = json.loads((folder / "model_index.json").read_text())
        for comp, spec in index.items():
            if isinstance(spec, list) and spec[0]:
                assert (folder / comp).is_dir(), (family, comp)
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == params
        tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert json.loads((config_folder("sd2", "v") / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    assert CLIPTokenizer.from_pretrained(str(config_folder("sdxl") / "tokenizer_2")).pad_token_id == 0


def test_ckpt_is_converted_without_unpickling_code(tmp_path):
    from safetensors.numpy import load_file

    sd = {"state_dict": {"model.diffusion_model.x.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "global_step": 5}}
    path = tmp_path / "m.ckpt"
    torch.save(sd, path)
    out = _ckpt_to_safetensors(path, tmp_path)
    tensors = load_file(str(out))
    assert list(tensors) == ["model.diffusion_model.x.weight"]
    assert tensors["model.diffusion_model.x.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_non_sd_single_file_is_refused(tmp_path):
    from safetensors.numpy import save_file
    import numpy as np

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.lora_up.weight": np.zeros((4, 4), np.float32)}, str(path))
    with pytest.raises(FormatError, match="not a Stable Diffusion"):
        load_model(path, device="cpu")


def test_device_and_dtype_choice(tiny_sd1_dir):
    cpu = pick_device("cpu")
    assert pick_dtype(cpu) == torch.float32 and pick_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="Unknown dtype"):
        pick_dtype(cpu, "fp8")
    with pytest.raises(ConfigError, match="Unknown device"):
        pick_device("toaster")
    m = load_model(tiny_sd1_dir, device="cpu", dtype="bf16", compute_hash=False)
    assert m.dtype == torch.bfloat16 and m.family == "sd1" and family_of(m.pipe) == "sd1" and m.widths == {"clip_l": 32}
    img = __import__("tihub.engine.generate", fromlist=["Engine"]).Engine(m).generate("a cat", steps=1, seed=1, size=64)
    assert img.images[0].size == (64, 64)


def test_sigmas_come_from_the_models_betas_whatever_the_scheduler(tmp_path):
    from tihub.engine.samplers import SAMPLERS
    from tihub.engine.sampling import Randomness, make_plan
    from tihub.engine.sampling.schedule import ModelSchedule

    base = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction", "steps_offset": 1}
    euler = ModelSchedule.from_config({**base, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"})
    pndm = ModelSchedule.from_config({**base, "_class_name": "PNDMScheduler", "skip_prk_steps": True})
    assert torch.equal(euler.sigmas, pndm.sigmas) and abs(euler.sigma_max - 14.6146) < 1e-3 and abs(euler.sigma_min - 0.0292) < 1e-3
    for name in SAMPLERS:
        plan = make_plan(name, "Automatic", 8, euler, "sd2", [1], Randomness())
        assert plan.timesteps or abs(plan.sigmas[0] - 14.6146) < 1e-3 or name == "LCM", name


def test_v_prediction_model_generates(tmp_path):
    from tihub.engine.generate import Engine
    from tihub.engine.tiny import build_tiny_sd1

    m = load_model(build_tiny_sd1(tmp_path / "v", prediction_type="v_prediction"), device="cpu", compute_hash=False)
    assert m.prediction == "v_prediction"
    r = Engine(m).generate("a cat", steps=2, seed=1, size=64, sampler="DDIM")
    assert r.images[0].size == (64, 64)


def test_single_safetensors_checkpoint_with_config_folder(tiny_sd1_dir, tmp_path):
    from engine_helpers import to_ldm
    from safetensors.numpy import save_file

    from tihub.engine.generate import Engine

    folder_model = load_model(tiny_sd1_dir, device="cpu", compute_hash=False)
    path = tmp_path / "tiny-single.safetensors"
    save_file(to_ldm(folder_model.pipe), str(path))
    single = load_model(path, device="cpu", config=tiny_sd1_dir)
    assert single.name == "tiny-single" and single.hash and len(single.hash) == 10
    a = Engine(folder_model).generate("a cat", steps=2, seed=3, size=64)
    b = Engine(single).generate("a cat", steps=2, seed=3, size=64)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    with pytest.raises(ConfigError, match="not a diffusers folder"):
        load_model(path, device="cpu", config=tmp_path)


def test_ckpt_checkpoint_via_safe_reader_and_cli_config(tiny_sd1_dir, tmp_path, home):
    from click.testing import CliRunner
    from engine_helpers import to_ldm

    from tihub.cli import cli
    from tihub.engine.generate import Engine

    folder_model = load_model(tiny_sd1_dir, device="cpu", compute_hash=False)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in to_ldm(folder_model.pipe).items()}, "global_step": 1}, path)
    ck = load_model(path, device="cpu", config=tiny_sd1_dir)
    a = Engine(folder_model).generate("a cat", steps=1, seed=3, size=64)
    b = Engine(ck).generate("a cat", steps=1, seed=3, size=64)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    r = CliRunner().invoke(cli, ["generate", "a cat", "--model", str(path), "--config", str(tiny_sd1_dir), "--steps", "1", "--size", "64", "--seed", "3", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert '"Model: tiny' in r.stdout or "Model: tiny" in r.stdout


def test_native_size_by_family_and_prediction():
    from tihub.engine.models import LoadedModel

    def side(family: str, prediction: str = "epsilon") -> int:
        return LoadedModel(pipe=None, family=family, name="m", path="m", prediction=prediction).native_size

    assert (side("sd1"), side("sd2"), side("sd2", "v_prediction"), side("sdxl")) == (512, 512, 768, 1024)


def test_hub_repo_id_downloads_from_a_loopback_hub_then_loads_from_the_cache(tiny_sd1_dir, tmp_path, home):
    """`--model owner/name` goes through huggingface_hub against a loopback Hub, in a fresh process
    (the Hub endpoint is read at import); offline, the same id loads from the cache."""
    import os
    import subprocess
    import sys

    from servers.hf import HFFile, HFHub, HFRepo

    repo = HFRepo(id="tihub-test/tiny-sd")
    for f in sorted(p for p in tiny_sd1_dir.rglob("*") if p.is_file()):
        rel = f.relative_to(tiny_sd1_dir).as_posix()
        repo.files[rel] = HFFile(f.read_bytes(), lfs=f.suffix == ".safetensors")
    repo.touch(1)

    def generate(env: dict, out: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "tihub", "generate", "a cat", "--model", "tihub-test/tiny-sd", "--steps", "1", "--size", "64", "--seed", "3", "--out", str(tmp_path / out)]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)

    base = dict(os.environ, HF_HOME=str(tmp_path / "hf"), TIHUB_HOME=str(home))
    with HFHub([repo]) as hub:
        hub.cdn_host = "localhost"  # LFS redirects leave the host, as the real Hub's do
        online = generate(dict(base, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0"), "online")
        fetched = [r.path for r in hub.server.requests if "/resolve/" in r.path or "/cdn/" in r.path]
    assert online.returncode == 0, online.stderr
    assert any(p.endswith("unet/diffusion_pytorch_model.safetensors") for p in fetched)
    # offline, no server: the cached snapshot is enough, and gives the same image
    offline = generate(dict(base, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1"), "offline")
    assert offline.returncode == 0, offline.stderr
    a, b = (next((tmp_path / d).glob("*.png")) for d in ("online", "offline"))
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(a)), np.asarray(__import__("PIL.Image").Image.open(b)))
    from tihub.infotext import read_infotext

    params = read_infotext(a).parameters
    assert params["Model"] == "tiny-sd" and len(params["Model hash"]) == 10
    # an id that is neither local nor cached, offline: one sentence
    missing = subprocess.run([sys.executable, "-m", "tihub", "generate", "x", "--model", "nobody/nothing"], env=dict(base, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "Error: Model 'nobody/nothing' does not exist as a local path and is not in the Hugging Face cache (HF_HUB_OFFLINE is set); pass a local model or go online."


@pytest.mark.parametrize("major,hip,want", [(7, None, "float16"), (8, None, "bfloat16"), (9, None, "bfloat16"), (7, "6.2", "bfloat16")])
def test_auto_precision_takes_bf16_only_where_the_gpu_has_it(monkeypatch, tmp_path, major, hip, want):
    """A T4 or V100 (compute 7.x) only emulates bf16, though torch.cuda.is_bf16_supported() says
    yes: generation and training pick fp16 there (training with loss scaling)."""
    import types

    from tihub.engine.train import TrainConfig, _pick_device_and_dtype

    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert pick_dtype(torch.device("cuda")) == getattr(torch, want)
    cfg = TrainConfig(name="x", images=tmp_path, model="m", embeddings_dir=tmp_path, run_dir=tmp_path, device="cuda")
    # _pick_device_and_dtype sets these flags for CUDA runs: given back after
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        device, dtype, loss_scaling = _pick_device_and_dtype(cfg)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    assert device.type == "cuda" and dtype == getattr(torch, want) and loss_scaling == (want == "float16")
