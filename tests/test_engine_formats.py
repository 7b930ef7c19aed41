"""Real embedding files of every readable SD1 layout, spliced into a tiny 768-wide SD1 model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import capture_encoder_inputs, token_rows  # noqa: E402

from tihub.engine.generate import Engine  # noqa: E402
from tihub.engine.models import from_pipeline  # noqa: E402
from tihub.formats import read_embedding  # noqa: E402


@pytest.fixture(scope="module")
def sd1_768():
    from tihub.engine.tiny import tiny_sd1_pipeline

    return from_pipeline(tiny_sd1_pipeline(text_width=768), name="tiny-768")


def _one_per_kind(corpus: Path, want: str) -> list[Path]:
    seen: dict[str, Path] = {}
    for line in (corpus / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        cols = line.split("\t")
        if want in cols[6] and "NOT an" not in cols[6]:
            seen.setdefault(cols[6], corpus / cols[0])
    return list(seen.values())


def test_every_sd1_layout_reaches_the_encoder(corpus, sd1_768, tmp_path):
    files = _one_per_kind(corpus, "SD1.x/CLIP-L") + _one_per_kind(corpus, "PNG embedding")
    assert len(files) >= 5
    folder = tmp_path / "embeddings"
    folder.mkdir()
    names = []
    for i, src in enumerate(files):
        name = f"realemb{chr(ord('a') + i)}"
        shutil.copy(src, folder / f"{name}{src.suffix}")
        names.append(name)
    engine = Engine(sd1_768, folder)
    te = sd1_768.pipe.text_encoder
    for name, src in zip(names, files, strict=True):
        emb = read_embedding(folder / f"{name}{src.suffix}")
        arr = emb.vectors["clip_l"][:20].astype(np.float32)
        seen, handle = capture_encoder_inputs(te)
        try:
            r = engine.generate(f"{name} cat", steps=1, seed=1, size=64, cfg_scale=1.0)
        finally:
            handle.remove()
        assert r.used == [name], src
        assert any(np.allclose(token_rows(te, h[0], 1, len(arr)), arr, atol=1e-4) for h in seen), src
        assert f"{name}: " in r.infotexts[0]


def test_sdxl_and_sd2_files_are_skipped_on_sd1_with_reason(corpus, sd1_768, tmp_path):
    files = _one_per_kind(corpus, "SDXL (768+1280)")[:1] + _one_per_kind(corpus, "SD2.x/OpenCLIP-H")[:1]
    folder = tmp_path / "embeddings"
    folder.mkdir()
    for i, src in enumerate(files):
        shutil.copy(src, folder / f"other{chr(ord('a') + i)}{src.suffix}")
    engine = Engine(sd1_768, folder)
    r = engine.generate("othera otherb", steps=1, seed=1, size=64, cfg_scale=1.0)
    assert r.used == []
    assert any("width 2048" in w and "an SDXL embedding" in w and "768 wide" in w for w in r.warnings)
    assert any("width 1024" in w for w in r.warnings)


def test_cli_generate_with_a_real_a1111_file(corpus, sd1_768, home, tmp_path):
    import hashlib
    import json

    from click.testing import CliRunner

    from tihub.cli import cli

    model_dir = tmp_path / "tiny-768"
    sd1_768.pipe.save_pretrained(model_dir)
    src = next(p for p in _one_per_kind(corpus, "A1111 .pt (string_to_param dict)"))
    shutil.copy(src, home / "embeddings" / "realstyle.pt")
    r = CliRunner().invoke(cli, ["generate", "a (realstyle:0.8) house", "--model", str(model_dir), "--steps", "1", "--size", "64", "--seed", "7", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    [out] = json.loads(r.stdout)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert out["embeddings"] == ["realstyle"] and f'TI hashes: "realstyle: {sha[:12]}"' in out["infotext"]
    r = CliRunner().invoke(cli, ["verify", "realstyle", "--model", str(model_dir), "--steps", "1", "--size", "64", "--json"], catch_exceptions=False)
    [res] = json.loads(r.stdout)
    assert res["checks"][1] == {"check": "width", "status": "ok", "detail": "fits the SD1 model (clip_l 768)"}
    assert res["result"] in ("ok", "warning") and res["grid"]


@pytest.fixture(scope="module")
def sdxl_wide():
    """A tiny SDXL-shaped model whose encoders are as wide as SDXL's (768 and 1280)."""
    from tihub.engine.tiny import tiny_sdxl_pipeline

    return from_pipeline(tiny_sdxl_pipeline(l_width=768, g_width=1280), name="tiny-xl-wide")


def test_every_sdxl_layout_reaches_both_encoders(corpus, sdxl_wide, tmp_path):
    files = _one_per_kind(corpus, "SDXL (768+1280)")
    assert len(files) >= 2  # clip_l/clip_g safetensors and the {emb, emb2} torch pickle
    folder = tmp_path / "embeddings"
    folder.mkdir()
    pipe = sdxl_wide.pipe
    engine = Engine(sdxl_wide, folder)
    for i, src in enumerate(files):
        name = f"xlreal{chr(ord('a') + i)}"
        shutil.copy(src, folder / f"{name}{src.suffix}")
        emb = read_embedding(folder / f"{name}{src.suffix}")
        rows = {part: emb.vectors[part][:20].astype(np.float32) for part in ("clip_l", "clip_g")}
        seen1, h1 = capture_encoder_inputs(pipe.text_encoder)
        seen2, h2 = capture_encoder_inputs(pipe.text_encoder_2)
        try:
            r = engine.generate(f"{name} cat", steps=1, seed=1, size=64, cfg_scale=1.0)
        finally:
            h1.remove()
            h2.remove()
        assert r.used == [name], src
        n = len(rows["clip_l"])
        assert any(np.allclose(token_rows(pipe.text_encoder, h[0], 1, n), rows["clip_l"], atol=1e-5) for h in seen1), src
        assert any(np.allclose(token_rows(pipe.text_encoder_2, h[0], 1, n), rows["clip_g"], atol=1e-5) for h in seen2), src
        assert f"{name}: " in r.infotexts[0]


def test_sd1_file_is_skipped_on_sdxl_with_reason(corpus, sdxl_wide, tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    src = _one_per_kind(corpus, "A1111 .pt (string_to_param dict)")[0]
    shutil.copy(src, folder / "oldstyle.pt")
    r = Engine(sdxl_wide, folder).generate("oldstyle cat", steps=1, seed=1, size=64, cfg_scale=1.0)
    assert r.used == []
    assert any("oldstyle" in w and "an SD1 embedding" in w and "2048 wide" in w for w in r.warnings), r.warnings


def test_cli_generate_and_verify_with_a_real_sdxl_file(corpus, sdxl_wide, home, tmp_path):
    import json

    from click.testing import CliRunner

    from tihub.cli import cli

    model_dir = tmp_path / "tiny-xl-wide"
    sdxl_wide.pipe.save_pretrained(model_dir)
    src = next(p for p in _one_per_kind(corpus, "SDXL (768+1280)") if p.suffix == ".safetensors")
    shutil.copy(src, home / "embeddings" / "xlstyle.safetensors")
    r = CliRunner().invoke(cli, ["generate", "a (xlstyle:0.9) house", "-n", "xlstyle", "--model", str(model_dir), "--steps", "1", "--size", "64", "--seed", "7", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    [out] = json.loads(r.stdout)
    assert out["embeddings"] == ["xlstyle"] and 'TI hashes: "xlstyle: ' in out["infotext"]
    r = CliRunner().invoke(cli, ["verify", "xlstyle", "--model", str(model_dir), "--steps", "1", "--size", "64", "--json"], catch_exceptions=False)
    [res] = json.loads(r.stdout)
    width = next(c for c in res["checks"] if c["check"] == "width")
    assert width["status"] == "ok" and "SDXL" in width["detail"], width
    assert res["grid"]
