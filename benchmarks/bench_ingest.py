"""Ingest speed: `Catalog.ingest` of N candidates vs a bare `executemany` of the same rows into
the same tables in one transaction (same schema; the ceiling fills both FTS5 indexes with one
INSERT ... SELECT each, the fastest way there is).

    .venv/bin/python benchmarks/bench_ingest.py            # 100,000 entries, 3 rounds
    .venv/bin/python benchmarks/bench_ingest.py --quick    # 10,000 entries

Target (issue 3): tihub's rate >= 0.5x the bare rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tihub.catalog.db import dispose_all, now, open_engine  # noqa: E402
from tihub.catalog.store import Catalog  # noqa: E402
from tihub.config import SourceSpec  # noqa: E402
from tihub.sources.base import Candidate, CandidateFile  # noqa: E402

WORDS = "water color style anime negative hands detail portrait cat dog castle forest neon retro".split()


def candidates(n: int) -> list[Candidate]:
    out = []
    for i in range(n):
        w1, w2 = WORDS[i % len(WORDS)], WORDS[(i * 7) % len(WORDS)]
        sha = f"{i:064x}"
        out.append(
            Candidate(
                remote_id=f"org/concept-{i}",
                name=f"{w1}-{w2}-{i}",
                title=f"{w1.title()} {w2} concept {i}",
                description=f"A {w1} {w2} embedding number {i} trained for tests",
                kind="style" if i % 2 else "object",
                tags=[w1, w2],
                base_model="SD 1.5",
                page_url=f"https://example.org/org/concept-{i}",
                triggers={"diffusers": f"<{w1}-{i}>"},
                files=[CandidateFile("learned_embeds.bin", f"https://example.org/org/concept-{i}/learned_embeds.bin",
                                     size=3819, sha256=sha, format="bin")],
            )
        )
    return out


def bare_rows(cands: list[Candidate], t: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The rows tihub writes, prepared outside the timing (the ceiling does no conversion work)."""
    entries, files, links = [], [], []
    for i, c in enumerate(cands, start=1):
        entries.append((i, 1, c.remote_id, c.name, c.title, c.description, c.kind, json.dumps(c.tags), c.base_model,
                        "sd1", 0, None, c.page_url, json.dumps(c.triggers), "ok", t, t, None, None))
        f = c.files[0]
        files.append((i, f.sha256, f.file_name, f.size, f.format))
        links.append((i, i, f.url, 0))
    return entries, files, links


def run_tihub(path: Path, cands: list[Candidate]) -> float:
    url = f"sqlite:///{path}"
    cat = Catalog(open_engine(url))
    t0 = time.perf_counter()
    cat.ingest(SourceSpec("bench", "huggingface"), cands)
    dt = time.perf_counter() - t0
    dispose_all()
    return dt


def run_bare(path: Path, rows: tuple[list[tuple], list[tuple], list[tuple]]) -> float:
    open_engine(f"sqlite:///{path}")  # same schema
    dispose_all()
    entries, files, links = rows
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("DROP TRIGGER entries_fts_ai")  # bulk-indexed below instead of per row
    con.execute("DROP TRIGGER entries_names_ai")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    t0 = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO sources (id, name, kind, nsfw, entry_count) VALUES (1, 'bench', 'huggingface', 0, 0)")
    con.executemany(
        "INSERT INTO entries (id, source_id, remote_id, name, title, description, kind, tags, base_model, base, nsfw,"
        " licence, page_url, triggers, status, first_seen, last_seen, removed_at, extra)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        entries,
    )
    con.executemany("INSERT INTO files (id, sha256, file_name, size, format) VALUES (?,?,?,?,?)", files)
    con.executemany("INSERT INTO entry_files (entry_id, file_id, url, manual) VALUES (?,?,?,?)", links)
    # the fastest way to fill the two FTS5 indexes: one INSERT ... SELECT each
    con.execute(
        "INSERT INTO entries_fts (rowid, name, triggers, title, description, tags, source) "
        "SELECT e.id, e.name, e.triggers, e.title, e.description, e.tags, s.name FROM entries e JOIN sources s ON s.id = e.source_id"
    )
    con.execute("INSERT INTO entries_names_fts (rowid, name, triggers, title) SELECT id, name, triggers, title FROM entries")
    con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10,000 entries")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    cands = candidates(n)
    rows = bare_rows(cands, now())
    tihub_t, bare_t, resync_t = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):  # interleaved rounds
            p1, p2 = Path(d) / f"t{r}.db", Path(d) / f"b{r}.db"
            bare_t.append(run_bare(p2, rows))
            tihub_t.append(run_tihub(p1, cands))
            resync_t.append(run_tihub(p1, cands))  # identical re-ingest (nothing changes)
            for p in (p1, p2):
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.remove(str(p) + suffix)
                    except FileNotFoundError:
                        pass
    mt, mb, mr = statistics.median(tihub_t), statistics.median(bare_t), statistics.median(resync_t)
    print(f"entries: {n:,} (each with one file and its link, both FTS5 indexes filled); rounds: {args.rounds}")
    print(f"bare executemany : median {mb:.3f} s  ({n / mb:,.0f} entries/s)")
    print(f"tihub ingest     : median {mt:.3f} s  ({n / mt:,.0f} entries/s)")
    print(f"tihub re-ingest  : median {mr:.3f} s  (same listing again, no changes)")
    ratio = mb / mt
    print(f"ratio tihub/bare rate: {ratio:.2f}x  (target >= 0.5x: {'met' if ratio >= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
