"""The collection commands end to end: fetch, import, list, remove, export, compat."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fileserver import FileServer, embedding_bytes
from tihub.catalog.db import open_engine
from tihub.catalog.store import Catalog
from tihub.cli import cli
from tihub.config import SourceSpec, Workspace
from tihub.sources.base import Candidate, CandidateFile

SOURCES = """\
sources:
  - name: mirror
    kind: links
    url: http://127.0.0.1/
    allow_private: {allow}
  - name: local
    kind: local
    path: embeddings
"""


def run(*args: str, ok: bool = True):
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


@pytest.fixture
def srv():
    s = FileServer().start()
    yield s
    s.stop()


def _catalogue(home: Path, srv: FileServer, allow: bool = True) -> tuple[bytes, str]:
    (home / "sources.yaml").write_text(SOURCES.format(allow="true" if allow else "false"))
    data = embedding_bytes("a1111", name="EasyNeg", sd_checkpoint="925997e9")
    url = srv.add("/files/easynegative.pt", data)
    ws = Workspace.locate(home)
    cat = Catalog(open_engine(ws.db_url), ws)
    spec = SourceSpec(name="mirror", kind="links", allow_private=allow)
    cat.ingest(
        spec,
        [
            Candidate(
                "easy",
                "easynegative",
                files=[CandidateFile("easynegative.pt", url, len(data), hashlib.sha256(data).hexdigest(), widths={"clip_l": 768}, sd_checkpoint="925997e9")],
                base_model="SD 1.5",
            ),
            Candidate("megafile", "megafile", files=[CandidateFile("x.pt", "https://mega.nz/file/abc#k", manual=True)], status="manual"),
        ],
    )
    return data, url


def test_fetch_url_then_list_remove(home, srv):
    url = srv.add("/d/thing.pt", embedding_bytes("a1111", name="thing"))
    r = run("fetch", url, "-j", "1")
    assert "fetched" in r.output and "converted to safetensors" in r.output
    assert (home / "embeddings" / "thing.safetensors").exists()
    rows = json.loads(run("list", "--json").output)
    assert [(x["name"], x["base"], x["vectors"], x["problems"]) for x in rows] == [("thing", "sd1", 2, [])]
    assert rows[0]["entry"] == "thing"  # recorded in the catalogue (local entry)
    out = run("list").output
    assert "thing.safetensors" in out and "1 file(s), 0 problem(s), 1 matching nothing in the catalogue." in out
    run("remove", "thing")
    assert not (home / "embeddings" / "thing.safetensors").exists()
    assert "No embeddings" in run("list").output


def test_fetch_by_catalogue_name_records_entry(home, srv):
    data, _ = _catalogue(home, srv)
    r = run("fetch", "easynegative", "--as", "original")
    assert "fetched: easynegative" in r.output
    p = home / "embeddings" / "easynegative.pt"
    assert p.read_bytes() == data
    rows = json.loads(run("list", "--json").output)
    assert rows[0]["entry"] == "easynegative" and rows[0]["source"] == "mirror"
    assert rows[0]["trained_on"] == "925997e9" and "NovelAI" in rows[0]["trained_on_name"]
    n = len(srv.requests)
    again = run("fetch", "easynegative")
    assert "already here" in again.output and len(srv.requests) == n  # known locally: no download
    forced = run("fetch", "easynegative", "--as", "original", "--force")
    assert forced.exit_code == 0 and len(srv.requests) == n + 1  # --force downloads again


def test_catalogue_url_on_loopback_needs_allow_private(home, srv):
    _catalogue(home, srv, allow=False)
    r = run("fetch", "easynegative", ok=False)
    assert r.exit_code == 1 and "allow_private" in r.output
    assert srv.requests == []
    assert list((home / "embeddings").iterdir()) == []


def test_fetch_batch_with_failures(home, srv):
    _catalogue(home, srv)
    good = srv.add("/d/good.safetensors", embedding_bytes(name="good"))
    r = run("fetch", good, srv.url("/d/missing.pt"), "megafile", "no-such-entry", ok=False)
    assert r.exit_code == 1
    assert "fetched" in r.output and "404" in r.output
    assert "manual download" in r.output and "mega.nz" in r.output
    assert "no-such-entry" in r.output
    assert sorted(p.name for p in (home / "embeddings").iterdir()) == ["good.safetensors"]


def test_fetch_name_and_json(home, srv):
    url = srv.add("/d/learned_embeds.bin", embedding_bytes("diffusers-bin", name="tok"))
    r = run("fetch", url, "--name", "my-style.pt", "--json")
    out = json.loads(r.stdout)  # progress lines go to stderr
    assert out[0]["status"] == "fetched" and out[0]["path"].endswith("my-style.safetensors")
    r = run("fetch", url, srv.url("/x"), "--name", "x", ok=False)
    assert r.exit_code == 2 and "--name only works with one target" in r.output


def test_import_export_compat(home, tmp_path):
    src = tmp_path / "dl"
    src.mkdir()
    (src / "neg.pt").write_bytes(embedding_bytes("a1111", name="neg", sd_checkpoint="925997e9"))
    (src / "sd2.pt").write_bytes(embedding_bytes("a1111", name="sd2", widths={"clip_h": 1024}))
    (src / "xl.safetensors").write_bytes(embedding_bytes(widths={"clip_l": 768, "clip_g": 1280}))
    (src / "page.pt").write_bytes(b"<html>login</html>")
    r = run("import", str(src / "neg.pt"), str(src / "sd2.pt"), str(src / "xl.safetensors"), str(src / "page.pt"), ok=False)
    assert r.exit_code == 1 and r.output.count("imported:") == 3 and "page.pt" in r.output
    (home / "sources.yaml").write_text("sources: []\n")
    verdicts = {v["name"]: v for v in json.loads(run("compat", "--model-hash", "925997e9", "--json").output)}
    assert {k: v["fit"] for k, v in verdicts.items()} == {"neg": "trained-on", "sd2": "wont-load", "xl": "wont-load"}
    assert "clip_h 1024" in verdicts["sd2"]["reason"]
    xl = {v["name"]: v["fit"] for v in json.loads(run("compat", "--model-hash", "31e35c80fc", "--json").output)}
    assert xl == {"neg": "partial", "sd2": "wont-load", "xl": "same-family"}
    named = json.loads(run("compat", "--model-hash", "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", "neg", "--json").output)
    assert len(named) == 1 and {k: named[0][k] for k in ("name", "fit", "ok", "trained_on", "trained_on_name")} == {
        "name": "neg", "fit": "same-family", "ok": True, "trained_on": "925997e9", "trained_on_name": "NovelAI animefinal-full-pruned"}
    assert set(named[0]["apps"]) == {"a1111", "forge", "comfyui", "invokeai", "diffusers"}
    assert named[0]["reason"].endswith("it was made on NovelAI animefinal-full-pruned [925997e9]")
    text = run("compat", "--model-hash", "7460a6fa").output
    assert "Stable Diffusion 1.4" in text and "same-family" in text
    unknown = run("compat", "--model-hash", "0123456789", "--offline").output
    assert "unknown" in unknown
    bad = run("compat", "--model-hash", "zzz", ok=False)
    assert bad.exit_code == 1 and "not a model hash" in bad.output
    both = run("compat", ok=False)
    assert both.exit_code == 2 and "exactly one" in both.output
    missing = run("export", "neg", "--to", str(tmp_path / "comfy"), "--app", "comfyui", ok=False)
    assert missing.exit_code == 1 and "no such folder" in missing.output and not (tmp_path / "comfy").exists()
    (tmp_path / "comfy").mkdir()
    out = run("export", "neg", "xl", "--to", str(tmp_path / "comfy"), "--app", "comfyui").output
    assert "prompt: embedding:neg" in out and (tmp_path / "comfy" / "models" / "embeddings" / "xl.safetensors").exists()


def test_compat_catalog_entries(home, srv):
    _catalogue(home, srv)
    out = json.loads(run("compat", "--model-hash", "31e35c80fc", "--catalog", "--json", "--offline").output)
    names = {v["name"]: v["fit"] for v in out}
    assert names["easynegative"] == "partial"
    nai = {v["name"]: v for v in json.loads(run("compat", "--model-hash", "925997e9", "easynegative", "--json").output)}
    assert nai["easynegative"]["fit"] == "trained-on"


def test_compat_with_model_file(home, tmp_path):
    from test_compat import _write_sd1_checkpoint

    model = _write_sd1_checkpoint(tmp_path / "my-sd1.safetensors")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    src = tmp_path / "mine.pt"
    src.write_bytes(embedding_bytes("a1111", name="mine", sd_checkpoint=sha[:10]))
    run("import", str(src))
    (home / "sources.yaml").write_text("sources: []\n")
    out = json.loads(run("compat", "--model", str(model), "--json").output)
    assert len(out) == 1 and {k: out[0][k] for k in ("name", "fit", "ok", "trained_on", "trained_on_name")} == {
        "name": "mine", "fit": "trained-on", "ok": True, "trained_on": sha[:10], "trained_on_name": "my-sd1.safetensors"}
    assert {v["fit"] for v in out[0]["apps"].values()} == {"trained-on"}
    # the model is now known by every hash form
    again = json.loads(run("compat", "--model-hash", sha, "--json", "--offline").output)
    assert again[0]["fit"] == "trained-on"


def test_file_copied_by_hand_is_linked_without_download(home, srv):
    data, _ = _catalogue(home, srv)
    (home / "embeddings" / "easynegative.pt").write_bytes(data)  # the user put it there
    n = len(srv.requests)
    r = run("fetch", "easynegative", "--as", "original")
    assert "already here" in r.output and len(srv.requests) == n
    rows = json.loads(run("list", "--json").output)
    assert rows[0]["entry"] == "easynegative" and rows[0]["source"] == "mirror"
