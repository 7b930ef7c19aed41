"""Collection commands: `tihub fetch`, `import`, `list`, `remove`, `export`, `compat`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from tihub.cli._common import Context, checkpoint_name, echo_json, exit_status, fail, item, pass_ctx, say
from tihub.shapes import list_item

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _catalog(ctx: Context):  # type: ignore[no-untyped-def]
    from tihub.catalog.store import Catalog

    return Catalog(ctx.engine(), ctx.workspace)


def _sources(ctx: Context) -> dict[str, Any]:
    from tihub.errors import ConfigError

    try:
        return {s.name: s for s in ctx.workspace.sources()}
    except ConfigError as exc:
        fail(f"{exc} (private addresses stay refused for catalogue URLs)")
        return {}


def _strip_suffix(name: str | None) -> str | None:
    from tihub.formats import EMBEDDING_SUFFIXES

    if name and name.lower().endswith(EMBEDDING_SUFFIXES):
        return name.rsplit(".", 1)[0]
    return name


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
    from tihub.download import Downloader, Progress, Request
    from tihub.errors import NotFound

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
    name = _strip_suffix(name)
    ws = ctx.workspace
    ws.ensure()
    folder = Path(to).expanduser() if to else ws.embeddings_dir
    catalog = None
    failed = False
    out: list[dict[str, Any]] = []
    requests: list[Request] = []
    specs: dict[str, Any] | None = None
    for t in targets:
        if _URL_RE.match(t):
            requests.append(Request(t, name=name, trusted=True, label=t))
            continue
        if catalog is None:
            catalog = _catalog(ctx)
        try:
            files = catalog.files_for(t)
        except NotFound as exc:
            fail(str(exc))
            out.append(_fetch_item(t, False, str(exc)))
            failed = True
            continue
        here = [f for f in files if f.get("local_path") and Path(f["local_path"]).is_file()]
        if here and not force and not to:
            if not as_json:
                say(f"already here: {t} -> {here[0]['local_path']} (pass --force to fetch it again)")
            out.append(_fetch_item(t, True, status="exists", path=here[0]["local_path"], name=here[0].get("entry_name"),
                                   sha256=here[0].get("sha256"), size=here[0].get("size"), url=here[0].get("url")))
            continue
        usable = [f for f in files if f.get("url") and not f.get("manual")]
        if not usable:
            page = next((f.get("url") or f.get("page_url") for f in files if f.get("url") or f.get("page_url")), None)
            where = f"open {page} in a browser, download it" if page else "download it by hand"
            message = f"{t} is a manual download: {where} and run `tihub import FILE`."
            fail(message)
            out.append(_fetch_item(t, False, message, status="manual", url=page))
            failed = True
            continue
        f = usable[0]
        if specs is None:
            specs = _sources(ctx)
        spec = specs.get(f.get("source") or "")
        requests.append(
            Request(
                f["url"],
                name=name or f.get("entry_name"),
                sha256=f.get("sha256"),
                size=f.get("size"),
                entry_id=f.get("entry_id"),
                entry_name=f.get("entry_name"),
                file_name=f.get("file_name"),
                trusted=False,
                allow_private=bool(spec and spec.allow_private),
                label=t,
            )
        )

    def record(path: Path, emb: Any, sha: str, req: Request) -> None:
        nonlocal catalog
        if catalog is None:
            catalog = _catalog(ctx)
        catalog.upsert_local_file(path, emb, sha, req.entry_id)
        from tihub.collection import after_fetch

        after_fetch(catalog, path, sha, req.entry_id, req.url, allow_private=req.allow_private, upstream_sha256=req.sha256)

    from tihub.retry import reporting

    results = []
    if requests:
        from tihub.blobcache import BlobCache

        progress = Progress()
        try:
            with reporting(progress.note), Downloader(folder, convert=as_, force=force, jobs=jobs, deadline=timeout, progress=progress, record=record) as dl:
                dl.blob_cache = BlobCache.for_workspace(ws)
                results = dl.fetch_all(requests)
        except KeyboardInterrupt:
            progress.close()
            click.echo("Interrupted; partial downloads are kept, run the same fetch again to resume.", err=True)
            raise SystemExit(130) from None
    for r in results:
        label = r.request.label or r.request.url
        if r.ok:
            what = "fetched" if r.status == "fetched" else "already here"
            extra = ", converted to safetensors" if r.converted else ""
            extra += f", resumed at {r.resumed_from} bytes" if r.resumed_from else ""
            if not as_json:
                say(f"{what}: {label} -> {r.path} ({_size(r.size)}, sha256 {r.sha256[:12] if r.sha256 else '?'}{extra})")
        else:
            failed = True
            fail(r.error or f"{label} failed.")
        out.append(_fetch_item(label, r.ok, r.error or f"{label} failed.", status=r.status, path=str(r.path) if r.path else None,
                               name=r.path.stem if r.path else r.request.name, url=r.request.url, sha256=r.sha256, size=r.size,
                               converted=r.converted, resumed_from=r.resumed_from))
    if as_json:
        echo_json(out)
    exit_status(failed)


def _fetch_item(target: str, ok: bool, error: str | None = None, **facts: Any) -> dict[str, Any]:
    """One fetch result in the JSON vocabulary (every key present, null when unknown)."""
    base = {"target": target, "status": "failed", "name": None, "path": None, "url": None, "sha256": None, "size": None,
            "converted": False, "resumed_from": None}
    return item(ok, error, **{**base, **facts})


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
    from tihub.collection import import_file

    if name and len(files) > 1:
        raise click.UsageError("--name only works with one file.")
    ws = ctx.workspace
    ws.ensure()
    catalog = _catalog(ctx)
    url, allow_private = _civitai(ctx)
    failed = False
    out = []
    for f in files:
        r = import_file(f, ws.embeddings_dir, catalog, name=_strip_suffix(name), convert=as_, force=force,
                        civitai_url=url, allow_private=allow_private, remote=not offline)
        if r.status == "failed":
            failed = True
            fail(r.error or f"{f} failed.")
        elif not as_json:
            if r.identified:
                match = f", it is {r.entry!r} from {r.origin}" + (f" ({r.page_url})" if r.page_url else "")
            elif r.entry:
                match = f", matches catalogue entry {r.entry!r} by {r.matched_by}"
            else:
                match = ", matches nothing in the catalogue" + (" or on Civitai" if url and not offline else "")
            say(f"{'imported' if r.status == 'imported' else 'already here'}: {f} -> {r.path}{match}")
            if r.duplicate_of:
                say(f"  the same bytes as {', '.join(r.duplicate_of)} (exact duplicate)")
            if r.triggers:
                say(f"  triggers: {', '.join(r.triggers)}")
        out.append(item(r.status != "failed", r.error or f"{f} failed.", input=f, status=r.status,
                        name=r.path.stem if r.path else None, path=str(r.path) if r.path else None,
                        entry=r.entry, matched_by=r.matched_by, identified=r.identified, source=r.origin,
                        page_url=r.page_url, triggers=r.triggers or [], duplicates=r.duplicate_of or []))
    if as_json:
        echo_json(out)
    exit_status(failed)


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
    from tihub.collection import list_collection

    ws = ctx.workspace
    ws.ensure()
    url, allow_private = _civitai(ctx)
    rows = list_collection(ws, _catalog(ctx), civitai_url=url, allow_private=allow_private, remote=not offline)
    if as_json:
        echo_json([list_item(ws.embeddings_dir, r) for r in rows])
        return
    if not rows:
        click.echo(f"No embeddings in {ws.embeddings_dir}; use `tihub fetch NAME` or `tihub import FILE`.")
        return
    from tihub.tables import Column, render, safe_text

    table = []
    notes = []
    problems = unknown = 0
    for r in rows:
        if r.get("identified"):
            entry = f"{r['entry']} ({r['source']})"
        else:
            unknown += 1
            entry = "no match" if r["readable"] else "-"
        table.append((r["path"], r["base"] or "?", r["vectors"], r["format"] or "?", r["trained_on"], entry))
        if r.get("page_url") or r.get("triggers"):
            words = f"triggers: {', '.join(r['triggers'])}" if r.get("triggers") else ""
            notes.append(f"  = {r['path']}: {'  '.join(x for x in (r.get('page_url') or '', words) if x)}")
        if r.get("duplicates"):
            notes.append(f"  = {r['path']}: the same bytes as {', '.join(r['duplicates'])} (exact duplicate)")
        for p in r["problems"]:
            problems += 1
            notes.append(f"  ! {r['path']}: {p}")
    click.echo(render([Column("FILE", max_width=40), "BASE", Column("VEC", "right"), "FORMAT", Column("TRAINED ON", max_width=36), "ENTRY"], table))
    for n in notes:
        click.echo(safe_text(n))
    where = "the catalogue or on Civitai" if url and not offline else "the catalogue"
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
    from tihub.collection import remove_files
    from tihub.errors import TihubError

    ws = ctx.workspace
    catalog = _catalog(ctx)
    failed = False
    out = []
    for n in names:
        try:
            p, *extra = remove_files(ws, n, catalog)
            if not as_json:
                say(f"removed: {p}" + (f" (and {', '.join(x.name for x in extra)})" if extra else ""))
            out.append(item(True, name=n, path=str(p), sidecars=[str(x) for x in extra]))
        except TihubError as exc:
            failed = True
            fail(str(exc))
            out.append(item(False, str(exc), name=n, path=None, sidecars=[]))
    if as_json:
        echo_json(out)
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
    from tihub.collection import export
    from tihub.errors import ConfigError

    root = Path(to).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--to {to}: there is no such folder; give the {app} install folder (it must exist), e.g. ~/ComfyUI.")
    results = export(ctx.workspace, list(names), root, app, force=force)
    failed = False
    for r in results:
        if r.status == "failed":
            failed = True
            fail(r.error or f"{r.name} failed.")
        elif not as_json:
            say(f"{'exported' if r.status == 'exported' else 'already there'}: {r.name} -> {r.path}   prompt: {r.trigger}")
    if as_json:
        echo_json([item(r.status != "failed", r.error or f"{r.name} failed.", name=r.name, status=r.status, path=str(r.path) if r.path else None,
                         triggers=[r.trigger] if r.trigger else []) for r in results])
    exit_status(failed)


# ------------------------------------------------------------------------------------ compat


def _civitai(ctx: Context) -> tuple[str | None, bool]:
    from tihub.errors import ConfigError

    try:
        specs = ctx.workspace.sources()
    except ConfigError:
        specs = []
    for s in specs:
        if s.kind == "civitai" and s.enabled:
            return (s.get("url") or "https://civitai.com"), s.allow_private
    return None, False


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
    from tihub.collection import list_collection
    from tihub.compat import (
        FAMILY_NAMES,
        TRAINED_ON,
        app_summary,
        model_from_file,
        model_from_hash,
        name_checkpoints,
        report_catalog,
        report_local,
    )
    from tihub.errors import NotFound, TihubError

    if bool(model_path) == bool(model_hash):
        raise click.UsageError("Give exactly one of --model FILE or --model-hash HASH.")
    ws = ctx.workspace
    ws.ensure()
    catalog = _catalog(ctx)
    url, allow_private = _civitai(ctx)
    if model_path:
        model = model_from_file(model_path, catalog)
    else:
        model = model_from_hash(model_hash or "", catalog, civitai_url=url, allow_private=allow_private, remote=not offline)
    local = list_collection(ws, catalog)
    failed = False
    # what to judge: ("local", items), ("catalog", rows) and ("error", [failed name]), in order
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    if names:
        for n in names:
            low = n.lower()
            mine = [r for r in local if r["name"].lower() == low or r["path"].lower() == low]
            if mine:
                groups.append(("local", [_local_item(r) for r in mine]))
                continue
            try:
                files = catalog.files_for(n)
            except NotFound as exc:
                failed = True
                fail(str(exc))
                groups.append(("error", [{"name": n, "error": str(exc)}]))
                continue
            rows = []
            for f in files[:1]:
                full = catalog.file_by_sha256(f["sha256"]) if f.get("sha256") else None
                rows.append({"name": f.get("entry_name") or n, "base": f.get("base"), "widths": f.get("widths"),
                             "sd_checkpoint": (full or {}).get("sd_checkpoint"), "source": f.get("source"),
                             "base_model": f.get("base_model")})
            if not rows:
                rows.append({"name": n, "base": None, "widths": None, "sd_checkpoint": None})
            groups.append(("catalog", rows))
    else:
        groups.append(("local", [_local_item(r) for r in local]))
        if include_catalog:
            try:
                rows = catalog.search(local=False, limit=None)
            except TihubError as exc:
                fail(str(exc))
                rows = []
            groups.append(("catalog", rows))
    # Name the model each embedding was made on (one bulk Civitai lookup for unknown hashes).
    made_on = name_checkpoints(
        {r["sd_checkpoint"] for _, items in groups for r in items if r.get("sd_checkpoint")},
        catalog, civitai_url=url, allow_private=allow_private, remote=not offline,
    )
    results: list[dict[str, Any]] = []
    for kind, items in groups:
        if kind == "error":  # a name that is neither local nor catalogued: a failed item, in order
            results += items
        else:
            results += (report_local if kind == "local" else report_catalog)(items, model, made_on)
    for r in results:
        if "error" in r:
            continue
        m = made_on.get(r.get("sd_checkpoint") or "")
        r["made_on"] = m.label() if m is not None and m.name else None
        r["made_on_name"] = m.name if m is not None and m.name else None
        if r["made_on"] and r["status"] != TRAINED_ON:
            r["reason"] += f"; it was made on {r['made_on']}"
        if app:
            r["app"] = app
            r["status"], r["reason"] = r["apps"][app]["status"], r["apps"][app]["reason"]
    if as_json:
        echo_json([
            item(False, r["error"], name=r["name"], fit=None, reason=None, trained_on=None, trained_on_name=None) if "error" in r
            else item(True, name=r["name"], fit=r["status"], reason=r["reason"], trained_on=r.get("sd_checkpoint"),
                      trained_on_name=r["made_on_name"], line=r.get("line"),
                      path=str(ws.embeddings_dir / r["path"]) if r.get("path") else None, source=r.get("source"),
                      apps={a: {"fit": v["status"], "reason": v["reason"]} for a, v in r["apps"].items()},
                      **({"app": app} if app else {}))
            for r in results
        ])
    else:
        fam = FAMILY_NAMES.get(model.family or "", "unknown family")
        origin = {"hashed": "hashed file", "builtin": "built-in table", "civitai": "Civitai", "catalog": "catalogue"}.get(model.origin, "unknown")
        say(f"Model: {model.label()} — {fam} ({origin}{'; ' + model.note if model.note and model.origin == 'unknown' else ''})")
        if not results:
            click.echo("No embeddings to judge; name some, fetch some, or add --catalog.")
        from tihub.tables import Column, render, safe_text

        judged = [r for r in results if "error" not in r]
        if judged:
            click.echo(render([Column("NAME", max_width=40), "FIT", "WHY"], [(r["name"], r["status"], r["reason"]) for r in judged]))
        for r in judged:  # where the apps disagree, each app's verdict
            if not app and len({v["status"] for v in r["apps"].values()}) > 1:
                click.echo(safe_text(f"{r['name']} per app: {app_summary(r['apps'])}"))
    exit_status(failed)


def _local_item(row: dict[str, Any]) -> dict[str, Any]:
    widths = row.get("widths")
    problem = "; ".join(row["problems"]) if row.get("problems") and not widths else None
    if problem and "T5 (4096-wide)" in problem:  # the reader refuses T5 embeddings; compat can judge them
        widths, problem = {"t5xxl": 4096}, None
    return {"name": row["name"], "widths": widths, "sd_checkpoint": row.get("sd_checkpoint"),
            "sd_checkpoint_name": row.get("sd_checkpoint_name"), "problem": problem, "path": row["path"]}

