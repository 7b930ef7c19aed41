"""Compatibility verdicts for every status, with model hashes in every form."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from fileserver import FileServer
from tihub.catalog.db import open_engine
from tihub.catalog.store import Catalog
from tihub.compat import (
    KnownModel,
    builtin_lookup,
    builtin_models,
    check,
    model_from_file,
    model_from_hash,
    normalize_hash,
    seed_builtin,
)
from tihub.errors import ConfigError

SD1_W = {"clip_l": 768}
SD2_W = {"clip_h": 1024}
SDXL_W = {"clip_l": 768, "clip_g": 1280}
SHA = "ab" * 32  # a model's full sha256
OLD = "1234abcd"


@pytest.fixture
def catalog(db_url):
    return Catalog(open_engine(db_url))


def model(family, sha=SHA, old=OLD, name="my-model"):
    return KnownModel("q", name, family, sha, sha[:10] if sha else None, old, "hashed")


# --------------------------------------------------------------------------- check()


@pytest.mark.parametrize("ck", [OLD, SHA[:10], SHA, SHA[:10].upper(), f"[{OLD}]"])
def test_trained_on_by_every_hash_form(ck):
    status, reason = check(SD1_W, ck.strip("[]"), model("sd1"))
    assert status == "trained-on", reason
    assert "my-model" in reason


def test_trained_on_needs_a_real_match():
    assert check(SD1_W, "ffffffff", model("sd1"))[0] == "same-family"
    assert check(SD1_W, SHA[:9], model("sd1"))[0] == "same-family"  # 9 hex is no hash form
    assert check(SD1_W, None, model("sd1"))[0] == "same-family"


def test_same_family_wont_load_partial_unknown():
    assert check(SD1_W, None, model("sd1"))[0] == "same-family"
    assert check(SD2_W, None, model("sd2"))[0] == "same-family"
    assert check(SDXL_W, None, model("sdxl"))[0] == "same-family"
    status, reason = check(SD2_W, None, model("sd1"))
    assert status == "wont-load" and "clip_h 1024" in reason and "clip_l 768" in reason
    status, reason = check(SDXL_W, None, model("sd1"))
    assert status == "wont-load" and "clip_g 1280" in reason
    status, reason = check(SD1_W, None, model("sd2"))
    assert status == "wont-load" and "clip_h 1024" in reason
    status, reason = check(SD1_W, None, model("sdxl"))
    assert status == "partial" and "clip_l" in reason
    assert check(SD1_W, None, model(None))[0] == "unknown"
    assert check({}, None, model("sd1"))[0] == "unknown"
    assert check({"t5": 4096}, None, model("sd1"))[0] == "unknown"


def test_trained_on_claim_with_wrong_width_trusts_the_shape():
    status, reason = check(SD2_W, OLD, model("sd1"))
    assert status == "wont-load" and "clip_h 1024" in reason


def test_check_takes_a_catalogue_row():
    row = {"name": "x", "family": "sd1", "sha256": SHA, "autov2": SHA[:10], "old_hash": OLD}
    assert check(SD1_W, SHA[:10], row)[0] == "trained-on"
    assert check(SD1_W, None, None)[0] == "unknown"


# --------------------------------------------------------------------------- hashes


def test_normalize_hash():
    assert normalize_hash(" [7460A6FA] ") == "7460a6fa"
    assert normalize_hash("0x6ce0161689") == "6ce0161689"
    for bad in ("xyz", "123", "7460a6f", "6ce016168", "g" * 64, ""):
        with pytest.raises(ConfigError, match="not a model hash"):
            normalize_hash(bad)


def test_builtin_table_rows_cite_sources():
    rows = builtin_models()
    assert len(rows) >= 8
    for r in rows:
        assert r["family"] in ("sd1", "sd2", "sdxl") and r["source"] and r["name"]
        assert any(r.get(k) for k in ("sha256", "autov2", "old_hash"))
        if r.get("sha256") and r.get("autov2"):
            assert r["sha256"].startswith(r["autov2"])
    assert builtin_lookup("7460a6fa").family == "sd1"
    assert builtin_lookup("31e35c80fc").family == "sdxl"


@pytest.mark.parametrize(
    ("h", "family"),
    [
        ("7460a6fa", "sd1"),  # SD 1.4, old hash
        ("6ce0161689", "sd1"),  # SD 1.5 pruned-emaonly safetensors, AutoV2
        ("6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", "sd1"),  # its sha256
        ("d7049739", "sd1"),  # its old hash
        ("cc6cb27103", "sd1"),
        ("925997e9", "sd1"),  # NAI
        ("4bdfc29c", "sd2"),
        ("31E35C80FC", "sdxl"),
    ],
)
def test_model_from_hash_builtin_all_forms(catalog, h, family):
    m = model_from_hash(h, catalog, remote=False)
    assert m.family == family and m.name


def test_one_model_three_forms_same_verdict(catalog):
    for q in ("6ce0161689", "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", "d7049739"):
        m = model_from_hash(q, catalog, remote=False)
        for ck in ("6ce0161689", "d7049739"):
            assert check(SD1_W, ck, m)[0] == "trained-on", (q, ck)


def test_seeded_builtin_models_are_in_the_catalogue(catalog):
    seed_builtin(catalog)
    row = catalog.find_model("7460a6fa")
    assert row and row["family"] == "sd1" and row["origin"] == "builtin"


def test_unknown_hash_offline(catalog):
    m = model_from_hash("0123456789", catalog, remote=False)
    assert m.family is None and m.origin == "unknown"
    assert check(SD1_W, None, m)[0] == "unknown"
    # an embedding trained on exactly that (unknown) hash is still recognised
    assert check(SD1_W, "0123456789", m)[0] == "trained-on"


def _write_sd1_checkpoint(path: Path) -> Path:
    n = 1000 * 768 * 2  # > 1 MiB, so the A1111 old hash reads real bytes
    header = {
        "model.diffusion_model.input_blocks.0.0.weight": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 32]},
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": {"dtype": "F16", "shape": [1000, 768], "data_offsets": [32, 32 + n]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + (bytes(range(256)) * ((32 + n) // 256 + 1))[: 32 + n])
    return path


def test_model_from_file_is_hashed_and_found_again_by_hash(catalog, tmp_path):
    p = _write_sd1_checkpoint(tmp_path / "mine.safetensors")
    m = model_from_file(p, catalog)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    assert (m.family, m.sha256, m.autov2, m.origin) == ("sd1", sha, sha[:10], "hashed")
    assert m.old_hash and len(m.old_hash) == 8
    for q in (sha, sha[:10], m.old_hash):
        found = model_from_hash(q, catalog, remote=False)
        assert found.family == "sd1" and found.name == "mine.safetensors", q
        assert check(SD1_W, q if len(q) != 64 else q[:10], found)[0] == "trained-on"


def test_civitai_lookup_cached_and_not_found_expires(catalog):
    h = "feedbeef00"
    sha = "feedbeef00" + "1" * 54
    answer = {
        "name": "v1.0",
        "baseModel": "SDXL 1.0",
        "model": {"name": "Some XL Model"},
        "files": [{"hashes": {"SHA256": sha.upper(), "AutoV2": h.upper(), "AutoV1": "aabbccdd"}}],
    }
    with FileServer() as srv:
        srv.add(f"/api/v1/model-versions/by-hash/{h}", json.dumps(answer).encode(), content_type="application/json")
        srv.add("/api/v1/model-versions/by-hash/0000000001", b'{"error":"Model not found"}', status=404, content_type="application/json")
        m = model_from_hash(h, catalog, civitai_url=srv.base, allow_private=True)
        assert (m.family, m.origin, m.sha256) == ("sdxl", "civitai", sha) and "Some XL Model" in m.name
        n = len(srv.requests)
        again = model_from_hash(h.upper(), catalog, civitai_url=srv.base, allow_private=True)
        assert again.family == "sdxl" and len(srv.requests) == n  # cached in the models table
        assert model_from_hash("aabbccdd", catalog, civitai_url=srv.base, allow_private=True).family == "sdxl"
        # not found: remembered, not asked again until it expires
        miss = model_from_hash("0000000001", catalog, civitai_url=srv.base, allow_private=True)
        assert miss.family is None and "Civitai" in miss.note
        n = len(srv.requests)
        model_from_hash("0000000001", catalog, civitai_url=srv.base, allow_private=True)
        assert len(srv.requests) == n
        from sqlalchemy import text

        from tihub.catalog.db import write

        with write(catalog.engine) as conn:
            conn.execute(text("UPDATE models SET checked_at = '2000-01-01T00:00:00Z' WHERE autov2 = '0000000001'"))
        model_from_hash("0000000001", catalog, civitai_url=srv.base, allow_private=True)
        assert len(srv.requests) == n + 1


def test_civitai_on_loopback_needs_allow_private(catalog):
    with FileServer() as srv:
        m = model_from_hash("abcdef0123", catalog, civitai_url=srv.base, allow_private=False)
        assert m.family is None and "lookup failed" in m.note and srv.requests == []


def test_model_file_that_is_not_a_model(catalog, tmp_path):
    from fileserver import embedding_bytes

    p = tmp_path / "lora-or-embedding.safetensors"
    p.write_bytes(embedding_bytes())
    m = model_from_file(p, catalog)
    assert m.family is None
    status, reason = check(SD1_W, None, m)
    assert status == "unknown" and "not an SD1, SD2 or SDXL model" in reason and "embedding" in reason


def test_civitai_answer_not_json_or_too_large_is_one_sentence():
    from tihub.compat import civitai_by_hash
    from tihub.errors import NetworkError

    with FileServer() as srv:
        srv.add("/api/v1/model-versions/by-hash/abcdef0123", b"<html>busy</html>", content_type="text/html")
        srv.add("/api/v1/model-versions/by-hash/abcdef0124", b"[" + b"0," * (4_200_000) + b"0]", content_type="application/json")
        with pytest.raises(NetworkError, match=r"^Civitai's answer for the hash abcdef0123 is not JSON\.$"):
            civitai_by_hash("abcdef0123", srv.base, allow_private=True)
        with pytest.raises(NetworkError, match=r"^Civitai's answer for the hash abcdef0124 is too large\.$"):
            civitai_by_hash("abcdef0124", srv.base, allow_private=True)
        srv.add("/api/v1/model-versions/by-hash/abcdef0125", b'{"name": "v1", "files": []}', truncate_at=10, content_type="application/json")
        with pytest.raises(NetworkError, match=r"^Reading Civitai's answer for the hash abcdef0125 failed: "):
            civitai_by_hash("abcdef0125", srv.base, allow_private=True)
