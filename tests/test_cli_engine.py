"""The engine's commands end to end: prompt, generate, png-info, grid, verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tihub.cli import cli


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _emb768(home: Path, name: str, n: int = 2) -> Path:
    from safetensors.numpy import save_file

    path = home / "embeddings" / f"{name}.safetensors"
    save_file({"emb_params": np.full((n, 768), 0.01, dtype=np.float32)}, str(path))
    return path


def test_cli_engine_module_does_not_import_torch():
    code = "import sys, tihub.cli.engine; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompt_json_without_model(home):
    _emb768(home, "mystyle", 3)
    code, out, _ = run("prompt", "a (mystyle:1.1), ((cat)) [dog] [x:y:0.5] BREAK z", "--steps", "10", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["schedule"] == [[5, "a (mystyle:1.1), ((cat)) [dog] x BREAK z"], [10, "a (mystyle:1.1), ((cat)) [dog] y BREAK z"]]
    assert info["attention"] == [["a ", 1.0], ["mystyle", 1.1], [", ", 1.0], ["cat", 1.2100000000000002], [" ", 1.0], ["dog", 0.9090909090909091], [" y", 1.0], ["BREAK", -1], ["z", 1.0]]
    assert info["chunks"] == 2 and info["tokens"] == 1 + 3 + 1 + 1 + 1 + 1 + 1
    assert info["ok"] is True and info["embeddings"] == [{"name": "mystyle", "path": str(home / "embeddings" / "mystyle.safetensors"), "vectors": 3, "widths": {"clip_l": 768}}]
    code, out, _ = run("prompt", "a cat")
    assert code == 0 and "Embeddings: none" in out and "Tokens: 2" in out


def test_png_info_one_many_and_lookalikes(home, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from tihub.infotext import pnginfo_chunk

    a = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(a, pnginfo=pnginfo_chunk('cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler, Seed: 3, TI hashes: "x: 0123456789ab"'))
    code, out, _ = run("png-info", str(a), "--json")
    assert code == 0
    [rec] = json.loads(out)  # a list, even for one file
    assert rec["ok"] is True and rec["path"] == str(a)
    assert rec["prompt"] == "cat" and rec["negative_prompt"] == "dog"
    assert rec["parameters"] == {"Steps": "5", "Sampler": "Euler", "Seed": "3", "TI hashes": "x: 0123456789ab"}
    c = tmp_path / "comfy.png"
    info = PngInfo()
    info.add_text("prompt", '{"1": {}}')
    Image.new("RGB", (8, 8)).save(c, pnginfo=info)
    code, out, err = run("png-info", str(a), str(c), "--json")
    assert code == 1
    recs = json.loads(out)
    assert isinstance(recs, list) and recs[1]["tool"] == "ComfyUI" and "ComfyUI" in recs[1]["error"]
    code, out, err = run("png-info", str(a), str(c))
    assert code == 1 and "Steps: 5" in out and "ComfyUI" in err


@pytest.fixture(scope="module")
def model_dir(tiny_sd1_dir):
    return str(tiny_sd1_dir)


def test_generate_and_rerun_from_image(home, model_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run("generate", "a photo of a cat", "-n", "blurry", "--model", model_dir, "--steps", "2", "--size", "64", "--seed", "-1", "--out", str(out), "--sampler", "DPM++ 2M Karras", "--clip-skip", "2", "--json")
    assert code == 0, err
    [res] = json.loads(stdout)  # one object per picture
    first = Path(res["path"])
    assert first.name == f"00000-{res['seed']}.png"
    code, stdout, _ = run("png-info", str(first), "--json")
    params = json.loads(stdout)[0]["parameters"]
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Karras") and params["Clip skip"] == "2" and params["Seed"] == str(res["seed"])
    code, stdout, err = run("generate", "--from-image", str(first), "--model", model_dir, "--out", str(out))
    assert code == 0, err
    second = Path(stdout.strip())
    assert second.name.startswith("00001-")
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(first)), np.asarray(__import__("PIL.Image").Image.open(second)))


def test_schedule_type_from_cli_and_from_a1111_infotext(home, model_dir, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    out = tmp_path / "out"
    code, stdout, err = run("generate", "a cat", "--model", model_dir, "--steps", "3", "--size", "64", "--seed", "5", "--sampler", "DPM++ 2M", "--schedule-type", "Exponential", "--out", str(out))
    assert code == 0, err
    first = Path(stdout.strip())
    code, stdout, _ = run("png-info", str(first), "--json")
    assert json.loads(stdout)[0]["parameters"]["Schedule type"] == "Exponential"
    code, stdout, err = run("generate", "--from-image", str(first), "--model", model_dir, "--out", str(out))
    assert code == 0 and "Warning" not in err and "generate: 100% (3/3 step)" in err, err
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(stdout.strip())))
    # A1111 1.9+ writes the schedule apart from the sampler
    def a1111_png(name: str, params: str) -> Path:
        info = PngInfo()
        info.add_text("parameters", f"a cat\nSteps: 2, {params}, CFG scale: 7, Seed: 5, Size: 64x64")
        path = tmp_path / name
        Image.new("RGB", (64, 64)).save(path, pnginfo=info)
        return path

    code, stdout, err = run("generate", "--from-image", str(a1111_png("k.png", "Sampler: DPM++ 2M, Schedule type: Karras")), "--model", model_dir, "--out", str(out), "--json")
    assert code == 0 and "Sampler: DPM++ 2M, Schedule type: Karras," in json.loads(stdout)[0]["infotext"]
    code, stdout, err = run("generate", "--from-image", str(a1111_png("ays.png", "Sampler: DPM++ 2M, Schedule type: Align Your Steps")), "--model", model_dir, "--out", str(out), "--json")
    assert code == 0 and "Warning" not in err, err
    assert "Sampler: DPM++ 2M, Schedule type: Align Your Steps," in json.loads(stdout)[0]["infotext"]
    # "Automatic" from A1111 1.9+ is that sampler's A1111 default (Karras for DPM++ 2M)
    code, stdout, err = run("generate", "--from-image", str(a1111_png("auto.png", "Sampler: DPM++ 2M, Schedule type: Automatic")), "--model", model_dir, "--out", str(out), "--json")
    assert code == 0 and "Sampler: DPM++ 2M, Schedule type: Karras," in json.loads(stdout)[0]["infotext"]
    code, _, err = run("generate", "x", "--model", model_dir, "--size", "64", "--steps", "1", "--schedule-type", "Sideways")
    assert code == 1 and "Unknown schedule type 'Sideways'" in err


def test_generate_bad_input(home, model_dir, tmp_path):
    code, _, err = run("generate", "x", "--model", model_dir, "--sampler", "Nope", "--size", "64", "--steps", "1")
    assert code == 1 and "Unknown sampler 'Nope'" in err and "Euler a" in err
    code, _, err = run("generate", "x", "--model", model_dir, "--size", "65", "--steps", "1")
    assert code == 1 and "multiple of 8" in err
    code, _, err = run("generate", "x", "--model", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err
    code, _, err = run("generate", "x")
    assert code == 1 and "--model" in err


def test_grid_axes_and_standard_preview_attached(home, model_dir, tmp_path):
    code, out, err = run("grid", "--model", model_dir, "-p", "a cat", "--x", "seed:1,2", "--y", "steps:1,2", "--size", "64", "--json", "--out", str(tmp_path / "g"))
    assert code == 0, err
    [res] = json.loads(out)
    assert res["pipeline_calls"] == 2 and len(res["cells"]) == 4 and Path(res["path"]).exists()
    _emb768(home, "wideone")
    code, out, err = run("grid", "wideone", "--model", model_dir, "--steps", "1", "--size", "64")
    assert code == 0, err
    assert "wideone" in err and "plain text" in err  # 768-wide on a 32-wide model: warned
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace

    entry = Catalog.open(Workspace.locate(str(home), None)).entry("wideone")
    assert len(entry["previews"]) == 1 and entry["previews"][0]["path"].endswith("wideone.preview-grid.png")
    assert entry["previews"][0]["model_hash"]
    code, _, err = run("grid", "--model", model_dir)
    assert code == 1 and "NAME" in err
    code, _, err = run("grid", "--model", model_dir, "--x", "bogus:1")
    assert code == 1 and "KIND one of" in err


def test_verify_records_failure(home, model_dir):
    _emb768(home, "toowide")
    code, out, err = run("verify", "toowide", "--model", model_dir, "--json")
    assert code == 1
    [res] = json.loads(out)
    assert res["ok"] is False and res["result"] == "failed" and res["checks"][1]["check"] == "width"
    assert "width" in res["error"] and "{" not in res["checks"][1]["detail"]  # words, not a Python dict
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace

    entry = Catalog.open(Workspace.locate(str(home), None)).entry("toowide")
    assert entry["verifications"][0]["result"] == "failed"
    code, _, err = run("verify", "nosuchthing", "--model", model_dir)
    assert code == 1 and "nosuchthing" in err
