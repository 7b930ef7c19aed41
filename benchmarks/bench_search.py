"""Search speed over a large catalogue: `Catalog.search` (FTS5 + filters + result details) vs a
bare FTS5 `MATCH ... ORDER BY rank LIMIT 20` on the same database.

    .venv/bin/python benchmarks/bench_search.py            # 1,000,000 entries
    .venv/bin/python benchmarks/bench_search.py --quick    # 100,000 entries

The database is built once with executemany (bulk FTS build) and kept in /tmp for later runs.
Targets (issue 3): tihub p95 <= 10 ms and <= 2x the bare query's p95.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tihub.catalog.db import dispose_all, now, open_engine  # noqa: E402
from tihub.catalog.schema import FTS_DDL, NAMES_FTS_DDL, SUB_DDL, sub_bulk_sql  # noqa: E402
from tihub.catalog.store import _BM25, Catalog, fts_query  # noqa: E402

TAGS = ["style", "object", "negative", "anime", "portrait", "landscape", "character", "concept", "photo", "art"]
BASES = ["sd1", "sd1", "sd1", "sd2", "sdxl", "sdxl", "unknown"]
SYL = ["ka", "ri", "to", "mo", "na", "shi", "ve", "lo", "qu", "zen", "ar", "bel", "cor", "dra", "el", "fin",
       "gor", "hal", "ix", "jun", "kel", "lum", "mir", "nox", "or", "pra", "quin", "ros", "sil", "tor"]


def vocabulary(rng: random.Random, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYL) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def build(path: Path, n: int) -> tuple[list[str], list[str]]:
    """Create the benchmark DB (same schema as tihub, FTS built in bulk); return the vocabulary
    and the same words by descending frequency in descriptions (Zipf)."""
    rng = random.Random(42)
    vocab = vocabulary(rng, 50_000)
    by_freq = vocab[:]
    rng.shuffle(by_freq)  # frequent words are not alphabetical neighbours
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return vocab, by_freq
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    open_engine(f"sqlite:///{path}")
    dispose_all()
    t0 = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = OFF")
    con.execute("BEGIN")
    con.execute("DROP TRIGGER entries_fts_ai")
    con.execute("DROP TRIGGER entries_names_ai")
    con.execute("DROP TRIGGER entries_sub_ai")
    for sid, (name, nsfw) in enumerate([("hf", 0), ("civitai", 0), ("git", 1), ("links", 1)], start=1):
        con.execute("INSERT INTO sources (id, name, kind, nsfw, entry_count) VALUES (?, ?, 'git', ?, 0)", (sid, name, nsfw))
    t = now()
    zipf = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    batch_e: list[tuple] = []
    batch_f: list[tuple] = []
    batch_l: list[tuple] = []

    def flush() -> None:
        con.executemany(
            "INSERT INTO entries (id, source_id, remote_id, name, title, description, kind, tags, base_model, base,"
            " nsfw, page_url, triggers, status, first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            batch_e,
        )
        con.executemany("INSERT INTO files (id, sha256, file_name, size, format) VALUES (?,?,?,?,?)", batch_f)
        con.executemany("INSERT INTO entry_files (entry_id, file_id, url, manual) VALUES (?,?,?,0)", batch_l)
        batch_e.clear(), batch_f.clear(), batch_l.clear()

    for i in range(1, n + 1):
        w = rng.sample(vocab, 2)
        desc = rng.choices(by_freq, cum_weights=zipf, k=8)
        tags = rng.sample(TAGS, 2)
        sid = rng.randint(1, 4)
        name = f"{w[0]}-{w[1]}"
        batch_e.append((i, sid, f"r{i}", name, f"{w[0].title()} {w[1]}", " ".join(desc), tags[0], json.dumps(tags),
                        "SD 1.5", rng.choice(BASES), 1 if sid > 2 or i % 20 == 0 else 0, f"https://example.org/{i}",
                        json.dumps({"a1111": name}), "ok", t, t))
        batch_f.append((i, f"{i:064x}", f"{name}.pt", 4000, "pt"))
        batch_l.append((i, i, f"https://example.org/{i}.pt"))
        if len(batch_e) >= 50_000:
            flush()
    flush()
    con.execute(
        "INSERT INTO entries_fts (rowid, name, triggers, title, description, tags, source) "
        "SELECT e.id, e.name, e.triggers, e.title, e.description, e.tags, s.name FROM entries e JOIN sources s ON s.id = e.source_id"
    )
    con.execute(FTS_DDL[1])
    con.execute("INSERT INTO entries_names_fts (entries_names_fts) VALUES ('rebuild')")
    con.execute(NAMES_FTS_DDL[1])
    con.execute(sub_bulk_sql())
    con.execute(SUB_DDL[3])
    con.execute("COMMIT")
    con.execute("INSERT INTO entries_fts (entries_fts) VALUES ('optimize')")
    con.execute("ANALYZE")
    con.close()
    meta.write_text(json.dumps({"n": n}))
    print(f"built {path} ({n:,} entries) in {time.perf_counter() - t0:.1f} s", flush=True)
    return vocab, by_freq


def queries(vocab: list[str], by_freq: list[str], count: int) -> list[str]:
    rng = random.Random(7)
    out = []
    for i in range(count):
        kind = i % 10
        if kind < 4:
            out.append(rng.choice(vocab))  # one word (names, descriptions)
        elif kind < 7:
            out.append(f"{rng.choice(vocab)} {rng.choice(by_freq[:2000])}")  # two words
        elif kind < 9:
            out.append(rng.choice(vocab)[:5])  # a prefix, as typed
        else:
            out.append(rng.choice(by_freq[:50]))  # a very common word (in 1-15% of entries)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 entries")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--queries", type=int, default=400)
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    path = Path(f"/tmp/tihub_bench_search_v5_{n}.db")
    vocab, by_freq = build(path, n)
    qs = queries(vocab, by_freq, args.queries)
    cat = Catalog(open_engine(f"sqlite:///{path}"))
    bare = sqlite3.connect(path)
    bare_sql = f"SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? ORDER BY {_BM25} LIMIT 20"
    for q in qs[:20]:  # warm the page cache for both
        cat.search(q)
        bare.execute(bare_sql, (fts_query(q),)).fetchall()
    t_tihub: list[float] = []
    t_bare: list[float] = []
    hits = 0
    for q in qs:  # interleaved
        t0 = time.perf_counter()
        match = fts_query(q)
        bare.execute(bare_sql, (match,)).fetchall()
        t_bare.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        rows = cat.search(q)
        t_tihub.append((time.perf_counter() - t0) * 1000)
        hits += len(rows)
    t_empty = []
    for _ in range(50):
        t0 = time.perf_counter()
        cat.search("", base="sdxl")
        t_empty.append((time.perf_counter() - t0) * 1000)
    # substrings of names (as in "negative" -> EasyNegative) and one-typo names (fuzzy pass)
    rng = random.Random(11)
    t_sub, t_typo = [], []
    for _ in range(100):
        w = rng.choice(vocab)
        t0 = time.perf_counter()
        cat.search(w[1:6])
        t_sub.append((time.perf_counter() - t0) * 1000)
        i = rng.randrange(len(w))
        typo = w[:i] + "x" + w[i + 1 :] + "q"
        t0 = time.perf_counter()
        cat.search(typo)
        t_typo.append((time.perf_counter() - t0) * 1000)
    print(f"entries: {n:,}; queries: {len(qs)} (1-2 words, prefixes, common words); mean results {hits / len(qs):.1f}")
    print(f"bare FTS5 MATCH+bm25 LIMIT 20 : p50 {statistics.median(t_bare):.2f} ms  p95 {pct(t_bare, 95):.2f} ms")
    print(f"tihub search (filters+details): p50 {statistics.median(t_tihub):.2f} ms  p95 {pct(t_tihub, 95):.2f} ms")
    print(f"tihub empty query --base sdxl  : p50 {statistics.median(t_empty):.2f} ms  p95 {pct(t_empty, 95):.2f} ms")
    print(f"tihub substring of a name      : p50 {statistics.median(t_sub):.2f} ms  p95 {pct(t_sub, 95):.2f} ms")
    print(f"tihub name with typos (fuzzy)  : p50 {statistics.median(t_typo):.2f} ms  p95 {pct(t_typo, 95):.2f} ms")
    classes = ["one word"] * 4 + ["two words"] * 3 + ["prefix"] * 2 + ["common word"]
    for cls in dict.fromkeys(classes):
        idx = [i for i in range(len(qs)) if classes[i % 10] == cls]
        tt, tb = [t_tihub[i] for i in idx], [t_bare[i] for i in idx]
        print(f"  {cls:<12} tihub p50 {statistics.median(tt):6.2f} p95 {pct(tt, 95):6.2f} ms | "
              f"bare p50 {statistics.median(tb):6.2f} p95 {pct(tb, 95):6.2f} ms")
    r95 = pct(t_tihub, 95) / pct(t_bare, 95)
    ok = pct(t_tihub, 95) <= 10 and r95 <= 2
    print(f"p95 ratio tihub/bare: {r95:.2f}x  (targets p95 <= 10 ms and <= 2x: {'met' if ok else 'NOT met'})")


if __name__ == "__main__":
    main()
