"""X/Y/Z grids: axis parsing, batching into few pipeline calls, layout and labels, previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from engine_helpers import engine_on, tiny_reader, vec, write_emb  # noqa: E402

from tihub.engine.generate import Engine, Settings  # noqa: E402
from tihub.engine.grid import build_cells, checkpoint_files, draw_grid, make_grid, parse_axis, preview_kind, standard_preview  # noqa: E402
from tihub.engine.models import load_model  # noqa: E402
from tihub.errors import ConfigError  # noqa: E402
from tihub.infotext import read_infotext  # noqa: E402


@pytest.fixture
def engine(sd1, tmp_path):
    return engine_on(sd1, tmp_path)


def test_parse_axis():
    assert parse_axis("steps:10-30 (+10)").values == ["10", "20", "30"]
    assert parse_axis("seed: 1-3").values == ["1", "2", "3"]
    assert parse_axis('prompt:cat,"dog, running",bird').values == ["cat", "dog, running", "bird"]
    assert parse_axis("sampler:euler a,ddim").values == ["Euler a", "DDIM"]
    assert parse_axis("emb:a,b").kind == "embedding"
    with pytest.raises(ConfigError, match="KIND one of"):
        parse_axis("colour:red")
    with pytest.raises(ConfigError, match="Unknown sampler"):
        parse_axis("sampler:nope")
    with pytest.raises(ConfigError, match="no values"):
        parse_axis("steps:")


def test_cells_prompt_sr_and_embedding_placement():
    cells, labels = build_cells("a {emb} in a forest", "", Settings(steps=2, width=64, height=64), 5, [parse_axis("embedding:cat1,cat2"), parse_axis("prompt:forest,city")])
    assert labels == [["cat1", "cat2"], ["forest", "city"], []]
    assert [c.prompt for c in cells] == ["a cat1 in a forest", "a cat2 in a forest", "a cat1 in a city", "a cat2 in a city"]
    cells, _ = build_cells("a photo", "", Settings(width=64, height=64), 5, [parse_axis("embedding:x")])
    assert cells[0].prompt == "a photo, x"
    with pytest.raises(ConfigError, match="multiple of 8"):
        build_cells("p", "", Settings(width=64, height=64), 1, [parse_axis("size:64,70")])


def test_grid_is_batched_and_laid_out_with_labels(engine, tmp_path):
    axes = [parse_axis("seed:1,2,3,4"), parse_axis("prompt:cat,dog"), parse_axis("cfg:5,7")]
    r = make_grid(lambda _m: engine, "a cat", "", axes, Settings(steps=2, width=64, height=64), out=tmp_path / "g", batch=16)
    assert len(r.cells) == 16
    assert r.calls == 2  # one pipeline call per CFG value, 8 cells each
    w, h = r.image.size
    sub_w = (w - 16) // 2  # two Z sub-grids side by side
    assert sub_w > 4 * 64 and h > 2 * 64
    # each cell image sits at the bottom-right of its sub-grid, row by row
    img = np.asarray(r.image)
    left, top = sub_w - 4 * 64, h - 2 * 64
    for c in r.cells:
        x0 = c.z * (sub_w + 16) + left + c.x * 64
        y0 = top + c.y * 64
        assert np.array_equal(img[y0:y0 + 64, x0:x0 + 64], np.asarray(c.image))
    # labels: dark pixels in the top band and the left band, white elsewhere outside cells
    assert (img[:top, left:sub_w] < 128).any() and (img[top:, :left] < 128).any()
    # the cells of a batched grid are the images one-by-one generation makes
    single = engine.generate("a dog", steps=2, seed=3, size=64, cfg_scale=7)
    cell = next(c for c in r.cells if (c.x, c.y, c.z) == (2, 1, 1))
    assert np.abs(np.asarray(single.images[0]).astype(int) - np.asarray(cell.image)).max() <= 2
    info = read_infotext(r.path)
    assert info.parameters["X Type"] == "Seed" and info.parameters["X Values"] == "1, 2, 3, 4"
    assert info.parameters["Z Type"] == "CFG Scale" and len(r.cell_paths) == 16
    # the grid's infotext is the first cell's (prompt and parameters) plus the script's keys
    assert info.prompt == "a cat" and info.parameters["Script"] == "X/Y/Z plot"
    assert info.parameters["Steps"] == "2" and info.parameters["Seed"] == "1" and info.parameters["Size"] == "64x64"
    assert read_infotext(r.cell_paths[5]).parameters["Seed"] == "2"


def test_draw_grid_wraps_long_labels():
    from PIL import Image

    cells = [[Image.new("RGB", (64, 64), "red")] * 2]
    g = draw_grid(cells, ["short", "a much longer label that needs wrapping over lines"], ["row"])
    assert g.size[0] > 128 and g.size[1] > 64


def test_a_word_wider_than_its_cell_is_drawn_smaller_not_over_its_neighbour():
    from PIL import Image

    cells = [[Image.new("RGB", (64, 64), "red")] * 2]
    g = draw_grid(cells, ["demo-trained-embedding", ""], [])
    band = g.crop((64, 0, 128, g.size[1] - 64)).convert("L")  # the empty second column's label band
    assert band.getextrema()[0] == 255, "the first label's ink ran into the next column"
    first = g.crop((0, 0, 64, g.size[1] - 64)).convert("L")
    assert first.getextrema()[0] < 128, "the first label was not drawn"


def test_checkpoint_axis(engine, tmp_path):
    folder = tmp_path / "train" / "run1"
    for step, seed in ((500, 1), (1000, 2)):
        write_emb(folder / f"ck-{step}.safetensors", vec(2, seed=seed))
    write_emb(tmp_path / "embeddings" / "ck.safetensors", vec(2, seed=3))
    found = checkpoint_files("ck", [tmp_path / "embeddings", tmp_path / "train"])
    assert [label for label, _ in found] == ["ck-500", "ck-1000", "ck"]
    r = make_grid(lambda _m: engine, "a photo of ck", "", [parse_axis("checkpoint:ck")], Settings(steps=2, width=64, height=64), seed=1,
                  checkpoint_folders=[tmp_path / "embeddings", tmp_path / "train"], reader=tiny_reader)
    assert [c.prompt for c in r.cells] == ["a photo of ck-500", "a photo of ck-1000", "a photo of ck"]
    assert r.calls == 1
    imgs = [np.asarray(c.image) for c in r.cells]
    assert not np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[1], imgs[2])
    assert "ck-500: " in r.cells[0].infotext or "TI hashes" not in r.cells[0].infotext
    with pytest.raises(ConfigError, match="No training checkpoints"):
        checkpoint_files("nothing", [tmp_path])


def test_standard_preview_by_kind(engine, tmp_path):
    write_emb(engine.vocabulary.folder / "thing.safetensors", vec(2))
    r = standard_preview(engine, "thing", "object", steps=2, size=64, out=tmp_path / "p")
    assert len(r.cells) == 6 and r.calls == 1 and r.path.exists()
    assert all("thing" in c.prompt for c in r.cells)
    write_emb(engine.vocabulary.folder / "badstuff.safetensors", vec(2, seed=4))
    neg = standard_preview(engine, "badstuff", None, steps=2, size=64)
    assert preview_kind(None, "badstuff") == "negative" and preview_kind("Style", "x") == "style"
    assert [c.negative for c in neg.cells[:2]] == ["", "badstuff"]
    assert neg.calls == 1


def test_model_axis_loads_each_model_once(tiny_sd1_dir, tiny_sdxl_dir, tmp_path):
    loaded: dict = {}

    def engine_for(m):
        if m not in loaded:
            loaded[m] = Engine(load_model(m, device="cpu", compute_hash=False))
        return loaded[m]

    axis = parse_axis(f"model:{tiny_sd1_dir},{tiny_sdxl_dir}")
    r = make_grid(engine_for, "a cat", "", [axis, parse_axis("seed:1,2")], Settings(steps=1, width=64, height=64))
    assert r.calls == 2 and len(loaded) == 2
    assert {loaded[str(tiny_sd1_dir)].model.family, loaded[str(tiny_sdxl_dir)].model.family} == {"sd1", "sdxl"}
    assert "Model: tiny-sdxl" in next(c for c in r.cells if c.x == 1).infotext
