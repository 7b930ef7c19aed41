"""What the catalogue knows across entries: `tihub similar`, `dupes`, `explain`, `outdated`
(and the `fetch --upgrade` runner)."""

from __future__ import annotations

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, pass_ctx


def _json_fail(as_json: bool, message: str) -> None:
    """A whole-command failure: one sentence (JSON object with --json), exit 1."""
    if as_json:
        echo_json({"ok": False, "error": message})
    else:
        fail(message)
    raise SystemExit(1)


@click.command("similar")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many to list.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_ctx
def similar_cmd(ctx: Context, name: str, limit: int, as_json: bool) -> None:
    """Catalogued embeddings whose vectors point the same way as NAME's.

    NAME is a catalogue name or id, or an embedding file. Every catalogued vector (local files
    and deep-synced ones) is compared by cosine per text encoder; multi-vector embeddings are
    summarised by the mean of their unit vectors (see tihub/similar.py). 1.0 = same directions.

    \b
    Example:
      tihub similar easynegative
      tihub similar ./embeddings/mystyle.pt --limit 20 --json
    """
    from tihub.errors import TihubError

    try:
        rows = ctx.hub.similar(name, limit)
    except TihubError as exc:
        _json_fail(as_json, str(exc))
        return
    if as_json:
        echo_json([r.as_dict() for r in rows])
        return
    if not rows:
        click.echo(f"No other catalogued embedding shares a text encoder with {name}.")
    for r in rows:
        where = r.path or r.source
        click.echo(f"{r.score:7.4f}  {r.name}  [{r.base or '?'}, {r.vectors or '?'} vectors]  {where}")


@click.command("dupes")
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0), default=0.95, show_default=True,
              help="Lowest similarity (cosine of the summaries) that counts as a near-duplicate.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of groups.")
@pass_ctx
def dupes_cmd(ctx: Context, threshold: float, as_json: bool) -> None:
    """Groups of near-duplicate embeddings: re-uploads, renamed copies, light fine-tunes.

    \b
    Example:
      tihub dupes
      tihub dupes --threshold 0.99 --json
    """
    groups = ctx.hub.dupes(threshold)
    if as_json:
        echo_json([g.as_dict() for g in groups])
        return
    if not groups:
        click.echo(f"No near-duplicates at similarity {threshold}.")
    for g in groups:
        span = f"{g.min_score:.4f}" if g.min_score == g.max_score else f"{g.min_score:.4f}-{g.max_score:.4f}"
        click.echo(f"group {g.group} ({len(g.members)} embeddings, similarity {span}):")
        for m in g.members:
            also = f"  (also listed as {', '.join(m.also)})" if m.also else ""
            click.echo(f"  {m.name}  [{m.base or '?'}]  {m.path or m.source}{also}")


@click.command("explain")
@click.argument("name")
@click.option("--model", "model", required=True, type=click.Path(exists=True), help="A .safetensors checkpoint or a diffusers folder.")
@click.option("--top", type=click.IntRange(1, 50), default=5, show_default=True, help="Tokens per vector.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per vector).")
@pass_ctx
def explain_cmd(ctx: Context, name: str, model: str, top: int, as_json: bool) -> None:
    """The nearest vocabulary tokens of each vector of NAME on MODEL's token table.

    Reads the token-embedding table from the model file without torch. NAME is a catalogue
    name or an embedding file.

    \b
    Example:
      tihub explain easynegative --model ~/models/v1-5-pruned-emaonly.safetensors
    """
    from tihub.errors import TihubError

    try:
        rows = ctx.hub.explain(name, model, top)
    except TihubError as exc:
        _json_fail(as_json, str(exc))
        return
    if as_json:
        echo_json([r.as_dict() for r in rows])
    else:
        for r in rows:
            if not r.ok:
                fail(r.as_dict()["error"])
                continue
            toks = ", ".join(f"{t['token']!r} {t['score']:.3f}" for t in r.tokens)
            click.echo(f"{r.encoder} #{r.index} (norm {r.norm:.3f}, model tokens {r.model_token_norm:.3f}): {toks}")
    exit_status(any(not r.ok for r in rows))


@click.command("outdated")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--all", "show_all", is_flag=True, help="List current files too.")
@pass_ctx
def outdated_cmd(ctx: Context, as_json: bool, show_all: bool) -> None:
    """Local files fetched from a catalogued entry for which the source now has something newer.

    Civitai: a newer version of the same model for the same base; Hugging Face and git: a newer
    commit with other bytes; link pages: the link now points elsewhere. Run `tihub sync` first;
    `tihub fetch --upgrade NAME|--all` fetches the newer files.

    \b
    Example:
      tihub sync && tihub outdated
      tihub outdated --json
    """
    rows = ctx.hub.outdated()
    shown = rows if show_all else [r for r in rows if r.status != "current"]
    if as_json:
        echo_json([r.as_dict() for r in shown])
        return
    if not shown:
        click.echo(f"All {len(rows)} fetched files are current." if rows else "No fetched files to check (files fetched by tihub are tracked).")
    for r in shown:
        click.echo(f"{r.name}: {r.status}" + (f": {r.reason}" if r.reason else ""))


def run_upgrade(ctx: Context, names: tuple[str, ...], all_: bool, keep_old: bool, as_: str, jobs: int,
                timeout: float, as_json: bool) -> None:
    """`tihub fetch --upgrade`: print what `Hub.upgrade` did."""
    from tihub.progress import Bar

    if not names and not all_:
        raise click.UsageError("Give the NAME of a local file to upgrade, or --all.")
    with Bar("fetch", "bytes", enabled=not as_json) as bar:
        out = ctx.hub.upgrade(names, all_=all_, keep_old=keep_old, convert=as_, jobs=jobs, timeout=timeout, progress=bar)
    if as_json:
        echo_json([o.as_dict() for o in out])
    else:
        for o in out:
            if not o.ok:
                fail(o.as_dict()["error"])
            elif o.upgraded:
                click.echo(f"upgraded: {o.name} -> {o.path}" + (f" (old file kept as {o.old_path})" if o.old_path else ""))
            else:
                click.echo(f"{o.name}: {o.status}, not upgraded ({o.reason})")
    exit_status(any(not o.ok for o in out))
