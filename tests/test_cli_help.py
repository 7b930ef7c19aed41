"""The CLI surface: every command exists, has help with an example, and is in the README."""

from __future__ import annotations

import subprocess
from pathlib import Path
import sys

import pytest
from click.testing import CliRunner

from tihub.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parent.parent


def test_top_level_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_has_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`tihub {name} --help` has no example"
    example = result.output.split("Example", 1)[1]
    lines = [ln.split() for ln in example.splitlines() if ln.strip().startswith("tihub ")]
    assert any(name in words for words in lines), f"`tihub {name} --help` has no example running `tihub {name}`"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_readme_tours_every_command(name: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"tihub {name}" in readme, f"README has no `tihub {name}`"


def test_unknown_command_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code != 0
    assert "No such command" in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from tihub.cli import cli\ntry:\n cli(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")
