"""`tihub.hub.Hub`, the library the web app stands on: typed results, the progress callback,
the CLI's fetch decisions (already here, manual downloads), and reads during a fetch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tihub.catalog.db import write
from tihub.errors import NotFound, TihubError
from tihub.hub import FetchResult, Hub, SearchHit
from web_helpers import sha256_of, synced_workspace


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with synced_workspace(tmp_path_factory.mktemp("hub") / "home") as (root, _hub):
        yield root


def test_search_returns_typed_hits(home: Path) -> None:
    hub = Hub(home)
    hits = hub.search("cat")
    assert [h.name for h in hits] == ["cat-toy"] and isinstance(hits[0], SearchHit)
    d = hits[0].as_dict()
    assert d["ok"] is True and d["triggers"] == ["cat-toy"] and d["preview_id"] is not None
    assert [h.name for h in hub.search("", sort="name", limit=2, offset=1)] == ["cat-toy", "watercolor-style"]
    with pytest.raises(TihubError, match="sort 'size'"):
        hub.search("", sort="size")
    with pytest.raises(NotFound):
        hub.entry("no-such-entry")
    facets = hub.facets()
    assert facets.sources == ["hf"] and set(facets.kinds) == {"object", "style"} and facets.models


def test_fetch_reports_progress_then_finds_the_file_there(home: Path) -> None:
    hub = Hub(home)
    seen: list[tuple[int, int | None, str]] = []
    reads: list[int] = []
    stop = threading.Event()

    def reader() -> None:  # reads never wait for the fetch (SQLite WAL)
        other = Hub(home)
        while not stop.is_set():
            reads.append(len(other.search("")))

    t = threading.Thread(target=reader)
    t.start()
    try:
        r = hub.fetch("big-one", progress=lambda done, total, msg: seen.append((done, total, msg)))
    finally:
        stop.set()
        t.join()
    assert isinstance(r, FetchResult) and r.ok and r.status == "fetched", r.error
    path = Path(r.path or "")
    assert path == home / "embeddings" / "big-one.safetensors" and r.sha256 == sha256_of(path)
    dones = [d for d, _, m in seen if m == "downloading"]
    assert dones == sorted(dones) and len(dones) >= 2  # live byte counts, growing
    assert seen[-1][2] == "done" and seen[-1][0] == seen[-1][1] == r.size
    assert reads and all(n == 3 for n in reads)
    again = hub.fetch("big-one")
    assert again.ok and again.status == "exists" and again.path == str(path)


def test_a_manual_download_is_one_sentence(home: Path) -> None:
    hub = Hub(home)
    with write(hub.catalog.engine) as conn:
        conn.execute(text("UPDATE entry_files SET manual = 1 WHERE entry_id = (SELECT id FROM entries WHERE name = 'watercolor-style')"))
    r = hub.fetch("watercolor-style")
    assert not r.ok and r.status == "failed" and "manual download" in (r.error or "") and "tihub import" in (r.error or "")
    assert r.as_dict()["ok"] is False
    eid = hub.entry("watercolor-style")["id"]
    by_id = hub.fetch(eid)  # the web's Fetch button sends the id: the sentence names the entry
    assert (by_id.error or "").startswith(f"watercolor-style (#{eid}) is a manual download")
    missing = hub.fetch("no-such-entry")
    assert not missing.ok and "no-such-entry" in (missing.error or "")


def test_compat_on_a_family_and_on_a_hash(home: Path) -> None:
    hub = Hub(home)
    hub.fetch("cat-toy")
    rows = {r.name: r for r in hub.compat("sdxl")}
    assert rows["cat-toy"].fit == "partial" and rows["cat-toy"].ok and rows["cat-toy"].as_dict()["model"]
    with pytest.raises(TihubError, match="not a model hash"):
        hub.compat("zz")


def test_nsfw_flag_of_a_picture_is_read_from_its_params(home: Path) -> None:
    from tihub.hub import _nsfw_picture

    assert _nsfw_picture('{"nsfw": true, "width": 5}') and _nsfw_picture('{"nsfw":1}')
    assert not _nsfw_picture('{"nsfw": false}') and not _nsfw_picture(None) and not _nsfw_picture("[1]")
    assert not _nsfw_picture("not json")
    with pytest.raises(TihubError, match="narrow the search"):
        Hub(home).search("", offset=10**6)


def test_fetch_again_of_a_file_with_nowhere_to_download_from_keeps_it(home: Path, tmp_path: Path) -> None:
    """A local folder source's entry has its file on disk and no URL: forcing a fetch finds it
    there, instead of calling it a manual download."""
    from fileserver import embedding_bytes

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "handmade.safetensors").write_bytes(embedding_bytes(name="handmade"))
    (home / "sources.yaml").write_text(f"sources:\n  - {{name: mine, kind: local, path: '{folder}'}}\n", encoding="utf-8")
    hub = Hub(home)
    [report] = hub.sync(deep_budget=0)
    assert report.ok
    r = hub.fetch("handmade", force=True)
    assert r.ok and r.status == "exists" and r.path == str(folder / "handmade.safetensors")
