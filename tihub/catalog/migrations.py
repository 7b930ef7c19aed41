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


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("m001_hash_cache", m001_hash_cache),
    ("m002_catalog", m002_catalog),
]
