"""`tihub sync`: run each source's indexer and write its listing into the catalogue.

Per source: the indexer runs with the state its last successful sync recorded and a deadline;
its candidates are collected completely BEFORE anything is written, then ingested in one
transaction. A source that fails (network, malformed data, timeout, a bug in an indexer) is
reported with one sentence and keeps its previous catalogue state; the other sources still sync.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tihub.catalog.store import Catalog
from tihub.config import SourceSpec, Workspace
from tihub.errors import ConfigError, SourceError, TihubError
from tihub.sources import get_indexer
from tihub.sources.base import Candidate, IndexContext, SourceUnchanged

DEFAULT_DEADLINE_S = 900.0  # per source
MAX_CANDIDATES = 2_000_000  # a source listing more than this is treated as malformed

# progress(source_name, message, done, total)
Progress = Callable[[str, str, int | None, int | None], None]


@dataclass
class SourceReport:
    """The outcome of syncing one source."""

    name: str
    kind: str
    status: str  # "ok" | "unchanged" | "failed"
    new: int = 0
    updated: int = 0
    removed: int = 0
    revived: int = 0
    unchanged: int = 0
    total: int = 0
    error: str | None = None
    seconds: float = 0.0
    offline: bool = False  # failed because a host name did not resolve (the machine seems offline)
    deep: dict[str, int] | None = None  # what deep sync read for this source (tihub.deep.DeepStats)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def summary(self) -> str:
        """One line for the terminal."""
        if self.failed:
            return f"{self.name}: failed: {self.error}"
        if self.status == "unchanged":
            return f"{self.name}: unchanged ({self.total} entries)"
        extra = f", {self.revived} back" if self.revived else ""
        d = self.deep or {}
        if d.get("measured") or d.get("over_budget"):
            extra += f"; read {d.get('measured', 0)} small files ({d.get('bytes', 0):,} bytes"
            extra += f", {d['from_cache']} from the cache" if d.get("from_cache") else ""
            extra += f", {d['over_budget']} left for a bigger --deep-budget" if d.get("over_budget") else ""
            extra += ")"
        return (
            f"{self.name}: {self.new} new, {self.updated} updated, {self.removed} removed, "
            f"{self.unchanged} unchanged{extra} ({self.total} entries, {self.seconds:.1f}s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_sources(workspace: Workspace, names: Iterable[str] | None = None) -> list[SourceSpec]:
    """The sources to sync: the named ones (even if disabled), else every enabled one."""
    specs = workspace.sources()
    if not names:
        return [s for s in specs if s.enabled]
    by_name = {s.name: s for s in specs}
    chosen: list[SourceSpec] = []
    for n in names:
        if n not in by_name:
            known = ", ".join(by_name) or "none"
            raise ConfigError(f"There is no source named {n!r} in {workspace.sources_path.name}; known sources: {known}.")
        if by_name[n] not in chosen:
            chosen.append(by_name[n])
    return chosen


def sync(
    workspace: Workspace,
    names: Iterable[str] | None = None,
    progress: Progress | None = None,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    catalog: Catalog | None = None,
    deep_budget: int | None = None,
) -> list[SourceReport]:
    """Sync the chosen sources one after the other; never raises for a single source's failure.

    `deep_budget`: bytes the whole sync may spend reading small embedding files (deep sync,
    `tihub.deep`); None means `tihub.deep.DEFAULT_BUDGET`, 0 turns deep reads off."""
    specs = select_sources(workspace, list(names) if names else None)
    cat = catalog or Catalog.open(workspace)
    deep = deep_reader(cat, workspace, deep_budget)
    reports: list[SourceReport] = []
    offline: str | None = None
    for spec in specs:
        if offline is not None and spec.kind != "local":
            # after the first DNS failure the others would fail the same way: say so at once
            reports.append(SourceReport(name=spec.name, kind=spec.kind, status="failed", offline=True,
                                        error=f"Source {spec.name!r} was skipped: you appear to be offline ({offline} could not be reached); its previous entries are kept, sync again when connected."))
            continue
        report = sync_source(cat, spec, workspace, progress, deadline_s=deadline_s, deep=deep)
        reports.append(report)
        if report.offline and offline is None:
            offline = spec.name
            from tihub.retry import announce

            announce(f"You appear to be offline ({spec.name}: a host name did not resolve); the other remote sources are skipped.")
    return reports


def deep_reader(catalog: Catalog, workspace: Workspace | None, budget: int | None) -> Any:
    """The DeepReader of one sync (None when the budget is 0): the workspace's blob cache and the
    sha256 values whose vectors the catalogue already holds."""
    from tihub.blobcache import BlobCache
    from tihub.catalog.vectors import measured_shas
    from tihub.deep import DEFAULT_BUDGET, DeepReader

    if budget is not None and budget <= 0:
        return None
    cache = BlobCache.for_workspace(workspace) if workspace is not None else None
    return DeepReader(budget=DEFAULT_BUDGET if budget is None else int(budget), cache=cache,
                      known=measured_shas(catalog.engine))


def sync_source(
    catalog: Catalog,
    spec: SourceSpec,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    deep: Any = None,
) -> SourceReport:
    started = time.monotonic()
    report = SourceReport(name=spec.name, kind=spec.kind, status="failed")
    try:
        state = catalog.source_state(spec.name)
        ctx = IndexContext(
            spec=spec,
            state=state,
            deadline=started + deadline_s,
            root=workspace.root if workspace is not None else None,
            progress_cb=(lambda msg, done, total: progress(spec.name, msg, done, total)) if progress else None,
            deep=deep,
        )
        before = deep.stats.as_dict() if deep is not None else None
        if progress:
            progress(spec.name, "listing", None, None)
        try:
            candidates = _collect(spec, ctx, deadline_s)
        except SourceUnchanged:
            catalog.record_sync(spec, "unchanged", state=ctx.new_state)
            report.status = "unchanged"
            report.total = next((s["entry_count"] for s in catalog.sources() if s["name"] == spec.name), 0)
            return report
        if progress:
            progress(spec.name, f"writing {len(candidates)} entries", None, None)
        result = catalog.ingest(spec, candidates, complete=ctx.complete, keep=ctx.kept, state=ctx.new_state)
        _save_vectors(catalog, candidates)
        if deep is not None and before is not None:
            report.deep = {k: v - before[k] for k, v in deep.stats.as_dict().items()}
        report.status = "ok"
        for k in ("new", "updated", "removed", "revived", "unchanged", "total"):
            setattr(report, k, getattr(result, k))
    except TihubError as exc:
        report.error = str(exc)
        report.offline = _offline(exc)
    except Exception as exc:  # a bug or malformed data inside an indexer: still one sentence
        report.error = (
            f"The {spec.kind} source {spec.name!r} returned data tihub could not handle "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); its previous entries are kept."
        )
    finally:
        report.seconds = time.monotonic() - started
    if report.failed:
        try:
            catalog.record_sync(spec, "failed", error=report.error)
        except TihubError:
            pass
    return report


def _offline(exc: BaseException) -> bool:
    """Whether a source failed because a host name did not resolve (no network, or no DNS)."""
    from tihub.retry import network_kind
    from tihub.sources._http import OfflineError

    text = str(exc).lower()
    return isinstance(exc, OfflineError) or network_kind(exc) == "dns" or "could not resolve host" in text or "appear to be offline" in text


def _save_vectors(catalog: Catalog, candidates: list[Candidate]) -> None:
    """Keep the measured vectors of local and deep-read files for the similarity index."""
    from tihub.catalog.vectors import collect, save

    found = collect(candidates)
    if found:
        save(catalog.engine, found)


def _collect(spec: SourceSpec, ctx: IndexContext, deadline_s: float) -> list[Candidate]:
    """Run the indexer to the end in a worker thread, so a hung request cannot outlive the
    deadline; every candidate is checked before it is accepted."""
    indexer = get_indexer(spec.kind)
    q: queue.Queue[Any] = queue.Queue(maxsize=10_000)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in indexer(spec, ctx):
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            q.put(("error", exc))

    thread = threading.Thread(target=work, name=f"tihub-index-{spec.name}", daemon=True)
    thread.start()
    out: dict[str, Candidate] = {}
    deadline = ctx.deadline if ctx.deadline is not None else time.monotonic() + deadline_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(
                    f"The source {spec.name!r} did not finish within {deadline_s:.0f} s; its previous entries are kept."
                )
            try:
                kind, value = q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if kind == "done":
                return list(out.values())
            if kind == "error":
                raise value
            out[_check(spec, value)] = value
            if len(out) > MAX_CANDIDATES:
                raise SourceError(f"The source {spec.name!r} lists more than {MAX_CANDIDATES} items; check its settings.")
    finally:
        stop.set()
        ctx.deadline = time.monotonic()  # a worker still running stops at its next check


def _check(spec: SourceSpec, c: Any) -> str:
    if not isinstance(c, Candidate):
        raise SourceError(f"The source {spec.name!r} produced {type(c).__name__} instead of a catalogue entry.")
    if not isinstance(c.remote_id, str) or not c.remote_id or not isinstance(c.name, str) or not c.name.strip():
        raise SourceError(f"The source {spec.name!r} produced an entry without an id or name ({c.remote_id!r}).")
    for f in c.files:
        if f.sha256 is not None and (len(f.sha256) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in f.sha256)):
            raise SourceError(f"The source {spec.name!r} gave {c.name!r} a malformed sha256 {f.sha256!r}.")
    return c.remote_id
