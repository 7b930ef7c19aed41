"""Model family and text-encoder widths from headers, pickles and diffusers folders."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from model_files import write_st
from tihub.checkpoints import classify, inspect_model, read_safetensors_header
from tihub.errors import FormatError, NotFound

UNET = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
}
SD1 = {
    **UNET,
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
}
SD1_OLD = {**UNET, "cond_stage_model.transformer.embeddings.token_embedding.weight": (49408, 768)}
SD2 = {
    **UNET,
    "cond_stage_model.model.token_embedding.weight": (49408, 1024),
    "cond_stage_model.model.ln_final.weight": (1024,),
    "cond_stage_model.model.positional_embedding": (77, 1024),
}
SDXL = {
    **UNET,
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    "conditioner.embedders.1.model.ln_final.weight": (1280,),
}
REFINER = {**UNET, "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)}
LORA = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320, 1, 1),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4, 1, 1),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 768),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj.alpha": (),
}
PEFT_LORA = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320), "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": (320, 4)}
UNET_ONLY = dict(UNET)
DIFFUSERS_UNET = {"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.attentions.0.proj_in.weight": (320, 320, 1, 1)}
EMBEDDING = {"emb_params": (8, 768)}
TEXT_ENCODER = {"text_model.embeddings.token_embedding.weight": (49408, 1024), "text_model.final_layer_norm.weight": (1024,)}


@pytest.mark.parametrize(
    ("tensors", "family", "widths"),
    [
        (SD1, "sd1", {"clip_l": 768}),
        (SD1_OLD, "sd1", {"clip_l": 768}),
        (SD2, "sd2", {"clip_h": 1024}),
        (SDXL, "sdxl", {"clip_l": 768, "clip_g": 1280}),
    ],
    ids=["sd1", "sd1-old-keys", "sd2", "sdxl"],
)
def test_full_checkpoints(tmp_path: Path, tensors, family: str, widths: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    info = inspect_model(write_st(tmp_path / "m.safetensors", tensors))
    assert (info.family, info.widths, info.reason, info.format) == (family, widths, None, "safetensors")
    assert info.tensors == len(tensors)
    assert info.width == sum(widths.values())
    assert info.prediction is None


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        (LORA, "LoRA"),
        (PEFT_LORA, "LoRA"),
        (UNET_ONLY, "UNet-only"),
        (DIFFUSERS_UNET, "diffusers UNet"),
        (REFINER, "refiner"),
        (EMBEDDING, "textual-inversion embedding"),
        (TEXT_ENCODER, "text encoder alone"),
        ({"foo.weight": (3, 3)}, "no known"),
        ({}, "no tensors"),
    ],
    ids=["lora", "peft-lora", "unet-only", "diffusers-unet", "refiner", "embedding", "text-encoder", "unknown", "empty"],
)
def test_other_files_say_why(tmp_path: Path, tensors, reason: str) -> None:  # type: ignore[no-untyped-def]
    info = inspect_model(write_st(tmp_path / "x.safetensors", tensors))
    assert info.family == "other"
    assert info.reason and reason in info.reason


def test_refiner_and_text_encoder_report_widths(tmp_path: Path) -> None:
    assert inspect_model(write_st(tmp_path / "r.safetensors", REFINER)).widths == {"clip_g": 1280}
    assert inspect_model(write_st(tmp_path / "t.safetensors", TEXT_ENCODER)).widths == {"clip_h": 1024}


def test_prediction_hints(tmp_path: Path) -> None:
    v = inspect_model(write_st(tmp_path / "v.safetensors", SD2, {"modelspec.prediction_type": "v"}))
    assert (v.family, v.prediction) == ("sd2", "v")
    eps = inspect_model(write_st(tmp_path / "e.safetensors", SD1, {"modelspec.prediction_type": "epsilon"}))
    assert eps.prediction == "epsilon"
    key = inspect_model(write_st(tmp_path / "k.safetensors", {**SDXL, "v_pred": (0,)}))
    assert (key.family, key.prediction) == ("sdxl", "v")


def test_unusual_widths_are_reported_as_found(tmp_path: Path) -> None:
    info = inspect_model(write_st(tmp_path / "m.safetensors", {**UNET, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 32)}))
    assert info.family == "sd1" and info.widths == {"clip_l": 32}
    assert "unusual" in (info.reason or "")


def test_text_encoder_without_unet_is_noted(tmp_path: Path) -> None:
    only_te = {k: v for k, v in SD1.items() if k.startswith("cond_stage_model.")}
    info = inspect_model(write_st(tmp_path / "m.safetensors", only_te))
    assert info.family == "sd1" and "no UNet" in (info.reason or "")


def test_multi_gb_file_reads_only_the_header(tmp_path: Path) -> None:
    big = {**SDXL, **{f"model.diffusion_model.block{i}.weight": (64, 1024, 1024) for i in range(40)}}  # ~5.4 GB of F16
    path = write_st(tmp_path / "sdxl.safetensors", big)
    assert path.stat().st_size > 5 * 1024**3
    start = time.perf_counter()
    info = inspect_model(path)
    assert info.family == "sdxl"
    assert time.perf_counter() - start < 5  # generous; a full read would take far longer


def test_classify_handles_nested_prefixes() -> None:
    nested = {f"state_dict.{k}": v for k, v in SD2.items()}
    assert classify(nested)[:2] == ("sd2", {"clip_h": 1024})


def test_header_errors_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        inspect_model(tmp_path / "missing.safetensors")
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(FormatError, match="huge.safetensors"):
        inspect_model(huge)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 4) + b"{xx}")
    with pytest.raises(FormatError, match="bad.safetensors"):
        inspect_model(bad)
    notobj = tmp_path / "list.safetensors"
    notobj.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(FormatError):
        inspect_model(notobj)
    noshape = tmp_path / "noshape.safetensors"
    raw = b'{"a": {"dtype": "F16"}}'
    noshape.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(FormatError, match="noshape.safetensors"):
        read_safetensors_header(noshape)
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(FormatError, match="git-LFS pointer"):
        inspect_model(lfs)
    html = tmp_path / "page.safetensors"
    html.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(FormatError, match="HTML"):
        inspect_model(html)
    short = tmp_path / "short.ckpt"
    short.write_bytes(b"abc")
    with pytest.raises(FormatError) as info:
        inspect_model(short)
    assert "\n" not in str(info.value)


def test_torch_checkpoint_shapes_without_loading(tmp_path: Path) -> None:
    import torch

    sd = {
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
    }
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": sd, "global_step": 10}, path)
    info = inspect_model(path)
    assert (info.family, info.widths, info.format) == ("sd1", {"clip_l": 768}, "torch-zip")


# --------------------------------------------------------------------------------------------
# Diffusers folders


def _folder(root: Path, index: dict, configs: dict[str, dict]) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    for sub, cfg in configs.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")).write_text(json.dumps(cfg))
    return root


def test_tiny_sd1_folder(tiny_sd1_dir: Path) -> None:
    info = inspect_model(tiny_sd1_dir)
    assert (info.family, info.widths, info.format) == ("sd1", {"clip_l": 32}, "diffusers")
    assert "unusual" in (info.reason or "")


def test_tiny_sdxl_folder(tiny_sdxl_dir: Path) -> None:
    info = inspect_model(tiny_sdxl_dir)
    assert (info.family, info.widths) == ("sdxl", {"clip_l": 32, "clip_g": 32})


def test_real_shaped_folders(tmp_path: Path) -> None:
    te = ["transformers", "CLIPTextModel"]
    sd2 = _folder(
        tmp_path / "sd2",
        {"_class_name": "StableDiffusionPipeline", "text_encoder": te, "unet": ["diffusers", "UNet2DConditionModel"]},
        {"text_encoder": {"hidden_size": 1024, "hidden_act": "gelu"}, "scheduler": {"prediction_type": "v_prediction"}},
    )
    info = inspect_model(sd2)
    assert (info.family, info.widths, info.prediction, info.reason) == ("sd2", {"clip_h": 1024}, "v", None)
    sd1 = _folder(tmp_path / "sd1", {"_class_name": "StableDiffusionPipeline", "text_encoder": te}, {"text_encoder": {"hidden_size": 768}})
    assert inspect_model(sd1).widths == {"clip_l": 768}
    xl = _folder(
        tmp_path / "xl",
        {"_class_name": "StableDiffusionXLPipeline", "text_encoder": te, "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
        {"text_encoder": {"hidden_size": 768}, "text_encoder_2": {"hidden_size": 1280}, "scheduler": {"prediction_type": "epsilon"}},
    )
    info = inspect_model(xl)
    assert (info.family, info.widths, info.prediction, info.reason) == ("sdxl", {"clip_l": 768, "clip_g": 1280}, "epsilon", None)
    refiner = _folder(
        tmp_path / "refiner",
        {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
        {"text_encoder_2": {"hidden_size": 1280}},
    )
    assert inspect_model(refiner).family == "other"
    sd3 = _folder(tmp_path / "sd3", {"_class_name": "StableDiffusion3Pipeline", "text_encoder": te, "text_encoder_2": te, "text_encoder_3": ["transformers", "T5EncoderModel"]}, {})
    info = inspect_model(sd3)
    assert info.family == "other" and "SD3" in (info.reason or "")


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="model_index.json"):
        inspect_model(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(FormatError, match="not a readable JSON"):
        inspect_model(broken)
