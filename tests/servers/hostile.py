"""A hostile HTTP server for the network hardening tests (issue 11), speaking raw HTTP/1.1 over a
loopback socket so it can do what a polite server library would not:

    srv = HostileServer().start()
    srv.url("/gzip2")        200 with `Content-Encoding: gzip, gzip` over a body that inflates to 4 GiB
    srv.url("/br")           200 with `Content-Encoding: br` (never asked for)
    srv.url("/drip")         a status line, then one header byte every `drip_s` seconds, forever
    srv.url("/location/<k>") 302 with a malformed Location (`BAD_LOCATIONS[k]`)
    srv.url("/redirect?to=URL") 302 to URL
    srv.url("/file")         200 with `srv.body` (plain bytes)
    srv.requests             [(path, {header: value})] of every request that reached it
    srv.stop()

`rebinding_resolver(name, first, then)` patches `socket.getaddrinfo` so `name` answers `first`
on the first lookup and `then` on every later one: the DNS rebinding attack. Tests play it on
loopback only: 127.0.0.1 counts as "public" and 127.0.0.2 (a second server on the same port,
`HostileServer(bind="127.0.0.2", port=...)`) as the internal target that must see nothing.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

BAD_LOCATIONS = {
    "bracket": "http://[::1",
    "port": "http://example.com:99999/x",
    "control": "http://example.com/a\x01b",
    "space": "http://exa mple.com/",
    "scheme": "javascript:alert(1)",
    "empty-host": "http:///x",
}


def gzip_bomb(size: int = 4 << 30) -> bytes:
    """`size` zero bytes gzipped twice: a few kilobytes on the wire."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 24)
    parts = [c.compress(block) for _ in range(size >> 24)]
    parts.append(c.flush())
    return gzip.compress(b"".join(parts), 9)


class HostileServer:
    def __init__(self, drip_s: float = 0.5, body: bytes = b"hello", bind: str = "127.0.0.1", port: int = 0) -> None:
        self.drip_s = drip_s
        self.body = body
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((bind, port))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._bomb: bytes | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> "HostileServer":
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def __enter__(self) -> "HostileServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                headers = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                self.requests.append((path, headers))
                self._answer(conn, path)
        except OSError:
            pass

    def _send(self, conn: socket.socket, status: str, headers: dict[str, str], body: bytes = b"") -> None:
        lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _answer(self, conn: socket.socket, path: str) -> None:
        parts = urlsplit(path)
        if parts.path == "/gzip2":
            if self._bomb is None:
                self._bomb = gzip_bomb()
            self._send(conn, "200 OK", {"Content-Encoding": "gzip, gzip", "Content-Type": "application/json"}, self._bomb)
        elif parts.path == "/br":
            self._send(conn, "200 OK", {"Content-Encoding": "br"}, b"\x0b\x02\x80hello\x03")
        elif parts.path == "/drip":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self._stop.is_set():
                conn.sendall(b"X")
                time.sleep(self.drip_s)
        elif parts.path.startswith("/location/"):
            bad = BAD_LOCATIONS[parts.path.rsplit("/", 1)[1]]
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + bad.encode("latin-1") + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif parts.path == "/redirect":
            self._send(conn, "302 Found", {"Location": parse_qs(parts.query)["to"][0]})
        else:
            self._send(conn, "200 OK", {"Content-Type": "application/octet-stream"}, self.body)


@contextmanager
def rebinding_resolver(name: str, first: str, then: str) -> Iterator[list[str]]:
    """Patch `socket.getaddrinfo`: `name` answers `first` once, then `then`. Yields the answers
    given, in order (so a test can see how many lookups were made)."""
    real = socket.getaddrinfo
    given: list[str] = []

    def fake(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, bytes):
            host = host.decode()
        if host == name:
            addr = first if not given else then
            given.append(addr)
            return real(addr, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    socket.getaddrinfo = fake  # type: ignore[assignment]
    try:
        yield given
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]
