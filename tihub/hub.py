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

# progress(done, total, message): bytes (or items) done, the total when known, what is happening
ProgressCallback = Callable[[int, "int | None", str], None]

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
              save_every: int = 0, overwrite: bool = False,
              on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train a new embedding `name` on a folder of pictures, as `tihub train` does (the run is
        recorded in the catalogue; the file goes to embeddings/NAME.safetensors). `on_step`
        receives the engine's per-step dict (`step`, `total`, `loss`, `lr`, `it_s`, `eta_s`).
        Raises TihubError for a refused setting (one sentence)."""
        from tihub.engine.lr_schedule import validate_schedule
        from tihub.engine.train import TrainConfig, check_config, model_autov2, parse_size, train
        from tihub.hashing import HashCache

        validate_schedule(lr)
        self.workspace.ensure()
        cfg = TrainConfig(name=name, images=Path(images), model=str(model), embeddings_dir=self.workspace.embeddings_dir,
                          run_dir=self.workspace.train_dir / name, size=parse_size(size), steps=steps, vectors=vectors,
                          lr=lr, template=template, device=device, save_every=save_every, overwrite=overwrite)
        check_config(cfg)
        cfg.catalog = self.catalog
        cfg.model_hash = model_autov2(str(model), HashCache(self.catalog.engine))
        r = train(cfg, log=lambda line: None, progress=on_step)
        return {"ok": True, "name": r.name, "path": str(r.output), "run_dir": str(r.run_dir), "steps": r.steps,
                "pictures": r.pictures, "final_loss": r.final_loss, "trained_on": r.sd_checkpoint,
                "loss_png": str(r.loss_png) if r.loss_png else None, "seconds": round(r.seconds, 2)}

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
