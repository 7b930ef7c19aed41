"""A loopback file server for download tests and benchmarks, with knobs to make it lie.

    srv = FileServer().start()
    srv.add("/a.safetensors", data)                       # Range, If-Range, ETag, Last-Modified
    srv.add("/bad", data, truncate_at=100)                 # closes after 100 bytes
    srv.url("/a.safetensors")
    srv.requests                                            # [(method, path, headers), ...]
    srv.stop()

Knobs (per path, keyword arguments of `add`):
  content_length   a Content-Length that lies (the real body is still `data`)
  truncate_at      send only this many body bytes, then close the connection
  ignore_range     answer 200 with the whole body even when a Range was asked
  redirect         answer 302 with this Location (absolute or relative)
  status           answer this status with `data` as the body (e.g. 404, 401)
  fail_times       answer `status` (default 429) this many times, then serve normally (-1: always)
  retry_after      a Retry-After header for those answers
  drip             (bytes, seconds): send `bytes` then sleep `seconds`, repeatedly
  latency          seconds to wait before answering
  content_type     the Content-Type header (default application/octet-stream)
  etag             the ETag (default: a hash of the data); None for no validator
  headers          extra response headers (e.g. Content-Encoding)
The server also takes `latency` as a default for every path.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Served:
    data: bytes
    content_length: int | None = None
    truncate_at: int | None = None
    ignore_range: bool = False
    redirect: str | None = None
    status: int | None = None
    fail_times: int = 0
    retry_after: str | None = None
    drip: tuple[int, float] | None = None
    latency: float | None = None
    content_type: str = "application/octet-stream"
    etag: str | None = ""
    headers: dict[str, str] | None = None
    hits: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.requests.append((self.command, self.path, dict(self.headers.items())))
            spec = owner.files.get(path)
            if spec is not None:
                spec.hits += 1
                hit = spec.hits
        latency = (spec.latency if spec is not None and spec.latency is not None else owner.latency)
        if latency:
            time.sleep(latency)
        if spec is None:
            self._simple(404, b"not found", "text/plain")
            return
        if spec.redirect is not None:
            self.send_response(302)
            self.send_header("Location", spec.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if spec.fail_times and (spec.fail_times < 0 or hit <= spec.fail_times):
            extra = {"Retry-After": spec.retry_after} if spec.retry_after is not None else {}
            self._simple(spec.status or 429, b"slow down", "text/plain", extra)
            return
        if spec.status is not None and not spec.fail_times:
            self._simple(spec.status, spec.data, spec.content_type)
            return
        data = spec.data
        etag = spec.etag if spec.etag != "" else '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        status = 200
        rng = self.headers.get("Range")
        if rng and not spec.ignore_range and rng.startswith("bytes="):
            if_range = self.headers.get("If-Range")
            if if_range is None or (etag is not None and if_range == etag):
                try:
                    start = int(rng[6:].split("-", 1)[0])
                except ValueError:
                    start = 0
                if start >= len(data):
                    self._simple(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                    return
                status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", spec.content_type)
        self.send_header("Content-Length", str(spec.content_length if spec.content_length is not None else len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if etag is not None:
            self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(owner.mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in (spec.headers or {}).items():
            self.send_header(k, v)
        if spec.truncate_at is not None or spec.content_length is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        if spec.truncate_at is not None:
            body = body[: max(0, spec.truncate_at - start)]
        try:
            if spec.drip is not None:
                n, delay = spec.drip
                for i in range(0, len(body), n):
                    self.wfile.write(body[i : i + n])
                    self.wfile.flush()
                    time.sleep(delay)
            else:
                view = memoryview(body)
                for i in range(0, len(body), 1 << 20):
                    self.wfile.write(view[i : i + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _simple(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: "FileServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-body are part of the tests


class FileServer:
    def __init__(self, latency: float = 0.0, host: str = "127.0.0.1") -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.latency = latency
        self.mtime = time.time() - 3600
        self.host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def add(self, path: str, data: bytes = b"", **knobs: Any) -> str:
        with self.lock:
            self.files[path] = Served(data=data, **knobs)
        return self.url(path)

    def start(self) -> "FileServer":
        self._server = _Server((self.host, 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_for(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for m, p, h in self.requests if p.split("?", 1)[0] == path]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - used by subprocess tests and benchmarks
    """`python tests/fileserver.py FILE URLPATH [drip_bytes drip_seconds]`: serve one file, print the port."""
    import sys

    data = open(sys.argv[1], "rb").read()
    srv = FileServer().start()
    knobs: dict[str, Any] = {}
    if len(sys.argv) > 4:
        knobs["drip"] = (int(sys.argv[3]), float(sys.argv[4]))
    srv.add(sys.argv[2], data, **knobs)
    print(srv.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()


def embedding_bytes(
    fmt: str = "safetensors",
    *,
    name: str = "thing",
    widths: dict[str, int] | None = None,
    vectors: int = 2,
    sd_checkpoint: str | None = None,
    seed: int = 0,
) -> bytes:
    """The bytes of a real embedding file written by tihub's writers (fmt: safetensors | a1111 |
    diffusers-bin | diffusers-safetensors | png)."""
    import os
    import tempfile

    import numpy as np

    from tihub.formats import Embedding, write_embedding

    rng = np.random.default_rng(seed)
    widths = widths or {"clip_l": 768}
    emb = Embedding(
        name=name,
        vectors={k: rng.standard_normal((vectors, w)).astype(np.float32) for k, w in widths.items()},
        internal_name=name if not fmt.startswith("diffusers") else f"<{name}>",
        step=100 if sd_checkpoint else None,
        sd_checkpoint=sd_checkpoint,
        sd_checkpoint_name="model" if sd_checkpoint else None,
    )
    fd, path = tempfile.mkstemp(suffix=".emb")
    os.close(fd)
    try:
        write_embedding(emb, path, fmt)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)
