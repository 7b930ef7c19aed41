"""The one progress display of all long work (sync, fetch, generate, grid, verify, train), and the
one progress callback type the library reports through.

Library code (tihub.hub.Hub) takes `progress(done, total, message)` (`ProgressCallback`); the
message may be an `Event` saying what happened. `Bar` is such a callback that shows the work on
a terminal: a rich bar (rich: a maintained library) with the work's speed and the time left;
elsewhere (a pipe, a log file, CI) one plain line each time another tenth of the work is done,
so logs stay short. Notes (a retry, a wait, a warning) print as their own line either way.
Everything goes to stderr; stdout stays for results and JSON. The relays at the end tell one
callback what the download, sampling and training loops report through their own hooks.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

# The one progress callback type of all long work (tihub.hub.Hub): progress(done, total, message),
# the amount done (bytes, items or steps), the total when known, and what is happening. The
# message may be an `Event`, which also says what happened in a form a program can read.
ProgressCallback = Callable[[int, "int | None", str], None]


class Event(str):
    """A progress message that also carries what happened: `kind` and `data`.

    Kinds: "pass" (a new sampling pass or sync source starts: the display starts over),
    "loading" (a model is being loaded: data has `model`),
    "step" (a training step: data is the engine's step dict with `loss`, `lr`, ...),
    "preview" (a new picture: data has `path` and `step`), "note" (a line to show: a retry,
    a warning). A plain `str` message is a short status ("downloading", "checking").
    """

    kind: str
    data: dict[str, Any]

    def __new__(cls, text: str, kind: str = "status", **data: Any) -> Event:
        self = super().__new__(cls, text)
        self.kind = kind
        self.data = data
        return self


def event_kind(message: str) -> str:
    """The kind of a progress message: an Event's `kind`, else "status"."""
    return getattr(message, "kind", "status")


def _stream_is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class Progress:
    """Progress of one piece of work: `update()` it, `note()` events, `close()` at the end.

    `unit` "bytes" shows sizes and a transfer speed; any other unit shows "done/total" and
    units per second. `total` may be unknown (None) and set later with `update(total=...)`.
    """

    def __init__(self, label: str, total: float | None = None, unit: str = "it", *, stream: TextIO | None = None,
                 tty: bool | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.tty = _stream_is_tty(self.stream) if tty is None else tty
        self.enabled = enabled
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0.0
        self.status = ""
        self._lock = threading.Lock()
        self._tenth = 0  # tenths of the work already reported in plain mode
        self._rich: Any = None
        self._task: Any = None
        if self.enabled and self.tty:
            self._start_rich()

    # -- the terminal bar -------------------------------------------------------------------

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress as RichProgress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self.unit == "bytes":
            amount: list[Any] = [DownloadColumn(), TransferSpeedColumn()]
        else:
            amount = [MofNCompleteColumn(), TextColumn("{task.fields[rate]}")]
        self._rich = RichProgress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), *amount, TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=self.stream, highlight=False, markup=False, emoji=False), transient=True,
        )
        self._rich.start()
        self._task = self._rich.add_task(self._safe(self.label), total=self.total, status="", rate="")

    @staticmethod
    def _safe(text: str) -> str:
        from tihub.tables import safe_text

        return safe_text(text)

    # -- the public face --------------------------------------------------------------------

    def update(self, completed: float | None = None, *, advance: float = 0, total: float | None = None,
               status: str | None = None, label: str | None = None) -> None:
        """Set or advance the amount done (and optionally the total, a short status, the label)."""
        with self._lock:
            if total is not None:
                self.total = total
            if completed is not None:
                self.done = completed
            self.done += advance
            if status is not None:
                self.status = status
            if label is not None:
                self.label = label
            if not self.enabled:
                return
            if self._rich is not None:
                task = self._rich.tasks[0] if self._rich.tasks else None
                speed = task.speed if task is not None else None
                rate = f"{speed:.2f} {self.unit}/s" if speed else ""
                self._rich.update(self._task, completed=self.done, total=self.total, status=self._safe(self.status),
                                  description=self._safe(self.label), rate=rate)
                return
            self._plain_line()

    def _plain_line(self) -> None:
        if not self.total:
            return
        tenth = min(10, int(10 * self.done / self.total))
        if tenth <= self._tenth:
            return
        self._tenth = tenth
        amount = (f"{_human_bytes(self.done)}/{_human_bytes(self.total)}" if self.unit == "bytes"
                  else f"{self.done:g}/{self.total:g} {self.unit}")
        line = f"{self.label}: {10 * tenth}% ({amount})" + (f" {self.status}" if self.status else "")
        print(self._safe(line), file=self.stream, flush=True)

    def restart(self, total: float | None, label: str | None = None) -> None:
        """Start the same display over for the next piece (a new sampling pass, a new source)."""
        with self._lock:
            self.done = 0.0
            self._tenth = 0
            if self._rich is not None:
                self._rich.reset(self._task, total=total, completed=0)
        self.update(0, total=total, label=label)

    def note(self, message: str) -> None:
        """One line about an event (retrying, waiting, a warning), above the bar on a terminal."""
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(self._safe(message), markup=False, highlight=False)
        else:
            print(self._safe(message), file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bar:
    """A `ProgressCallback` that shows the work on the one progress display (stderr).

    `Bar("fetch", "bytes")` is passed as the `progress` of a Hub method: a "pass" event starts the
    display over with its text as the label, "note" and "preview" events print their line, and
    everything else moves the bar (a plain message becomes its status). `close()` at the end.
    """

    def __init__(self, label: str, unit: str = "it", *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.stream = stream
        self.display: Progress | None = None

    def _display(self, total: float | None) -> Progress:
        if self.display is None:
            self.display = Progress(self.label, total, self.unit, stream=self.stream, enabled=self.enabled)
        return self.display

    def __call__(self, done: int, total: int | None, message: str = "") -> None:
        kind = event_kind(message)
        display = self._display(total)
        if kind in ("note", "preview"):
            display.note(str(message))
        elif kind == "loading":  # what the seconds before the first step are spent on, on a terminal
            if display.tty:
                display.note(str(message))
        elif kind == "pass":
            display.restart(total, str(message) or None)
        else:  # a step; an Event may also carry the bar's new `label` (e.g. "fetch 2/5")
            display.update(done, total=total, status=str(message), label=getattr(message, "data", {}).get("label"))

    def note(self, message: str) -> None:
        """One line above the bar (a retry, a wait)."""
        self._display(None).note(message)

    def close(self) -> None:
        if self.display is not None:
            self.display.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- relays: the library's own hooks told to one ProgressCallback -------------------------


def fetch_relay(callback: ProgressCallback | None) -> Any:
    """A `tihub.download.Progress` that tells one `ProgressCallback` the bytes of all files of a
    fetch together: "downloading" (labelled "fetch DONE/COUNT"), "checking" as each file ends,
    and its notes (retries, waits) as Events "note"."""
    from tihub.download import Progress

    class _Relay(Progress):
        def _show(self) -> None:
            self._tell("downloading")

        def _tell(self, message: str) -> None:
            if callback:
                with self.lock:
                    done, total, label = self._done, self._total or None, f"fetch {self.finished}/{self.count or '?'}"
                callback(done, total, Event(message, "status", label=label))

        def finish(self, key: str) -> None:
            with self.lock:
                self.files.pop(key, None)
                self.finished += 1
            self._tell("checking")

        def note(self, message: str) -> None:
            if callback:
                callback(0, None, Event(message, "note"))

    return _Relay(enabled=True)


class TrainWatcher:
    """Relays a training run (tihub.engine.train's `log` and `progress` hooks) to one progress
    callback: each step, the notes, and each preview picture as soon as it is on disk (the engine
    draws it right after its step is reported, so it is looked for at the next step, and the
    last ones when the run ends)."""

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


class sampling_relay:  # noqa: N801 - a context manager, like contextlib's helpers
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

    def __enter__(self) -> sampling_relay:
        if self.progress is not None and hasattr(self.engine, "on_step"):
            self.engine.on_step = self._step
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None and hasattr(self.engine, "on_step"):
            self.engine.on_step = None
