"""`tihub sources / sync / search / show` through the real click entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from tihub import sources as registry
from tihub.cli import cli
from tihub.errors import NetworkError
from tihub.sources.base import Candidate, CandidateFile


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def ws(home: Path, db_url: str) -> Path:
    emb = home / "embeddings"
    save_file({"emb_params": np.ones((2, 768), np.float32)}, str(emb / "watercolor.safetensors"))
    save_file({"clip_l": np.ones((1, 768), np.float32), "clip_g": np.ones((1, 1280), np.float32)},
              str(emb / "xl-detail.safetensors"))
    (home / "sources.yaml").write_text(
        "sources:\n"
        "  - name: local\n    kind: local\n    path: embeddings\n"
        "  - name: remote\n    kind: links\n    url: https://example.org/page\n"
        "  - name: lewd\n    kind: civitai\n    nsfw: true\n"
    )
    return home


def remote_index(spec, ctx):
    if spec.name == "lewd":
        yield Candidate(remote_id="1", name="spicy", files=[CandidateFile("spicy.pt", "https://x/spicy.pt")])
        return
    yield Candidate(remote_id="a", name="watercolor-remote", title="Watercolor from the web",
                    files=[CandidateFile("w.pt", "https://example.org/w.pt", sha256="c" * 64)], base_model="SD 1.5")
    yield Candidate(remote_id="b", name="megaone", status="manual", page_url="https://example.org/page#mega",
                    files=[CandidateFile("m.pt", "https://mega.nz/file/x#k", manual=True)])


def failing_index(spec, ctx):
    raise NetworkError("The request to https://example.org/page failed: 503 Service Unavailable.")
    yield  # pragma: no cover


@pytest.fixture
def synced(ws: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(registry.INDEXERS, "links", remote_index)
    monkeypatch.setitem(registry.INDEXERS, "civitai", remote_index)
    code, out, err = run("sync")
    assert code == 0, err
    return ws


def test_help_has_examples() -> None:
    for cmd in ("sources", "sync", "search", "show"):
        code, out, _ = run(cmd, "--help")
        assert code == 0 and "Example:" in out, cmd


def test_sources_init_and_list(home: Path) -> None:
    code, out, err = run("sources", "--init")
    assert code == 0 and "Wrote" in err and (home / "sources.yaml").exists()
    assert "hf-concepts" in out and "never synced" in out
    code, out, err = run("sources", "--init")
    assert "already lists" in err and "edit it by hand" in err
    # an empty sources.yaml: the listing points at --init, and --init then writes the default
    (home / "sources.yaml").write_text("sources: []\n")
    code, out, _ = run("sources")
    assert "sources --init" in out
    code, out, err = run("sources", "--init")
    assert "Wrote" in err and "hf-concepts" in out
    code, out, _ = run("sources", "--json")
    rows = json.loads(out)
    assert {"name", "kind", "enabled", "nsfw", "last_sync", "status", "entries"} <= set(rows[0])


def test_sync_summary_and_sources_counts(synced: Path) -> None:
    code, out, _ = run("sources", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["local"]["entries"] == 2 and rows["remote"]["entries"] == 2 and rows["remote"]["status"] == "ok"
    code, out, _ = run("sync", "local")
    assert code == 0 and out.strip() == "local: unchanged (2 entries)"


def test_sync_output_lines(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.INDEXERS, "links", remote_index)
    monkeypatch.setitem(registry.INDEXERS, "civitai", remote_index)
    code, out, err = run("sync", "local", "remote")
    assert code == 0
    assert "local: 2 new, 0 updated, 0 removed, 0 unchanged" in out
    assert "remote: 2 new" in out
    assert "local: listing" in err  # plain progress lines when not on a terminal


def test_sync_failure_exit_status(synced: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.INDEXERS, "links", failing_index)
    code, out, err = run("sync")
    assert code == 1
    assert "Error: remote: failed: The request to https://example.org/page failed: 503" in err
    assert "local: unchanged" in out
    code, out, _ = run("search", "megaone", "--json")
    assert json.loads(out)[0]["name"] == "megaone"  # the failed source's entries are still there
    code, out, _ = run("sources")
    assert "failed" in out and "503" in out


def test_sync_unknown_source(ws: Path) -> None:
    code, _, err = run("sync", "nope")
    assert code == 1 and err.strip() == "Error: There is no source named 'nope' in sources.yaml; known sources: local, remote, lewd."


def test_search_json_keys_and_filters(synced: Path) -> None:
    code, out, _ = run("search", "watercolor", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["watercolor", "watercolor-remote"]
    for key in ("id", "name", "triggers", "source", "base", "url", "sha256", "local", "ok", "trained_on"):
        assert key in rows[0]
    assert rows[0]["triggers"] == ["watercolor"]
    assert rows[0]["local"] is True and rows[1]["local"] is False and rows[1]["url"] == "https://example.org/w.pt"
    code, out, _ = run("search", "", "--local", "--json")
    assert {r["name"] for r in json.loads(out)} == {"watercolor", "xl-detail"}
    code, out, _ = run("search", "--base", "sdxl", "--json")
    assert [r["name"] for r in json.loads(out)] == ["xl-detail"]
    code, out, _ = run("search", "--source", "remote", "--json")
    assert {r["name"] for r in json.loads(out)} == {"watercolor-remote", "megaone"}
    code, out, _ = run("search", "megaone", "--json")
    assert json.loads(out)[0]["url"] == "https://mega.nz/file/x#k"
    code, out, _ = run("search", "--json")
    assert "spicy" not in {r["name"] for r in json.loads(out)}
    code, out, _ = run("search", "--nsfw", "--limit", "0", "--json")
    assert len(json.loads(out)) == 5
    code, out, _ = run("search", "--limit", "1", "--json")
    assert len(json.loads(out)) == 1
    code, out, _ = run("search", "watercolor")
    assert code == 0 and "watercolor" in out and "local" in out


@pytest.mark.parametrize("q", ['"', "AND(", "*", "NEAR", "🙂 日本", "a OR NOT", "x:y", "'; DROP TABLE entries;--"])
def test_search_hostile_queries(synced: Path, q: str) -> None:
    code, out, err = run("search", q, "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), list)
    code, out, err = run("search", f"watercolor {q}", "--json")  # an operator next to a real word is just text
    assert code == 0, err
    assert {r["name"] for r in json.loads(out)} <= {"watercolor", "watercolor-remote"}
    code, out, _ = run("search", "--nsfw", "--limit", "0", "--json")  # the catalogue is intact
    assert len(json.loads(out)) == 5


def test_search_model_filter(synced: Path, tmp_path: Path) -> None:
    code, out, _ = run("search", "--model", "sdxl", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert "xl-detail" in rows and "watercolor" not in rows and rows["xl-detail"]["fit"] == "same-family"
    assert rows["megaone"]["fit"] == "unknown"  # base unknown: kept with a note
    ckpt = tmp_path / "sd15-tiny.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": np.zeros((4, 768), np.float16),
               "model.diffusion_model.out.weight": np.zeros((1,), np.float16)}, str(ckpt))
    code, out, err = run("search", "--model", str(ckpt), "--json")
    assert code == 0, err
    names = {r["name"] for r in json.loads(out)}
    assert {"watercolor", "watercolor-remote"} <= names and "xl-detail" not in names
    # the model is remembered: its hash works next time
    import hashlib

    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    code, out, _ = run("search", "--model", sha[:10], "--json")
    assert code == 0 and "watercolor" in {r["name"] for r in json.loads(out)}
    code, _, err = run("search", "--model", "0123456789")
    assert code == 1 and "neither a file nor the hash of a known model" in err
    # Well-known models from the built-in table work without hashing anything first.
    code, out, err = run("search", "--model", "7460a6fa", "--json")  # SD 1.4, A1111 old hash
    assert code == 0, err
    assert "watercolor" in {r["name"] for r in json.loads(out)} and "xl-detail" not in out
    code, out, err = run("search", "--model", "31e35c80fc", "--json")  # SDXL base 1.0, AutoV2
    assert code == 0, err
    assert "xl-detail" in {r["name"] for r in json.loads(out)}


def test_show_text_and_json(synced: Path) -> None:
    code, out, _ = run("show", "watercolor")
    assert code == 0
    assert "A1111/Forge: watercolor" in out
    assert "ComfyUI:     embedding:watercolor" in out
    assert "InvokeAI:    <watercolor>" in out
    assert 'load_textual_inversion("watercolor.safetensors", token="<watercolor>")' in out
    assert "sha256:" in out and "on disk:" in out and "2 vectors" in out
    code, out, _ = run("show", "xl-detail", "--json")
    [e] = json.loads(out)
    assert e["base"] == "sdxl" and "text_encoder_2" in e["trigger_syntax"]["diffusers"]
    assert e["files"][0]["widths"] == {"clip_l": 768, "clip_g": 1280}
    code, out, _ = run("show", "megaone")
    assert "manual download: https://mega.nz/file/x#k" in out
    code, out, _ = run("show", str(e["id"]), "--json")
    assert json.loads(out)[0]["name"] == "xl-detail"
    code, _, err = run("show", "does-not-exist")
    assert code == 1 and err.startswith("Error: No catalogue entry is named 'does-not-exist'")


def test_catalog_commands_never_import_torch(synced: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom tihub.cli import cli\n"
        "for a in (['sync', 'local'], ['search', 'water', '--json'], ['show', 'watercolor'], ['sources']):\n"
        "    try:\n        cli(a, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=synced, timeout=120,
                         env={**__import__("os").environ, "TIHUB_HOME": str(synced)})
    assert out.stdout.strip().endswith("NOTORCH"), out.stderr


def test_sources_lists_catalogue_only_sources(ws: Path) -> None:
    from tihub.catalog.store import Catalog
    from tihub.config import SourceSpec, Workspace

    Catalog.open(Workspace.locate(ws)).ingest(SourceSpec("old-source", "git"), [])
    code, out, _ = run("sources")
    assert code == 0 and "old-source" in out and "not in sources.yaml" in out
