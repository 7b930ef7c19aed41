"""Infotext: build/parse round trips, real generation PNGs, and look-alikes that must not be misread."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tihub.infotext import (
    NoInfotext,
    build_infotext,
    decode_user_comment,
    parse_infotext,
    parse_ti_hashes,
    png_info,
    pnginfo_chunk,
    read_infotext,
    ti_hashes_value,
)

PARAMS = {
    "Steps": "20",
    "Sampler": "DPM++ 2M Karras",
    "CFG scale": "7",
    "Seed": "1234",
    "Size": "512x768",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Clip skip": "2",
    "TI hashes": ti_hashes_value({"easynegative": "c74b4e810b03aaaa", "bad,hand:x": "5e40d722fc3dbbbb"}),
}


def test_build_matches_a1111_layout():
    text = build_infotext("a cat, (photo:1.2)", "easynegative", PARAMS)
    lines = text.split("\n")
    assert lines[0] == "a cat, (photo:1.2)"
    assert lines[1] == "Negative prompt: easynegative"
    assert lines[2].startswith("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, ")
    assert 'TI hashes: "easynegative: c74b4e810b03, badhandx: 5e40d722fc3d"' in lines[2]
    # no negative prompt line when empty; None values dropped
    assert build_infotext("p", "", {"Steps": 5, "Sampler": "Euler", "Seed": 1, "X": None}) == "p\nSteps: 5, Sampler: Euler, Seed: 1"


def test_round_trip_multiline_and_unicode(tmp_path: Path):
    prompt = "line one,\nline two: ünïcödé 猫"
    text = build_infotext(prompt, "neg\nmore", PARAMS)
    info = parse_infotext(text)
    assert info.prompt == prompt
    assert info.negative_prompt == "neg\nmore"
    assert info.parameters == PARAMS
    assert parse_ti_hashes(info.parameters["TI hashes"]) == {"easynegative": "c74b4e810b03", "badhandx": "5e40d722fc3d"}
    # through a PNG (iTXt, since not Latin-1) and back
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=pnginfo_chunk(text))
    assert read_infotext(path).to_dict() == info.to_dict()
    # Latin-1 text is written as tEXt
    path2 = tmp_path / "y.png"
    Image.new("RGB", (8, 8)).save(path2, pnginfo=pnginfo_chunk("cat\nSteps: 1, Sampler: Euler, Seed: 2"))
    assert b"tEXtparameters" in path2.read_bytes()
    assert read_infotext(path2).parameters == {"Steps": "1", "Sampler": "Euler", "Seed": "2"}


def test_ztxt_and_exif_user_comment(tmp_path: Path):
    from PIL.PngImagePlugin import PngInfo

    text = "a dog\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 9"
    info = PngInfo()
    info.add_text("parameters", text, zip=True)
    p = tmp_path / "z.png"
    Image.new("RGB", (4, 4)).save(p, pnginfo=info)
    assert b"zTXt" in p.read_bytes()
    assert read_infotext(p).negative_prompt == "blurry"
    # JPEG and WEBP with EXIF UserComment, UNICODE prefix, big- and little-endian
    for fmt, enc in (("JPEG", "utf-16-be"), ("WEBP", "utf-16-be"), ("JPEG", "utf-16-le")):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode(enc)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, fmt, exif=exif.tobytes())
        q = tmp_path / f"img.{fmt.lower()}"
        q.write_bytes(buf.getvalue())
        got = read_infotext(q)
        assert got.prompt == "a dog" and got.parameters["Seed"] == "9", (fmt, enc)
    assert decode_user_comment(b"ASCII\0\0\0hello") == "hello"


def test_lookalikes_are_named(tmp_path: Path):
    from PIL.PngImagePlugin import PngInfo

    def png(name: str, chunks: dict[str, str]) -> Path:
        info = PngInfo()
        for k, v in chunks.items():
            info.add_text(k, v)
        p = tmp_path / name
        Image.new("RGB", (4, 4)).save(p, pnginfo=info)
        return p

    cases = {
        "ComfyUI": png("c.png", {"prompt": '{"3": {"class_type": "KSampler"}}', "workflow": "{}"}),
        "NovelAI": png("n.png", {"Software": "NovelAI", "Comment": '{"steps": 28, "uc": "lowres"}', "Description": "a cat"}),
        "Fooocus": png("f.png", {"parameters": '{"Prompt": "a cat", "Version": "Fooocus v2.1"}', "fooocus_scheme": "fooocus"}),
        "InvokeAI": png("i.png", {"invokeai_metadata": '{"positive_prompt": "a cat"}'}),
    }
    for tool, path in cases.items():
        with pytest.raises(NoInfotext) as exc:
            read_infotext(path)
        assert exc.value.tool == tool
        assert tool in str(exc.value)
        rec = png_info(path)
        assert rec["tool"] == tool and rec["prompt"] is None and "error" in rec
    plain = png("p.png", {})
    assert "no A1111 infotext" in png_info(plain)["error"]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"<html>not an image</html>")
    error = png_info(bad)["error"]
    assert error.endswith("is not an image tihub can read (PNG, JPEG or WEBP).") and "0x" not in error
    assert "cannot be read" in png_info(tmp_path / "missing.png")["error"]


def _manifest(corpus: Path) -> list[list[str]]:
    return [line.split("\t") for line in (corpus / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]]


def test_real_generation_pngs(corpus: Path):
    rows = [r for r in _manifest(corpus) if r[6] == "PNG with 'parameters' text chunk"]
    assert rows
    for row in rows:
        info = read_infotext(corpus / row[0])
        assert info.prompt, row[0]
        assert info.parameters["Steps"].isdigit(), row[0]
        assert "Sampler" in info.parameters and "Seed" in info.parameters
        # round trip: building from what we parsed and parsing again is stable
        again = parse_infotext(info.to_text())
        assert again.to_dict() == info.to_dict(), row[0]
    duck = read_infotext(corpus / "d3x-at__sd-parsers/tests/resources/parsers/AUTOMATIC1111/automatic1111_cropped.png")
    assert duck.prompt == "photo of a duck" and duck.negative_prompt == "monochrome"
    assert duck.parameters["Model"] == "realistic_realisticVisionV20_v20" and duck.parameters["Size"] == "512x400"


def test_real_stealth_and_jpeg_and_lookalikes(corpus: Path):
    base = corpus / "d3x-at__sd-parsers/tests/resources/parsers"
    stealth = read_infotext(base / "AUTOMATIC1111/automatic1111_stealth.png")
    assert stealth.prompt == "a circle" and stealth.negative_prompt == "a square"
    assert stealth.parameters["Seed"] == "2015833630"
    with pytest.raises(NoInfotext) as exc:
        read_infotext(base / "ComfyUI/img2img_cropped.png")
    assert exc.value.tool == "ComfyUI"
    with pytest.raises(NoInfotext) as exc:
        read_infotext(base / "InvokeAI/invokeai_dream1.png")
    assert exc.value.tool == "InvokeAI"
    jpeg = corpus / "Kaleidia__Embeddings-for-AI-Imagery/General Embeddings/SD1.5/SD1.5-HairDetail.preview.png"
    if jpeg.exists():
        info = read_infotext(jpeg)
        assert "hairdetail" in info.prompt and info.parameters["Steps"].isdigit()


def test_embedding_png_is_not_generation(corpus: Path):
    p = corpus / "lazealia__Stable_Diff_WebUI_with_Ext/modules/textual_inversion/test_embedding.png"
    rec = png_info(p)
    assert "embedding image" in rec["error"]


# -- re-running a picture: which settings are followed, and one sentence for each that is not ----

from tihub.infotext import SETTING_KEYS, from_civitai_meta, reproduction  # noqa: E402

ALL = {name for name, _ in SETTING_KEYS.values()}


def test_reproduction_maps_every_a1111_key_of_the_wave():
    text = (
        "a cat\nNegative prompt: dog\nSteps: 30, Sampler: Euler a, Schedule type: Karras, CFG scale: 6.5, Seed: 7, Size: 512x768, "
        "Model hash: abcdef1234, Clip skip: 2, ENSD: 31337, RNG: NV, Eta: 0.67, Eta DDIM: 0.1, Sigma churn: 0.5, Sigma tmin: 0.1, "
        "Sigma tmax: 10, Sigma noise: 1.003, Schedule max sigma: 14.6, Schedule min sigma: 0.03, Schedule rho: 7, Pad conds: True, "
        "Denoising strength: 0.45, Hires upscale: 2, Hires steps: 12, Hires upscaler: Latent (nearest-exact), Hires resize: 1024x1536, "
        "Hires sampler: DPM++ 2M, Hires schedule type: Karras, Hires CFG Scale: 5, Version: v1.10.1"
    )
    rep = reproduction(parse_infotext(text))
    assert rep.notes == []
    assert rep.settings == {
        "steps": 30, "cfg_scale": 6.5, "seed": 7, "size": "512x768", "clip_skip": 2, "ensd": 31337, "rng": "nv", "eta": 0.67,
        "s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 1.003, "sigma_max": 14.6, "sigma_min": 0.03,
        "rho": 7.0, "pad_conds": True, "denoising": 0.45, "hires_scale": 2.0, "hires_steps": 12, "hires_upscaler": "Latent (nearest-exact)",
        "hires_resize": "1024x1536", "hires_sampler": "DPM++ 2M", "hires_schedule_type": "Karras", "hires_cfg_scale": 5.0,
    }
    assert (rep.sampler, rep.schedule_type, rep.model_hash) == ("Euler a", "Karras", "abcdef1234")
    # DDIM takes A1111's "Eta DDIM" (the ancestral "Eta" is another sampler's)
    ddim = reproduction(parse_infotext("x\nSteps: 2, Sampler: DDIM, Seed: 1, Size: 64x64, Eta: 0.5, Eta DDIM: 0.2"))
    assert ddim.settings["eta"] == 0.2 and ddim.notes == []
    # A1111 leaves RNG out when it is its default, the GPU generator
    assert reproduction(parse_infotext("x\nSteps: 2, Seed: 1, Size: 64x64")).settings["rng"] == "gpu"


def test_reproduction_names_each_setting_it_cannot_follow():
    text = (
        "a <lora:detail:0.7> cat <lyco:foo:1>\nNegative prompt: bad <hypernet:hn:0.5>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Face restoration: CodeFormer, Tiling: True, Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, Denoising strength: 0.5, "
        "ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, Variation seed: 5, Variation seed strength: 0, CFG Rescale φ: 0, "
        "Lora hashes: \"detail: 0123456789ab\", Mystery knob: 3"
    )
    rep = reproduction(parse_infotext(text), {"steps", "cfg_scale", "seed", "size", "denoising", "hires_scale"})
    assert rep.prompt == "a  cat " and rep.negative_prompt == "bad "
    assert rep.settings == {"steps": 20, "cfg_scale": 7.0, "seed": 1, "size": "512x512", "denoising": 0.5, "hires_scale": 2.0}
    assert rep.notes == [
        "The LoRA 'detail' in the prompt is not applied (tihub draws embeddings only), so the picture will differ.",
        "The LyCORIS 'foo' in the prompt is not applied (tihub draws embeddings only), so the picture will differ.",
        "The hypernetwork 'hn' in the prompt is not applied (tihub draws embeddings only), so the picture will differ.",
        "'Face restoration: CodeFormer' asks for face restoration, which tihub does not do, so the picture will differ.",
        "'Tiling: True' asks for tiling, which tihub does not do, so the picture will differ.",
        "The hires upscaler 'R-ESRGAN 4x+' is a model file tihub does not have; give its file with --hires-upscaler PATH to follow it.",
        "The ADetailer extension's settings are not followed, so the picture will differ.",
        "'Mystery knob: 3' is a setting tihub does not know; it is not followed.",
        "'RNG: GPU' is not followed by this tihub, so the picture will differ.",
    ]
    assert all("\n" not in n and n.count(". ") == 0 for n in rep.notes)
    # denoising without hires is img2img
    rep = reproduction(parse_infotext("x\nSteps: 2, Seed: 1, Size: 64x64, Denoising strength: 0.4, RNG: CPU"), {"steps", "seed", "size"})
    assert rep.notes == ["'Denoising strength: 0.4' without hires fix means an img2img picture; tihub draws it from text only, so it will differ."]


def test_civitai_preview_metadata():
    meta = {
        "prompt": "masterpiece, word1 <lora:x:1>", "negativePrompt": "lowres", "seed": 1234, "steps": 28, "sampler": "DPM++ 2M Karras",
        "cfgScale": 7, "clipSkip": 2, "Size": "512x768", "Model": "anything-v3", "Model hash": "38c1ebe3", "ENSD": "31337",
        "Hires upscale": "2", "Hires upscaler": "Latent", "Denoising strength": "0.5", "resources": [{"name": "x", "type": "lora"}],
        "hashes": {"model": "38c1ebe3"}, "nsfw": False,
    }
    info = from_civitai_meta(meta)
    assert info.prompt == "masterpiece, word1 <lora:x:1>" and info.negative_prompt == "lowres"
    p = info.parameters
    assert (p["Seed"], p["Steps"], p["Sampler"], p["CFG scale"], p["Clip skip"], p["Size"], p["Model hash"]) == ("1234", "28", "DPM++ 2M Karras", "7", "2", "512x768", "38c1ebe3")
    rep = reproduction(info)
    assert rep.settings["hires_scale"] == 2.0 and rep.settings["denoising"] == 0.5 and rep.settings["ensd"] == 31337
    assert rep.notes == ["The LoRA 'x' in the prompt is not applied (tihub draws embeddings only), so the picture will differ."]
    # the on-site generator's variant: width/height, a ComfyUI workflow
    info = from_civitai_meta({"prompt": "a", "width": 832, "height": 1216, "steps": 30, "seed": 5, "comfy": "{\"prompt\": {}}"})
    assert info.parameters["Size"] == "832x1216"
    assert "ComfyUI workflow" in reproduction(info).notes[0]


def test_real_generation_pngs_rerun(corpus: Path):
    rows = [r for r in _manifest(corpus) if r[6] == "PNG with 'parameters' text chunk"]
    for row in rows:
        rep = reproduction(read_infotext(corpus / row[0]))
        assert {"steps", "seed", "size", "cfg_scale"} <= set(rep.settings), row[0]
    base = "d3x-at__sd-parsers/tests/resources/parsers/AUTOMATIC1111/"
    assert reproduction(read_infotext(corpus / base / "automatic1111_stealth.png")).notes == []
    card = reproduction(read_infotext(corpus / "fgjd4j23423f__sd/html/card-no-preview.png"))
    assert card.settings["ensd"] == 31337 and "denoising" not in card.settings
    assert [n.split(" ")[0] for n in card.notes] == ["'Denoising", "'Mask"]
    dog = reproduction(read_infotext(corpus / "Mikubill__sd-webui-controlnet/samples/dog_rel.png"))
    assert dog.notes == ["The ControlNet extension's settings are not followed, so the picture will differ."] and dog.settings["clip_skip"] == 2
    hair = corpus / "Kaleidia__Embeddings-for-AI-Imagery/General Embeddings/SD1.5/SD1.5-HairDetail.preview.png"
    if hair.exists():
        assert reproduction(read_infotext(hair)).notes == []  # CFG Rescale φ: 0 is off; templates are records
