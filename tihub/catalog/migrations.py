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


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("m001_hash_cache", m001_hash_cache),
]
