"""The library facade: one object per workspace, used by the CLI, the web app and any Python program.

    from tihub.hub import Hub

    hub = Hub("~/tihub-home")
    for hit in hub.search("watercolor", base="sd1", limit=5):
        print(hit.name, hit.base, hit.triggers, hit.fit)
    result = hub.fetch("cat-toy", progress=lambda done, total, msg: print(done, total, msg))
    print(result.path, result.sha256)

Every CLI command parses its options, calls one Hub method and prints the result; the web app
calls the same methods. So the decisions live here (or in the library modules the methods call:
`tihub.runs` for how an engine run is set up): which file a fetch of a name means, that a manual
download cannot be fetched, which catalogue rows a search returns, how a model argument is
resolved, how a training run is set up and what it reports.

The verbs: files `inspect`, `hash_models`; catalogue `sources`, `init_sources`, `sync`, `search`, `facets`, `entry`, `show`,
`similar`, `dupes`, `outdated`; collection `local`, `fetch`, `fetch_many`, `upgrade`,
`import_files`, `remove`, `export`, `judge`/`compat`; engine `prompt`, `generate`, `grid`,
`verify`, `train`. Results are dataclasses (or `--json`-shaped dicts) whose `as_dict()` is the
command's `--json` item in the shared JSON vocabulary (`ok`, `path`, `widths`, `trained_on`,
`triggers`, ...). Long work takes one `progress(done, total, message)` callback
(tihub.progress: `Bar` shows it on a terminal, the web app as a live bar); a message may be an
`Event` saying what happened (a new pass, a training step, a preview picture). Errors are
`tihub.errors.TihubError`s whose message is one sentence. Importing this module imports neither
torch nor the catalogue. The engine verbs (`train`, `generate`, `grid`, `verify`, ...) live in
`tihub.hub_engine`, which Hub inherits.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from tihub.config import Workspace
from tihub.errors import ConfigError, NotFound, TihubError
# progress(done, total, message): bytes (or items, steps) done, the total when known, what is
# happening; the message may be a tihub.progress.Event (a new pass, a training step, a preview)
from tihub.hub_engine import EngineVerbs
from tihub.progress import Event, ProgressCallback, TrainWatcher, fetch_relay, sampling_relay  # noqa: F401 (part of the Hub API)
from tihub.results import (  # noqa: F401 (the typed results, part of the Hub API)
    CompatReport,
    CompatResult,
    DupeGroup,
    DupeMember,
    EntryDetail,
    ExportResult,
    Facets,
    FetchResult,
    GenerateResult,
    GridResult,
    ImportResult,
    InspectResult,
    LocalFile,
    ModelHash,
    OutdatedFile,
    Picture,
    PromptEmbedding,
    PromptReport,
    RemoveResult,
    SearchHit,
    SimilarHit,
    SourceInfo,
    SyncResult,
    TrainResult,
    UpgradeResult,
    VectorTokens,
    VerifyResult,
)

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
SORTS = ("relevance", "name", "base", "source")
SORT_WINDOW = 1000  # a sort other than relevance orders at most this many best matches
MAX_OFFSET = 5000  # paging deeper would rank that many results per page; narrow the search instead


def _strip_suffix(name: str | None) -> str | None:
    """A file name given as the name to save under loses its embedding suffix (it is the trigger word)."""
    from tihub.formats import EMBEDDING_SUFFIXES

    if name and name.lower().endswith(EMBEDDING_SUFFIXES):
        return name.rsplit(".", 1)[0]
    return name


def _nsfw_picture(params: str | None) -> bool:
    """Whether a preview's stored params mark the picture NSFW (Civitai's flag)."""
    import json

    try:
        data = json.loads(params or "{}")
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("nsfw"))


class Hub(EngineVerbs):
    """tihub's library for one workspace: search, entries, the local collection, fetch, compat."""

    def __init__(self, home: str | Path | None = None, db_url: str | None = None, *, workspace: Workspace | None = None) -> None:
        """The workspace at `home` (else $TIHUB_HOME, else the current folder), its catalogue at
        `db_url` (default: sqlite:///HOME/catalog.db); or a `workspace` already located."""
        self.workspace = workspace or Workspace.locate(str(Path(home).expanduser()) if home else None, db_url)
        self._catalog: Any = None
        self._lock = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._sources_cache: tuple[tuple[int, int] | None, dict[str, Any]] | None = None

    @classmethod
    def on(cls, workspace: Workspace) -> Hub:
        """A Hub on a workspace already located (the CLI's --home/--db)."""
        return cls(workspace=workspace)

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
        """sources.yaml's sources by name ({} for a broken file), read again only when the file's
        modification time or size changed (a thumbnail asks for every picture)."""
        try:
            st = self.workspace.sources_path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None  # absent: the built-in defaults
        cached = self._sources_cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            specs = {s.name: s for s in self.workspace.sources()}
        except ConfigError:
            specs = {}
        self._sources_cache = (stamp, specs)
        return specs

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
        limit: int | None = 24,
        offset: int = 0,
        model: str | Path | None = None,
        removed: bool = False,
        pictures: bool = True,
    ) -> list[SearchHit]:
        """Catalogue entries matching `query` and the filters, best first (or by `sort`).

        Words match whole words anywhere and parts of names and trigger words; an exact name
        comes first; when nothing matches, names within a typo or two are returned (`fuzzy`).
        `model` (a model file, which is then hashed and remembered; a known model's hash; or
        sd1/sd2/sdxl) keeps entries that load on that model and gives each a `fit`; `model_hash`
        is the same for a hash only. `local` True/False keeps entries with/without a file on
        disk; NSFW entries only with `nsfw`, entries gone upstream only with `removed`. `kind`
        and `source` must be ones the catalogue (or sources.yaml) knows: an unknown kind is a
        ConfigError naming the valid ones, an unknown source a NotFound. `limit` None: no
        limit; `offset` pages through the results. `pictures` False skips looking up each hit's
        first picture and file on disk (`preview_id`, `path`).
        """
        from tihub.compat import seed_builtin

        if sort not in SORTS:
            raise TihubError(f"sort {sort!r} is not one of {', '.join(SORTS)}; pick one of them.")
        offset = max(0, int(offset))
        if offset > MAX_OFFSET:
            raise TihubError(f"offset {offset} is past the first {MAX_OFFSET:,} results; narrow the search with words or filters.")
        cat = self.catalog
        if source:
            known = self.source_names()
            if source not in known:
                raise NotFound(f"--source {source!r} is not known; use one of: {', '.join(known) or 'none yet'}.")
        wanted: Any = None
        if model is not None:
            wanted = self.model_filter(str(model))
        elif model_hash:
            seed_builtin(cat)
            wanted = model_hash.strip()
        if limit is None:
            want: int | None = None
        else:
            limit = max(0, int(limit))
            want = SORT_WINDOW if sort != "relevance" else max(offset + limit, 1)
        rows = cat.search(query, base=base or None, source=source or None, kind=kind or None, model=wanted,
                          local=local, nsfw=nsfw, limit=want, include_removed=removed)
        if sort != "relevance":
            rows.sort(key=lambda r: (str(r.get(sort) or "").lower(), r["name"].lower(), r["id"]))
        rows = rows[offset:] if limit is None else rows[offset: offset + limit]
        firsts = self._first_previews([r["id"] for r in rows]) if pictures else {}
        paths = self._local_paths([r["id"] for r in rows if r["local"]]) if pictures else {}
        hits = []
        for r in rows:
            pv = firsts.get(r["id"])
            hits.append(SearchHit(
                id=r["id"], name=r["name"], title=r["title"], base=r["base"], kind=r["kind"], source=r["source"],
                trigger=r["trigger"], triggers=[r["trigger"]] if r["trigger"] else [], url=r["url"], sha256=r["sha256"],
                local=r["local"], path=paths.get(r["id"]), nsfw=r["nsfw"], status=r["status"], manual=r["manual"],
                trained_on=r.get("sd_checkpoint"), fit=r.get("fit"),
                preview_id=pv[0] if pv else None, preview_nsfw=bool(pv and pv[1]) or r["nsfw"],
                base_model=r.get("base_model"), file_name=r.get("file_name"), size=r.get("size"), files=r.get("files") or 0,
                removed=bool(r.get("removed")), page_url=r.get("page_url"), fuzzy=bool(r.get("fuzzy")),
            ))
        return hits

    def model_filter(self, value: str) -> Any:
        """What `search(model=...)` narrows by: a family (sd1, sd2, sdxl); a model file (hashed
        with the cache, its family read from its headers, and remembered as a known model); or
        the hash of a known model (the built-in table of well-known models, or one hashed before).
        Raises NotFound for anything else."""
        from tihub.compat import seed_builtin

        cat = self.catalog
        if value.lower() in ("sd1", "sd2", "sdxl"):
            return value.lower()
        p = Path(value).expanduser()
        if p.exists():
            from tihub.checkpoints import inspect_model
            from tihub.hashing import HashCache, model_hashes

            info = inspect_model(p)
            family = info.family if info.family in ("sd1", "sd2", "sdxl") else "unknown"
            h = model_hashes(p, HashCache(cat.engine))
            cat.add_model(p.stem, h.sha256, h.autov2, h.old_hash, family, info.widths, "hashed", path=str(p.resolve()))
            return {"family": family, "sha256": h.sha256, "autov2": h.autov2, "old_hash": h.old_hash, "name": p.name}
        seed_builtin(cat)  # the built-in table of well-known models, as `tihub compat` sees it
        found = cat.find_model(value)
        if found is None:
            raise NotFound(
                f"--model {value!r} is neither a file nor the hash of a known model; pass the model file "
                "(it is then remembered) or a family (sd1, sd2, sdxl)."
            )
        return found

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

    # ------------------------------------------------------------------ files

    def inspect(self, paths: str | Path | list[str | Path]) -> list[InspectResult]:
        """What embedding files are (files, or every embedding file under folders), read safely
        without the catalogue, one result per file (`as_dict()` the `tihub inspect --json` item);
        a bad file is a failed result."""
        from tihub.inspection import inspect_paths

        wanted = [str(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
        return [InspectResult(**row) for row in inspect_paths(wanted)]

    def hash_models(self, paths: str | Path | list[str | Path], *, use_cache: bool = True,
                    jobs: int = 1) -> tuple[list[ModelHash], list[tuple[str, str]]]:
        """Every hash (sha256, AutoV2, A1111 old hash, short hash), family and text-encoder widths
        of model files and diffusers folders (folders are searched for them), through the
        workspace's hash cache (`use_cache`, `jobs` files at once). Each model hashed is recorded
        as a known model, so `judge(model_hash=...)` can name it. Returns (the models hashed,
        each `as_dict()` a `tihub hash --json` item; (path, error sentence) pairs)."""
        from tihub.hashing import EMPTY_SHA256, HashCache
        from tihub.inspection import hash_models

        wanted = [str(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
        rows, errors = hash_models(wanted, HashCache(self.catalog.engine, jobs=jobs) if use_cache else None)
        for row in rows:  # recorded in the catalogue's `models` table
            name = os.path.basename(os.path.normpath(row["path"]))
            if not row.get("folder"):
                name = os.path.splitext(name)[0]
            self.catalog.add_model(
                name=name, sha256=row["sha256"], autov2=row["autov2"],
                old_hash=None if row["old_hash"] == EMPTY_SHA256[:8] else row["old_hash"],  # every file <= 1 MiB shares it
                family=row["family"], widths=row["widths"], origin="hashed", path=os.path.abspath(row["path"]),
            )
        return [ModelHash(**row) for row in rows], errors

    # ------------------------------------------------------------------ the collection

    def asks_civitai(self, remote: bool = True) -> bool:
        """Whether unknown hashes are looked up on Civitai (a civitai source is configured)."""
        return remote and self._civitai()[0] is not None

    def local(self, *, remote: bool = False) -> list[LocalFile]:
        """The files in embeddings/ (subfolders too) as `tihub list` shows them, each with `ok` (no
        problems) and `path` relative to embeddings/ (`as_dict()`: the `tihub list --json` item). With `remote`, hashes nothing local knows
        are looked up on Civitai (when a civitai source is configured; answers cached)."""
        from tihub.collection import list_collection

        self.workspace.ensure()
        url, allow_private = self._civitai() if remote else (None, False)
        rows = list_collection(self.workspace, self.catalog, civitai_url=url, allow_private=allow_private, remote=remote)
        folder = str(self.workspace.embeddings_dir)
        return [LocalFile(**{**{k: v for k, v in r.items() if k in _LOCAL_FIELDS}, "path": str(r["path"])}, folder=folder)
                for r in rows]

    def remove(self, name: str) -> RemoveResult:
        """Delete one embedding from embeddings/ (name, file name or relative path) with its
        NAME.preview.* and NAME.json sidecars, and mark it not local, as `tihub remove`: the
        `tihub remove --json` item (`path`, `sidecars`). Raises NotFound."""
        from tihub.collection import remove_files

        path, *extra = remove_files(self.workspace, name, self.catalog)
        return RemoveResult(name=name, path=str(path), sidecars=[str(x) for x in extra])

    def import_files(self, files: str | Path | list[str | Path], *, name: str | None = None, convert: str = "original",
                     force: bool = False, remote: bool = True) -> list[ImportResult]:
        """Add files downloaded by hand to embeddings/: each is read safely, matched to a catalogue
        entry by sha256, else by name, copied and recorded; with `remote` its sha256 is also
        asked of Civitai (when configured). `name` (one file only) is the trigger word to save
        under. A failed file is a result; the others still go in."""
        from tihub.collection import import_file

        paths = [files] if isinstance(files, str | Path) else list(files)
        if name and len(paths) > 1:
            raise ConfigError("--name only works with one file.")
        self.workspace.ensure()
        url, allow_private = self._civitai()
        out = []
        for f in paths:
            r = import_file(f, self.workspace.embeddings_dir, self.catalog, name=_strip_suffix(name), convert=convert,
                            force=force, civitai_url=url, allow_private=allow_private, remote=remote)
            out.append(ImportResult(input=str(f), ok=r.status != "failed", status=r.status, path=str(r.path) if r.path else None,
                                    entry=r.entry, matched_by=r.matched_by, identified=r.identified, source=r.origin,
                                    page_url=r.page_url, triggers=list(r.triggers or []), duplicates=list(r.duplicate_of or []),
                                    error=r.error))
        return out

    # ------------------------------------------------------------------ fetch

    def _plan(self, target: str, *, name: str | None = None, force: bool = False, to: Path | None = None,
              sources: dict[str, Any] | None = None) -> Any:
        """What fetching `target` means: a `tihub.download.Request` to run, or the FetchResult
        already known (the file is on disk, it is a manual download, no such entry).

        A URL is fetched as given (trusted: the user typed it). A catalogue name or id means the
        first file of the entry with a URL that is not a manual download, fetched with its
        source's URL policy; a file the catalogue knows on disk is not fetched again unless
        `force` (or another folder `to`)."""
        from tihub.download import Request

        if _URL_RE.match(target):
            return Request(target, name=name, trusted=True, label=target)
        try:
            files = self.catalog.files_for(target)
        except NotFound as exc:
            return FetchResult(target, False, "failed", error=str(exc))
        here = [f for f in files if f.get("local_path") and Path(f["local_path"]).is_file()]
        usable = [f for f in files if f.get("url") and not f.get("manual")]
        if here and to is None and (not force or not usable):  # on disk (and, forced, nothing to download it from)
            f = here[0]
            return FetchResult(target, True, "exists", path=f["local_path"], name=f.get("entry_name"), sha256=f.get("sha256"),
                               size=f.get("size"), url=f.get("url"), already_local=True)
        if not usable:
            page = next((f.get("url") or f.get("page_url") for f in files if f.get("url") or f.get("page_url")), None)
            where = f"open {page} in a browser, download it" if page else "download it by hand"
            named = files[0].get("entry_name") if files else None  # an id says nothing to a person: name it
            who = f"{named} (#{target})" if named and str(target).isdigit() else target
            return FetchResult(target, False, "failed", url=page, manual=True,
                               error=f"{who} is a manual download: {where} and run `tihub import FILE`.")
        f = usable[0]
        spec = (sources if sources is not None else self._sources()).get(f.get("source") or "")
        return Request(f["url"], name=name or f.get("entry_name"), sha256=f.get("sha256"), size=f.get("size"),
                       entry_id=f.get("entry_id"), entry_name=f.get("entry_name"), file_name=f.get("file_name"),
                       trusted=False, allow_private=bool(spec and spec.allow_private), label=target)

    def _download(self, requests: list[Any], folder: Path, *, convert: str, force: bool, jobs: int, timeout: float,
                  progress: ProgressCallback | None) -> list[FetchResult]:
        """Run the downloads (checked, resumable, atomic) and record each file in the catalogue."""
        from tihub.blobcache import BlobCache
        from tihub.collection import after_fetch
        from tihub.download import Downloader, Request
        from tihub.retry import reporting

        cat = self.catalog

        def record(path: Path, emb: Any, sha: str, r: Request) -> None:
            cat.upsert_local_file(path, emb, sha, r.entry_id)
            after_fetch(cat, path, sha, r.entry_id, r.url, allow_private=r.allow_private, upstream_sha256=r.sha256)

        relay = fetch_relay(progress)
        with reporting(relay.note), Downloader(folder, convert=convert, force=force, jobs=jobs, deadline=timeout,
                                               progress=relay, record=record) as dl:
            dl.blob_cache = BlobCache.for_workspace(self.workspace)
            results = dl.fetch_all(requests)
        out = []
        for r in results:
            label = r.request.label or r.request.url
            out.append(FetchResult(label, r.ok, r.status, path=str(r.path) if r.path else None, sha256=r.sha256, size=r.size,
                                   converted=r.converted, error=None if r.ok else (r.error or f"Fetching {label} failed; try again."),
                                   name=r.path.stem if r.path else r.request.name, url=r.request.url,
                                   resumed_from=r.resumed_from))
        if progress:
            size = sum(r.size or 0 for r in out if r.ok)
            progress(size, size, "done")
        return out

    def fetch(self, target: str | int, *, progress: ProgressCallback | None = None, force: bool = False,
              convert: str = "safetensors", timeout: float = 1800.0) -> FetchResult:
        """Fetch the file of one catalogue entry (name or id) or URL into embeddings/: checked,
        atomic, recorded. A file already on disk is not fetched again (unless `force`); two calls
        for one entry at once end with one file (the second waits, then finds it). Never raises
        for a failed download: the result says why in one sentence."""
        label = str(target)
        try:
            files = self.catalog.files_for(target) if not _URL_RE.match(label) else []
        except NotFound as exc:
            return FetchResult(label, False, "failed", error=str(exc))
        key = str(files[0]["entry_id"]) if files else label
        with self._lock:
            lock = self._fetch_locks.setdefault(key, threading.Lock())
        with lock:
            plan = self._plan(label, force=force)
            if isinstance(plan, FetchResult):
                return plan
            self.workspace.ensure()
            (r,) = self._download([plan], self.workspace.embeddings_dir, convert=convert, force=force, jobs=1,
                                  timeout=timeout, progress=progress)
            return r

    def fetch_many(self, targets: list[str], *, to: str | Path | None = None, convert: str = "safetensors",
                   name: str | None = None, jobs: int = 4, force: bool = False, timeout: float = 1800.0,
                   progress: ProgressCallback | None = None) -> list[FetchResult]:
        """Fetch several catalogue names, ids or URLs at once (`jobs` at a time) into embeddings/
        (or the folder `to`), as `tihub fetch`: one result per target, in their order. `convert`
        "safetensors" converts pickled files on arrival, "original" keeps the bytes; `name` (one
        target only) is the file name to save under."""
        if name and len(targets) > 1:
            raise ConfigError("--name only works with one target.")
        name = _strip_suffix(name)
        self.workspace.ensure()
        folder = Path(to).expanduser() if to else self.workspace.embeddings_dir
        sources: dict[str, Any] | None = None
        plans: list[Any] = []
        for t in targets:
            if sources is None and not _URL_RE.match(t):
                try:
                    sources = {s.name: s for s in self.workspace.sources()}
                except ConfigError as exc:
                    sources = {}
                    if progress:
                        progress(0, None, Event(f"{exc} (private addresses stay refused for catalogue URLs)", "note"))
            plans.append(self._plan(t, name=name, force=force, to=Path(to) if to else None, sources=sources))
        requests = [p for p in plans if not isinstance(p, FetchResult)]
        done = iter(self._download(requests, folder, convert=convert, force=force, jobs=jobs, timeout=timeout,
                                   progress=progress) if requests else [])
        return [p if isinstance(p, FetchResult) else next(done) for p in plans]

    def upgrade(self, names: list[str] | tuple[str, ...] = (), *, all_: bool = False, keep_old: bool = False,
                convert: str = "safetensors", jobs: int = 4, timeout: float = 1800.0,
                progress: ProgressCallback | None = None) -> list[UpgradeResult]:
        """Fetch the newer upstream file of outdated local files (`names`, or every one with
        `all_`) under the same name, as `tihub fetch --upgrade`: one result per file, with
        `upgraded` and `old_path` (the replaced file, kept with `keep_old`); `as_dict()` is the
        `--json` item."""
        from tihub.updates import upgrade

        rows = upgrade(self.catalog, self.workspace, names, all_=all_, keep_old=keep_old, convert=convert, jobs=jobs,
                       timeout=timeout, progress=fetch_relay(progress), allow_private=self.allows_private)
        return [UpgradeResult(**row) for row in rows]

    # ------------------------------------------------------------------ sources and sync

    def sources(self) -> list[SourceInfo]:
        """The configured sources with their last sync, status and entry counts, then the sources
        only the catalogue knows (e.g. `local`), as `tihub sources --json` items."""
        specs = self.workspace.sources()
        rows = {r["name"]: r for r in self.catalog.sources()}
        out: list[SourceInfo] = []
        for s in specs:
            r = rows.get(s.name, {})
            out.append(SourceInfo(name=s.name, kind=s.kind, target=s.get("url") or s.get("author") or s.get("path") or "",
                                  enabled=s.enabled, nsfw=s.nsfw, allow_private=s.allow_private, last_sync=r.get("last_sync"),
                                  status=r.get("last_status") or "never synced", error=r.get("last_error"),
                                  entries=r.get("entry_count") or 0, removed=r.get("removed") or 0))
        configured = {s.name for s in specs}
        for name, r in rows.items():  # known to the catalogue only (e.g. `local` made by fetch/import)
            if name not in configured:
                out.append(SourceInfo(name=name, kind=r["kind"], target="", enabled=False, nsfw=bool(r["nsfw"]),
                                      allow_private=False, last_sync=r.get("last_sync"),
                                      status=(r.get("last_status") or "-") + " (not in sources.yaml)", error=r.get("last_error"),
                                      entries=r.get("entry_count") or 0, removed=r.get("removed") or 0))
        return out

    def init_sources(self) -> tuple[bool, str]:
        """Write the default sources.yaml into the workspace unless it lists sources already:
        (whether it was written, one sentence saying what happened)."""
        from tihub.config import DEFAULT_SOURCES_YAML

        ws = self.workspace
        existing = ws.sources() if ws.sources_path.exists() else []
        if existing:
            return False, f"{ws.sources_path} already lists {len(existing)} source(s); edit it by hand."
        # absent, or a file that lists nothing: the default list is what the user asked for
        ws.ensure()
        ws.sources_path.write_text(DEFAULT_SOURCES_YAML, encoding="utf-8")
        return True, f"Wrote the default sources to {ws.sources_path}."

    def source_names(self) -> list[str]:
        """Every source name the catalogue or sources.yaml knows."""
        names = [r["name"] for r in self.catalog.sources()]
        try:
            names += [s.name for s in self.workspace.sources() if s.name not in names]
        except ConfigError:
            pass
        return names

    def sync(self, names: list[str] | None = None, *, progress: ProgressCallback | None = None,
             deadline: float = 900.0, deep_budget: int = 64 * 1024 * 1024) -> list[SyncResult]:
        """Sync the sources in sources.yaml (all enabled ones, or `names`), as `tihub sync --json`:
        one report per source with `ok`, plus its one-line `summary`. A failing source keeps its
        entries; never raises for one source (raises ConfigError for a broken sources.yaml or an
        unknown name). `deep_budget` bytes may be spent reading small embedding files to learn
        their facts before download (0: none). `progress` hears an Event "pass" as each source
        starts, its steps, and retries as Events "note"."""
        from tihub.retry import reporting
        from tihub.sync import sync

        state: dict[str, Any] = {"source": None, "done": 0}

        def relay(source: str, message: str, done: int | None, total: int | None) -> None:
            if not progress:
                return
            if source != state["source"]:  # one line per source as it starts, then its own bar
                state["source"], state["done"] = source, 0
                progress(0, None, Event(f"{source}: {message}", "note"))
                progress(0, total, Event(source, "pass", source=source))
            if done is not None:
                state["done"] = done
            progress(state["done"], total, f"{source}: {message}")

        def note(message: str) -> None:
            if progress:
                progress(state["done"], None, Event(message, "note"))

        with reporting(note):  # retries and "you appear to be offline" told as they happen
            reports = sync(self.workspace, names or None, progress=relay, deadline_s=deadline, catalog=self.catalog,
                           deep_budget=deep_budget)
        self._facets = None  # kinds and sources may have changed
        return [SyncResult(**r.as_dict(), summary=r.summary()) for r in reports]

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

    def compat(self, model_hash: str, *, remote: bool = False) -> list[CompatResult]:
        """Verdicts for every local embedding on one model (any hash form, or sd1/sd2/sdxl): each
        `name`, `fit`, `reason`, `path`, `trained_on`, per-app `apps` and the model's label as
        `model` (`as_dict()`: the `tihub compat --json` item)."""
        report = self.judge(model_hash=model_hash, remote=remote)
        label = report.model.label()
        for r in report.results:
            r.model = label
        return report.results

    def judge(self, names: list[str] | tuple[str, ...] = (), *, model_file: str | Path | None = None,
              model_hash: str | None = None, catalog: bool = False, remote: bool = False,
              app: str | None = None) -> CompatReport:
        """Which embeddings work on one model, as `tihub compat`: trained-on, same-family,
        partial, wont-load or unknown, and what each app (a1111, forge, comfyui, invokeai,
        diffusers) does with it.

        The model is a file (`model_file`: hashed with the cache, family read from its headers)
        or any hash form or family (`model_hash`: looked up among models tihub hashed, the
        built-in table and, with `remote`, Civitai). `names` are local embeddings or catalogue
        entries (a name that is neither is a failed result); without names every local embedding
        is judged, and with `catalog` also every catalogue entry not fetched. With `app`, `fit`
        and `reason` are that app's verdict."""
        from tihub.compat import TRAINED_ON, model_from_file, name_checkpoints, report_catalog, report_local

        if bool(model_file) == bool(model_hash):
            raise ConfigError("Give exactly one of --model FILE or --model-hash HASH.")
        self.workspace.ensure()
        cat = self.catalog
        url, allow_private = self._civitai()
        model = model_from_file(str(model_file), cat) if model_file else self.model(model_hash or "", remote=remote)
        local = [f.row() for f in self.local()]
        # what to judge: ("local", items), ("catalog", rows) and ("error", [failed name]), in order
        groups: list[tuple[str, list[dict[str, Any]]]] = []
        if names:
            for n in names:
                low = n.lower()
                mine = [r for r in local if r["name"].lower() == low or r["path"].lower() == low]
                if mine:
                    groups.append(("local", [_compat_local_item(r) for r in mine]))
                    continue
                try:
                    files = cat.files_for(n)
                except NotFound as exc:
                    groups.append(("error", [{"name": n, "error": str(exc)}]))
                    continue
                rows = []
                for f in files[:1]:
                    full = cat.file_by_sha256(f["sha256"]) if f.get("sha256") else None
                    rows.append({"name": f.get("entry_name") or n, "base": f.get("base"), "widths": f.get("widths"),
                                 "sd_checkpoint": (full or {}).get("sd_checkpoint"), "source": f.get("source"),
                                 "base_model": f.get("base_model")})
                if not rows:
                    rows.append({"name": n, "base": None, "widths": None, "sd_checkpoint": None})
                groups.append(("catalog", rows))
        else:
            groups.append(("local", [_compat_local_item(r) for r in local]))
            if catalog:
                groups.append(("catalog", cat.search(local=False, limit=None)))
        # Name the model each embedding was made on (one bulk Civitai lookup for unknown hashes).
        made_on = name_checkpoints(
            {r["sd_checkpoint"] for _, rows in groups for r in rows if r.get("sd_checkpoint")},
            cat, civitai_url=url, allow_private=allow_private, remote=remote,
        )
        report = CompatReport(model)
        for kind, rows in groups:
            if kind == "error":  # a name that is neither local nor catalogued: a failed item, in order
                report.results += [CompatResult(name=r["name"], ok=False, error=r["error"]) for r in rows]
                continue
            for r in (report_local if kind == "local" else report_catalog)(rows, model, made_on):
                m = made_on.get(r.get("sd_checkpoint") or "")
                made_on_label = m.label() if m is not None and m.name else None
                apps = {a: dict(v) for a, v in r["apps"].items()}
                fit, reason = r["fit"], r["reason"]
                if made_on_label and fit != TRAINED_ON:
                    reason += f"; it was made on {made_on_label}"
                if app:
                    fit, reason = apps[app]["fit"], apps[app]["reason"]
                report.results.append(CompatResult(
                    name=r["name"], ok=True, fit=fit, reason=reason, trained_on=r.get("sd_checkpoint"),
                    trained_on_name=m.name if m is not None and m.name else None, line=r.get("line"),
                    path=str(self.workspace.embeddings_dir / r["path"]) if r.get("path") else None,
                    source=r.get("source"), apps=apps, app=app))
        return report

    # ------------------------------------------------------------------ what the catalogue knows across entries

    def show(self, name_or_id: str | int, *, thumbnails: bool = False, pictures: bool = True) -> EntryDetail:
        """Everything the catalogue knows about one entry, as `tihub show` reads it (files,
        hashes, trigger syntax per app, previews, verifications, training runs, compatibility with
        the known models), with its `pictures` described (with `thumbnails`, their cached WEBP
        thumbnails are made now): `data` holds it as the catalogue reads it, `as_dict()` is the
        `tihub show --json` item. Raises NotFound."""
        e = self.catalog.entry(name_or_id)
        if pictures or thumbnails:
            from tihub.previews import entry_previews

            e["pictures"] = entry_previews(self.catalog, str(e["id"]), thumbs=thumbnails,
                                           allow_private=self.allows_private(e.get("source")))
        return EntryDetail(id=e["id"], name=e["name"], source=e["source"], base=e["base"], kind=e.get("kind"),
                           title=e.get("title"), nsfw=bool(e.get("nsfw")), data=e)

    def similar(self, name: str, limit: int = 10) -> list[SimilarHit]:
        """Catalogued embeddings whose vectors point the same way as `name`'s (a catalogue name
        or id, or an embedding file), best first (`as_dict()` the `tihub similar --json` item)."""
        from tihub.similar import similar

        return [SimilarHit(**row) for row in similar(self.catalog, name, limit)]

    def dupes(self, threshold: float = 0.95) -> list[DupeGroup]:
        """Groups of near-duplicate embeddings (re-uploads, renamed copies, light fine-tunes)
        scoring at least `threshold` (`as_dict()` the `tihub dupes --json` item)."""
        from tihub.similar import dupes

        return [DupeGroup(group=g["group"], min_score=g["min_score"], max_score=g["max_score"],
                          members=[DupeMember(**m) for m in g["members"]]) for g in dupes(self.catalog, threshold)]

    def explain(self, name: str, model: str | Path, top: int = 5) -> list[VectorTokens]:
        """The nearest vocabulary tokens of each vector of `name` (an embedding file, or a
        catalogue name) on the model's token table, read without torch: one result per vector
        (`as_dict()` the `tihub explain --json` item)."""
        from tihub.explain import explain, token_tables
        from tihub.similar import vectors_of

        p = Path(name).expanduser()
        vecs = vectors_of(None, name)[0] if p.is_file() else vectors_of(self.catalog, name)[0]
        return [VectorTokens(name=p.stem if p.is_file() else name, **r) for r in explain(vecs, token_tables(model), top)]

    def outdated(self) -> list[OutdatedFile]:
        """Every fetched file still on disk: `status` current | newer | gone | unknown, with the
        reason (`as_dict()` the `tihub outdated --json` item)."""
        from tihub.updates import outdated

        return [OutdatedFile(**row) for row in outdated(self.catalog)]

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


def _compat_local_item(row: dict[str, Any]) -> dict[str, Any]:
    """A `tihub list` row as the compat rules judge it (a T5 embedding the reader refuses is still judged)."""
    widths = row.get("widths")
    problem = "; ".join(row["problems"]) if row.get("problems") and not widths else None
    if problem and "T5 (4096-wide)" in problem:
        widths, problem = {"t5xxl": 4096}, None
    return {"name": row["name"], "widths": widths, "sd_checkpoint": row.get("sd_checkpoint"),
            "sd_checkpoint_name": row.get("sd_checkpoint_name"), "problem": problem, "path": row["path"]}


_LOCAL_FIELDS = frozenset(f.name for f in fields(LocalFile)) - {"folder"}
