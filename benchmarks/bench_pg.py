"""SQLite and PostgreSQL side by side, through the same `Catalog` API:

1. ingest: one `Catalog.ingest` of N new entries (then a re-sync of the same listing);
2. search: `Catalog.search(q, limit=20)` p50/p95 over a large catalogue (the same rows and the same
   queries on both engines: bench_search.py's database, copied into PostgreSQL with COPY);
3. 8 concurrent clients: 4 processes syncing their own sources again and again while 4 others
   search; sync throughput and search latency under that load.

    .venv/bin/python benchmarks/bench_pg.py            # ingest 100,000; search over 1,000,000
    .venv/bin/python benchmarks/bench_pg.py --quick    # ingest 10,000; search over 50,000

The search corpus is bench_search.py's generator, built once into this script's own SQLite file
(/tmp/tihub_bench_pg_search_N.db, reused by later runs) and copied into PostgreSQL by COPY; the
ingest figures go through tihub's own `Catalog.ingest` on both engines.

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
    """The bench_search database's rows in a fresh PostgreSQL catalogue: the schema by tihub's own
    migrations, the rows by COPY (the search rows of all entries built by the insert trigger in
    one statement), the search indexes built after the rows, as a restore would."""
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
    indexes = [ddl for ddl in search_pg.DDL if ddl.startswith("CREATE INDEX")]
    t0 = time.perf_counter()
    with psycopg.connect(server.dsn(database)) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for ddl in indexes:
            conn.execute(f"DROP INDEX IF EXISTS {ddl.split()[5]}")  # type: ignore[arg-type]
        for table, c in cols.items():
            with conn.cursor().copy(f"COPY {table} ({c}) FROM STDIN") as cp:  # type: ignore[arg-type]
                for row in src.execute(f"SELECT {c} FROM {table}"):
                    cp.write_row(row)
        for ddl in indexes:
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
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds per engine, interleaved (default 3)")
    args = ap.parse_args()
    n_ingest = 10_000 if args.quick else 100_000
    n_search = 50_000 if args.quick else 1_000_000
    n_client, rounds = (500, 3) if args.quick else (5_000, 4)
    med = statistics.median
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    server = pgserver.start()
    tmp = Path(tempfile.mkdtemp(prefix="tihub-bench-pg-"))
    try:
        print(f"1. ingest {n_ingest:,} new entries (tihub's ingest), then re-sync the same listing; "
              f"{args.rounds} rounds per engine, interleaved", flush=True)
        rates: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgresql": []}
        for r in range(args.rounds):
            rates["sqlite"].append(bench_ingest_once(f"sqlite:///{tmp / f'ingest{r}.db'}", n_ingest))
            rates["postgresql"].append(bench_ingest_once(server.create_database(f"bench_ingest{r}"), n_ingest))
            server.execute(f"DROP DATABASE bench_ingest{r}")
        first = {eng: med([x[0] for x in v]) for eng, v in rates.items()}
        again = {eng: med([x[1] for x in v]) for eng, v in rates.items()}
        for eng, v in rates.items():
            print(f"  {eng:<10} first sync {first[eng]:9,.0f} entries/s ({n_ingest / first[eng]:.1f} s)   "
                  f"re-sync {again[eng]:9,.0f} entries/s   rounds: {', '.join(f'{x[0]:,.0f}' for x in v)}")
        print(f"  ratio SQLite/PostgreSQL: first sync {first['sqlite'] / first['postgresql']:.2f}x, "
              f"re-sync {again['sqlite'] / again['postgresql']:.2f}x", flush=True)

        print(f"2. search p50/p95 over {n_search:,} entries (limit 20; 1-2 words, prefixes, common words)", flush=True)
        path = Path(f"/tmp/tihub_bench_pg_search_{n_search}.db")  # this script's own copy of the corpus
        t0 = time.perf_counter()
        vocab, by_freq = bench_search.build(path, n_search)
        print(f"  SQLite corpus ready in {time.perf_counter() - t0:.1f} s", flush=True)
        qs = bench_search.queries(vocab, by_freq, 300)
        urls = {"sqlite": f"sqlite:///{path}", "postgresql": copy_to_pg(path, server, "bench_search")}
        times: dict[str, list[float]] = {eng: [] for eng in urls}
        for _ in range(2):  # two passes, interleaved
            for eng, url in urls.items():
                t, mean_hits = bench_search_on(url, qs)
                times[eng] += t
        for eng, t in times.items():
            print(f"  {eng:<10} p50 {med(t):7.2f} ms   p95 {pct(t, 95):7.2f} ms   ({len(t)} searches)")
        print(f"  ratio PostgreSQL/SQLite: p50 {med(times['postgresql']) / med(times['sqlite']):.2f}x, "
              f"p95 {pct(times['postgresql'], 95) / pct(times['sqlite'], 95):.2f}x", flush=True)
        server.execute("DROP DATABASE bench_search")

        print(f"3. 8 clients: 4 syncing {n_client:,} entries x {rounds} rounds each, 4 searching meanwhile", flush=True)
        clients = {}
        for eng, url in (("sqlite", f"sqlite:///{tmp / 'clients.db'}"),
                         ("postgresql", server.create_database("bench_clients"))):
            Catalog(open_engine(url)).ingest(SourceSpec("seed", "git"), bench_ingest.candidates(2000))
            dispose_all()
            rate, lat = bench_clients(url, bench_search.queries(bench_ingest.WORDS, bench_ingest.WORDS, 100),
                                      n_client, rounds)
            clients[eng] = (rate, lat)
            print(f"  {eng:<10} syncs {rate:9,.0f} entries/s in all   searches under load: "
                  f"p50 {med(lat):7.2f} ms  p95 {pct(lat, 95):7.2f} ms  ({len(lat)} searches)", flush=True)
        (rs, ls), (rp, lp) = clients["sqlite"], clients["postgresql"]
        print(f"  ratio SQLite/PostgreSQL sync rate {rs / rp:.2f}x; "
              f"PostgreSQL/SQLite search p95 {pct(lp, 95) / pct(ls, 95):.2f}x")
    finally:
        server.stop()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        os.environ.pop("TIHUB_DB", None)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
