"""`read_embedding(path, data=None)`: one entry point for every embedding format.

The container is chosen by magic bytes (never by suffix); the layout by the keys inside. Anything
that is not an embedding is refused with `NotAnEmbedding(sentence, kind=...)` saying what it is.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tihub.errors import FormatError, NotAnEmbedding, UnsafeFile
from tihub.formats.containers import (
    MAX_EMBEDDING_FILE,
    BF16Array,
    is_legacy_torch,
    looks_like_safetensors,
    read_legacy_torch,
    read_safetensors,
    read_torch_zip,
)
from tihub.formats.budget import EMBEDDING_BUDGET, MAX_EMBEDDING_VECTORS, MemoryBudget
from tihub.formats.model import ENCODER_BY_WIDTH, Embedding
from tihub.formats.pickle_vm import ModuleState
from tihub.formats.regular import open_regular

MAX_VECTORS = MAX_EMBEDDING_VECTORS
_basename = os.path.basename
_POSIX = os.sep == "/" and os.altsep is None
_S_ISDIR = stat.S_ISDIR
_isfinite = math.isfinite
_readv = os.readv
_DTYPE_TAG = {np.dtype("float32"): "f32", np.dtype("float16"): "f16", np.dtype("float64"): "f64"}
_CHECKPOINT_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.embedders.",
    "model_ema.",
    "text_model.encoder.",
    "down_blocks.",
    "up_blocks.",
    "mid_block.",
    "encoder.down.",
    "decoder.up.",
    "transformer_blocks.",
    "double_blocks.",
)
_LORA_MARKERS = ("lora_up", "lora_down", "lora_A", "lora_B", ".alpha", "lora_unet_", "lora_te", "hada_w", "lokr_")
_LORA_SEARCH = re.compile("|".join(re.escape(m) for m in _LORA_MARKERS)).search


def read_embedding(path: str | os.PathLike[str], data: bytes | None = None) -> Embedding:
    """Read any supported embedding file; raise FormatError (or a subclass) otherwise."""
    fs = os.fspath(path)
    base = (fs[fs.rfind("/") + 1 :] if _POSIX else _basename(fs)) if isinstance(fs, str) else ""
    if base in ("", ".", ".."):  # unusual spellings ('a/', 'a/.', bytes): let pathlib name them
        base = Path(path).name
    what = f"'{base}'"
    if data is None:
        try:
            data = _read_file(fs, what)
        except IsADirectoryError:
            raise NotAnEmbedding(f"{what} is a folder, not an embedding file.", kind="folder") from None
        except OSError as exc:
            raise FormatError(f"{what} cannot be read ({exc.strerror or exc}).") from None
        if len(data) > MAX_EMBEDDING_FILE:  # it grew while being read
            _too_big(None, what, len(data), bytes(data[:64]))
    else:
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)  # memoryview and other buffers: count bytes, not items
        if len(data) > MAX_EMBEDDING_FILE:
            raise NotAnEmbedding(f"{what} is {len(data)} bytes, far too large for an embedding; it is probably a model.", kind="model")
        data = bytearray(data)  # one private copy: the tensors may live in it, never in the caller's buffer
    try:
        with np.errstate(all="ignore"):  # hostile values must not print numpy warnings; every value is checked
            return _read(fs, base, what, data)
    except FormatError:
        raise
    except RecursionError:
        raise UnsafeFile(f"{what} nests its data too deeply; refusing it.") from None
    except MemoryError:
        raise UnsafeFile(f"{what} asks for more memory than an embedding file should; refusing it.") from None
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        struct.error,
        OverflowError,
        EOFError,
        OSError,
        SyntaxError,
        zlib.error,
    ) as exc:
        msg = " ".join(str(exc).split())[:80].rstrip(".")
        raise FormatError(f"{what} is malformed ({type(exc).__name__}: {msg}).") from None


def _stem(base: str) -> str:
    """pathlib's `stem` of a file name."""
    i = base.rfind(".")
    return base[:i] if 0 < i < len(base) - 1 else base


_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_file(fs: Any, what: str) -> bytearray:
    """The whole file, after one fstat, into one private buffer that the tensors then live in
    (no second copy). At most `size + 1` bytes are read, so a file that grew is noticed."""
    fd, st = open_regular(fs, _O_READ)  # a FIFO or device is refused without blocking
    try:
        if _S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory")
        size = st.st_size
        if size > MAX_EMBEDDING_FILE:
            _too_big(fd, what, size)
        buf = bytearray(size + 1)
        total = _readv(fd, [buf])  # a regular file answers in full up to its end
        if 0 < total < size:  # a short read (interrupted, or the file shrank): read on until the end
            with memoryview(buf) as view:
                while total <= size:
                    got = _readv(fd, [view[total:]])
                    if not got:
                        break
                    total += got
    finally:
        os.close(fd)
    del buf[total:]
    return buf


def _too_big(fd: int | None, what: str, size: int, head: bytes = b"") -> None:
    if fd is not None:
        head = os.pread(fd, 64, 0) if hasattr(os, "pread") else b""
    kind = "checkpoint" if head[:2] == b"PK" or head[:1] == b"\x80" else "model"
    if looks_like_safetensors(head, size):
        kind = "model"
    raise NotAnEmbedding(
        f"{what} is {size // (1024 * 1024)} MiB, far too large for an embedding; it is a model or checkpoint file.",
        kind=kind,
    )


def _read(fs: Any, base: str, what: str, data: bytearray) -> Embedding:
    """`data` is a private buffer: tensors may be views into it (containers copy only when a
    buffer is read-only, misaligned, or one storage backs several tensors)."""
    name = _stem(base)
    budget = MemoryBudget(EMBEDDING_BUDGET, what)  # every allocation the file asks for, before it is made
    if not data:
        raise NotAnEmbedding(f"{what} is an empty file; download it again.", kind="empty")
    head = data[:64]
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        obj = read_torch_zip(data, what, budget=budget)
        return from_object(obj, name, what, "torch-zip")
    if is_legacy_torch(data):
        obj = read_legacy_torch(data, what, budget=budget)
        return from_object(obj, name, what, "torch-legacy")
    if head[:8] == b"\x89PNG\r\n\x1a\n" or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        from tihub.formats.image import read_image_embedding

        container = "png" if head[:1] == b"\x89" else "webp"
        if base.lower().endswith((".preview.png", ".preview.webp")):
            raise NotAnEmbedding(f"{what} is a preview image next to an embedding, not an embedding.", kind="preview")
        budget.charge(len(data), "a copy of the image for Pillow")
        payload, carrier = read_image_embedding(bytes(data), what, budget)
        emb = from_object(payload, name, what, container, from_image=True)
        emb.extra["carrier"] = carrier
        if emb.dtype == "f64" and payload.get("dtype") != "f64":  # JSON floats; A1111 casts them to float32 (exact for its own files)
            emb.vectors = {k: v.astype(np.float32) for k, v in emb.vectors.items()}
            emb.dtype = "f32"
        if isinstance(payload.get("dtype"), str) and payload["dtype"] in ("f16", "bf16"):
            _restore_dtype(emb, payload["dtype"])
        return emb
    if looks_like_safetensors(head, len(data)):
        tensors, metadata = read_safetensors(data, what, budget)
        return from_safetensors(tensors, metadata, name, what)
    if head[:1] == b"\x80":
        raise NotAnEmbedding(f"{what} is a plain Python pickle, not a torch file or embedding.", kind="pickle")
    raise _identify_other(data, what, base)


def _identify_other(data: bytes, what: str, base: str) -> NotAnEmbedding:
    head = data[:512]
    suffix = Path(base).suffix.lower() if base else ""
    if head[:3] == b"\xff\xd8\xff":
        if suffix in (".png", ".webp"):
            return NotAnEmbedding(f"{what} is a JPEG image named {suffix}, not an embedding.", kind="jpeg")
        return NotAnEmbedding(f"{what} is a JPEG image, not an embedding.", kind="jpeg")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return NotAnEmbedding(f"{what} is a GIF image, not an embedding.", kind="image")
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return NotAnEmbedding(f"{what} is a 7z archive, not an embedding.", kind="archive")
    if head[:2] == b"\x1f\x8b":
        return NotAnEmbedding(f"{what} is a gzip archive, not an embedding.", kind="archive")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"version https://git-lfs.github.com/spec/"):
        return NotAnEmbedding(
            f"{what} is a Git LFS pointer, not the file itself; fetch it through LFS (git lfs pull) or the raw download URL.",
            kind="lfs-pointer",
        )
    low = stripped[:200].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head.lower():
        return NotAnEmbedding(f"{what} is an HTML page (probably an error or login page), not an embedding.", kind="html")
    if stripped[:1] in (b"{", b"["):
        return NotAnEmbedding(f"{what} is a JSON document (metadata or an error response), not an embedding.", kind="json")
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return NotAnEmbedding(f"{what} is a text file, not an embedding.", kind="text")
        except UnicodeDecodeError:
            pass
    return NotAnEmbedding(f"{what} is not a format tihub recognises as an embedding.", kind="unknown")


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------
def _tensor(value: Any) -> tuple[np.ndarray, str] | None:
    if isinstance(value, BF16Array):
        return value.array, "bf16"
    if isinstance(value, np.ndarray):
        tag = _DTYPE_TAG.get(value.dtype)
        return value, tag if tag is not None else str(value.dtype)
    return None


_TENSOR_TYPES = (np.ndarray, BF16Array)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, _TENSOR_TYPES)


def _refuse_non_embedding(obj: dict[str, Any], what: str) -> None:
    keys = [k for k in obj if type(k) is str or isinstance(k, str)][:5000]
    if isinstance(obj.get("state_dict"), dict):
        raise NotAnEmbedding(f"{what} is a model checkpoint (it has a state_dict), not an embedding.", kind="checkpoint")
    if _LORA_SEARCH("\n".join(keys)):  # no marker holds a newline: a hit in the joined keys is a hit in one key
        raise NotAnEmbedding(f"{what} is a LoRA/LyCORIS network, not an embedding; put it in the Lora folder.", kind="lora")
    for k in keys:
        if k.startswith(_CHECKPOINT_PREFIXES):
            raise NotAnEmbedding(f"{what} is a model checkpoint (it holds model weights), not an embedding.", kind="checkpoint")
    t5 = "t5xxl" in obj
    if not t5:
        for v in obj.values():
            if isinstance(v, BF16Array):
                v = v.array
            if isinstance(v, np.ndarray) and v.shape[-1:] == (4096,):
                t5 = True
                break
    if t5:
        raise NotAnEmbedding(f"{what} is a T5 (4096-wide) text-encoder embedding, which SD1/SD2/SDXL cannot use.", kind="t5")


def _vectors(arr: np.ndarray, what: str, label: str) -> np.ndarray:
    ndim = arr.ndim
    if ndim == 1:
        arr = arr.reshape(1, -1)
    elif ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif ndim != 2:
        raise NotAnEmbedding(f"{what} holds a {ndim}-D tensor {label}, not embedding vectors.", kind="tensor")
    n, w = arr.shape
    if w not in ENCODER_BY_WIDTH:
        if w == 4096:
            raise NotAnEmbedding(f"{what} is a T5 (4096-wide) text-encoder embedding, which SD1/SD2/SDXL cannot use.", kind="t5")
        raise NotAnEmbedding(f"{what} holds vectors {w} wide, which matches no CLIP text encoder (768/1024/1280).", kind="unknown")
    if n == 0 or n > MAX_VECTORS:
        raise FormatError(f"{what} holds {n} vectors; an embedding has 1 to {MAX_VECTORS}.")
    dtype = arr.dtype
    if dtype.kind != "f":
        raise FormatError(f"{what} stores its vectors as {dtype}, not floating point.")
    flags = arr.flags
    if not flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
        flags = arr.flags
    if not _finite(arr, dtype):
        raise FormatError(f"{what} has NaN or infinite values in its vectors; it is damaged.")
    if dtype == _F64 and max(-float(arr.min()), float(arr.max())) > _F32_MAX:  # inf once cast to float32, as every runtime does
        raise FormatError(f"{what} has float64 values beyond the float32 range in its vectors; it is damaged.")
    if not flags.writeable:
        arr = arr.copy()
    return arr


_F16 = np.dtype(np.float16)
_F64 = np.dtype(np.float64)
_F32_MAX = float(np.finfo(np.float32).max)


def _finite(arr: np.ndarray, dtype: np.dtype) -> bool:
    if dtype == _F16:  # numpy's float16 isfinite is slow; test the exponent bits
        return int((arr.view(np.uint16) & 0x7FFF).max()) < 0x7C00  # exponent bits all set: inf/NaN
    flat = arr.reshape(-1)
    # fast path: a finite dot product proves every value is finite; otherwise check exactly
    # (numpy's overflow warnings are off for the whole read: see read_embedding)
    return _isfinite(np.dot(flat, flat)) or bool(np.isfinite(arr).all())


def _pair(value: Any, what: str, label: str) -> tuple[np.ndarray, str]:
    if type(value) is np.ndarray:
        tag = _DTYPE_TAG.get(value.dtype)
        return _vectors(value, what, label), tag if tag is not None else str(value.dtype)
    t = _tensor(value)
    if t is None:
        raise FormatError(f"{what} has {label} that is not a tensor.")
    return _vectors(t[0], what, label), t[1]


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def from_object(obj: Any, name: str, what: str, container: str, from_image: bool = False) -> Embedding:
    """Normalize a decoded torch/JSON object into an Embedding."""
    if _is_tensor(obj):
        t = _tensor(obj)
        assert t is not None
        raise NotAnEmbedding(
            f"{what} is a bare tensor of shape {list(t[0].shape)} saved with torch, not an embedding.", kind="tensor"
        )
    if not isinstance(obj, dict):
        raise NotAnEmbedding(f"{what} holds a {type(obj).__name__}, not an embedding dict.", kind="unknown")
    if "string_to_param" in obj:
        stp = obj["string_to_param"]
        layout = "a1111"
        if isinstance(stp, ModuleState):
            stp = stp.get("_parameters", {})
            layout = "original-ti"
        if not isinstance(stp, dict) or not stp:
            raise FormatError(f"{what} has an empty or invalid string_to_param.")
        stt = obj.get("string_to_token")
        if isinstance(stt, dict):
            for v in stt.values():
                if isinstance(v, _TENSOR_TYPES):
                    layout = "original-ti"
                    break
        tensors = list(stp.items())
        token, value = tensors[0]
        arr, dtype = _pair(value, what, "in string_to_param")
        key = ENCODER_BY_WIDTH[arr.shape[1]]
        extra: dict[str, Any] = {}
        if len(tensors) > 1:
            extra["ignored_terms"] = [str(k) for k, _ in tensors[1:]]
        if isinstance(token, str):
            extra["placeholder"] = token
        internal = obj.get("name")
        if not isinstance(internal, str) or (layout == "original-ti" and not internal):
            internal = None
        step = obj.get("step")
        ckpt = obj.get("sd_checkpoint")
        ckpt_name = obj.get("sd_checkpoint_name")
        return Embedding(
            name=name,
            vectors={key: arr},
            dtype=dtype,
            internal_name=internal,
            step=step if type(step) is int else _int_or_none(step),
            sd_checkpoint=ckpt if isinstance(ckpt, str) else None,
            sd_checkpoint_name=ckpt_name if isinstance(ckpt_name, str) else None,
            layout=layout,
            container=container,
            extra=extra,
        )
    meta = {"name": obj.get("name"), "step": obj.get("step"), "sd_checkpoint": obj.get("sd_checkpoint"), "sd_checkpoint_name": obj.get("sd_checkpoint_name")}
    tensor_items = {k: v for k, v in obj.items() if isinstance(v, _TENSOR_TYPES)}
    if not from_image:
        _refuse_non_embedding(obj, what)
    if "clip_l" in tensor_items and "clip_g" in tensor_items:
        return _sdxl(tensor_items["clip_l"], tensor_items["clip_g"], name, what, container, "sdxl", meta)
    if set(tensor_items) == {"emb", "emb2"}:
        a, _ = _pair(tensor_items["emb"], what, "'emb'")
        b, _ = _pair(tensor_items["emb2"], what, "'emb2'")
        by_width = {a.shape[1]: tensor_items["emb"], b.shape[1]: tensor_items["emb2"]}
        if set(by_width) != {768, 1280}:
            raise NotAnEmbedding(f"{what} has emb/emb2 tensors that are not an SDXL 768 + 1280 pair.", kind="unknown")
        return _sdxl(by_width[768], by_width[1280], name, what, container, "xl-inversion", meta)
    if "emb_params" in tensor_items:
        arr, dtype = _pair(tensor_items["emb_params"], what, "'emb_params'")
        return _single(arr, dtype, name, container, "emb_params", meta, None)
    if len(tensor_items) == 1:
        (token, value), = tensor_items.items()
        arr, dtype = _pair(value, what, f"for {str(token)[:40]!r}")
        return _single(arr, dtype, name, container, "diffusers", meta, str(token))
    if not tensor_items:
        raise NotAnEmbedding(f"{what} holds no tensors, so it is not an embedding.", kind="unknown")
    keys = ", ".join(str(k)[:30] for k in list(tensor_items)[:4])
    raise NotAnEmbedding(
        f"{what} holds {len(tensor_items)} tensors ({keys}) in no embedding layout tihub knows.", kind="unknown"
    )


def _single(arr: np.ndarray, dtype: str, name: str, container: str, layout: str, meta: dict[str, Any], token: str | None) -> Embedding:
    internal = token if token is not None else meta["name"]
    step = meta["step"]
    ckpt = meta["sd_checkpoint"]
    ckpt_name = meta["sd_checkpoint_name"]
    return Embedding(
        name=name,
        vectors={ENCODER_BY_WIDTH[arr.shape[1]]: arr},
        dtype=dtype,
        internal_name=internal if isinstance(internal, str) else None,
        step=step if type(step) is int else _int_or_none(step),
        sd_checkpoint=ckpt if isinstance(ckpt, str) else None,
        sd_checkpoint_name=ckpt_name if isinstance(ckpt_name, str) else None,
        layout=layout,
        container=container,
    )


def _sdxl(l_val: Any, g_val: Any, name: str, what: str, container: str, layout: str, meta: dict[str, Any]) -> Embedding:
    cl, dl = _pair(l_val, what, "'clip_l'")
    cg, dg = _pair(g_val, what, "'clip_g'")
    if cl.shape[1] != 768 or cg.shape[1] != 1280:
        raise FormatError(
            f"{what} has SDXL tensors of widths {cl.shape[1]}/{cg.shape[1]}; expected clip_l 768 and clip_g 1280."
        )
    return Embedding(
        name=name,
        vectors={"clip_l": cl, "clip_g": cg},
        dtype=dl if dl == dg else f"{dl}/{dg}",
        internal_name=_str_or_none(meta.get("name")),
        step=_int_or_none(meta.get("step")),
        sd_checkpoint=_str_or_none(meta.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(meta.get("sd_checkpoint_name")),
        layout=layout,
        container=container,
    )


_META_KEYS = ("name", "step", "sd_checkpoint", "sd_checkpoint_name")


def from_safetensors(tensors: dict[str, Any], metadata: dict[str, str], name: str, what: str) -> Embedding:
    obj: dict[str, Any] = dict(tensors)
    if metadata:
        for k in _META_KEYS:
            if k in metadata and k not in obj:
                obj[k] = metadata[k]
    emb = from_object(obj, name, what, "safetensors")
    if metadata:
        extra = {k: v for k, v in metadata.items() if k not in _META_KEYS}
        if extra:
            emb.extra["metadata"] = extra
    return emb


def _restore_dtype(emb: Embedding, tag: str) -> None:
    """Image payloads are float lists; tihub's own cards record f16/bf16 so values come back typed."""
    for k, v in emb.vectors.items():
        v32 = v.astype(np.float32)
        if tag == "f16":
            emb.vectors[k] = v32.astype(np.float16)
        else:
            bits = v32.view(np.uint32) & np.uint32(0xFFFF0000)
            emb.vectors[k] = bits.view(np.float32)
    emb.dtype = tag
