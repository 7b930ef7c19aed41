"""`tihub generate --json`: the chunk layout and the variation-seed settings its plan reports,
checked against the command's JSON schema."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
jsonschema = pytest.importorskip("jsonschema")

from tihub import schemas  # noqa: E402


def run(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from tihub.cli import cli

    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_generate_json_reports_the_chunk_layout(home, tiny_sd1_dir, tmp_path):
    prompt = "[" + " ".join(["cat"] * 60) + " , " + " ".join(["dog"] * 20) + ":a hat:1]"
    code, stdout, err = run("generate", prompt, "-n", "blurry", "--model", str(tiny_sd1_dir), "--steps", "2", "--size", "64",
                            "--seed", "5", "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    out = json.loads(stdout)
    jsonschema.validate(out, schemas.load("generate"))
    (img,) = out[0]["plan"]["chunks"]
    first, second = img["parts"][0]["texts"]
    # the comma 20 tokens before the end moves the dogs on: 61 + 20
    assert (first["until_call"], first["chunk_tokens"], first["boundaries"], first["cuts"]) == (1, [61, 20], [61], ["comma", "end"])
    assert first["ends_with"][0] == "cat cat ," and first["tokens"] == 154
    # the schedule's second text has one chunk, encoded with the first as one batch (2 x 77 rows)
    assert (second["text"], second["chunks"], second["tokens"]) == ("a hat", 1, 154)
    assert img["negative"][0]["chunk_tokens"] == [1]


def test_variation_seeds_on_the_command_line_and_from_image(home, tiny_sd1_dir, tmp_path):
    args = ["--model", str(tiny_sd1_dir), "--steps", "2", "--size", "64", "--sampler", "Euler a"]
    code, stdout, err = run("generate", "a cat", *args, "--seed", "8", "--subseed", "900", "--subseed-strength", "0.35",
                            "--seed-resize-from", "40", "56", "--batch-size", "2", "--out", str(tmp_path / "a"), "--json")
    assert code == 0, err
    out = json.loads(stdout)
    jsonschema.validate(out, schemas.load("generate"))
    assert [o["seed"] for o in out] == [8, 8]  # A1111: a variation strength keeps every image's seed
    assert out[0]["plan"]["variation"] == {"subseeds": [900, 901], "subseed_strength": 0.35, "seed_resize_from": [40, 56]}
    assert "Variation seed: 901, Variation seed strength: 0.35, Seed resize from: 40x56" in out[1]["infotext"]
    # --from-image follows the three keys: the second picture again, byte for byte, and no warning about them
    code, stdout, err = run("generate", "--from-image", out[1]["path"], "--model", str(tiny_sd1_dir), "--out", str(tmp_path / "b"), "--json")
    assert code == 0, err
    assert "Variation" not in err and "resize" not in err
    (again,) = json.loads(stdout)
    with open(again["path"], "rb") as a, open(out[1]["path"], "rb") as b:
        assert a.read() == b.read()
    code, _, err = run("generate", "a cat", *args, "--subseed-strength", "2")
    assert code == 1 and "Variation seed strength 2 is out of range; use 0 (off) to 1." in err
