"""Training data: templates, captions, prompts, picture loading, flips and batches."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tihub.engine.train_data import (
    BatchPlan,
    caption_for,
    epoch_batches,
    load_pictures,
    load_template,
    make_prompt,
    prompts_for,
)
from tihub.errors import ConfigError


def _png(path: Path, w: int = 64, h: int = 64, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(h, w, len(mode)), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def _bomb_png(path: Path, w: int = 30000, h: int = 30000) -> Path:
    """A PNG header claiming a huge size (no decoder ever needs to run)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return path


def test_builtin_templates_all_use_name() -> None:
    for name in ("subject", "style", "subject_filewords", "style_filewords"):
        lines = load_template(name)
        assert len(lines) >= 8 and all("[name]" in line for line in lines)
    assert all("[filewords]" in line for line in load_template("style_filewords"))
    assert not any("[filewords]" in line for line in load_template("subject"))


def test_template_file_and_bad_templates(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("a [name] made of [filewords]\n\n  a [name]  \n", "utf-8")
    assert load_template(str(f)) == ["a [name] made of [filewords]", "a [name]"]
    f.write_text("no placeholder here\n", "utf-8")
    with pytest.raises(ConfigError, match=r"\[name\]"):
        load_template(str(f))
    with pytest.raises(ConfigError, match="--template"):
        load_template(str(tmp_path / "missing.txt"))
    f.write_text("\n\n", "utf-8")
    with pytest.raises(ConfigError, match="no prompt lines"):
        load_template(str(f))


def test_captions_from_txt_or_file_name(tmp_path: Path) -> None:
    a = _png(tmp_path / "00012-red fox, snow.png")
    b = _png(tmp_path / "cat.png")
    (tmp_path / "cat.txt").write_text("a  tabby cat,\n sitting", "utf-8")
    assert caption_for(a) == "red fox, snow"
    assert caption_for(b) == "a tabby cat, sitting"


def test_make_prompt_fills_name_and_filewords() -> None:
    assert make_prompt("a photo of a [name], [filewords]", "mytok", "red,fox") == "a photo of a mytok, red,fox"
    assert make_prompt("art by [name]", "mytok", "ignored") == "art by mytok"
    # dropout 1.0 drops every tag; shuffle permutes the tags
    assert make_prompt("[filewords] by [name]", "t", "a,b,c", tag_dropout=1.0) == " by t"
    seen = {make_prompt("[filewords]", "t", "a,b,c,d", shuffle_tags=True, rng=random.Random(s)) for s in range(20)}
    assert len(seen) > 1 and all(sorted(s.split(",")) == ["a", "b", "c", "d"] for s in seen)
    kept = [make_prompt("[filewords]", "t", ",".join("abcdefghij"), tag_dropout=0.5, rng=random.Random(s)) for s in range(50)]
    assert 0 < np.mean([len(k.split(",")) for k in kept if k]) < 10


def test_load_pictures_skips_bad_files_and_flips(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 80, 64, 1)
    _png(tmp_path / "b.png", 64, 96, 2, mode="RGBA")
    Image.fromarray(np.full((70, 70, 3), 128, np.uint8)).save(tmp_path / "c.jpg")
    Image.fromarray(np.full((70, 70, 3), 128, np.uint8)).save(tmp_path / "d.webp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _png(tmp_path / "tiny.png", 8, 8)
    _bomb_png(tmp_path / "bomb.png")
    (tmp_path / "notes.md").write_text("ignored")
    ps = load_pictures(tmp_path, (64, 64), flip=True)
    assert ps.originals == 4 and len(ps.pictures) == 8
    assert ps.describe() == "4 pictures (8 with flips)"
    assert all(p.pixels.shape == (64, 64, 3) for p in ps.pictures)
    assert sorted(s.split(":")[0] for s in ps.skipped) == ["Skipped bomb.png", "Skipped broken.png", "Skipped tiny.png"]
    assert any("decompression bomb" in s for s in ps.skipped)
    a, a_flip = ps.pictures[0], ps.pictures[4]
    assert a_flip.flipped and np.array_equal(a_flip.pixels, a.pixels[:, ::-1])
    b = ps.pictures[1]
    assert b.alpha is not None and b.alpha.shape == (64, 64)
    assert ps.pictures[0].original_size == (64, 80)


def test_no_resize_keeps_sizes_rounded_to_8(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 83, 64)
    ps = load_pictures(tmp_path, None)
    assert ps.pictures[0].size == (80, 64) and ps.describe() == "1 picture"


def test_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable pictures"):
        load_pictures(tmp_path, (64, 64))
    _png(tmp_path / "tiny.png", 8, 8)
    with pytest.raises(ConfigError, match="1 files could not be used"):
        load_pictures(tmp_path, (64, 64))
    with pytest.raises(ConfigError, match="not a folder"):
        load_pictures(tmp_path / "nope", (64, 64))


def test_batches_group_sizes_and_are_reproducible() -> None:
    sizes = [(64, 64)] * 5 + [(64, 96)] * 3
    batches = epoch_batches(sizes, 2, seed=7, epoch=0)
    assert all(len(b) == 2 for b in batches)
    assert all(len({sizes[i] for i in b}) == 1 for b in batches)
    assert {i for b in batches for i in b} == set(range(8))
    assert batches == epoch_batches(sizes, 2, seed=7, epoch=0)
    assert batches != epoch_batches(sizes, 2, seed=7, epoch=1) or batches != epoch_batches(sizes, 2, seed=8, epoch=0)
    plan = BatchPlan(sizes, 2, 7)
    assert plan.per_epoch == len(batches)
    assert plan.batch(plan.per_epoch + 1)[:2] == (1, 1)


def test_prompts_are_a_function_of_seed_and_step(tmp_path: Path) -> None:
    _png(tmp_path / "red fox.png")
    ps = load_pictures(tmp_path, (64, 64))
    lines = load_template("subject_filewords")
    p1 = prompts_for(ps.pictures, [0, 0], lines, 3, 10, True, 0.0, name="zz")
    assert p1 == prompts_for(ps.pictures, [0, 0], lines, 3, 10, True, 0.0, name="zz")
    assert all(p.endswith(", red fox") and "zz" in p for p in p1)
