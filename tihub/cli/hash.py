"""`tihub hash`: every hash form of model files and diffusers folders, plus their family."""

from __future__ import annotations

import os
from typing import Any

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, item, pass_ctx
from tihub.errors import TihubError


def _models_in(path: str) -> list[str]:
    """A file or diffusers folder is one model; any other folder is walked for model files."""
    from tihub.hashing import WEIGHT_SUFFIXES, is_diffusers_folder

    if not os.path.isdir(path) or is_diffusers_folder(path):
        return [path]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if is_diffusers_folder(dirpath) and dirpath != path:
            found.append(dirpath)
            dirnames[:] = []
            continue
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and f.lower().endswith(WEIGHT_SUFFIXES))
    return found


def register_models(ctx: Context, rows: list[dict[str, Any]]) -> None:
    """Record hashed models in the catalogue's `models` table, so `compat --model-hash` can name them."""
    from tihub.catalog.store import Catalog
    from tihub.hashing import EMPTY_SHA256

    catalog = Catalog(ctx.engine())
    for row in rows:
        name = os.path.basename(os.path.normpath(row["path"]))
        if not row.get("folder"):
            name = os.path.splitext(name)[0]
        catalog.add_model(
            name=name,
            sha256=row["sha256"],
            autov2=row["autov2"],
            old_hash=None if row["old_hash"] == EMPTY_SHA256[:8] else row["old_hash"],  # every file <= 1 MiB shares it
            family=row["family"],
            widths=row["widths"],
            origin="hashed",
            path=os.path.abspath(row["path"]),
        )


def hash_models(ctx: Context, paths: tuple[str, ...], use_cache: bool = True, jobs: int = 1) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Hash and inspect every model under `paths`; return (result rows, (path, error sentence) pairs)."""
    from tihub.checkpoints import inspect_model
    from tihub.hashing import HashCache, ModelHashes, model_hashes

    cache = HashCache(ctx.engine(), jobs=jobs) if use_cache else None
    errors: list[tuple[str, str]] = []
    targets: list[str] = []
    for p in paths:
        if not os.path.exists(p):
            errors.append((p, f"{p} does not exist; check the path."))
            continue
        found = _models_in(p)
        if not found:
            errors.append((p, f"{p} holds no model files (.safetensors, .ckpt, .pt, .pth, .bin) or diffusers folders."))
        targets.extend(found)

    # Plain files are hashed as one batch: one cache query and one cache write for all of them.
    files = [t for t in targets if not os.path.isdir(t)]
    hashed: dict[str, ModelHashes | Exception] = {}
    if cache is not None and files:
        for f, res in zip(files, cache.hashes_or_errors(files), strict=True):
            hashed[f] = res if isinstance(res, Exception) else ModelHashes(f, res.sha256, res.autov2, res.old_hash, res.shorthash)
    rows: list[dict[str, Any]] = []
    for t in targets:
        try:
            h = hashed.get(t) or model_hashes(t, cache)
            if isinstance(h, Exception):
                raise h
        except TihubError as exc:
            errors.append((t, str(exc)))
            continue
        try:
            info = inspect_model(t)
            family, widths, prediction, reason = info.family, info.widths, info.prediction, info.reason
        except TihubError as exc:
            family, widths, prediction, reason = "other", {}, None, str(exc).rstrip(".")
        rows.append(
            {
                "path": t,
                "sha256": h.sha256,
                "autov2": h.autov2,
                "old_hash": h.old_hash,
                "shorthash": h.shorthash,
                "family": family,
                "widths": widths,
                "prediction": prediction,
                "note": reason,
                "folder": h.folder,
            }
        )
    return rows, errors


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
    rows, errors = hash_models(ctx, paths, use_cache=not no_cache, jobs=jobs)
    for _, message in errors:
        fail(message)
    if rows:
        register_models(ctx, rows)
    if as_json:
        echo_json([item(True, **{k: v for k, v in r.items() if k != "folder"}) for r in rows]
                  + [item(False, message, path=p) for p, message in errors])
    elif rows:
        from tihub.tables import render, safe_text

        table = [
            (
                r["autov2"],
                r["old_hash"],
                r["family"],
                "+".join(str(v) for v in r["widths"].values()),
                r["sha256"],
                r["path"] + ("/" if r["folder"] and not r["path"].endswith("/") else ""),
            )
            for r in rows
        ]
        click.echo(render(["AUTOV2", "OLD", "FAMILY", "WIDTHS", "SHA256", "PATH"], table))
        for r in rows:
            if r["family"] == "other" and r["note"]:
                click.echo(safe_text(f"note: {r['note']}" if r["path"] in r["note"] else f"note: {r['path']}: {r['note']}"))
    exit_status(bool(errors))
