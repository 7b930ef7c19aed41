"""`tihub generate` with A1111's sampling options, and the plan its --json reports."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")


def run(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from tihub.cli import cli

    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_generate_json_reports_the_plan(home, tiny_sd1_dir, tmp_path):
    code, stdout, err = run("generate", "a cat", "--model", str(tiny_sd1_dir), "--steps", "3", "--size", "64", "--seed", "12", "--batch-size", "2",
                            "--sampler", "DPM++ 2M", "--schedule-type", "Align Your Steps", "--rng", "nv", "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    res, other = json.loads(stdout)  # one object per picture, each with its batch's plan
    plan = res["plan"]
    assert other["plan"] == plan
    assert (plan["sampler"], plan["schedule_type"], plan["schedule"], plan["rng"], plan["seeds"]) == ("DPM++ 2M", "Align Your Steps", "Align Your Steps", "nv", [12, 13])
    assert [round(s, 3) for s in plan["sigmas"]] == [14.615, 1.396, 0.029, 0.0]  # AYS resampled: its middle entry
    assert "RNG: NV" in res["infotext"] and "Schedule type: Align Your Steps" in res["infotext"]


def test_generate_refuses_what_it_cannot_follow(home, tiny_sd1_dir):
    code, _, err = run("generate", "x", "--model", str(tiny_sd1_dir), "--size", "64", "--steps", "2", "--sampler", "UniPC")
    assert code == 1 and "UniPC order 3 needs at least 3 steps" in err and "Traceback" not in err
    code, _, err = run("generate", "x", "--model", str(tiny_sd1_dir), "--size", "64", "--steps", "1", "--sampler", "Euler a", "--s-churn", "1")
    assert code == 1 and "takes no --s-churn" in err
    code, _, err = run("generate", "x", "--model", str(tiny_sd1_dir), "--size", "64", "--steps", "1", "--rng", "tpu")
    assert code == 2 and "tpu" in err


def test_grid_sampler_axis_keeps_old_style_schedules_and_cells_equal_lone_images(tiny_sd1_dir):
    import numpy as np

    from tihub.engine.generate import Engine, Settings
    from tihub.engine.grid import make_grid, parse_axis
    from tihub.engine.models import load_model

    engine = Engine(load_model(tiny_sd1_dir, device="cpu", compute_hash=False))
    axes = [parse_axis("sampler:DPM++ 2M Karras,DPM++ 2M Exponential,Euler a"), parse_axis("seed:3,4")]
    r = make_grid(lambda _m: engine, "a cat", "", axes, Settings(steps=2, width=64, height=64), batch=8)
    kinds = [c.infotext.split("Schedule type: ")[1].split(",")[0] for c in r.cells[:3]]
    assert kinds == ["Karras", "Exponential", "Automatic"] and r.calls == 3
    lone = engine.generate("a cat", steps=2, seed=4, size=64, sampler="DPM++ 2M", schedule_type="Exponential")
    cell = next(c for c in r.cells if c.seed == 4 and "Exponential" in c.infotext)
    assert np.abs(np.asarray(cell.image, dtype=int) - np.asarray(lone.images[0], dtype=int)).max() <= 1
