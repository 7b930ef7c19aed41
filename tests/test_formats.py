"""Readers and writers: every layout, bit-exact round trips, torch interop, the convert CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tihub.cli import cli
from tihub.errors import FormatError, NotAnEmbedding
from tihub.formats import (
    Embedding,
    read_embedding,
    read_safetensors_header,
    tensor_shapes,
    write_embedding,
)
from tihub.formats.writer import FORMATS

RNG = np.random.default_rng(1234)


def _bf16_exact(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def _emb(kind: str) -> Embedding:
    if kind == "sd1-f32":
        v = {"clip_l": RNG.standard_normal((3, 768)).astype(np.float32)}
        return Embedding("sd1", v, "f32", "inner", 1200, "a1b2c3d4e5", "v1-5-pruned")
    if kind == "sd2-f16":
        return Embedding("sd2", {"clip_h": RNG.standard_normal((2, 1024)).astype(np.float16)}, "f16")
    if kind == "sd1-bf16":
        return Embedding("bf", {"clip_l": _bf16_exact(RNG.standard_normal((4, 768)))}, "bf16", step=7)
    if kind == "sd1-f64":
        return Embedding("dbl", {"clip_l": RNG.standard_normal((1, 768))}, "f64")
    v = {"clip_l": RNG.standard_normal((2, 768)).astype(np.float32), "clip_g": RNG.standard_normal((2, 1280)).astype(np.float32)}
    return Embedding("xl", v, "f32", sd_checkpoint="31e35c80fc")


KINDS = ["sd1-f32", "sd2-f16", "sd1-bf16", "sd1-f64", "sdxl-f32"]
SUFFIX = {"safetensors": ".safetensors", "a1111": ".pt", "diffusers-bin": ".bin", "diffusers-safetensors": ".safetensors", "png": ".png"}


def _same(a: Embedding, b: Embedding) -> None:
    assert set(a.vectors) == set(b.vectors)
    for k in a.vectors:
        assert a.vectors[k].dtype == b.vectors[k].dtype, k
        assert a.vectors[k].shape == b.vectors[k].shape
        assert a.vectors[k].tobytes() == b.vectors[k].tobytes(), f"{k} not bit-exact"
    assert a.dtype == b.dtype


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_bit_exact(kind: str, fmt: str, tmp_path: Path) -> None:
    emb = _emb(kind)
    path = tmp_path / f"{emb.name}{SUFFIX[fmt]}"
    sdxl_only_safetensors = kind.startswith("sdxl") and fmt in ("a1111", "diffusers-bin", "diffusers-safetensors")
    if sdxl_only_safetensors:
        with pytest.raises(FormatError, match="SDXL"):
            write_embedding(emb, path, fmt)
        assert not path.exists()
        return
    write_embedding(emb, path, fmt)
    back = read_embedding(path)
    _same(emb, back)
    assert back.name == emb.name
    if fmt in ("safetensors", "a1111", "png"):
        assert back.step == emb.step
        assert back.sd_checkpoint == emb.sd_checkpoint
        assert back.sd_checkpoint_name == emb.sd_checkpoint_name
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


@pytest.mark.parametrize("kind", ["sd1-f32", "sd2-f16", "sd1-bf16", "sd1-f64"])
@pytest.mark.parametrize("fmt", ["a1111", "diffusers-bin"])
def test_torch_files_load_in_torch_weights_only(kind: str, fmt: str, tmp_path: Path) -> None:
    emb = _emb(kind)
    path = tmp_path / f"{emb.name}{SUFFIX[fmt]}"
    write_embedding(emb, path, fmt)
    obj = torch.load(path, weights_only=True)
    (want,) = emb.vectors.values()
    if fmt == "a1111":
        assert set(obj) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
        assert obj["string_to_token"] == {"*": 265}
        tensor = obj["string_to_param"]["*"]
        assert obj["name"] == (emb.internal_name or emb.name) and obj["step"] == emb.step
    else:
        ((token, tensor),) = obj.items()
        assert token == f"<{emb.name}>"
    # the zip holds exactly what A1111's safe loader allows
    import re

    names = zipfile.ZipFile(path).namelist()
    assert all(re.match(r"^[^/]+/((data/\d+)|version|(data\.pkl))$", n) for n in names), names
    import pickletools

    pkl = zipfile.ZipFile(path).read(next(n for n in names if n.endswith("data.pkl")))
    globals_ = {arg for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    a1111_allowed = {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch FloatStorage",
        "torch HalfStorage",
        "torch BFloat16Storage",
        "torch DoubleStorage",
    }
    assert globals_ <= a1111_allowed, globals_
    expected = torch.from_numpy(want.copy())
    if emb.dtype == "bf16":
        expected = expected.to(torch.bfloat16)
    assert tensor.dtype == expected.dtype
    assert torch.equal(tensor, expected)


def test_torch_saved_files_read_back(tmp_path: Path) -> None:
    """Files written by torch itself (newer zip entries, cuda-free) in every layout we know."""
    t = torch.randn(2, 768)
    cases = {
        "a1111.pt": {"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": "n", "step": 3, "sd_checkpoint": None, "sd_checkpoint_name": None},
        "diffusers.bin": {"<tok>": t[0]},
        "emb.pt": {"emb_params": t},
        "xl.pt": {"clip_l": t, "clip_g": torch.randn(2, 1280)},
        "xl-inv.pt": {"emb": t[0].bfloat16(), "emb2": torch.randn(1280).bfloat16()},
        "half.pt": {"string_to_param": {"*": t.half()}, "name": "h"},
        "view.pt": {"<v>": torch.randn(10, 768)[3:5]},  # offset into a larger storage
        "transposed.pt": {"<t>": torch.randn(768, 2).t()},  # non-contiguous strides
    }
    for name, obj in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        emb = read_embedding(path)
        assert emb.container == "torch-zip", name
    assert np.array_equal(read_embedding(tmp_path / "view.pt").vectors["clip_l"], cases["view.pt"]["<v>"].numpy())
    assert np.array_equal(read_embedding(tmp_path / "transposed.pt").vectors["clip_l"], cases["transposed.pt"]["<t>"].numpy())
    assert read_embedding(tmp_path / "xl-inv.pt").base == "sdxl"
    assert read_embedding(tmp_path / "xl-inv.pt").dtype == "bf16"
    assert read_embedding(tmp_path / "half.pt").dtype == "f16"
    assert read_embedding(tmp_path / "diffusers.bin").internal_name == "<tok>"


def test_original_ti_parameterdict_and_legacy_format(tmp_path: Path) -> None:
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(2, 768))})
    obj = {"string_to_token": {"*": torch.tensor(265)}, "string_to_param": pd}
    zpath = tmp_path / "orig.pt"
    torch.save(obj, zpath)
    lpath = tmp_path / "legacy.pt"
    torch.save({"string_to_param": {"*": torch.randn(3, 1024)}, "name": "old", "step": 9}, lpath, _use_new_zipfile_serialization=False)
    orig = read_embedding(zpath)
    assert orig.layout == "original-ti" and orig.vector_count == 2
    assert np.array_equal(orig.vectors["clip_l"], pd["*"].detach().numpy())
    leg = read_embedding(lpath)
    assert (leg.container, leg.base, leg.vector_count, leg.internal_name, leg.step) == ("torch-legacy", "sd2", 3, "old", 9)


def test_any_zip_root_name_and_cuda_device_strings(tmp_path: Path) -> None:
    src = tmp_path / "a.pt"
    write_embedding(_emb("sd1-f32"), src, "a1111")
    zin = zipfile.ZipFile(src)
    out = tmp_path / "renamed.pt"
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr("some root name-v2/" + info.filename.split("/", 1)[1], data)
    emb = read_embedding(out)
    assert emb.vector_count == 3


@pytest.mark.parametrize(
    "content, kind",
    [
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 25323\n", "lfs-pointer"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "html"),
        (b'{"error": "Unauthorized"}', "json"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "jpeg"),
        (b"PK\x03\x04\x14\x00\x00\x00\x00\x00", "truncated"),
    ],
)
def test_non_embeddings_are_named(content: bytes, kind: str, tmp_path: Path) -> None:
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    with pytest.raises(NotAnEmbedding) as info:
        read_embedding(path)
    assert info.value.kind == kind
    assert "thing.pt" in str(info.value)


def test_lora_checkpoint_and_truncated_files_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"lora_unet_down.lora_up.weight": np.zeros((4, 4), np.float32), "lora_unet_down.alpha": np.ones((), np.float32)}, str(tmp_path / "l.safetensors"))
    with pytest.raises(NotAnEmbedding, match="LoRA") as info:
        read_embedding(tmp_path / "l.safetensors")
    assert info.value.kind == "lora"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4,), np.float32)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(NotAnEmbedding, match="checkpoint"):
        read_embedding(tmp_path / "c.safetensors")
    good = tmp_path / "good.pt"
    write_embedding(_emb("sd1-f32"), good, "a1111")
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 30):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(FormatError):
            read_embedding(tmp_path / "cut.pt")


def test_data_argument_reads_bytes_without_touching_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    write_embedding(_emb("sd1-f32"), path, "safetensors")
    emb = read_embedding(tmp_path / "elsewhere" / "named.safetensors", data=path.read_bytes())
    assert emb.name == "named" and emb.vector_count == 3


def test_png_pixel_encoding_alone_and_webp(tmp_path: Path) -> None:
    """Our PNG card without its text chunk still reads (pixel path), and so does a lossless WEBP."""
    from PIL import Image

    emb = _emb("sd1-f32")
    path = tmp_path / "card.png"
    write_embedding(emb, path, "png")
    im = Image.open(path)
    assert "sd-ti-embedding" in im.info
    plain = tmp_path / "plain.png"
    im.save(plain)  # Pillow drops text chunks unless asked to keep them
    assert "sd-ti-embedding" not in Image.open(plain).info
    back = read_embedding(plain)
    assert back.extra["carrier"] == "pixels"
    _same(emb, back)
    webp = tmp_path / "card.webp"
    im.save(webp, lossless=True, exact=True)
    wback = read_embedding(webp)
    assert wback.container == "webp" and wback.extra["carrier"] == "pixels"
    _same(emb, wback)
    # the text chunk is base64 JSON with TORCHTENSOR lists, as A1111 writes it
    payload = json.loads(base64.b64decode(im.info["sd-ti-embedding"]))
    assert payload["string_to_token"] == {"*": 265}
    assert np.array_equal(np.array(payload["string_to_param"]["*"]["TORCHTENSOR"], np.float32), emb.vectors["clip_l"])


def test_png_text_chunk_holding_a_torch_file(tmp_path: Path) -> None:
    from PIL import Image, PngImagePlugin

    pt = tmp_path / "inner.pt"
    emb = _emb("sd1-f32")
    write_embedding(emb, pt, "a1111")
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(pt.read_bytes()).decode())
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "card.png", pnginfo=info)
    back = read_embedding(tmp_path / "card.png")
    assert back.name == "card" and back.internal_name == emb.internal_name
    _same(emb, back)


def test_image_without_embedding_is_refused(tmp_path: Path) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "gen.png", pnginfo=info)
    with pytest.raises(NotAnEmbedding, match="generation parameters"):
        read_embedding(tmp_path / "gen.png")


def test_tensor_shapes_reads_pickle_only(tmp_path: Path) -> None:
    sd = {
        "state_dict": {
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(49408, 768, dtype=torch.float16),
            "model.diffusion_model.out.2.bias": torch.zeros(4),
        },
        "global_step": 470000,
    }
    for legacy in (False, True):
        path = tmp_path / f"m{int(legacy)}.ckpt"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        shapes = tensor_shapes(path)
        assert shapes == {
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ((49408, 768), "F16"),
            "model.diffusion_model.out.2.bias": ((4,), "F32"),
        }


def test_tensor_shapes_of_module_state_dict_with_metadata(tmp_path: Path) -> None:
    """`module.state_dict()` is an OrderedDict carrying `_metadata` (pickled with BUILD)."""
    model = torch.nn.Sequential(torch.nn.Linear(768, 4), torch.nn.LayerNorm(4))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 2}, path)
    assert tensor_shapes(path) == {
        "0.weight": ((4, 768), "F32"),
        "0.bias": ((4,), "F32"),
        "1.weight": ((4,), "F32"),
        "1.bias": ((4,), "F32"),
    }


def test_checkpoint_extras_are_inert_in_model_mode_only(tmp_path: Path) -> None:
    """Checkpoints carry numpy scalars etc.: model mode keeps them as inert values, embedding
    reads refuse them."""
    from tihub.formats.containers import read_torch_zip
    from tihub.formats.pickle_vm import Opaque

    path = tmp_path / "model.ckpt"
    weight = torch.randn(3, 4)
    torch.save({"state_dict": {"w": weight}, "loss": np.float32(0.5), "global_step": 10}, path)
    obj = read_torch_zip(path.read_bytes(), "'model.ckpt'", model=True)
    assert np.array_equal(obj["state_dict"]["w"], weight.numpy())
    assert isinstance(obj["loss"], Opaque) and obj["global_step"] == 10
    with pytest.raises(FormatError):
        read_embedding(path)
    assert tensor_shapes(path) == {"w": ((3, 4), "F32")}


def test_read_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_embedding(_emb("sdxl-f32"), path, "safetensors")
    header = read_safetensors_header(path)
    assert header.tensors["clip_g"][:2] == ("F32", (2, 1280))
    assert header.metadata["sd_checkpoint"] == "31e35c80fc"
    assert header.data_offset % 8 == 0
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(str(path))["clip_l"], read_embedding(path).vectors["clip_l"])


def test_reader_imports_no_heavy_modules() -> None:
    code = (
        "import sys; import tihub.formats.reader as r; "
        "bad=[m for m in ('torch','sqlalchemy','httpx','PIL') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_unpickler_in_formats_package() -> None:
    root = Path(__file__).resolve().parent.parent / "tihub" / "formats"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "torch.load" not in text and "import torch" not in text, path


# -- the convert command -------------------------------------------------------------------------


def test_convert_cli_round_trip_and_overwrite_guard(tmp_path: Path) -> None:
    runner = CliRunner()
    src = tmp_path / "bad-hands.pt"
    emb = _emb("sd1-f32")
    write_embedding(emb, src, "a1111")
    result = runner.invoke(cli, ["convert", str(src), "--to", "safetensors"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "bad-hands.safetensors"
    _same(emb, read_embedding(out))
    again = runner.invoke(cli, ["convert", str(src), "--to", "safetensors"])
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(cli, ["convert", str(src), "--to", "safetensors", "--force"])
    assert forced.exit_code == 0
    for fmt in ("png", "diffusers-bin", "a1111"):
        target = tmp_path / f"conv-{fmt}{SUFFIX[fmt]}"
        res = runner.invoke(cli, ["convert", str(out), "--to", fmt, "-o", str(target)])
        assert res.exit_code == 0, res.output
        _same(emb, read_embedding(target))


def test_convert_cli_errors_are_one_sentence(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "page.pt"
    bad.write_bytes(b"<html>nope</html>")
    res = runner.invoke(cli, ["convert", str(bad), "--to", "safetensors"])
    assert res.exit_code == 1
    assert res.output.strip().startswith("Error:") and "HTML" in res.output
    assert len(res.output.strip().splitlines()) == 1
    gone = runner.invoke(cli, ["convert", str(tmp_path / "gone.pt")])
    assert gone.exit_code == 1 and gone.output.strip() == f"Error: '{tmp_path / 'gone.pt'}' does not exist; check the path."
    help_text = runner.invoke(cli, ["convert", "--help"]).output
    assert "Example:" in help_text
    from tihub.cli.convert import _FORMATS

    assert _FORMATS == FORMATS  # --to offers every format the writer has, and only those
