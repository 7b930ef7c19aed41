"""`tihub farm verify | preview`: a whole catalogue's worth of verifications or preview grids,
as tasks on a Ray cluster (tihub.farm)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, item, pass_ctx
from tihub.errors import TihubError


def _common(fn: Any) -> Any:
    options = [
        click.argument("query", required=False, default=""),
        click.option("--model", "models", multiple=True, required=True, metavar="PATH",
                     help="A model to farm on (diffusers folder, .safetensors/.ckpt); repeat for several."),
        click.option("--base", type=click.Choice(["sd1", "sd2", "sdxl", "unknown"]), help="Only embeddings for this base."),
        click.option("--source", metavar="NAME", help="Only entries of this source."),
        click.option("--kind", metavar="K", help="Only this kind (object, style, negative)."),
        click.option("--local", is_flag=True, help="Only embeddings already on disk."),
        click.option("--nsfw", is_flag=True, help="Include entries marked NSFW."),
        click.option("--address", metavar="ray://HOST:PORT|auto",
                     help="The Ray cluster to run on [default: a new local Ray instance on this machine]."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Workers per model [default: GPUs / --gpus-per-worker, or 1 without GPUs]."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
                     help="GPUs each worker holds [default: 1 when the cluster has GPUs, else 0]."),
        click.option("--steps", type=int, default=20, show_default=True, help="Steps of the preview grids."),
        click.option("--size", default=None, help="Preview size, WxH or N [default: the model's native size]."),
        click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Embeddings per worker task; their preview cells share pipeline calls."),
        click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
                     help="Shared download cache [default: WORKSPACE/farm-cache]; on a cluster a shared folder."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                     help="Where grids go [default: WORKSPACE/grids/farm]; on a cluster a shared folder."),
        click.option("--allow-private", is_flag=True,
                     help="Downloads may go to loopback and private addresses (a mirror on your network)."),
        click.option("--device", default=None, help="Torch device of the workers [default: cuda when there, else cpu]."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per entry and model."),
        pass_ctx,
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _farm(ctx: Context, action: str, grid: bool, query: str, models: tuple[str, ...], base: str | None,
          source: str | None, kind: str | None, local: bool, nsfw: bool, address: str | None, workers: int | None,
          gpus_per_worker: float | None, steps: int, size: str | None, batch: int, cache_dir: str | None,
          out_dir: str | None, allow_private: bool, device: str | None, as_json: bool) -> None:
    from tihub.catalog.store import Catalog
    from tihub.farm import FarmSettings, Progress, farm

    def show(p: Progress) -> None:
        click.echo(p.line(), err=True)

    try:
        ws = ctx.workspace
        catalog = Catalog(ctx.engine(), ws)
        settings = FarmSettings(action=action, steps=steps, size=size, grid=grid, batch=batch, allow_private=allow_private)
        filters = {"base": base, "source": source, "kind": kind, "local": True if local else None, "nsfw": nsfw}
        report = farm(catalog, models, settings, query, filters, address=address, workers=workers,
                      gpus_per_worker=gpus_per_worker, device=device,
                      cache_dir=Path(cache_dir) if cache_dir else ws.root / "farm-cache",
                      out_dir=Path(out_dir) if out_dir else ws.root / "grids" / "farm", on_progress=show)
    except TihubError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc)}))
            exit_status(True)
        raise
    if as_json:  # the vocabulary: a grid file is `path`; `error` only on a failed item
        echo_json([item(d.pop("ok"), d.pop("error") or f"{d['name']} failed on {d['model']}.", path=d.pop("grid"), **d)
                   for d in (r.as_dict() for r in report.results)])
    else:
        for r in report.results:
            if r.ok:
                click.echo(f"{r.name} on {r.model}: {r.result}" + (f"  {r.grid}" if r.grid else ""))
            else:
                fail(r.error or f"{r.name} failed on {r.model}.")
        rate = (report.done + report.failed) / report.seconds if report.seconds else 0.0
        click.echo(f"{report.done} done, {report.failed} failed, {report.skipped} already done; "
                   f"{report.seconds:.1f} s ({rate:.2f} entries/s); {report.retried} batch(es) retried after a worker died.")
    exit_status(report.failed > 0)


@click.group("farm")
def farm_cmd() -> None:
    """Verify or preview every matching catalogue entry on one or more models, on a Ray cluster.

    Each worker loads its model once, fetches the files into a shared cache (size and sha256
    checked), renders several embeddings per pipeline call and writes the results to the
    catalogue. Work already done for the same file, model and settings is skipped, so a run can
    be repeated after any interruption. Needs `pip install 'tihub[farm]'`.

    \b
    Example:
      tihub farm verify --model ./sd15 --base sd1
      tihub farm preview negative --model ./sd15 --model ./dreamshaper --address ray://head:10001
    """


@farm_cmd.command("verify")
@click.option("--no-grid", is_flag=True, help="Only check the numbers; no preview grid.")
@_common
def farm_verify_cmd(ctx: Context, no_grid: bool, **kw: Any) -> None:
    """Verify every entry matching QUERY on each --model; record each result in the catalogue.

    \b
    Example:
      tihub farm verify --model ./sd15 --base sd1 --json
      tihub --db postgresql://team@db/tihub farm verify --model /models/sd15 --address auto
    """
    _farm(ctx, "verify", not no_grid, **kw)


@farm_cmd.command("preview")
@_common
def farm_preview_cmd(ctx: Context, **kw: Any) -> None:
    """Draw the standard preview grid of every entry matching QUERY on each --model.

    \b
    Example:
      tihub farm preview style --model ./sd15 --steps 20
    """
    _farm(ctx, "preview", True, **kw)
