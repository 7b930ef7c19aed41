"""Naming the models embeddings were made on, against a loopback Civitai that answers as the real
one: full sha256 hashes in bulk (at most 100 per POST; a short hash there is a 400 for the whole
request), short hashes one GET each, answers and misses cached, a wrong URL never cached."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from servers.civitai import CivitaiAPI
from tihub.catalog.db import open_engine
from tihub.catalog.store import Catalog
from tihub.cli import cli
from tihub.compat import BULK_SIZE, civitai_api, civitai_by_hashes, model_from_hash, name_checkpoints
from tihub.errors import UnsafeURL
from tihub.formats import Embedding, write_embedding

KNOWN_SHA = "abcdef0123" + "4" * 54
FANCY = {
    "id": 777,
    "modelId": 77,
    "name": "v2",
    "baseModel": "SD 1.5",
    "model": {"name": "Fancy Mix", "type": "Checkpoint", "nsfw": False, "poi": False},
    "files": [{"name": "fancyMix_v2.safetensors", "type": "Model", "primary": True,
               "hashes": {"SHA256": KNOWN_SHA.upper(), "AutoV2": "ABCDEF0123", "AutoV1": "11223344"}}],
}


@pytest.fixture
def api():
    with CivitaiAPI(n_models=2) as a:
        a.versions.append(FANCY)
        yield a


@pytest.fixture
def civitai(api: CivitaiAPI) -> str:
    return api.api  # the API root, as a civitai source's `url` is written


@pytest.fixture
def catalog(db_url: str) -> Catalog:
    return Catalog(open_engine(db_url))


def gets(api: CivitaiAPI) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in api.server.requests if r.method == "GET" and "/by-hash/" in r.path]


def test_the_loopback_service_refuses_short_hashes_in_bulk_like_civitai(api: CivitaiAPI) -> None:
    url = api.api + "/model-versions/by-hash"
    assert httpx.post(url, json=[KNOWN_SHA]).json()[0]["model"]["name"] == "Fancy Mix"
    assert httpx.post(url, json=[KNOWN_SHA, "abcdef0123"]).status_code == 400  # one short hash: all refused
    assert httpx.post(url, json=["a" * 64] * 101).status_code == 400
    assert httpx.get(url + "/abcdef0123").json()["model"]["name"] == "Fancy Mix"  # GET takes any form
    miss = httpx.get(url + "/0123456789")
    assert miss.status_code == 404 and miss.json() == {"error": "Model not found"}


def test_short_hashes_are_asked_one_by_one_and_full_ones_in_bulk(api: CivitaiAPI, civitai: str, catalog: Catalog) -> None:
    wanted = ["7460a6fa", "ABCDEF0123", "0123456789", KNOWN_SHA, "f" * 64]  # built-in, short x2, full x2
    named = name_checkpoints(wanted, catalog, civitai_url=civitai, allow_private=True)
    assert "Stable Diffusion 1.4" in named["7460a6fa"].name
    assert named["ABCDEF0123"].name == "Fancy Mix v2" and named["ABCDEF0123"].family == "sd1"
    assert named["ABCDEF0123"].sha256 == KNOWN_SHA and named[KNOWN_SHA].name == "Fancy Mix v2"
    assert "0123456789" not in named and "f" * 64 not in named
    assert api.bulk_requests == [[KNOWN_SHA, "f" * 64]]  # only 64-hex in the bulk request
    assert sorted(gets(api)) == ["0123456789", "abcdef0123"]
    # Answers and "not found" are cached: asking again costs no request.
    again = name_checkpoints(wanted + ["11223344"], catalog, civitai_url=civitai, allow_private=True)
    assert again["11223344"].name == "Fancy Mix v2"
    assert len(api.bulk_requests) == 1 and len(gets(api)) == 2


def test_full_hashes_are_sent_in_chunks_of_100(api: CivitaiAPI, civitai: str) -> None:
    hashes = [f"{i:064x}" for i in range(BULK_SIZE * 2 + 5)]
    assert civitai_by_hashes(hashes, civitai, allow_private=True) == {}
    assert [len(p) for p in api.bulk_requests] == [BULK_SIZE, BULK_SIZE, 5]


def test_loopback_civitai_needs_allow_private(api: CivitaiAPI, civitai: str, catalog: Catalog) -> None:
    with pytest.raises(UnsafeURL):
        civitai_by_hashes([KNOWN_SHA], civitai)
    # A failed lookup names nothing and caches nothing: the next try asks again.
    assert name_checkpoints(["abcdef0123"], catalog, civitai_url=civitai) == {}
    assert name_checkpoints(["abcdef0123"], catalog, civitai_url=civitai, allow_private=True)["abcdef0123"].name
    assert gets(api) == ["abcdef0123"]


def test_source_url_is_the_api_root_and_a_wrong_url_is_not_cached(api: CivitaiAPI, catalog: Catalog) -> None:
    assert civitai_api("https://civitai.com") == civitai_api("https://civitai.com/api/v1/") == "https://civitai.com/api/v1"
    for base in (api.api, api.url):  # the API root (as sources.yaml has it) or the site
        assert model_from_hash("abcdef0123", Catalog(catalog.engine), civitai_url=base, allow_private=True).name == "Fancy Mix v2"
        with catalog.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM models WHERE origin = 'civitai'")
    wrong = api.url + "/nothing-here"  # the website's HTML 404, not the API's "not found"
    m = model_from_hash("abcdef0123", catalog, civitai_url=wrong, allow_private=True)
    assert m.family is None and "lookup failed" in m.note and "url" in m.note
    assert model_from_hash("abcdef0123", catalog, civitai_url=api.api, allow_private=True).name == "Fancy Mix v2"


def test_compat_cli_names_the_model_an_embedding_was_made_on(
    api: CivitaiAPI, civitai: str, home: Path, monkeypatch: pytest.MonkeyPatch
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
    assert gets(api) == ["abcdef0123"] and api.bulk_requests == []
