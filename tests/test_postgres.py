"""PostgreSQL as a catalogue, beyond what the engine-parametrised catalogue tests cover: URL forms,
the 64-bit hash cache (`tihub hash` overflowed a 32-bit column), the full-text + pg_trgm search
contract, the write lock, and the CLI end to end against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import text

from tihub.catalog.db import normalize_url, open_engine, read, write
from tihub.catalog.store import Catalog
from tihub.config import SourceSpec
from tihub.hashing import HashCache
from tihub.sources.base import Candidate, CandidateFile

ROOT = Path(__file__).resolve().parent.parent


def c(rid: str, name: str, **kw) -> Candidate:
    return Candidate(remote_id=rid, name=name, files=[CandidateFile(f"{name}.pt", f"https://example.org/{rid}.pt")], **kw)


def test_url_forms_use_psycopg() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_plain_postgresql_url_opens(pg_url: str) -> None:
    engine = open_engine(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    assert engine.dialect.driver == "psycopg"


def test_hash_cache_keeps_nanosecond_mtimes(pg_url: str, tmp_path: Path) -> None:
    engine = open_engine(pg_url)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    cache = HashCache(engine)
    first = cache.hashes([f])
    with read(engine) as conn:
        mtime_ns = conn.execute(text("SELECT mtime_ns FROM hash_cache")).scalar()
    assert mtime_ns == f.stat().st_mtime_ns > 2**31  # was "integer out of range"
    again = HashCache(engine)
    assert again.hashes([f]) == first and again.misses == 0 and again.hits == 1


NAMES = [
    ("1", "EasyNegative", {"triggers": {"a1111": "EasyNegative"}}),
    ("2", "ng_deepnegative_v1_75t", {}),
    ("3", "bad-hands-5", {}),
    ("4", "badhandv4", {}),
    ("5", "negative", {"title": "the plain one"}),
    ("6", "watercolor", {"description": "nothing negative about it"}),
    ("7", "style-x", {"triggers": {"a1111": "verynegativeword"}}),
    ("8", "café-au-lait", {}),
]


@pytest.fixture
def pg_cat(pg_url: str) -> Catalog:
    cat = Catalog(open_engine(pg_url))
    cat.ingest(SourceSpec("civ", "civitai"), [c(rid, name, **kw) for rid, name, kw in NAMES])
    return cat


def names(rows) -> list[str]:
    return [r["name"] for r in rows]


def test_substrings_in_names_and_triggers_exact_name_first(pg_cat: Catalog) -> None:
    rows = names(pg_cat.search("negative"))
    assert rows[0] == "negative"  # the exact name first
    assert {"EasyNegative", "ng_deepnegative_v1_75t", "style-x", "watercolor"} <= set(rows)
    assert rows.index("EasyNegative") < rows.index("watercolor")  # a name beats a description
    assert rows.index("style-x") < rows.index("watercolor")  # a trigger beats a description
    assert set(names(pg_cat.search("bad"))) == {"bad-hands-5", "badhandv4"}
    assert names(pg_cat.search("easyneg"))[0] == "EasyNegative"
    assert names(pg_cat.search("EASYNEGATIVE")) == ["EasyNegative"]
    assert names(pg_cat.search("cafe")) == ["café-au-lait"]
    assert names(pg_cat.search("neg", limit=0)) == names(pg_cat.search("neg", limit=50))  # bounded == full


def test_bounded_search_still_puts_the_exact_name_first(pg_url: str) -> None:
    cat = Catalog(open_engine(pg_url))
    many = [c(f"m{i}", f"glitter-{i:04d}", description="glitter glitter") for i in range(1500)]
    cat.ingest(SourceSpec("lots", "git"), [*many, c("g", "glitter")])
    rows = cat.search("glitter", limit=5)
    assert names(rows)[0] == "glitter" and len(rows) == 5


def test_writers_queue_readers_do_not(pg_url: str) -> None:
    engine = open_engine(pg_url)
    order: list[str] = []
    held = threading.Event()

    def second_writer() -> None:
        held.wait()
        with write(engine) as conn:
            order.append("second writer in")
            conn.execute(text("SELECT 1"))

    t = threading.Thread(target=second_writer)
    t.start()
    with write(engine) as conn:
        conn.execute(text("SELECT 1"))
        held.set()
        with read(engine) as r:  # a reader is never kept out
            assert r.execute(text("SELECT COUNT(*) FROM entries")).scalar() == 0
        time.sleep(0.5)
        order.append("first writer out")
    t.join(30)
    assert order == ["first writer out", "second writer in"]


def tihub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tihub", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


def test_cli_end_to_end_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    emb = home / "embeddings"
    emb.mkdir(parents=True)
    save_file({"emb_params": np.ones((2, 768), np.float32)}, str(emb / "watercolor.safetensors"))
    save_file({"clip_l": np.ones((1, 768), np.float32), "clip_g": np.ones((1, 1280), np.float32)},
              str(emb / "xl-detail.safetensors"))
    (home / "sources.yaml").write_text("sources:\n  - name: mine\n    kind: local\n    path: embeddings\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TIHUB_HOME": str(home)}
    env.pop("TIHUB_DB", None)
    db = ["--db", pg_url.replace("postgresql+psycopg://", "postgresql://")]
    r = tihub(*db, "sync", env=env)
    assert r.returncode == 0, r.stderr
    r = tihub(*db, "search", "water", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [x["name"] for x in json.loads(r.stdout)] == ["watercolor"]
    r = tihub(*db, "show", "xl-detail", "--json", env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    shown = shown[0] if isinstance(shown, list) else shown
    assert shown["base"] == "sdxl"
    r = tihub(*db, "hash", str(emb / "watercolor.safetensors"), "--json", env=env)
    assert r.returncode == 0, r.stderr  # was: "The catalogue write failed: integer out of range"
    (emb / "xl-detail.safetensors").unlink()
    r = tihub(*db, "sync", "--json", env=env)
    assert r.returncode == 0, r.stderr
    r = tihub(*db, "search", "", "--json", env=env)
    assert [x["name"] for x in json.loads(r.stdout)] == ["watercolor"]  # removed upstream: hidden


def test_a_catalogue_made_before_the_search_migration_is_indexed_by_it(pg_url: str, monkeypatch) -> None:
    from tihub.catalog import migrations
    from tihub.catalog.db import dispose_all, run_migrations

    older = [m for m in migrations.MIGRATIONS if not m[0].startswith("m016_")]
    monkeypatch.setattr(migrations, "MIGRATIONS", older)
    engine = open_engine(pg_url)
    Catalog(engine).ingest(SourceSpec("old", "git"), [c("1", "EasyNegative"), c("2", "watercolor")])
    monkeypatch.undo()
    assert run_migrations(engine) == ["m016_pg_wide_integers", "m016_pg_search", "m016_record_indexes",
                                     "m016_pg_fast_fold", "m016_pg_words", "m016_pg_pairs"]
    assert names(Catalog(engine).search("negative")) == ["EasyNegative"]
    assert names(Catalog(engine).search("ga")) == ["EasyNegative"]
    dispose_all()


def test_a_catalogue_indexed_before_the_pairs_gets_them(pg_url: str) -> None:
    """m016_pg_pairs adds the two-character pieces to a search index made without them."""
    from tihub.catalog.db import dispose_all, run_migrations

    engine = open_engine(pg_url)
    cat = Catalog(engine)
    cat.ingest(SourceSpec("old", "git"), [c("1", "EasyNegative"), c("2", "watercolor")])
    with engine.begin() as conn:  # as it was before the migration
        conn.execute(text("ALTER TABLE entries_search DROP COLUMN pairs"))
        conn.execute(text("DELETE FROM _migrations WHERE name = 'm016_pg_pairs'"))
    assert run_migrations(engine) == ["m016_pg_pairs"]
    assert names(cat.search("ga")) == ["EasyNegative"]
    assert names(cat.search("ol")) == ["watercolor"]
    cat.ingest(SourceSpec("old", "git"), [c("1", "EasyNegative"), c("2", "watercolor"), c("3", "Olive")])
    assert sorted(names(cat.search("ol", limit=0))) == ["Olive", "watercolor"]
    dispose_all()


def _history(r: int) -> list[Candidate]:
    """Round r of a source's listing: 300 entries, some sharing files, some without a sha256, with
    previews; each round renames some, moves some files, drops some and brings back others."""
    out = []
    for i in range(300):
        if (i + r) % 7 == 0:
            continue  # gone this round (removed upstream; back in another round)
        name = f"entry-{i}-v{r}" if i % 5 == r % 5 else f"entry-{i}"
        sha = f"{(i // 2) % 120:064x}" if i % 3 else None  # pairs share a file; every third has no sha
        url = f"https://example.org/{i}/{'new' if r and i % 11 == 0 else 'old'}.pt"
        widths = {"clip_l": 768} if r and i % 4 == 0 else None
        files = [CandidateFile(f"{i}.pt", url, size=1000 + i, sha256=sha, widths=widths,
                               hashes={"AutoV2": f"{i:010x}"} if i % 6 == 0 else {})]
        if i % 13 == 0:
            files.append(CandidateFile(f"{i}-extra.safetensors", f"https://example.org/{i}/x", sha256=f"{500 + i:064x}"))
        previews = [{"url": f"https://example.org/{i}/p{r % 2}.png", "kind": "civitai"}] if i % 9 == 0 else []
        out.append(Candidate(remote_id=str(i), name=name, files=files, previews=previews,
                             title=f"Título {i}" if i % 10 == 0 else None,
                             description=f"round {r} ünïcode, SD 1.5, v1.0-final" if i % 8 == 0 else None,
                             triggers={"a1111": f"trig{i}", "diffusers": f"<easy-neg-{i % 3}>"}, tags=["x", f"t{i % 4}"],
                             base_model="SD 1.5"))
    return out


def test_ingest_history_is_the_same_on_both_engines(pg_url: str, tmp_path: Path) -> None:
    """The PostgreSQL ingest (COPY, set-wise updates) writes exactly what the SQLite one writes,
    through new, changed, moved, removed and revived entries, and the searches agree."""
    cats = {"sqlite": Catalog(open_engine(f"sqlite:///{tmp_path / 'c.db'}")), "pg": Catalog(open_engine(pg_url))}
    results: dict[str, list] = {k: [] for k in cats}
    for r in range(4):
        for k, cat in cats.items():
            results[k].append(cat.ingest(SourceSpec("civ", "civitai"), _history(r), complete=r != 2).as_dict())
            cat.ingest(SourceSpec("other", "git"), [c(str(r), f"other-{r}")])  # ids interleave between sources
    assert results["sqlite"] == results["pg"]
    assert all(any(res[k] for res in results["pg"]) for k in ("new", "updated", "removed", "revived", "unchanged"))

    def dump(cat: Catalog) -> dict[str, list]:
        out = {}
        with read(cat.engine) as conn:
            for table, cols in {
                "entries": "id, source_id, remote_id, name, title, description, kind, tags, base, triggers, "
                "removed_at IS NULL",
                "files": "id, sha256, file_name, size, widths, base, hashes",
                "entry_files": "entry_id, file_id, url, manual, local_path",
                "previews": "entry_id, url, kind",
            }.items():
                out[table] = [tuple(row) for row in conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY 1, 2, 3"))]
        return out

    assert dump(cats["sqlite"]) == dump(cats["pg"])
    # the same set (ranks differ); punctuation splits words on both ("entry-14" was "entry" and "-14"
    # on PostgreSQL, "1.5" one word, "<easy-neg-1>" dropped as an XML tag)
    for q in ("entry", "titulo", "unicode", "trig2", "v3", "ntry", "trig14 entry", "entry-1", "1.5", "sd 1.5",
              "neg", "easy-neg", "v1", "final", "14", "nt"):
        found = {k: names(cat.search(q, limit=0)) for k, cat in cats.items()}
        assert found["sqlite"] and sorted(found["sqlite"]) == sorted(found["pg"]), q
    # a two-character piece inside a word ("14" in "entry-114", "nt" in "entry"): the pair index
    for q in ("14", "nt"):
        found = {k: names(cat.search(q, limit=1000)) for k, cat in cats.items()}
        assert sorted(found["sqlite"]) == sorted(found["pg"]) == sorted(names(cats["sqlite"].search(q, limit=0))), q
    assert names(cats["pg"].search("entry-14"))[0] == names(cats["sqlite"].search("entry-14"))[0] == "entry-14"


def test_fold_in_the_database_is_the_python_fold(pg_url: str) -> None:
    from tihub.catalog.search_pg import fold

    samples = ["EasyNegative", "café-au-lait", "ÅNGSTRÖM", "ＦＵＬＬ ｗｉｄｔｈ", "e\u0301te\u0301", "ﬁ ligature", "", "ǅ"]
    engine = open_engine(pg_url)
    with read(engine) as conn:
        for s in samples:
            assert conn.execute(text("SELECT tihub_fold(:s)"), {"s": s}).scalar() == fold(s), s
        assert conn.execute(text("SELECT tihub_fold(NULL)")).scalar() == ""
