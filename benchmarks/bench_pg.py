"""SQLite and PostgreSQL side by side, through the same `Catalog` API:

1. ingest: one `Catalog.ingest` of N new entries (then a re-sync of the same listing);
2. search: `Catalog.search(q, limit=20)` p50/p95 over a large catalogue (the same rows on both
   engines: bench_search.py's database, copied into PostgreSQL with COPY);
3. 8 concurrent clients: 4 processes syncing their own sources again and again while 4 others
   search; sync throughput and search latency under that load.

    .venv/bin/python benchmarks/bench_pg.py            # ingest 100,000; search over 1,000,000
    .venv/bin/python benchmarks/bench_pg.py --quick    # ingest 10,000; search over 50,000

PostgreSQL is a throwaway local server (tests/pgserver.py: initdb + pg_ctl, fsync off), or
$TIHUB_TEST_PG. Both engines run on the same machine, so the ratios are what to read.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_ingest  # noqa: E402
import bench_search  # noqa: E402
import pgserver  # noqa: E402

from tihub.catalog import search_pg  # noqa: E402
from tihub.catalog.db import dispose_all, open_engine  # noqa: E402
from tihub.catalog.store import Catalog  # noqa: E402
from tihub.config import SourceSpec  # noqa: E402
from tihub.sources.base import Candidate, CandidateFile  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    return bench_search.pct(xs, p)


# ---------------------------------------------------------------- 1. ingest


def bench_ingest_once(url: str, n: int) -> tuple[float, float]:
    cands = bench_ingest.candidates(n)
    cat = Catalog(open_engine(url))
    t0 = time.perf_counter()
    cat.ingest(SourceSpec("bench", "huggingface"), cands)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat.ingest(SourceSpec("bench", "huggingface"), cands)
    again = time.perf_counter() - t0
    dispose_all()
    return n / first, n / again


# ---------------------------------------------------------------- 2. search


def copy_to_pg(sqlite_path: Path, server: pgserver.PgServer, database: str) -> str:
    """The bench_search database's rows in a fresh PostgreSQL catalogue (COPY, indexes after)."""
    import psycopg

    url = server.create_database(database)
    open_engine(url)  # the schema, by tihub's own migrations
    dispose_all()
    src = sqlite3.connect(sqlite_path)
    cols = {
        "sources": "id, name, kind, nsfw, entry_count",
        "entries": "id, source_id, remote_id, name, title, description, kind, tags, base_model, base, nsfw, "
        "page_url, triggers, status, first_seen, last_seen",
        "files": "id, sha256, file_name, size, format",
        "entry_files": "entry_id, file_id, url, manual",
    }
    t0 = time.perf_counter()
    with psycopg.connect(server.dsn(database)) as conn:
        for ix in ("ix_entries_search_doc", "ix_entries_search_names", "ix_entries_search_trgm", "ix_entries_search_key"):
            conn.execute(f"DROP INDEX IF EXISTS {ix}")  # type: ignore[arg-type]
        for table, c in cols.items():
            with conn.cursor().copy(f"COPY {table} ({c}) FROM STDIN") as cp:  # type: ignore[arg-type]
                for row in src.execute(f"SELECT {c} FROM {table}"):
                    cp.write_row(row)
        for ddl in search_pg.DDL:
            conn.execute(ddl)  # type: ignore[arg-type]
        for seq in ("sources", "entries", "files"):
            conn.execute(f"SELECT setval('{seq}_id_seq', (SELECT MAX(id) FROM {seq}))")  # type: ignore[arg-type]
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    print(f"  copied {sqlite_path.name} into PostgreSQL in {time.perf_counter() - t0:.1f} s", flush=True)
    return url


def bench_search_on(url: str, qs: list[str]) -> tuple[list[float], float]:
    cat = Catalog(open_engine(url))
    for q in qs[:20]:
        cat.search(q)
    times, hits = [], 0
    for q in qs:
        t0 = time.perf_counter()
        hits += len(cat.search(q))
        times.append((time.perf_counter() - t0) * 1000)
    dispose_all()
    return times, hits / len(qs)


# ---------------------------------------------------------------- 3. concurrent clients


def _syncer(url: str, source: str, n: int, rounds: int, out) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog(open_engine(url))
    t0 = time.perf_counter()
    for r in range(rounds):
        cands = [Candidate(remote_id=str(i), name=f"{source}-{i}-{r % 2}", description=f"round {r} of {source}",
                           files=[CandidateFile(f"f{i}.pt", f"https://example.org/{source}/{i}.pt",
                                                sha256=f"{hash((source, i)) & (2**256 - 1):064x}")])
                 for i in range(n)]
        cat.ingest(SourceSpec(source, "git"), cands)
    out.put(("sync", n * rounds, time.perf_counter() - t0))


def _searcher(url: str, qs: list[str], done, out) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog(open_engine(url))
    times: list[float] = []
    i = 0
    while not done.is_set() or i < 20:
        t0 = time.perf_counter()
        cat.search(qs[i % len(qs)])
        times.append((time.perf_counter() - t0) * 1000)
        i += 1
    out.put(("search", times, 0.0))


def bench_clients(url: str, qs: list[str], n: int, rounds: int) -> tuple[float, list[float]]:
    ctx = multiprocessing.get_context("spawn")
    out, done = ctx.Queue(), ctx.Event()
    syncers = [ctx.Process(target=_syncer, args=(url, f"client{k}", n, rounds, out)) for k in range(4)]
    searchers = [ctx.Process(target=_searcher, args=(url, qs, done, out)) for _ in range(4)]
    t0 = time.perf_counter()
    for p in syncers + searchers:
        p.start()
    for p in syncers:
        p.join()
    wall = time.perf_counter() - t0
    done.set()
    results = [out.get() for _ in syncers + searchers]
    for p in searchers:
        p.join()
    synced = sum(r[1] for r in results if r[0] == "sync")
    lat = [t for r in results if r[0] == "search" for t in r[1]]
    return synced / wall, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ingest 10,000; search over 50,000; small client runs")
    args = ap.parse_args()
    n_ingest = 10_000 if args.quick else 100_000
    n_search = 50_000 if args.quick else 1_000_000
    n_client, rounds = (500, 3) if args.quick else (5_000, 4)
    server = pgserver.start()
    tmp = Path(tempfile.mkdtemp(prefix="tihub-bench-pg-"))
    try:
        print(f"1. ingest {n_ingest:,} new entries, then re-sync the same listing")
        rates = {
            "sqlite": bench_ingest_once(f"sqlite:///{tmp / 'ingest.db'}", n_ingest),
            "postgresql": bench_ingest_once(server.create_database("bench_ingest"), n_ingest),
        }
        for eng, (first, again) in rates.items():
            print(f"  {eng:<10} first sync {first:9,.0f} entries/s   re-sync {again:9,.0f} entries/s")

        print(f"2. search p50/p95 over {n_search:,} entries (limit 20; 1-2 words, prefixes, common words)")
        path = Path(f"/tmp/tihub_bench_search_v2_{n_search}.db")
        vocab, by_freq = bench_search.build(path, n_search)
        qs = bench_search.queries(vocab, by_freq, 300)
        urls = {"sqlite": f"sqlite:///{path}", "postgresql": copy_to_pg(path, server, "bench_search")}
        for eng, url in urls.items():
            times, mean_hits = bench_search_on(url, qs)
            print(f"  {eng:<10} p50 {statistics.median(times):7.2f} ms   p95 {pct(times, 95):7.2f} ms   "
                  f"(mean {mean_hits:.1f} results)")

        print(f"3. 8 clients: 4 syncing {n_client:,} entries x {rounds} rounds each, 4 searching meanwhile")
        for eng, url in (("sqlite", f"sqlite:///{tmp / 'clients.db'}"),
                         ("postgresql", server.create_database("bench_clients"))):
            Catalog(open_engine(url)).ingest(SourceSpec("seed", "git"), bench_ingest.candidates(2000))
            dispose_all()
            rate, lat = bench_clients(url, bench_search.queries(bench_ingest.WORDS, bench_ingest.WORDS, 100),
                                      n_client, rounds)
            print(f"  {eng:<10} syncs {rate:9,.0f} entries/s in all   searches under load: "
                  f"p50 {statistics.median(lat):7.2f} ms  p95 {pct(lat, 95):7.2f} ms  ({len(lat)} searches)")
    finally:
        server.stop()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        os.environ.pop("TIHUB_DB", None)


if __name__ == "__main__":
    main()
