"""`tihub farm`: verify or preview every matching catalogue entry on one or more models, as work
spread over a Ray cluster (a local Ray instance when no address is given).

The driver (this process) plans: it searches the catalogue, picks each entry's file, hashes each
model once, and drops the work already done for (embedding sha256, model hash, settings) - the
farm key recorded with every result - so a run resumes after any interruption. It then hands
batches of embeddings to worker actors. Each worker (`FarmWorker`) loads its model once and keeps
it; for each batch it fetches the files through the verified download path into a shared cache
(size and sha256 checked, then parsed by the allow-list readers), checks them (`verify` of
tihub.engine.verify), renders the standard preview of the whole batch with the cells of several
embeddings sharing each pipeline call, and writes the results (verification or preview record,
measured widths and norms) to the shared catalogue itself. One bad embedding fails its own task
with a reason; a worker that dies has its batch retried on another worker.

Ray is an optional extra (`pip install 'tihub[farm]'`); torch is imported only by the workers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tihub.errors import TihubError

ACTIONS = ("verify", "preview")
PREVIEW_VERSION = 1  # the layout of the standard preview this farm draws (part of the farm key)
MAX_ATTEMPTS = 3  # tries of one batch (a worker died under it) before its tasks fail


class FarmError(TihubError):
    """A farm run could not start (Ray missing or unreachable, no model, nothing to do)."""


@dataclass(frozen=True)
class FarmSettings:
    """What every task does; part of the farm key, so changed settings mean new work."""

    action: str = "verify"  # verify | preview
    steps: int = 20
    size: str | None = None  # preview size, WxH or N (default: the model's native size)
    grid: bool = True  # verify: also render the standard preview grid
    batch: int = 4  # embeddings per worker task; their preview cells share pipeline calls
    images_per_call: int = 16  # images per pipeline call
    reader: str | None = None  # "module:function" reading an embedding file (default tihub.formats)
    allow_private: bool = False  # downloads may go to loopback/private addresses

    def key(self) -> str:
        """The settings part of the skip key (what changes the result; not batch sizes)."""
        what = {"action": self.action, "steps": self.steps, "size": self.size, "grid": self.grid,
                "preview": PREVIEW_VERSION}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ModelRef:
    spec: str  # what the worker loads (path or repo id)
    hash: str  # AutoV2 when the file could be hashed, else "name:<spec>"
    name: str


@dataclass
class Task:
    """One embedding file on one model."""

    entry_id: int
    file_id: int | None
    name: str
    kind: str | None
    sha256: str | None
    url: str | None
    local_path: str | None
    size: int | None
    file_name: str | None
    model: str  # ModelRef.spec
    model_hash: str
    model_name: str
    attempts: int = 0


@dataclass
class TaskResult:
    entry_id: int
    name: str
    model: str
    ok: bool
    result: str | None = None  # verify: ok | warning | failed
    error: str | None = None
    grid: str | None = None
    record_id: int | None = None
    sha256: str | None = None
    worker: int | None = None  # pid

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    done: int
    failed: int
    remaining: int
    skipped: int
    seconds: float
    workers: list[int] = field(default_factory=list)  # pids of the live workers
    retried: int = 0

    @property
    def rate(self) -> float:
        """Finished tasks per second."""
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return self.remaining / self.rate if self.rate > 0 else None

    def line(self) -> str:
        eta = f"{self.eta:.0f} s" if self.eta is not None else "?"
        return (f"{self.done} done, {self.failed} failed, {self.remaining} remaining ({self.skipped} already done); "
                f"{self.rate:.2f} entries/s, ETA {eta}")


@dataclass
class FarmReport:
    results: list[TaskResult]
    skipped: int
    seconds: float
    retried: int = 0
    workers_started: int = 0

    @property
    def done(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r.ok)


# ---------------------------------------------------------------------------------------------
# Planning (the driver; no torch, no Ray)


def model_ref(spec: str, catalog: Any) -> ModelRef:
    """A model to farm on, with its AutoV2 hash (through the catalogue's hash cache)."""
    from tihub.hashing import HashCache, model_hashes

    path = Path(spec).expanduser()
    name = path.stem if path.is_file() else (path.name if path.is_dir() else spec.split("/")[-1])
    if path.exists():
        try:
            h = model_hashes(path, HashCache(catalog.engine))
            if h.autov2:
                return ModelRef(str(path.resolve()), h.autov2, name)
        except TihubError:
            pass
    elif not ("/" in spec and not spec.startswith((".", "/"))):
        raise FarmError(f"Model {spec!r} does not exist; pass a diffusers folder, a .safetensors/.ckpt file or a Hub repo id.")
    return ModelRef(spec, f"name:{spec}", name)


def _primary_files(catalog: Any, entry_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The file each entry is farmed with: on disk first, then a direct download, with a sha."""
    from sqlalchemy import bindparam, text

    from tihub.catalog.db import read

    out: dict[int, dict[str, Any]] = {}
    stmt = text(
        "SELECT ef.entry_id, f.id, f.sha256, f.file_name, f.size, f.local_path, ef.url, ef.manual "
        "FROM entry_files ef JOIN files f ON f.id = ef.file_id WHERE ef.entry_id IN :ids ORDER BY f.id"
    ).bindparams(bindparam("ids", expanding=True))
    with read(catalog.engine) as conn:
        for i in range(0, len(entry_ids), 500):
            for r in conn.execute(stmt, {"ids": entry_ids[i : i + 500]}).mappings():
                f = dict(r)
                best = out.get(f["entry_id"])
                rank = (not (f["local_path"] and Path(f["local_path"]).is_file()), bool(f["manual"]), not f["url"], not f["sha256"])
                if best is None or rank < best["_rank"]:
                    f["_rank"] = rank
                    out[f["entry_id"]] = f
    return out


def done_keys(catalog: Any, settings: FarmSettings) -> set[tuple[str, str]]:
    """(sha256, model hash) pairs that already have a result for these settings."""
    from sqlalchemy import text

    from tihub.catalog.db import read

    key = settings.key()
    like = f'%"farm_key":"{key}"%'
    done: set[tuple[str, str]] = set()
    with read(catalog.engine) as conn:
        for table, col in (("verifications", "details"), ("previews", "params")):
            for mh, blob in conn.execute(text(f"SELECT model_hash, {col} FROM {table} WHERE {col} LIKE :k"), {"k": like}):
                farm = (json.loads(blob or "{}") or {}).get("farm") or {}
                if farm.get("farm_key") == key and farm.get("sha256"):
                    done.add((farm["sha256"], mh or farm.get("model_hash")))
    return done


def plan(catalog: Any, models: list[ModelRef], settings: FarmSettings, query: str = "",
         **filters: Any) -> tuple[list[Task], list[TaskResult], int]:
    """(tasks to run, tasks that cannot run (manual downloads, no file), tasks already done)."""
    rows = catalog.search(query, limit=0, **filters)
    files = _primary_files(catalog, [r["id"] for r in rows])
    done = done_keys(catalog, settings)
    tasks: list[Task] = []
    unrunnable: list[TaskResult] = []
    skipped = 0
    for r in rows:
        f = files.get(r["id"])
        for m in models:
            if f is None or not (f["local_path"] or (f["url"] and not f["manual"])):
                why = "it has no file" if f is None else "its file is a manual download"
                unrunnable.append(TaskResult(r["id"], r["name"], m.name, False,
                                             error=f"{r['name']} cannot be farmed: {why}; fetch it by hand first (tihub fetch {r['name']})."))
                continue
            sha = (f["sha256"] or "").lower() or None
            if sha and (sha, m.hash) in done:
                skipped += 1
                continue
            tasks.append(Task(r["id"], f["id"], r["name"], r.get("kind"), sha, f["url"], f["local_path"], f["size"],
                              f["file_name"], m.spec, m.hash, m.name))
    return tasks, unrunnable, skipped


# ---------------------------------------------------------------------------------------------
# The worker (runs inside a Ray actor; imports torch)


def load_reader(spec: str | None) -> Callable[[Path], Any]:
    """The embedding reader named "module:function", or tihub's allow-list reader."""
    if not spec:
        from tihub.formats import read_embedding

        return read_embedding
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]


class FarmWorker:
    """One model, loaded once; processes batches of tasks and records their results."""

    def __init__(self, model: str, db_url: str, cache_dir: str, out_dir: str, settings: FarmSettings,
                 device: str | None = None, threads: int | None = None) -> None:
        from tihub.catalog.db import open_engine
        from tihub.catalog.store import Catalog

        self.model, self.device, self.threads = model, device, threads
        self.settings = settings
        self.cache = Path(cache_dir)
        self.out = Path(out_dir)
        self.catalog = Catalog(open_engine(db_url))
        self.read = load_reader(settings.reader)
        self._engine: Any = None
        self.calls = 0

    @property
    def engine(self) -> Any:
        """The model, loaded on first use and kept for every later batch."""
        if self._engine is None:
            import torch

            from tihub.engine.generate import Engine

            if self.threads:
                torch.set_num_threads(self.threads)
            self._engine = Engine.load(self.model, None, device=self.device)
        return self._engine

    def pid(self) -> int:
        return os.getpid()

    # -- one batch ------------------------------------------------------------------------

    def already(self, t: Task) -> tuple[int, str | None] | None:
        """(record id, result) when this file already has a result on this model with these
        settings: a batch retried after its worker died mid-way, or a concurrent farm run."""
        from sqlalchemy import text

        from tihub.catalog.db import read

        if t.file_id is None or not t.sha256:
            return None
        key = self.settings.key()
        with read(self.catalog.engine) as conn:
            for sql in ("SELECT id, result, details FROM verifications WHERE file_id = :f AND model_hash = :m",
                        "SELECT id, NULL, params FROM previews WHERE file_id = :f AND model_hash = :m"):
                for rid, result, blob in conn.execute(text(sql), {"f": t.file_id, "m": t.model_hash}):
                    farm = (json.loads(blob or "{}") or {}).get("farm") or {}
                    if farm.get("farm_key") == key and farm.get("sha256") == t.sha256:
                        return int(rid), result
        return None

    def run(self, tasks: list[Task]) -> list[TaskResult]:
        from tihub.engine.verify import Verification, verify

        results: dict[int, TaskResult] = {}
        ready: list[tuple[Task, Any, Any]] = []  # (task, embedding, verification)
        # 1. fetch and read each file; check its numbers (a failure stays with its task)
        for i, t in enumerate(tasks):
            res = TaskResult(t.entry_id, t.name, t.model_name, False, sha256=t.sha256, worker=os.getpid())
            results[i] = res
            prior = self.already(t)
            if prior is not None:
                res.record_id, res.result = prior[0], prior[1] or "ok"
                res.ok = res.result != "failed"
                if not res.ok:
                    res.error = f"{t.name} failed on {t.model_name} (recorded earlier)."
                continue
            try:
                path = self.fetch(t)
            except TihubError as exc:
                res.error = str(exc)
                continue
            try:
                emb = self.read(path)
            except TihubError as exc:
                emb, err = None, str(exc)
            except Exception as exc:  # a reader bug on a hostile file is still that file's failure
                emb, err = None, f"{path.name} could not be read: {exc}"
            if emb is None:
                v = Verification(name=t.name, file=str(path), model=t.model_name, model_hash=t.model_hash)
                v.add("readable", False, err)
            else:
                v = verify(self.engine, t.name, embedding=emb, grid=False)
            v.file = str(path)
            if v.result == "failed" or not (self.settings.action == "preview" or self.settings.grid):
                self.record(t, v, res, emb)
                continue
            ready.append((t, emb, v))
        # 2. the standard previews of the whole batch, several embeddings per pipeline call
        if ready:
            grids = self.previews([(f"emb{i}_{t.entry_id}", t, emb) for i, (t, emb, _) in enumerate(ready)])
            for (t, emb, v), path in zip(ready, grids, strict=True):
                v.grid = str(path)
                res = next(r for i, r in results.items() if tasks[i] is t)
                self.record(t, v, res, emb)
        return [results[i] for i in range(len(tasks))]

    def fetch(self, t: Task) -> Path:
        """The task's file: on disk, in the shared cache, or downloaded there (size and sha256
        checked, atomic)."""
        from tihub.download import Downloader, Request

        if t.local_path and Path(t.local_path).is_file():
            return Path(t.local_path)
        suffix = Path(t.file_name or t.url or "x.bin").suffix.lower() or ".bin"
        key = t.sha256 or hashlib.sha256((t.url or "").encode()).hexdigest()
        dest = self.cache / key[:2] / f"{key}{suffix}"
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        req = Request(t.url or "", name=t.name, sha256=t.sha256, size=t.size, entry_id=t.entry_id, entry_name=t.name,
                      file_name=t.file_name, allow_private=self.settings.allow_private, label=t.name)
        with Downloader(dest.parent, jobs=1, retries=2, deadline=600) as dl:
            dl.fetch_raw(req, dest)
        return dest

    def previews(self, items: list[tuple[str, Task, Any]]) -> list[Path]:
        """The standard preview grid of each (token, task, embedding): every cell of every
        embedding rendered together, `images_per_call` images per pipeline call."""
        from tihub.engine.generate import Settings, parse_size
        from tihub.engine.grid import PREVIEW_PROMPTS, PREVIEW_SEEDS, Cell, draw_grid, preview_kind, render_cells

        native = self.engine.model.native_size
        w, h = parse_size(self.settings.size, native) if self.settings.size is not None else (native, native)
        settings = Settings(steps=self.settings.steps, sampler="Euler a", cfg_scale=7.0, width=w, height=h)
        layouts = []
        cells: list[Cell] = []
        for token, t, emb in items:
            # the columns: the kind's prompts (a negative: each prompt without and with it)
            if preview_kind(t.kind, t.name) == "negative":
                cols = [(p, neg) for p in PREVIEW_PROMPTS["negative"] for neg in ("", token)]
            else:
                cols = [(p.replace("{emb}", token), "") for p in PREVIEW_PROMPTS[preview_kind(t.kind, t.name)]]
            mine = [Cell(x, y, 0, p, neg, int(seed), Settings(**vars(settings)), extra={token: emb})
                    for y, seed in enumerate(PREVIEW_SEEDS) for x, (p, neg) in enumerate(cols)]
            cells += mine
            layouts.append((token, t, cols, mine))
        self.calls += render_cells(cells, lambda _m: self.engine, self.settings.images_per_call)
        paths = []
        for token, t, cols, mine in layouts:
            rows = [[c.image for c in mine if c.y == y] for y in range(len(PREVIEW_SEEDS))]
            xlabels = [(f"{'with' if n else 'without'} {t.name}: {p}" if n or "{emb}" not in p else p).replace(token, t.name)
                       for p, n in cols]
            image = draw_grid(rows, xlabels, [f"Seed: {s}" for s in PREVIEW_SEEDS], title=f"{t.name} on {self.engine.model.name}")
            folder = self.out / (t.model_hash.replace(":", "_"))
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{t.entry_id}-{_safe(t.name)}.preview-grid.png"
            image.save(path)
            paths.append(path)
        return paths

    def record(self, t: Task, v: Any, res: TaskResult, emb: Any) -> None:
        """Write the task's result to the catalogue: the verification (or preview) with the
        farm key, and the widths the file was measured at."""
        farm = {"farm_key": self.settings.key(), "sha256": t.sha256, "model_hash": t.model_hash}
        details = {**v.to_dict(), "farm": farm}
        failed = v.result == "failed"
        if self.settings.action == "verify" or failed:
            res.record_id = self.catalog.add_verification(
                entry_id=t.entry_id, file_id=t.file_id, model_hash=t.model_hash,
                model_name=t.model_name, result=v.result, details=details, grid_path=v.grid)
        else:
            res.record_id = self.catalog.add_preview(
                entry_id=t.entry_id, file_id=t.file_id, path=v.grid, model_hash=t.model_hash,
                params={"model": t.model_name, "steps": self.settings.steps, "norms": v.norms, "farm": farm})
        if emb is not None and t.file_id is not None:
            record_widths(self.catalog, t.file_id, dict(emb.widths), int(emb.vector_count))
        res.result, res.grid = v.result, v.grid
        res.ok = not failed
        if failed:
            res.error = f"{t.name} failed on {t.model_name}: " + next(
                (c["detail"] for c in v.checks if c["status"] == "failed"), "a check failed") + "."


def record_widths(catalog: Any, file_id: int, widths: dict[str, int], vectors: int) -> None:
    """Store measured widths, vector count and the base they mean on a files row that had no
    widths yet (a source's label never overrides a measurement; a measurement fills a gap)."""
    from tihub.catalog import schema as S
    from tihub.catalog.compat_rules import base_from_widths
    from tihub.catalog.db import write

    with write(catalog.engine) as conn:
        conn.execute(S.files.update().where(S.files.c.id == file_id, S.files.c.widths.is_(None)).values(
            widths=json.dumps(widths, sort_keys=True, separators=(",", ":")), base=base_from_widths(widths),
            vectors=vectors))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80] or "embedding"


# ---------------------------------------------------------------------------------------------
# The driver


def run(
    db_url: str,
    tasks: list[Task],
    settings: FarmSettings,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cache_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    skipped: int = 0,
    device: str | None = None,
    threads: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    ray_init: dict[str, Any] | None = None,
) -> FarmReport:
    """Run `tasks` on Ray: `workers` actors per model, each with `gpus_per_worker` GPUs."""
    try:
        import ray
    except ImportError:
        raise FarmError("Ray is not installed; install the farm extra: pip install 'tihub[farm]'.") from None
    t0 = time.monotonic()
    report = FarmReport([], skipped, 0.0)
    if not tasks:
        return report
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, **(ray_init or {}))
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError from Ray
            raise FarmError(f"Cannot reach the Ray cluster at {address or 'a new local instance'}: {exc}; "
                            "check --address (ray://HOST:10001 or auto).") from None
    try:
        gpus_there = float(ray.cluster_resources().get("GPU", 0))
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if gpus_there >= 1 else 0.0
        if workers is None:
            workers = max(1, int(gpus_there // gpus_per_worker)) if gpus_per_worker else 1
        return _drive(ray, db_url, tasks, settings, workers, gpus_per_worker, str(cache_dir), str(out_dir), device,
                      threads, on_progress, report, t0)
    finally:
        if started_here:
            ray.shutdown()


def _drive(ray: Any, db_url: str, tasks: list[Task], settings: FarmSettings, workers: int, gpus: float,
           cache_dir: str, out_dir: str, device: str | None, threads: int | None,
           on_progress: Callable[[Progress], None] | None, report: FarmReport, t0: float) -> FarmReport:
    Worker = ray.remote(FarmWorker)
    by_model: dict[str, deque[list[Task]]] = {}
    for t in tasks:  # batches of one model, names unique within a batch
        q = by_model.setdefault(t.model, deque())
        if not q or len(q[-1]) >= settings.batch:
            q.append([])
        q[-1].append(t)
    pool: dict[str, list[Any]] = {m: [] for m in by_model}
    pids: dict[Any, int] = {}
    budget = {m: workers * 2 for m in by_model}  # replacements allowed per model

    def start(model: str) -> None:
        opts: dict[str, Any] = {"num_gpus": gpus} if gpus else {"num_cpus": 1}
        actor = Worker.options(**opts).remote(model, db_url, cache_dir, out_dir, settings, device, threads)
        pool[model].append(actor)
        report.workers_started += 1
        try:
            pids[actor] = ray.get(actor.pid.remote())
        except Exception:
            pass  # a worker that cannot start shows up as a failed batch below

    for m in by_model:
        for _ in range(workers):
            start(m)
    inflight: dict[Any, tuple[Any, str, list[Task]]] = {}
    idle: list[tuple[Any, str]] = [(a, m) for m, actors in pool.items() for a in actors]
    remaining = len(tasks)

    def progress() -> None:
        if on_progress is not None:
            on_progress(Progress(report.done, report.failed, remaining, report.skipped, time.monotonic() - t0,
                                 [pids[a] for actors in pool.values() for a in actors if a in pids], report.retried))

    while remaining:
        # 1. hand a batch to every idle worker of a model with work left
        for actor, m in list(idle):
            if by_model[m]:
                batch = by_model[m].popleft()
                inflight[actor.run.remote(batch)] = (actor, m, batch)
                idle.remove((actor, m))
        if not inflight:  # work left but no worker: every one died and no replacement is left
            for m, q in by_model.items():
                while q:
                    for t in q.popleft():
                        report.results.append(TaskResult(t.entry_id, t.name, m, False, sha256=t.sha256,
                                                         error=f"{t.name} was not run: every worker for {m} died; see the Ray logs."))
                        remaining -= 1
            break
        # 2. collect one finished batch; a dead worker's batch goes back in the queue
        ready, _ = ray.wait(list(inflight), num_returns=1)
        actor, m, batch = inflight.pop(ready[0])
        try:
            results = ray.get(ready[0])
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError, ray.exceptions.WorkerCrashedError):
            pool[m].remove(actor)
            pids.pop(actor, None)
            report.retried += 1
            for t in batch:
                t.attempts += 1
            if batch[0].attempts >= MAX_ATTEMPTS:
                for t in batch:
                    report.results.append(TaskResult(t.entry_id, t.name, m, False, sha256=t.sha256,
                                                     error=f"{t.name} was not run: its worker died {MAX_ATTEMPTS} times."))
                    remaining -= 1
            else:
                by_model[m].appendleft(batch)
            if budget[m] > 0:
                budget[m] -= 1
                start(m)
                idle.append((pool[m][-1], m))
            progress()
            continue
        except ray.exceptions.RayTaskError as exc:  # a bug in the worker: the batch fails, the run goes on
            results = [TaskResult(t.entry_id, t.name, m, False, sha256=t.sha256,
                                  error=f"{t.name} failed on {m}: {str(exc.cause or exc).splitlines()[0]}") for t in batch]
        report.results.extend(results)
        remaining -= len(batch)
        idle.append((actor, m))
        progress()
    report.seconds = time.monotonic() - t0
    return report


def farm(
    catalog: Any,
    models: Iterable[str],
    settings: FarmSettings,
    query: str = "",
    filters: dict[str, Any] | None = None,
    **run_args: Any,
) -> FarmReport:
    """Plan and run a farm over the catalogue `catalog` (its engine's URL is what workers open)."""
    if settings.action not in ACTIONS:
        raise FarmError(f"Farm action {settings.action!r} is not one of {', '.join(ACTIONS)}.")
    refs = [model_ref(m, catalog) for m in models]
    if not refs:
        raise FarmError("No model given; pass --model PATH (several times for several models).")
    tasks, unrunnable, skipped = plan(catalog, refs, settings, query, **(filters or {}))
    url = catalog.engine.url.render_as_string(hide_password=False)
    report = run(url, tasks, settings, skipped=skipped, **run_args)
    report.results = unrunnable + report.results
    return report
