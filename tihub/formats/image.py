"""A1111 image-embedded embeddings (research/runtimes.md 2.7): the `sd-ti-embedding` text chunk
and the pixel encoding. Pillow is imported only here, only when an image is read or written."""

from __future__ import annotations

import base64
import binascii
import io
import json
import zlib
from typing import Any

import numpy as np

from tihub.errors import FormatError, NotAnEmbedding, UnsafeFile
from tihub.formats.budget import EMBEDDING_BUDGET, MemoryBudget

TEXT_KEY = "sd-ti-embedding"
MAX_PIXELS = 8 * 1024 * 1024  # checked from the header, before any pixel is decoded (cards are ~600x512)
MAX_TEXT_CHUNK = 16 * 1024 * 1024  # an sd-ti-embedding value (Pillow itself caps compressed chunks at 1 MiB)
MAX_JSON = 8 * 1024 * 1024  # decompressed pixel payload (75 SDXL vectors as JSON are ~4 MB)
MAX_VECTORS_VALUES = 75 * 1280 * 2

_LCG_CACHE = np.zeros(0, dtype=np.uint8)
_LCG_BLOCK = 1 << 19
_LCG_CACHE_MAX = 1 << 22
# bytes per pixel the pixel decoder holds at its peak: Pillow's RGBA buffer, the RGB copy, the
# masked copy, crop masks and the two xor'ed halves
_PIXEL_BYTES = 16
MAX_BLOCK = 12 * 1024 * 1024  # elements of one pixel data block (a payload of up to 12 MB)


def lcg_stream(count: int) -> np.ndarray:
    """The first `count` values of A1111's generator (callers apply `& 0x0F`).

    seed = (1664525*seed + 1013904223) mod 2**32, yield seed % 255, starting at seed 0. Vectorised:
    the first block is built by doubling with the composed affine map, later blocks by jumping that
    block ahead, so temporary memory stays at a few MB whatever `count` is.
    """
    global _LCG_CACHE
    if count <= len(_LCG_CACHE):
        return _LCG_CACHE[:count]
    mask = np.uint64(0xFFFFFFFF)
    seeds = np.array([1013904223], dtype=np.uint64)  # the seed after one step from 0
    a_n, c_n = 1664525, 1013904223  # the affine map for len(seeds) steps
    while len(seeds) < min(count, _LCG_BLOCK):
        nxt = (seeds * np.uint64(a_n) + np.uint64(c_n)) & mask
        seeds = np.concatenate([seeds, nxt])
        a_n, c_n = (a_n * a_n) & 0xFFFFFFFF, (a_n * c_n + c_n) & 0xFFFFFFFF
    out = np.empty(max(count, len(seeds)), dtype=np.uint8)
    out[: len(seeds)] = seeds % np.uint64(255)
    pos = len(seeds)
    while pos < count:
        seeds = (seeds * np.uint64(a_n) + np.uint64(c_n)) & mask
        k = min(len(seeds), count - pos)
        out[pos : pos + k] = seeds[:k] % np.uint64(255)
        pos += k
    if len(out) <= _LCG_CACHE_MAX:
        _LCG_CACHE = out
    return out[:count]


# ---------------------------------------------------------------------------------------------
# JSON <-> embedding dict
# ---------------------------------------------------------------------------------------------
def _decode_tensors(obj: Any, what: str, depth: int = 0) -> Any:
    if depth > 8:
        raise UnsafeFile(f"{what} nests its embedding JSON too deeply; refusing it.")
    if isinstance(obj, dict):
        if set(obj) == {"TORCHTENSOR"}:
            values = obj["TORCHTENSOR"]
            if not isinstance(values, list):
                raise FormatError(f"{what} has a TORCHTENSOR that is not a list of numbers.")
            try:
                arr = np.array(values, dtype=np.float64)
            except (ValueError, TypeError):
                raise FormatError(f"{what} has a ragged or non-numeric TORCHTENSOR.") from None
            if arr.ndim not in (1, 2) or arr.size > MAX_VECTORS_VALUES:
                raise FormatError(f"{what} has a TORCHTENSOR of shape {list(arr.shape)}, not an embedding.")
            return arr
        return {k: _decode_tensors(v, what, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        raise FormatError(f"{what} has a bare list where a tensor was expected.")
    return obj


# Python objects one JSON value may become: a list slot (8) + a float object (24) + its float64
# copy (8), rounded up; charged per comma before parsing, so "[0,0,0,...]" cannot multiply itself.
_JSON_BYTES_PER_VALUE = 48


def decode_json_payload(raw: bytes, what: str, budget: MemoryBudget | None = None) -> dict[str, Any]:
    if budget is None:
        budget = MemoryBudget(EMBEDDING_BUDGET, what)
    budget.charge(len(raw) + _JSON_BYTES_PER_VALUE * (raw.count(b",") + 1), "its embedding JSON")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise UnsafeFile(f"{what} has embedding JSON nested too deeply; refusing it.") from None
    except (UnicodeDecodeError, ValueError):
        raise FormatError(f"{what} has an sd-ti-embedding payload that is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} has an sd-ti-embedding payload that is not a JSON object.")
    return _decode_tensors(obj, what)


def encode_json_payload(data: dict[str, Any]) -> bytes:
    def conv(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return {"TORCHTENSOR": v.astype(np.float64).tolist()}
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return json.dumps(conv(data)).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _open_image(data: bytes, what: str):  # type: ignore[no-untyped-def]
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=["PNG", "WEBP"])
    except Image.DecompressionBombError:
        raise UnsafeFile(f"{what} declares an image too large to decode; refusing it.") from None
    except Image.DecompressionBombWarning:
        raise UnsafeFile(f"{what} declares an image too large to decode; refusing it.") from None
    except ValueError as exc:  # Pillow: "Decompressed Data Too Large" for text chunks
        raise UnsafeFile(f"{what} has an oversized text chunk ({exc}); refusing it.") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise FormatError(f"{what} is a damaged image ({type(exc).__name__}).") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise UnsafeFile(f"{what} is a {w}x{h} image, over the {MAX_PIXELS}-pixel limit; refusing it.")
    return im


def read_image_embedding(data: bytes, what: str, budget: MemoryBudget | None = None) -> tuple[dict[str, Any], str]:
    """Return (decoded A1111 dict, carrier) from a PNG/WEBP, or raise NotAnEmbedding."""
    from PIL import Image

    if budget is None:
        budget = MemoryBudget(EMBEDDING_BUDGET, what)
    im = _open_image(data, what)
    fmt = (im.format or "").lower()
    text_value: Any = None
    info_text = {k: v for k, v in im.info.items() if isinstance(k, str)}
    try:
        if TEXT_KEY in info_text:
            text_value = info_text[TEXT_KEY]
        elif fmt == "png":
            w, h = im.size
            budget.charge(w * h * 4, "its decoded pixels")  # Pillow's image buffer
            im.load()  # reads the chunks after IDAT too (cap checked above)
            text_value = getattr(im, "text", {}).get(TEXT_KEY)
    except ValueError as exc:
        raise UnsafeFile(f"{what} has an oversized text chunk ({exc}); refusing it.") from None
    except (OSError, SyntaxError, EOFError, zlib.error, Image.DecompressionBombError) as exc:
        raise FormatError(f"{what} is a damaged image ({type(exc).__name__}).") from None
    if text_value is not None:
        if isinstance(text_value, bytes):
            text_value = text_value.decode("latin-1")
        if not isinstance(text_value, str) or not text_value.strip():
            raise FormatError(f"{what} has an empty or corrupt sd-ti-embedding text chunk.")
        if len(text_value) > MAX_TEXT_CHUNK * 2:
            raise UnsafeFile(f"{what} has an oversized sd-ti-embedding chunk; refusing it.")
        # the chunk's text (Pillow holds it, capped by its own limits), then its base64 decoding
        budget.charge(len(text_value) + len(text_value) * 3 // 4, "its sd-ti-embedding chunk")
        try:
            raw = base64.b64decode(text_value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"{what} has an sd-ti-embedding chunk that is not valid base64.") from None
        if raw[:4] == b"PK\x03\x04":  # some tools embed the torch file itself rather than JSON
            from tihub.formats.containers import read_torch_zip

            obj = read_torch_zip(raw, what, budget=budget)
            if not isinstance(obj, dict):
                raise FormatError(f"{what} embeds a torch file that is not an embedding dict.")
            return obj, "text"
        return decode_json_payload(raw, what, budget), "text"
    w, h = im.size
    if not budget.fits(w * h * _PIXEL_BYTES):
        raise NotAnEmbedding(
            f"{what} is a {w}x{h} image, too large to hold A1111 pixel-encoded embedding data; it is not an embedding.",
            kind="image",
        )
    budget.charge(w * h * _PIXEL_BYTES, "decoding its pixels")
    try:
        payload = _pixel_payload(im, what)
    except (OSError, SyntaxError, EOFError) as exc:
        raise FormatError(f"{what} is a damaged image ({type(exc).__name__}).") from None
    if payload is None:
        if "parameters" in info_text:
            raise NotAnEmbedding(
                f"{what} is a generated image with generation parameters but no embedding data.", kind="image"
            )
        raise NotAnEmbedding(f"{what} is an image without embedding data.", kind="image")
    return decode_json_payload(payload, what, budget), "pixels"


def _crop_black(arr: np.ndarray) -> np.ndarray:
    mask = (arr > 0).all(axis=2)
    cols = mask.any(axis=0)
    rows = mask.any(axis=1)
    if not cols.any():
        return arr[:0, :0]
    c0 = int(cols.argmax())
    c1 = arr.shape[1] - int(cols[::-1].argmax())
    r0 = int(rows.argmax())
    r1 = arr.shape[0] - int(rows[::-1].argmax())
    return arr[r0:r1, c0:c1]


def _xor_block(block: np.ndarray) -> np.ndarray:
    stream = lcg_stream(block.size).reshape(block.shape)
    return np.bitwise_xor(block, stream & 0x0F)


def _pixel_payload(im: Any, what: str) -> bytes | None:
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr = _crop_black(arr) & 0x0F
    if arr.size == 0:
        return None
    black = np.flatnonzero(arr.sum(axis=(0, 2), dtype=np.int64) == 0)
    if black.shape[0] < 2:
        return None
    lo_raw = arr[:, : black.min(), :]
    hi_raw = arr[:, black.max() + 1 :, :]
    if lo_raw.shape != hi_raw.shape or lo_raw.size == 0 or lo_raw.size > MAX_BLOCK:
        return None
    lower = _xor_block(np.ascontiguousarray(lo_raw))
    upper = _xor_block(np.ascontiguousarray(hi_raw))
    block = (upper << 4) | lower
    d = zlib.decompressobj()
    try:
        out = d.decompress(block.tobytes(), MAX_JSON)
    except zlib.error:
        return None
    if d.unconsumed_tail:
        raise UnsafeFile(f"{what} hides a pixel payload that inflates past {MAX_JSON} bytes; refusing it.")
    if not d.eof:
        return None
    return out


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _decoration(w: int, h: int, seq: np.ndarray):  # type: ignore[no-untyped-def]
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    i = 0
    for row, y in enumerate(range(-6, h, 8)):
        off = 4 if row % 2 == 0 else 0
        for x in range(-6, w, 8):
            v = int(seq[i % len(seq)])
            draw.ellipse((x + off, y, x + 6 + off, y + 6), fill=(v, v, v))
            i += 1
    return np.asarray(canvas, dtype=np.uint8) & 0xF0


def encode_pixels(payload_json: bytes, height: int, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the (low, high) data blocks, each uint8 [h, w, 3], for the JSON payload."""
    return pixel_blocks(zlib.compress(payload_json, level=9), height, seq)


def pixel_blocks(compressed: bytes, height: int, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (low, high) data blocks for already-compressed payload bytes (runtimes.md 2.7)."""
    payload = np.frombuffer(compressed, dtype=np.uint8)
    hi = payload >> 4
    lo = payload & 0x0F
    h = height
    n = len(payload)
    s = n + (h - n % h)
    s = s + (3 * h - s % (3 * h))
    w = s // (3 * h)
    lo_b = np.resize(lo, s).reshape((h, w, 3))
    hi_b = np.resize(hi, s).reshape((h, w, 3))
    lo_b = lo_b | _decoration(w, h, seq)
    hi_b = hi_b | _decoration(w, h, seq[::-1])
    stream = lcg_stream(h * w * 3).reshape((h, w, 3)) & 0x0F
    return np.bitwise_xor(lo_b, stream), np.bitwise_xor(hi_b, stream)


def write_png_card(payload: dict[str, Any], seq_source: np.ndarray, title: str, footer: str, preview: Any = None) -> bytes:
    """An A1111 embedding card: preview image between the two pixel data blocks, plus the
    `sd-ti-embedding` text chunk. Returns PNG bytes."""
    from PIL import Image, ImageDraw, PngImagePlugin

    js = encode_json_payload(payload)
    if preview is None:
        preview = Image.new("RGB", (256, 256), (96, 112, 128))
    preview = preview.convert("RGB")
    draw = ImageDraw.Draw(preview)
    draw.text((8, 8), title[:40], fill=(255, 255, 255))
    draw.text((8, preview.height - 16), footer[:60], fill=(255, 255, 255))
    flat = np.abs(seq_source.astype(np.float64).reshape(-1)[:1024])
    peak = float(flat.max()) if flat.size else 0.0
    seq = (flat / peak * 255).astype(np.uint8) if peak > 0 else np.full(max(1, flat.size), 128, np.uint8)
    if seq.size == 0:
        seq = np.full(1, 128, np.uint8)
    h = preview.height
    lo, hi = encode_pixels(js, h, seq)
    wl, wp, wh = lo.shape[1], preview.width, hi.shape[1]
    out = np.zeros((h, wl + 1 + wp + 1 + wh, 3), dtype=np.uint8)
    out[:, :wl] = lo
    out[:, wl + 1 : wl + 1 + wp] = np.asarray(preview, dtype=np.uint8)
    out[:, wl + 1 + wp + 1 :] = hi
    img = Image.fromarray(out, "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_KEY, base64.b64encode(js).decode("ascii"))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
