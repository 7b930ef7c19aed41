"""Check and repair the catalogue database (`tihub db check|repair`).

`check(engine)` looks at what a damaged or foreign `catalog.db` gets wrong: SQLite's own
`quick_check`, migrations recorded by a newer tihub, every table and column tihub reads, the
FTS5 search indexes (present, and passing FTS5's `integrity-check`) and the triggers that keep
them current. `repair(engine)` rebuilds what can be rebuilt from the catalogue's own rows: the
two FTS5 indexes and their triggers (a corrupt index table, a dropped one). Damage to the rows
themselves (a renamed column, a corrupt page in `entries`) cannot be rebuilt from inside: the
finding says to restore a backup or start a new catalogue with `tihub sync`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine

from tihub.catalog.db import future_migrations, is_sqlite
from tihub.errors import CatalogError

FTS_TABLES = ("entries_fts", "entries_names_fts")
FTS_TRIGGERS = {
    "entries_fts": ("entries_fts_ai", "entries_fts_au", "entries_fts_ad"),
    "entries_names_fts": ("entries_names_ai", "entries_names_ad", "entries_names_au"),
}
_SHADOWS = ("data", "idx", "content", "docsize", "config")
REBUILD_HINT = "run `tihub db repair`"
RESTORE_HINT = "restore a backup of the catalogue, or move it away and run `tihub sync` to build a new one (files in embeddings/ are kept)"


@dataclass
class Finding:
    """One check: `ok`, else `error` (one sentence) and whether `tihub db repair` fixes it."""

    check: str
    ok: bool
    error: str | None = None
    repairable: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(engine: Engine) -> list[Finding]:
    """Every finding about the database behind `engine` (nothing is written)."""
    findings = [_migrations(engine)]
    if not is_sqlite(engine):
        findings.append(_tables_generic(engine))
        return findings
    try:
        with _raw(engine) as conn:
            findings.append(_integrity(conn))
            findings.append(_tables(conn))
            for table in FTS_TABLES:
                findings.append(_fts(conn, table))
    except sqlite3.DatabaseError as exc:  # e.g. "file is not a database": nothing to look inside
        findings.append(Finding("integrity", False, f"SQLite cannot open the catalogue ({_one(exc)}); {RESTORE_HINT}."))
    return findings


def repair(engine: Engine) -> list[Finding]:
    """Rebuild the FTS indexes and their triggers where a check found them damaged; return the
    findings after the repair. A database from a newer tihub is never written."""
    try:
        future = future_migrations(engine)
    except CatalogError:  # not even the migrations table can be read: nothing to rebuild from
        return check(engine)
    if future:
        raise CatalogError(
            f"The catalogue was written by a newer tihub (migration {future[0]}); upgrade tihub instead of repairing it."
        )
    if not is_sqlite(engine):
        return check(engine)
    before = check(engine)
    tables_ok = all(f.ok for f in before if f.check in ("tables", "migrations")) and any(f.check == "tables" for f in before)
    broken = [f.check.split(":", 1)[1] for f in before if f.check.startswith("fts:") and not f.ok]
    if broken and tables_ok:
        try:
            _rebuild_fts(engine, broken)
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"Rebuilding the search indexes failed ({_one(exc)}); {RESTORE_HINT}.") from None
    engine.dispose()  # pooled connections still hold the old schema
    return check(engine)


# -- the checks ---------------------------------------------------------------------------------


class _raw:
    """A plain sqlite3 connection of the engine (FTS5 commands go straight to the driver)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> sqlite3.Connection:
        self.fairy = self.engine.raw_connection()
        return self.fairy.driver_connection  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self.fairy.close()


def _migrations(engine: Engine) -> Finding:
    try:
        future = future_migrations(engine)
    except CatalogError as exc:
        return Finding("migrations", False, str(exc))
    if future:
        return Finding("migrations", False, f"The catalogue records migrations of a newer tihub ({', '.join(future[:3])}); tihub will not write to it, upgrade tihub.")
    return Finding("migrations", True)


def _integrity(conn: sqlite3.Connection) -> Finding:
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as exc:
        return Finding("integrity", False, f"SQLite cannot check the catalogue ({_one(exc)}); {RESTORE_HINT}.")
    if rows == ["ok"]:
        return Finding("integrity", True)
    shadow = all(any(f"{t}_{s}" in r for t in FTS_TABLES for s in _SHADOWS) for r in rows)
    return Finding("integrity", False, f"SQLite finds the catalogue damaged ({_one(rows[0])}); {REBUILD_HINT if shadow else RESTORE_HINT}.", shadow)


def _expected_columns() -> dict[str, list[str]]:
    from tihub.catalog.schema import CATALOG_TABLES

    out = {t.name: [c.name for c in t.columns] for t in CATALOG_TABLES}
    out["hash_cache"] = ["path", "size", "mtime_ns", "sha256", "old_hash", "extra"]
    return out


def _tables(conn: sqlite3.Connection) -> Finding:
    problems: list[str] = []
    try:
        for table, columns in _expected_columns().items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
            if not have:
                problems.append(f"table {table} is missing")
                continue
            missing = [c for c in columns if c not in have]
            if missing:
                problems.append(f"table {table} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing[:3])}")
    except sqlite3.DatabaseError as exc:
        problems.append(_one(exc))
    if problems:
        return Finding("tables", False, f"The catalogue is not the one this tihub writes ({'; '.join(problems[:3])}); {RESTORE_HINT}.")
    return Finding("tables", True)


def _tables_generic(engine: Engine) -> Finding:
    from sqlalchemy import inspect

    problems: list[str] = []
    insp = inspect(engine)
    for table, columns in _expected_columns().items():
        if not insp.has_table(table):
            problems.append(f"table {table} is missing")
            continue
        have = {c["name"] for c in insp.get_columns(table)}
        missing = [c for c in columns if c not in have]
        if missing:
            problems.append(f"table {table} lacks {', '.join(missing[:3])}")
    if problems:
        return Finding("tables", False, f"The catalogue is not the one this tihub writes ({'; '.join(problems[:3])}); {RESTORE_HINT}.")
    return Finding("tables", True)


def _fts(conn: sqlite3.Connection, table: str) -> Finding:
    name = f"fts:{table}"
    try:
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE name IN (?, ?, ?, ?)", (table, *FTS_TRIGGERS[table])).fetchall())
        if table not in kinds:
            return Finding(name, False, f"The search index {table} is missing; {REBUILD_HINT}.", True)
        lost = [t for t in FTS_TRIGGERS[table] if t not in kinds]
        if lost:
            return Finding(name, False, f"The search index {table} lost its trigger {lost[0]}, so it goes stale; {REBUILD_HINT}.", True)
        conn.execute(f"INSERT INTO {table} ({table}) VALUES ('integrity-check')")
        if table == "entries_fts":  # it stores its own copy of the text: one row per entry
            n_fts = conn.execute("SELECT count(*) FROM entries_fts").fetchone()[0]
            n_entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
            if n_fts != n_entries:
                return Finding(name, False, f"The search index {table} has {n_fts} rows for {n_entries} entries; {REBUILD_HINT}.", True)
    except sqlite3.DatabaseError as exc:
        return Finding(name, False, f"The search index {table} is damaged ({_one(exc)}); {REBUILD_HINT}.", True)
    finally:
        if conn.in_transaction:
            conn.rollback()
    return Finding(name, True)


def _one(exc: object) -> str:
    return " ".join(str(exc).split())[:120].rstrip(".")


# -- the repair ---------------------------------------------------------------------------------


def _rebuild_fts(engine: Engine, tables: list[str]) -> None:
    """Drop the broken FTS tables (through the schema table when FTS5 can no longer open them),
    their shadow tables and triggers, then create and fill them again from `entries`."""
    from tihub.catalog.schema import FTS_DDL, NAMES_FTS_DDL

    ddl = {"entries_fts": FTS_DDL, "entries_names_fts": NAMES_FTS_DDL}
    with _raw(engine) as conn:
        conn.isolation_level = None
        for table in tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute("COMMIT")
            except sqlite3.DatabaseError:  # "vtable constructor failed": remove it from the schema
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("PRAGMA writable_schema = ON")
                conn.execute("DELETE FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
                conn.execute("PRAGMA writable_schema = OFF")
                conn.execute("COMMIT")
    engine.dispose()
    with _raw(engine) as conn:  # a fresh connection reads the schema again
        conn.isolation_level = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in tables:
                for shadow in _SHADOWS:
                    conn.execute(f"DROP TABLE IF EXISTS {table}_{shadow}")
                for trigger in FTS_TRIGGERS[table]:
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                for statement in ddl[table]:
                    conn.execute(statement)
                if table == "entries_fts":
                    conn.execute(
                        "INSERT INTO entries_fts (rowid, name, triggers, title, description, tags, source) "
                        "SELECT e.id, e.name, e.triggers, e.title, e.description, e.tags, s.name FROM entries e "
                        "JOIN sources s ON s.id = e.source_id ORDER BY e.id"
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
