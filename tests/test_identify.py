"""Identify what the user has: local files recognised by sha256 in the catalogue (any source)
and on Civitai (bulk by-hash, cached, misses expiring), with source, page and trigger words;
exact duplicates (the same bytes under two names) shown as such and never attributed to the
other name. Held out: real files from the shared corpus."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fileserver import embedding_bytes
from servers.civitai import CivitaiAPI
from tihub.catalog.store import Catalog
from tihub.cli import cli
from tihub.config import SourceSpec, Workspace
from tihub.sources.base import Candidate, CandidateFile

EASYNEG = "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/easynegative.safetensors"
BAD_ARTIST = "mayaru-ai__stable-diffusion-bestconfig/embeddings/bad-artist.pt"
HANDS_A = "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/bad-hands-5.pt"
HANDS_B = "mayaru-ai__stable-diffusion-bestconfig/embeddings/bad-hands-5.pt"


def run(*args: str, ok: bool = True):
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def version(vid: int, mid: int, name: str, sha256: str, words: list[str]) -> dict:
    """A Civitai model version as by-hash answers it (real field names)."""
    return {
        "id": vid, "modelId": mid, "name": "v1.0", "baseModel": "SD 1.5", "trainedWords": words,
        "model": {"name": name, "type": "TextualInversion", "nsfw": False, "poi": False},
        "files": [{"id": vid * 10, "name": f"{name}.pt", "type": "Model", "primary": True,
                   "hashes": {"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper()}}],
    }


@pytest.fixture
def civitai(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TIHUB_OFFLINE", raising=False)
    with CivitaiAPI(n_models=1) as api:
        (home / "sources.yaml").write_text(
            f"sources:\n  - name: civitai\n    kind: civitai\n    url: {api.api}\n    allow_private: true\n", encoding="utf-8")
        yield api


def test_catalogue_and_civitai_identify_real_files(corpus: Path, home: Path, civitai: CivitaiAPI) -> None:
    emb = home / "embeddings"
    for rel in (EASYNEG, BAD_ARTIST, HANDS_A):
        shutil.copy(corpus / rel, emb / Path(rel).name)
    mine = emb / "my-own.safetensors"
    mine.write_bytes(embedding_bytes(name="my-own", seed=7))
    # the catalogue knows easynegative from a synced source (its sha256, as HF LFS oids give it)
    cat = Catalog.open(Workspace.locate(home))
    cat.ingest(SourceSpec("hf-mirror", "huggingface"), [Candidate(
        remote_id="gsdf/EasyNegative", name="EasyNegative", page_url="https://hf.example/gsdf/EasyNegative",
        triggers={"a1111": "EasyNegative"},
        files=[CandidateFile("EasyNegative.safetensors", "https://hf.example/x", sha256=sha(emb / "easynegative.safetensors"))])])
    # Civitai knows bad-artist
    civitai.versions.append(version(5001, 50, "bad-artist", sha(emb / "bad-artist.pt"), ["bad-artist", "bad_artist"]))

    rows = {r["name"]: r for r in json.loads(run("list", "--json").output)}
    e = rows["easynegative"]
    assert (e["identified"], e["entry"], e["source"], e["page_url"]) == (
        "catalog", "EasyNegative", "hf-mirror", "https://hf.example/gsdf/EasyNegative")
    assert e["triggers"] == ["EasyNegative"]
    b = rows["bad-artist"]
    assert (b["identified"], b["entry"], b["source"]) == ("civitai", "bad-artist v1.0", "civitai")
    assert b["page_url"] == f"{civitai.url}/models/50?modelVersionId=5001"
    assert b["triggers"] == ["bad-artist", "bad_artist"]
    assert rows["bad-hands-5"]["identified"] is None and rows["my-own"]["identified"] is None
    # one bulk request with the full sha256 of every file the catalogue did not know; no short hash
    assert len(civitai.bulk_requests) == 1 and sorted(civitai.bulk_requests[0]) == sorted(
        sha(emb / n) for n in ("bad-artist.pt", "bad-hands-5.pt", "my-own.safetensors"))
    text = run("list").output
    assert "bad-artist v1.0 (civitai)" in text and "triggers: bad-artist, bad_artist" in text
    assert "no match" in text and "2 matching nothing in the catalogue or on Civitai." in text
    # answers and misses are cached: listing again asks nothing
    run("list", "--json")
    assert len(civitai.bulk_requests) == 1
    # a miss expires: asked again after a week
    with cat.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE hash_lookups SET checked_at = '2000-01-01T00:00:00Z' WHERE found = 0")
    run("list", "--json")
    assert len(civitai.bulk_requests) == 2 and len(civitai.bulk_requests[1]) == 2
    assert "matching nothing in the catalogue." in run("list", "--offline").output


def test_import_says_what_a_file_is_or_that_nothing_matches(home: Path, civitai: CivitaiAPI, tmp_path: Path) -> None:
    known = tmp_path / "downloaded.safetensors"
    known.write_bytes(embedding_bytes(name="x", seed=1))
    civitai.versions.append(version(6001, 60, "Fancy Style", sha(known), ["fancystyle"]))
    out = run("import", str(known)).output
    assert "it is 'Fancy Style v1.0' from civitai" in out and "/models/60?modelVersionId=6001" in out
    assert "triggers: fancystyle" in out
    other = tmp_path / "mystery.safetensors"
    other.write_bytes(embedding_bytes(name="y", seed=2))
    out = run("import", str(other)).output
    assert "matches nothing in the catalogue or on Civitai" in out
    res = json.loads(run("import", str(known), "--name", "again", "--json").output)
    assert res[0]["identified"] == "civitai" and res[0]["triggers"] == ["fancystyle"]


def test_many_files_are_asked_in_bulk_chunks_of_100(home: Path, civitai: CivitaiAPI) -> None:
    for i in range(105):
        (home / "embeddings" / f"e{i:03d}.safetensors").write_bytes(embedding_bytes(name=f"e{i}", seed=100 + i, vectors=1))
    rows = json.loads(run("list", "--json").output)
    assert len(rows) == 105 and all(r["identified"] is None for r in rows)
    assert [len(b) for b in civitai.bulk_requests] == [100, 5]
    assert all(r.method == "POST" for r in civitai.server.requests if "by-hash" in r.path)


def test_exact_duplicates_keep_their_own_names(corpus: Path, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIHUB_OFFLINE", "1")
    # a real collection: the same EasyNegative saved twice under two names, and two different
    # files both called bad-hands-5 (same name, different bytes: not exact duplicates)
    src = tmp_path / "dl"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    shutil.copy(corpus / EASYNEG, src / "easynegative.safetensors")
    shutil.copy(corpus / EASYNEG, src / "EasyNeg-copy.safetensors")
    out = run("import", str(src / "easynegative.safetensors"), str(src / "EasyNeg-copy.safetensors")).output
    assert "the same bytes as" in out and out.count("easynegative.safetensors (exact duplicate)") == 1
    for sub, rel in (("a", HANDS_A), ("b", HANDS_B)):
        (home / "embeddings" / sub).mkdir()
        shutil.copy(corpus / rel, home / "embeddings" / sub / "bad-hands-5.pt")

    rows = {Path(r["path"]).relative_to(home / "embeddings").as_posix(): r for r in json.loads(run("list", "--json").output)}  # `path` is the full path
    a, b = rows["easynegative.safetensors"], rows["EasyNeg-copy.safetensors"]
    assert a["duplicates"] == ["EasyNeg-copy.safetensors"] and b["duplicates"] == ["easynegative.safetensors"]
    assert (a["entry"], b["entry"]) == ("easynegative", "EasyNeg-copy")  # never the other name's entry
    assert rows["a/bad-hands-5.pt"]["duplicates"] == [] and rows["b/bad-hands-5.pt"]["duplicates"] == []
    assert any("duplicate trigger name" in p for p in rows["a/bad-hands-5.pt"]["problems"])
    assert "the same bytes as EasyNeg-copy.safetensors (exact duplicate)" in run("list").output

    [ea] = json.loads(run("show", "easynegative", "--json").output)  # show --json: a list
    [eb] = json.loads(run("show", "EasyNeg-copy", "--json").output)
    assert ea["files"][0]["path"].endswith("/easynegative.safetensors")
    assert eb["files"][0]["path"].endswith("/EasyNeg-copy.safetensors")
    assert [d["name"] for d in ea["duplicates"]] == ["EasyNeg-copy"]
    assert [d["name"] for d in eb["duplicates"]] == ["easynegative"]
    text = run("show", "EasyNeg-copy").output
    assert "exact duplicates" in text and "easynegative.safetensors" in text
    # generate/verify resolve a name to that name's own file
    from tihub.hub import Hub

    assert Hub(home).resolve("EasyNeg-copy").path.name == "EasyNeg-copy.safetensors"
    assert Hub(home).resolve("easynegative").path.name == "easynegative.safetensors"
    # removing one name leaves the other name's file and entry alone
    run("remove", "easynegative")
    [eb] = json.loads(run("show", "EasyNeg-copy", "--json").output)
    assert eb["files"][0]["path"].endswith("/EasyNeg-copy.safetensors") and eb["local"]
    assert json.loads(run("show", "easynegative", "--json").output)[0]["local"] is False
    rows = {Path(r["path"]).relative_to(home / "embeddings").as_posix(): r for r in json.loads(run("list", "--json").output)}  # `path` is the full path
    assert rows["EasyNeg-copy.safetensors"]["duplicates"] == []
