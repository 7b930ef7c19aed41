"""`tihub serve`: a local web app and HTTP API over `tihub.hub.Hub`.

Pages (server-rendered Jinja2, a little hand-written JavaScript in static/app.js):
`/` browse and search, `/entries/{id}` one entry, `/local` the local collection.
API under `/api/` (OpenAPI at `/openapi.json`, docs at `/docs`), JSON in the shapes of the CLI's
`--json`; every error is `{"ok": false, "error": "<one sentence>"}`.

Safety: the server binds 127.0.0.1 unless given a token; with a token every request carries it
(`Authorization: Bearer T`, `X-Tihub-Token: T`, or the cookie set by a first visit with
`?token=T`). On loopback without a token only loopback Host headers are answered (no DNS
rebinding). State-changing requests from another origin are refused. The only files served are
the package's static files and thumbnails in the workspace cache, looked up by preview id.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import threading
import time
import typing
from pathlib import Path
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import Body, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, create_model
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tihub.errors import ConfigError, NotFound, TihubError
from tihub.hub import MAX_OFFSET, SORTS, Hub, SearchHit
from tihub.web.jobs import Job, Jobs

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 24
MAX_UPLOAD = 20 * 1024 * 1024  # one training picture
NAME_PART = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # one path part: no separators, never "." or ".."
PICTURE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,94}\.(png|jpg|jpeg|webp|PNG|JPG|JPEG|WEBP)$"
TOKEN_COOKIE = "tihub_token"
MODEL_COOKIE = "tihub_model"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MODEL_HASH = "^(sd1|sd2|sdxl|[0-9a-fA-F]{8}|[0-9a-fA-F]{10}|[0-9a-fA-F]{12}|[0-9a-fA-F]{64})$"  # a family or a hash form


# ------------------------------------------------------------------------------ API shapes


class ErrorOut(BaseModel):
    ok: bool = False
    error: str


def model_of(dc: type, *, exclude: tuple[str, ...] = (), name: str | None = None) -> type[BaseModel]:
    """The response model of a library dataclass (its fields, types and defaults), less the
    fields in `exclude`: the dataclass stays the one definition of the shape."""
    hints = typing.get_type_hints(dc)
    defs: dict[str, Any] = {}
    for f in dataclasses.fields(dc):
        if f.name in exclude:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        defs[f.name] = (hints[f.name], default)
    return create_model(name or dc.__name__, **defs)


HitOut = model_of(SearchHit, exclude=("trigger",), name="HitOut")  # the JSON vocabulary: `triggers` only
JobOut = model_of(Job, name="JobOut")


class AppFitOut(BaseModel):
    fit: str
    reason: str


class CompatOut(BaseModel):
    ok: bool = True
    name: str
    fit: str
    reason: str
    path: str | None
    trained_on: str | None = None
    model: str
    apps: dict[str, AppFitOut] = {}


class RemoveIn(BaseModel):
    name: str = Field(min_length=1, max_length=500, description="A local embedding: name, file name or path under embeddings/.")


class RemovedOut(BaseModel):
    ok: bool = True
    name: str
    path: str


class SyncIn(BaseModel):
    sources: list[str] = Field(default_factory=list, max_length=100, description="Source names; empty: every enabled source.")


class TrainIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The new embedding's name (its prompt word).")
    images: str = Field(min_length=1, max_length=1000, description="A folder of pictures inside the workspace (or a --models folder).")
    model: str = Field(min_length=1, max_length=1000, description="A model folder or file inside the workspace or a --models folder.")
    steps: int = Field(200, ge=1, le=100_000)
    vectors: int = Field(1, ge=1, le=75)
    size: str = Field("auto", pattern=r"^(auto|none|\d{2,4}|\d{2,4}x\d{2,4})$")
    lr: str = Field("0.005", max_length=200)
    overwrite: bool = False
    preview_every: int = Field(0, ge=0, le=100_000, description="Draw a preview picture every N steps (0: none).")


class ExportIn(BaseModel):
    name: str = Field(min_length=1, max_length=300, description="An embedding in embeddings/: its name, file name or relative path.")
    app: typing.Literal["a1111", "comfyui", "invokeai"] = Field(description="The app the file is for.")
    to: str = Field(min_length=1, max_length=1000, description="The app's install folder: inside the workspace or an --app-folder folder.")
    force: bool = Field(False, description="Replace a different file of the same name there.")


class GridIn(BaseModel):
    name: str = Field(min_length=1, max_length=300, description="An embedding: a catalogue name (fetched) or a name in embeddings/.")
    model: str = Field(min_length=1, max_length=1000, description="A model folder or file inside the workspace or a --models folder.")
    steps: int = Field(20, ge=1, le=150)
    size: str = Field("", pattern=r"^(|\d{2,4}|\d{2,4}x\d{2,4})$", description="Picture size; empty: the model's own.")


class VerifyIn(GridIn):
    grid: bool = Field(True, description="Also draw the standard preview grid.")


class FetchIn(BaseModel):
    target: str = Field(min_length=1, max_length=300, description="A catalogue entry name or id.")
    force: bool = False


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut},
    404: {"model": ErrorOut}, 422: {"model": ErrorOut},
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1: host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class FacetCache:
    """The search page's facets without the wait: listing the kinds scans the catalogue (1.5 s at
    1,000,000 entries), so the first list is made when the server starts, and a list older than
    `max_age` is served while a fresh one is made in the background."""

    def __init__(self, hub: Hub, max_age: float = 30.0) -> None:
        self.hub, self.max_age = hub, max_age
        self._value: Any = None
        self._at = 0.0
        self._lock = threading.Lock()  # one refresh at a time
        self._busy = False

    def refresh(self) -> Any:
        with self._lock:
            self._value, self._at = self.hub.facets(max_age=0), time.monotonic()
            return self._value

    def _background(self) -> None:
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - the page keeps the list it has; the next visit tries again
            pass
        finally:
            self._busy = False

    def start(self) -> None:
        """Refresh in a thread (unless one runs)."""
        if not self._busy:
            self._busy = True
            threading.Thread(target=self._background, name="tihub-facets", daemon=True).start()

    def get(self) -> Any:
        if self._value is None:  # the first list: wait for it (for the one the start began, if it runs)
            with self._lock:
                if self._value is None:
                    self._value, self._at = self.hub.facets(max_age=0), time.monotonic()
            return self._value
        if time.monotonic() - self._at > self.max_age:
            self.start()
        return self._value


class Outside(TihubError):
    """A path outside the folders this server may read or write (answered 403)."""


def create_app(hub: Hub, *, token: str | None = None, read_dirs: list[Path] | None = None,
               app_dirs: list[Path] | None = None) -> FastAPI:
    """The ASGI app for one workspace. `token`: required on every request when given.
    `read_dirs`: folders besides the workspace that training, grids and verification may read
    models and pictures from. `app_dirs`: apps' install folders that export may copy into."""
    workspace = hub.workspace.root.resolve()
    roots = [workspace, *[Path(d).expanduser().resolve() for d in read_dirs or []]]
    export_roots = [workspace, *[Path(d).expanduser().resolve() for d in app_dirs or []]]

    def confined(value: str, what: str, allowed: list[Path] | None = None) -> Path:
        """`value` (absolute, or relative to the workspace) if it lies inside an allowed folder."""
        p = Path(value).expanduser()
        p = (p if p.is_absolute() else hub.workspace.root / p).resolve()
        if allowed is not None:
            if not any(p.is_relative_to(r) for r in allowed):
                raise Outside(f"The {what} {value} is outside the workspace and the --app-folder folders; "
                              "pick one of those or start `tihub serve --app-folder DIR`.")
        elif not any(p.is_relative_to(r) for r in roots):
            raise Outside(f"The {what} {value} is outside the workspace and the --models folders; "
                          "move it there or start `tihub serve --models DIR`.")
        if not p.exists():
            where = "a path relative to the workspace or an absolute path inside " + ("an --app-folder" if allowed is not None else "a --models folder")
            raise NotFound(f"The {what} {value} does not exist (looked for {p}); give {where}.")
        return p

    app = FastAPI(title="tihub", version="1", summary="Textual-inversion embeddings: search, inspect, fetch, compat.",
                  docs_url="/docs", redoc_url=None)
    app.state.hub = hub
    app.state.jobs = jobs = Jobs(hub.workspace.root / ".tihub-cache" / "jobs")  # kept across restarts
    app.state.facets = facets = FacetCache(hub)
    facets.start()  # the first page should not wait for the scan
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -------------------------------------------------------------- safety checks, every request

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        api = request.url.path.startswith("/api/") or request.url.path == "/openapi.json"
        host_header = request.headers.get("host", "")
        set_cookie = False
        if token:
            given = (
                request.headers.get("x-tihub-token")
                or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                or request.cookies.get(TOKEN_COOKIE)
                or ""
            )
            from_query = request.query_params.get("token", "")
            if from_query and hmac.compare_digest(from_query.encode(), token.encode()):
                given, set_cookie = from_query, True
            if not hmac.compare_digest(given.encode(), token.encode()):
                msg = "This tihub server needs its token; open the URL `tihub serve` printed (it ends in ?token=...)."
                return _error(401, msg) if api else HTMLResponse(f"<p>{msg}</p>", status_code=401)
            if set_cookie and request.method == "GET" and not api:
                # keep the token out of the address bar and history: the cookie carries it from now on
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                redirect = RedirectResponse(request.url.path + ("?" + rest if rest else ""), status_code=303)
                redirect.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return redirect
        elif not _loopback(_host_name(host_header)):
            return _error(403, f"The Host {host_header!r} is not this loopback server; open http://127.0.0.1 instead.")
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("origin")
            own = f"{request.url.scheme}://{host_header}"
            if origin is not None and origin != own:
                return _error(403, f"A request from {origin} may not change this server; use tihub's own page.")
            if origin is None and request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
                return _error(403, "A cross-site request may not change this server; use tihub's own page.")
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        if set_cookie and token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    # -------------------------------------------------------------- errors: one sentence, JSON

    @app.exception_handler(TihubError)
    async def tihub_error(request: Request, exc: TihubError):  # type: ignore[no-untyped-def]
        status = 404 if isinstance(exc, NotFound) else 403 if isinstance(exc, Outside) else 400
        if request.url.path.startswith("/api/"):
            return _error(status, str(exc))
        missing = request.path_params.get("entry") if request.url.path.startswith("/entries/") else None
        return templates.TemplateResponse(request, "error.html", {"message": str(exc), "search": missing}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body", "path")) or "the request"
        if first.get("type") == "string_pattern_mismatch":  # say what is wanted, never the regular expression
            value = str(first.get("input", ""))
            value = value if len(value) <= 60 else value[:57] + "..."
            hint = PATTERN_HINTS.get(where.rsplit(".", 1)[-1], "see /docs for the form it takes")
            return _error(422, f"The {where} {value!r} is not valid: {hint}.")
        return _error(422, f"{where}: {first.get('msg', 'invalid value')}; fix it and try again.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # type: ignore[no-untyped-def]
        msg = "Nothing is here; go back to the search page." if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, msg if msg.endswith(".") else msg + ".")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        return _error(500, f"The server failed on {request.url.path} ({type(exc).__name__}); see the server's log and try again.")

    # -------------------------------------------------------------- API

    # Searches run on the event loop itself: they are short and bounded (a few ms), and a hop to
    # the thread pool costs more than that under load (GIL handoffs); slow work (thumbnails,
    # fetches, entry pages) stays in threads.
    @app.get("/api/search", response_model=list[HitOut], responses=ERRORS, tags=["catalogue"])
    async def api_search(
        q: str = Query("", max_length=500, description="Full-text query; empty lists everything."),
        base: str | None = Query(None, pattern="^(sd1|sd2|sdxl|unknown)$"),
        kind: str | None = Query(None, max_length=50),
        source: str | None = Query(None, max_length=100),
        local: bool | None = None,
        nsfw: bool = False,
        model_hash: str | None = Query(None, pattern=MODEL_HASH, description="A known model's hash (or sd1/sd2/sdxl): adds `fit`."),
        sort: str = Query("relevance", pattern="^(" + "|".join(SORTS) + ")$"),
        limit: int = Query(20, ge=1, le=500),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> Any:
        try:
            hits = hub.search(q, base=base, kind=kind, source=source, local=local, nsfw=nsfw,
                              model_hash=model_hash or None, sort=sort, limit=limit, offset=offset)
        except ConfigError as exc:  # an unknown source or kind: nothing of that name, as /api/sync says
            raise NotFound(str(exc)) from None
        return [h.as_dict() for h in hits]

    @app.get("/api/entries/{entry}", response_model=dict[str, Any], responses=ERRORS, tags=["catalogue"])
    def api_entry(entry: str) -> Any:
        """One entry by id or name, as `tihub show --json`, with `pictures`."""
        e = hub.entry(entry)
        # the JSON vocabulary (as `tihub show --json`): `triggers` a list, files' `path` and `trained_on`
        e.pop("trigger", None)
        e["files"] = [{k: v for k, v in f.items() if k not in ("local_path", "sd_checkpoint", "sd_checkpoint_name")}
                      for f in e["files"]]
        from tihub.shapes import compat_item

        e["compat"] = [compat_item(c) for c in e.get("compat") or []]
        return _jsonable(e)

    @app.get("/api/local", response_model=list[dict[str, Any]], responses=ERRORS, tags=["collection"])
    def api_local() -> Any:
        """The files in embeddings/, as `tihub list --json`."""
        return _jsonable([r.as_dict() for r in hub.local()])

    @app.get("/api/compat", response_model=list[CompatOut], responses=ERRORS, tags=["collection"])
    def api_compat(model_hash: str = Query(..., pattern=MODEL_HASH, description="A model hash (8, 10, 12 or 64 hex) or sd1/sd2/sdxl.")) -> Any:
        """How every local embedding fits one model (as `tihub compat --model-hash H --json`)."""
        return [r.as_dict() for r in hub.compat(model_hash)]

    @app.post("/api/fetch", response_model=JobOut, status_code=202, responses=ERRORS, tags=["collection"])
    def api_fetch(body: FetchIn = Body(...)) -> Any:
        """Start fetching one catalogue entry's file; poll `/api/jobs/{id}` for progress."""
        hub.catalog.files_for(body.target)  # an unknown name is a 404 now, not a failed job later

        def work(job: Any) -> dict[str, Any]:
            def progress(done: int, total: int | None, message: str) -> None:
                job.update(done, total, message)

            return hub.fetch(body.target, progress=progress, force=body.force).as_dict()

        return jobs.start("fetch", body.target, work).as_dict()

    @app.post("/api/sync", response_model=JobOut, status_code=202, responses=ERRORS, tags=["catalogue"])
    def api_sync(body: SyncIn = Body(...)) -> Any:
        """Start syncing the sources (all enabled, or those named); poll `/api/jobs/{id}`."""
        names = [n for n in body.sources if n]
        known = {spec.name for spec in hub.workspace.sources()}  # a broken sources.yaml is a 400 now
        unknown = [n for n in names if n not in known]
        if unknown:
            raise NotFound(f"No source is named {unknown[0]!r} in sources.yaml; the sources are {', '.join(sorted(known)) or 'none'}.")

        def work(job: Any) -> dict[str, Any]:
            def progress(done: int, total: int | None, message: str) -> None:
                job.update(done, total, message)

            reports = hub.sync(names, progress=progress)
            facets.refresh()  # new kinds and sources show at once
            failed = [r for r in reports if not r.ok]
            out: dict[str, Any] = {"ok": not failed, "reports": [{**r.as_dict(), "summary": r.summary} for r in reports]}
            if failed:
                out["error"] = "; ".join(r.summary for r in failed)
            return out

        return jobs.start("sync", ",".join(sorted(names)) or "all", work).as_dict()

    @app.post("/api/train", response_model=JobOut, status_code=202, responses=ERRORS, tags=["train"])
    def api_train(body: TrainIn = Body(...)) -> Any:
        """Train a new embedding on a folder of pictures (as `tihub train`); poll `/api/jobs/{id}`
        for progress and the loss curve (`points`)."""
        images, model = confined(body.images, "pictures folder"), confined(body.model, "model")
        if not images.is_dir():
            raise TihubError(f"The pictures folder {body.images} is a file; give a folder of pictures.")

        def work(job: Job) -> dict[str, Any]:
            others = relay(job)  # preview pictures (as the engine makes them) and notes

            def progress(done: int, total: int | None, message: str) -> None:
                if getattr(message, "kind", None) != "step":
                    return others(done, total, message)
                loss = message.data.get("loss")  # type: ignore[attr-defined]
                if loss is not None:
                    job.add_point(done, float(loss))
                job.update(done, total, f"step {done}/{total}" + (f", loss {loss:.4f}" if loss is not None else ""))

            return hub.train(body.name, images, model, steps=body.steps, vectors=body.vectors, size=body.size,
                             lr=body.lr, overwrite=body.overwrite, preview_every=body.preview_every,
                             progress=progress).as_dict()

        return jobs.start("train", body.name, work).as_dict()

    def relay(job: Job) -> Callable[[int, int | None, str], None]:
        """The one progress callback of the library, into a job: amounts, statuses, new pictures."""
        def progress(done: int, total: int | None, message: str) -> None:
            kind, data = getattr(message, "kind", "status"), getattr(message, "data", None) or {}
            if kind == "preview" and data.get("path"):
                job.add_preview(str(data["path"]))
            elif kind == "note":
                job.update(message=str(message))
            else:
                job.update(done, total, f"step {done}/{total}" if kind == "step" else str(message))
        return progress

    def known_embedding(name: str) -> None:
        """A 404 now, not a failed job later, for a name that is neither fetched nor in embeddings/."""
        from tihub.collection import find_local

        try:
            find_local(hub.workspace.embeddings_dir, name)
            return
        except NotFound as exc:
            missing = exc
        try:
            e = hub.entry(name)
        except NotFound:
            raise missing from None
        if not e.get("path"):
            raise NotFound(f"{name} is in the catalogue but not fetched; fetch it first.")

    @app.post("/api/export", response_model=JobOut, status_code=202, responses=ERRORS, tags=["collection"])
    def api_export(body: ExportIn = Body(...)) -> Any:
        """Copy one embedding into an app's folder (as `tihub export NAME --to DIR --app APP`); the
        job's result says where it went and how a prompt names it (`triggers`). The folder must be
        inside the workspace or a folder given to `tihub serve --app-folder`."""
        from tihub.collection import export_dir, find_local

        to = confined(body.to, "app folder", export_roots)
        if not to.is_dir():
            raise TihubError(f"The app folder {body.to} is a file; give the app's install folder.")
        for base in ("sd1", "sd2", "sdxl"):  # a symlink inside the app folder must not lead out of it
            dest = export_dir(to, body.app, base if body.app == "invokeai" else None).resolve()
            if not any(dest.is_relative_to(r) for r in export_roots):
                raise Outside(f"{dest} (where {body.app} keeps embeddings) leads outside the allowed folders; fix that link first.")
        find_local(hub.workspace.embeddings_dir, body.name)  # an unknown name is a 404 now

        def work(job: Job) -> dict[str, Any]:
            (r,) = hub.export([body.name], to, body.app, force=body.force, progress=relay(job))
            return r.as_dict()

        return jobs.start("export", body.name, work).as_dict()

    @app.post("/api/grid", response_model=JobOut, status_code=202, responses=ERRORS, tags=["engine"])
    def api_grid(body: GridIn = Body(...)) -> Any:
        """Draw the standard preview grid of one embedding on a model (as `tihub grid NAME`); the
        picture is the job's first of `previews` (`/jobs/{id}/previews/0`) and is attached to the entry."""
        model = confined(body.model, "model")
        known_embedding(body.name)

        def work(job: Job) -> dict[str, Any]:
            r = hub.grid(body.name, model=str(model), steps=body.steps, size=body.size or None, progress=relay(job))
            job.add_preview(r.path)
            return r.as_dict()

        return jobs.start("grid", body.name, work).as_dict()

    @app.post("/api/verify", response_model=JobOut, status_code=202, responses=ERRORS, tags=["engine"])
    def api_verify(body: VerifyIn = Body(...)) -> Any:
        """Verify one embedding on a model (as `tihub verify NAME --model M`): it loads, its numbers
        are finite, its norms fit the model, and (with `grid`) its preview grid. Recorded in the
        catalogue, so the entry page lists it; a failed check fails the job with the reason."""
        model = confined(body.model, "model")
        known_embedding(body.name)

        def work(job: Job) -> dict[str, Any]:
            r = hub.verify(body.name, str(model), steps=body.steps, size=body.size or None, grid=body.grid, progress=relay(job))
            if r.grid:
                job.add_preview(r.grid)
            return r.as_dict()

        return jobs.start("verify", body.name, work).as_dict()

    picture_body = {"requestBody": {"required": True, "content": {
        t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/webp")}}}

    @app.put("/api/pictures/{folder}/{filename}", response_model=dict[str, Any], responses={**ERRORS, 413: {"model": ErrorOut}},
             tags=["train"], openapi_extra=picture_body)
    async def api_picture(request: Request, folder: str = PathParam(..., pattern=NAME_PART),
                          filename: str = PathParam(..., pattern=PICTURE_NAME)) -> Any:
        """Upload one training picture (the request body: PNG, JPEG or WEBP bytes, at most 20 MB)
        into WORKSPACE/pictures/FOLDER/; it is decoded before it is kept."""
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_UPLOAD:
                return _error(413, f"{filename} is larger than {MAX_UPLOAD // (1024 * 1024)} MB; make it smaller first.")
            chunks.append(chunk)
        return await run_in_threadpool(hub.add_picture, folder, filename, b"".join(chunks))

    @app.post("/api/remove", response_model=RemovedOut, responses=ERRORS, tags=["collection"])
    def api_remove(body: RemoveIn = Body(...)) -> Any:
        """Delete one embedding from embeddings/ (as `tihub remove NAME`)."""
        return hub.remove(body.name).as_dict()

    @app.get("/api/jobs", response_model=list[JobOut], responses=ERRORS, tags=["jobs"])
    def api_jobs(active: bool = Query(False, description="Only the jobs still queued or running.")) -> Any:
        """Every job this workspace's servers ran (the newest 200, kept across restarts), newest first."""
        return [j.as_dict() for j in jobs.all() if not active or j.state in ("queued", "running")]

    @app.get("/api/jobs/{job_id}", response_model=JobOut, responses=ERRORS, tags=["jobs"])
    def api_job(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"No job has the id {job_id!r}; list them at /api/jobs.")
        return job.as_dict()

    # -------------------------------------------------------------- pictures

    @app.get("/jobs/{job_id}/previews/{n}", include_in_schema=False)
    def job_preview(job_id: str, n: int) -> Response:
        """The n-th picture a job made (a training preview, a grid): only from inside the workspace."""
        job = jobs.get(job_id)
        if job is None or not 0 <= n < len(job.previews):
            return _error(404, f"Job {job_id} has no picture {n}; reload the page.")
        path = Path(job.previews[n]).resolve()
        if not path.is_relative_to(hub.workspace.root.resolve()) or not path.is_file():
            return _error(404, f"The picture {job.previews[n]} is gone or outside the workspace.")
        kind = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower())
        if kind is None:
            return _error(404, f"{path.name} is not a picture.")
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/thumbs/{preview_id}", include_in_schema=False)
    def thumb(preview_id: int, size: int = 256) -> Response:
        try:
            path = hub.thumbnail(preview_id, size=size)
        except TihubError as exc:
            return _error(404, str(exc))
        return FileResponse(path, media_type="image/webp", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/records/{kind}/{record_id}", include_in_schema=False)
    def record_picture(kind: str, record_id: int) -> Response:
        """A training run's loss plot or a verification's grid (inside the workspace only)."""
        try:
            path = hub.record_picture(kind, record_id)
        except TihubError as exc:
            return _error(404, str(exc))
        return FileResponse(path, media_type="image/webp", headers={"Cache-Control": "no-cache"})

    # -------------------------------------------------------------- pages

    def model_choice(request: Request) -> tuple[str, bool]:
        """The chosen model hash: `?model_hash=` (remembered in a cookie) or the cookie."""
        if "model_hash" in request.query_params:
            return request.query_params["model_hash"].strip()[:64], True
        return request.cookies.get(MODEL_COOKIE, "")[:64], False

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, q: str = "", base: str = "", kind: str = "", source: str = "", local: str = "",
              nsfw: str = "", sort: str = "relevance", page: int = 1) -> Response:
        model_hash, chosen = model_choice(request)
        page = max(1, min(page, MAX_OFFSET // PAGE_SIZE))
        sort = sort if sort in SORTS else "relevance"
        local_flag = {"yes": True, "no": False}.get(local)
        warning = None
        kw: dict[str, Any] = dict(base=base or None, kind=kind or None, source=source or None, local=local_flag,
                                  nsfw=bool(nsfw), sort=sort, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        try:
            hits = hub.search(q, model_hash=model_hash or None, **kw)
        except NotFound as exc:
            warning, model_hash = str(exc), ""
            hits = hub.search(q, **kw)
        more = len(hits) > PAGE_SIZE
        hits = hits[:PAGE_SIZE]
        params = {k: v for k, v in dict(q=q, base=base, kind=kind, source=source, local=local, nsfw=nsfw, sort=sort).items() if v}
        ctx = {
            "hits": hits, "facets": facets.get(), "q": q, "base": base, "kind": kind, "source": source, "local": local,
            "nsfw": nsfw, "sort": sort, "sorts": SORTS, "page": page, "model_hash": model_hash, "warning": warning,
            "prev_url": "/?" + urlencode({**params, "page": page - 1}) if page > 1 else None,
            "next_url": "/?" + urlencode({**params, "page": page + 1}) if more else None,
        }
        response = templates.TemplateResponse(request, "index.html", ctx)
        if chosen:
            response.set_cookie(MODEL_COOKIE, model_hash, samesite="strict", max_age=365 * 86400)
        return response

    @app.get("/entries/{entry}", response_class=HTMLResponse, include_in_schema=False)
    def entry_page(request: Request, entry: str) -> Response:
        e = hub.entry(entry)
        model_hash, _ = model_choice(request)
        local = Path(e["path"]) if e.get("path") else None
        emb_dir = hub.workspace.embeddings_dir
        rel = local.relative_to(emb_dir).as_posix() if local and local.is_relative_to(emb_dir) else e["name"]
        ctx = {"e": e, "model_hash": model_hash, "apps": APP_LABELS, "app_folders": export_roots[1:], "model_roots": roots,
               "local_name": rel, "local_stem": local.stem if local else e["name"]}
        return templates.TemplateResponse(request, "entry.html", ctx)

    @app.get("/local", response_class=HTMLResponse, include_in_schema=False)
    def local_page(request: Request) -> Response:
        rows = hub.local()
        return templates.TemplateResponse(request, "local.html", {"rows": rows, "folder": hub.workspace.embeddings_dir})

    @app.get("/train", response_class=HTMLResponse, include_in_schema=False)
    def train_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "train.html", {"roots": roots})

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "jobs.html", {"jobs": [j.as_dict() for j in jobs.all()]})

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> Response:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"No job has the id {job_id!r}; see the list of jobs at /jobs.")
        return templates.TemplateResponse(request, "job.html", {"job": job.as_dict()})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg")

    return app


# What a field whose value failed its pattern wants, in words (the 422 sentence).
PATTERN_HINTS = {
    "name": "use letters, digits, dashes, underscores and dots, starting with a letter or digit (no spaces)",
    "size": "give WIDTH or WIDTHxHEIGHT in pixels, e.g. 512 or 512x768 (empty, or auto for training: the model's own)",
    "filename": "upload .png, .jpg or .webp pictures whose names use letters, digits, dashes, underscores and dots",
    "folder": "use letters, digits, dashes, underscores and dots (one folder name, no slashes)",
    "base": "use sd1, sd2, sdxl or unknown",
    "model_hash": "give a model hash (8, 10, 12 or 64 hex digits) or sd1, sd2 or sdxl",
    "sort": "use " + ", ".join(SORTS),
}

APP_LABELS = {"a1111": "A1111 / Forge", "comfyui": "ComfyUI", "invokeai": "InvokeAI", "diffusers": "diffusers"}


def _jsonable(obj: Any) -> Any:
    """Paths and other odd values as strings, so the response validates and serialises."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)
