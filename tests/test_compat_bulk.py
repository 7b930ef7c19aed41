"""Naming the models embeddings were made on: one bulk Civitai lookup, cached, over real HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tihub.catalog.db import open_engine
from tihub.catalog.store import Catalog
from tihub.cli import cli
from tihub.compat import BULK_SIZE, civitai_by_hashes, name_checkpoints
from tihub.errors import UnsafeURL
from tihub.formats import Embedding, write_embedding

KNOWN_SHA = "abcdef0123" + "4" * 54
VERSIONS = {
    KNOWN_SHA: {
        "name": "v2",
        "baseModel": "SD 1.5",
        "model": {"name": "Fancy Mix"},
        "files": [{"hashes": {"SHA256": KNOWN_SHA.upper(), "AutoV2": "ABCDEF0123", "AutoV1": "11223344"}}],
    }
}


class _Civitai(BaseHTTPRequestHandler):
    posts: list[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/api/v1/model-versions/by-hash":
            self.send_error(404)
            return
        asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Civitai.posts.append(asked)
        out = []
        for version in VERSIONS.values():
            forms = {v.lower() for f in version["files"] for v in f["hashes"].values()}
            if any(h.lower() in forms or KNOWN_SHA.startswith(h.lower()) for h in asked):
                out.append(version)
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def civitai():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Civitai)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Civitai.posts.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def catalog(db_url: str) -> Catalog:
    return Catalog(open_engine(db_url))


def test_one_bulk_request_names_unknown_hashes_and_caches_answers(civitai: str, catalog: Catalog) -> None:
    wanted = ["7460a6fa", "ABCDEF0123", "0123456789"]  # built-in, known to Civitai, unknown
    named = name_checkpoints(wanted, catalog, civitai_url=civitai, allow_private=True)
    assert "Stable Diffusion 1.4" in named["7460a6fa"].name
    assert named["ABCDEF0123"].name == "Fancy Mix v2" and named["ABCDEF0123"].family == "sd1"
    assert named["ABCDEF0123"].sha256 == KNOWN_SHA
    assert "0123456789" not in named
    assert _Civitai.posts == [["0123456789", "abcdef0123"]]  # one request, only the unknown ones
    # Answers and "not found" are cached: asking again costs no request.
    again = name_checkpoints(wanted + ["11223344"], catalog, civitai_url=civitai, allow_private=True)
    assert again["11223344"].name == "Fancy Mix v2"
    assert len(_Civitai.posts) == 1


def test_hashes_are_sent_in_chunks(civitai: str) -> None:
    hashes = [f"{i:010x}" for i in range(BULK_SIZE * 2 + 5)]
    assert civitai_by_hashes(hashes, civitai, allow_private=True) == {}
    assert [len(p) for p in _Civitai.posts] == [BULK_SIZE, BULK_SIZE, 5]


def test_loopback_civitai_needs_allow_private(civitai: str, catalog: Catalog) -> None:
    with pytest.raises(UnsafeURL):
        civitai_by_hashes(["abcdef0123"], civitai)
    # A failed lookup names nothing and caches nothing: the next try asks again.
    assert name_checkpoints(["abcdef0123"], catalog, civitai_url=civitai) == {}
    assert name_checkpoints(["abcdef0123"], catalog, civitai_url=civitai, allow_private=True)["abcdef0123"].name
    assert len(_Civitai.posts) == 1


def test_compat_cli_names_the_model_an_embedding_was_made_on(
    civitai: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIHUB_OFFLINE", raising=False)
    (home / "sources.yaml").write_text(
        f"sources:\n  - name: civitai\n    kind: civitai\n    url: {civitai}\n    allow_private: true\n", encoding="utf-8"
    )
    vec = np.zeros((1, 768), dtype=np.float32)
    emb = Embedding(name="fancy", vectors={"clip_l": vec}, sd_checkpoint="abcdef0123", sd_checkpoint_name="fancy")
    write_embedding(emb, home / "embeddings" / "fancy.safetensors", "safetensors")
    result = CliRunner().invoke(cli, ["compat", "--model-hash", "7460a6fa", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["fit"] == "same-family"
    assert row["trained_on"] == "abcdef0123" and row["trained_on_name"] == "Fancy Mix v2"
    assert "made on Fancy Mix v2" in row["reason"]
    assert _Civitai.posts == [["abcdef0123"]]
