"""What a model file is: its family (sd1 / sd2 / sdxl / other) and its text-encoder widths.

Read without loading any weights:

- `.safetensors`: the JSON header only (tensor names and shapes; a multi-GB file costs one small
  read);
- `.ckpt` / `.pt` / `.pth` / `.bin` torch pickles: tensor names and shapes from tihub's own
  pickle interpreter (`tihub.formats.pickle_vm`), which never runs code and never reads storages;
- diffusers folders: `model_index.json` and the text encoders' `config.json`.

Families follow the text encoders, which decide what an embedding can load into:

    sd1   `cond_stage_model.transformer.*` (CLIP ViT-L)            widths {"clip_l": 768}
    sd2   `cond_stage_model.model.*` (OpenCLIP ViT-H)              widths {"clip_h": 1024}
    sdxl  `conditioner.embedders.0` (CLIP-L) + `.1` (OpenCLIP-G)   widths {"clip_l": 768, "clip_g": 1280}
    other anything else (LoRA, UNet-only, VAE, refiner, SD3/Flux, an embedding...), with a reason

Widths are reported as found in the file, so a structurally SD1 model with an unusual width is
still `sd1` (its widths tell the truth).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tihub.errors import FormatError, NotFound

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own cap for the JSON header
FAMILIES = ("sd1", "sd2", "sdxl", "other")

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class ModelInfo:
    """Family and text-encoder widths of one model file or folder."""

    path: str
    format: str  # "safetensors" | "torch-zip" | "torch-legacy" | "diffusers"
    family: str  # "sd1" | "sd2" | "sdxl" | "other"
    widths: dict[str, int] = field(default_factory=dict)
    prediction: str | None = None  # "v" | "epsilon" when the file says so, else None
    reason: str | None = None  # why the family is "other" (or a caveat), one phrase
    tensors: int = 0  # how many tensors the file declares (0 for folders)
    variant: str | None = None  # "refiner" | "sd3" | "flux" (family "other"), "inpainting", or None

    @property
    def compat_family(self) -> str:
        """The family compatibility rules use: sd1 | sd2 | sdxl | sdxl-refiner | sd3 | flux | other."""
        if self.family == "other" and self.variant in ("refiner", "sd3", "flux"):
            return "sdxl-refiner" if self.variant == "refiner" else self.variant
        return self.family

    @property
    def width(self) -> int:
        """Total text-encoder width: 768, 1024 or 2048 (SDXL), as an embedding's `width`."""
        return sum(self.widths.values())


# --------------------------------------------------------------------------------------------
# Reading headers


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """`({tensor name: shape}, metadata)` from a safetensors file's validated header (no data read)."""
    from tihub.formats import read_safetensors_header as _header

    header = _header(path, MAX_HEADER)
    return {name: tuple(t[1]) for name, t in header.tensors.items()}, dict(header.metadata)


def _os_error(p: str, exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{p} does not exist; check the path.")
    return FormatError(f"Cannot read {p}: {exc.strerror or exc}.")


def _sniff(p: str) -> str:
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise _os_error(p, exc) from None
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if head.startswith(b"version https://git-lfs"):
        raise FormatError(f"{p} is a git-LFS pointer, not the model itself; download the real file (git lfs pull).")
    if head.lstrip()[:1] == b"<":
        raise FormatError(f"{p} is an HTML/XML page, not a model; the download probably failed.")
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise FormatError(f"{p} is neither a safetensors file nor a torch checkpoint; it may be truncated or something else.")


def _pickle_shapes(p: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a torch pickle, via the formats package (never loads data)."""
    from tihub.formats import tensor_shapes

    return {str(k): tuple(int(d) for d in shape) for k, (shape, _dtype) in tensor_shapes(p).items()}


# --------------------------------------------------------------------------------------------
# Classifying a state dict by its key names and shapes


def _find(shapes: Shapes, *suffixes: str) -> tuple[int, ...] | None:
    """The shape of the first key ending with one of `suffixes` (any prefix, e.g. `state_dict.`)."""
    for suffix in suffixes:
        for key, shape in shapes.items():
            if key.endswith(suffix):
                return shape
    return None


def _has(keys: list[str], *parts: str) -> bool:
    return any(part in key for key in keys for part in parts)


def _width(shape: tuple[int, ...] | None, axis: int) -> int | None:
    if shape is None or len(shape) <= axis:
        return None
    return int(shape[axis])


def _prediction(shapes: Shapes, meta: Mapping[str, str]) -> str | None:
    pt = (meta.get("modelspec.prediction_type") or meta.get("prediction_type") or "").lower()
    if pt in ("v", "v_prediction", "v-prediction"):
        return "v"
    if pt in ("epsilon", "eps"):
        return "epsilon"
    if str(meta.get("ss_v_parameterization", "")).lower() == "true":
        return "v"
    if any(k == "v_pred" or k.endswith(".v_pred") or k.startswith("edm_vpred.") for k in shapes):
        return "v"
    return None


def classify(shapes: Shapes, meta: Mapping[str, str] | None = None) -> tuple[str, dict[str, int], str | None, str | None]:
    """`(family, widths, prediction, reason)` from a state dict's key names and shapes."""
    meta = meta or {}
    keys = list(shapes)
    prediction = _prediction(shapes, meta)
    if not keys:
        return "other", {}, prediction, "the file holds no tensors"

    # Networks and embeddings first: their key names can mention text-encoder modules.
    if _has(keys, "lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down", "lora.up", "hada_w1", "lokr_w1", "oft_blocks") or any(
        k.startswith(("lora_unet_", "lora_te")) for k in keys
    ):
        return "other", {}, prediction, "a LoRA/LyCORIS network, not a full model"
    if any(k in ("emb_params", "clip_l", "clip_g", "string_to_param", "string_to_token") or k.startswith("string_to_param") for k in keys) and len(keys) <= 8:
        return "other", {}, prediction, "a textual-inversion embedding, not a model"
    if _has(keys, "text_encoders.t5xxl", "double_blocks.", "joint_blocks.") :
        return "other", {}, prediction, "an SD3/Flux-style model, whose text encoders tihub embeddings do not target"

    te0 = _has(keys, "conditioner.embedders.0.transformer.")
    te1 = _has(keys, "conditioner.embedders.1.model.")
    if te0 and te1:
        wl = _width(_find(shapes, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"), 1)
        wg = _width(_find(shapes, "conditioner.embedders.1.model.token_embedding.weight"), 1) or _width(
            _find(shapes, "conditioner.embedders.1.model.ln_final.weight"), 0
        )
        widths = {k: v for k, v in (("clip_l", wl), ("clip_g", wg)) if v}
        return "sdxl", widths, prediction, _caveat(widths, {"clip_l": 768, "clip_g": 1280}, keys)
    if _has(keys, "conditioner.embedders.0.model."):
        wg = _width(_find(shapes, "conditioner.embedders.0.model.token_embedding.weight"), 1)
        return "other", ({"clip_g": wg} if wg else {}), prediction, "an SDXL refiner (OpenCLIP-G only), which SDXL embeddings' clip_g part targets"
    if _has(keys, "cond_stage_model.model."):
        w = _width(_find(shapes, "cond_stage_model.model.token_embedding.weight"), 1) or _width(
            _find(shapes, "cond_stage_model.model.ln_final.weight"), 0
        )
        widths = {"clip_h": w} if w else {}
        return "sd2", widths, prediction, _caveat(widths, {"clip_h": 1024}, keys)
    if _has(keys, "cond_stage_model.transformer."):
        w = _width(
            _find(
                shapes,
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.embeddings.token_embedding.weight",
            ),
            1,
        ) or _width(_find(shapes, "cond_stage_model.transformer.text_model.final_layer_norm.weight", "cond_stage_model.transformer.final_layer_norm.weight"), 0)
        widths = {"clip_l": w} if w else {}
        return "sd1", widths, prediction, _caveat(widths, {"clip_l": 768}, keys)

    # No text encoder: say what it is instead.
    if _has(keys, "model.diffusion_model."):
        return "other", {}, prediction, "a UNet-only checkpoint without a text encoder, so its family cannot be read from it"
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys) and _has(keys, "attentions.", "time_embedding.", "conv_in."):
        return "other", {}, prediction, "a diffusers UNet without a text encoder, so its family cannot be read from it"
    if _has(keys, "first_stage_model.") or any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys):
        return "other", {}, prediction, "a VAE, not a full model"
    tok = _find(shapes, "text_model.embeddings.token_embedding.weight")
    if tok is not None:
        w = _width(tok, 1)
        from tihub.formats.model import ENCODER_BY_WIDTH

        return "other", ({ENCODER_BY_WIDTH.get(w, "text_encoder"): w} if w else {}), prediction, "a text encoder alone, not a full model"
    return "other", {}, prediction, "no known Stable Diffusion text-encoder keys"


def _caveat(widths: dict[str, int], expected: dict[str, int], keys: list[str]) -> str | None:
    notes = []
    if widths != expected:
        notes.append("unusual text-encoder widths " + ", ".join(f"{k}={v}" for k, v in widths.items()))
    if not _has(keys, "model.diffusion_model."):
        notes.append("no UNet weights in the file")
    return "; ".join(notes) or None


# --------------------------------------------------------------------------------------------
# Diffusers folders


def _json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            if os.fstat(f.fileno()).st_size > 10 * 1024 * 1024:
                raise FormatError(f"{path} is too large for a config file.")
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        raise FormatError(f"{path} is not a readable JSON config; the folder may be damaged.") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} is not a JSON object; the folder may be damaged.")
    return data


def _component(index: dict[str, Any], name: str) -> bool:
    value = index.get(name)
    return isinstance(value, list) and len(value) == 2 and value[0] is not None and value[1] is not None


def inspect_folder(path: str | os.PathLike[str]) -> ModelInfo:
    """Family and widths of a diffusers folder from `model_index.json` and the encoders' configs."""
    p = os.fspath(path)
    index = _json(os.path.join(p, "model_index.json"))
    if index is None:
        raise FormatError(f"{p} has no model_index.json, so it is not a diffusers model folder; pass a model file or a diffusers folder.")
    cls = str(index.get("_class_name", ""))
    sched = _json(os.path.join(p, "scheduler", "scheduler_config.json")) or {}
    pt = str(sched.get("prediction_type", "") or "")
    prediction = "v" if pt == "v_prediction" else ("epsilon" if pt == "epsilon" else None)

    def hidden(sub: str) -> tuple[int | None, dict[str, Any]]:
        cfg = _json(os.path.join(p, sub, "config.json")) or {}
        h = cfg.get("hidden_size") or cfg.get("d_model")
        return (int(h) if isinstance(h, int) else None), cfg

    has_te = _component(index, "text_encoder")
    has_te2 = _component(index, "text_encoder_2")
    if _component(index, "text_encoder_3") or "Flux" in cls or "StableDiffusion3" in cls:
        variant = "flux" if "Flux" in cls else "sd3"
        return ModelInfo(p, "diffusers", "other", {}, prediction, f"a {cls or 'non-SD'} pipeline (SD3/Flux-style), whose text encoders tihub embeddings do not target", variant=variant)
    if has_te and has_te2:
        wl, _ = hidden("text_encoder")
        wg, _ = hidden("text_encoder_2")
        widths = {k: v for k, v in (("clip_l", wl), ("clip_g", wg)) if v}
        caveat = None if widths == {"clip_l": 768, "clip_g": 1280} else "unusual text-encoder widths " + ", ".join(f"{k}={v}" for k, v in widths.items())
        return ModelInfo(p, "diffusers", "sdxl", widths, prediction, caveat)
    if has_te2:
        wg, _ = hidden("text_encoder_2")
        return ModelInfo(p, "diffusers", "other", {"clip_g": wg} if wg else {}, prediction, "an SDXL refiner (OpenCLIP-G only)", variant="refiner")
    if has_te:
        w, cfg = hidden("text_encoder")
        if w is None:
            return ModelInfo(p, "diffusers", "other", {}, prediction, "the text encoder has no readable config.json")
        sd2 = w == 1024 or (w != 768 and cfg.get("hidden_act") == "gelu")
        if sd2:
            return ModelInfo(p, "diffusers", "sd2", {"clip_h": w}, prediction, None if w == 1024 else f"unusual text-encoder width {w}")
        return ModelInfo(p, "diffusers", "sd1", {"clip_l": w}, prediction, None if w == 768 else f"unusual text-encoder width {w}")
    return ModelInfo(p, "diffusers", "other", {}, prediction, f"a {cls or 'diffusers'} pipeline without a CLIP text encoder")


# --------------------------------------------------------------------------------------------
# Entry point


def variant_of(shapes: Shapes, family: str, reason: str | None) -> str | None:
    """What kind of model within (or beside) its family: an SDXL refiner, SD3, Flux, or an
    inpainting UNet (9 input channels: latents + mask + masked image)."""
    keys = list(shapes)
    if family == "other":
        if _has(keys, "double_blocks."):
            return "flux"
        if _has(keys, "joint_blocks.") or (_has(keys, "text_encoders.t5xxl") and not _has(keys, "double_blocks.")):
            return "sd3"
        if reason and "refiner" in reason:
            return "refiner"
        return None
    conv_in = _find(shapes, "model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] == 9:
        return "inpainting"
    return None


def inspect_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Family and text-encoder widths of a model file (by content, not suffix) or diffusers folder."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return inspect_folder(p)
    if not os.path.exists(p):
        raise NotFound(f"{p} does not exist; check the path.")
    fmt = _sniff(p)
    if fmt == "safetensors":
        shapes, meta = read_safetensors_header(p)
    else:
        shapes, meta = _pickle_shapes(p), {}
    family, widths, prediction, reason = classify(shapes, meta)
    return ModelInfo(p, fmt, family, widths, prediction, reason, len(shapes), variant_of(shapes, family, reason))
