"""The README's command examples, run as written on a small offline workspace; every one with
`--json` (and every runnable one again with `--json` added) is checked against its schema.

Examples that need the internet (sync, fetch), files only the reader has (`~/...`, URLs), or
minutes of work (train, demo) are listed, not run: `NOT_RUN` says why.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from fileserver import embedding_bytes
from tihub import schemas
from tihub.cli import cli

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = {
    "sync": "reaches the sources on the internet",
    "fetch": "downloads from the internet",
    "train": "needs the reader's pictures and minutes of work",
    "demo": "is the whole tour (make demo)",
    "farm": "starts Ray workers (tests/test_farm.py runs it on a local Ray instance)",
    "serve": "starts the web server, which has no --json (tests/test_web_*.py)",
}


FAST = {c: ["--steps", "1", "--size", "64"] for c in ("generate", "grid", "verify")}


def readme_commands() -> list[list[str]]:
    """Every `tihub ...` line of the README's sh blocks, comments stripped, as argv."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip()
            if not line.startswith("tihub "):
                continue
            argv = shlex.split(line, comments=True)
            out.append(argv[1:])
    return out


def runnable(argv: list[str]) -> str | None:
    """None when the example can run here, else why not."""
    if argv[0] in NOT_RUN:
        return NOT_RUN[argv[0]]
    if any(a.startswith("~") or "://" in a for a in argv):
        return "names the reader's own files or a URL"
    if argv[0] == "sources" and "--init" in argv:
        return "writes the default sources (which reach the internet)"
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_sd1_dir: Path) -> Path:
    """The names and files the README's examples use: mycat, easynegative, cat1, cat2, ./sd15,
    bad-hands-5.pt, outputs/00000-42.png, a catalogue of them."""
    ws = tmp_path_factory.mktemp("readme")
    emb = ws / "embeddings"
    emb.mkdir()
    for i, name in enumerate(("mycat", "easynegative", "cat1", "cat2", "bad-artist")):
        (emb / f"{name}.safetensors").write_bytes(embedding_bytes(name=name, seed=i, sd_checkpoint="925997e9"))
    (ws / "bad-hands-5.pt").write_bytes(embedding_bytes("a1111", name="bad-hands-5", seed=9))
    (ws / "sd15").symlink_to(tiny_sd1_dir, target_is_directory=True)
    (ws / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n", encoding="utf-8")
    assert invoke(ws, ["sync"])[0] == 0
    code, _, err = invoke(ws, ["generate", "a photo of mycat", "--model", "./sd15", "--steps", "1", "--size", "64", "--seed", "42"])
    assert code == 0, err
    return ws


def invoke(ws: Path, argv: list[str]) -> tuple[int, str, str]:
    import os

    old = os.getcwd()
    os.chdir(ws)  # the README's relative paths (./sd15, embeddings/, outputs/) are the workspace's
    try:
        r = CliRunner().invoke(cli, ["--home", str(ws), *argv])
    finally:
        os.chdir(old)
    assert "Traceback" not in r.output and "internal error" not in r.output, (argv, r.output)
    return r.exit_code, r.stdout, r.stderr


def check_json(argv: list[str], stdout: str) -> Any:
    out = json.loads(stdout)
    jsonschema.validate(out, schemas.load(argv[0]))
    return out


@pytest.mark.slow
def test_readme_examples_run_and_match_the_schemas(workspace: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 25  # the parser found the tour
    ran = []
    for argv in commands:
        if runnable(argv) is not None:
            continue
        # as written, plus --json, plus the fewest steps on the tiny model (a later option wins)
        args = [*argv, *(["--json"] if "--json" not in argv else []), *FAST.get(argv[0], [])]
        code, out, err = invoke(workspace, args)
        # 1 is a fair answer where the example names what this workspace lacks (an entry not in
        # the catalogue, a run without checkpoints): still one sentence, never a crash
        assert code in (0, 1), (args, code, out, err)
        check_json(argv, out)
        ran.append(argv[0])
    # the JSON section's examples all succeed on this workspace
    for argv in commands:
        if runnable(argv) is None and "--json" in argv and argv[0] in ("inspect", "list", "search", "show", "compat", "prompt", "png-info"):
            assert invoke(workspace, argv)[0] == 0, argv
    assert {"inspect", "list", "search", "show", "compat", "prompt", "png-info", "generate", "grid", "verify", "convert",
            "db", "similar", "dupes", "outdated"} <= set(ran)


def test_readme_examples_not_run_are_the_expected_ones() -> None:
    skipped = {argv[0] for argv in readme_commands() if runnable(argv) is not None}
    assert skipped <= set(NOT_RUN) | {"fetch", "import", "export", "search", "hash", "compat", "sources", "train", "explain"}
