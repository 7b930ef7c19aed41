"""Conditioning as A1111 builds it: comma backtrack order, schedule-batch weight normalisation,
AND (composable diffusion), "Pad conds", and images that do not depend on their batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import engine_on, vec, write_emb  # noqa: E402

from tihub.engine.conditioning import BatchConds, Row  # noqa: E402
from tihub.engine.generate import Settings  # noqa: E402
from tihub.engine.prompts import split_and  # noqa: E402


@pytest.fixture
def engine(sd1, tmp_path):
    return engine_on(sd1, tmp_path)


def _img(image):
    return np.asarray(image).astype(np.int16)


# -- 1. comma backtrack before the embedding lookup ------------------------------------------


def test_comma_backtrack_comes_before_the_embedding(engine):
    write_emb(engine.vocabulary.folder / "octo.safetensors", vec(8, seed=1))
    tok = engine.encoder().tokenizer.tokenize("y " * 70 + ", aa bb cc dd octo")
    # A1111: 70 y + comma fill 71, then "aa bb cc dd" moves on with the 8 vectors: 71 + 12
    assert [c.length for c in tok.chunks] == [71, 12]
    assert tok.chunks[1].fixes[0].offset == 4 and tok.used == ["octo"]


def test_backtracked_embedding_keeps_its_fix_in_the_full_chunk(engine):
    # A1111 moves the tokens after the comma but leaves their embedding fix behind: the vectors
    # land in the full chunk's padding and the next chunk holds the placeholder ids
    write_emb(engine.vocabulary.folder / "tri.safetensors", vec(3, seed=2))
    tok = engine.encoder().tokenizer.tokenize("y " * 70 + ", tri aa bb")
    first, second = tok.chunks
    assert first.length == 71 and [f.offset for f in first.fixes] == [71]
    assert second.fixes == [] and second.tokens[:3] == [0, 0, 0] and second.length == 5


def test_comma_backtrack_without_embeddings_unchanged(engine):
    tok = engine.encoder().tokenizer.tokenize(" ".join(["cat"] * 60) + " , " + " ".join(["dog"] * 20))
    assert [c.length for c in tok.chunks] == [61, 20]
    tok = engine.encoder().tokenizer.tokenize(" ".join(["cat"] * 50) + " , " + " ".join(["dog"] * 30))
    assert [c.length for c in tok.chunks] == [75, 6]  # comma more than 20 tokens back: no backtrack


# -- 2. the texts of one editing schedule share the weight-normalising mean --------------------


def test_schedule_texts_are_normalised_over_their_batch(engine):
    enc = engine.encoder()
    weighted, plain = "(a:1.5) cat", "a dog"
    conds, _ = enc.encode_batch([weighted, plain])
    raw_w, _ = enc.encode("a cat")  # same tokens, no weights
    raw_p, _ = enc.encode(plain)
    z = torch.stack([raw_w.hidden, raw_p.hidden])
    mult = torch.ones(2, 77)
    mult[0, 1] = 1.5
    expected = z * mult[..., None]
    expected = expected * (z.mean() / expected.mean())
    assert torch.allclose(conds[0].hidden, expected[0], atol=1e-5)
    assert torch.allclose(conds[1].hidden, expected[1], atol=1e-5)
    # encoded alone the weighted text normalises over itself: a different tensor
    alone, _ = enc.encode(weighted)
    assert (alone.hidden - conds[0].hidden).abs().max() > 1e-4
    # the engine encodes a prompt's schedule in one batch
    bc = BatchConds.build(enc, ["[(a:1.5) cat:a dog:2]"], [""], 4)
    sched = bc.images[0].parts[0].schedule
    assert [s.text for s in sched] == [weighted, plain] and [s.end for s in sched] == [2, 4]
    assert torch.allclose(sched[0].cond.hidden, conds[0].hidden, atol=1e-6)


def test_schedule_texts_get_the_same_chunk_count(engine):
    enc = engine.encoder()
    long = " ".join(["cat"] * 80)
    conds, toks = enc.encode_batch(["short", long])
    assert [len(t.chunks) for t in toks] == [1, 2]
    assert conds[0].hidden.shape == conds[1].hidden.shape == (154, 32)
    # the short text's second chunk is an encoded empty chunk
    empty, _ = enc.encode("")
    assert torch.allclose(conds[0].hidden[77:], empty.hidden, atol=1e-5)


# -- 3. padding: prompt and negative only with Pad conds; never across images --------------------


def test_prompt_and_negative_are_not_padded_by_default(engine):
    enc = engine.encoder()
    long = " ".join(["bad"] * 80)
    pos, neg = BatchConds.build(enc, ["a cat"], [long], 3).rows(0)
    assert pos[0].hidden.shape[0] == 77 and neg[0].hidden.shape[0] == 154
    bc = BatchConds.build(enc, ["a cat"], [long], 3, pad_conds=True)
    pos, neg = bc.rows(0)
    empty, _ = enc.encode("")
    assert pos[0].hidden.shape[0] == neg[0].hidden.shape[0] == 154 and bc.padded
    assert torch.allclose(pos[0].hidden[77:], empty.hidden)


def test_pad_conds_changes_the_picture_and_is_in_infotext(engine):
    long = " ".join(["bad"] * 80)
    plain = engine.generate("a cat", long, steps=2, seed=5, size=64)
    padded = engine.generate("a cat", long, steps=2, seed=5, size=64, pad_conds=True)
    assert not np.array_equal(_img(plain.images[0]), _img(padded.images[0]))
    assert "Pad conds: True" in padded.infotexts[0] and "Pad conds" not in plain.infotexts[0]


def test_an_image_does_not_depend_on_its_batch(engine):
    write_emb(engine.vocabulary.folder / "quad.safetensors", vec(4, seed=3))
    long = "a castle, " + " ".join(["stone"] * 90)
    s = Settings(steps=2, width=64, height=64)
    batch, _ = engine.run(["a cat", long, "quad dog AND a tree:0.5"], ["", "blurry", "quad"], [11, 12, 13], s)
    for i, (p, n, seed) in enumerate([("a cat", "", 11), (long, "blurry", 12), ("quad dog AND a tree:0.5", "quad", 13)]):
        alone, _ = engine.run([p], [n], [seed], s)
        assert np.array_equal(_img(batch[i]), _img(alone[0])), i


def test_grid_cell_equals_the_image_generated_alone(engine):
    from tihub.engine.grid import make_grid, parse_axis

    long = " ".join(["tower"] * 80)
    r = make_grid(lambda _m: engine, "a cat", "", [parse_axis(f"prompt:a cat,{long}"), parse_axis("seed:1,2")], Settings(steps=2, width=64, height=64))
    assert r.calls == 1
    for cell in r.cells:
        alone = engine.generate(cell.prompt, steps=2, seed=cell.seed, size=64)
        assert np.array_equal(_img(alone.images[0]), _img(cell.image)), (cell.x, cell.y)


# -- 4. AND ---------------------------------------------------------------------------------------


def test_split_and_as_a1111():
    assert split_and("a cat AND a dog:0.5") == [("a cat", 1.0), (" a dog", 0.5)]
    assert split_and("a (b:1.2) AND c :  -2 ") == [("a (b:1.2)", 1.0), (" c", -2.0)]
    assert split_and("ANDROID") == [("ANDROID", 1.0)]
    assert split_and("x:1.5") == [("x", 1.5)]
    assert split_and("") == [("", 1.0)]


def test_combine_is_a1111s_weighted_sum():
    u = [torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])]
    pos = [Row(0, None, None, 1.0), Row(0, None, None, 0.5), Row(1, None, None, -1.0)]
    outs = [torch.tensor([3.0, 2.0]), torch.tensor([1.0, 6.0]), torch.tensor([1.0, 1.0])]
    got = BatchConds.combine(pos, outs, u, 7.0)
    assert torch.allclose(got[0], torch.tensor([1 + 2 * 7 + 0, 2 + 0 + 4 * 0.5 * 7]))
    assert torch.allclose(got[1], torch.tensor([-7.0, -7.0]))


def test_guide_runs_equal_lengths_together_and_combines(engine):
    enc = engine.encoder()
    long = " ".join(["dog"] * 80)
    bc = BatchConds.build(enc, ["cat AND " + long + ":0.5", "cat"], ["", ""], 3)
    calls = []

    def forward(x, idx, hidden, pooled):
        calls.append((list(idx), hidden.shape[1]))
        return x * 0 + hidden.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    x = torch.zeros(2, 4, 8, 8)
    out = bc.guide(0, x, forward, 7.0)
    # AND parts of image 0 are padded to its longest part (2 chunks, last vector repeated),
    # image 1 keeps one chunk: two forwards, by length
    assert sorted(calls) == [([0], 154), ([0, 0, 1, 1], 77)] or sorted(calls) == [([0, 1, 0, 1], 77), ([0], 154)] or len(calls) == 2
    pos, neg = bc.rows(0)
    assert [r.hidden.shape[0] for r in pos] == [154, 154, 77]
    assert torch.equal(pos[0].hidden[77:], pos[0].hidden[76:77].repeat(77, 1))
    m = [r.hidden.mean() for r in pos]
    u = [r.hidden.mean() for r in neg]
    assert torch.allclose(out[0].flatten()[0], u[0] + (m[0] - u[0]) * 7 + (m[1] - u[0]) * 3.5, atol=1e-5)
    assert torch.allclose(out[1].flatten()[0], u[1] + (m[2] - u[1]) * 7, atol=1e-5)


def test_and_with_halves_equals_the_plain_prompt(engine):
    plain = engine.generate("a cat", steps=2, seed=9, size=64)
    halves = engine.generate("a cat :0.5 AND a cat:0.5", steps=2, seed=9, size=64)
    zero = engine.generate("a cat AND a dog:0", steps=2, seed=9, size=64)
    other = engine.generate("a cat AND a dog", steps=2, seed=9, size=64)
    assert np.abs(_img(plain.images[0]) - _img(halves.images[0])).max() <= 1
    assert np.abs(_img(plain.images[0]) - _img(zero.images[0])).max() <= 1
    assert not np.array_equal(_img(plain.images[0]), _img(other.images[0]))


def test_and_works_without_guidance(engine):
    r = engine.generate("a cat AND a dog:0.7", steps=2, seed=9, size=64, cfg_scale=1.0)
    assert r.images[0].size == (64, 64)


def test_sdxl_empty_negative_is_zeros(tiny_sdxl_dir, tmp_path):
    from tihub.engine.models import load_model

    eng = engine_on(load_model(tiny_sdxl_dir, device="cpu"), tmp_path)
    bc = BatchConds.build(eng.encoder(), ["a cat"], [""], 2)
    _, neg = bc.rows(0)
    assert float(neg[0].hidden.abs().max()) == 0.0 and float(neg[0].pooled.abs().max()) == 0.0
    bc = BatchConds.build(eng.encoder(), [""], ["x"], 2)
    pos, neg = bc.rows(0)
    assert float(pos[0].hidden.abs().max()) > 0 and float(neg[0].hidden.abs().max()) > 0


def test_conds_at_is_one_object_per_schedule_entry(engine):
    enc = engine.encoder()
    bc = BatchConds.build(enc, ["[cat:dog:1] AND a hat:0.5", "a cat"], ["", "blurry"], 4)
    first, again, later = bc.conds_at(0), bc.conds_at(1), bc.conds_at(2)
    assert first is again and later is not first and bc.conds_at(99) is later
    assert [[w for _, w in parts] for parts in first.positive] == [[1.0, 0.5], [1.0]]
    cat, _ = enc.encode_batch(["cat", "dog"])
    assert torch.allclose(first.positive[0][0][0].hidden, cat[0].hidden)
    assert torch.allclose(later.positive[0][0][0].hidden, cat[1].hidden)
    assert len(first.negative) == 2 and first.negative[0].hidden.shape == (77, 32)


def test_sdxl_image_does_not_depend_on_its_batch(tiny_sdxl_dir, tmp_path):
    from tihub.engine.models import load_model

    eng = engine_on(load_model(tiny_sdxl_dir, device="cpu"), tmp_path)
    long = " ".join(["tower"] * 80)
    s = Settings(steps=2, width=64, height=64)
    batch, _ = eng.run(["a cat AND a hat:0.5", long], ["", "blurry"], [1, 2], s)
    for i, (p, n, seed) in enumerate([("a cat AND a hat:0.5", "", 1), (long, "blurry", 2)]):
        alone, _ = eng.run([p], [n], [seed], s)
        assert np.array_equal(_img(batch[i]), _img(alone[0])), i


def test_plan_reports_the_chunk_layout(engine):
    bc = BatchConds.build(engine.encoder(), ["[cat:dog:1] AND " + " ".join(["hat"] * 80) + ":0.5"], ["blurry"], 4)
    (img,) = bc.plan()
    assert [p["weight"] for p in img["parts"]] == [1.0, 0.5]
    assert [(t["text"], t["until_call"], t["tokens"]) for t in img["parts"][0]["texts"]] == [("cat", 1, 77), ("dog", 4, 77)]
    assert img["parts"][1]["texts"][0]["tokens"] == 154 and img["negative"][0]["text"] == "blurry"


def test_generate_plan_reports_where_the_comma_backtrack_cut(engine):
    # the 71+12 case: the comma within the last 20 tokens moves "aa bb cc dd octo" (4 + 8 vectors)
    write_emb(engine.vocabulary.folder / "octo.safetensors", vec(8, seed=1))
    prompt = "y " * 70 + ", aa bb cc dd octo"
    result = engine.generate(prompt, "blurry", steps=1, size=64, seed=3)
    (img,) = result.plans[0].to_json()["chunks"]
    assert img["encoders"] == ["clip_l"]
    (text,) = img["parts"][0]["texts"]
    assert (text["chunks"], text["chunk_tokens"], text["boundaries"], text["cuts"]) == (2, [71, 12], [71], ["comma", "end"])
    assert text["ends_with"] == ["y y ,", "cc dd octo"] and text["tokens"] == 154
    (neg,) = img["negative"]
    assert (neg["text"], neg["chunks"], neg["chunk_tokens"], neg["boundaries"], neg["cuts"]) == ("blurry", 1, [1], [], ["end"])
    # 75 tokens without a comma near the end: cut because full; BREAK: cut there
    tok = engine.encoder().tokenizer
    assert tok.layout(tok.tokenize("z " * 80))["cuts"] == ["full", "end"]
    assert tok.layout(tok.tokenize("a cat BREAK a hat")) | {"ends_with": None} == {
        "chunks": 2, "chunk_tokens": [2, 2], "boundaries": [2], "cuts": ["BREAK", "end"], "ends_with": None}


def test_an_embedding_only_in_the_hires_prompt_is_used_and_hashed(engine):
    from tihub.engine.sampling.hires import Hires

    write_emb(engine.vocabulary.folder / "octo.safetensors", vec(2, seed=4))
    r = engine.generate("a cat", steps=1, size=64, seed=2, hires=Hires(scale=1.5, steps=1, denoising=0.5, prompt="a octo cat"))
    assert r.used == ["octo"] and "TI hashes: \"octo: " in r.infotexts[0]
    texts = r.plans[0].hires["plan"]["chunks"][0]["parts"][0]["texts"]
    assert texts[0]["ends_with"] == ["a octo cat"]


def test_sdxl_plan_names_both_encoders(tiny_sdxl_dir, tmp_path):
    from tihub.engine.models import load_model

    eng = engine_on(load_model(tiny_sdxl_dir, device="cpu"), tmp_path)
    bc = BatchConds.build(eng.encoder(), ["y " * 70 + ", aa bb cc dd ee"], [""], 2)
    (img,) = bc.plan()
    assert img["encoders"] == ["clip_l", "clip_g"]
    assert img["parts"][0]["texts"][0]["chunk_tokens"] == [71, 5] and img["parts"][0]["texts"][0]["cuts"] == ["comma", "end"]
