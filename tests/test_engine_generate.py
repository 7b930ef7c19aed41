"""Generation engine on tiny random-weight pipelines: embeddings, weights, chunks, schedules, reload."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import capture_encoder_inputs, engine_on, token_rows, vec, write_emb  # noqa: E402

from tihub.engine.conditioning import CHUNK  # noqa: E402
from tihub.engine.generate import Settings, generate, parse_size  # noqa: E402
from tihub.engine.models import load_model  # noqa: E402
from tihub.engine.samplers import SAMPLERS, available, canonical  # noqa: E402
from tihub.errors import ConfigError, EngineError, FormatError, NotFound  # noqa: E402
from tihub.formats.model import Embedding  # noqa: E402
from tihub.infotext import read_infotext  # noqa: E402

STEPS = 3


@pytest.fixture
def engine(sd1, tmp_path):
    return engine_on(sd1, tmp_path)


def _img(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


def test_same_seed_same_image_and_png_infotext(engine, tmp_path):
    out = tmp_path / "out"
    a = engine.generate("a photo of a cat", "blurry", steps=STEPS, seed=42, size=64, out=out)
    b = engine.generate("a photo of a cat", "blurry", steps=STEPS, seed=42, size=64, out=out)
    c = engine.generate("a photo of a cat", "blurry", steps=STEPS, seed=43, size=64)
    assert np.array_equal(_img(a), _img(b))
    assert not np.array_equal(_img(a), _img(c))
    assert [p.name for p in a.paths + b.paths] == ["00000-42.png", "00001-42.png"]
    info = read_infotext(a.paths[0])
    assert info.prompt == "a photo of a cat" and info.negative_prompt == "blurry"
    p = info.parameters
    assert (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"], p["Size"], p["Model"]) == ("3", "Euler a", "7", "42", "64x64", "tiny-sd1")
    assert len(p["Model hash"]) == 10 and "Clip skip" not in p


def test_random_seed_is_recorded_and_batches(engine, tmp_path):
    r = engine.generate("a cat", steps=2, seed=-1, size=64, batch_size=2, batch_count=2, out=tmp_path / "o")
    assert len(r.images) == 4 and len(set(r.seeds)) == 4
    assert r.seeds == [r.seeds[0] + i for i in range(4)]
    for path, seed in zip(r.paths, r.seeds, strict=True):
        assert path.name.endswith(f"-{seed}.png")
        assert read_infotext(path).parameters["Seed"] == str(seed)
    # an image does not depend on the batch it was made in (up to float rounding of batched math)
    single = engine.generate("a cat", steps=2, seed=r.seeds[3], size=64)
    assert np.abs(_img(single) - _img(r, 3)).max() <= 2
    other = engine.generate("a cat", steps=2, seed=r.seeds[3] + 100, size=64)
    assert np.abs(_img(other) - _img(r, 3)).max() > 2


def test_embedding_changes_output_and_reaches_encoder(engine):
    v = vec(3, seed=1)
    write_emb(engine.vocabulary.folder / "mytok.safetensors", v)
    te = engine.model.pipe.text_encoder
    seen, handle = capture_encoder_inputs(te)
    try:
        with_emb = engine.generate("a photo of mytok", steps=STEPS, seed=1, size=64)
    finally:
        handle.remove()
    assert with_emb.used == ["mytok"]
    # BOS, a, photo, of, then the 3 vectors at positions 4..6
    rows = [token_rows(te, h[0], 4, 3) for h in seen if h.shape[0] == 1]
    assert any(np.allclose(r, v, atol=1e-5) for r in rows)
    plain = engine.generate("a photo of cat", steps=STEPS, seed=1, size=64)
    assert not np.array_equal(_img(with_emb), _img(plain))
    # infotext names it with the file's short hash
    import hashlib

    sha = hashlib.sha256((engine.vocabulary.folder / "mytok.safetensors").read_bytes()).hexdigest()
    assert f'TI hashes: "mytok: {sha[:12]}"' in with_emb.infotexts[0]


def test_two_embeddings_and_negative_prompt(engine):
    a, b = vec(2, seed=2), vec(1, seed=3)
    write_emb(engine.vocabulary.folder / "alpha.safetensors", a)
    write_emb(engine.vocabulary.folder / "sub" / "beta.safetensors", b)  # subfolders count
    enc = engine.encoder()
    tok = enc.tokenizer.tokenize("Alpha and BETA")  # matched on CLIP tokens: case-insensitive
    assert tok.used == ["alpha", "beta"]
    assert [(f.name, f.offset, f.count) for f in tok.chunks[0].fixes] == [("alpha", 0, 2), ("beta", 3, 1)]
    te = engine.model.pipe.text_encoder
    seen, handle = capture_encoder_inputs(te)
    try:
        r = engine.generate("a cat", "beta", steps=STEPS, seed=3, size=64)
    finally:
        handle.remove()
    assert r.used == ["beta"]
    assert any(np.allclose(token_rows(te, h[0], 1, 1), b, atol=1e-5) for h in seen)
    plain_neg = engine.generate("a cat", "gamma", steps=STEPS, seed=3, size=64)
    assert not np.array_equal(_img(r), _img(plain_neg))


def test_weights_scale_embedding_vectors_a1111_style(engine):
    write_emb(engine.vocabulary.folder / "wtok.safetensors", vec(2, seed=4))
    enc = engine.encoder()
    base, _ = enc.encode("wtok cat")
    weighted, tok = enc.encode("(wtok:1.5) cat")
    assert tok.chunks[0].multipliers[:3] == [1.5, 1.5, 1.0]
    z = base.hidden.clone()
    mult = torch.ones(77)
    mult[1:3] = 1.5
    expected = z * mult[:, None]
    expected = expected * (z.mean() / expected.mean())
    assert torch.allclose(weighted.hidden, expected, atol=1e-5)
    assert not torch.allclose(weighted.hidden, base.hidden)


def test_long_prompt_chunks_and_embedding_never_split(engine):
    write_emb(engine.vocabulary.folder / "tenvec.safetensors", vec(10, seed=5))
    words = " ".join(["cat"] * 70)
    enc = engine.encoder()
    tok = enc.tokenizer.tokenize(f"{words} tenvec dog")
    assert len(tok.chunks) == 2
    assert tok.chunks[0].length == 70 and tok.chunks[1].fixes[0].offset == 0 and tok.chunks[1].length == 11
    assert tok.token_count == 81
    cond, _ = enc.encode(f"{words} tenvec dog")
    assert tuple(cond.hidden.shape) == (2 * 77, 32)
    # BREAK starts a new chunk; long negative and short positive still generate (padded)
    assert len(enc.tokenizer.tokenize("a BREAK b").chunks) == 2
    # a negative weight of exactly -1 is a weight, not a BREAK; merged BREAKs stay text (as A1111)
    tok = enc.tokenizer.tokenize("(cat:-1) dog BREAK BREAK x")
    assert tok.chunks[0].multipliers[:2] == [-1.0, 1.0] and tok.token_count >= 3
    r = engine.generate("short", words + " " + words, steps=2, seed=1, size=64)
    assert len(r.images) == 1
    # a comma within 20 tokens of the end moves the tail to the next chunk (A1111 backtrack)
    tok = enc.tokenizer.tokenize(" ".join(["cat"] * 60) + " , " + " ".join(["dog"] * 20))
    assert tok.chunks[0].length == 61 and tok.chunks[1].length == 20


def test_hot_reload_add_replace_delete(engine):
    folder = engine.vocabulary.folder
    first = engine.generate("a hotword", steps=2, seed=7, size=64)
    assert first.used == []
    path = write_emb(folder / "hotword.safetensors", vec(2, seed=10))
    added = engine.generate("a hotword", steps=2, seed=7, size=64)
    assert added.used == ["hotword"] and not np.array_equal(_img(first), _img(added))
    # replace in place (same size, new numbers): seen without a restart
    time.sleep(0.01)
    write_emb(path, vec(2, seed=11))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    replaced = engine.generate("a hotword", steps=2, seed=7, size=64)
    assert replaced.used == ["hotword"] and not np.array_equal(_img(added), _img(replaced))
    path.unlink()
    deleted = engine.generate("a hotword", steps=2, seed=7, size=64)
    assert deleted.used == [] and np.array_equal(_img(first), _img(deleted))
    assert any("removed" in w and "plain text" in w for w in deleted.warnings)


def test_duplicates_unreadable_and_missing_reported_once(engine):
    folder = engine.vocabulary.folder
    write_emb(folder / "dup.safetensors", vec(1))
    write_emb(folder / "other" / "dup.safetensors", vec(1, seed=9))
    (folder / "broken.safetensors").write_bytes(b"\x00garbage" * 10)
    r1 = engine.generate("dup broken", steps=2, seed=1, size=64)
    r2 = engine.generate("dup broken", steps=2, seed=1, size=64)
    assert r1.used == ["dup"]
    assert sum("several files" in w for w in r1.warnings) == 1
    assert sum("cannot be read" in w and "broken" in w for w in r1.warnings) == 1
    assert r2.warnings == []  # reported once
    assert engine.vocabulary.require(["nosuch"]) == ["nosuch"]
    assert "plain text" in engine.vocabulary.take_warnings()[0]


def test_nan_embedding_is_a_clear_error(engine):
    bad = vec(2)
    bad[0, 3] = np.nan
    write_emb(engine.vocabulary.folder / "nanny.safetensors", bad)
    with pytest.raises(EngineError, match="NaN"):
        engine.generate("a nanny", steps=2, seed=1, size=64)


def _texts_per_model_call(engine, prompt, sampler, steps=4):
    unet = engine.model.pipe.unet
    seen = []
    handle = unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        engine.generate(prompt, steps=steps, seed=1, size=64, sampler=sampler)
    finally:
        handle.remove()
    enc = engine.encoder()
    cat, _ = enc.encode("cat")
    dog, _ = enc.encode("dog")
    used = []
    for ehs in seen:  # [prompt, negative], A1111's order
        pos = ehs[0]
        used.append("cat" if torch.allclose(pos, cat.hidden, atol=1e-5) else "dog" if torch.allclose(pos, dog.hidden, atol=1e-5) else "?")
    return used


def test_prompt_editing_switches_conditioning_at_a1111_steps(engine):
    # A1111: steps 0 and 1 (0-based) satisfy step <= 1, then the new text
    assert _texts_per_model_call(engine, "[cat:dog:1]", "Euler") == ["cat", "cat", "dog", "dog"]
    # a fraction: int(0.5 * 4) = 2, so steps 0-2 keep the old text
    assert _texts_per_model_call(engine, "[cat:dog:0.5]", "Euler") == ["cat", "cat", "cat", "dog"]


@pytest.mark.parametrize("sampler", ["Heun", "DPM2 a", "DPM++ 2S a"])
def test_prompt_editing_counts_model_calls_for_second_order_samplers(engine, sampler):
    # A1111 schedules second-order samplers over 2 x steps and counts model calls: 4 steps are
    # 7 calls (the last step is one Euler call); int(0.5 * 8) = 4, so calls 0-4 keep "cat"
    assert _texts_per_model_call(engine, "[cat:dog:0.5]", sampler) == ["cat"] * 5 + ["dog"] * 2
    assert _texts_per_model_call(engine, "[cat:dog:1]", sampler) == ["cat"] * 2 + ["dog"] * 5


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs(engine, name):
    if name not in available():
        with pytest.raises(EngineError, match="needs the optional package"):
            engine.generate("a cat", steps=2, seed=1, size=64, sampler=name)
        return
    steps = 2
    if name == "UniPC":  # A1111's UniPC stops when its order (3) passes the timestep grid's length (2 for 2 steps)
        with pytest.raises(ConfigError, match="UniPC order 3 needs at least 3 steps"):
            engine.generate("a cat", steps=2, seed=1, size=64, sampler=name)
        steps = 3
    r = engine.generate("a cat", steps=steps, seed=1, size=64, sampler=name)
    assert r.images[0].size == (64, 64)
    assert f"Sampler: {name}," in r.infotexts[0]


def test_bad_input(engine, tmp_path):
    with pytest.raises(ConfigError, match="Unknown sampler 'Eulerish'.*Euler a.*DDIM"):
        engine.generate("a", steps=2, size=64, sampler="Eulerish")
    with pytest.raises(ConfigError, match="not a multiple of 8"):
        engine.generate("a", steps=2, size="60x64")
    with pytest.raises(ConfigError):
        parse_size("big")
    assert parse_size("512") == (512, 512) and parse_size("512x768") == (512, 768)
    assert canonical("dpm++ 2m", "Karras") == "DPM++ 2M"
    with pytest.raises(NotFound, match="does not exist"):
        load_model(tmp_path / "nope", device="cpu")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(FormatError, match="could not be loaded"):
        load_model(broken, device="cpu")
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        load_model(broken, device="cpu")
    notmodel = tmp_path / "x.txt"
    notmodel.write_text("hi")
    with pytest.raises(FormatError):
        load_model(notmodel, device="cpu")
    with pytest.raises(ConfigError):
        Settings(steps=0, width=64, height=64).check()


def test_clip_skip_changes_conditioning_and_infotext(engine):
    a, _ = engine.encoder(1).encode("a cat")
    b, _ = engine.encoder(2).encode("a cat")
    assert not torch.allclose(a.hidden, b.hidden)
    r = engine.generate("a cat", steps=2, seed=1, size=64, clip_skip=2)
    assert "Clip skip: 2" in r.infotexts[0]


def test_library_generate_for_previews(sd1, tmp_path):
    # the trainer's call: an in-memory pipe + an in-memory embedding, saved to one file
    emb = Embedding("newthing", {"clip_l": vec(2, seed=8)})
    out = tmp_path / "newthing-10.preview.png"
    before = sd1.pipe.scheduler
    r = generate(pipe=sd1.pipe, prompt="a newthing", embeddings={"newthing": emb}, steps=2, seed=1, size=64, out=out, sampler="DDIM")
    assert r.path == out and out.exists() and r.used == ["newthing"]
    assert sd1.pipe.scheduler is before  # the caller's pipeline is left as it was


def test_tokenizer_never_fails_and_chunks_are_full(engine):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    write_emb(engine.vocabulary.folder / "zz.safetensors", vec(3))
    tok = engine.encoder().tokenizer

    @settings(max_examples=150, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("ab zz()[]:,.-1BREAK")), max_size=200))
    def check(text):
        t = tok.tokenize(text)
        assert t.chunks and all(len(c.tokens) == 75 and len(c.multipliers) == 75 for c in t.chunks)
        for c in t.chunks:
            for f in c.fixes:
                assert f.offset + f.count <= 75  # never split across chunks

    check()


def test_schedule_type_changes_the_image_and_is_recorded(engine):
    auto = engine.generate("a cat", steps=3, seed=4, size=64, sampler="DPM++ 2M")
    expo = engine.generate("a cat", steps=3, seed=4, size=64, sampler="DPM++ 2M", schedule_type="exponential")
    assert not np.array_equal(_img(auto), _img(expo))
    # as A1111 1.9+: "Automatic" runs the sampler's default (Karras for DPM++ 2M) and names it
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7" in auto.infotexts[0]
    assert "Sampler: Euler, Schedule type: Automatic, CFG scale: 7" in engine.generate("a cat", steps=1, seed=4, size=64, sampler="Euler").infotexts[0]
    assert "Sampler: DPM++ 2M, Schedule type: Exponential, CFG scale: 7" in expo.infotexts[0]
    with pytest.raises(ConfigError, match="Sampler DDIM runs on A1111's fixed timestep grid and takes no schedule type"):
        engine.generate("a cat", steps=2, seed=4, size=64, sampler="DDIM", schedule_type="Karras")
