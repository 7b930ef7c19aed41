"""URL safety and hop-by-hop redirects, over real HTTP on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tihub.errors import NetworkError, UnsafeURL
from tihub.net import URLPolicy, check_url, make_client, stream


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ftp://example.com/x.pt",
        "data:text/plain,hi",
        "http://127.0.0.1/x.pt",
        "http://localhost:8080/x.pt",
        "http://10.0.0.1/x.pt",
        "http://192.168.1.1/x.pt",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.pt",
        "http://[::ffff:127.0.0.1]/x.pt",
        "http://0.0.0.0/x.pt",
        "http://100.64.1.1/x.pt",
        "http://user:pw@example.com/x.pt",
        "http:///nohost",
    ],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(UnsafeURL) as exc:
        check_url(url)
    assert "\n" not in str(exc.value)
    assert str(exc.value).endswith(".")


def test_private_allowed_only_when_asked() -> None:
    assert check_url("http://127.0.0.1:9/x", URLPolicy(allow_private=True))
    assert check_url("http://93.184.216.34/x.pt") == "http://93.184.216.34/x.pt"


class _Handler(BaseHTTPRequestHandler):
    seen_auth: list[tuple[str, str | None]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        _Handler.seen_auth.append((self.path, self.headers.get("Authorization")))
        port = self.server.server_address[1]
        routes = {
            "/loop": (302, "/loop"),
            "/to-private": (302, "http://10.1.2.3/x"),
            "/to-file": (302, "file:///etc/passwd"),
            "/hop": (301, "/final"),
            "/offsite": (302, f"http://localhost:{port}/final"),
        }
        if self.path in routes:
            code, loc = routes[self.path]
            self.send_response(code)
            self.send_header("Location", loc)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    _Handler.seen_auth.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_redirects_followed_and_checked(server: str) -> None:
    policy = URLPolicy(allow_private=True)
    with make_client() as client:
        with stream(client, "GET", server + "/hop", policy=policy) as resp:
            assert resp.status_code == 200
            assert resp.read() == b"ok"
        with pytest.raises(NetworkError, match="loop"):
            with stream(client, "GET", server + "/loop", policy=policy):
                pass
        with pytest.raises(UnsafeURL, match="scheme"):
            with stream(client, "GET", server + "/to-file", policy=policy):
                pass


def test_typed_url_may_be_loopback_but_redirects_are_checked(server: str) -> None:
    with make_client() as client:
        # The user typed a loopback URL: allowed. Its redirect to a private address is not.
        with pytest.raises(UnsafeURL, match="private"):
            with stream(client, "GET", server + "/to-private", first_hop_trusted=True):
                pass
        with pytest.raises(UnsafeURL):
            with stream(client, "GET", server + "/hop"):
                pass


def test_token_only_sent_to_first_origin(server: str) -> None:
    with make_client() as client:
        with stream(
            client,
            "GET",
            server + "/offsite",
            policy=URLPolicy(allow_private=True),
            auth_host_headers={"Authorization": "Bearer secret"},
        ) as resp:
            assert resp.status_code == 200
    assert _Handler.seen_auth[0] == ("/offsite", "Bearer secret")
    # localhost:PORT is another origin than 127.0.0.1:PORT: the token stays behind.
    assert _Handler.seen_auth[1] == ("/final", None)
