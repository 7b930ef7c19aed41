"""Helpers shared by the command modules: workspace access, the JSON contract, error exits.

The JSON contract (README "JSON output"): a command that handles items prints a JSON list of
objects, one per item, each with `ok` and, when not ok, `error` (one sentence). A whole-command
failure prints `{"ok": false, "error": "..."}`. `tihub/schemas/COMMAND.json` holds each shape.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from tihub.config import Workspace
from tihub.shapes import checkpoint_name, item  # noqa: F401 (re-exported for the command modules)


@dataclass
class Context:
    """What every command can reach through `@pass_ctx`."""

    home: str | None = None
    db_url: str | None = None
    verbose: bool = False
    _workspace: Workspace | None = field(default=None, repr=False)
    _hub: Any = field(default=None, repr=False)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace.locate(self.home, self.db_url)
        return self._workspace

    @property
    def hub(self):  # type: ignore[no-untyped-def]
        """The library facade (tihub.hub.Hub) on this workspace: every command calls it."""
        if self._hub is None:
            from tihub.hub import Hub

            self._hub = Hub.on(self.workspace)
        return self._hub

    def engine(self):  # type: ignore[no-untyped-def]
        """The catalogue database engine (created and migrated on first use)."""
        from tihub.catalog.db import open_engine

        self.workspace.ensure()
        return open_engine(self.workspace.db_url)


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def echo_json(obj: Any) -> None:
    """Print `obj` as JSON (UTF-8, stable key order as given)."""
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def fail(message: str) -> None:
    """Print one line to stderr (used for per-item failures in a batch)."""
    from tihub.tables import safe_text

    click.echo(f"Error: {safe_text(message)}", err=True)


def say(line: str) -> None:
    """Print one line to stdout with any terminal escapes in names shown as text."""
    from tihub.tables import safe_text

    click.echo(safe_text(line))


def exit_status(failed: bool) -> None:
    """Exit 1 when any input failed (after the whole batch was processed)."""
    if failed:
        sys.exit(1)
