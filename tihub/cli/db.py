"""`tihub db check` and `tihub db repair`: find and mend a damaged catalogue database."""

from __future__ import annotations

import sys

import click

from tihub.cli._common import Context, echo_json, exit_status, pass_ctx
from tihub.errors import TihubError


@click.group("db")
def db_cmd() -> None:
    """Check or repair the catalogue database (catalog.db).

    \b
    Examples:
      tihub db check            # SQLite's own check, tables, search indexes, migrations
      tihub db repair           # rebuild the search indexes from the catalogue's rows
    """


def _engine(ctx: Context):  # type: ignore[no-untyped-def]
    from tihub.catalog.db import open_engine

    from pathlib import Path

    ctx.workspace.ensure()
    url = ctx.workspace.db_url
    fresh = url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()
    return open_engine(url, migrate=fresh)  # an existing database is looked at before anything is written


def _show(findings: list, as_json: bool) -> None:  # type: ignore[type-arg]
    if as_json:
        echo_json([{"ok": f.ok, "check": f.check, **({"error": f.error} if f.error else {}), "repairable": f.repairable} for f in findings])
        return
    for f in findings:
        click.echo(f"{'ok' if f.ok else 'FAILED':7} {f.check}" + (f"  {f.error}" if f.error else ""))


@db_cmd.command("check")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check.")
@pass_ctx
def check_cmd(ctx: Context, as_json: bool) -> None:
    """Check the catalogue: exit 1 when anything is wrong, each problem in one sentence."""
    from tihub.catalog.health import check

    try:
        findings = check(_engine(ctx))
    except TihubError as exc:
        if not as_json:
            raise
        echo_json({"ok": False, "error": str(exc)})
        sys.exit(1)
    _show(findings, as_json)
    exit_status(not all(f.ok for f in findings))


@db_cmd.command("repair")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check, after the repair.")
@pass_ctx
def repair_cmd(ctx: Context, as_json: bool) -> None:
    """Rebuild the search indexes and their triggers; say what could not be repaired."""
    from tihub.catalog.health import repair

    try:
        findings = repair(_engine(ctx))
    except TihubError as exc:
        if not as_json:
            raise
        echo_json({"ok": False, "error": str(exc)})  # a whole-command failure, in the shared vocabulary
        sys.exit(1)
    _show(findings, as_json)
    if not as_json and all(f.ok for f in findings):
        click.echo("The catalogue is healthy.")
    exit_status(not all(f.ok for f in findings))
