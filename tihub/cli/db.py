"""`tihub db check` and `tihub db repair`: find and mend a damaged catalogue database."""

from __future__ import annotations

import click

from tihub.cli._common import Context, echo_json, exit_status, pass_ctx


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

    ctx.workspace.ensure()
    return open_engine(ctx.workspace.db_url, migrate=False)  # look before anything is written


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

    findings = check(_engine(ctx))
    _show(findings, as_json)
    exit_status(not all(f.ok for f in findings))


@db_cmd.command("repair")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check, after the repair.")
@pass_ctx
def repair_cmd(ctx: Context, as_json: bool) -> None:
    """Rebuild the search indexes and their triggers; say what could not be repaired."""
    from tihub.catalog.health import repair

    findings = repair(_engine(ctx))
    _show(findings, as_json)
    if not as_json and all(f.ok for f in findings):
        click.echo("The catalogue is healthy.")
    exit_status(not all(f.ok for f in findings))
