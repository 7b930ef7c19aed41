"""Background jobs of the web app: one thread per job, each job's state kept in the workspace.

A job keeps running when the page that started it is closed; `GET /api/jobs/{id}` (and the
page's poll) reads its progress. Two requests to fetch the same entry while the first is still
running get the same job, and `Hub.fetch` serialises fetches of one entry anyway, so two tabs
end with one correct file.

Every job is also a small JSON file, `WORKSPACE/.tihub-cache/jobs/ID.json`, written atomically
(a temporary file, then a rename) when it starts, ends, and at most twice a second while it
runs. A server that starts lists the jobs of earlier servers; one that was still running when its
server stopped is shown as failed, with a sentence that says so (unless the process that wrote it
still lives: another server on the same workspace). The newest `KEEP` jobs are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tihub.errors import TihubError

log = logging.getLogger("tihub.web")

KEEP = 200  # finished jobs kept on disk (the oldest go first)
SAVE_EVERY = 0.5  # seconds between saves of a running job's progress
MAX_POINTS = 4000  # a loss curve longer than this keeps every other point
STOPPED = "The server stopped while this job ran; start it again."


@dataclass
class Job:
    """One background job: what it works on, how far it is, and how it ended."""

    id: str
    kind: str  # fetch | sync | train | export | grid | verify
    target: str
    state: str = "queued"  # queued | running | done | failed
    done: int = 0
    total: int | None = None
    message: str = "waiting"
    result: dict[str, Any] | None = None
    error: str | None = None
    points: list[list[float]] = field(default_factory=list)  # a training job's loss curve: [step, loss]
    previews: list[str] = field(default_factory=list)  # pictures made while it runs (paths in the workspace)
    started: float = field(default_factory=time.time)  # seconds since the epoch
    finished: float | None = None
    ok: bool = True  # false once it failed

    # not fields (never shown or saved): the folder it is written to, and when it last was
    _folder = None
    _saved = 0.0
    _pid = 0  # the process that last wrote its file

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ok"] = self.state != "failed"
        d["points"] = [list(p) for p in self.points]
        d["previews"] = list(self.previews)
        return d

    # ------------------------------------------------------------------ progress, from the work thread

    def update(self, done: int | None = None, total: int | None = None, message: str | None = None) -> None:
        """Record progress (and save it now and then)."""
        if done is not None:
            self.done = int(done)
        if total is not None:
            self.total = int(total)
        if message is not None:
            self.message = message
        self.save(soon=True)

    def add_point(self, step: int, loss: float) -> None:
        self.points.append([step, float(loss)])
        if len(self.points) > MAX_POINTS:  # thin the curve, keeping its ends
            self.points[:] = self.points[:-1:2] + self.points[-1:]

    def add_preview(self, path: str | Path) -> None:
        if str(path) not in self.previews:
            self.previews.append(str(path))
            self.save()

    # ------------------------------------------------------------------ the JSON file

    def save(self, soon: bool = False) -> None:
        """Write the job's file atomically; with `soon`, only if the last write is old enough."""
        if self._folder is None or (soon and time.monotonic() - self._saved < SAVE_EVERY):
            return
        self._saved = time.monotonic()
        data = {**self.as_dict(), "pid": os.getpid()}  # the server process that runs it
        target = self._folder / f"{self.id}.json"
        tmp = self._folder / f".{self.id}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
            os.replace(tmp, target)
        except OSError:  # a full or read-only disk must not kill the job; its state stays in memory
            with contextlib.suppress(OSError):
                tmp.unlink()

    @classmethod
    def load(cls, path: Path) -> Job | None:
        """A job from its file, or None for a file that is not one (damaged, foreign)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            job = cls(**{k: v for k, v in data.items() if k in known})
            job._pid = int(data.get("pid") or 0)
        except (OSError, ValueError, TypeError):
            return None
        if not (isinstance(job.id, str) and job.id == path.stem and isinstance(job.state, str)):
            return None
        return job


class Jobs:
    """The jobs of one workspace: this server's, and those earlier servers left in `folder`."""

    def __init__(self, folder: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        assert self._folder is not None
        found = [j for p in self._folder.glob("*.json") if p.stem.isdigit() and (j := Job.load(p)) is not None]
        found.sort(key=lambda j: int(j.id))
        for old in found[:-KEEP]:
            with contextlib.suppress(OSError):
                (self._folder / f"{old.id}.json").unlink()
        for job in found[-KEEP:]:
            job._folder = self._folder
            if job.state in ("queued", "running") and not _alive_elsewhere(job._pid):  # its server died under it
                job.state, job.ok, job.error, job.message = "failed", False, STOPPED, "stopped"
                job.finished = job.finished or time.time()
                job.save()
            self._jobs[job.id] = job

    def _next_id(self) -> str:
        """A new id, after every id here and on disk (the file is claimed, so two servers on
        one workspace never share one)."""
        n = max((int(i) for i in self._jobs), default=0) + 1
        if self._folder is None:
            return str(n)
        while True:
            try:
                fd = os.open(self._folder / f"{n}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                n += 1
                continue
            except OSError:
                return str(n)
            os.close(fd)
            return str(n)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        """Every job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: int(j.id) if j.id.isdigit() else 0, reverse=True)

    def start(self, kind: str, target: str, work: Callable[[Job], dict[str, Any]]) -> Job:
        """Run `work(job)` in a thread (unless a job of this kind and target is still running:
        then that one is returned). `work` returns the result dict; its `ok`/`error` decide the
        final state; an exception fails the job with its message."""
        with self._lock:
            for j in self._jobs.values():
                if j.kind == kind and j.target == target and j.state in ("queued", "running"):
                    return j
            job = Job(id=self._next_id(), kind=kind, target=target)
            job._folder = self._folder
            self._jobs[job.id] = job
            job.save()

        def run() -> None:
            job.state = "running"
            job.message = "starting"
            job.save()
            try:
                result = work(job)
            except TihubError as exc:  # the job's one sentence
                job.error = _sentence(str(exc)) or f"{kind} of {target} failed ({type(exc).__name__})."
                job.state, job.ok = "failed", False
            except Exception as exc:  # a bug or a library's own error: its first line, the traceback in the log
                log.exception("job %s (%s of %s) failed", job.id, kind, target)
                first = (str(exc).strip().splitlines() or [""])[0][:200].rstrip(" .")
                job.error = f"The {kind} of {target} failed ({type(exc).__name__}{': ' + first if first else ''}); see the server's log."
                job.state, job.ok = "failed", False
            else:
                job.result = result
                if result.get("ok", True):
                    job.state = "done"
                    job.message = "done"
                else:
                    job.state, job.ok = "failed", False
                    job.error = _sentence(result.get("error") or f"{kind} of {target} failed.")
            job.finished = time.time()
            job.save()

        threading.Thread(target=run, name=f"tihub-job-{job.id}", daemon=True).start()
        return job



def _alive_elsewhere(pid: int) -> bool:
    """Whether `pid` is another live process (another `tihub serve` on this workspace runs the job)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def _sentence(text: str) -> str:
    """One line: a message's whitespace (new lines included) as single spaces."""
    return " ".join(text.split())
