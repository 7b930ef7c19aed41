"""verify: width, NaN/inf, norms against the model's vocabulary, preview, catalogue record."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from engine_helpers import engine_on, vec, write_emb  # noqa: E402

from tihub.engine.verify import record, verify  # noqa: E402
from tihub.formats.model import Embedding  # noqa: E402


@pytest.fixture
def engine(sd1, tmp_path):
    return engine_on(sd1, tmp_path)


def _table_scale(engine):
    return float(engine.model.pipe.text_encoder.get_input_embeddings().weight.detach().norm(dim=1).median())


def test_ok_embedding_with_grid_and_record(engine, tmp_path, home, db_url):
    s = _table_scale(engine)
    write_emb(engine.vocabulary.folder / "fine.safetensors", vec(2) / 6 * s)  # norms ~ vocabulary's
    v = verify(engine, "fine", steps=2, size=64, out=tmp_path / "grids")
    assert v.result == "ok", v.checks
    assert [c["check"] for c in v.checks] == ["readable", "width", "finite", "norms"]
    assert v.grid and v.grid.endswith("fine.preview-grid.png")
    assert v.norms["clip_l"]["max_ratio"] < 4
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace

    ws = Workspace.locate(str(home), None)
    ws.ensure()
    cat = Catalog.open(ws)
    vid = record(cat, v)
    assert vid > 0
    from sqlalchemy import text

    from tihub.catalog.db import read

    with read(cat.engine) as conn:  # the same record on both engines, with the model's hash
        rec = conn.execute(text("SELECT model_hash, result FROM verifications WHERE id = :i"), {"i": vid}).one()
    assert tuple(rec) == (v.model_hash, "ok")


def test_overtrained_is_flagged(engine):
    s = _table_scale(engine)
    emb = Embedding("burnt", {"clip_l": vec(2) * s * 20})
    v = verify(engine, "burnt", embedding=emb, grid=False)
    assert v.result == "warning"
    assert "over-trained" in v.checks[-1]["detail"]


def test_nan_width_and_unreadable_fail(engine, tmp_path):
    bad = vec(2)
    bad[1, 1] = float("inf")
    v = verify(engine, "nanemb", embedding=Embedding("nanemb", {"clip_l": bad}), grid=False)
    assert v.result == "failed" and "NaN or infinite" in v.checks[-1]["detail"]
    v = verify(engine, "wide", embedding=Embedding("wide", {"clip_l": vec(2, width=768)}), grid=False)
    assert v.result == "failed" and v.checks[-1]["check"] == "width" and "768" in v.checks[-1]["detail"]
    (engine.vocabulary.folder).mkdir(parents=True, exist_ok=True)
    (engine.vocabulary.folder / "junk.safetensors").write_bytes(b"junk" * 10)
    v = verify(engine, "junk", grid=False)
    assert v.result == "failed" and v.checks[0]["check"] == "readable"
    v = verify(engine, "absent", grid=False)
    assert v.result == "failed"
