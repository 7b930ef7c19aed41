"""SDXL-shaped model: clip_l to the first text encoder, clip_g to the second; SD1 files skipped."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import capture_encoder_inputs, engine_on, tiny_reader, token_rows, vec, write_emb  # noqa: E402

from tihub.engine.generate import Engine  # noqa: E402
from tihub.engine.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load_model(tiny_sdxl_dir, device="cpu")


@pytest.fixture
def engine(sdxl, tmp_path):
    return engine_on(sdxl, tmp_path)


def test_sdxl_splices_clip_l_and_clip_g_into_their_encoders(engine, tmp_path):
    assert engine.model.family == "sdxl"
    l, g = vec(2, seed=1), vec(2, seed=2)
    write_emb(engine.vocabulary.folder / "xlthing.safetensors", l, g)
    pipe = engine.model.pipe
    seen1, h1 = capture_encoder_inputs(pipe.text_encoder)
    seen2, h2 = capture_encoder_inputs(pipe.text_encoder_2)
    try:
        r = engine.generate("a xlthing", "blurry", steps=2, seed=1, size=64, out=tmp_path / "o")
    finally:
        h1.remove()
        h2.remove()
    assert r.used == ["xlthing"]
    assert any(np.allclose(token_rows(pipe.text_encoder, h[0], 2, 2), l, atol=1e-5) for h in seen1)
    assert any(np.allclose(token_rows(pipe.text_encoder_2, h[0], 2, 2), g, atol=1e-5) for h in seen2)
    plain = engine.generate("a cat", "blurry", steps=2, seed=1, size=64)
    assert not np.array_equal(np.asarray(r.images[0]), np.asarray(plain.images[0]))
    again = engine.generate("a xlthing", "blurry", steps=2, seed=1, size=64)
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(again.images[0]))
    assert "TI hashes" in r.infotexts[0]


def test_sdxl_pooled_embeds_follow_prompt_and_schedules_run(engine):
    enc = engine.encoder()
    a, _ = enc.encode("a cat")
    b, _ = enc.encode("a dog")
    assert a.pooled is not None and a.pooled.shape == (32,)
    assert not torch.allclose(a.pooled, b.pooled)
    assert tuple(a.hidden.shape) == (77, 64)  # clip_l 32 + clip_g 32
    r = engine.generate("[a cat|a dog] (red:1.3)", steps=3, seed=2, size=64, batch_size=2)
    assert len(r.images) == 2


def test_sd1_embedding_on_sdxl_is_skipped_with_both_widths(engine):
    write_emb(engine.vocabulary.folder / "sd1only.safetensors", vec(2))
    r = engine.generate("a sd1only", steps=2, seed=1, size=64)
    assert r.used == []
    msg = [w for w in r.warnings if "sd1only" in w]
    assert len(msg) == 1 and "width 32" in msg[0] and "64 wide" in msg[0] and "plain text" in msg[0]


def test_sdxl_single_safetensors_checkpoint_loads_and_generates(tmp_path, home):
    """An SGM-layout SDXL .safetensors (OpenCLIP-G keys, fused q/k/v) loads like its diffusers folder."""
    from click.testing import CliRunner
    from engine_helpers import to_ldm
    from safetensors.numpy import save_file

    from tihub.checkpoints import inspect_model
    from tihub.cli import cli
    from tihub.engine.tiny import build_tiny_sdxl

    # the encoders differ in width, as in real SDXL (768 and 1280), so the checkpoint is unambiguous
    folder_dir = build_tiny_sdxl(tmp_path / "xl", seed=4, g_width=48)
    folder = load_model(folder_dir, device="cpu", compute_hash=False)
    path = tmp_path / "tiny-xl.safetensors"
    save_file(to_ldm(folder.pipe), str(path))
    info = inspect_model(path)
    assert info.family == "sdxl" and info.widths == {"clip_l": 32, "clip_g": 48}

    single = load_model(path, device="cpu", config=folder_dir)
    assert single.family == "sdxl" and single.widths == {"clip_l": 32, "clip_g": 48}
    assert single.name == "tiny-xl" and len(single.hash) == 10
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder.pipe, part).state_dict(), getattr(single.pipe, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part

    # an SDXL embedding (clip_l 32 wide, clip_g 48 wide) works on both, with the same result
    images = []
    for model in (folder, single):
        eng = Engine(model, tmp_path / "embeddings")
        eng.vocabulary.reader = tiny_reader
        write_emb(eng.vocabulary.folder / "xlthing.safetensors", vec(2, seed=1), vec(2, width=48, seed=2))
        r = eng.generate("a xlthing", "blurry", steps=2, seed=5, size=64)
        assert r.used == ["xlthing"]
        images.append(np.asarray(r.images[0]).astype(np.int16))
    # same weights; kernels may round differently by one level in a few pixels
    assert np.abs(images[0] - images[1]).max() <= 1

    r = CliRunner().invoke(cli, ["generate", "a cat", "--model", str(path), "--config", str(folder_dir), "--steps", "1", "--size", "64", "--seed", "3", "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    pngs = list((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 1
    from tihub.infotext import read_infotext

    params = read_infotext(pngs[0]).parameters
    assert params["Model"] == "tiny-xl" and params["Model hash"] == single.hash and params["Size"] == "64x64"
