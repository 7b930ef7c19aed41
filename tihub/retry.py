"""The one retry policy of every network call (downloads and source indexers), on tenacity.

What is retried: connection resets, refused connections, 408/425/429/5xx answers, bodies cut
short. What is not: a name that does not resolve (DNS: the machine is probably offline), a TLS
certificate failure, any other 4xx. A stalled read (the read timeout) is retried once only, so a
host that accepts and never answers costs two timeouts, not five. The wait doubles from
`backoff` with jitter, or is what the server's Retry-After says.

Each retry is announced as it happens ("retrying 2/5 in 4 s: ...") to the reporter the command
line installs (`reporting`), and logged otherwise.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx
import tenacity

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a caller says about a failure: "dns", "tls", "timeout", "transient" or None (final).
Kind = str | None

_reporter: Callable[[str], None] | None = None
_reporter_lock = threading.Lock()


@contextmanager
def reporting(note: Callable[[str], None]) -> Iterator[None]:
    """Announce every retry in this block through `note` (one line each, from any thread)."""
    global _reporter
    with _reporter_lock:
        previous, _reporter = _reporter, note
    try:
        yield
    finally:
        with _reporter_lock:
            _reporter = previous


def announce(message: str) -> None:
    note = _reporter
    if note is not None:
        note(message)
    else:
        log.info("%s", message)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def network_kind(exc: BaseException) -> Kind:
    """What kind of network failure `exc` (or what it wraps) is: dns, tls, timeout, transient or None."""
    for e in _chain(exc):
        if isinstance(e, socket.gaierror):
            return "dns"
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return "tls"
        text = str(e).lower()
        if any(s in text for s in ("name or service not known", "nodename nor servname", "temporary failure in name resolution",
                                   "no address associated", "getaddrinfo failed", "name resolution")):
            return "dns"
        if "certificate verify failed" in text or "ssl:" in text or "tlsv1" in text or "wrong version number" in text:
            return "tls"
        if isinstance(e, httpx.TimeoutException | TimeoutError | socket.timeout):
            return "timeout"
    for e in _chain(exc):
        if isinstance(e, httpx.TransportError | ConnectionError | OSError):
            return "transient"
    return None


class RetryNow(Exception):
    """Raised inside an attempt to ask for another one (e.g. a 503 answer), after `wait` seconds."""

    def __init__(self, message: str, wait: float | None = None, kind: Kind = "transient") -> None:
        super().__init__(message)
        self.message = message
        self.wait = wait
        self.kind = kind


def call(
    attempt: Callable[[], T],
    *,
    classify: Callable[[BaseException], Kind],
    label: str,
    attempts: int = 5,
    backoff: float = 0.5,
    max_wait: float = 8.0,
    timeout_attempts: int = 2,
    time_left: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    jitter: bool = True,
) -> T:
    """Run `attempt()` until it returns, retrying the failures `classify` calls retryable.

    `classify(exc)` gives a Kind; "transient" is retried up to `attempts` tries in all,
    "timeout" up to `timeout_attempts`, anything else is raised at once. A `RetryNow` carries its
    own wait (Retry-After). The last failure is re-raised as it was. `time_left()` (seconds) stops
    retrying when the next wait would not fit; `jitter` spreads waits over 0.5-1.5x."""

    def kind_of(exc: BaseException) -> Kind:
        return exc.kind if isinstance(exc, RetryNow) else classify(exc)

    def retryable(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return False
        kind = kind_of(exc)
        if kind == "timeout":
            return state.attempt_number < timeout_attempts
        return kind == "transient" and state.attempt_number < attempts

    def wait_for(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryNow) and exc.wait is not None:
            return exc.wait
        wait = min(max_wait, backoff * 2 ** (state.attempt_number - 1))
        return wait * (0.5 + random.random()) if jitter else wait

    def stop(state: tenacity.RetryCallState) -> bool:
        if time_left is None:
            return False
        return wait_for(state) > time_left()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        total = timeout_attempts if exc is not None and kind_of(exc) == "timeout" else attempts
        wait = state.next_action.sleep if state.next_action else 0.0
        reason = exc.message if isinstance(exc, RetryNow) else str(exc)
        when = f"{wait:.1f}" if wait < 10 else f"{wait:.0f}"
        announce(f"{label}: retrying {state.attempt_number + 1}/{total} in {when} s ({reason.rstrip('.')})")

    retrying = tenacity.Retrying(retry=retryable, wait=wait_for, stop=stop, before_sleep=before_sleep, sleep=sleep, reraise=True)
    try:
        return retrying(attempt)
    except Exception as exc:
        exc.tihub_tries = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
        raise


def tries(exc: BaseException) -> int:
    """How many tries the failure `call` re-raised took (1 when it was not retried)."""
    return int(getattr(exc, "tihub_tries", 1))
