"""The library facade that the web app (and any Python program) uses: one object per workspace.

    from tihub.hub import Hub

    hub = Hub("~/tihub-home")
    for hit in hub.search("watercolor", base="sd1", limit=5):
        print(hit.name, hit.base, hit.trigger, hit.fit)
    result = hub.fetch("cat-toy", progress=lambda done, total, msg: print(done, total, msg))
    print(result.path, result.sha256)

Every method calls the same library functions as the CLI (`Catalog.search`, `Catalog.entry`,
`list_collection`, `Downloader`, `tihub.compat`), and makes the decisions the CLI makes: which
file a fetch of a name means, that a manual download cannot be fetched, which catalogue rows a
search returns. Results are dataclasses with `as_dict()` in the shared JSON vocabulary (`ok`,
`path`, `widths`, `trained_on`, `triggers`, ...). Errors are `tihub.errors.TihubError`s whose
message is one sentence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tihub.config import Workspace
from tihub.errors import ConfigError, NotFound, TihubError
from tihub.shapes import item

# progress(done, total, message): bytes (or items, steps) done, the total when known, what is
# happening; the message may be a tihub.progress.Event (a new pass, a training step, a preview)
from tihub.progress import Event, ProgressCallback  # noqa: E402,F401 (part of the Hub API)

SORTS = ("relevance", "name", "base", "source")
SORT_WINDOW = 1000  # a sort other than relevance orders at most this many best matches
MAX_OFFSET = 5000  # paging deeper would rank that many results per page; narrow the search instead


@dataclass
class SearchHit:
    """One search result (a catalogue entry), as a card or a `tihub search --json` row shows it."""

    id: int
    name: str
    title: str | None
    base: str
    kind: str | None
    source: str
    trigger: str
    triggers: list[str]
    url: str | None
    sha256: str | None
    local: bool
    path: str | None
    nsfw: bool
    status: str
    manual: bool
    trained_on: str | None
    fit: str | None = None
    preview_id: int | None = None
    preview_nsfw: bool = False
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        """As a `tihub search --json` row (the JSON vocabulary: `triggers` only, no `trigger`)."""
        out = asdict(self)
        del out["trigger"]
        return out


@dataclass
class FetchResult:
    """The outcome of fetching one catalogue entry's file."""

    target: str
    ok: bool
    status: str  # fetched | exists | failed
    path: str | None = None
    sha256: str | None = None
    size: int | None = None
    converted: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["error"] is None:
            del d["error"]
        return d


@dataclass
class ExportResult:
    """One embedding copied into another app's folder (`tihub export --json` item)."""

    name: str
    ok: bool
    status: str  # exported | exists | failed
    path: str | None = None
    triggers: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return item(self.ok, self.error or f"{self.name} failed.", name=self.name, status=self.status, path=self.path,
                    triggers=list(self.triggers))


@dataclass
class Picture:
    """One generated picture (`tihub generate --json` item): its file, seed and A1111 infotext."""

    path: str
    seed: int
    infotext: str
    embeddings: list[str] = field(default_factory=list)  # embedding names the prompts used
    plan: dict[str, Any] | None = None  # what its batch ran: sampler, schedule, sigmas, RNG, seeds

    def as_dict(self) -> dict[str, Any]:
        return item(True, path=self.path, seed=self.seed, infotext=self.infotext, embeddings=list(self.embeddings), plan=self.plan)


@dataclass
class GenerateResult:
    """The pictures of one `Hub.generate` call, and the warnings it gave (one sentence each)."""

    pictures: list[Picture]
    model: str
    model_hash: str | None = None
    warnings: list[str] = field(default_factory=list)
    ok: bool = True

    def items(self) -> list[dict[str, Any]]:
        """As `tihub generate --json`: one item per picture."""
        return [p.as_dict() for p in self.pictures]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "pictures": self.items(), "model": self.model, "model_hash": self.model_hash,
                "warnings": list(self.warnings)}


@dataclass
class GridResult:
    """A grid picture (`tihub grid --json` item): the whole grid, each cell, the pipeline calls."""

    name: str | None
    path: str
    cells: list[str] = field(default_factory=list)
    pipeline_calls: int = 0
    warnings: list[str] = field(default_factory=list)
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return item(True, name=self.name, path=self.path, cells=list(self.cells), pipeline_calls=self.pipeline_calls)


@dataclass
class VerifyResult:
    """How an embedding fared on a model (`tihub verify --json` item); recorded in the catalogue."""

    name: str
    path: str | None
    model: str
    model_hash: str | None
    result: str  # ok | warning | failed
    checks: list[dict[str, Any]] = field(default_factory=list)  # {check, status, detail}
    norms: dict[str, Any] = field(default_factory=dict)
    grid: str | None = None
    warnings: list[str] = field(default_factory=list)
    reproduced: list[dict[str, Any]] = field(default_factory=list)  # per published preview: ssim, mad, ...

    @property
    def ok(self) -> bool:
        return self.result != "failed"

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in self.checks if c["status"] == "failed")
        return f"{self.name} failed verification on {self.model}: {failed}."

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "model": self.model, "model_hash": self.model_hash, "result": self.result, "checks": self.checks,
             "norms": self.norms, "grid": self.grid, "warnings": self.warnings, "reproduced": self.reproduced, "path": self.path}
        return item(self.ok, self.error, **d)


@dataclass
class Facets:
    """The values a search can be narrowed by."""

    bases: list[str] = field(default_factory=lambda: ["sd1", "sd2", "sdxl", "unknown"])
    kinds: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)  # known models: name, family, autov2


class _CallbackProgress:
    """Adapts `tihub.download.Progress`'s start/advance/finish to one `ProgressCallback`."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        from tihub.download import Progress

        class _P(Progress):
            def start(inner, key: str, total: int | None, done: int = 0) -> None:  # noqa: N805
                super().start(key, total, done)
                self._emit(key, "downloading")

            def advance(inner, key: str, n: int) -> None:  # noqa: N805
                super().advance(key, n)
                self._emit(key, "downloading")

            def finish(inner, key: str) -> None:  # noqa: N805
                f = inner.files.get(key)
                super().finish(key)
                if f is not None and callback:
                    callback(f[0], f[1] or f[0], "checking")

        self.callback = callback
        self.progress = _P(enabled=False)

    def _emit(self, key: str, message: str) -> None:
        f = self.progress.files.get(key)
        if f is not None and self.callback:
            self.callback(f[0], f[1] or None, message)


def _nsfw_picture(params: str | None) -> bool:
    """Whether a preview's stored params mark the picture NSFW (Civitai's flag)."""
    import json

    try:
        data = json.loads(params or "{}")
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("nsfw"))


class _TrainWatcher:
    """Relays a training run to one progress callback: each step, the notes, and each preview
    picture as soon as it is on disk (the engine draws it right after its step is reported, so
    it is looked for at the next step, and the last ones when the run ends)."""

    def __init__(self, cfg: Any, progress: ProgressCallback | None, on_step: Callable[[dict[str, Any]], None] | None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.on_step = on_step
        self.next_preview: int | None = None  # the next step a preview picture is expected after
        self.reported: set[str] = set()

    def note(self, line: str) -> None:
        if self.progress:
            self.progress(0, None, Event(line, "note"))

    def _preview(self, path: Path, step: int | None) -> None:
        if str(path) in self.reported:
            return
        self.reported.add(str(path))
        if self.progress:
            self.progress(step or 0, self.cfg.steps, Event(f"preview {path}", "preview", path=str(path), step=step))

    def step(self, info: dict[str, Any]) -> None:
        done, total = int(info["step"]), int(info["total"])
        every = self.cfg.preview_every
        if every:
            if self.next_preview is None:  # the first step seen (a resumed run starts later)
                self.next_preview = -(-done // every) * every
            while self.next_preview < done:
                path = Path(self.cfg.run_dir) / f"{self.cfg.name}-{self.next_preview}.preview.png"
                if path.is_file():
                    self._preview(path, self.next_preview)
                self.next_preview += every
        if self.on_step:
            self.on_step(info)
        if self.progress:
            loss = "-" if info.get("loss") is None else f"{info['loss']:.4f}"
            lr = info.get("lr")
            self.progress(done, total, Event(f"loss {loss} lr {lr:.3g}" if lr is not None else f"loss {loss}", "step", **info))

    def finish(self, previews: list[Path]) -> None:
        import re

        for p in previews:
            m = re.search(r"-(\d+)\.preview\.png$", Path(p).name)
            self._preview(Path(p), int(m.group(1)) if m else None)


class _sampling_relay:  # noqa: N801 - a context manager, like contextlib's helpers
    """Tells `progress` the engine's sampling steps while the block runs: the engine's
    `on_step(done, total)` hook, with an Event "pass" as each pass (a batch, a hires pass) starts."""

    def __init__(self, engine: Any, label: str, progress: ProgressCallback | None) -> None:
        self.engine = engine
        self.label = label
        self.progress = progress
        self.passes = 0

    def _step(self, done: int, total: int) -> None:
        assert self.progress is not None
        if done == 0:  # a new pass
            self.passes += 1
            label = f"{self.label} {self.passes}" if self.passes > 1 else self.label
            self.progress(0, total, Event(label, "pass", number=self.passes))
        else:
            self.progress(done, total, "")

    def __enter__(self) -> _sampling_relay:
        if self.progress is not None and hasattr(self.engine, "on_step"):
            self.engine.on_step = self._step
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None and hasattr(self.engine, "on_step"):
            self.engine.on_step = None


class Hub:
    """tihub's library for one workspace: search, entries, the local collection, fetch, compat."""

    def __init__(self, home: str | Path | None = None, db_url: str | None = None) -> None:
        self.workspace = Workspace.locate(str(Path(home).expanduser()) if home else None, db_url)
        self._catalog: Any = None
        self._lock = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def catalog(self):  # type: ignore[no-untyped-def]
        """The catalogue (database created and migrated on first use)."""
        with self._lock:
            if self._catalog is None:
                from tihub.catalog.db import open_engine
                from tihub.catalog.store import Catalog

                self.workspace.ensure()
                self._catalog = Catalog(open_engine(self.workspace.db_url), self.workspace)
            return self._catalog

    def _sources(self) -> dict[str, Any]:
        try:
            return {s.name: s for s in self.workspace.sources()}
        except ConfigError:
            return {}

    def allows_private(self, source: str | None) -> bool:
        """Whether a source permits private addresses (its files and pictures may live there)."""
        spec = self._sources().get(source or "")
        return bool(spec and spec.allow_private)

    def _civitai(self) -> tuple[str | None, bool]:
        for s in self._sources().values():
            if s.kind == "civitai" and s.enabled:
                return (s.get("url") or "https://civitai.com"), s.allow_private
        return None, False

    # ------------------------------------------------------------------ search

    def facets(self, max_age: float = 30.0) -> Facets:
        """The kinds, sources and known models to narrow a search by (cached `max_age` seconds:
        listing the kinds scans the catalogue, and they change only when a sync runs)."""
        import time

        cached = getattr(self, "_facets", None)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        facets = self._read_facets()
        self._facets = (time.monotonic(), facets)
        return facets

    def _read_facets(self) -> Facets:
        from sqlalchemy import text

        from tihub.catalog.db import read
        from tihub.compat import seed_builtin

        cat = self.catalog
        seed_builtin(cat)
        with read(cat.engine) as conn:
            kinds = [r[0] for r in conn.execute(text("SELECT DISTINCT kind FROM entries WHERE kind IS NOT NULL ORDER BY kind"))]
            models = [
                {"name": r[0], "family": r[1], "autov2": r[2], "sha256": r[3]}
                for r in conn.execute(text("SELECT name, family, autov2, sha256 FROM models ORDER BY name"))
            ]
        return Facets(kinds=kinds, sources=sorted(r["name"] for r in cat.sources()), models=models)

    def search(
        self,
        query: str = "",
        *,
        base: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        local: bool | None = None,
        nsfw: bool = False,
        model_hash: str | None = None,
        sort: str = "relevance",
        limit: int = 24,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Catalogue entries matching `query` and the filters, best first (or by `sort`).

        `model_hash` (any hash form of a known model, or sd1/sd2/sdxl) keeps entries that load on
        that model and gives each a `fit`; `local` True/False keeps entries with/without a file
        on disk; NSFW entries only with `nsfw`. `offset` pages through the results.
        """
        from tihub.compat import seed_builtin

        if sort not in SORTS:
            raise TihubError(f"sort {sort!r} is not one of {', '.join(SORTS)}; pick one of them.")
        limit, offset = max(0, int(limit)), max(0, int(offset))
        if offset > MAX_OFFSET:
            raise TihubError(f"offset {offset} is past the first {MAX_OFFSET:,} results; narrow the search with words or filters.")
        cat = self.catalog
        model: Any = None
        if model_hash:
            seed_builtin(cat)
            model = model_hash.strip()
        want = SORT_WINDOW if sort != "relevance" else offset + limit
        rows = cat.search(query, base=base or None, source=source or None, kind=kind or None, model=model,
                          local=local, nsfw=nsfw, limit=max(want, 1))
        if sort != "relevance":
            rows.sort(key=lambda r: (str(r.get(sort) or "").lower(), r["name"].lower(), r["id"]))
        rows = rows[offset: offset + limit]
        firsts = self._first_previews([r["id"] for r in rows])
        paths = self._local_paths([r["id"] for r in rows if r["local"]])
        hits = []
        for r in rows:
            pv = firsts.get(r["id"])
            hits.append(SearchHit(
                id=r["id"], name=r["name"], title=r["title"], base=r["base"], kind=r["kind"], source=r["source"],
                trigger=r["trigger"], triggers=[r["trigger"]], url=r["url"], sha256=r["sha256"], local=r["local"],
                path=paths.get(r["id"]), nsfw=r["nsfw"], status=r["status"], manual=r["manual"],
                trained_on=r.get("sd_checkpoint"), fit=r.get("fit"),
                preview_id=pv[0] if pv else None, preview_nsfw=bool(pv and pv[1]) or r["nsfw"],
            ))
        return hits

    def _first_previews(self, ids: list[int]) -> dict[int, tuple[int, bool]]:
        """entry id -> (its first preview's id, whether that picture is marked NSFW)."""
        if not ids:
            return {}
        from sqlalchemy import text

        from tihub.catalog.db import read

        ph = ", ".join(str(int(i)) for i in ids)
        out: dict[int, tuple[int, bool]] = {}
        with read(self.catalog.engine) as conn:
            for eid, pid, params in conn.execute(text(
                f"SELECT entry_id, id, params FROM previews WHERE entry_id IN ({ph}) ORDER BY entry_id, id"
            )):
                if eid not in out:
                    out[eid] = (pid, _nsfw_picture(params))
        return out

    def _local_paths(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        from sqlalchemy import text

        from tihub.catalog.db import read

        ph = ", ".join(str(int(i)) for i in ids)
        with read(self.catalog.engine) as conn:
            rows = conn.execute(text(
                "SELECT ef.entry_id, f.local_path FROM entry_files ef JOIN files f ON f.id = ef.file_id "
                f"WHERE ef.entry_id IN ({ph}) AND f.local_path IS NOT NULL ORDER BY f.id"
            )).all()
        out: dict[int, str] = {}
        for eid, p in rows:
            out.setdefault(eid, p)
        return out

    # ------------------------------------------------------------------ one entry

    def entry(self, name_or_id: str | int) -> dict[str, Any]:
        """Everything known about one entry (as `tihub show --json`), plus `pictures` (each with
        its preview `id`), `ok`, `triggers` as a list and `trained_on` per file. Raises NotFound."""
        from tihub.previews import describe

        e = self.catalog.entry(name_or_id)
        e["ok"] = True
        e["triggers_by_app"] = e.pop("triggers")
        e["triggers"] = sorted(set(e["trigger_syntax"].values()) | {e["trigger"]})
        pics = []
        for row in e.get("previews") or []:
            d = describe(row)
            d["id"] = row["id"]
            d["nsfw"] = bool(d["nsfw"]) or e["nsfw"]
            pics.append(d)
        e["pictures"] = pics
        for f in e["files"]:
            f["path"] = f.get("local_path")
            f["trained_on"] = f.get("sd_checkpoint")
            f["trained_on_name"] = f.get("sd_checkpoint_name")
        e["trained_on"] = next((f["trained_on"] for f in e["files"] if f["trained_on"]), None)
        e["path"] = next((f["path"] for f in e["files"] if f["path"]), None)
        return e

    def preview(self, preview_id: int) -> dict[str, Any]:
        """One preview row (url, path, entry's source); raises NotFound."""
        from sqlalchemy import text

        from tihub.catalog.db import read

        with read(self.catalog.engine) as conn:
            row = conn.execute(text(
                "SELECT p.id, p.url, p.path, p.kind, p.params, s.name AS source FROM previews p "
                "LEFT JOIN entries e ON e.id = p.entry_id LEFT JOIN sources s ON s.id = e.source_id WHERE p.id = :i"
            ), {"i": int(preview_id)}).mappings().first()
        if row is None:
            raise NotFound(f"No preview picture has the id {preview_id}; reload the page.")
        return dict(row)

    def thumbnail(self, preview_id: int, size: int = 256) -> Path:
        """The WEBP thumbnail of one preview in the workspace cache (fetched through tihub's URL
        checks and made once). Raises NotFound / NetworkError / FormatError."""
        from tihub.previews import THUMB_SIZE, thumbnail

        row = self.preview(preview_id)
        if not row.get("url") and not (row.get("path") and Path(row["path"]).is_file()):
            raise NotFound(f"The picture {row.get('path') or preview_id} is gone from disk; run `tihub sync` again.")
        size = THUMB_SIZE if size <= THUMB_SIZE else 1024
        return thumbnail(self.workspace, row, size=size, allow_private=self.allows_private(row["source"]))

    def record_picture(self, kind: str, record_id: int) -> Path:
        """The WEBP view of a recorded picture: a training run's loss plot (`loss`) or a
        verification's grid (`grid`). Only pictures inside the workspace are shown. Raises NotFound."""
        from sqlalchemy import text

        from tihub.catalog.db import read
        from tihub.previews import thumbnail

        column = {"loss": ("training_runs", "loss_png"), "grid": ("verifications", "grid_path")}.get(kind)
        if column is None:
            raise NotFound(f"{kind!r} is not a recorded picture; use loss or grid.")
        table, col = column
        with read(self.catalog.engine) as conn:
            value = conn.execute(text(f"SELECT {col} FROM {table} WHERE id = :i"), {"i": int(record_id)}).scalar()
        if not value:
            raise NotFound(f"No {kind} picture is recorded under the id {record_id}; reload the page.")
        path = Path(value).resolve()
        if not path.is_relative_to(self.workspace.root.resolve()):
            raise NotFound(f"The {kind} picture {value} is outside the workspace {self.workspace.root}; tihub serves only its own.")
        if not path.is_file():
            raise NotFound(f"The {kind} picture {value} is gone from disk.")
        return thumbnail(self.workspace, {"path": str(path)}, size=1024)

    # ------------------------------------------------------------------ the collection

    def local(self) -> list[dict[str, Any]]:
        """The files in embeddings/ as `tihub list --json` rows, each with `ok` (no problems)."""
        from tihub.collection import list_collection

        self.workspace.ensure()
        rows = list_collection(self.workspace, self.catalog)
        for r in rows:
            r["ok"] = not r.get("problems")
            r["path"] = str(r["path"])
        return rows

    def remove(self, name: str) -> dict[str, Any]:
        """Delete one embedding from embeddings/ (name, file name or relative path; with its
        sidecars) and mark it not local, as `tihub remove`. Raises NotFound."""
        from tihub.collection import remove

        path = remove(self.workspace, name, self.catalog)
        return {"ok": True, "name": name, "path": str(path)}

    # ------------------------------------------------------------------ fetch

    def fetch(self, target: str | int, *, progress: ProgressCallback | None = None, force: bool = False,
              convert: str = "safetensors", timeout: float = 1800.0) -> FetchResult:
        """Fetch the file of one catalogue entry (name or id) into embeddings/: checked, atomic,
        recorded. A file already on disk is not fetched again (unless `force`); two calls for one
        entry at once end with one file (the second waits, then finds it). Never raises for a
        failed download: the result says why in one sentence."""
        from tihub.blobcache import BlobCache
        from tihub.collection import after_fetch
        from tihub.download import Downloader, Request

        label = str(target)
        cat = self.catalog
        try:
            files = cat.files_for(target)
        except NotFound as exc:
            return FetchResult(label, False, "failed", error=str(exc))
        key = str(files[0]["entry_id"]) if files else label
        with self._lock:
            lock = self._fetch_locks.setdefault(key, threading.Lock())
        with lock:
            files = cat.files_for(target)
            here = [f for f in files if f.get("local_path") and Path(f["local_path"]).is_file()]
            if here and not force:
                f = here[0]
                return FetchResult(label, True, "exists", path=f["local_path"], sha256=f.get("sha256"), size=f.get("size"))
            usable = [f for f in files if f.get("url") and not f.get("manual")]
            if not usable:
                page = next((f.get("url") or f.get("page_url") for f in files if f.get("url") or f.get("page_url")), None)
                where = f"open {page} in a browser, download it" if page else "download it by hand"
                return FetchResult(label, False, "failed", error=f"{label} is a manual download: {where} and run `tihub import FILE`.")
            f = usable[0]
            req = Request(f["url"], name=f.get("entry_name"), sha256=f.get("sha256"), size=f.get("size"),
                          entry_id=f.get("entry_id"), entry_name=f.get("entry_name"), file_name=f.get("file_name"),
                          trusted=False, allow_private=self.allows_private(f.get("source")), label=label)

            def record(path: Path, emb: Any, sha: str, r: Request) -> None:
                cat.upsert_local_file(path, emb, sha, r.entry_id)
                after_fetch(cat, path, sha, r.entry_id, r.url, allow_private=r.allow_private, upstream_sha256=r.sha256)

            self.workspace.ensure()
            adapter = _CallbackProgress(progress)
            with Downloader(self.workspace.embeddings_dir, convert=convert, force=force, jobs=1, deadline=timeout,
                            progress=adapter.progress, record=record) as dl:
                dl.blob_cache = BlobCache.for_workspace(self.workspace)
                (r,) = dl.fetch_all([req])
            if not r.ok:
                return FetchResult(label, False, "failed", error=r.error or f"Fetching {label} failed; try again.")
            if progress:
                progress(r.size or 0, r.size or 0, "done")
            return FetchResult(label, True, r.status, path=str(r.path) if r.path else None, sha256=r.sha256,
                               size=r.size, converted=r.converted)

    # ------------------------------------------------------------------ sync

    def sync(self, names: list[str] | None = None, *, progress: ProgressCallback | None = None,
             deadline: float = 900.0) -> list[dict[str, Any]]:
        """Sync the sources in sources.yaml (all enabled ones, or `names`), as `tihub sync --json`:
        one report per source with `ok`. A failing source keeps its entries; never raises for
        one source (raises ConfigError for a broken sources.yaml or an unknown name)."""
        from tihub.sync import sync

        def relay(source: str, message: str, done: int | None, total: int | None) -> None:
            if progress:
                progress(done or 0, total, f"{source}: {message}")

        reports = sync(self.workspace, names or None, progress=relay, deadline_s=deadline, catalog=self.catalog)
        self._facets = None  # kinds and sources may have changed
        out = []
        for r in reports:
            d = r.as_dict()
            d["ok"] = not r.failed
            d["summary"] = r.summary()
            out.append(d)
        return out

    # ------------------------------------------------------------------ train

    def add_picture(self, folder: str, filename: str, data: bytes) -> dict[str, Any]:
        """Save one training picture (PNG, JPEG or WEBP, checked by decoding it) as
        WORKSPACE/pictures/FOLDER/FILENAME; names are single path parts. Raises TihubError."""
        import os
        import re

        from tihub.previews import open_image

        part = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
        for what, value in (("folder", folder), ("file name", filename)):
            if not part.fullmatch(value):
                raise TihubError(f"The {what} {value!r} is not a plain name; use letters, digits, '-', '_' and '.'.")
        if not filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            raise TihubError(f"{filename} is not named as a picture; use .png, .jpg or .webp.")
        im = open_image(data, filename)  # refuses anything that is not a decodable picture
        target_dir = self.workspace.root / "pictures" / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / filename
        tmp = target_dir / f".{filename}.{os.getpid()}.{threading.get_ident()}.part"
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return {"ok": True, "path": str(target), "folder": f"pictures/{folder}", "width": im.width, "height": im.height}

    def train(self, name: str, images: str | Path, model: str | Path, *, steps: int = 200, vectors: int = 1,
              size: str = "auto", lr: str = "0.005", template: str = "style_filewords", device: str | None = None,
              save_every: int = 0, overwrite: bool = False, run_dir: str | Path | None = None,
              preview_every: int = 0, progress: ProgressCallback | None = None,
              on_step: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> dict[str, Any]:
        """Train a new embedding `name` on a folder of pictures, as `tihub train` does: the file goes
        to embeddings/NAME.safetensors, checkpoints, previews and the loss log to the run folder
        (`run_dir`, default WORKSPACE/train/NAME), and the run is recorded in the catalogue.

        `options` are the other settings of `tihub.engine.train.TrainConfig` (`init_text`,
        `batch_size`, `flip`, `seed`, `resume`, `precision`, `preview_prompt`, `preview_steps`, ...).
        With `preview_every` N a preview picture is drawn every N steps.

        `progress(step, total, message)` is told each step (an Event "step" whose data is the
        engine's step dict: `loss`, `lr`, `it_s`, `eta_s`), each new preview picture as it is
        made (an Event "preview" with `path` and `step`) and the run's notes (Events "note").
        `on_step` receives the engine's per-step dict alone. Returns the `tihub train --json` item
        (`path`, `previews`, `checkpoints`, `loss_png`, ...). Raises TihubError for a refused
        setting (one sentence) before anything heavy is imported."""
        from tihub.engine.lr_schedule import validate_schedule
        from tihub.engine.train import TrainConfig, check_config, model_autov2, parse_size
        from tihub.runs import check_device, check_init_text, check_model_arg

        graphs = options.get("cuda_graphs", "auto")
        options["cuda_graphs"] = {None: "auto", True: "on", False: "off"}.get(graphs, graphs) if not isinstance(graphs, str) else graphs
        validate_schedule(lr)
        check_init_text(str(options.get("init_text", "*")))
        self.workspace.ensure()
        cfg = TrainConfig(name=name, images=Path(images), model=str(model), embeddings_dir=self.workspace.embeddings_dir,
                          run_dir=Path(run_dir) if run_dir else self.workspace.train_dir / name, size=parse_size(size),
                          steps=steps, vectors=vectors, lr=lr, template=template, device=device, save_every=save_every,
                          overwrite=overwrite, preview_every=preview_every, **options)
        check_config(cfg)  # every refusal before anything heavy is imported
        check_model_arg(str(model))
        check_device(device)
        cfg.catalog = self.catalog
        from tihub.hashing import HashCache

        cfg.model_hash = model_autov2(str(model), HashCache(self.catalog.engine))  # the workspace's hash cache
        watcher = _TrainWatcher(cfg, progress, on_step)
        watcher.note(f"Run folder: {cfg.run_dir}")
        from tihub.engine.train import train

        r = train(cfg, log=watcher.note, progress=watcher.step)
        watcher.finish(r.previews)
        return item(True, name=r.name, path=str(r.output), extra_paths=[str(p) for p in r.extra_outputs],
                    run_dir=str(r.run_dir), steps=r.steps, pictures=r.pictures, final_loss=r.final_loss,
                    trained_on=r.sd_checkpoint, checkpoints=[str(p) for p in r.checkpoints],
                    previews=[str(p) for p in r.previews], loss_csv=str(r.loss_csv),
                    loss_png=str(r.loss_png) if r.loss_png else None, seconds=round(r.seconds, 2),
                    steps_from=r.steps_from, file_id=r.file_id)

    # ------------------------------------------------------------------ the engine: generate, grid, verify

    def _hash_cache(self) -> Any:
        try:
            from tihub.hashing import HashCache

            return HashCache(self.catalog.engine)
        except Exception:  # noqa: BLE001 - the cache only saves time
            return None

    def _load_model(self, model: str | Path | None, device: str | None, dtype: str | None, config: str | None,
                    progress: ProgressCallback | None) -> Any:
        """The loaded model of a run (after the cheap checks: device, model argument)."""
        from tihub.runs import check_device, model_arg

        check_device(device)
        chosen = model_arg(model)
        if progress:
            progress(0, None, Event(f"Loading model {chosen} ...", "loading", model=chosen))
        from tihub.engine.models import load_model

        return load_model(chosen, device=device, dtype=dtype, hash_cache=self._hash_cache(), config=config)

    def generate(self, prompt: str | None = None, *, negative: str | None = None, model: str | Path | None = None,
                 steps: int | None = None, sampler: str | None = None, schedule_type: str | None = None,
                 cfg: float | None = None, seed: int | None = None, size: str | int | None = None, batch_size: int = 1,
                 batch_count: int = 1, clip_skip: int | None = None, pad_conds: bool = False,
                 from_image: str | Path | None = None, out: str | Path | None = None, device: str | None = None,
                 dtype: str | None = None, config: str | None = None, progress: ProgressCallback | None = None,
                 **sampling: Any) -> GenerateResult:
        """Generate pictures for `prompt` with the embeddings in embeddings/ (used by file name, as
        in A1111); each PNG carries A1111 infotext. Saved to `out` (default WORKSPACE/outputs).

        `from_image` re-runs the settings in a picture's infotext; the arguments given here win,
        and every setting that cannot be followed is named in `warnings`. `sampling` holds A1111's
        sampling settings (`rng`, `ensd`, `eta`, `s_churn`, ..., `hires_scale`, `hires_steps`,
        `denoising`, `hires_upscaler`). `progress(step, total, message)` is told each sampling
        step; an Event "pass" starts each batch. Raises TihubError for a refused setting before
        the model loads."""
        from tihub.runs import check_settings, fold_sampling
        from tihub.runs import from_image as read_image_settings

        base: dict[str, Any] = read_image_settings(from_image) if from_image else {}
        prompt = prompt if prompt is not None else base.get("prompt")
        if prompt is None:
            raise ConfigError("No prompt given; pass PROMPT or --from-image FILE.")
        warnings = list(base.get("warnings", []))
        # settings from the image that have no argument here (RNG, ENSD, hires, ...) pass through;
        # a sampling setting given here wins over the image's
        given: dict[str, Any] = dict(base.get("settings", {}))
        for key in sampling:
            given.pop(key, None)
        if pad_conds:
            given["pad_conds"] = True
        base_sampler, base_schedule = given.pop("sampler", None), given.pop("schedule_type", None)
        steps = steps if steps is not None else given.get("steps", 20)
        # an explicit sampler starts from its own schedule unless a schedule type is given too
        schedule_type = schedule_type or (None if sampler else base_schedule)
        sampler = sampler or base_sampler
        size = size or given.get("size")
        cfg = cfg if cfg is not None else given.get("cfg_scale", 7.0)
        clip_skip = clip_skip if clip_skip is not None else given.get("clip_skip", 1)
        folded = fold_sampling(sampling)
        check_settings(steps, sampler, schedule_type, size, clip_skip, cfg, folded)  # before the model loads
        from tihub.engine.generate import Engine

        engine = Engine(self._load_model(model, device, dtype, config, progress), self.workspace.embeddings_dir)
        made_with = base.get("model_hash")
        if made_with and engine.model.hash and made_with.lower() not in (engine.model.hash, (engine.model.sha256 or "")[:8]):
            warnings.append(f"--from-image was made with model hash {made_with}, this model is {engine.model.hash}; images will differ.")
        from tihub.engine.reproduce import engine_kwargs

        with _sampling_relay(engine, "generate", progress):
            result = engine.generate(
                prompt, negative if negative is not None else base.get("negative", ""),
                **{**engine_kwargs(given), "steps": steps, "sampler": sampler, "schedule_type": schedule_type,
                   "cfg_scale": cfg, "seed": seed if seed is not None else given.get("seed", -1), "size": size,
                   "batch_size": batch_size, "batch_count": batch_count, "clip_skip": clip_skip,
                   "out": Path(out) if out else self.workspace.root / "outputs", **folded},
            )
        plans = [p.to_json() for p in result.plans]
        pictures = [Picture(path=str(p), seed=sd, infotext=t, embeddings=list(result.used),
                            plan=plans[i // batch_size] if i // batch_size < len(plans) else None)
                    for i, (p, sd, t) in enumerate(zip(result.paths, result.seeds, result.infotexts, strict=False))]
        return GenerateResult(pictures, model=engine.model.name, model_hash=engine.model.hash, warnings=warnings + list(result.warnings))

    def grid(self, name: str | None = None, *, model: str | Path | None = None, x: str | None = None, y: str | None = None,
             z: str | None = None, prompt: str | None = None, negative: str = "", steps: int = 20, sampler: str = "Euler a",
             schedule_type: str | None = None, cfg: float = 7.0, seed: int = -1, size: str | int | None = None,
             batch: int = 8, pad_conds: bool = False, out: str | Path | None = None, device: str | None = None,
             dtype: str | None = None, config: str | None = None, progress: ProgressCallback | None = None,
             **sampling: Any) -> GridResult:
        """An A1111-style X/Y/Z grid (axes as `KIND:VALUES`, e.g. x="seed:1-3"), or with `name`
        and no axes the standard preview of that embedding, attached to its catalogue entry.
        Saved to `out` (default WORKSPACE/grids). `sampling` as in `generate`. Every refusal
        (settings, axis values, device, model) comes before a model loads."""
        from tihub.engine.grid import parse_axis
        from tihub.runs import check_axis, check_device, check_settings, fold_sampling, model_arg

        axes = [parse_axis(a, name) if a else None for a in (x, y, z)]
        while axes and axes[-1] is None:
            axes.pop()
        folded = fold_sampling(sampling)
        check_settings(steps, sampler, schedule_type, size, 1, cfg, folded)
        for axis in axes:
            if axis is not None:
                check_axis(self.workspace.embeddings_dir, axis)
        check_device(device)
        model_arg(model)
        if not axes and not name:
            raise ConfigError("Give an embedding NAME (standard preview) or at least one axis (--x AXIS:VALUES).")
        outdir = Path(out) if out else self.workspace.root / "grids"
        from tihub.engine.generate import Engine, Settings, parse_size
        from tihub.engine.grid import make_grid, standard_preview

        engines: dict[str | None, Engine] = {}

        def engine_for(m: str | None) -> Engine:
            key = m or None
            if key not in engines:
                engines[key] = Engine(self._load_model(key or model, device, dtype, config, progress), self.workspace.embeddings_dir)
            return engines[key]

        if not axes:
            assert name is not None
            found = self._resolve(name)
            engine = engine_for(None)
            with _sampling_relay(engine, "preview", progress):
                result = standard_preview(engine, name, found.kind, steps=steps, size=size, out=outdir, batch=batch)
            self.catalog.add_preview(entry_id=found.entry_id, file_id=found.file_id, path=str(result.path),
                                     model_hash=engine.model.hash,
                                     params={"model": engine.model.name, "steps": steps, "kind": found.kind, "infotext": result.infotext})
        else:
            if prompt is None:
                prompt = "{emb}" if any(a is not None and a.kind in ("embedding", "checkpoint") for a in axes) else (name or "")
            native = engine_for(None).model.native_size if size is None else 512
            w, h = parse_size(size, native)
            settings = Settings(steps=steps, sampler=sampler, cfg_scale=cfg, width=w, height=h,
                                schedule_type=schedule_type or "Automatic", pad_conds=pad_conds, **folded)
            folders = [self.workspace.embeddings_dir, self.workspace.train_dir]
            with _sampling_relay(engine_for(None), "grid", progress):
                result = make_grid(engine_for, prompt, negative, axes, settings, seed, outdir, batch, folders)
        warnings = list(result.warnings)
        for e in engines.values():
            warnings += e.vocabulary.take_warnings()
        return GridResult(name=name, path=str(result.path), cells=[str(p) for p in result.cell_paths],
                          pipeline_calls=result.calls, warnings=warnings)

    def _resolve(self, name: str) -> Any:
        from tihub.runs import resolve_embedding

        return resolve_embedding(self.catalog, self.workspace.embeddings_dir, name)

    def verify(self, name: str, model: str | Path | None = None, *, steps: int = 20, size: str | int | None = None,
               grid: bool = True, reproduce: bool = False, device: str | None = None, dtype: str | None = None,
               config: str | None = None, progress: ProgressCallback | None = None) -> VerifyResult:
        """Verify embedding `name` (a catalogue name or an embeddings/ file name) on a model: it
        loads (width), its numbers are finite, its vector norms against the model's own; with
        `grid` the standard preview grid. With `reproduce`, the entry's published previews made
        on this model are drawn again and compared (SSIM). Recorded in the catalogue. A failed
        check is a result (`ok` False), not an exception; NotFound for an unknown name."""
        from tihub.engine.verify import record, verify
        from tihub.runs import check_device, check_settings, model_arg

        check_device(device)
        model_arg(model)
        found = self._resolve(name)
        check_settings(steps, None, None, size, 1, 7.0)
        from tihub.engine.generate import Engine

        engine = Engine(self._load_model(model, device, dtype, config, progress), self.workspace.embeddings_dir)
        with _sampling_relay(engine, "verify", progress):
            v = verify(engine, name, path=found.path, grid=grid, steps=steps, size=size, out=self.workspace.root / "grids",
                       kind=found.kind)
            if reproduce:
                self._reproduce(engine, v, name, found)
        record(self.catalog, v, found.entry_id, found.file_id)
        return VerifyResult(name=v.name, path=v.file, model=v.model, model_hash=v.model_hash, result=v.result,
                            checks=v.checks, norms=v.norms, grid=v.grid, warnings=v.warnings, reproduced=v.reproduced)

    def _reproduce(self, engine: Any, v: Any, name: str, found: Any) -> None:
        """`verify(reproduce=True)`: the entry's preview records, fetched with its source's URL policy."""
        from tihub.engine.verify import reproduce_published
        from tihub.runs import preview_fetcher

        previews: list[dict[str, Any]] = []
        allow_private = False
        if found.entry_id is not None:
            entry = self.catalog.entry(found.entry_id)
            previews = entry.get("previews", [])
            allow_private = self.allows_private(entry.get("source"))
        emb = None
        if engine.vocabulary.path_of(name) is None:
            from tihub.formats import read_embedding

            try:
                emb = read_embedding(found.path)
            except TihubError:
                emb = None
        with preview_fetcher(allow_private) as fetch:
            reproduce_published(engine, v, previews, fetch, out=self.workspace.root / "outputs" / "reproduce", embedding=emb)

    # ------------------------------------------------------------------ export

    def export(self, names: str | list[str], to: str | Path, app: str, force: bool = False, *,
               progress: ProgressCallback | None = None) -> list[ExportResult]:
        """Copy embeddings (names in embeddings/) where another app looks for them: A1111/Forge
        TO/embeddings/, ComfyUI TO/models/embeddings/, InvokeAI TO/models/<base>/embedding/; each
        result says how to use it in a prompt (`triggers`). PNG embeddings become safetensors for
        apps that cannot read pictures. A failed name is a result; ConfigError for a missing TO."""
        from tihub.collection import export

        names = [names] if isinstance(names, str) else list(names)
        root = Path(to).expanduser()
        if not root.is_dir():
            raise ConfigError(f"--to {to}: there is no such folder; give the {app} install folder (it must exist), e.g. ~/ComfyUI.")
        out = []
        for i, name in enumerate(names):
            if progress:
                progress(i, len(names), f"exporting {name}")
            (r,) = export(self.workspace, [name], root, app, force=force)
            out.append(ExportResult(name=r.name, ok=r.status != "failed", status=r.status, path=str(r.path) if r.path else None,
                                    triggers=[r.trigger] if r.trigger else [], error=r.error))
        if progress:
            progress(len(names), len(names), "done")
        return out

    # ------------------------------------------------------------------ compat

    def model(self, model_hash: str, *, remote: bool = False) -> Any:
        """A `tihub.compat.KnownModel` for any hash form (known table, catalogue, Civitai if
        remote) or a family (sd1, sd2, sdxl)."""
        from tihub.compat import FAMILY_NAMES, FAMILY_WIDTHS, KnownModel, model_from_hash

        family = model_hash.strip().lower()
        if family in FAMILY_NAMES:  # a whole family: "any SD1.x model"
            return KnownModel(query=family, name=f"any {FAMILY_NAMES[family]} model", family=family,
                              origin="builtin", widths=dict(FAMILY_WIDTHS[family]))
        url, allow_private = self._civitai()
        return model_from_hash(model_hash.strip(), self.catalog, civitai_url=url, allow_private=allow_private, remote=remote)

    def compat(self, model_hash: str, *, remote: bool = False) -> list[dict[str, Any]]:
        """Verdicts for every local embedding on one model, as `tihub compat --json` rows
        (`name`, `fit`, `reason`, `path`, `trained_on`, per-app `apps`) plus `ok` and the model's label."""
        from tihub.compat import report_local

        model = self.model(model_hash, remote=remote)
        items = [
            {"name": r["name"], "widths": r.get("widths"), "sd_checkpoint": r.get("sd_checkpoint"), "path": r["path"],
             "problem": "; ".join(r["problems"]) if r.get("problems") and not r.get("widths") else None}
            for r in self.local()
        ]
        out = []
        for r in report_local(items, model):
            out.append({"ok": True, "name": r["name"], "fit": r["status"], "reason": r["reason"],
                        "path": str(self.workspace.embeddings_dir / r["path"]) if r.get("path") else None,
                        "trained_on": r.get("sd_checkpoint"), "model": model.label(),
                        "apps": {a: {"fit": v["status"], "reason": v["reason"]} for a, v in (r.get("apps") or {}).items()}})
        return out
