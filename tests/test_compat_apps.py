"""Compatibility per app (A1111, Forge, ComfyUI, InvokeAI, diffusers) and per model family:
SDXL refiner, SD2 512 vs 768-v, SD1.5 inpainting, SD3/Flux (T5), SDXL fine-tune lines.
Held out: real SD1/SD2/SDXL/Pony/T5 embeddings from the shared corpus judged by the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from model_files import write_st
from test_checkpoints import REFINER, SD1, SD2, SDXL, UNET
from tihub.catalog.compat_rules import APPS, fits, line_of
from tihub.checkpoints import inspect_model
from tihub.cli import cli
from tihub.compat import KnownModel, builtin_lookup, check, model_from_file, verdict

SD1_W = {"clip_l": 768}
SD2_W = {"clip_h": 1024}
SDXL_W = {"clip_l": 768, "clip_g": 1280}
T5_W = {"t5xxl": 4096}


def model(family: str | None, name: str = "m", variant: str | None = None) -> KnownModel:
    return KnownModel("q", name, family, "ab" * 32, "ab" * 5, None, "hashed", variant=variant)


def statuses(v: dict) -> dict[str, str]:
    return {a: x["fit"] for a, x in v["apps"].items()}


def test_sd1_embedding_on_sdxl_differs_per_app() -> None:
    v = verdict(SD1_W, None, model("sdxl"))
    assert v["fit"] == "partial"
    assert statuses(v) == {"a1111": "wont-load", "forge": "wont-load", "comfyui": "partial",
                           "invokeai": "wont-load", "diffusers": "partial"}
    assert v["apps"]["a1111"]["reason"].startswith("A1111 lists it as skipped")
    assert v["apps"]["forge"]["reason"].startswith("Forge lists it as skipped")
    assert "ComfyUI applies it to CLIP-L only" in v["apps"]["comfyui"]["reason"]
    assert "InvokeAI refuses it" in v["apps"]["invokeai"]["reason"]


def test_sdxl_embedding_on_sd1_and_same_family_everywhere() -> None:
    v = verdict(SDXL_W, None, model("sd1"))
    assert v["fit"] == "wont-load"
    assert statuses(v)["comfyui"] == "partial" and statuses(v)["a1111"] == "wont-load"
    for w, fam in ((SD1_W, "sd1"), (SD2_W, "sd2"), (SDXL_W, "sdxl")):
        assert set(statuses(verdict(w, None, model(fam))).values()) == {"same-family"}
    assert set(statuses(verdict(SD2_W, None, model("sd1"))).values()) == {"wont-load"}


def test_sdxl_refiner_has_clip_g_only() -> None:
    v = verdict(SDXL_W, None, model("sdxl-refiner"))
    assert v["fit"] == "partial" and "CLIP-G" not in v["reason"] and "clip_g" in v["reason"]
    assert statuses(v)["comfyui"] == "partial" and statuses(v)["a1111"] == "wont-load"
    assert statuses(v)["invokeai"] == "wont-load"
    v = verdict(SD1_W, None, model("sdxl-refiner"))
    assert v["fit"] == "wont-load" and set(statuses(v).values()) == {"wont-load"}
    assert fits("sd1", "sdxl-refiner") == "wont-load" and fits("sdxl", "sdxl-refiner") == "partial"
    # the built-in table knows the refiner as a refiner (it used to say SDXL: "partial")
    refiner = builtin_lookup("7440042bbd")
    assert refiner.family == "sdxl-refiner" and check(SD1_W, None, refiner)[0] == "wont-load"


def test_t5_embeddings_on_flux_and_sd3() -> None:
    v = verdict(T5_W, None, model("flux"))
    assert v["fit"] == "partial"  # Flux also has CLIP-L
    s = statuses(v)
    assert s["comfyui"] == "partial" and s["invokeai"] == "wont-load" and s["a1111"] == "wont-load"
    assert "does not run Flux" in v["apps"]["a1111"]["reason"]
    assert s["forge"] == "unknown"  # not checked: said so, not guessed
    assert verdict(T5_W, None, model("sd1"))["fit"] == "wont-load"
    assert statuses(verdict(SDXL_W, None, model("sd3")))["diffusers"] == "wont-load"  # no TI loader in SD3


def test_sd2_512_and_768_v_and_inpainting_notes() -> None:
    on_768 = builtin_lookup("ad2a33c361")
    on_512 = builtin_lookup("88ecb78256")
    assert (on_768.variant, on_512.variant) == ("768-v", "512")
    v = verdict(SD2_W, "df955bdf6b", on_768, made_on=builtin_lookup("df955bdf6b"))
    assert v["fit"] == "same-family" and "made on" in v["reason"] and "768-v" in v["reason"]
    inpaint = builtin_lookup("c6bbc15e32")
    assert inpaint.family == "sd1" and inpaint.variant == "inpainting"
    v = verdict(SD1_W, None, inpaint)
    assert v["fit"] == "same-family" and "inpainting" in v["reason"]


def test_fine_tune_lines() -> None:
    assert line_of("Pony") == "pony" and line_of("Illustrious") == "illustrious"
    assert line_of("NoobAI-XL (NAI-XL) Epsilon") == "noobai" and line_of("SDXL 1.0") is None
    base = model("sdxl", "sd_xl_base_1.0.safetensors")
    v = verdict(SDXL_W, None, base, line="pony")
    assert v["fit"] == "same-family" and "made for Pony" in v["reason"] and "different line" in v["reason"]
    pony = model("sdxl", "ponyDiffusionV6XL.safetensors")
    assert "different line" not in verdict(SDXL_W, None, pony, line="pony")["reason"]
    assert "made for Illustrious" in verdict(SDXL_W, None, pony, line="illustrious")["reason"]
    assert "different line" not in verdict(SDXL_W, None, base)["reason"]  # line unknown: no flag


def test_model_files_of_other_families(tmp_path: Path) -> None:
    inpaint = {**SD1, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}
    assert inspect_model(write_st(tmp_path / "inp.safetensors", inpaint)).variant == "inpainting"
    flux = {"double_blocks.0.img_attn.proj.weight": (3072, 3072)}
    assert inspect_model(write_st(tmp_path / "flux.safetensors", flux)).compat_family == "flux"
    sd3 = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)}
    assert inspect_model(write_st(tmp_path / "sd3.safetensors", sd3)).compat_family == "sd3"
    ref = model_from_file(write_st(tmp_path / "ref.safetensors", REFINER))
    assert ref.family == "sdxl-refiner" and check(SD1_W, None, ref)[0] == "wont-load"
    v = model_from_file(write_st(tmp_path / "v2-768.safetensors", {**SD2, **UNET}, {"modelspec.prediction_type": "v"}))
    assert v.family == "sd2" and v.variant == "768-v"
    assert model_from_file(write_st(tmp_path / "xl.safetensors", SDXL)).family == "sdxl"


# ------------------------------------------------------------------------------ held out: corpus


CORPUS_FILES = {
    "bad-hands-5": "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/bad-hands-5.pt",  # SD1
    "dgtlv2": "liwilliam2021__cs231n/text-embeddings/dgtlv2.pt",  # SD2, trained on 2.1 512
    "cartoonish_doll": "liwilliam2021__cs231n/text-embeddings/cartoonish_doll.pt",  # SD2, 2.1 768-v
    "SDXL-Detail": "Kaleidia__Embeddings-for-AI-Imagery/General Embeddings/SDXL-Pony/SDXL-Detail.safetensors",
    "Pony-ScoresNeg": "Kaleidia__Embeddings-for-AI-Imagery/General Embeddings/SDXL-Pony/Pony-ScoresNeg.safetensors",
    "T5-CharDetail_a1111_weighted": "Kaleidia__Embeddings-for-AI-Imagery/General Embeddings/T5/T5-CharDetail_a1111_weighted.safetensors",
}


def compat(*args: str) -> dict[str, dict]:
    r = CliRunner().invoke(cli, ["compat", "--offline", "--json", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {x["name"]: x for x in json.loads(r.output)}


def test_real_embeddings_per_app(corpus: Path, home: Path) -> None:
    for name, rel in CORPUS_FILES.items():
        if not (corpus / rel).exists():
            pytest.skip(f"corpus file {rel} is absent")
        shutil.copy(corpus / rel, home / "embeddings" / Path(rel).name)
    (home / "sources.yaml").write_text("sources: []\n")

    xl = compat("--model-hash", "31e35c80fc")  # SDXL base 1.0
    assert xl["bad-hands-5"]["fit"] == "partial"
    assert {a: v["fit"] for a, v in xl["bad-hands-5"]["apps"].items()} == {
        "a1111": "wont-load", "forge": "wont-load", "comfyui": "partial", "invokeai": "wont-load", "diffusers": "partial"}
    assert xl["SDXL-Detail"]["fit"] == "same-family"
    assert xl["Pony-ScoresNeg"]["fit"] == "same-family" and "made for Pony" in xl["Pony-ScoresNeg"]["reason"]
    assert xl["Pony-ScoresNeg"]["line"] == "pony"
    assert xl["dgtlv2"]["fit"] == "wont-load" and xl["T5-CharDetail_a1111_weighted"]["fit"] == "wont-load"
    assert set(APPS) == set(xl["dgtlv2"]["apps"])

    refiner = compat("--model-hash", "7440042bbd")
    assert refiner["bad-hands-5"]["fit"] == "wont-load"  # was "partial" when the refiner counted as SDXL
    assert refiner["SDXL-Detail"]["fit"] == "partial"

    sd2_512 = compat("--model-hash", "88ecb78256")  # SD 2.1 512
    assert sd2_512["dgtlv2"]["fit"] == "same-family"
    assert sd2_512["cartoonish_doll"]["fit"] == "same-family" and "768-v" in sd2_512["cartoonish_doll"]["reason"]
    assert sd2_512["bad-hands-5"]["fit"] == "wont-load"

    sd1 = compat("--model-hash", "6ce0161689", "--app", "comfyui")
    assert sd1["bad-hands-5"]["fit"] == "same-family" and sd1["bad-hands-5"]["app"] == "comfyui"
    assert sd1["SDXL-Detail"]["fit"] == "partial" and "ComfyUI" in sd1["SDXL-Detail"]["reason"]
    a1111 = compat("--model-hash", "6ce0161689", "--app", "a1111")
    assert a1111["SDXL-Detail"]["fit"] == "wont-load" and "A1111 lists it as skipped" in a1111["SDXL-Detail"]["reason"]

    text = CliRunner().invoke(cli, ["compat", "--offline", "--model-hash", "31e35c80fc", "bad-hands-5"]).output
    assert "per app:" in text and "A1111 wont-load" in text and "ComfyUI partial" in text


def test_a_catalogue_seeded_by_an_older_table_is_corrected(tmp_path: Path) -> None:
    from tihub.catalog.db import open_engine
    from tihub.catalog.store import Catalog
    from tihub.compat import model_from_hash

    cat = Catalog(open_engine(f"sqlite:///{tmp_path / 'c.db'}"))
    cat.add_model("Stable Diffusion XL refiner 1.0 (sd_xl_refiner_1.0.safetensors)", None, "7440042bbd", None,
                  "sdxl", None, "builtin")  # what the old table said
    m = model_from_hash("7440042bbd", cat, remote=False)
    assert m.family == "sdxl-refiner" and check(SD1_W, None, m)[0] == "wont-load"
