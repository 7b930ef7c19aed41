"""Several processes at once on one catalogue, on both engines: three syncing different sources
(whose files overlap by sha256), one recording fetched files, two searching and reading entries.
No row is lost, and no reader ever sees a source half-ingested (a mix of two syncs' rows)."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest

from tihub.errors import ConfigError
from tihub.catalog.db import open_engine
from tihub.catalog.store import Catalog
from tihub.config import SourceSpec
from tihub.formats.model import Embedding
from tihub.sources.base import Candidate, CandidateFile

SOURCES = ["alpha", "beta", "gamma"]
N = 150  # entries per source
ROUNDS = 3  # syncs per source; each renames every entry to "<source>-<i>-r<round>"


def sha(i: int) -> str:
    return hashlib.sha256(f"file{i}".encode()).hexdigest()


def _syncer(url: str, source: str) -> None:
    cat = Catalog(open_engine(url))
    for r in range(ROUNDS):
        cands = [
            Candidate(remote_id=str(i), name=f"{source}-{i}-r{r}",
                      files=[CandidateFile(f"f{i}.pt", f"https://example.org/{i}.pt", sha256=sha(i))])
            for i in range(N)
        ]
        cat.ingest(SourceSpec(source, "git"), cands)


def _fetcher(url: str, folder: str) -> None:
    cat = Catalog(open_engine(url))
    for i in range(0, N, 10):
        p = Path(folder) / f"fetched{i}.safetensors"
        p.write_bytes(b"x")
        cat.upsert_local_file(p, Embedding(f"fetched{i}", {"clip_l": np.zeros((1, 768), np.float32)}), sha(i))


def _reader(url: str, done, out) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog(open_engine(url))
    problems: list[str] = []
    looks = 0
    while not done.is_set() or looks < 3:
        for source in SOURCES:
            try:
                rows = cat.search("", source=source, limit=0)
            except ConfigError:  # that source's first sync has not landed yet: nothing of it seen
                rows = []
            looks += 1
            rounds = {re.sub(r".*-r", "", r["name"]) for r in rows}
            if rows and (len(rows) != N or len(rounds) != 1):
                problems.append(f"{source}: {len(rows)} rows from rounds {sorted(rounds)}")
            hits = cat.search(source, limit=5)
            if rows and len(hits) != 5:
                problems.append(f"search {source!r} gave {len(hits)} rows")
            if rows:
                e = cat.entry(rows[0]["id"])
                if len(e["files"]) != 1:
                    problems.append(f"{rows[0]['name']} has {len(e['files'])} files")
    out.put((looks, problems))


@pytest.mark.slow
def test_syncs_fetches_and_searches_at_once(db_url: str, tmp_path: Path) -> None:
    Catalog(open_engine(db_url))  # migrate once before the crowd arrives
    ctx = multiprocessing.get_context("spawn")
    out, done = ctx.Queue(), ctx.Event()
    readers = [ctx.Process(target=_reader, args=(db_url, done, out)) for _ in range(2)]
    writers = [ctx.Process(target=_syncer, args=(db_url, s)) for s in SOURCES]
    writers.append(ctx.Process(target=_fetcher, args=(db_url, str(tmp_path))))
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(180)
    done.set()
    results = [out.get(timeout=180) for _ in readers]
    for p in readers:
        p.join(60)
    assert [p.exitcode for p in readers + writers] == [0] * (len(readers) + len(writers))
    assert all(looks > 0 for looks, _ in results)
    assert [p for _, problems in results for p in problems] == []
    cat = Catalog(open_engine(db_url))
    for source in SOURCES:  # nothing lost: every entry of the last round, one shared file each
        rows = cat.search("", source=source, limit=0)
        assert sorted(r["name"] for r in rows) == sorted(f"{source}-{i}-r{ROUNDS - 1}" for i in range(N))
    local = cat.search("", local=True, limit=0)
    assert len({r["sha256"] for r in local}) == N // 10
    for i in range(0, N, 10):
        f = cat.file_by_sha256(sha(i))
        assert f is not None and f["local_path"] == str((tmp_path / f"fetched{i}.safetensors").resolve())
