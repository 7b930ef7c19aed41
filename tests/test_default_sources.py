"""A fresh workspace with the default sources.yaml syncs end to end against loopback servers.

Every default source (HF concepts library, the two GitLab repos, the gitgud repo, the rentry link
page, Civitai and the local folder) is pointed at a loopback server that speaks its API; the
rest of the file stays as shipped. Then `tihub sync`, `search` and `show` run from the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from servers.civitai import CivitaiAPI
from servers.gitforge import GitForge, make_repo
from servers.hf import HFHub, concept_repo
from servers.pages import PageServer
from tihub.cli import cli
from tihub.config import DEFAULT_SOURCES_YAML
from tihub.formats import Embedding, write_embedding
from tihub.sources import _http

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GIT_REPOS = {
    "gitlab-16777216c": "16777216c/stable-diffusion-embeddings",
    "gitlab-cattoroboto": "cattoroboto/waifu-diffusion-embeds",
    "gitgud-viper1": "viper1/stable-diffusion-embeddings",
}
RENTRY = """# Embeddings

| Name | Model | Download |
|------|-------|----------|
| Kanata | Waifu Diffusion v1.2 | [pt](https://files.catbox.moe/kanata.pt) |
| Hellhound | NAI | [mega](https://mega.nz/folder/abc#def) |
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout


def test_default_sources_sync_against_loopback_servers(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "BACKOFF", 0.01)
    hub_repos = [concept_repo("sd-concepts-library", f"concept-{i}", f"<concept-{i}>", "style", b"PK emb %d" % i) for i in range(3)]
    forge_root = tmp_path / "forge"
    for i, repo in enumerate(GIT_REPOS.values()):
        make_repo(forge_root, repo, {"README.md": b"# embeddings\n", f"embeddings/emb{i}.pt": b"PK" + bytes([i]) * 64})
    write_embedding(
        Embedding(name="mine", vectors={"clip_l": np.ones((1, 768), dtype=np.float32)}),
        home / "embeddings" / "mine.safetensors",
    )

    with HFHub(hub_repos) as hub, GitForge(forge_root) as forge, PageServer() as pages, CivitaiAPI(n_models=4) as civitai:
        # The shipped sources.yaml, with each remote URL pointed at its loopback server.
        config = yaml.safe_load(DEFAULT_SOURCES_YAML)
        urls = {name: forge.repo_url(repo) for name, repo in GIT_REPOS.items()}
        urls["rentry-embeddings"] = pages.set("/embeddings/raw", RENTRY, "text/markdown")
        urls["civitai"] = civitai.api
        for source in config["sources"]:
            if source["kind"] == "huggingface":
                source["endpoint"] = hub.url
            elif source["name"] in urls:
                source["url"] = urls.pop(source["name"])
            if source["kind"] != "local":
                source["allow_private"] = True  # loopback servers; off by default
        assert not urls, f"default sources missing: {sorted(urls)}"
        (home / "sources.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

        code, out = run("sync", "--json")
        assert code == 0, out
        reports = {r["name"]: r for r in json.loads(out)}
        assert set(reports) == {s["name"] for s in config["sources"]}
        assert all(r["status"] == "ok" and r["total"] > 0 for r in reports.values()), reports

        # A second sync changes nothing.
        code, out = run("sync", "--json")
        assert code == 0, out
        again = {r["name"]: r for r in json.loads(out)}
        assert all(r["new"] == 0 and r["removed"] == 0 for r in again.values()), again

    # Every source's entries are searchable; NSFW sources only with --nsfw.
    code, out = run("search", "", "--limit", "0", "--json")
    safe = {r["source"] for r in json.loads(out)}
    assert safe == {"hf-concepts", "civitai", "local"}
    code, out = run("search", "", "--limit", "0", "--nsfw", "--json")
    rows = json.loads(out)
    assert {r["source"] for r in rows} == {s["name"] for s in config["sources"]}
    manual = [r for r in rows if r["name"] == "Hellhound"]
    assert manual and manual[0]["url"].startswith("https://mega.nz/")
    code, out = run("show", "concept-1")
    assert code == 0 and "<concept-1>" in out
