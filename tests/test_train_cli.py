"""`tihub train` end to end through the CLI: outputs, previews, catalogue, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tihub.cli import cli

pytest.importorskip("torch")


def _pictures(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (72, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}-red fox, snow.png")
    (folder / "000-red fox, snow.txt").write_text("a red fox, snow, winter", "utf-8")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


def test_cli_training_run_registers_and_previews(home: Path, tmp_path: Path, tiny_sd1_dir: Path) -> None:
    pics = _pictures(tmp_path / "pics")
    args = ["train", "foxtok", "--images", str(pics), "--model", str(tiny_sd1_dir), "--steps", "6", "--vectors", "2",
            "--save-every", "3", "--preview-every", "3", "--preview-steps", "2", "--flip", "--template", "subject_filewords",
            "--lr", "0.01:3, 0.005", "--device", "cpu"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = res.output
    # the model was hashed through the workspace's hash cache: a later run does not read it again
    from sqlalchemy import text

    from tihub.catalog.db import open_engine, read
    from tihub.config import Workspace

    with read(open_engine(Workspace.locate(str(home), None).db_url)) as conn:
        cached = [r[0] for r in conn.execute(text("SELECT path FROM hash_cache"))]
    assert any(p.startswith(str(tiny_sd1_dir)) for p in cached), cached
    assert f"Run folder: {home / 'train' / 'foxtok'}" in out
    assert "Skipped broken.jpg:" in out
    assert "3 pictures (6 with flips)" in out
    assert "train foxtok: 100% (6/6 step) loss" in out  # the one progress display, a line per 10% off a terminal
    # CUDA graphs are the default where they can run; on the CPU that is silently eager
    assert "CUDA graph" not in out and "Trained foxtok on 3 pictures (6 with flips): 6 steps in " in out
    assert json.loads((home / "train" / "foxtok" / "settings.json").read_text())["cuda_graphs"] == "auto"
    # The progress line shows each step's own loss, the one loss.csv records.
    import csv
    import re

    with (home / "train" / "foxtok" / "loss.csv").open() as fh:
        logged = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}
    shown = {int(m[1]): float(m[2]) for m in re.finditer(r"\((\d+)/6 step\) loss ([0-9.]+)", out)}
    assert shown and all(abs(shown[k] - logged[k]) < 1e-4 for k in shown), (shown, logged)
    emb = home / "embeddings" / "foxtok.safetensors"
    assert emb.is_file()
    run = home / "train" / "foxtok"
    assert sorted(p.name for p in run.glob("foxtok-*.safetensors") if ".optim" not in p.name) == ["foxtok-3.safetensors", "foxtok-6.safetensors"]
    assert (run / "loss.csv").is_file() and (run / "loss.png").is_file() and (run / "settings.json").is_file()
    previews = sorted(run.glob("foxtok-*.preview.png"))
    assert [p.name for p in previews] == ["foxtok-3.preview.png", "foxtok-6.preview.png"]
    info = Image.open(previews[0]).text.get("parameters", "")
    assert "foxtok" in info and "Steps: 2" in info

    # the model hash is the one `tihub hash` reports
    h = CliRunner().invoke(cli, ["hash", str(tiny_sd1_dir), "--json"], catch_exceptions=False)
    assert h.exit_code == 0, h.output
    reported = json.loads(h.output)[0]["autov2"]
    assert f"model hash {reported}" in out
    from safetensors import safe_open

    with safe_open(str(emb), framework="pt") as f:
        meta = f.metadata()
    assert meta["sd_checkpoint"] == reported and meta["name"] == "foxtok" and meta["step"] == "6"

    # the catalogue knows the run
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace

    cat = Catalog.open(Workspace.locate(str(home), None))
    entry = cat.entry("foxtok")
    dumped = json.dumps(entry, default=str)
    assert "loss.csv" in dumped and "foxtok-3.preview.png" in dumped
    # and `tihub show` tells the run's story: what was trained how, how the loss went, where things are
    shown = CliRunner().invoke(cli, ["show", "foxtok"], catch_exceptions=False).output
    story = shown[shown.index("Training runs:"):]
    assert "  6 steps, 3 pictures (6 with flips), " in story
    assert "    settings:    2 vectors, init '*', lr 0.01:3, 0.005, batch 1, template subject_filewords, seed 0, precision auto" in story
    first = next(r for r in csv.DictReader((run / "loss.csv").open()) if r["step"] == "1")
    assert f"    loss:        {float(first['loss']):.4f} at step 1 -> " in story and f"at the end; plot {run / 'loss.png'}, log {run / 'loss.csv'}" in story
    assert f"    checkpoints: 2 (steps 3, 6) in {run}" in story
    assert str(previews[0]) in shown[shown.index("Previews:"):]

    # a second run with the same name is refused before any work; --overwrite replaces it
    res2 = CliRunner().invoke(cli, args)
    assert res2.exit_code == 1 and "already exists" in res2.output
    res3 = CliRunner().invoke(cli, [*args[:-2], "--steps", "2", "--save-every", "0", "--preview-every", "0", "--overwrite", "--json", "--device", "cpu", "--cuda-graphs"])
    assert res3.exit_code == 0, res3.output
    assert "CUDA graphs need a CUDA device, not cpu; training runs eagerly." in res3.output  # asked for: a note
    [data] = json.loads(res3.stdout)
    assert data["steps"] == 2 and data["path"] == str(emb) and data["steps_from"] == "eager" and data["ok"] is True
    assert [Path(p).name for p in data["checkpoints"]] == ["foxtok-2.safetensors"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--vectors", "76"], "--vectors 76 is out of range"),
        (["--lr", "0.1:abc"], "not a valid schedule"),
        (["--size", "100x7"], "--size"),
        (["--tag-dropout", "1.5"], "--tag-dropout"),
        (["--template", "nonsense"], "--template"),
    ],
)
def test_cli_refusals_are_one_line(home: Path, tmp_path: Path, tiny_sd1_dir: Path, extra: list[str], message: str) -> None:
    pics = _pictures(tmp_path / "pics")
    res = CliRunner().invoke(cli, ["train", "foxtok", "--images", str(pics), "--model", str(tiny_sd1_dir), *extra])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    assert not (home / "train").exists()


def test_cli_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, tihub.cli.train; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_grid_name_x_checkpoints_compares_a_runs_checkpoints(home: Path, tmp_path: Path) -> None:
    """The issue's `tihub grid NAME --x checkpoints` after a `tihub train` run with checkpoints."""
    from tihub.infotext import read_infotext
    from tihub.engine.tiny import tiny_sd1_pipeline

    model = tmp_path / "sd1-768"  # real CLIP-L width, so the checkpoints pass tihub's reader
    tiny_sd1_pipeline(text_width=768).save_pretrained(model)
    pics = _pictures(tmp_path / "pics")
    res = CliRunner().invoke(cli, ["train", "foxtok", "--images", str(pics), "--model", str(model), "--steps", "4", "--save-every", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    grid = ["grid", "foxtok", "--model", str(model), "--steps", "2", "--size", "64", "--seed", "5", "--device", "cpu", "--json"]
    res = CliRunner().invoke(cli, [*grid, "--x", "checkpoints"])
    assert res.exit_code == 0, res.output
    [data] = json.loads(res.stdout)
    assert len(data["cells"]) == 3 and data["pipeline_calls"] == 1
    prompts = [read_infotext(Path(p)).prompt for p in data["cells"]]
    assert prompts == ["foxtok-2", "foxtok-4", "foxtok"]  # by step, the final embedding last
    images = [np.asarray(Image.open(p)) for p in data["cells"]]
    assert not np.array_equal(images[0], images[1])
    # without NAME, a bare checkpoints axis is refused in one sentence
    res = CliRunner().invoke(cli, ["grid", "--model", str(model), "--x", "checkpoints"])
    assert res.exit_code != 0 and res.output.strip().splitlines() == [
        "Error: Axis 'checkpoints' needs the embedding whose checkpoints it compares: give its NAME (tihub grid NAME --x checkpoints) or write checkpoint:NAME."
    ]
