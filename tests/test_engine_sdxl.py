"""SDXL-shaped model: clip_l to the first text encoder, clip_g to the second; SD1 files skipped."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import capture_encoder_inputs, tiny_reader, token_rows, vec, write_emb  # noqa: E402

from tihub.engine.generate import Engine  # noqa: E402
from tihub.engine.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load_model(tiny_sdxl_dir, device="cpu")


@pytest.fixture
def engine(sdxl, tmp_path):
    eng = Engine(sdxl, tmp_path / "embeddings")
    eng.vocabulary.reader = tiny_reader
    return eng


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
