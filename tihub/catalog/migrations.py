"""Named, ordered schema migrations. Append new ones; never edit or reorder applied ones."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, text


def m001_hash_cache(conn: Connection) -> None:
    """Hashes of files on disk, keyed by path, size and mtime (a second look is one `stat`)."""
    conn.execute(
        text(
            """
            CREATE TABLE hash_cache (
                path TEXT PRIMARY KEY,
                size INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL,
                sha256 TEXT NOT NULL,
                old_hash TEXT,
                extra TEXT
            )
            """
        )
    )


def m002_catalog(conn: Connection) -> None:
    """Sources, entries, files (one row per sha256), models, previews, verifications, training
    runs; on SQLite also the `entries_fts` full-text index and the triggers that maintain it."""
    from tihub.catalog.schema import CATALOG_TABLES, FTS_DDL, metadata

    metadata.create_all(conn, tables=CATALOG_TABLES)
    if conn.dialect.name == "sqlite":
        for ddl in FTS_DDL:
            conn.execute(text(ddl))


def m003_names_fts(conn: Connection) -> None:
    """On SQLite: a small FTS5 index over name, triggers and title, so broad searches can put
    name hits first without ranking every match."""
    from tihub.catalog.schema import NAMES_FTS_DDL

    if conn.dialect.name == "sqlite":
        for ddl in NAMES_FTS_DDL:
            conn.execute(text(ddl))


def m004_names_prefix(conn: Connection) -> None:
    """On SQLite: rebuild the names index with prefix indexes (2-6 characters) for type-ahead."""
    from tihub.catalog.schema import NAMES_FTS_DDL

    if conn.dialect.name == "sqlite":
        for name in ("entries_names_ai", "entries_names_ad", "entries_names_au"):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        conn.execute(text("DROP TABLE IF EXISTS entries_names_fts"))
        for ddl in NAMES_FTS_DDL:
            conn.execute(text(ddl))


def m006_knowledge(conn: Connection) -> None:
    """Issue 14 (pictures, deep sync, similarity, updates): a `kind` on previews (concept_image,
    readme, preview, link_page, civitai, local, grid); `file_vectors`, the measured vectors of every
    file tihub has read (local files and deep-synced ones) for the similarity index; and
    `fetch_origins`, which catalogue entry (and which version of it) each fetched file came from,
    for `tihub outdated`."""
    from sqlalchemy import inspect as sa_inspect

    blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    if "kind" not in {c["name"] for c in sa_inspect(conn).get_columns("previews")}:
        conn.execute(text("ALTER TABLE previews ADD COLUMN kind TEXT"))
    conn.execute(
        text(
            f"""
            CREATE TABLE IF NOT EXISTS file_vectors (
                file_id INTEGER PRIMARY KEY REFERENCES files(id),
                sha256 TEXT,
                shapes TEXT NOT NULL,
                data {blob} NOT NULL,
                summary {blob}
            )
            """
        )
    )
    conn.execute(
        text(
            """
            CREATE TABLE IF NOT EXISTS fetch_origins (
                path TEXT PRIMARY KEY,
                sha256 TEXT NOT NULL,
                upstream_sha256 TEXT,
                entry_id INTEGER REFERENCES entries(id),
                source TEXT,
                remote_id TEXT,
                url TEXT,
                version TEXT,
                fetched_at TEXT NOT NULL
            )
            """
        )
    )


def m016_pg_wide_integers(conn: Connection) -> None:
    """On PostgreSQL: sizes and nanosecond mtimes are 64-bit (INTEGER there is 32-bit, and a
    file's mtime_ns overflowed it: `tihub hash` failed with "integer out of range")."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE hash_cache ALTER COLUMN size TYPE BIGINT, ALTER COLUMN mtime_ns TYPE BIGINT"))
        conn.execute(text("ALTER TABLE files ALTER COLUMN size TYPE BIGINT"))


def m016_pg_search(conn: Connection) -> None:
    """On PostgreSQL: the full-text (tsvector) and pg_trgm indexes the search uses."""
    from tihub.catalog.search_pg import DDL

    if conn.dialect.name == "postgresql":
        for ddl in DDL:
            conn.execute(text(ddl))


def m016_record_indexes(conn: Connection) -> None:
    """Verifications and previews by file: `tihub farm` asks "is this file done on this model?"
    for every task."""
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_verifications_file ON verifications (file_id, model_hash)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_previews_file ON previews (file_id, model_hash)"))


def m016_pg_fast_fold(conn: Connection) -> None:
    """On PostgreSQL: `tihub_fold` only lower-cases ASCII text (the same answer, faster ingest)."""
    from tihub.catalog.search_pg import FOLD_DDL

    if conn.dialect.name == "postgresql":
        conn.execute(text(FOLD_DDL))


def m016_pg_words(conn: Connection) -> None:
    """On PostgreSQL: the search index reads words as SQLite's tokenizer does (punctuation splits
    words: "entry-14", "SD 1.5" and a trigger "<easy-neg>" were read otherwise); every entry is
    indexed again."""
    from tihub.catalog.search_pg import REINDEX_DDL

    if conn.dialect.name == "postgresql":
        for ddl in REINDEX_DDL:
            conn.execute(text(ddl))


def m016_pg_pairs(conn: Connection) -> None:
    """On PostgreSQL: the two-character pieces of names and trigger words (`entries_search.pairs`,
    a GIN index), so a two-character piece inside a word ("nt" in "entry") is found, as on
    SQLite; every entry without them gets them."""
    from tihub.catalog.search_pg import PAIRS_BACKFILL, PAIRS_DDL, TRIGGER_DDL

    if conn.dialect.name == "postgresql":
        for ddl in [*PAIRS_DDL, *TRIGGER_DDL, PAIRS_BACKFILL]:
            conn.execute(text(ddl))


def m005_substring_search(conn: Connection) -> None:
    """On SQLite: a suffix index over names and trigger words (substring search, see
    `schema.SUB_DDL`) and a case-blind name index (exact names first). Everywhere: entries without a kind get the one
    their name, triggers, tags or description show (`negative` only)."""
    import json

    from tihub.catalog.kinds import infer_kind
    from tihub.catalog.schema import SUB_DDL

    if conn.dialect.name == "sqlite":
        for ddl in SUB_DDL:
            conn.execute(text(ddl))
    rows = conn.execute(
        text("SELECT id, name, triggers, description, tags FROM entries WHERE kind IS NULL")
    ).all()
    found = []
    for r in rows:
        try:
            trig = json.loads(r.triggers or "{}") or {}
            tags = json.loads(r.tags or "[]") or []
        except ValueError:
            trig, tags = {}, []
        triggers = trig.values() if isinstance(trig, dict) else []
        kind = infer_kind(r.name, [str(t) for t in triggers], r.description, [str(t) for t in tags])
        if kind:
            found.append({"k": kind, "i": r.id})
    if found:
        conn.execute(text("UPDATE entries SET kind = :k WHERE id = :i"), found)


def m005_local_copies(conn: Connection) -> None:
    """Each entry's own copy on disk (`entry_files.local_path`), so the same bytes under two
    names are never attributed to the other name; and the `hash_lookups` cache (Civitai's
    answers about embedding files by sha256)."""
    from tihub.catalog.schema import hash_lookups

    cols = {c["name"] for c in inspect(conn).get_columns("entry_files")}
    if "local_path" not in cols:
        conn.execute(text("ALTER TABLE entry_files ADD COLUMN local_path TEXT"))
    # local entries: their file's path is theirs when it is the path their remote_id names
    conn.execute(
        text(
            "UPDATE entry_files SET local_path = (SELECT f.local_path FROM files f WHERE f.id = entry_files.file_id) "
            "WHERE entry_id IN (SELECT e.id FROM entries e JOIN sources s ON s.id = e.source_id WHERE s.kind = 'local') "
            "AND EXISTS (SELECT 1 FROM files f, entries e WHERE f.id = entry_files.file_id AND e.id = entry_files.entry_id "
            "AND f.local_path IS NOT NULL AND (f.local_path = e.remote_id OR f.local_path LIKE '%/' || e.remote_id))"
        )
    )
    hash_lookups.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("m001_hash_cache", m001_hash_cache),
    ("m002_catalog", m002_catalog),
    ("m003_names_fts", m003_names_fts),
    ("m004_names_prefix", m004_names_prefix),
    ("m005_substring_search", m005_substring_search),
    ("m005_local_copies", m005_local_copies),
    ("m006_knowledge", m006_knowledge),
    ("m016_pg_wide_integers", m016_pg_wide_integers),
    ("m016_pg_search", m016_pg_search),
    ("m016_record_indexes", m016_record_indexes),
    ("m016_pg_fast_fold", m016_pg_fast_fold),
    ("m016_pg_words", m016_pg_words),
    ("m016_pg_pairs", m016_pg_pairs),
]
