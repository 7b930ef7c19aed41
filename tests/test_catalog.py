"""The catalogue store on real SQLite and real PostgreSQL (the `db_url` parameter): migrations,
WAL, concurrent writers, idempotent ingest, removal marking, sha256 dedupe, local files, models
and records."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text

from tihub.catalog.compat_rules import base_from_widths, fits, normalize_base
from tihub.catalog.db import open_engine, read, run_migrations, write
from tihub.catalog.store import Catalog, fts_query
from tihub.config import SourceSpec, Workspace
from tihub.errors import CatalogError, NotFound
from tihub.formats.model import Embedding
from tihub.sources.base import Candidate, CandidateFile

SHA_A = "a" * 64
SHA_B = "b" * 64


def cand(rid: str, name: str, sha: str | None = None, **kw) -> Candidate:
    files = kw.pop("files", None)
    if files is None:
        files = [CandidateFile(f"{name}.pt", f"https://example.org/{name}.pt", size=100, sha256=sha)]
    return Candidate(remote_id=rid, name=name, files=files, **kw)


@pytest.fixture
def ws(tmp_path: Path, db_url: str) -> Workspace:
    return Workspace.locate(tmp_path / "ws")  # on PostgreSQL, $TIHUB_DB names the database


@pytest.fixture
def sqlite_ws(tmp_path: Path) -> Workspace:
    return Workspace.locate(tmp_path / "ws")


def on_sqlite(cat: Catalog) -> bool:
    return cat.engine.dialect.name == "sqlite"


@pytest.fixture
def cat(ws: Workspace) -> Catalog:
    return Catalog.open(ws)


def dump(cat: Catalog, skip=("last_seen", "last_sync")) -> dict[str, list[tuple]]:
    out = {}
    with read(cat.engine) as conn:
        tables = ["sources", "entries", "files", "entry_files", "previews"]
        for table in tables + (["entries_fts"] if on_sqlite(cat) else []):
            res = conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))
            keys = list(res.keys())
            out[table] = [tuple(v for k, v in zip(keys, row) if k not in skip) for row in res]
    return out


def test_migrations_applied_once_and_recorded(ws: Workspace) -> None:
    engine = open_engine(ws.db_url)
    with read(engine) as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM _migrations ORDER BY name"))]
    tables = set(inspect(engine).get_table_names())
    from tihub.catalog.migrations import MIGRATIONS

    assert names[:4] == ["m001_hash_cache", "m002_catalog", "m003_names_fts", "m004_names_prefix"]
    assert names == sorted(n for n, _ in MIGRATIONS)
    assert {"m005_substring_search", "m005_local_copies", "m006_knowledge", "m016_pg_search",
            "m016_pg_wide_integers", "m016_record_indexes"} <= set(names)
    assert {"sources", "entries", "files", "entry_files", "models", "previews", "verifications",
            "training_runs", "file_vectors", "fetch_origins"} <= tables
    assert engine.dialect.name != "sqlite" or {"entries_fts", "entries_sub"} <= tables
    assert run_migrations(engine) == []  # second run applies nothing
    with read(engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM _migrations")).scalar() == len(MIGRATIONS)


def test_wal_mode_and_foreign_keys(sqlite_ws: Workspace) -> None:
    cat = Catalog.open(sqlite_ws)
    with read(cat.engine) as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar().lower() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_write_locks_up_front_read_does_not_and_errors_are_one_sentence(sqlite_ws: Workspace) -> None:
    engine = open_engine(sqlite_ws.db_url)
    other = sqlite3.connect(engine.url.database, timeout=0, isolation_level=None)
    try:
        with write(engine) as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with write(engine):  # BEGIN IMMEDIATE: the write lock is held before any statement
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        with read(engine) as conn:  # plain BEGIN: a reader never keeps a writer out
            assert conn.execute(text("SELECT COUNT(*) FROM t")).scalar() == 0
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO t VALUES (1)")
            other.execute("COMMIT")
    finally:
        other.close()
    # a table tihub reads that is not there means a damaged or foreign database (issue 11)
    damaged = r"^The catalogue .+ is damaged or was written by another program \(no such table: nope\); run `tihub db check` to see what, then `tihub db repair`\.$"
    with pytest.raises(CatalogError, match=damaged):
        with write(engine) as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            conn.execute(text("INSERT INTO nope VALUES (3)"))
    with pytest.raises(CatalogError, match=damaged):
        with read(engine) as conn:
            conn.execute(text("SELECT * FROM nope"))
    with read(engine) as conn:  # the failed write was rolled back whole
        assert [r[0] for r in conn.execute(text("SELECT x FROM t"))] == [1]


def _writer(url: str, name: str, n: int) -> None:
    from tihub.catalog.store import Catalog as C
    from tihub.catalog.db import open_engine as oe

    c = C(oe(url))
    for round_ in range(3):
        c.ingest(SourceSpec(name, "git"), [cand(f"{name}-{i}", f"{name}{i}-{round_}") for i in range(n)])


def test_two_processes_write_at_once(ws: Workspace, cat: Catalog) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(ws.db_url, f"src{k}", 300)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with read(cat.engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM entries")).scalar() == 600
        if on_sqlite(cat):
            assert conn.execute(text("SELECT COUNT(*) FROM entries_fts")).scalar() == 600
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def test_ingest_is_idempotent(cat: Catalog) -> None:
    spec = SourceSpec("hf", "huggingface")
    cands = [
        cand("r1", "dr-livesey", SHA_A, title="Dr Livesey", tags=["doctor"], triggers={"diffusers": "<dr-livesey>"},
             previews=[{"url": "https://example.org/p.png", "meta": {"Model hash": "7460a6fa"}}]),
        cand("r2", "watercolor", None, base_model="SD 1.5"),
        cand("r3", "manual", None, files=[CandidateFile("x.pt", "https://mega.nz/file/x", manual=True)], status="manual"),
    ]
    r1 = cat.ingest(spec, cands)
    assert (r1.new, r1.updated, r1.removed, r1.total, r1.files_new) == (3, 0, 0, 3, 3)
    before = dump(cat)
    r2 = cat.ingest(spec, cands)
    assert (r2.new, r2.updated, r2.removed, r2.unchanged) == (0, 0, 0, 3)
    assert dump(cat) == before


def test_changed_entry_is_updated(cat: Catalog) -> None:
    spec = SourceSpec("s", "git")
    cat.ingest(spec, [cand("r1", "one", SHA_A, title="old")])
    r = cat.ingest(spec, [cand("r1", "one", SHA_A, title="new title")])
    assert (r.new, r.updated) == (0, 1)
    assert cat.search("new title")[0]["name"] == "one"
    assert cat.search("old") == []  # FTS follows updates
    from tihub.catalog.db import write

    if not on_sqlite(cat):
        return
    with write(cat.engine) as conn:  # both indexes agree with the table (raises if not)
        conn.execute(text("INSERT INTO entries_fts (entries_fts, rank) VALUES ('integrity-check', 1)"))
        conn.execute(text("INSERT INTO entries_names_fts (entries_names_fts, rank) VALUES ('integrity-check', 1)"))


def test_removed_marking_and_revival(cat: Catalog) -> None:
    spec = SourceSpec("s", "git")
    cat.ingest(spec, [cand("r1", "one"), cand("r2", "two")])
    r = cat.ingest(spec, [cand("r1", "one")])
    assert r.removed == 1 and r.total == 1
    e = cat.entry("two")
    assert e["removed_at"] is not None  # marked, never deleted
    assert [x["name"] for x in cat.search("")] == ["one"]
    assert [x["name"] for x in cat.search("", include_removed=True)] == ["one", "two"]
    r = cat.ingest(spec, [cand("r1", "one"), cand("r2", "two")])
    assert r.revived == 1 and r.updated == 1 and r.total == 2
    assert cat.entry("two")["removed_at"] is None
    # a partial listing or kept ids never mark anything removed
    assert cat.ingest(spec, [cand("r1", "one")], complete=False).removed == 0
    assert cat.ingest(spec, [cand("r1", "one")], keep=["r2"]).removed == 0


def test_same_sha256_from_two_sources_is_one_file(cat: Catalog) -> None:
    cat.ingest(SourceSpec("hf", "huggingface"), [cand("sd-concepts-library/x", "x", SHA_A.upper(),
               files=[CandidateFile("learned_embeds.bin", "https://hf/x.bin", sha256=SHA_A.upper(), size=3)])])
    cat.ingest(SourceSpec("civ", "civitai"), [cand("123", "x-civ", None,
               files=[CandidateFile("x.pt", "https://civ/x", sha256=SHA_A, hashes={"AutoV2": "AAAAAAAAAA"},
                                    widths={"clip_l": 768}, vectors=2)])])
    with read(cat.engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM files")).scalar() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM entry_files")).scalar() == 2
    f = cat.file_by_sha256(SHA_A)
    assert f is not None and f["vectors"] == 2 and f["hashes"] == {"AutoV2": "aaaaaaaaaa"} and f["size"] == 3
    e = cat.entry("x")
    assert e["base"] == "sd1"  # measured widths from the other source count
    assert [a["source"] for a in e["also_in"]] == ["civ"]
    # the same sha twice in one listing is also one file
    cat.ingest(SourceSpec("links", "links"), [cand("u1", "y1", SHA_B), cand("u2", "y2", SHA_B)])
    with read(cat.engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM files WHERE sha256 = :s"), {"s": SHA_B}).scalar() == 1


def test_nsfw_from_source_or_candidate(cat: Catalog) -> None:
    cat.ingest(SourceSpec("lewd", "links", nsfw=True), [cand("1", "lewdone")])
    cat.ingest(SourceSpec("mixed", "civitai"), [cand("2", "safeone"), cand("3", "spicy", nsfw=True)])
    assert {r["name"] for r in cat.search("")} == {"safeone"}
    assert {r["name"] for r in cat.search("", nsfw=True)} == {"safeone", "spicy", "lewdone"}


def test_hostile_names_are_stored_verbatim(cat: Catalog) -> None:
    evil = "'); DROP TABLE entries;--"
    cat.ingest(SourceSpec("s", "links"), [cand("1", evil, description='"quoted" AND( NEAR *')])
    assert cat.entry(evil)["name"] == evil
    assert cat.search("DROP TABLE")[0]["name"] == evil


def _emb(width_map: dict[str, int], **kw) -> Embedding:
    return Embedding(name="e", vectors={k: np.zeros((2, w), np.float32) for k, w in width_map.items()}, **kw)


def test_upsert_local_file_and_forget(ws: Workspace, cat: Catalog) -> None:
    ws.ensure()
    p = ws.embeddings_dir / "bad-hands.safetensors"
    p.write_bytes(b"x" * 10)
    fid = cat.upsert_local_file(p, _emb({"clip_l": 768}, step=500, sd_checkpoint="7460a6fa"), SHA_A)
    e = cat.entry("bad-hands")
    assert e["source"] == "local" and e["local"] and e["files"][0]["id"] == fid
    assert e["files"][0]["local_path"] == str(p.resolve()) and e["files"][0]["step"] == 500
    assert cat.search("", local=True)[0]["name"] == "bad-hands"
    # the same file reached from a remote source: one row, linked to both
    cat.ingest(SourceSpec("hf", "huggingface"), [cand("r", "bad-hands-hf", SHA_A)])
    assert cat.entry("bad-hands-hf")["local"]
    # linking to an existing entry
    fid2 = cat.upsert_local_file(p, _emb({"clip_l": 768}), SHA_A, entry_id=cat.entry("bad-hands-hf")["id"])
    assert fid2 == fid
    cat.forget_local(p)
    assert cat.search("", local=True) == []
    assert cat.entry("bad-hands")["removed_at"] is not None
    assert cat.files_for("bad-hands-hf")[0]["sha256"] == SHA_A


def test_models_by_any_hash(cat: Catalog) -> None:
    sha = "7460a6fa" + "0" * 56
    mid = cat.add_model("sd15", sha, None, "7460a6fa", "sd1", {"clip_l": 768}, "hashed")
    assert cat.find_model(sha)["id"] == mid
    assert cat.find_model(sha[:10].upper())["id"] == mid  # AutoV2
    assert cat.find_model("[7460A6FA]")["id"] == mid  # old hash
    assert cat.find_model("deadbeef") is None
    assert cat.find_model("not a hash") is None
    assert cat.add_model("sd15-renamed", sha, None, None, None, None, "civitai") == mid  # upsert
    assert cat.find_model(sha)["family"] == "sd1"


def test_records_show_up_in_entry(cat: Catalog) -> None:
    cat.add_model("sdxl-base", "c" * 64, None, None, "sdxl", None, "hashed")
    cat.ingest(SourceSpec("s", "git"), [cand("1", "thing", SHA_A,
               files=[CandidateFile("thing.pt", "https://x/thing.pt", sha256=SHA_A, widths={"clip_l": 768},
                                    sd_checkpoint="cccccccccc", sd_checkpoint_name="sdxl-base")])])
    e = cat.entry("thing")
    fid = e["files"][0]["id"]
    cat.add_preview(entry_id=e["id"], url="https://x/p0.png")
    pid = cat.add_preview(entry_id=e["id"], path=Path("/tmp/p.png"), model_hash="7460a6fa", params={"seed": 1})
    vid = cat.add_verification(entry_id=e["id"], file_id=fid, model_hash="abc", model_name="sd15", result="ok",
                               details={"similarity": 0.9}, grid_path=Path("/tmp/g.png"))
    tid = cat.add_training_run(entry_id=e["id"], file_id=fid, settings={"lr": 0.005}, pictures=12,
                               loss_csv=Path("/tmp/l.csv"), checkpoints=["a.pt"])
    e = cat.entry(e["id"])

    def rec(kind: str, rid: int) -> dict:
        row = next(r for r in e[kind] if r["id"] == rid)
        assert row.pop("created_at")
        return row

    assert pid == 2 and rec("previews", pid) == {
        "id": pid, "entry_id": e["id"], "file_id": None, "url": None, "path": "/tmp/p.png",
        "model_hash": "7460a6fa", "params": {"seed": 1}, "kind": None}
    assert rec("verifications", vid) == {
        "id": vid, "entry_id": e["id"], "file_id": fid, "model_hash": "abc", "model_name": "sd15",
        "result": "ok", "details": {"similarity": 0.9}, "grid_path": "/tmp/g.png"}
    assert rec("training_runs", tid) == {
        "id": tid, "entry_id": e["id"], "file_id": fid, "settings": {"lr": 0.005}, "pictures": 12,
        "loss_csv": "/tmp/l.csv", "loss_png": None, "checkpoints": ["a.pt"]}
    (c,) = e["compat"]
    assert {k: c[k] for k in ("model", "family", "sha256", "autov2", "fit")} == {
        "model": "sdxl-base", "family": "sdxl", "sha256": "c" * 64, "autov2": "c" * 10, "fit": "partial"}
    assert {a: v["fit"] for a, v in c["apps"].items()} == {  # an SD1 embedding on SDXL, per app
        "a1111": "wont-load", "forge": "wont-load", "comfyui": "partial", "invokeai": "wont-load", "diffusers": "partial"}
    assert "A1111 lists it as skipped" in c["apps"]["a1111"]["reason"]
    assert "ComfyUI applies it to CLIP-L only" in c["apps"]["comfyui"]["reason"]


def test_entry_lookup(cat: Catalog) -> None:
    cat.ingest(SourceSpec("hf", "huggingface"), [cand("r", "dr-livesey", triggers={"diffusers": "<dr-livesey-token>"})])
    eid = cat.entry("dr-livesey")["id"]
    assert cat.entry(str(eid))["id"] == eid
    assert cat.entry(f"#{eid}")["id"] == eid
    assert cat.entry("DR-LIVESEY")["id"] == eid
    assert cat.entry("<dr-livesey-token>")["id"] == eid
    with pytest.raises(NotFound, match="tihub search"):
        cat.entry("nothing-like-this")
    with pytest.raises(NotFound):
        cat.entry("#999")


def test_fts_query_is_always_safe() -> None:
    assert fts_query("") is None
    assert fts_query('" * ( : ^') is None
    assert fts_query('bad "hands') == '"bad" "hands" *'
    assert fts_query('AND( NEAR') == '"AND" "NEAR" *'


def test_family_rules() -> None:
    assert normalize_base("SD 1.5") == "sd1"
    assert normalize_base("Stable Diffusion v1.4") == "sd1"
    assert normalize_base("Waifu Diffusion v1.3") == "sd1"
    assert normalize_base("NAI") == "sd1"
    assert normalize_base("SD 2.1 768") == "sd2"
    assert normalize_base("SDXL 1.0") == "sdxl"
    assert normalize_base("Pony") == "sdxl"
    assert normalize_base("Illustrious") == "sdxl"
    assert normalize_base("Flux.1 D") == "unknown"
    assert normalize_base(None) == "unknown"
    assert base_from_widths({"clip_l": 768, "clip_g": 1280}) == "sdxl"
    assert base_from_widths({"clip_h": 1024}) == "sd2"
    assert fits("sd1", "sd1") == "same-family"
    assert fits("sd1", "sdxl") == "partial"
    assert fits("sd2", "sd1") == "wont-load"
    assert fits("sdxl", "sd1") == "wont-load"
    assert fits("unknown", "sd1") == "unknown"
    sha = "7460a6fa12" + "0" * 54
    assert fits("sd1", "sd1", "7460a6fa12", [sha]) == "trained-on"
    assert fits("sd1", "sd1", "3e1b8a5c", [sha, "7460a6fa12", "3e1b8a5c"]) == "trained-on"
    assert fits("sd1", "sd1", "deadbeef", [sha]) == "same-family"
