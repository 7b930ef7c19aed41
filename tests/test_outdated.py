"""Issue 14, part 4: `tihub outdated` and `tihub fetch --upgrade` (loopback Hub, real SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from servers.hf import HFHub
from test_knowledge_pictures import ORG, concept, embedding_bytes, vec
from tihub.catalog.store import Catalog
from tihub.cli import cli
from tihub.config import SourceSpec, Workspace
from tihub.formats import Embedding, write_embedding
from tihub.sources import _http
from tihub.sources.base import Candidate, CandidateFile
from tihub.updates import outdated, record_origin


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "BACKOFF", 0.01)


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_hf_commit_with_new_bytes_is_outdated_and_upgrades(home: Path, tmp_path: Path) -> None:
    old = embedding_bytes(tmp_path, "inky", {"clip_l": vec(1)})
    new = embedding_bytes(tmp_path, "inky", {"clip_l": vec(2)})
    with HFHub([concept("inky", old), concept("still", embedding_bytes(tmp_path, "s", {"clip_l": vec(3)}))]) as h:
        (home / "sources.yaml").write_text(
            f"sources:\n  - {{name: hf, kind: huggingface, author: {ORG}, endpoint: '{h.url}', allow_private: true}}\n")
        assert run("sync")[0] == 0
        code, out, err = run("fetch", "inky", "still", "--json")
        assert code == 0, err
        code, out, err = run("outdated", "--json")
        assert code == 0 and json.loads(out) == []
        code, out, err = run("outdated")
        assert "All 2 fetched files are current." in out
        # a new commit that leaves the file alone changes nothing (the local copy is converted
        # to safetensors: its own sha differs from the upstream one, which is what is compared)
        repo = h.repos[f"model:{ORG}/inky"]
        repo.touch(41)
        assert run("sync")[0] == 0
        code, out, err = run("outdated", "--json")
        assert json.loads(out) == []
        # upstream: a new commit with other bytes for inky only
        repo.files["learned_embeds.bin"].data = new
        repo.touch(42)
        assert run("sync")[0] == 0
        code, out, err = run("outdated", "--json")
        (row,) = json.loads(out)
        assert row["ok"] and row["name"] == "inky" and row["status"] == "newer" and row["source"] == "hf"
        assert "newer commit" in row["reason"] and repo.sha in row["latest"]["url"]
        # upgrade, keeping the old file as inky.v1.safetensors
        old_path = Path(row["path"])
        old_bytes = old_path.read_bytes()
        code, out, err = run("fetch", "--upgrade", "inky", "--keep-old", "--json")
        assert code == 0, err
        (res,) = json.loads(out)
        assert res["upgraded"] and Path(res["path"]) == old_path and res["old_path"].endswith("inky.v1.safetensors")
        assert Path(res["old_path"]).read_bytes() == old_bytes and old_path.read_bytes() != old_bytes
        code, out, err = run("outdated", "--json")
        assert json.loads(out) == []
        # --all with nothing to do; an unknown name is one sentence
        code, out, err = run("fetch", "--upgrade", "--all")
        assert code == 0 and "not upgraded" in out
        code, out, err = run("fetch", "--upgrade", "nosuch", "--json")
        assert code == 1 and json.loads(out)[0]["ok"] is False
        code, out, err = run("fetch", "--all")
        assert code == 2 and "--upgrade" in err


def civitai_cand(mid: int, vid: int, base: str, sha: str, name: str = "easyneg") -> Candidate:
    return Candidate(remote_id=f"{mid}@{vid}", name=name, base_model=base,
                     files=[CandidateFile(f"{name}.safetensors", f"https://civitai.com/api/download/models/{vid}", sha256=sha)],
                     extra={"modelId": mid, "versionId": vid, "version": f"v{vid}"})


def test_civitai_newer_version_same_base_only(home: Path) -> None:
    ws = Workspace.locate(str(home))
    ws.ensure()
    cat = Catalog.open(ws)
    spec = SourceSpec(name="civitai", kind="civitai", options={})
    cat.ingest(spec, [civitai_cand(7, 100, "SD 1.5", "a" * 64)])
    p = home / "embeddings" / "easyneg.safetensors"
    write_embedding(Embedding(name="easyneg", vectors={"clip_l": np.ones((2, 768), np.float32)}), p, "safetensors")
    entry_id = cat.entry("easyneg")["id"]
    record_origin(cat, p, "a" * 64, entry_id, "https://civitai.com/api/download/models/100")
    assert [r["status"] for r in outdated(cat)] == ["current"]
    # a newer version for SDXL is not an upgrade of an SD1 file; a newer SD 1.5 one is
    cat.ingest(spec, [civitai_cand(7, 100, "SD 1.5", "a" * 64), civitai_cand(7, 300, "SDXL 1.0", "c" * 64)])
    assert [r["status"] for r in outdated(cat)] == ["current"]
    cat.ingest(spec, [civitai_cand(7, 100, "SD 1.5", "a" * 64), civitai_cand(7, 300, "SDXL 1.0", "c" * 64),
                      civitai_cand(7, 200, "SD 1.5", "b" * 64)])
    (row,) = outdated(cat)
    assert row["status"] == "newer" and row["latest"]["version"] == "200" and row["latest"]["sha256"] == "b" * 64
    assert "newer version (v200)" in row["reason"]
    # the version removed upstream: gone
    cat.ingest(spec, [civitai_cand(7, 200, "SD 1.5", "b" * 64)])
    assert outdated(cat)[0]["status"] == "gone"
