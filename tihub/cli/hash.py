"""`tihub hash`: every hash form of model files and diffusers folders, plus their family."""

from __future__ import annotations

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, item, pass_ctx


@click.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--no-cache", is_flag=True, help="Hash every file again instead of trusting the cache.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Files hashed at once (more helps on SSDs; keep 1 on spinning disks).")
@pass_ctx
def hash_cmd(ctx: Context, paths: tuple[str, ...], as_json: bool, no_cache: bool, jobs: int) -> None:
    """Print every hash of model files and diffusers folders, and their family.

    Hashes: full sha256, AutoV2 (A1111 `Model hash`, first 10 hex), the A1111 old hash (8 hex,
    sha256 of 64 KiB at 1 MiB) and the short hash (12 hex). The family (sd1, sd2, sdxl, other)
    and text-encoder widths come from the file's header or the folder's configs; no weights are
    loaded. Results are cached in the workspace database, so a second run over unchanged files
    only stats them. A folder that is not a diffusers model is searched for model files. Every
    model hashed is recorded in the catalogue, so `compat --model-hash` can name it.

    \b
    Example:
      tihub hash ~/models/v1-5-pruned-emaonly.safetensors
      tihub hash ~/models/ --json -j 4     # every model file under a folder, 4 at a time
      tihub hash ./my-diffusers-model      # a diffusers folder (hash of its weight files)
    """
    rows, errors = ctx.hub.hash_models(paths, use_cache=not no_cache, jobs=jobs)
    for _, message in errors:
        fail(message)
    if as_json:
        echo_json([r.as_dict() for r in rows] + [item(False, message, path=p) for p, message in errors])
    elif rows:
        from tihub.tables import render, safe_text

        table = [
            (
                r.autov2,
                r.old_hash,
                r.family,
                "+".join(str(v) for v in r.widths.values()),
                r.sha256,
                r.path + ("/" if r.folder and not r.path.endswith("/") else ""),
            )
            for r in rows
        ]
        click.echo(render(["AUTOV2", "OLD", "FAMILY", "WIDTHS", "SHA256", "PATH"], table))
        for r in rows:
            if r.family == "other" and r.note:
                click.echo(safe_text(f"note: {r.note}" if r.path in r.note else f"note: {r.path}: {r.note}"))
    exit_status(bool(errors))
