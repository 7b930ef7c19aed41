"""A damaged or foreign catalog.db (issue 11, item 11): `search` says so in one sentence naming
`tihub db repair`; `tihub db check` finds each kind of damage; `tihub db repair` rebuilds the
search indexes (and says when it cannot); a database from a newer tihub is read, never written."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fileserver import embedding_bytes

ROOT = Path(__file__).resolve().parent.parent


def tihub(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("TIHUB_DB", None)
    return subprocess.run([sys.executable, "-m", "tihub", "--home", str(home), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def good_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("good")
    for name in ("owlwing", "catpaw", "foxtail"):
        f = home / f"{name}.safetensors"
        f.write_bytes(embedding_bytes("safetensors", name=name, seed=len(name)))
        assert tihub(home, "import", str(f)).returncode == 0
    assert "owlwing" in tihub(home, "search", "owlwing").stdout
    return home / "catalog.db"


def damaged(good_db: Path, tmp_path: Path, sql: str) -> Path:
    home = tmp_path / "ws"
    home.mkdir()
    shutil.copy(good_db, home / "catalog.db")
    con = sqlite3.connect(home / "catalog.db")
    con.execute(sql)
    con.commit()
    con.close()
    return home


DAMAGE = {
    "corrupt-fts": ("UPDATE entries_fts_data SET block = X'0102030405' WHERE id > 1", True),
    "dropped-fts": ("DROP TABLE entries_fts", True),
    "corrupt-names-fts": ("DELETE FROM entries_names_fts_data", True),
    "dropped-trigger": ("DROP TRIGGER entries_fts_ai", True),
    "renamed-column": ("ALTER TABLE entries RENAME COLUMN title TO title2", False),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_one_sentence_then_checked_and_repaired(kind: str, good_db: Path, tmp_path: Path) -> None:
    sql, repairable = DAMAGE[kind]
    home = damaged(good_db, tmp_path, sql)
    search = tihub(home, "search", "owlwing")
    if kind != "dropped-trigger":  # a lost trigger only makes the index go stale: search still works
        assert search.returncode == 1 and "internal error" not in search.stderr, search.stderr
        assert "tihub db repair" in search.stderr and search.stderr.count("\n") == 1, search.stderr
    check = tihub(home, "db", "check", "--json")
    assert check.returncode == 1
    rows = json.loads(check.stdout)
    bad = [r for r in rows if not r["ok"]]
    assert bad and all(r["error"] and "\n" not in r["error"] for r in bad), rows
    assert all(r["repairable"] == repairable for r in bad), rows
    repair = tihub(home, "db", "repair")
    if repairable:
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert tihub(home, "db", "check").returncode == 0
        found = tihub(home, "search", "owlwing")
        assert found.returncode == 0 and "owlwing" in found.stdout, found.stdout + found.stderr
        assert "catpaw" in tihub(home, "search", "catpaw").stdout
        # the rebuilt triggers keep the index current
        f = home / "newmoon.safetensors"
        f.write_bytes(embedding_bytes("safetensors", name="newmoon", seed=9))
        assert tihub(home, "import", str(f)).returncode == 0
        assert "newmoon" in tihub(home, "search", "newmoon").stdout
    else:
        assert repair.returncode == 1 and "restore a backup" in repair.stdout, repair.stdout + repair.stderr


def test_a_healthy_catalogue_checks_clean(good_db: Path, tmp_path: Path) -> None:
    home = damaged(good_db, tmp_path, "SELECT 1")
    out = tihub(home, "db", "check", "--json")
    assert out.returncode == 0 and all(r["ok"] for r in json.loads(out.stdout))
    fresh = tmp_path / "fresh"  # no catalogue yet: a new, healthy one
    out = tihub(fresh, "db", "check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_database_from_a_newer_tihub_is_read_but_never_written(good_db: Path, tmp_path: Path) -> None:
    home = damaged(good_db, tmp_path, "INSERT INTO _migrations VALUES ('m999_from_the_future', '2030-01-01T00:00:00Z')")
    before = (home / "catalog.db").read_bytes()
    found = tihub(home, "search", "owlwing")
    assert found.returncode == 0 and "owlwing" in found.stdout, found.stderr
    f = home / "newmoon.safetensors"
    f.write_bytes(embedding_bytes("safetensors", name="newmoon", seed=9))
    imp = tihub(home, "import", str(f))
    assert imp.returncode == 1 and "newer tihub" in (imp.stdout + imp.stderr), imp.stdout + imp.stderr
    assert "internal error" not in imp.stderr
    con = sqlite3.connect(home / "catalog.db")
    assert con.execute("SELECT count(*) FROM entries WHERE name = 'newmoon'").fetchone()[0] == 0
    con.close()
    check = tihub(home, "db", "check")
    assert check.returncode == 1 and "newer tihub" in check.stdout
    repair = tihub(home, "db", "repair")
    assert repair.returncode == 1 and "newer tihub" in repair.stderr
    repair = tihub(home, "db", "repair", "--json")
    answer = json.loads(repair.stdout)
    assert repair.returncode == 1 and answer["ok"] is False and "newer tihub" in answer["error"]
    assert before  # the file was only read


def test_a_file_that_is_not_a_database_is_one_sentence_everywhere(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    (home / "catalog.db").write_bytes(bytes(range(256)) * 20)
    for args in (("search", "x"), ("db", "check"), ("db", "repair")):
        out = tihub(home, *args)
        text = out.stdout + out.stderr
        assert out.returncode == 1 and "internal error" not in text and "not a SQLite database" in text, text


def test_postgresql_catalogues_are_checked_and_future_ones_never_written(pg_url: str) -> None:
    from sqlalchemy import text

    from tihub.catalog.db import dispose_all, open_engine, read, write
    from tihub.catalog.health import check
    from tihub.errors import CatalogError

    engine = open_engine(pg_url)
    assert all(f.ok for f in check(engine)), check(engine)
    with write(engine) as conn:
        conn.execute(text("INSERT INTO _migrations (name, applied_at) VALUES ('m999_from_the_future', 'x')"))
    dispose_all()
    engine = open_engine(pg_url)  # opened again: recognised as a newer tihub's catalogue
    with read(engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM _migrations")).scalar() >= 1
    with pytest.raises(CatalogError, match="newer tihub"):
        with write(engine) as conn:
            conn.execute(text("SELECT 1"))
    bad = [f for f in check(engine) if not f.ok]
    assert [f.check for f in bad] == ["migrations"]
    dispose_all()
