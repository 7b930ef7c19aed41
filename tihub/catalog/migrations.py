"""Named, ordered schema migrations. Append new ones; never edit or reorder applied ones."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text


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

    if "kind" not in {c["name"] for c in sa_inspect(conn).get_columns("previews")}:
        conn.execute(text("ALTER TABLE previews ADD COLUMN kind TEXT"))
    conn.execute(
        text(
            """
            CREATE TABLE IF NOT EXISTS file_vectors (
                file_id INTEGER PRIMARY KEY REFERENCES files(id),
                sha256 TEXT,
                shapes TEXT NOT NULL,
                data BLOB NOT NULL,
                summary BLOB
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


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("m001_hash_cache", m001_hash_cache),
    ("m002_catalog", m002_catalog),
    ("m003_names_fts", m003_names_fts),
    ("m004_names_prefix", m004_names_prefix),
    ("m006_knowledge", m006_knowledge),
]
