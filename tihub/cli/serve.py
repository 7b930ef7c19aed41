"""`tihub serve`: the local web app and HTTP API (tihub/web/) for the workspace."""

from __future__ import annotations

from pathlib import Path

import click

from tihub.cli._common import Context, pass_ctx


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; any non-loopback address needs --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=7861, show_default=True, help="Port to listen on.")
@click.option("--token", envvar="TIHUB_TOKEN", metavar="T", help="Secret every request must carry (default: $TIHUB_TOKEN).")
@click.option("--models", "models", multiple=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="A folder of models (and pictures) training, grids and verification may read besides the workspace; repeatable.")
@click.option("--app-folder", "app_folders", multiple=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="An app's install folder (A1111, ComfyUI, InvokeAI) the export button may copy into; repeatable.")
@pass_ctx
def serve_cmd(ctx: Context, host: str, port: int, token: str | None, models: tuple[str, ...] = (),
              app_folders: tuple[str, ...] = ()) -> None:
    """Serve the web app: browse and search the catalogue with pictures, open entries, fetch,
    export, draw preview grids, verify and train with live progress, see the local collection
    and past jobs; JSON API under /api/ (docs at /docs).

    Binds 127.0.0.1 by default. Another --host needs --token (or $TIHUB_TOKEN): open the printed
    URL once (it carries ?token=...) and the browser keeps it in a cookie; API clients send
    `Authorization: Bearer T`. Requests that change something must come from the page itself.

    \b
    Example:
      tihub serve                                   # http://127.0.0.1:7861/
      tihub serve --port 8080 --models ~/models     # training, grids, verify may use ~/models
      tihub serve --app-folder ~/ComfyUI            # export may copy into ~/ComfyUI
      TIHUB_TOKEN=s3cret tihub serve --host 0.0.0.0
    """
    from tihub.web.app import _loopback

    if not _loopback(host) and not token:
        raise click.UsageError(f"--host {host} is reachable from other machines; give --token T (or set $TIHUB_TOKEN) too.")
    try:
        import uvicorn

        from tihub.hub import Hub
        from tihub.web.app import create_app
    except ImportError as exc:  # pragma: no cover - the web extra is missing
        raise click.UsageError(f"tihub serve needs {exc.name}; install it with `pip install 'tihub[web]'`.") from None
    ws = ctx.workspace
    hub = Hub(ws.root, ws.db_url)
    hub.catalog  # create/migrate the catalogue now, not on the first request
    app = create_app(hub, token=token, read_dirs=[Path(m) for m in models], app_dirs=[Path(a) for a in app_folders])
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"tihub serves {ws.root} at {url}  (Ctrl+C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
