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
