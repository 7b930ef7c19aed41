"""The JSON contract: every command's real `--json` output on a realistic small workspace
validates against its schema in tihub/schemas/ (README "JSON output").

One workspace is built once for the module: real embedding files in every base, a catalogue
with a remote entry served by a loopback file server and a manual download, the tiny SD1
model, pictures to train on. Each command then runs as a user would, with good and bad input.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from engine_helpers import train_pictures
from fileserver import FileServer, embedding_bytes
from tihub import schemas
from tihub.cli import COMMANDS, cli

# commands without --json: the tour and the web server
NO_JSON = {"demo", "serve"}
# the old keys the vocabulary replaced (README "JSON output": renames)
LEGACY_KEYS = {"file", "made_on", "sd_checkpoint", "sd_checkpoint_name", "trigger", "width", "output"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_sd1_dir: Path):  # type: ignore[no-untyped-def]
    from tihub.catalog.db import dispose_all, open_engine
    from tihub.catalog.store import Catalog
    from tihub.config import SourceSpec, Workspace
    from tihub.sources.base import Candidate, CandidateFile

    root = tmp_path_factory.mktemp("contract")
    home = root / "home"
    emb = home / "embeddings"
    emb.mkdir(parents=True)
    srv = FileServer().start()
    (home / "sources.yaml").write_text(
        f"sources:\n  - {{name: mirror, kind: links, url: 'http://127.0.0.1:{srv.port}/', allow_private: true}}\n"
        "  - {name: local, kind: local, path: embeddings}\n", encoding="utf-8")
    (emb / "猫.safetensors").write_bytes(embedding_bytes(name="猫", sd_checkpoint="925997e9"))
    (emb / "easyneg.pt").write_bytes(embedding_bytes("a1111", name="easyneg", sd_checkpoint="925997e9", seed=1))
    (emb / "xl.safetensors").write_bytes(embedding_bytes(name="xl", widths={"clip_l": 768, "clip_g": 1280}, seed=2))
    data = embedding_bytes("a1111", name="EasyNegative", sd_checkpoint="925997e9", seed=3)
    url = srv.add("/files/easynegative.pt", data)
    ws = Workspace.locate(home)
    Catalog(open_engine(ws.db_url), ws).ingest(SourceSpec(name="mirror", kind="links", allow_private=True), [
        Candidate("easy", "easynegative", files=[CandidateFile("easynegative.pt", url, len(data), hashlib.sha256(data).hexdigest(),
                                                               widths={"clip_l": 768}, sd_checkpoint="925997e9")], base_model="SD 1.5"),
        Candidate("mega", "megafile", files=[CandidateFile("x.pt", "https://mega.nz/file/abc#k", manual=True)], status="manual"),
    ])
    dispose_all()
    (root / "downloads").mkdir()
    (root / "downloads" / "handmade.pt").write_bytes(embedding_bytes("a1111", name="handmade", seed=4))
    (root / "app").mkdir()
    train_pictures(root / "pics", n=2, size=64)
    yield {"root": root, "home": home, "model": str(tiny_sd1_dir), "srv": srv}
    srv.stop()


def invoke(home: Path, args: list[str]) -> tuple[int, Any, str]:
    """Run `tihub --home HOME ARGS` in-process; (exit code, parsed stdout, stderr)."""
    r = CliRunner().invoke(cli, ["--home", str(home), *args])
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    try:
        parsed = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"tihub {shlex.join(args)} printed no JSON: {r.stdout!r} {r.stderr!r}")
    return r.exit_code, parsed, r.stderr


def check(command: str, out: Any) -> None:
    """`out` is valid for `command`'s schema and uses no replaced key anywhere at the top of an item."""
    jsonschema.validate(out, schemas.load(command))
    for obj in out if isinstance(out, list) else [out]:
        assert not (LEGACY_KEYS & set(obj)), (command, LEGACY_KEYS & set(obj))


def _runs(w: dict[str, Any]) -> list[tuple[str, list[str], int]]:
    """(command, argv, expected exit code): each command with good input and with bad input."""
    root, model = w["root"], w["model"]
    gen_out = str(root / "outputs")
    return [
        ("sources", ["sources", "--json"], 0),
        ("sync", ["sync", "local", "--json"], 0),
        ("sync", ["sync", "nosuch", "--json"], 1),
        ("search", ["search", "", "--nsfw", "--json"], 0),
        ("search", ["search", "nothing-matches-this", "--json"], 0),
        ("search", ["search", "x", "--source", "nosuch", "--json"], 1),
        ("show", ["show", "easynegative", "猫", "--json"], 0),
        ("show", ["show", "nosuch", "--json"], 1),
        ("inspect", ["inspect", str(w["home"] / "embeddings"), "--json"], 0),
        ("inspect", ["inspect", str(root / "missing.pt"), str(root / "pics" / "000-red fox, snow.png"), "--json"], 1),
        ("hash", ["hash", model, "--json"], 0),
        ("hash", ["hash", str(root / "missing.ckpt"), "--json"], 1),
        ("convert", ["convert", str(root / "downloads" / "handmade.pt"), "--to", "diffusers-safetensors", "--json"], 0),
        ("convert", ["convert", str(root / "missing.pt"), "--json"], 1),
        ("fetch", ["fetch", "easynegative", "--json"], 0),
        ("fetch", ["fetch", "nosuch", "megafile", "--json"], 1),
        ("import", ["import", str(root / "downloads" / "handmade.pt"), "--json"], 0),
        ("import", ["import", str(root / "pics" / "001-red fox, snow.png"), "--json"], 1),
        ("list", ["list", "--json"], 0),
        ("compat", ["compat", "--model-hash", "925997e9", "--json"], 0),
        ("compat", ["compat", "--model-hash", "925997e9", "nosuch", "--json"], 1),
        ("compat", ["compat", "--model-hash", "zzz", "--json"], 1),
        ("export", ["export", "easyneg", "猫", "--to", str(root / "app"), "--app", "comfyui", "--json"], 0),
        ("export", ["export", "easyneg", "--to", str(root / "no-app"), "--app", "a1111", "--json"], 1),
        ("remove", ["remove", "handmade", "--json"], 0),
        ("remove", ["remove", "nosuch", "--json"], 1),
        ("prompt", ["prompt", "a (猫:1.2), [easyneg:xl:0.5]", "--json"], 0),
        ("generate", ["generate", "a photo of 猫", "--model", model, "--steps", "1", "--size", "64", "--seed", "7", "--out", gen_out, "--json"], 0),
        ("generate", ["generate", "x", "--model", str(root / "missing-model"), "--json"], 1),
        ("generate", ["generate", "x", "--model", str(w["home"] / "embeddings" / "easyneg.pt"), "--json"], 1),
        ("png-info", ["png-info", str(Path(gen_out) / "00000-7.png"), "--json"], 0),
        ("png-info", ["png-info", str(root / "pics" / "000-red fox, snow.png"), "--json"], 1),
        ("grid", ["grid", "--model", model, "-p", "a cat", "--x", "seed:1,2", "--steps", "1", "--size", "64", "--out", str(root / "grids"), "--json"], 0),
        ("grid", ["grid", "--model", model, "--x", "embedding:nosuch", "--json"], 1),
        ("verify", ["verify", "easyneg", "--model", model, "--no-grid", "--json"], 1),  # 768 wide on a 32-wide model: failed
        ("verify", ["verify", "nosuch", "--model", model, "--json"], 1),
        ("train", ["train", "狐", "--images", str(root / "pics"), "--model", model, "--steps", "2", "--size", "64",
                   "--save-every", "0", "--device", "cpu", "--json"], 0),
        ("train", ["train", "bad name", "--images", str(root / "pics"), "--model", model, "--json"], 1),
        ("similar", ["similar", "easyneg", "--json"], 0),
        ("similar", ["similar", "nosuch", "--json"], 1),
        ("dupes", ["dupes", "--threshold", "-1", "--json"], 0),
        ("explain", ["explain", str(w["home"] / "embeddings" / "xl.safetensors"), "--model", model, "--json"], 1),  # 768/1280 wide on a 32-wide model
        ("explain", ["explain", "nosuch", "--model", model, "--json"], 1),
        ("outdated", ["outdated", "--all", "--json"], 0),
        ("farm", ["farm", "verify", "--model", str(root / "missing-model"), "--json"], 1),  # refused before Ray starts
        ("db", ["db", "check", "--json"], 0),
        ("db", ["db", "repair", "--json"], 0),
    ]


@pytest.mark.slow
def test_every_command_json_matches_its_schema(world: dict[str, Any]) -> None:
    ran: set[str] = set()
    for command, args, code in _runs(world):
        got, out, err = invoke(world["home"], args)
        assert got == code, (args, got, out, err)
        check(command, out)
        if code == 1:  # the failure is inside the JSON too, one sentence
            errors = [out] if isinstance(out, dict) else [o for o in out if not o["ok"]]
            assert errors and all("\n" not in e["error"] for e in errors), (args, out)
        ran.add(command)
    with_json = set(COMMANDS) - NO_JSON
    assert ran == with_json == set(schemas.names())


def test_schemas_are_valid_json_schemas() -> None:
    for name in schemas.names():
        jsonschema.Draft202012Validator.check_schema(schemas.load(name))


def test_schema_rejects_the_old_keys() -> None:
    with pytest.raises(jsonschema.ValidationError):
        check("png-info", [{"file": "a.png", "path": "a.png", "ok": True, "prompt": "", "negative_prompt": "", "parameters": {}}])
    with pytest.raises(jsonschema.ValidationError):  # an item that failed must say why
        jsonschema.validate([{"path": "a", "ok": False}], schemas.load("inspect"))
    jsonschema.validate({"ok": False, "error": "No model given."}, schemas.load("generate"))
