"""Collection commands: `tihub fetch`, `import`, `list`, `remove`, `export`, `compat`."""

from __future__ import annotations

from pathlib import Path

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, pass_ctx, say


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1e6:.1f} MB"


# ------------------------------------------------------------------------------------- fetch


@click.command("fetch")
@click.argument("targets", nargs=-1, metavar="NAME|ID|URL...")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Folder to save into (default: the workspace's embeddings/).")
@click.option("--as", "as_", type=click.Choice(["safetensors", "original"]), default="safetensors", show_default=True,
              help="safetensors converts pickled .pt/.bin files on arrival; original keeps the bytes.")
@click.option("--name", help="File name (trigger word) to save under; only with one target.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Files fetched at once.")
@click.option("--force", is_flag=True, help="Download again and replace a file of the same name.")
@click.option("--timeout", type=click.FloatRange(1, None), default=1800.0, show_default=True, help="Deadline per file in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@click.option("--upgrade", is_flag=True, help="Fetch the newer upstream version of local files NAME... (see `tihub outdated`).")
@click.option("--all", "all_", is_flag=True, help="With --upgrade: every outdated local file.")
@click.option("--keep-old", is_flag=True, help="With --upgrade: keep the replaced file as NAME.vN.<ext>.")
@pass_ctx
def fetch_cmd(ctx: Context, targets: tuple[str, ...], to: str | None, as_: str, name: str | None, jobs: int, force: bool, timeout: float, as_json: bool,
              upgrade: bool = False, all_: bool = False, keep_old: bool = False) -> None:
    """Download embeddings safely into embeddings/ (or --to): checked, resumable, atomic.

    A target is a catalogue name or id (from `tihub search`) or a URL. Each file is streamed to a
    hidden temp file, checked (size, sha256, HTML/JSON/LFS answers refused, read by the safe
    readers) and only then renamed into place and recorded in the catalogue. An interrupted
    download resumes. CIVITAI_TOKEN / HF_TOKEN are sent to their own hosts only.

    \b
    Example:
      tihub fetch easynegative
      tihub fetch 'https://huggingface.co/sd-concepts-library/cat-toy/resolve/main/learned_embeds.bin'
      tihub fetch badhand bad-artist -j 8 --to ~/webui/embeddings
      tihub fetch https://civitai.com/api/download/models/9208 --name easynegative
      tihub fetch --upgrade --all            # newer upstream versions of outdated files

    A fetched entry also gets NAME.json (A1111 / Civitai Helper user metadata: description,
    activation text, sd version, ...) and NAME.preview.png beside it; `tihub remove` deletes them.
    """
    from tihub.progress import Bar

    if upgrade or all_ or keep_old:
        if not upgrade:
            raise click.UsageError("--all and --keep-old only work with --upgrade.")
        from tihub.cli.knowledge import run_upgrade

        run_upgrade(ctx, targets, all_, keep_old, as_, jobs, timeout, as_json)
        return
    if not targets:
        raise click.UsageError("Give at least one NAME, ID or URL (or --upgrade --all).")
    if name and len(targets) > 1:
        raise click.UsageError("--name only works with one target.")
    bar = Bar("fetch", "bytes")
    try:
        results = ctx.hub.fetch_many(list(targets), to=to, convert=as_, name=name, jobs=jobs, force=force, timeout=timeout,
                                     progress=bar)
    except KeyboardInterrupt:
        bar.close()
        click.echo("Interrupted; partial downloads are kept, run the same fetch again to resume.", err=True)
        raise SystemExit(130) from None
    finally:
        bar.close()
    for r in results:
        if not r.ok:
            fail(r.error or f"{r.target} failed.")
        elif as_json:
            pass
        elif r.already_local:
            say(f"already here: {r.target} -> {r.path} (pass --force to fetch it again)")
        else:
            what = "fetched" if r.status == "fetched" else "already here"
            extra = ", converted to safetensors" if r.converted else ""
            extra += f", resumed at {r.resumed_from} bytes" if r.resumed_from else ""
            say(f"{what}: {r.target} -> {r.path} ({_size(r.size)}, sha256 {r.sha256[:12] if r.sha256 else '?'}{extra})")
    if as_json:
        echo_json([r.as_dict() for r in results])
    exit_status(any(not r.ok for r in results))


# ------------------------------------------------------------------------------------ import


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--name", help="File name (trigger word) to save under; only with one file.")
@click.option("--as", "as_", type=click.Choice(["original", "safetensors"]), default="original", show_default=True,
              help="original keeps the bytes; safetensors converts pickled files.")
@click.option("--force", is_flag=True, help="Replace a different file with the same name.")
@click.option("--offline", is_flag=True, envvar="TIHUB_OFFLINE", help="Do not ask Civitai about the files' hashes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@pass_ctx
def import_cmd(ctx: Context, files: tuple[str, ...], name: str | None, as_: str, force: bool, offline: bool, as_json: bool) -> None:
    """Add files you downloaded yourself (e.g. from mega) to embeddings/.

    Each file is read safely (no code runs), matched to a catalogue entry by sha256, else by
    name, copied into embeddings/ and recorded. Its sha256 is looked up in the catalogue (any
    source) and, with a civitai source configured, on Civitai (answers cached): the result says
    where it came from, its page and its trigger words, or that nothing known matches.

    \b
    Example:
      tihub import ~/Downloads/easynegative.safetensors
      tihub import ~/Downloads/learned_embeds.bin --name cat-toy
    """
    if name and len(files) > 1:
        raise click.UsageError("--name only works with one file.")
    hub = ctx.hub
    results = hub.import_files(list(files), name=name, convert=as_, force=force, remote=not offline)
    for r in results:
        if not r.ok:
            fail(r.error or f"{r.input} failed.")
        elif not as_json:
            if r.identified:
                match = f", it is {r.entry!r} from {r.source}" + (f" ({r.page_url})" if r.page_url else "")
            elif r.entry:
                match = f", matches catalogue entry {r.entry!r} by {r.matched_by}"
            else:
                match = ", matches nothing in the catalogue" + (" or on Civitai" if hub.asks_civitai(not offline) else "")
            say(f"{'imported' if r.status == 'imported' else 'already here'}: {r.input} -> {r.path}{match}")
            if r.duplicates:
                say(f"  the same bytes as {', '.join(r.duplicates)} (exact duplicate)")
            if r.triggers:
                say(f"  triggers: {', '.join(r.triggers)}")
    if as_json:
        echo_json([r.as_dict() for r in results])
    exit_status(any(not r.ok for r in results))


# -------------------------------------------------------------------------------------- list


@click.command("list")
@click.option("--offline", is_flag=True, envvar="TIHUB_OFFLINE", help="Do not ask Civitai about unknown files' hashes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_cmd(ctx: Context, offline: bool, as_json: bool) -> None:
    """List the embeddings in embeddings/ (subfolders too), with their problems.

    Shows name, base (sd1/sd2/sdxl), vector count, format, the model it was trained on and what
    the file is: recognised by its sha256 in the catalogue (any source) or, with a civitai
    source configured, on Civitai (answers cached), with its page and trigger words; or that
    nothing known matches. Files with the very same bytes are shown as duplicates of each other.
    Flags duplicate trigger names, unreadable files and files that are not embeddings.
    Unchanged files are not read again.

    \b
    Example:
      tihub list
      tihub list --json | jq '.[] | select(.problems != [])'
    """
    hub = ctx.hub
    rows = hub.local(remote=not offline)
    folder = hub.workspace.embeddings_dir
    if as_json:
        echo_json([r.as_dict() for r in rows])
        return
    if not rows:
        click.echo(f"No embeddings in {folder}; use `tihub fetch NAME` or `tihub import FILE`.")
        return
    from tihub.tables import Column, render, safe_text

    table = []
    notes = []
    problems = unknown = 0
    for r in rows:
        if r.identified:
            entry = f"{r.entry} ({r.source})"
        else:
            unknown += 1
            entry = "no match" if r.readable else "-"
        table.append((r.path, r.base or "?", r.vectors, r.format or "?", r.trained_on, entry))
        if r.page_url or r.triggers:
            words = f"triggers: {', '.join(r.triggers)}" if r.triggers else ""
            notes.append(f"  = {r.path}: {'  '.join(x for x in (r.page_url or '', words) if x)}")
        if r.duplicates:
            notes.append(f"  = {r.path}: the same bytes as {', '.join(r.duplicates)} (exact duplicate)")
        for p in r.problems:
            problems += 1
            notes.append(f"  ! {r.path}: {p}")
    click.echo(render([Column("FILE", max_width=40), "BASE", Column("VEC", "right"), "FORMAT", Column("TRAINED ON", max_width=36), "ENTRY"], table))
    for n in notes:
        click.echo(safe_text(n))
    where = "the catalogue or on Civitai" if hub.asks_civitai(not offline) else "the catalogue"
    click.echo(f"{len(rows)} file(s), {problems} problem(s), {unknown} matching nothing in {where}.")


# ------------------------------------------------------------------------------------ remove


@click.command("remove")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@pass_ctx
def remove_cmd(ctx: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Delete embeddings from embeddings/ (with their NAME.preview.* and NAME.json sidecars)
    and mark them not local in the catalogue.

    \b
    Example:
      tihub remove bad-artist
      tihub remove styles/old-style.pt
    """
    from tihub.errors import TihubError
    from tihub.results import RemoveResult

    failed = False
    out: list[RemoveResult] = []
    for n in names:  # a name that cannot be removed does not stop the others
        try:
            r = ctx.hub.remove(n)
            if not as_json:
                extra = [Path(x).name for x in r.sidecars]
                say(f"removed: {r.path}" + (f" (and {', '.join(extra)})" if extra else ""))
            out.append(r)
        except TihubError as exc:
            failed = True
            fail(str(exc))
            out.append(RemoveResult(name=n, path=None, ok=False, error=str(exc)))
    if as_json:
        echo_json([r.as_dict() for r in out])
    exit_status(failed)


# ------------------------------------------------------------------------------------ export


@click.command("export")
@click.argument("names", nargs=-1, required=True)
@click.option("--to", "to", required=True, type=click.Path(file_okay=False), help="The app's install folder.")
@click.option("--app", required=True, type=click.Choice(["a1111", "comfyui", "invokeai"]), help="Which app the files are for.")
@click.option("--force", is_flag=True, help="Replace a different file with the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@pass_ctx
def export_cmd(ctx: Context, names: tuple[str, ...], to: str, app: str, force: bool, as_json: bool) -> None:
    """Copy embeddings into another app's folders and print how to use each in a prompt.

    A1111/Forge: DIR/embeddings/ (prompt: name); ComfyUI: DIR/models/embeddings/ (prompt:
    embedding:name); InvokeAI: DIR/models/<sd-1|sd-2|sdxl>/embedding/ (prompt: <name>).

    \b
    Example:
      tihub export easynegative bad-artist --to ~/ComfyUI --app comfyui
      tihub export easynegative --to ~/stable-diffusion-webui --app a1111
    """
    results = ctx.hub.export(list(names), to, app, force=force)
    for r in results:
        if not r.ok:
            fail(r.error or f"{r.name} failed.")
        elif not as_json:
            say(f"{'exported' if r.status == 'exported' else 'already there'}: {r.name} -> {r.path}   prompt: {r.triggers[0] if r.triggers else ''}")
    if as_json:
        echo_json([r.as_dict() for r in results])
    exit_status(any(not r.ok for r in results))


# ------------------------------------------------------------------------------------ compat


@click.command("compat")
@click.argument("names", nargs=-1)
@click.option("--model", "model_path", type=click.Path(exists=True), help="A model file or diffusers folder.")
@click.option("--model-hash", help="A model hash: A1111 old (8 hex), AutoV2 (10 hex) or sha256.")
@click.option("--catalog", "include_catalog", is_flag=True, help="Also judge catalogue entries that are not fetched.")
@click.option("--offline", is_flag=True, envvar="TIHUB_OFFLINE", help="Do not ask Civitai about unknown hashes.")
@click.option("--app", type=click.Choice(["a1111", "forge", "comfyui", "invokeai", "diffusers"]),
              help="Judge for this app (its fit and reason); --json always has every app under `apps`.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, ok, fit, reason, trained_on, trained_on_name, apps, ...}.")
@pass_ctx
def compat_cmd(ctx: Context, names: tuple[str, ...], model_path: str | None, model_hash: str | None, include_catalog: bool, offline: bool, app: str | None, as_json: bool) -> None:
    """Say which embeddings work on a model: trained-on, same-family, partial, wont-load, unknown.

    The model is a file (hashed with the cache, family read from its headers) or any hash form;
    hashes are looked up among models tihub hashed, a built-in table of well-known models and
    Civitai (answers cached). Without NAMEs every local embedding is judged. The verdict depends
    on the app: A1111 and Forge skip an SD1 embedding on SDXL, ComfyUI applies it to CLIP-L only,
    InvokeAI refuses it; --app picks one, otherwise apps that differ are listed. Models may also
    be SDXL refiners, SD3 or Flux; an embedding made for Pony, Illustrious or NoobAI is flagged on
    other SDXL models.

    \b
    Example:
      tihub compat --model-hash 7460a6fa
      tihub compat --model ~/models/sd_xl_base_1.0.safetensors easynegative --app comfyui
      tihub compat --model-hash 6ce0161689 --catalog --json
    """
    from tihub.compat import FAMILY_NAMES, app_summary

    if bool(model_path) == bool(model_hash):
        raise click.UsageError("Give exactly one of --model FILE or --model-hash HASH.")
    report = ctx.hub.judge(list(names), model_file=model_path, model_hash=model_hash, catalog=include_catalog,
                           remote=not offline, app=app)
    results = report.results
    for r in results:
        if not r.ok:
            fail(r.error or f"{r.name} failed.")
    if as_json:
        echo_json([r.as_dict() for r in results])
    else:
        model = report.model
        fam = FAMILY_NAMES.get(model.family or "", "unknown family")
        origin = {"hashed": "hashed file", "builtin": "built-in table", "civitai": "Civitai", "catalog": "catalogue"}.get(model.origin, "unknown")
        say(f"Model: {model.label()} — {fam} ({origin}{'; ' + model.note if model.note and model.origin == 'unknown' else ''})")
        if not results:
            click.echo("No embeddings to judge; name some, fetch some, or add --catalog.")
        from tihub.tables import Column, render, safe_text

        judged = [r for r in results if r.ok]
        if judged:
            click.echo(render([Column("NAME", max_width=40), "FIT", "WHY"], [(r.name, r.fit, r.reason) for r in judged]))
        for r in judged:  # where the apps disagree, each app's verdict
            if not app and len({v["fit"] for v in r.apps.values()}) > 1:
                click.echo(safe_text(f"{r.name} per app: {app_summary(r.apps)}"))
    exit_status(any(not r.ok for r in results))
