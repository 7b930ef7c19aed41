"""Reproducing pictures: `generate --from-image` re-runs infotext and names what it cannot follow;
`verify --reproduce` regenerates an entry's published previews (loopback Civitai) and records how
alike each is."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from servers.civitai import CivitaiAPI  # noqa: E402

from engine_helpers import engine_on  # noqa: E402
from tihub.cli import cli  # noqa: E402
from tihub.engine.reproduce import model_matches, reproduce_previews, similarity  # noqa: E402


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _meta(infotext: str) -> dict:
    """Civitai's `meta` for a picture tihub made: its infotext's keys, prompts camelCased."""
    from tihub.infotext import parse_infotext

    info = parse_infotext(infotext)
    return {"prompt": info.prompt, "negativePrompt": info.negative_prompt, **info.parameters}


def test_similarity_is_one_for_the_same_picture_and_lower_for_another():
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    same = similarity(a, a.copy())
    assert same == {"ssim": 1.0, "mad": 0.0}
    # a resized copy (Civitai serves width=450 versions) still compares as nearly the same
    assert similarity(a.resize((192, 128)), a)["ssim"] > 0.8
    other = similarity(a, b)
    assert other["ssim"] < 0.3 and other["mad"] > 40


def test_from_image_names_each_setting_it_cannot_follow(home, tiny_sd1_dir, tmp_path):
    info = PngInfo()
    info.add_text("parameters", "a cat <lora:shiny:0.8>\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, "
                  "Face restoration: CodeFormer, Hires upscale: 2, Hires upscaler: 4x-UltraSharp, Denoising strength: 0.4, RNG: CPU")
    src = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(src, pnginfo=info)
    code, out, err = run("generate", "--from-image", str(src), "--model", str(tiny_sd1_dir), "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Warning:")]
    assert "Warning: The LoRA 'shiny' in the prompt is not applied (tihub draws embeddings only), so the picture will differ." in lines
    assert "Warning: 'Face restoration: CodeFormer' asks for face restoration, which tihub does not do, so the picture will differ." in lines
    assert any("4x-UltraSharp" in ln for ln in lines)
    # the LoRA tag is not part of the prompt drawn (A1111 takes it out too)
    [res] = json.loads(out)  # one object per picture
    assert res["infotext"].startswith("a cat \nNegative prompt: blurry\n")
    # --pad-conds is written to the infotext and read back
    code, out, err = run("generate", "a cat", "--model", str(tiny_sd1_dir), "--steps", "1", "--size", "64", "--seed", "3", "--pad-conds", "--out", str(tmp_path / "o"), "--json")
    assert code == 0 and "Pad conds: True" in json.loads(out)[0]["infotext"]
    first = json.loads(out)[0]["path"]
    code, out, err = run("generate", "--from-image", first, "--model", str(tiny_sd1_dir), "--out", str(tmp_path / "o"), "--json")
    assert code == 0 and "Warning" not in err and "Pad conds: True" in json.loads(out)[0]["infotext"]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(json.loads(out)[0]["path"])))


def test_reproduce_previews_library(sd1, tmp_path):
    engine = engine_on(sd1, tmp_path)
    mine = engine.generate("a red cube on a table", "blurry", steps=2, seed=11, size=64, sampler="Euler a")
    other = engine.generate("a forest at night", steps=2, seed=99, size=64)
    served = {"u/mine.png": _png(mine.images[0]), "u/other.png": _png(other.images[0])}
    meta = _meta(mine.infotexts[0])
    previews = [
        {"url": "u/mine.png", "model_hash": engine.model.hash, "params": {"meta": meta}},
        {"url": "u/other.png", "model_hash": engine.model.hash.upper(), "params": {"meta": meta}},
        {"url": "u/elsewhere.png", "model_hash": "0123456789", "params": {"meta": meta}},  # another model: left out
        {"url": "u/gone.png", "model_hash": engine.model.hash, "params": {"meta": meta}},
        # Civitai's other place for the model hash
        {"url": "u/mine.png", "params": {"meta": {**{k: v for k, v in meta.items() if k != "Model hash"}, "hashes": {"model": engine.model.hash}}}},
    ]

    def fetch(url):
        if url not in served:
            from tihub.errors import NetworkError

            raise NetworkError(f"The preview {url} answered HTTP 404; it is skipped.")
        return served[url]

    checks = reproduce_previews(engine, previews, fetch, out=tmp_path / "again")
    assert [c.url for c in checks] == ["u/mine.png", "u/other.png", "u/gone.png", "u/mine.png"]
    assert checks[3].ok and checks[3].ssim == 1.0
    assert checks[0].ok and checks[0].ssim == 1.0 and checks[0].mad == 0.0 and checks[0].seed == 11
    assert checks[1].ok and checks[1].ssim < 0.9
    assert not checks[2].ok and "404" in checks[2].error
    assert Path(checks[0].path).is_file()
    assert model_matches(engine.model, engine.model.hash) and not model_matches(engine.model, "deadbeef")


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny SD1 folder whose text encoder is 768 wide, so a real SD1 embedding file loads."""
    from tihub.engine.tiny import build_tiny_sd1

    return build_tiny_sd1(tmp_path_factory.mktemp("wide") / "tiny-wide", text_width=768)


def test_verify_reproduce_against_loopback_civitai(home, wide_model, tmp_path, monkeypatch):
    from tihub.engine.generate import Engine
    from tihub.engine.models import load_model

    monkeypatch.delenv("TIHUB_OFFLINE", raising=False)
    model = load_model(wide_model, device="cpu")
    engine = Engine(model)
    prompt = "a photo of model1v0 on a shelf"
    with CivitaiAPI(n_models=1) as api:
        # the entry's file, served by the loopback API with its real hashes; `tihub fetch` gets it
        import hashlib

        from safetensors.numpy import save as save_bytes

        data = save_bytes({"emb_params": np.random.default_rng(1).standard_normal((2, 768)).astype(np.float32) * 0.01})
        sha = hashlib.sha256(data).hexdigest().upper()
        f = api.models[0]["modelVersions"][0]["files"][0]
        f.update(sizeKB=len(data) / 1024)
        f["hashes"].update(SHA256=sha, AutoV2=sha[:10])
        api.images["/api/download/models/100"] = data
        (home / "embeddings" / "model1v0.safetensors").write_bytes(data)
        from tihub.engine.vocabulary import Vocabulary

        engine.vocabulary = Vocabulary(home / "embeddings")
        made = engine.generate(prompt, "lowres", steps=2, seed=21, size=64, sampler="Euler a")
        assert made.used == ["model1v0"]
        unrelated = engine.generate("a blue sky", steps=2, seed=5, size=64)
        api.images["/img/100/mine.png"] = _png(made.images[0])
        api.images["/img/100/other.png"] = _png(unrelated.images[0])
        meta = _meta(made.infotexts[0])
        assert meta["Model hash"] == model.hash
        api.models[0]["modelVersions"][0]["images"] = [
            {"url": f"{api.url}/img/100/mine.png", "nsfwLevel": 1, "width": 64, "height": 64, "type": "image", "meta": meta},
            {"url": f"{api.url}/img/100/other.png", "nsfwLevel": 1, "width": 64, "height": 64, "type": "image", "meta": dict(meta)},
            {"url": f"{api.url}/img/100/sd15.png", "nsfwLevel": 1, "width": 64, "height": 64, "type": "image", "meta": {**meta, "Model hash": "6ce0161689"}},
        ]
        (home / "sources.yaml").write_text(f"sources:\n  - name: civitai\n    kind: civitai\n    url: {api.api}\n    allow_private: true\n", encoding="utf-8")
        code, out, err = run("sync", "civitai")
        assert code == 0, err
        (home / "embeddings" / "model1v0.safetensors").unlink()
        code, out, err = run("fetch", "model1v0")
        assert code == 0, err
        code, out, err = run("verify", "model1v0", "--model", str(wide_model), "--reproduce", "--no-grid", "--json")
    assert code == 0, err
    [v] = json.loads(out)  # verify --json: a list of one
    assert v["result"] == "ok", v["checks"]
    rep = v["reproduced"]
    assert [r["url"].rsplit("/", 1)[1] for r in rep] == ["mine.png", "other.png"]  # the SD1.5 one is another model's
    assert rep[0]["ok"] and rep[0]["ssim"] == 1.0 and rep[0]["mad"] == 0.0
    assert rep[1]["ok"] and rep[1]["ssim"] < 0.9
    assert v["checks"][-1]["check"] == "reproduce" and "2 of 2" in v["checks"][-1]["detail"]
    # recorded in the catalogue with the verification
    code, out, err = run("show", "model1v0", "--json")
    shown = json.loads(out)
    shown = shown[0] if isinstance(shown, list) else shown
    details = shown["verifications"][-1]["details"]
    assert [r["ssim"] for r in details["reproduced"]] == [1.0, rep[1]["ssim"]]


def test_reproduce_published_without_previews_on_this_model(sd1, tmp_path):
    from tihub.engine.verify import Verification, reproduce_published

    engine = engine_on(sd1, tmp_path)
    v = Verification("x", None, engine.model.name, engine.model.hash)
    other = [{"url": "u", "model_hash": "6ce0161689", "params": {"meta": {"prompt": "a", "seed": 1}}}, {"url": "v", "params": {}}]
    reproduce_published(engine, v, other, lambda url: b"")
    assert v.reproduced == [] and v.result == "ok"
    assert v.checks[-1]["check"] == "reproduce" and "nothing to compare" in v.checks[-1]["detail"]
    # a picture that is not an image is one sentence, and the check says none could be compared
    mine = [{"url": "u", "model_hash": engine.model.hash, "params": {"meta": {"prompt": "a", "seed": 1, "steps": 1, "Size": "64x64"}}}]
    reproduce_published(engine, v, mine, lambda url: b"<html>nope</html>")
    assert v.reproduced[0]["ok"] is False and "is not an image" in v.reproduced[0]["error"] and v.result == "warning"
