"""Tables, files and progress as a user sees them: one table renderer (wide characters, ellipsis,
escapes neutralised), file modes from the umask, the naming rule, sidecars, progress lines."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fileserver import embedding_bytes
from tihub.cli import cli
from tihub.tables import Column, render, safe_text


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args))


def test_wide_characters_align_and_long_cells_end_in_an_ellipsis() -> None:
    text = render([Column("NAME"), Column("VEC", "right"), Column("PATH")],
                  [["猫", 2, "a.pt"], ["long-" + "x" * 60, 10, "/b/" + "y" * 80], ["ネコ猫", 1, "c"]], width=60)
    lines = text.splitlines()
    from rich.cells import cell_len

    # every row puts VEC's right edge in the same terminal column, wide characters included
    ends = [cell_len(line[: line.index(v) + len(v)]) for line, v in zip(lines, ["VEC", "2", "10", "1"], strict=True)]
    assert len(set(ends)) == 1, text
    assert all(cell_len(line) <= 60 for line in lines) and "…" in lines[2]
    # into a pipe nothing is cut
    wide = render(["NAME"], [["z" * 300]])
    assert "z" * 300 in wide and "…" not in wide


def test_escape_sequences_in_names_print_as_text() -> None:
    evil = "ok\x1b[2J\x1b]0;pwned\x07\u202egnp.exe\r"
    assert safe_text(evil) == "ok\\x1b[2J\\x1b]0;pwned\\x07\\u202egnp.exe\\x0d"
    table = render(["NAME"], [[evil]])
    assert "\x1b" not in table and "\u202e" not in table and "\r" not in table


def test_listings_have_headers_and_clean_names(home: Path) -> None:
    (home / "embeddings" / "猫.safetensors").write_bytes(embedding_bytes(name="猫"))
    (home / "embeddings" / "bad\x1b[31m.safetensors").write_bytes(embedding_bytes(name="bad", seed=1))
    assert run("sync", "local").exit_code == 0
    out = run("search", "").stdout
    assert out.splitlines()[0].split()[:5] == ["ID", "NAME", "BASE", "KIND", "SOURCE"]
    assert "猫" in out and "\x1b" not in out and "bad\\x1b[31m" in out
    out = run("list").stdout
    assert out.splitlines()[0].split()[:3] == ["FILE", "BASE", "VEC"] and "\x1b" not in out


def test_files_follow_the_umask(tmp_path: Path) -> None:
    src = tmp_path / "e.pt"
    src.write_bytes(embedding_bytes("a1111", name="e"))
    old = os.umask(0o022)
    try:
        assert run("convert", str(src)).exit_code == 0
        assert stat.S_IMODE((tmp_path / "e.safetensors").stat().st_mode) == 0o644
        os.umask(0o027)
        assert run("convert", str(src), "--to", "png").exit_code == 0
        assert stat.S_IMODE((tmp_path / "e.png").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_convert_naming_rule_never_collides(tmp_path: Path) -> None:
    src = tmp_path / "e.pt"
    src.write_bytes(embedding_bytes("a1111", name="e"))
    outs = []
    for fmt in ("safetensors", "diffusers-safetensors", "diffusers-bin", "a1111", "png"):
        r = run("convert", str(src), "--to", fmt)
        assert r.exit_code == 0, (fmt, r.output)
        outs.append(r.stdout.split()[0])
    assert [Path(p).name for p in outs] == ["e.safetensors", "e.diffusers.safetensors", "e.diffusers.bin", "e.a1111.pt", "e.png"]
    again = run("convert", str(src), "--to", "safetensors")
    assert again.exit_code == 1 and "already exists" in again.output  # never replaced without --force


def test_remove_takes_the_sidecars(home: Path) -> None:
    emb = home / "embeddings"
    (emb / "cat.safetensors").write_bytes(embedding_bytes(name="cat"))
    for side in ("cat.preview.png", "cat.json", "catalog.json", "cat.txt"):
        (emb / side).write_bytes(b"x")
    r = run("remove", "cat", "--json")
    assert r.exit_code == 0
    import json

    [item] = json.loads(r.stdout)
    assert item["ok"] and sorted(Path(p).name for p in item["sidecars"]) == ["cat.json", "cat.preview.png"]
    assert sorted(p.name for p in emb.iterdir()) == ["cat.txt", "catalog.json"]  # other files stay


def test_duplicate_name_warning_only_when_the_prompt_uses_it(tmp_path: Path) -> None:
    from engine_helpers import write_emb

    from tihub.engine.vocabulary import Vocabulary

    folder = tmp_path / "embeddings"
    write_emb(folder / "dup.safetensors", np.zeros((1, 32), np.float32))
    write_emb(folder / "sub" / "dup.safetensors", np.ones((1, 32), np.float32))
    write_emb(folder / "solo.safetensors", np.ones((1, 32), np.float32))
    vocab = Vocabulary(folder)
    vocab.reader = __import__("engine_helpers").tiny_reader
    vocab.refresh()
    vocab.load("solo")
    assert vocab.take_warnings() == []
    vocab.load("dup")
    assert [w for w in vocab.take_warnings() if "several files" in w]


def test_loss_plot_ticks_are_round() -> None:
    from tihub.engine.train import nice_ticks

    ticks, step = nice_ticks(0.0734, 0.1981)
    assert ticks == [0.075, 0.1, 0.125, 0.15, 0.175] and step == 0.025
    assert nice_ticks(1, 1000, integer=True)[0] == [200, 400, 600, 800, 1000]


def test_progress_off_a_terminal_is_a_line_per_tenth() -> None:
    from tihub.progress import Progress

    out = io.StringIO()
    p = Progress("work", 100, "step", stream=out)
    for _ in range(100):
        p.update(advance=1, status="fine")
    p.note("retrying 2/5 in 4 s")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[:10] == [f"work: {10 * k}% ({10 * k}/100 step) fine" for k in range(1, 11)]
    assert lines[10] == "retrying 2/5 in 4 s"


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_noise_is_silenced_unless_verbose(tmp_path: Path, verbose: bool) -> None:
    import subprocess
    import sys

    code = (
        "import warnings, sys\n"
        "import click\n"
        "from tihub.cli import COMMANDS, cli\n"
        "COMMANDS['noise'] = '__main__:noise'\n"
        "@click.command('noise')\n"
        "def noise():\n"
        "    import torchsde  # noqa: F401\n"
        "    warnings.warn_explicit('a third-party note', UserWarning, 'x.py', 1, module='torchsde._brownian')\n"
        "cli(args=sys.argv[1:])\n"
    )
    args = ["--verbose", "noise"] if verbose else ["noise"]
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ("a third-party note" in r.stderr) is verbose
