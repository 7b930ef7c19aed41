"""`tihub inspect` and `tihub hash`: JSON contract, tables, errors, exit codes, light imports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from model_files import write_st
import tihub.hashing as hashing
from tihub.cli import cli

INSPECT_KEYS = {"path", "ok", "format", "name", "vectors", "base", "step", "trained_on", "trained_on_name", "sha256", "shorthash", "widths"}
HASH_KEYS = {"path", "sha256", "autov2", "old_hash", "shorthash", "family", "widths"}


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SD1 = {
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
}
SDXL = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
}


@pytest.fixture
def embeddings(tmp_path: Path) -> Path:
    d = tmp_path / "emb"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    save_file(
        {"emb_params": rng.standard_normal((4, 768)).astype(np.float32)},
        str(d / "style.safetensors"),
        metadata={"name": "style", "step": "1500", "sd_checkpoint": "a3ae98d6", "sd_checkpoint_name": "Anything3.0"},
    )
    save_file(
        {"clip_l": rng.standard_normal((2, 768)).astype(np.float16), "clip_g": rng.standard_normal((2, 1280)).astype(np.float16)},
        str(d / "sub" / "xlneg.safetensors"),
    )
    (d / "notes.txt").write_text("not an embedding, not walked")
    return d


@pytest.fixture
def bad(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "bad"
    d.mkdir()
    lora = d / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 320), np.float32)}, str(lora))
    html = d / "page.pt"
    html.write_text("<!DOCTYPE html><html><body>Please log in</body></html>")
    return {"lora": lora, "html": html}


# --------------------------------------------------------------------------------------------
# inspect


def test_inspect_json_contract(embeddings: Path) -> None:
    result = run("inspect", str(embeddings), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in rows] == ["style.safetensors", "xlneg.safetensors"]  # recursive, sorted, only embeddings
    for r in rows:
        assert INSPECT_KEYS <= set(r)
        assert r["ok"] is True and "error" not in r
        assert r["sha256"] == _sha(Path(r["path"])) and r["shorthash"] == r["sha256"][:12]
    sd1, xl = rows
    assert (sd1["name"], sd1["vectors"], sd1["widths"], sd1["base"], sd1["format"]) == ("style", 4, {"clip_l": 768}, "sd1", "safetensors")
    assert (sd1["step"], sd1["trained_on"], sd1["trained_on_name"]) == (1500, "a3ae98d6", "Anything3.0")
    assert (xl["name"], xl["vectors"], xl["base"]) == ("xlneg", 2, "sdxl")
    assert xl["widths"] == {"clip_l": 768, "clip_g": 1280}


def test_inspect_table(embeddings: Path) -> None:
    result = run("inspect", str(embeddings / "style.safetensors"), str(embeddings / "sub" / "xlneg.safetensors"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "BASE", "VEC", "WIDTH"]
    assert lines[1].split()[:6] == ["style", "sd1", "4", "768", "safetensors/emb_params", "1500"]
    assert "a3ae98d6" in lines[1] and _sha(embeddings / "style.safetensors")[:12] in lines[1]
    assert lines[2].split()[:4] == ["xlneg", "sdxl", "2", "768+1280"]


def test_inspect_errors_are_one_line_each_and_batch_continues(embeddings: Path, bad: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    result = run("inspect", str(bad["lora"]), str(embeddings / "style.safetensors"), str(missing), str(bad["html"]), "--json")
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert [r["ok"] for r in rows] == [False, True, False, False]
    assert "LoRA" in rows[0]["error"] and rows[0]["file_kind"]
    assert "does not exist" in rows[2]["error"]
    assert "HTML" in rows[3]["error"]
    err = result.stderr.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("Error: ") for line in err)
    assert "Traceback" not in result.output
    for r in rows:
        if not r["ok"]:
            assert INSPECT_KEYS <= set(r) | {"error"} and "\n" not in r["error"]
            assert r["path"] in r["error"]  # the path as given, not only the file name
    # the bad files still get their hash (when readable): that is how users report them
    assert rows[0]["sha256"] == _sha(bad["lora"])


def test_inspect_table_mode_failure_exit_status(bad: dict[str, Path]) -> None:
    result = run("inspect", str(bad["html"]))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1


def test_inspect_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("inspect", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "no embedding files" in result.stderr and ".ckpt" in result.stderr  # every suffix walked


def test_inspect_corpus_files(corpus: Path) -> None:
    files = sorted(p for p in corpus.rglob("*.safetensors"))[:3] + sorted(corpus.rglob("*.pt"))[:3]
    result = run("inspect", *map(str, files), "--json")
    rows = json.loads(result.stdout)
    assert len(rows) == len(files)
    for r in rows:
        assert r["sha256"] == _sha(Path(r["path"]))
        if r["ok"]:
            assert r["vectors"] > 0 and sum(r["widths"].values()) in (768, 1024, 2048)


def test_inspect_does_not_touch_the_database_or_import_heavy_modules(embeddings: Path, home: Path) -> None:
    code = (
        "import sys, json\n"
        "from tihub.cli import cli\n"
        "try:\n"
        f"    cli.main(['inspect', {str(embeddings)!r}, '--json'], prog_name='tihub')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'sqlalchemy', 'httpx', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print('HEAVY=' + json.dumps(heavy))\n"
    )
    env = {**os.environ, "TIHUB_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert "HEAVY=[]" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]
    assert '"ok": true' in out.stdout
    assert not (home / "catalog.db").exists()


def test_inspect_help_has_example() -> None:
    result = run("inspect", "--help")
    assert result.exit_code == 0 and "Example:" in result.output and "tihub inspect" in result.output


# --------------------------------------------------------------------------------------------
# hash


def test_hash_json_contract_and_family(tmp_path: Path, home: Path) -> None:
    sd1 = write_st(tmp_path / "models" / "v1-5.safetensors", SD1)
    xl = write_st(tmp_path / "models" / "xl" / "base.safetensors", SDXL)
    result = run("hash", str(tmp_path / "models"), "--json")
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert set(rows) == {"v1-5.safetensors", "base.safetensors"}
    for name, path in (("v1-5.safetensors", sd1), ("base.safetensors", xl)):
        r = rows[name]
        assert HASH_KEYS <= set(r)
        data = path.read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["autov2"] == r["sha256"][:10] and r["shorthash"] == r["sha256"][:12]
        assert r["old_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert (rows["v1-5.safetensors"]["family"], rows["v1-5.safetensors"]["widths"]) == ("sd1", {"clip_l": 768})
    assert (rows["base.safetensors"]["family"], rows["base.safetensors"]["widths"]) == ("sdxl", {"clip_l": 768, "clip_g": 1280})


def test_hash_does_not_import_torch(tmp_path: Path, home: Path) -> None:
    model = write_st(tmp_path / "m.safetensors", SD1)
    code = (
        "import sys, json\n"
        "from tihub.cli import cli\n"
        "try:\n"
        f"    cli.main(['hash', {str(model)!r}, '--json'], prog_name='tihub')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY=' + json.dumps(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)))\n"
    )
    env = {**os.environ, "TIHUB_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert "HEAVY=[]" in out.stdout and '"family": "sd1"' in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def test_hash_uses_the_workspace_cache(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_st(tmp_path / "m.safetensors", SD1)
    calls: list[str] = []
    real = hashing.hash_file
    monkeypatch.setattr(hashing, "hash_file", lambda p: calls.append(str(p)) or real(p))
    first = run("hash", str(model), "--json")
    assert first.exit_code == 0, first.output
    assert len(calls) == 1 and (home / "catalog.db").exists()
    second = run("hash", str(model), "--json")
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert len(calls) == 1  # served from the cache
    run("hash", str(model), "--no-cache")
    assert len(calls) == 2


def test_hash_registers_models_in_the_catalogue(tmp_path: Path, home: Path, db_url: str) -> None:
    from tihub.catalog import store

    model = write_st(tmp_path / "dreamshaper.safetensors", SD1)
    result = run("hash", str(model), "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    from tihub.catalog.db import open_engine
    from tihub.config import Workspace

    catalog = store.Catalog(open_engine(Workspace.locate(str(home), None).db_url))
    found = catalog.find_model(row["autov2"])
    assert found is not None
    assert (found["name"], found["sha256"], found["family"], found["origin"]) == ("dreamshaper", row["sha256"], "sd1", "hashed")
    assert catalog.find_model(row["old_hash"])["sha256"] == row["sha256"]


def test_hash_diffusers_folder(tiny_sdxl_dir: Path, home: Path) -> None:
    result = run("hash", str(tiny_sdxl_dir), "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    expected = hashing.model_hashes(tiny_sdxl_dir)
    assert (row["sha256"], row["autov2"], row["old_hash"]) == (expected.sha256, expected.autov2, None)
    assert (row["family"], row["widths"]) == ("sdxl", {"clip_l": 32, "clip_g": 32})
    table = run("hash", str(tiny_sdxl_dir))
    assert expected.autov2 in table.stdout and "sdxl" in table.stdout


def test_hash_errors_exit_1_after_processing_everything(tmp_path: Path, home: Path) -> None:
    model = write_st(tmp_path / "m.safetensors", SD1)
    result = run("hash", str(tmp_path / "missing.ckpt"), str(model), str(tmp_path / "empty"), "--json")
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert [(Path(r["path"]).name, r["ok"]) for r in rows] == [("m.safetensors", True), ("missing.ckpt", False), ("empty", False)]
    err = result.stderr.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("Error: ") for line in err)
    assert "missing.ckpt" in err[0] and "does not exist" in err[0]
    assert "Traceback" not in result.output


def test_hash_unreadable_header_still_hashes(tmp_path: Path, home: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00" * 100)
    result = run("hash", str(junk), "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["sha256"] == _sha(junk) and row["family"] == "other" and row["note"]


def test_hash_table_and_help(tmp_path: Path, home: Path) -> None:
    model = write_st(tmp_path / "m.safetensors", SD1)
    result = run("hash", str(model))
    assert result.exit_code == 0
    header, line = result.stdout.splitlines()[:2]
    assert header.split() == ["AUTOV2", "OLD", "FAMILY", "WIDTHS", "SHA256", "PATH"]
    assert line.split()[2:4] == ["sd1", "768"] and _sha(model) in line
    help_ = run("hash", "--help")
    assert help_.exit_code == 0 and "Example:" in help_.output


def test_hash_jobs_option(tmp_path: Path, home: Path) -> None:
    for i in range(4):
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models" / f"m{i}.ckpt").write_bytes(bytes([i]) * ((1 << 20) + i))
    serial = json.loads(run("hash", str(tmp_path / "models"), "--json", "--no-cache").stdout)
    parallel = json.loads(run("hash", str(tmp_path / "models"), "--json", "-j", "3").stdout)
    assert [r["sha256"] for r in serial] == [r["sha256"] for r in parallel] == [_sha(Path(r["path"])) for r in serial]
    assert run("hash", str(tmp_path / "models"), "-j", "0").exit_code == 2
