"""Catalogue commands: `tihub sources`, `tihub sync`, `tihub search`, `tihub show`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, item, pass_ctx, say


# ---------------------------------------------------------------------------------- sources


@click.command("sources")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--init", is_flag=True, help="Write the default sources.yaml into the workspace (if it has none).")
@pass_ctx
def sources_cmd(ctx: Context, as_json: bool, init: bool) -> None:
    """List the configured sources with their last sync, status and entry counts.

    \b
    Example:
      tihub sources
      tihub sources --init          # write the default sources.yaml to edit
      tihub sources --json
    """
    hub = ctx.hub
    if init:
        _wrote, message = hub.init_sources()
        click.echo(message, err=True)
    out = hub.sources()
    if as_json:
        echo_json([o.as_dict() for o in out])
        return
    if not out:
        click.echo(f"No sources in {hub.workspace.sources_path}; run `tihub sources --init` to write the default list, or add your own (see README).")
        return
    from tihub.tables import Column, render

    rows = []
    for o in out:
        flags = "" if o.enabled else " (disabled)"
        flags += " nsfw" if o.nsfw else ""
        status = o.status + flags + (f": {o.error}" if o.error and o.status == "failed" else "")
        rows.append((o.name, o.kind, o.entries, o.last_sync, status))
    click.echo(render(["NAME", "KIND", Column("ENTRIES", "right"), "LAST SYNC", "STATUS"], rows))


# ------------------------------------------------------------------------------------- sync


def _parse_bytes(value: str) -> int:
    """'64M' -> 67108864; a bad value is a usage error."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)i?[bB]?\s*", value or "")
    if not m:
        raise click.BadParameter(f"{value!r} is not a size; give bytes, e.g. 0, 500K, 64M or 1G.", param_hint="--deep-budget")
    return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()])


@click.command("sync")
@click.argument("names", nargs=-1, metavar="[SOURCE...]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report per source.")
@click.option("--deadline", type=float, default=900.0, show_default=True, help="Seconds one source may take.")
@click.option("--deep-budget", "deep_budget", default="64M", show_default=True, metavar="BYTES",
              help="Bytes this sync may spend reading small embedding files (under 100 KB) to learn their "
                   "vectors, widths, base and sha256 before download; K/M/G suffixes, 0 turns it off.")
@pass_ctx
def sync_cmd(ctx: Context, names: tuple[str, ...], as_json: bool, deadline: float, deep_budget: str) -> None:
    """Index the sources in sources.yaml (all enabled ones, or those named).

    Unchanged sources cost only their listing; a failing source keeps its previous entries
    and the others still sync. Small embedding files (Hugging Face concepts, most git and
    link-page files) are read during the sync within --deep-budget ("deep sync"): their facts are
    then measured, not declared, and the bytes are cached so a later fetch needs no download.
    Exit status 1 if any source failed.

    \b
    Example:
      tihub sync                    # every enabled source
      tihub sync hf-concepts local  # just these two
      tihub sync --deep-budget 0    # listings only, read no files
    """
    from tihub.progress import Bar

    budget = _parse_bytes(deep_budget)
    with Bar("sync", "item") as bar:
        reports = ctx.hub.sync(list(names) or None, progress=bar, deadline=deadline, deep_budget=budget)
    if as_json:
        echo_json([r.as_dict() for r in reports])
    else:
        for r in reports:
            if r.ok:
                say(r.summary)
            else:
                fail(r.summary)
    exit_status(any(not r.ok for r in reports))


# ----------------------------------------------------------------------------------- search


@click.command("search")
@click.argument("query", required=False, default="")
@click.option("--base", type=click.Choice(["sd1", "sd2", "sdxl", "unknown"]), help="Only embeddings for this base.")
@click.option("--source", metavar="NAME", help="Only entries of this source.")
@click.option("--kind", metavar="KIND", help="Only this kind: object, style, negative, or one a source uses (e.g. Hugging Face's).")
@click.option("--model", metavar="FILE|HASH", help="Only embeddings that load on this model (file, known hash or sd1/sd2/sdxl).")
@click.option("--local", is_flag=True, help="Only embeddings already on disk.")
@click.option("--nsfw", is_flag=True, help="Include entries marked NSFW.")
@click.option("--removed", is_flag=True, help="Include entries gone upstream.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="At most N results; 0 = no limit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def search_cmd(
    ctx: Context,
    query: str,
    base: str | None,
    source: str | None,
    kind: str | None,
    model: str | None,
    local: bool,
    nsfw: bool,
    removed: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Full-text search of the catalogue (name, trigger, title, description, tags, source).

    Words match whole words anywhere and parts of names and trigger words ("negative" finds
    EasyNegative); an exact name comes first; when nothing matches, names within a typo or two
    are shown. An empty QUERY lists everything the filters admit. NSFW entries are hidden
    unless --nsfw.

    \b
    Example:
      tihub search watercolor --base sd1
      tihub search "bad hands" --kind negative --limit 5 --json
      tihub search "" --model ~/models/sd_xl_base_1.0.safetensors
    """
    from tihub.errors import ConfigError

    try:
        rows = ctx.hub.search(query, base=base, source=source, kind=kind, model=model, local=True if local else None,
                              nsfw=nsfw, limit=limit or None, removed=removed, pictures=False)
    except ConfigError as exc:  # an unknown --kind: a usage error naming the valid values
        if as_json:
            echo_json({"ok": False, "error": str(exc)})
            click.get_current_context().exit(2)
        raise click.UsageError(str(exc)) from None
    if as_json:
        echo_json([r.item() for r in rows])
        return
    if not rows:
        click.echo("No matching entries; try fewer words, --nsfw, or `tihub sync` first.", err=True)
        return
    if rows[0].fuzzy:
        click.echo(f"Nothing matches {query!r} exactly; these names are close:", err=True)
    from tihub.tables import Column, render

    table = []
    for r in rows:
        flags = []
        if r.local:
            flags.append("local")
        if r.manual:
            flags.append("manual")
        if r.status not in ("ok", "manual"):
            flags.append(r.status)
        if r.fit:
            flags.append(r.fit)
        if r.removed:
            flags.append("removed")
        title = r.title if r.title and r.title != r.name else ""
        table.append((r.id, r.name, r.base, r.kind, r.source, ", ".join(flags), title))
    click.echo(render([Column("ID", "right"), Column("NAME", max_width=40), "BASE", "KIND", "SOURCE", "FLAGS", Column("TITLE", max_width=60)], table))


# ------------------------------------------------------------------------------------- show


def _training_story(run: dict[str, Any]) -> list[str]:
    """A recorded training run as `tihub show` tells it: what was trained how, and how it went."""
    st = run.get("settings") or {}
    pictures = f"{run['pictures']} pictures" if run.get("pictures") else "? pictures"
    if st.get("flip") and st.get("pictures_with_flips"):
        pictures += f" ({st['pictures_with_flips']} with flips)"
    head = [f"{st['steps']} steps" if st.get("steps") else None, pictures, f"{st['seconds']} s" if st.get("seconds") is not None else None]
    lines = [f"  {run['created_at']}  " + ", ".join(x for x in head if x)]
    size = st.get("size")
    batch = st.get("batch_size")
    how = [
        f"{st['vectors']} vector{'s' if st['vectors'] != 1 else ''}" if st.get("vectors") else None,
        f"init {st['init_text']!r}" if "init_text" in st else None,
        f"lr {st['lr']}" if st.get("lr") else None,
        (f"batch {batch}" + (f" x {st['grad_accum']} accumulated" if (st.get("grad_accum") or 1) > 1 else "")) if batch else None,
        f"size {size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else None,
        f"template {st['template']}" if st.get("template") else None,
        f"seed {st['seed']}" if "seed" in st else None,
        f"precision {st['precision']}" if st.get("precision") else None,
        "steps replayed from a CUDA graph" if st.get("steps_from") == "cuda graph" else None,
    ]
    if any(how):
        lines.append("    settings:    " + ", ".join(x for x in how if x))
    curve = [pt for pt in st.get("loss_curve") or [] if isinstance(pt, list | tuple) and len(pt) == 2]
    loss = [f"{curve[0][1]:.4f} at step {curve[0][0]}"] if curve else []
    if st.get("final_loss") is not None:
        loss.append(f"{st['final_loss']:.4f} at the end")
    where = ", ".join(f"{k} {v}" for k, v in (("plot", run.get("loss_png")), ("log", run.get("loss_csv"))) if v)
    if loss or where:
        lines.append("    loss:        " + "; ".join(x for x in (" -> ".join(loss), where) if x))
    checkpoints = [c for c in run.get("checkpoints") or [] if isinstance(c, dict) and c.get("path")]
    if checkpoints:
        steps = [str(c["step"]) for c in checkpoints if c.get("step") is not None]
        span = f" (steps {', '.join(steps)})" if steps else ""
        lines.append(f"    checkpoints: {len(checkpoints)}{span} in {Path(checkpoints[0]['path']).parent}")
    return lines


@click.command("show")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--app", type=click.Choice(["a1111", "forge", "comfyui", "invokeai", "diffusers"]),
              help="Give the compatibility verdicts of this app (--json always has every app).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per name.")
@click.option("--thumbnails", is_flag=True, help="Fetch the preview pictures now and show their cached WEBP thumbnails.")
@pass_ctx
def show_cmd(ctx: Context, names: tuple[str, ...], app: str | None, as_json: bool, thumbnails: bool = False) -> None:
    """Everything known about entries: files, hashes, trigger syntax per app, sources,
    previews, verifications, training runs and how each fits the known models.

    \b
    Example:
      tihub show easynegative
      tihub show 1234 --json
    """
    from tihub.errors import NotFound

    items: list[dict[str, Any]] = []
    failed = False
    for n in names:
        try:
            e = ctx.hub.show(n, thumbnails=thumbnails, pictures=thumbnails or as_json)
        except NotFound as exc:
            failed = True
            fail(str(exc))
            items.append(item(False, str(exc), name=n))
            continue
        items.append(e.as_dict())
        if not as_json:
            _show_text(e.data, app)
    if as_json:
        echo_json(items)
    exit_status(failed)


def _show_text(e: dict[str, Any], app: str | None = None) -> None:
    """One entry as `tihub show` prints it (every name cleaned of terminal escapes)."""
    from tihub.tables import safe_text

    def out(line: str) -> None:
        click.echo(safe_text(line))

    out(f"{e['name']}  (#{e['id']}, source {e['source']} [{e['source_kind']}])")
    if e["title"] and e["title"] != e["name"]:
        out(f"  title:       {e['title']}")
    rows = [
        ("base", f"{e['base']}" + (f"  (declared: {e['base_model']})" if e["base_model"] else "")),
        ("kind", e["kind"]),
        ("status", e["status"] + (f"  removed upstream {e['removed_at']}" if e["removed_at"] else "")),
        ("nsfw", "yes" if e["nsfw"] else None),
        ("licence", e["licence"]),
        ("tags", ", ".join(map(str, e["tags"])) if e["tags"] else None),
        ("page", e["page_url"]),
        ("seen", f"{e['first_seen']} .. {e['last_seen']}"),
        ("error", e["extra"].get("error") if isinstance(e["extra"], dict) else None),
    ]
    for k, v in rows:
        if v:
            out(f"  {k + ':':<12} {v}")
    if e["description"]:
        desc = " ".join(str(e["description"]).split())
        out(f"  {'about:':<12} {desc[:400]}{'...' if len(desc) > 400 else ''}")
    out("Trigger:")
    labels = {"a1111": "A1111/Forge", "comfyui": "ComfyUI", "invokeai": "InvokeAI", "diffusers": "diffusers"}
    for k, v in e["trigger_syntax"].items():
        out(f"  {labels.get(k, k) + ':':<13}{v}")
    for k, v in e["triggers"].items():
        if k not in e["trigger_syntax"]:
            out(f"  {k + ':':<13}{v}")
    out("Files:" if e["files"] else "Files: none listed")
    for f in e["files"]:
        widths = "+".join(f"{k} {v}" for k, v in (f["widths"] or {}).items())
        facts = [x for x in (
            f["format"],
            f"{f['size']} bytes" if f["size"] is not None else None,
            f"{f['vectors']} vectors" if f["vectors"] else None,
            widths or None,
            f"step {f['step']}" if f["step"] is not None else None,
        ) if x]
        out(f"  {f['file_name']}  {', '.join(facts)}")
        out(f"    sha256:   {f['sha256'] or 'unknown until fetched'}")
        for hk, hv in sorted(f["hashes"].items()):
            out(f"    {hk + ':':<10}{hv}")
        if f["sd_checkpoint"] or f["sd_checkpoint_name"]:
            out(f"    trained on: {f['sd_checkpoint_name'] or '?'} [{f['sd_checkpoint'] or '?'}]")
        if f["url"]:
            out(f"    {'manual download' if f['manual'] else 'url'}: {f['url']}")
        if f["local_path"]:
            out(f"    on disk:  {f['local_path']}")
    if e.get("duplicates"):
        out("The same bytes on disk under other names (exact duplicates):")
        for d in e["duplicates"]:
            out(f"  #{d['id']} {d['name']}  {d['path']}")
    if e["also_in"]:
        out("Also listed by:")
        for a in e["also_in"]:
            out(f"  #{a['id']} {a['name']} ({a['source']}){'  removed' if a['removed_at'] else ''}")
    if e["previews"]:
        from tihub.previews import describe

        out("Previews:")
        pics = e.get("pictures") or [describe(p) for p in e["previews"]]
        for p in pics[:10]:
            facts = [x for x in (p["kind"], f"model hash {p['model_hash']}" if p["model_hash"] else None) if x]
            out(f"  {p['url'] or p['path']}" + (f"  ({', '.join(facts)})" if facts else ""))
            gen = p.get("generation") or {}
            said = ", ".join(f"{k} {gen[k]}" for k in ("sampler", "seed", "steps") if k in gen)
            if gen.get("prompt"):
                said = f"prompt {' '.join(str(gen['prompt']).split())[:120]!r}" + (f", {said}" if said else "")
            if said:
                out(f"    {said}")
            if p.get("thumb"):
                out(f"    thumbnail: {p['thumb']}")
            elif p.get("thumb_error"):
                out(f"    thumbnail: {p['thumb_error']}")
    if e["verifications"]:
        out("Verifications:")
        for v in e["verifications"]:
            out(f"  {v['created_at']}  {v['model_name'] or v['model_hash'] or '?'}: {v['result']}"
                + (f"  grid {v['grid_path']}" if v["grid_path"] else ""))
    if e["training_runs"]:
        out("Training runs:")
        for r in e["training_runs"]:
            for line in _training_story(r):
                out(line)
    if e["compat"]:
        from tihub.catalog.compat_rules import APP_LABELS

        out("Compatibility with known models" + (f" in {APP_LABELS[app]}:" if app else ":"))
        for c in e["compat"]:
            if app:
                a = c["apps"][app]
                out(f"  {c['model'] or c['autov2']} ({c['family']}): {a['fit']}" + (f" ({a['reason']})" if a["reason"] else ""))
            else:
                differ = len({a["fit"] for a in c["apps"].values()}) > 1
                per_app = ", ".join(f"{APP_LABELS[k]} {a['fit']}" for k, a in c["apps"].items())
                out(f"  {c['model'] or c['autov2']} ({c['family']}): {c['fit']}" + (f"  [{per_app}]" if differ else ""))
            if c.get("note"):
                out(f"      {c['note']}")
    else:
        out(f"Compatibility: loads on {e['base']} models" if e["base"] != "unknown" else "Compatibility: base unknown")
    if e["same_name"]:
        out(f"Other entries with this name: {', '.join('#' + str(i) for i in e['same_name'])}")
