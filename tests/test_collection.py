"""The local collection: list (with its per-file index), import, remove, export."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fileserver import embedding_bytes
from tihub import collection
from tihub.catalog.db import open_engine
from tihub.catalog.store import Catalog
from tihub.collection import export, find_local, import_file, list_collection, remove, scan, trigger_for
from tihub.config import SourceSpec, Workspace
from tihub.errors import NotFound
from tihub.formats import read_embedding
from tihub.sources.base import Candidate, CandidateFile


@pytest.fixture
def ws(tmp_path) -> Workspace:
    w = Workspace.locate(tmp_path / "home")
    w.ensure()
    return w


@pytest.fixture
def catalog(ws) -> Catalog:
    return Catalog(open_engine(ws.db_url), ws)


def put(folder: Path, rel: str, data: bytes) -> Path:
    p = folder / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_list_describes_files_and_problems(ws, catalog):
    e = ws.embeddings_dir
    put(e, "a.safetensors", embedding_bytes(name="a"))
    put(e, "styles/b.pt", embedding_bytes("a1111", name="b", sd_checkpoint="925997e9"))
    put(e, "sd2/c.pt", embedding_bytes("a1111", widths={"clip_h": 1024}, vectors=3))
    put(e, "xl/d.safetensors", embedding_bytes(widths={"clip_l": 768, "clip_g": 1280}))
    put(e, "dup/a.pt", embedding_bytes("a1111", name="a", seed=4))  # same trigger as a.safetensors
    put(e, "broken.pt", b"PK\x03\x04not really a zip")
    put(e, "page.bin", b"<!DOCTYPE html><html>login</html>")
    put(e, "a.preview.png", b"\x89PNG\r\n\x1a\n")  # previews are not embeddings: skipped
    put(e, ".hidden.pt", b"x")
    put(e, "notes.txt", b"x")
    rows = {r["path"]: r for r in list_collection(ws, catalog)}
    assert sorted(rows) == ["a.safetensors", "broken.pt", "dup/a.pt", "page.bin", "sd2/c.pt", "styles/b.pt", "xl/d.safetensors"]
    assert (rows["a.safetensors"]["base"], rows["a.safetensors"]["vectors"]) == ("sd1", 2)
    assert rows["sd2/c.pt"]["base"] == "sd2" and rows["sd2/c.pt"]["vectors"] == 3
    assert rows["xl/d.safetensors"]["base"] == "sdxl"
    assert rows["styles/b.pt"]["trained_on"].startswith("NovelAI") and "925997e9" in rows["styles/b.pt"]["trained_on"]
    assert any("duplicate trigger name 'a'" in p for p in rows["a.safetensors"]["problems"])
    assert any("also a.safetensors" in p for p in rows["dup/a.pt"]["problems"])
    assert rows["broken.pt"]["problems"] and rows["broken.pt"]["base"] is None
    assert "HTML page" in rows["page.bin"]["problems"][0]
    assert "corrupt" in rows["broken.pt"]["problems"][0]
    assert rows["styles/b.pt"]["problems"] == []
    assert rows["a.safetensors"]["sha256"] == hashlib.sha256((e / "a.safetensors").read_bytes()).hexdigest()


def test_relisting_unchanged_files_reads_nothing(ws, monkeypatch):
    e = ws.embeddings_dir
    for i in range(5):
        put(e, f"s/{i}.safetensors", embedding_bytes(name=str(i), seed=i))
    first = list_collection(ws)
    calls = []
    real = collection.describe
    monkeypatch.setattr(collection, "describe", lambda p: calls.append(p) or real(p))
    assert list_collection(ws) == first
    assert calls == []
    # a changed file (size or mtime) is read again, per file
    p = e / "s" / "3.safetensors"
    p.write_bytes(embedding_bytes(name="3", vectors=5))
    rows = {r["path"]: r for r in list_collection(ws)}
    assert [Path(c).name for c in calls] == ["3.safetensors"] and rows["s/3.safetensors"]["vectors"] == 5
    # a deleted file leaves the list and the index
    os.unlink(e / "s" / "0.safetensors")
    assert "s/0.safetensors" not in {r["path"] for r in list_collection(ws)}
    assert len(calls) == 1


def test_scan_without_index(tmp_path):
    put(tmp_path, "x.safetensors", embedding_bytes())
    assert [r["path"] for r in scan(tmp_path)] == ["x.safetensors"]


def _ingest(catalog, data: bytes, name="cat-toy", file_name="learned_embeds.bin"):
    spec = SourceSpec(name="hf", kind="huggingface")
    f = CandidateFile(file_name, "https://huggingface.co/x/resolve/main/" + file_name, len(data), hashlib.sha256(data).hexdigest())
    catalog.ingest(spec, [Candidate(remote_id=name, name=name, files=[f])])


def test_import_matches_by_sha256_and_names_after_entry(ws, catalog, tmp_path):
    data = embedding_bytes("diffusers-bin", name="tok")
    _ingest(catalog, data)
    src = put(tmp_path / "dl", "learned_embeds.bin", data)
    r = import_file(src, ws.embeddings_dir, catalog)
    assert r.status == "imported", r.error
    assert r.matched_by == "sha256" and r.entry == "cat-toy"
    assert r.path.name == "tok.bin"  # the token, never learned_embeds
    assert r.path.read_bytes() == data and src.exists()
    f = catalog.file_by_sha256(hashlib.sha256(data).hexdigest())
    assert f["local_path"] == str(r.path)
    row = {x["path"]: x for x in list_collection(ws, catalog)}["tok.bin"]
    assert row["entry"] == "cat-toy" and row["source"] == "hf"
    again = import_file(src, ws.embeddings_dir, catalog)
    assert again.status == "exists"


def test_import_matches_by_name_and_refuses_non_embeddings(ws, catalog, tmp_path):
    _ingest(catalog, b"other bytes", name="bad-artist", file_name="bad-artist.pt")
    src = put(tmp_path / "dl", "bad-artist.pt", embedding_bytes("a1111", name="bad-artist"))
    r = import_file(src, ws.embeddings_dir, catalog)
    assert r.status == "imported" and r.matched_by == "name" and r.entry == "bad-artist"
    html = put(tmp_path / "dl", "x.pt", b"<html><title>Sign in</title></html>")
    bad = import_file(html, ws.embeddings_dir, catalog)
    assert bad.status == "failed" and "x.pt" in bad.error
    missing = import_file(tmp_path / "nope.pt", ws.embeddings_dir, catalog)
    assert missing.status == "failed" and "not a file" in missing.error
    assert sorted(p.name for p in ws.embeddings_dir.iterdir()) == ["bad-artist.pt"]


def test_import_as_safetensors_converts_pickles(ws, tmp_path):
    src = put(tmp_path, "thing.pt", embedding_bytes("a1111", name="thing", sd_checkpoint="7460a6fa"))
    r = import_file(src, ws.embeddings_dir, None, convert="safetensors")
    assert r.status == "imported" and r.path.name == "thing.safetensors"
    emb = read_embedding(r.path)
    assert emb.container == "safetensors" and emb.vector_count == 2


def test_remove_deletes_and_marks_not_local(ws, catalog, tmp_path):
    data = embedding_bytes(name="gone")
    src = put(tmp_path, "gone.safetensors", data)
    r = import_file(src, ws.embeddings_dir, catalog)
    sha = hashlib.sha256(data).hexdigest()
    assert catalog.file_by_sha256(sha)["local_path"]
    p = remove(ws, "GONE", catalog)
    assert not p.exists() and catalog.file_by_sha256(sha)["local_path"] is None
    with pytest.raises(NotFound, match="tihub list"):
        remove(ws, "gone", catalog)
    assert r.path == p


def test_find_local_ambiguous_and_by_path(ws):
    put(ws.embeddings_dir, "a/x.pt", embedding_bytes("a1111"))
    put(ws.embeddings_dir, "b/x.pt", embedding_bytes("a1111", seed=2))
    with pytest.raises(NotFound, match="several files"):
        find_local(ws.embeddings_dir, "x")
    assert find_local(ws.embeddings_dir, "b/x.pt").parent.name == "b"


def test_export_layouts_and_triggers(ws, tmp_path):
    e = ws.embeddings_dir
    put(e, "neg.pt", embedding_bytes("a1111", name="neg"))
    put(e, "xl.safetensors", embedding_bytes(widths={"clip_l": 768, "clip_g": 1280}))
    put(e, "card.png", embedding_bytes("png", name="card"))
    out = tmp_path / "apps"
    a = export(ws, ["neg", "card"], out / "webui", "a1111")
    assert [(x.status, x.path.relative_to(out / "webui").as_posix(), x.trigger) for x in a] == [
        ("exported", "embeddings/neg.pt", "neg"),
        ("exported", "embeddings/card.png", "card"),
    ]
    c = export(ws, ["neg", "card"], out / "comfy", "comfyui")
    assert [x.path.relative_to(out / "comfy").as_posix() for x in c] == ["models/embeddings/neg.pt", "models/embeddings/card.safetensors"]
    assert c[0].trigger == "embedding:neg"
    assert read_embedding(c[1].path).vector_count == 2
    i = export(ws, ["neg", "xl"], out / "invoke", "invokeai")
    assert [x.path.relative_to(out / "invoke").as_posix() for x in i] == ["models/sd-1/embedding/neg.pt", "models/sdxl/embedding/xl.safetensors"]
    assert i[1].trigger == "<xl>"
    again = export(ws, ["neg"], out / "webui", "a1111")
    assert again[0].status == "exists"
    missing = export(ws, ["nope"], out / "webui", "a1111")
    assert missing[0].status == "failed" and "tihub list" in missing[0].error
    assert trigger_for("comfyui", "a") == "embedding:a"
