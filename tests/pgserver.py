"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` + `pg_ctl` into a temp
folder, listening on a free loopback port, trust authentication, no root service.

PostgreSQL refuses to run as root; when we are root (CI, this machine) the server runs as the
unprivileged `nobody` user through `runuser`. `TIHUB_TEST_PG` (a `postgresql+psycopg://` URL of a
server someone else started) skips the start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
USER = "tihub"
RUN_AS = "nobody"


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (`initdb`, `pg_ctl`), or None."""
    found = shutil.which(name)
    if found:
        return found
    for d in PG_DIRS:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    if os.environ.get("TIHUB_TEST_PG"):
        return None
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        return "no PostgreSQL server binary (initdb, pg_ctl) on this machine; CI has PostgreSQL 15"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'tihub[postgres]')"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without `runuser`, and PostgreSQL refuses to run as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running server; `url(db)` is the SQLAlchemy URL of one database on it."""

    host: str
    port: int
    datadir: Path | None = None
    _owned: bool = False
    database: str = "postgres"  # the database tests make their schemas in

    def url(self, database: str = "postgres", schema: str | None = None) -> str:
        u = f"postgresql+psycopg://{USER}@{self.host}:{self.port}/{database}"
        if schema:
            u += f"?options=-csearch_path%3D{schema},public"
        return u

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={USER} dbname={database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str) -> str:
        """A fresh database with pg_trgm available; returns its URL."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}"')
        self.execute(f'CREATE DATABASE "{name}"')
        self.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm", name)
        return self.url(name)

    def stop(self) -> None:
        if self._owned and self.datadir is not None:
            _run_pg([pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop"], check=False)
            shutil.rmtree(self.datadir.parent, ignore_errors=True)
            self._owned = False


def _run_pg(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)


def start() -> PgServer:
    """Start a server (or attach to $TIHUB_TEST_PG); the caller stops it with `.stop()`."""
    given = os.environ.get("TIHUB_TEST_PG")
    if given:
        from sqlalchemy.engine import make_url

        u = make_url(given)
        return PgServer(u.host or "127.0.0.1", int(u.port or 5432))
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    top = Path(tempfile.mkdtemp(prefix="tihub-pg-"))
    data = top / "data"
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam(RUN_AS)
        os.chmod(top, 0o755)
        os.chown(top, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    _run_pg([pg_bin("initdb") or "initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"])
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={top} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=128MB")
    _run_pg([pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-o", opts, "-l", str(top / "log"), "-w", "-t", "60",
             "start"])
    server = PgServer("127.0.0.1", port, data, True)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.execute("SELECT 1")
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
