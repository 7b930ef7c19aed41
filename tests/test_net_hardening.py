"""Network hardening (issue 11, items 3-7) against a hostile loopback server: lying encodings,
dripping headers, malformed redirects, tokens over plain http, and a rebinding resolver. Each
test drives the real download and sync paths (Downloader, the sources' Fetcher, a links source)."""

from __future__ import annotations

import functools
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from fileserver import FileServer, embedding_bytes
from servers import Ctx, run_index
from servers.hostile import BAD_LOCATIONS, HostileServer, gzip_bomb, rebinding_resolver
from tihub.config import SourceSpec
from tihub.download import Downloader, Request
from tihub.errors import SourceError, TihubError, UnsafeURL
from tihub.net import URLPolicy, make_client, stream
from tihub.sources import _http
from tihub.sources._http import Fetcher
from tihub.sources.links import index as links_index



@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "BACKOFF", 0.01)


@functools.lru_cache(maxsize=1)
def _small_bomb() -> bytes:
    return gzip_bomb(256 << 20)  # 256 MiB of zeros, gzipped twice: a few KB on the wire


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch):
    import servers.hostile as h

    monkeypatch.setattr(h, "gzip_bomb", lambda size=0: _small_bomb())
    srv = HostileServer(drip_s=0.2).start()
    yield srv
    srv.stop()


def dl(folder: Path, **kw) -> Downloader:
    kw.setdefault("retries", 1)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_wait", 0.05)
    kw.setdefault("env", {})
    return Downloader(folder, **kw)


def _finishes(fn, limit: float = 60.0):  # type: ignore[no-untyped-def]
    """Run `fn` in a thread; fail (instead of hanging the suite) if it is still running after
    `limit` seconds, which only happens when the deadline does not hold."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "the request outlived its deadline"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")


# -- 3. Content-Encoding ----------------------------------------------------------------------


def test_a_double_gzip_answer_is_refused_before_it_expands(hostile: HostileServer, tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        with dl(tmp_path) as d:
            r = d.fetch(Request(hostile.url("/gzip2"), trusted=True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == "failed" and "Content-Encoding 'gzip, gzip'" in r.error, r.error
    assert peak < 32 * 1024 * 1024, peak
    assert hostile.requests[0][1]["accept-encoding"] == "identity"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_the_sources_fetcher_and_a_links_source_refuse_encodings(hostile: HostileServer) -> None:
    with Fetcher(None, URLPolicy(allow_private=True), source="s") as f:
        with pytest.raises(UnsafeURL, match="Content-Encoding"):
            f.get(hostile.url("/gzip2"))
        with pytest.raises(UnsafeURL, match="'br'"):
            f.get(hostile.url("/br"))
    spec = SourceSpec(name="page", kind="links", options={"url": hostile.url("/gzip2")}, allow_private=True)
    with pytest.raises(UnsafeURL, match="Content-Encoding"):
        run_index(links_index, spec, Ctx())


# -- 4. one deadline for connect + headers + body ---------------------------------------------


def test_a_header_dripping_server_cannot_outlive_the_download_deadline(hostile: HostileServer, tmp_path: Path) -> None:
    def fetch():  # type: ignore[no-untyped-def]
        with dl(tmp_path, deadline=2.0) as d:
            return d.fetch(Request(hostile.url("/drip"), trusted=True))

    r = _finishes(fetch)
    assert r.status == "failed" and "deadline" in r.error, r.error


def test_a_header_dripping_server_cannot_outlive_a_sync_deadline(hostile: HostileServer) -> None:
    def get():  # type: ignore[no-untyped-def]
        with Fetcher(None, URLPolicy(allow_private=True), source="s", deadline=time.monotonic() + 2.0) as f:
            return f.get(hostile.url("/drip"))

    with pytest.raises(SourceError, match="deadline"):
        _finishes(get)


# -- 6. malformed Location --------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_LOCATIONS))
def test_a_malformed_location_is_one_sentence_for_that_item(kind: str, hostile: HostileServer, tmp_path: Path) -> None:
    with dl(tmp_path) as d:
        r = d.fetch(Request(hostile.url(f"/location/{kind}"), trusted=True))
    assert r.status == "failed" and r.error and "\n" not in r.error and "internal" not in r.error, r.error


def test_a_malformed_location_in_a_batch_leaves_the_written_file_reported(hostile: HostileServer, tmp_path: Path) -> None:
    files = FileServer().start()
    try:
        good = files.add("/f/thing.safetensors", embedding_bytes("safetensors", name="thing"))
        with dl(tmp_path, jobs=2) as d:
            results = d.fetch_all([Request(good, trusted=True), Request(hostile.url("/location/bracket"), trusted=True)])
    finally:
        files.stop()
    assert [r.status for r in results][1] == "failed"
    assert results[0].ok and results[0].path is not None and results[0].path.exists()
    with Fetcher(None, URLPolicy(allow_private=True), source="s") as f, pytest.raises(UnsafeURL, match="malformed"):
        f.get(hostile.url("/location/port"))


# -- 7. tokens only over https ----------------------------------------------------------------


def test_tokens_are_never_sent_over_plain_http(hostile: HostileServer) -> None:
    token = {"Authorization": "Bearer secret"}
    with rebinding_resolver("civitai.test", "127.0.0.1", "127.0.0.1"), make_client() as client:
        url = hostile.url("/file", host="civitai.test")
        with stream(client, "GET", url, policy=URLPolicy(allow_private=True), auth_host_headers=token) as resp:
            resp.read()
    assert "authorization" not in hostile.requests[-1][1]
    # this machine's own loopback address is the one exception (test servers): nothing leaves it
    with make_client() as client, stream(client, "GET", hostile.url("/file"), policy=URLPolicy(allow_private=True), auth_host_headers=token) as resp:
        resp.read()
    assert hostile.requests[-1][1]["authorization"] == "Bearer secret"


def test_a_civitai_token_is_not_sent_to_http_civitai(hostile: HostileServer, tmp_path: Path) -> None:
    with rebinding_resolver("civitai.com", "127.0.0.1", "127.0.0.1"):
        with dl(tmp_path, env={"CIVITAI_TOKEN": "civ-secret"}) as d:
            d.fetch(Request(f"http://civitai.com:{hostile.port}/api/download/models/1", trusted=True))
    assert hostile.requests and all("authorization" not in h for _p, h in hostile.requests)


# -- 5. DNS rebinding -------------------------------------------------------------------------
# Played on loopback only (no test reaches the internet): 127.0.0.1 counts as public here, and
# 127.0.0.2, where a second server listens on the same port, is the internal target.


@pytest.fixture
def internal(hostile: HostileServer, monkeypatch: pytest.MonkeyPatch):
    import ipaddress

    import tihub.net as net

    monkeypatch.setattr(net, "_is_private", lambda ip: ip == ipaddress.ip_address("127.0.0.2"))
    srv = HostileServer(bind="127.0.0.2", port=hostile.port).start()
    yield srv
    srv.stop()


def test_a_rebinding_name_never_reaches_the_internal_address_in_a_download(hostile: HostileServer, internal: HostileServer, tmp_path: Path) -> None:
    with rebinding_resolver("rebind.test", "127.0.0.1", "127.0.0.2") as given:
        with dl(tmp_path) as d:
            d.fetch(Request(hostile.url("/file", host="rebind.test")))
    assert given == ["127.0.0.1"]  # one lookup, by the check
    assert [p for p, _h in hostile.requests] == ["/file"]  # the connection went to the checked address
    assert internal.requests == []


def test_a_rebinding_name_never_reaches_the_internal_address_in_sync_or_after_a_redirect(hostile: HostileServer, internal: HostileServer) -> None:
    with rebinding_resolver("rebind.test", "127.0.0.1", "127.0.0.2"):
        with Fetcher(None, URLPolicy(), source="s", max_retries=0) as f:
            assert f.get(hostile.url("/file", host="rebind.test")).body == b"hello"
    with rebinding_resolver("rebind.test", "127.0.0.1", "127.0.0.2"):
        hop = hostile.url("/redirect?to=" + hostile.url("/file", host="rebind.test"))
        with make_client() as client, stream(client, "GET", hop, policy=URLPolicy(), first_hop_trusted=True) as resp:
            assert resp.read() == b"hello"
    assert [p for p, _h in hostile.requests] == ["/file", "/redirect?to=" + hostile.url("/file", host="rebind.test"), "/file"]
    assert internal.requests == []


def test_a_private_answer_is_refused_even_without_rebinding(hostile: HostileServer, tmp_path: Path) -> None:
    with rebinding_resolver("inside.test", "127.0.0.1", "127.0.0.1"):
        with dl(tmp_path) as d:
            r = d.fetch(Request(hostile.url("/file", host="inside.test")))
    assert r.status == "failed" and "private or loopback" in r.error
    assert hostile.requests == []
