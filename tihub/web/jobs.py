"""Background jobs of the web app: one thread per job, progress kept in memory.

A job keeps running when the page that started it is closed; `GET /api/jobs/{id}` (and the
page's poll) reads its progress. Two requests to fetch the same entry while the first is still
running get the same job, and `Hub.fetch` serialises fetches of one entry anyway, so two tabs
end with one correct file.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    id: str
    kind: str  # fetch | sync | train
    target: str
    state: str = "queued"  # queued | running | done | failed
    done: int = 0
    total: int | None = None
    message: str = "waiting"
    result: dict[str, Any] | None = None
    error: str | None = None
    points: list[list[float]] = field(default_factory=list)  # a training job's loss curve: [step, loss]
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.state != "failed",
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "points": list(self.points),
        }


class Jobs:
    """The jobs of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def start(self, kind: str, target: str, work: Callable[[Job], dict[str, Any]]) -> Job:
        """Run `work(job)` in a thread (unless a job of this kind and target is still running:
        then that one is returned). `work` returns the result dict; its `ok`/`error` decide the
        final state; an exception fails the job with its message."""
        with self._lock:
            for j in self._jobs.values():
                if j.kind == kind and j.target == target and j.state in ("queued", "running"):
                    return j
            job = Job(id=str(next(self._ids)), kind=kind, target=target)
            self._jobs[job.id] = job

        def run() -> None:
            job.state = "running"
            job.message = "starting"
            try:
                result = work(job)
            except Exception as exc:  # the job's one sentence, never a traceback
                job.error = str(exc) or f"{kind} of {target} failed ({type(exc).__name__})."
                job.state = "failed"
            else:
                job.result = result
                if result.get("ok", True):
                    job.state = "done"
                    job.message = "done"
                else:
                    job.state = "failed"
                    job.error = result.get("error")
            job.finished = time.time()

        threading.Thread(target=run, name=f"tihub-job-{job.id}", daemon=True).start()
        return job
