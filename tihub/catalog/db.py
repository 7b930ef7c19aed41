"""Opening the catalogue database and running its migrations.

SQLite (the default, `WORKSPACE/catalog.db`) runs in WAL mode with a busy timeout, and every
write transaction starts with `BEGIN IMMEDIATE` so two tihub processes queue instead of failing
half-way. PostgreSQL (`postgresql://...`, driven by psycopg 3) is the catalogue a team shares:
every write transaction first takes one transaction-scoped advisory lock, so writers queue just
as on SQLite while readers never wait. Any other SQLAlchemy URL works through the same code.

Schema changes are named, ordered functions in `tihub.catalog.migrations.MIGRATIONS`; the names
already applied are recorded in the `_migrations` table. A database that records a migration
this tihub does not know was written by a newer tihub: it is read, never written (every write
transaction refuses it in one sentence). A database SQLite reports damaged, or whose tables are
not the ones tihub reads, is one sentence naming `tihub db check` / `tihub db repair`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from tihub.errors import CatalogError

BUSY_TIMEOUT_MS = 30_000
PG_WRITE_LOCK = 0x7469687562  # "tihub": the advisory lock every PostgreSQL write transaction holds

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_read_only: dict[int, str] = {}  # id(engine) -> why it must not be written (a newer tihub's database)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def open_engine(url: str, *, migrate: bool = True) -> Engine:
    """Return a (cached) engine for `url`, with the schema migrated to the newest version."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            if migrate:
                run_migrations(engine)
            _engines[url] = engine
        return engine


def dispose_all() -> None:
    """Close every cached engine (tests, forks)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
            _read_only.pop(id(engine), None)
        _engines.clear()


def normalize_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs use psycopg 3 (SQLAlchemy would pick psycopg2)."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


def _create(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        extra = " (pip install 'tihub[postgres]')" if url.startswith("postgres") else ""
        raise CatalogError(f"Cannot open the catalogue database {url!r}: {exc}{extra}.") from None
    except (SQLAlchemyError, ValueError) as exc:
        raise CatalogError(f"Cannot open the catalogue database {url!r}: {exc}.") from None
    if is_sqlite(engine):
        _configure_sqlite(engine)
    elif engine.dialect.name == "postgresql":
        _configure_postgresql(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Writers take the write lock up front: no deadlock-prone lock upgrades later.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write", True) else "BEGIN")


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # One writer at a time (as SQLite's BEGIN IMMEDIATE): two syncs that meet on the same
        # file sha256 or source row queue instead of failing on a unique key half-way. The lock
        # ends with the transaction; readers take none and see only committed syncs.
        if conn.info.get("write", True):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def write(engine: Engine) -> AbstractContextManager[Connection]:
    """A write transaction (BEGIN IMMEDIATE on SQLite); commits on success, rolls back on error.
    A database written by a newer tihub is refused here, before anything is written."""
    why = _read_only.get(id(engine))
    if why is not None:
        raise CatalogError(why)
    return _transaction(engine, writing=True)


def read(engine: Engine) -> AbstractContextManager[Connection]:
    """A read-only transaction (plain BEGIN on SQLite, which never blocks writers in WAL mode)."""
    return _transaction(engine, writing=False)


@contextmanager
def _transaction(engine: Engine, writing: bool) -> Iterator[Connection]:
    # conn.info["write"] picks BEGIN IMMEDIATE or BEGIN in _on_begin.
    try:
        with engine.connect() as conn:
            conn.info["write"] = writing
            with conn.begin():
                yield conn
    except (SQLAlchemyError, sqlite3.DatabaseError) as exc:
        raise _catalog_error(exc, engine, writing) from None


# SQLite messages that mean the file is damaged or not the schema tihub wrote (not a busy lock)
_DAMAGE = ("malformed", "vtable constructor failed", "no such table", "no such column", "not a database",
           "fts5:", "corrupt", "has no column", "database disk image")


def _catalog_error(exc: BaseException, engine: Engine, writing: bool) -> CatalogError:
    message = _short(exc)
    where = engine.url.database if is_sqlite(engine) else engine.url.render_as_string(hide_password=True)
    if "not a database" in message.lower():
        return CatalogError(
            f"The catalogue {where} is not a SQLite database ({message.rstrip('.')}); restore a backup, "
            "or move it away and run `tihub sync` to build a new one (files in embeddings/ are kept)."
        )
    if any(m in message.lower() for m in _DAMAGE):
        return CatalogError(
            f"The catalogue {where} is damaged or was written by another program ({message.rstrip('.')}); "
            "run `tihub db check` to see what, then `tihub db repair`."
        )
    return CatalogError(f"The catalogue {'write' if writing else 'read'} failed: {message}.")


def _short(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]


def now() -> str:
    """UTC time as ISO-8601 text (how every timestamp is stored)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def future_migrations(engine: Engine) -> list[str]:
    """Migration names the database records that this tihub does not know (a newer tihub's)."""
    from tihub.catalog.migrations import MIGRATIONS

    known = {name for name, _fn in MIGRATIONS}
    with read(engine) as conn:
        if not _has_migrations_table(conn):
            return []
        return sorted(row[0] for row in conn.execute(text("SELECT name FROM _migrations")) if row[0] not in known)


def _has_migrations_table(conn: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).has_table("_migrations"))


def run_migrations(engine: Engine) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now. A database that
    records migrations this tihub does not know is left as it is and marked read-only."""
    from tihub.catalog.migrations import MIGRATIONS

    future = future_migrations(engine)
    if future:
        _read_only[id(engine)] = (
            f"The catalogue {engine.url.database or engine.url} was written by a newer tihub (it records the migration "
            f"{future[0]}); tihub reads it but will not write to it, so upgrade tihub or use another --db."
        )
        return []
    applied_now: list[str] = []
    with write(engine) as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
        done = {row[0] for row in conn.execute(text("SELECT name FROM _migrations"))}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(conn)
            conn.execute(text("INSERT INTO _migrations (name, applied_at) VALUES (:n, :t)"), {"n": name, "t": now()})
            applied_now.append(name)
    return applied_now
