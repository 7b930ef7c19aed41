"""Helpers shared by the command modules: workspace access, JSON output, error exits."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from tihub.config import Workspace


@dataclass
class Context:
    """What every command can reach through `@pass_ctx`."""

    home: str | None = None
    db_url: str | None = None
    _workspace: Workspace | None = field(default=None, repr=False)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace.locate(self.home, self.db_url)
        return self._workspace

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
    click.echo(f"Error: {message}", err=True)


def exit_status(failed: bool) -> None:
    """Exit 1 when any input failed (after the whole batch was processed)."""
    if failed:
        sys.exit(1)
