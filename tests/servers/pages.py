"""A loopback web server for link pages: static pages with ETag/304, redirects, failures,
oversized and slow answers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from . import LoopbackServer, Reply, Request, Served


@dataclass
class Page:
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    etag: bool = True
    status: int = 200
    location: str | None = None
    delay: float = 0.0
    chunks: int = 0  # >0: stream the body in this many chunks without a Content-Length


@dataclass
class PageServer(Served):
    pages: dict[str, Page] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server = LoopbackServer(self.app)

    def set(self, path: str, body: str | bytes, content_type: str = "text/html; charset=utf-8", **kw: object) -> str:
        self.pages[path] = Page(body.encode() if isinstance(body, str) else body, content_type, **kw)  # type: ignore[arg-type]
        return self.url + path

    def app(self, req: Request) -> Reply:
        page = self.pages.get(req.path)
        if page is None:
            return Reply.text("<html><body>404 Not Found</body></html>", 404, "text/html")
        if page.location:
            return Reply(page.status if 300 <= page.status < 400 else 302, b"", {"Location": page.location})
        headers = {"Content-Type": page.content_type}
        if page.etag:
            tag = '"' + hashlib.sha1(page.body).hexdigest()[:16] + '"'
            headers["ETag"] = tag
            if req.headers.get("if-none-match") == tag:
                return Reply(304, b"", {"ETag": tag})
        if page.chunks:
            n = max(1, len(page.body) // page.chunks)
            body = iter([page.body[i : i + n] for i in range(0, len(page.body), n)])
            return Reply(page.status, body, headers, delay=page.delay)
        return Reply(page.status, page.body, headers, delay=page.delay)
