"""Errors: every command answers bad input with one sentence and exit 1 (usage: 2), never a
traceback or "internal error"; checks run before any model loads; a closed pipe exits quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fileserver import embedding_bytes
from tihub import schemas
from tihub.cli import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a local source only (nothing can reach a network) and a few files."""
    root = tmp_path_factory.mktemp("errors")
    home = root / "home"
    (home / "embeddings").mkdir(parents=True)
    (home / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n", encoding="utf-8")
    (home / "embeddings" / "mine.safetensors").write_bytes(embedding_bytes(name="mine"))
    (root / "emb.pt").write_bytes(embedding_bytes("a1111", name="emb"))
    (root / "page.png").write_bytes(b"<html>not a picture</html>")
    (root / "folder").mkdir()
    return root


def invoke(ws: Path, args: list[str]) -> click.testing.Result:
    return CliRunner().invoke(cli, ["--home", str(ws / "home"), *args])


def assert_clean(result: click.testing.Result, args: list[str]) -> None:
    """One of the three exit codes, and no traceback or internal error anywhere."""
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output and "internal error" not in result.output, (args, result.output)


# -------------------------------------------------------------------------- named defects


def test_generate_checks_everything_before_loading_a_model(ws: Path) -> None:
    missing = str(ws / "no-model")
    # each refusal names the option although the model does not even exist: nothing was loaded
    for extra, words in (
        (["--sampler", "Nope"], "Unknown sampler 'Nope'"),
        (["--size", "65"], "multiple of 8"),
        (["--schedule-type", "Sideways"], "Unknown schedule type"),
        (["--sampler", "DPM++ 2M", "--eta", "0.5"], "eta"),
        (["--steps", "0"], "--steps"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
    ):
        r = invoke(ws, ["generate", "x", "--model", missing, *extra])
        assert_clean(r, extra)
        assert r.exit_code in (1, 2) and words in r.output, (extra, r.output)


def test_device_cuda_on_a_cpu_torch_is_one_sentence(ws: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = invoke(ws, ["generate", "x", "--model", str(ws / "folder"), "--device", "cuda"])
    assert r.exit_code == 1 and r.output.strip() == (
        "Error: --device cuda: this torch is a CPU-only build; use --device cpu, or install a CUDA build of torch."
    )


def test_an_embedding_given_as_model_is_named(ws: Path) -> None:
    for cmd in (["generate", "x"], ["verify", "mine"], ["grid", "mine"]):
        r = invoke(ws, [*cmd, "--model", str(ws / "emb.pt")])
        assert r.exit_code == 1 and "is an embedding (sd1, 2 vectors), not a model" in r.output, (cmd, r.output)


def test_grid_axis_values_are_checked(ws: Path) -> None:
    r = invoke(ws, ["grid", "--model", str(ws / "folder"), "--x", "steps:a,b"])
    assert r.exit_code == 1 and "Axis Steps value 'a' is not a number" in r.output
    r = invoke(ws, ["grid", "--model", str(ws / "folder"), "--x", "embedding:mine,nosuch"])
    assert r.exit_code == 1 and "'nosuch' is not an embedding" in r.output and "mine" not in r.output.split("'nosuch'")[0]


def test_train_refuses_a_missing_init_file_and_takes_any_script(ws: Path) -> None:
    r = invoke(ws, ["train", "猫", "--images", str(ws / "folder"), "--model", str(ws / "folder"), "--init-text", "missing.pt"])
    assert r.exit_code == 1 and "--init-text 'missing.pt' looks like an embedding file" in r.output
    r = invoke(ws, ["train", "猫", "--images", str(ws / "folder"), "--model", str(ws / "folder")])
    assert r.exit_code == 1 and "holds no PNG" in r.output  # the name passed; the empty folder did not
    r = invoke(ws, ["train", "../x", "--images", str(ws / "folder"), "--model", str(ws / "folder")])
    assert r.exit_code == 1 and "cannot be used as a prompt word" in r.output


def test_unknown_kind_and_source_list_the_valid_ones(ws: Path) -> None:
    r = invoke(ws, ["search", "x", "--kind", "foo"])
    assert r.exit_code == 2 and "Unknown kind 'foo'; use one of: object, style, negative." in r.output
    r = invoke(ws, ["search", "x", "--source", "nosuch"])
    assert r.exit_code == 1 and r.output.strip() == "Error: --source 'nosuch' is not known; use one of: local."
    # a kind a source itself uses (HF type_of_concept.txt) is one the catalogue knows: searchable
    from sqlalchemy import text

    from tihub.catalog.db import open_engine, write
    from tihub.config import Workspace

    assert invoke(ws, ["sync", "local"]).exit_code == 0
    engine = open_engine(Workspace.locate(str(ws / "home"), None).db_url)
    with write(engine) as conn:
        kinds = conn.execute(text("SELECT id, kind FROM entries")).all()
        conn.execute(text("UPDATE entries SET kind = 'concept'"))
    try:
        r = invoke(ws, ["search", "", "--kind", "concept", "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout) and {e["kind"] for e in json.loads(r.stdout)} == {"concept"}
        r = invoke(ws, ["search", "", "--kind", "foo", "--json"])
        assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "Unknown kind 'foo'; use one of: object, style, negative, concept."
    finally:
        with write(engine) as conn:
            for i, k in kinds:
                conn.execute(text("UPDATE entries SET kind = :k WHERE id = :i"), {"k": k, "i": i})


def test_a_closed_pipe_exits_quietly(ws: Path) -> None:
    many = [str(ws / f"missing-{i}.pt") for i in range(3000)]  # far more JSON than a pipe buffer holds
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TIHUB_HOME": str(ws / "home")}
    with open(ws / "stderr.txt", "wb") as errfile:
        proc = subprocess.Popen([sys.executable, "-m", "tihub", "inspect", *many, "--json"], stdout=subprocess.PIPE,
                                stderr=errfile, env=env, cwd=ws)
        assert proc.stdout is not None
        proc.stdout.read(10)
        proc.stdout.close()  # like `| head -c 10`
        code = proc.wait(timeout=120)
    err = (ws / "stderr.txt").read_text()
    assert code in (0, 1) and "Traceback" not in err and "BrokenPipe" not in err and "internal error" not in err, err


# ---------------------------------------------------------------------- argv fuzzing

# values no command may stumble on: unknown names, missing files, folders for files, numbers
# out of every range, unicode, terminal escapes (never URLs: nothing may reach a network)
_TEXT = st.text(alphabet=st.sampled_from("abcXYZ019_-. 猫é\u202e\x1b[;()"), min_size=0, max_size=10)


def _values(ws: Path) -> st.SearchStrategy[str]:
    fixed = [str(ws / "missing.pt"), str(ws / "folder"), str(ws / "emb.pt"), str(ws / "page.png"), "mine", "nosuch",
             "-1", "0", "99999999999999999999", "-99999999999999999999", "1e309", "nan", "", "猫", "sd1", "sdxl",
             "steps:a,b", "seed:1-99999", "embedding:nosuch", "512x", "64", "Euler a", "cpu", "cuda", "cuda:7", "comfyui"]
    return st.one_of(st.sampled_from(fixed), st.integers(-(10**30), 10**30).map(str), st.floats().map(str), _TEXT)


# options whose work could outlast a unit test or change the workspace for the next example
_SKIP_OPTIONS = {"--init", "--home", "--db"}
# every command with a JSON schema (farm and db are groups: their argv ends in a usage error
# unless a subcommand name is drawn)
_FUZZED = sorted(schemas.names())


@pytest.mark.parametrize("command", _FUZZED)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_argv_never_crashes(ws: Path, command: str, data: st.DataObject) -> None:
    cmd = cli.get_command(click.Context(cli), command)
    assert cmd is not None
    values = _values(ws)
    options = [p for p in cmd.params if isinstance(p, click.Option) and p.opts[0] not in _SKIP_OPTIONS and p.opts[0] != "--help"]
    argv: list[str] = [command]
    argv += data.draw(st.lists(values, max_size=3), label="arguments")
    for opt in data.draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda p: p.name), label="options") if options else []:
        argv.append(opt.opts[-1])
        if not opt.is_flag:
            argv.append(data.draw(values, label=opt.opts[-1]))
    if data.draw(st.booleans(), label="--json") and any(p.opts[0] == "--json" for p in options):
        argv.append("--json")
    if "--model" in argv and argv.index("--model") + 1 < len(argv):
        model = argv[argv.index("--model") + 1]
        if Path(model).is_dir() and any(Path(model).iterdir()):
            return  # never load a real model here
    result = invoke(ws, argv)
    assert_clean(result, argv)
