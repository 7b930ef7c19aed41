"""Loopback HTTP servers for source tests: a tiny routing framework with request counting.

A server is built from an `app(request) -> Reply` function and runs a ThreadingHTTPServer on
127.0.0.1 with a free port, in a daemon thread. Every request is recorded (method, path,
query, headers), so tests can assert exactly which requests a re-sync made.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tihub.sources.base import IndexContext


@dataclass
class Request:
    method: str
    path: str  # without the query string, still percent-encoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case keys
    body: bytes = b""
    raw_path: str = ""

    def arg(self, key: str, default: str | None = None) -> str | None:
        values = self.query.get(key)
        return values[0] if values else default


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (slow servers)

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> "Reply":
        hdrs = {"Content-Type": "application/json; charset=utf-8"}
        hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
        return cls(status, json.dumps(data).encode(), hdrs)

    @classmethod
    def text(cls, text: str | bytes, status: int = 200, content_type: str = "text/plain; charset=utf-8", **headers: str) -> "Reply":
        hdrs = {"Content-Type": content_type}
        hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
        return cls(status, text.encode() if isinstance(text, str) else text, hdrs)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> "Reply":
        return cls(status, b"", {"Location": location})


App = Callable[[Request], Reply]


class LoopbackServer:
    """Run `app` on http://127.0.0.1:<free port>; use as a context manager."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stalls per request
            wbufsize = 1 << 16  # headers and body leave in one write; flushed after each request

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    raw_path=self.path,
                )
                with outer._lock:
                    outer.requests.append(req)
                try:
                    reply = outer.app(req)
                except Exception as exc:  # a bug in a test server shows up as a 500
                    reply = Reply(500, f"test server error: {exc!r}".encode())
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    chunks = [reply.body] if isinstance(reply.body, bytes) else reply.body
                    if isinstance(reply.body, bytes):
                        self.send_header("Content-Length", str(len(reply.body)))
                        streamed = False
                    else:
                        self.send_header("Transfer-Encoding", "chunked")
                        streamed = True
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    for chunk in chunks:
                        if streamed:
                            if not chunk:
                                continue
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        else:
                            self.wfile.write(chunk)
                    if streamed:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def count(self, prefix: str = "") -> int:
        return sum(1 for p in self.paths() if p.startswith(prefix))


class Served:
    """Base of the fake services: `self.server` (a LoopbackServer running `self.app`) starts and
    stops with the `with` block, and `url` is its address."""

    server: LoopbackServer

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url


class Ctx(IndexContext):
    """An IndexContext without a catalogue behind it; `next()` carries the state to the next sync."""

    def __init__(self, state: dict[str, Any] | None = None, deadline: float | None = None) -> None:
        super().__init__(spec=None, state=dict(state or {}), deadline=deadline)

    def next(self) -> "Ctx":
        """A context for the following sync, carrying the state this one set."""
        return Ctx(self.new_state, self.deadline)


def run_index(index: Callable[..., Iterable[Any]], spec: Any, ctx: Ctx) -> list[Any] | None:
    """Run an indexer to the end; None when it raised SourceUnchanged."""
    from tihub.sources.base import SourceUnchanged

    try:
        return list(index(spec, ctx))
    except SourceUnchanged:
        return None
