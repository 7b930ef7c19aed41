"""The network when it is not there: one retry path (tihub.retry) that does not retry DNS, TLS or
4xx failures, says "you appear to be offline" once, shows retries live, keeps partial files on
Ctrl-C. Host names are made unresolvable by patching getaddrinfo: no test reaches a network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from fileserver import FileServer, embedding_bytes
from tihub import retry
from tihub.cli import cli
from tihub.download import Downloader, Progress, Request

_real_getaddrinfo = socket.getaddrinfo


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names under .example do not resolve (as when offline); returns the names asked for."""
    asked: list[str] = []

    def fake(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host.endswith(".example"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


@pytest.fixture
def srv():  # type: ignore[no-untyped-def]
    s = FileServer().start()
    yield s
    s.stop()


def test_sync_offline_asks_once_and_says_so(home: Path, no_dns: list[str]) -> None:
    (home / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: first, kind: links, url: 'http://first.example/'}\n"
        "  - {name: second, kind: links, url: 'http://second.example/'}\n"
        "  - {name: local, kind: local, path: embeddings}\n", encoding="utf-8")
    (home / "embeddings" / "mine.safetensors").write_bytes(embedding_bytes(name="mine"))
    r = CliRunner().invoke(cli, ["sync", "--json"])
    assert r.exit_code == 1
    import json

    reports = {x["name"]: x for x in json.loads(r.stdout)}
    assert reports["first"]["offline"] is True and "you appear to be offline" in reports["first"]["error"]
    assert reports["second"]["offline"] is True and "skipped" in reports["second"]["error"]
    assert reports["local"]["ok"] is True  # local sources still sync
    assert set(no_dns) == {"first.example"}  # not retried, and the second host was never asked
    assert "You appear to be offline" in r.stderr and "retrying" not in r.stderr


def test_download_dns_failure_is_not_retried(tmp_path: Path, no_dns: list[str]) -> None:
    with Downloader(tmp_path, retries=4, backoff=0.01, env={}) as d:
        res = d.fetch(Request("http://files.example/x.pt", trusted=True))
    assert not res.ok and "you appear to be offline" in (res.error or "") and "not retried" in (res.error or "")
    assert len(no_dns) == 1


def test_4xx_is_final_and_5xx_retries_are_announced(tmp_path: Path, srv: FileServer) -> None:
    gone = srv.add("/gone.pt", b"", status=404)
    busy = srv.add("/busy.pt", embedding_bytes(name="busy"), fail_times=2)
    notes: list[str] = []
    with retry.reporting(notes.append), Downloader(tmp_path, retries=4, backoff=0.01, env={}) as d:
        missing = d.fetch(Request(gone, trusted=True))
        ok = d.fetch(Request(busy, trusted=True))
    assert not missing.ok and srv.files["/gone.pt"].hits == 1  # asked once
    assert ok.ok and srv.files["/busy.pt"].hits == 3
    assert [n.split(" in ")[0] for n in notes] == [f"{busy}: retrying 2/5", f"{busy}: retrying 3/5"]
    assert all(n.rstrip(")").endswith("Service Unavailable for " + busy) or "answered" in n for n in notes)


def test_retry_policy_kinds() -> None:
    calls: list[int] = []

    def attempt(kind: str) -> None:
        calls.append(1)
        raise retry.RetryNow("boom", 0.0, kind)

    for kind, expected in (("dns", 1), ("tls", 1), ("timeout", 2), ("transient", 5)):
        calls.clear()
        with pytest.raises(retry.RetryNow) as info:
            retry.call(lambda k=kind: attempt(k), classify=lambda e: None, label="t", attempts=5, sleep=lambda s: None)
        assert len(calls) == expected and retry.tries(info.value) == expected, kind
    assert retry.network_kind(OSError("[Errno -2] Name or service not known")) == "dns"
    import ssl

    assert retry.network_kind(ssl.SSLCertVerificationError("certificate verify failed")) == "tls"


def test_ctrl_c_keeps_the_partial_file_for_resume(tmp_path: Path, srv: FileServer) -> None:
    data = embedding_bytes(vectors=24, name="big")  # ~74 KB, several chunks
    url = srv.add("/big.safetensors", data, drip=(8192, 0.0))

    class Interrupting(Progress):
        def advance(self, key: str, n: int) -> None:
            super().advance(key, n)
            raise KeyboardInterrupt

    with Downloader(tmp_path, env={}, progress=Interrupting(enabled=False)) as d, pytest.raises(KeyboardInterrupt):
        d.fetch(Request(url, trusted=True))
    parts = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert parts and parts[0].stat().st_size > 0  # kept
    with Downloader(tmp_path, env={}) as d:
        res = d.fetch(Request(url, trusted=True))
    assert res.ok and res.resumed_from and res.resumed_from > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_a_host_that_never_answers_costs_two_read_timeouts() -> None:
    import threading

    from tihub.errors import SourceError
    from tihub.net import URLPolicy, make_client
    from tihub.sources._http import Fetcher

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:  # accept and never answer
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/index"
    notes: list[str] = []
    try:
        with retry.reporting(notes.append), Fetcher(make_client(timeout=0.3), URLPolicy(allow_private=True), source="stuck",
                                                    sleep=lambda s: None) as f, pytest.raises(SourceError) as info:
            f.get(url)
    finally:
        listener.close()
        for c in accepted:
            c.close()
    assert f.requests == 2 and len(notes) == 1 and "retrying 2/2" in notes[0]
    assert "after 2 tries" in str(info.value)
