"""`tihub inspect`: what an embedding file is, read safely, without touching the catalogue.

This module must stay light: no torch, no sqlalchemy, no httpx (start-up well under 0.5 s).
"""

from __future__ import annotations

from typing import Any

import click

from tihub.cli._common import echo_json, exit_status, fail
from tihub.inspection import inspect_paths

def _table(rows: list[dict[str, Any]]) -> None:
    from tihub.tables import Column, render

    table = []
    for r in rows:
        ckpt = r["trained_on"] or ""
        if r["trained_on_name"]:
            ckpt = f"{r['trained_on_name']} [{ckpt}]" if ckpt else r["trained_on_name"]
        table.append(
            (
                r["name"],
                r["base"],
                r["vectors"],
                "+".join(str(v) for v in r["widths"].values()),
                f"{r['format']}/{r['layout']}",
                r["step"],
                ckpt,
                r["shorthash"],
                r["path"],
            )
        )
    header = [Column("NAME", max_width=32), "BASE", Column("VEC", "right"), Column("WIDTH", "right"), "FORMAT",
              Column("STEP", "right"), Column("CHECKPOINT", max_width=40), "SHORTHASH", "PATH"]
    click.echo(render(header, table))


@click.command("inspect")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per file (failures included, with ok=false).")
def inspect_cmd(paths: tuple[str, ...], as_json: bool) -> None:
    """Show what embedding files are: name, base model, vectors, width, training checkpoint, hash.

    Every format is read safely (pickles are never executed). Folders are walked recursively.
    Files that are not embeddings (LoRA, checkpoints, HTML pages, ...) are reported as errors,
    one line each, and the exit status is 1 if any file failed. The catalogue is not touched.

    \b
    Example:
      tihub inspect embeddings/easynegative.safetensors
      tihub inspect ~/sd/embeddings --json
    """
    rows = inspect_paths(paths)
    for r in rows:
        if not r["ok"]:
            fail(r["error"])
    if as_json:
        echo_json(rows)
    else:
        good = [r for r in rows if r["ok"]]
        if good:
            _table(good)
    exit_status(any(not r["ok"] for r in rows))
