"""Polite HTTP for indexers: retries (the one policy, `tihub.retry`), 429/Retry-After, size caps,
checked URLs. A host name that does not resolve raises `OfflineError` at once (no retries).

Every request goes through `tihub.net.stream`, so each URL and each redirect hop is checked
against the source's `URLPolicy` (private addresses only with `allow_private: true`). Replies
are read into memory up to a cap (pages 16 MB, JSON 32 MB by default): a bigger answer is
refused with one sentence rather than filling memory.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tihub import retry
from tihub.errors import NetworkError, SourceError, UnsafeURL
from tihub.net import URLPolicy, _is_private, make_client, stream
from tihub.sources.base import SourceUnchanged

__all__ = ["Fetcher", "Reply", "SourceUnchanged", "StatusError", "WaitTooLong", "clean_link", "fetcher_for"]

log = logging.getLogger("tihub.sources")

PAGE_CAP = 16 * 1024 * 1024
JSON_CAP = 32 * 1024 * 1024
SMALL_CAP = 1024 * 1024  # token_identifier.txt and friends
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRIES = 4
BACKOFF = 0.5  # first wait in seconds; doubles each retry (tests lower it)
MAX_WAIT = 120.0  # longest single wait we accept from Retry-After / rate-limit headers


class WaitTooLong(SourceError):
    """The server asks to wait longer than this fetcher may (its `max_wait`, or past its
    deadline); `wait` is the seconds asked. Indexers that can resume stop cleanly on it."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class StatusError(SourceError):
    """An answer with an unexpected HTTP status (kept for callers that treat 401/403/404 apart)."""

    def __init__(self, message: str, reply: "Reply") -> None:
        super().__init__(message)
        self.reply = reply
        self.status = reply.status


@dataclass
class Reply:
    """A finished HTTP exchange, body read (up to the cap)."""

    url: str  # final URL after redirects
    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        charset = "utf-8"
        m = re.search(r"charset=([\w.-]+)", self.headers.get("content-type", ""), re.I)
        if m:
            charset = m.group(1)
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """Parse the body as JSON; HTML or garbage is one clear SourceError."""
        head = self.body[:256].lstrip()
        if head[:1] == b"<":
            raise SourceError(f"{self.url} answered with HTML instead of JSON (status {self.status}); the API may be down or blocked.")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.url} answered with malformed JSON ({exc}); try again later.") from None

    def next_link(self) -> str | None:
        """The `rel="next"` target of a GitHub/HF-style `Link` header."""
        for part in self.headers.get_list("link"):
            for m in re.finditer(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)', part):
                if re.search(r'rel\s*=\s*"?next"?', m.group(2)):
                    return m.group(1)
        return None


class OfflineError(SourceError):
    """A host name did not resolve: the machine is probably offline (a sync stops asking)."""


class _Busy(retry.RetryNow):
    """A retryable answer (408/429/5xx): retried after `wait` seconds."""

    def __init__(self, reply: Reply, message: str, wait: float) -> None:
        super().__init__(message, wait)
        self.reply = reply


def retry_delay(headers: Mapping[str, str], attempt: int) -> float:
    """Seconds to wait before retry `attempt` (0-based): Retry-After, then rate-limit headers, then backoff."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    # IETF draft `RateLimit: "api";r=0;t=55` (HF) or `RateLimit-Reset: 55`, `X-RateLimit-Reset`.
    rl = headers.get("ratelimit")
    if rl:
        m = re.search(r"\bt=(\d+)", rl)
        if m:
            return float(m.group(1))
    for key in ("ratelimit-reset", "x-ratelimit-reset"):
        value = headers.get(key)
        if value and value.strip().isdigit():
            n = float(value.strip())
            return max(0.0, n - time.time()) if n > 1e9 else n
    return BACKOFF * (2**attempt)


class Fetcher:
    """GET with checks, caps and bounded retries, for one source.

    `auth_headers` go only to `auth_origin`-matching first hops (tokens never follow a
    redirect to another host). `deadline` is a `time.monotonic()` value or None.
    """

    def __init__(
        self,
        client: httpx.Client | None,
        policy: URLPolicy,
        *,
        source: str,
        deadline: float | None = None,
        auth_headers: dict[str, str] | None = None,
        max_retries: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client or make_client()
        self._own_client = client is None
        self.policy = policy
        self.source = source
        self.deadline = deadline
        self.auth_headers = auth_headers or {}
        self.max_retries = MAX_RETRIES if max_retries is None else max_retries
        self.sleep = sleep
        self.requests = 0  # how many requests this fetcher sent (retries included)
        self.max_wait = MAX_WAIT  # longest single wait accepted (a source may allow its service's window)
        self.on_wait: Callable[[str, int, float], None] | None = None  # (url, status, seconds) before a wait

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_deadline(self, url: str, wait: float = 0.0) -> None:
        if self.deadline is not None and time.monotonic() + wait > self.deadline:
            raise SourceError(f"Source {self.source!r} ran past its deadline while fetching {url}; sync it again later.")

    def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        cap: int = JSON_CAP,
        auth: bool = True,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        final: Callable[[Reply], bool] | None = None,
    ) -> Reply:
        """GET `url`; retries 408/429/5xx and network errors; returns any other status as a Reply.

        `final(reply)` True marks a retryable status as final (e.g. Civitai's 429 for deep pages).
        """
        tried = 0

        def once() -> Reply:
            nonlocal tried
            self._check_deadline(url)
            tried += 1
            try:
                reply = self._once(url, headers=headers, cap=cap, auth=auth)
            except UnsafeURL:
                raise
            except NetworkError as exc:
                raise retry.RetryNow(exc.message, BACKOFF * (2 ** (tried - 1)), retry.network_kind(exc) or "transient") from exc
            if reply.status not in retry_statuses or (final is not None and final(reply)):
                return reply
            wait = retry_delay(reply.headers, tried - 1)
            if wait > self.max_wait:
                raise WaitTooLong(f"Source {self.source!r}: {url} asks to wait {wait:.0f} s before retrying; try again later.", wait)
            if self.deadline is not None and time.monotonic() + wait > self.deadline:
                raise WaitTooLong(f"Source {self.source!r} would run past its deadline waiting {wait:.0f} s for {url}; sync it again later.", wait)
            if self.on_wait is not None and tried <= self.max_retries:
                self.on_wait(url, reply.status, wait)
            raise _Busy(reply, f"{url} answered {reply.status}", wait)

        def time_left() -> float:
            return float("inf") if self.deadline is None else self.deadline - time.monotonic()

        try:
            return retry.call(once, classify=lambda exc: None, label=self.source, attempts=self.max_retries + 1,
                              time_left=time_left, sleep=self.sleep, jitter=False)
        except _Busy as exc:
            self._check_deadline(url, exc.wait or 0.0)
            what = "rate limited (429)" if exc.reply.status == 429 else f"status {exc.reply.status}"
            raise SourceError(f"Source {self.source!r}: {url} kept answering {what} after {tried} tries; try again later.") from None
        except retry.RetryNow as exc:
            if exc.kind == "dns":
                raise OfflineError(f"Source {self.source!r}: {exc.message.rstrip('.')}; you appear to be offline (the host name does not resolve), not retried; check the connection and sync again.") from None
            if exc.kind == "tls":
                raise SourceError(f"Source {self.source!r}: {exc.message.rstrip('.')}; the TLS connection failed (certificate or protocol), not retried; check the URL, the clock and any proxy.") from None
            self._check_deadline(url, exc.wait or 0.0)
            raise SourceError(f"Source {self.source!r}: {exc.message.rstrip('.')} (after {tried} {'try' if tried == 1 else 'tries'}); check the URL or try later.") from None

    def _once(self, url: str, *, headers: dict[str, str] | None, cap: int, auth: bool) -> Reply:
        self.requests += 1
        with stream(
            self.client,
            "GET",
            url,
            policy=self.policy,
            headers=headers,
            auth_host_headers=self.auth_headers if auth else None,
            deadline=self.deadline,
        ) as response:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap and response.status_code < 300:
                raise SourceError(f"Source {self.source!r}: {url} is {int(declared):,} bytes, over the {cap:,}-byte cap for this kind of answer.")
            chunks: list[bytes] = []
            total = 0
            try:
                for chunk in response.iter_raw():  # `stream` refused any Content-Encoding
                    total += len(chunk)
                    if total > cap:
                        raise SourceError(f"Source {self.source!r}: {url} sent more than {cap:,} bytes, over the cap for this kind of answer.")
                    chunks.append(chunk)
                    self._check_deadline(url)
            except httpx.TimeoutException:
                raise NetworkError(f"Reading {url} timed out.") from None
            except httpx.HTTPError as exc:
                raise NetworkError(f"Reading {url} failed: {exc}.") from None
            return Reply(url=str(response.url), status=response.status_code, headers=response.headers, body=b"".join(chunks))

    def get_json(self, url: str, **kwargs: Any) -> tuple[Reply, Any]:
        """GET and parse JSON; a non-2xx status is a SourceError."""
        reply = self.get(url, **kwargs)
        if not reply.ok:
            raise StatusError(f"Source {self.source!r}: {url} answered status {reply.status}; check the source's URL or try later.", reply)
        return reply, reply.json()


def fetcher_for(spec: Any, ctx: Any, **kwargs: Any) -> Fetcher:
    """A Fetcher for `spec` using the context's client (an httpx.Client, or IndexContext's
    `client()` factory, whose client the Fetcher then owns and closes) and deadline."""
    client = getattr(ctx, "client", None)
    own = False
    if client is not None and not isinstance(client, httpx.Client) and callable(client):
        client, own = client(), True
    fetcher = Fetcher(
        client,
        URLPolicy(allow_private=bool(getattr(spec, "allow_private", False))),
        source=spec.name,
        deadline=getattr(ctx, "deadline", None),
        **kwargs,
    )
    fetcher._own_client = fetcher._own_client or own
    return fetcher


def clean_link(url: str, allow_private: bool) -> str | None:
    """`url` if it may be catalogued as a download/page link, else None. No DNS lookups here:
    only http(s), no credentials, a host, and no private/loopback IP literal or localhost name
    (unless allowed). Downloads check every hop again after resolving."""
    import ipaddress
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        return None
    url = url.strip()
    if any(c in url for c in "\r\n\t\x00 ") or len(url) > 4096:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port  # raises on garbage ports
    except ValueError:
        return None
    del port
    if parts.scheme.lower() not in ("http", "https") or parts.username is not None or parts.password is not None or not host:
        return None
    if allow_private:
        return url
    h = host.lower().rstrip(".")
    if h in ("localhost", "localhost.localdomain") or h.endswith((".localhost", ".local", ".internal")):
        return None
    candidates = [h]
    if re.fullmatch(r"[0-9a-fx.]+", h):  # 2130706433, 0x7f.1, 127.1: what inet_aton would accept
        try:
            import socket

            candidates.append(socket.inet_ntoa(socket.inet_aton(h)))
        except OSError:
            pass
    for c in candidates:
        try:
            ip = ipaddress.ip_address(c.strip("[]"))
        except ValueError:
            continue
        if _is_private(ip):  # the same rule net.check_url applies after resolving
            return None
    return url
