"""A1111 generation parameters ("infotext"): build, parse, and read them from images.

Torch-free. The text layout is A1111's:

    <prompt>
    Negative prompt: <negative>            (only when there is one)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: ..., ...

A value holding `,`, `:` or a newline is written as a JSON string. Images carry it in a PNG text
chunk named `parameters` (tEXt, iTXt or zTXt), in JPEG/WEBP EXIF UserComment, or (A1111 "stealth
pnginfo") in the least significant bits of the alpha channel. Metadata written by other tools
(ComfyUI, InvokeAI, NovelAI, Fooocus) is recognised and named instead of being misread.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Key order A1111 writes (those tihub produces); other keys follow in insertion order.
KEY_ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
             "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength", "Clip skip", "ENSD", "RNG", "TI hashes", "Version")
_LAST = ("Version", "User")  # A1111 writes these after every other key (Hires ..., Eta, ...)

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_MAX_TEXT = 1 << 20  # decompressed text chunks are capped at 1 MiB


@dataclass
class Infotext:
    """Parsed generation parameters."""

    prompt: str = ""
    negative_prompt: str = ""
    parameters: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "parameters": dict(self.parameters)}

    def to_text(self) -> str:
        return build_infotext(self.prompt, self.negative_prompt, self.parameters)


def quote(value: str) -> str:
    """A1111's value quoting: JSON-quote a value holding `,`, `:` or a newline."""
    if "," not in value and ":" not in value and "\n" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value
    return value


def build_infotext(prompt: str, negative_prompt: str | None, params: dict[str, Any]) -> str:
    """The infotext string for one image. `None` values are left out; key == value is bare."""
    ordered = [k for k in KEY_ORDER if k in params and k not in _LAST] + [k for k in params if k not in KEY_ORDER and k not in _LAST] + [k for k in _LAST if k in params]
    pairs = []
    for key in ordered:
        value = params[key]
        if value is None:
            continue
        value = str(value)
        pairs.append(key if key == value else f"{key}: {quote(value)}")
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}"


def ti_hashes_value(used: dict[str, str]) -> str | None:
    """`TI hashes` value: "name: shorthash12, ..." (names stripped of `:` and `,`)."""
    if not used:
        return None
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {sha[:12]}" for name, sha in used.items())


def parse_ti_hashes(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        name, sep, sha = part.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = sha.strip()
    return out


def _params_of(line: str) -> list[tuple[str, str]]:
    return [(k, unquote(v.strip())) for k, v in _PARAM.findall(line)]


def parse_infotext(text: str) -> Infotext:
    """Parse infotext. The parameter line is the last line with at least 3 `Key: value` pairs.

    Lines after it that are `Key: value` (extensions add e.g. `Template: ...`) become parameters.
    """
    lines = text.strip().replace("\r\n", "\n").split("\n")
    params_at = None
    for i in range(len(lines) - 1, -1, -1):
        if len(_PARAM.findall(lines[i])) >= 3 and (i == len(lines) - 1 or lines[i].lstrip().startswith("Steps:")):
            params_at = i
            break
    head = lines if params_at is None else lines[:params_at]
    result = Infotext()
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in head:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result.prompt = "\n".join(prompt)
    result.negative_prompt = "\n".join(negative)
    if params_at is not None:
        for key, value in _params_of(lines[params_at]):
            result.parameters[key] = value
        for extra in lines[params_at + 1:]:
            key, sep, value = extra.partition(":")
            if sep and re.fullmatch(r"\w[\w \-/]*", key.strip()):
                result.parameters[key.strip()] = value.strip()
    return result


# ---------------------------------------------------------------------------------------------
# Reading images


class NoInfotext(Exception):
    """The image carries no A1111 infotext; `tool` names what it carries instead, if known."""

    def __init__(self, message: str, tool: str | None = None) -> None:
        super().__init__(message)
        self.tool = tool


def png_text_chunks(data: bytes) -> dict[str, str]:
    """All tEXt/zTXt/iTXt chunks of a PNG, decoded (compressed text capped at 1 MiB)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        try:
            if ctype == b"tEXt":
                key, _, value = body.partition(b"\0")
                out[key.decode("latin-1")] = value.decode("latin-1")
            elif ctype == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out[key.decode("latin-1")] = _inflate(rest[1:]).decode("latin-1")
            elif ctype == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _tkey, _, value = rest.partition(b"\0")
                out[key.decode("latin-1")] = (_inflate(value) if compressed else value).decode("utf-8", "replace")
        except (ValueError, zlib.error, IndexError):
            continue  # a broken chunk is skipped, as image viewers do
        if ctype == b"IEND":
            break
    return out


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, _MAX_TEXT)
    if d.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment: 8-byte charset prefix (UNICODE = UTF-16, byte order guessed) + text."""
    if isinstance(raw, str):
        return raw
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16")
        # A1111 (piexif) writes big-endian; some tools little-endian: the zero bytes tell
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        return body.decode("utf-16-le" if odd_zeros > even_zeros else "utf-16-be", "replace").rstrip("\0")
    if prefix in (b"ASCII\0\0\0", b"\0" * 8):
        return body.decode("utf-8", "replace").rstrip("\0")
    return raw.decode("utf-8", "replace").rstrip("\0")


def _stealth(image: Any) -> str | None:
    """A1111 stealth pnginfo: signature + 32-bit bit-length + data in alpha (or RGB) LSBs."""
    import numpy as np

    if image.mode not in ("RGBA", "RGB"):
        return None
    arr = np.asarray(image)
    # pixels are read column by column (x outer, y inner)
    cols = arr.transpose(1, 0, 2)
    candidates = []
    if image.mode == "RGBA":
        candidates.append(("alpha", (cols[:, :, 3] & 1).reshape(-1)))
    candidates.append(("rgb", (cols[:, :, :3] & 1).reshape(-1)))
    for mode, bits in candidates:
        if bits.size < 120 + 32:
            continue
        sig = np.packbits(bits[:120]).tobytes().decode("latin-1")
        expected = {"alpha": ("stealth_pnginfo", "stealth_pngcomp"), "rgb": ("stealth_rgbinfo", "stealth_rgbcomp")}[mode]
        if sig not in expected:
            continue
        length = int("".join(map(str, bits[120:152].tolist())), 2)
        if length <= 0 or 152 + length > bits.size:
            return None
        payload = np.packbits(bits[152:152 + length]).tobytes()
        if sig.endswith("comp"):
            with gzip.GzipFile(fileobj=__import__("io").BytesIO(payload)) as g:
                payload = g.read(_MAX_TEXT)
        return payload.decode("utf-8", "replace")
    return None


def _foreign(chunks: dict[str, str]) -> tuple[str, str] | None:
    """(tool, description) for metadata another application wrote."""
    if "prompt" in chunks or "workflow" in chunks:
        if any(v.lstrip().startswith("{") for k, v in chunks.items() if k in ("prompt", "workflow")):
            return "ComfyUI", "ComfyUI metadata (prompt/workflow JSON)"
    for key in ("invokeai_metadata", "invokeai_graph", "invokeai_workflow", "sd-metadata", "Dream"):
        if key in chunks:
            return "InvokeAI", f"InvokeAI metadata ({key})"
    if chunks.get("Software", "").startswith("NovelAI") or ("Comment" in chunks and '"uc"' in chunks["Comment"]):
        return "NovelAI", "NovelAI metadata (Software/Comment)"
    if "fooocus_scheme" in chunks or "Fooocus" in chunks.get("parameters", "")[:4096] and chunks.get("parameters", "").lstrip().startswith("{"):
        return "Fooocus", "Fooocus metadata (JSON parameters)"
    if chunks.get("parameters", "").lstrip().startswith("{"):
        return "unknown", "JSON parameters from another tool, not A1111 infotext"
    return None


def read_infotext(path: str | Path) -> Infotext:
    """A1111 infotext of an image file; raises NoInfotext (naming look-alikes) when there is none."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise NoInfotext(f"{p} cannot be read ({exc.strerror or exc}); check the path.") from exc
    text: str | None = None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        chunks = png_text_chunks(data)
        foreign = _foreign(chunks)
        if foreign:
            tool, what = foreign
            raise NoInfotext(f"{p} has {what}, not A1111 infotext; open it in {tool if tool != 'unknown' else 'the tool that made it'}.", tool)
        text = chunks.get("parameters")
        if text is None and "sd-ti-embedding" in chunks:
            raise NoInfotext(f"{p} is an A1111 embedding image, not a generation; use `tihub inspect` on it.", "A1111 embedding")
    if text is None:
        text = _from_pillow(p, data)
    if not text or not text.strip():
        raise NoInfotext(f"{p} has no A1111 infotext (no 'parameters' chunk, EXIF UserComment or stealth data).")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        tool = "Fooocus" if "fooocus" in stripped.lower()[:4096] else None
        raise NoInfotext(f"{p} holds JSON metadata from {tool or 'another tool'}, not A1111 infotext.", tool or "unknown")
    return parse_infotext(text)


def _from_pillow(p: Path, data: bytes) -> str | None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            exif = im.getexif()
            raw = exif.get_ifd(0x8769).get(0x9286) or exif.get(0x9286)
            if raw:
                return decode_user_comment(raw)
            comment = im.info.get("comment")
            if comment:
                return comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
            if im.format == "PNG" and im.width * im.height <= 64_000_000:
                return _stealth(im.convert("RGBA") if im.mode not in ("RGB", "RGBA") else im)
    except UnidentifiedImageError as exc:
        raise NoInfotext(f"{p} is not an image tihub can read (PNG, JPEG or WEBP).") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise NoInfotext(f"{p} is not a readable image ({exc}).") from exc
    return None


def png_info(path: str | Path) -> dict[str, Any]:
    """The JSON-friendly record `tihub png-info` prints for one file."""
    try:
        info = read_infotext(path)
    except NoInfotext as exc:
        out: dict[str, Any] = {"file": str(path), "prompt": None, "negative_prompt": None, "parameters": {}, "error": str(exc)}
        if exc.tool:
            out["tool"] = exc.tool
        return out
    return {"file": str(path), **info.to_dict()}


def pnginfo_chunk(text: str) -> Any:
    """A PIL PngInfo holding `parameters` (iTXt when the text is not Latin-1, like A1111)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    try:
        text.encode("latin-1")
        info.add_text("parameters", text)
    except UnicodeEncodeError:
        info.add_itxt("parameters", text)
    return info


# ---------------------------------------------------------------------------------------------
# Re-running an image: infotext (or Civitai's preview metadata) -> generation settings

# A1111 infotext key -> (setting name as `Engine.generate` takes it, type). The engine follows the
# settings it has a keyword for; every other one is reported in one sentence.
SETTING_KEYS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size": ("size", str),
    "Clip skip": ("clip_skip", int),
    "RNG": ("rng", str),
    "ENSD": ("ensd", int),
    "Eta": ("eta", float),
    "Eta DDIM": ("eta", float),  # DDIM's eta (A1111 keeps it apart from the ancestral one)
    "Sigma churn": ("s_churn", float),
    "Sigma tmin": ("s_tmin", float),
    "Sigma tmax": ("s_tmax", float),
    "Sigma noise": ("s_noise", float),
    "Schedule max sigma": ("sigma_max", float),
    "Schedule min sigma": ("sigma_min", float),
    "Schedule rho": ("rho", float),
    "UniPC variant": ("uni_pc_variant", str),
    "UniPC skip type": ("uni_pc_skip_type", str),
    "UniPC order": ("uni_pc_order", int),
    "UniPC lower order final": ("uni_pc_lower_order_final", bool),
    "NGMS": ("s_min_uncond", float),
    "NGMS all steps": ("s_min_uncond_all", bool),
    "Skip Early CFG": ("skip_early_cond", float),
    "Pad conds": ("pad_conds", bool),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from": ("seed_resize_from", str),
    "Hires upscale": ("hires_scale", float),
    "Hires resize": ("hires_resize", str),
    "Hires steps": ("hires_steps", int),
    "Hires upscaler": ("hires_upscaler", str),
    "Hires sampler": ("hires_sampler", str),
    "Hires schedule type": ("hires_schedule_type", str),
    "Hires CFG Scale": ("hires_cfg_scale", float),
    "Hires prompt": ("hires_prompt", str),
    "Hires negative prompt": ("hires_negative_prompt", str),
    "Denoising strength": ("denoising", float),
}
# Keys that record facts, not settings (nothing to follow).
RECORD_KEYS = {"Model hash", "Model", "Version", "TI hashes", "Lora hashes", "Hashes", "User", "Template",
               "Negative Template", "Batch size", "Batch pos", "Sampler", "Schedule type", "Emphasis", "VAE hash",
               "Wildcard prompt", "Script", "Dynamic Prompts", "Hires prompt", "Hires negative prompt"}
# Upscalers tihub has without a model file (A1111's latent modes and PIL resamplers).
BUILTIN_UPSCALERS = {"latent", "latent (antialiased)", "latent (bicubic)", "latent (bicubic antialiased)",
                     "latent (nearest)", "latent (nearest-exact)", "none", "lanczos", "nearest"}
# Keys whose value changes the picture in ways tihub does not draw, with what they are.
NOT_FOLLOWED = {
    "Face restoration": "face restoration",
    "Tiling": "tiling",
    "Token merging ratio": "token merging",
    "Noise multiplier": "the img2img noise multiplier",
    "Refiner": "the refiner model",
    "Hires checkpoint": "a separate hires checkpoint",
    "Init image hash": "an img2img source image",
    "Mask blur": "inpainting",
    "Image CFG scale": "an instruct-pix2pix image CFG",
    "CFG Rescale φ": "CFG rescale",
}
_OFF = {"0", "0.0", "false", "none", ""}
# Civitai's preview metadata: its own names for A1111's keys.
CIVITAI_KEYS = {"cfgScale": "CFG scale", "steps": "Steps", "sampler": "Sampler", "seed": "Seed", "clipSkip": "Clip skip",
                "scheduler": "Schedule type", "denoise": "Denoising strength", "denoisingStrength": "Denoising strength"}
CIVITAI_RECORD = {"resources", "hashes", "civitaiResources", "baseModel", "nsfw", "additionalResources", "modelIds",
                  "versionIds", "models", "software", "width", "height", "type", "draft", "engine", "Created Date"}

_EXTRA_NETWORK = re.compile(r"<(lora|lyco|locon|hypernet):([^>:]+)(?::([^>]*))?>", re.I)


def from_civitai_meta(meta: dict[str, Any]) -> Infotext:
    """Civitai's image `meta` object (camelCase for the main fields, A1111 names for the rest)
    as an Infotext; ComfyUI-made pictures keep their `comfy` workflow out (named in a note by
    `reproduction`)."""
    params: dict[str, str] = {}
    for key, value in meta.items():
        if key in ("comfy", "workflow"):
            params["Comfy workflow"] = "yes"
            continue
        if key in ("prompt", "negativePrompt") or value is None or isinstance(value, (dict, list)):
            continue
        if key in CIVITAI_RECORD:
            continue
        name = CIVITAI_KEYS.get(key, key)
        params[name] = str(value) if not isinstance(value, bool) else ("True" if value else "False")
    if "Size" not in params and isinstance(meta.get("width"), int) and isinstance(meta.get("height"), int):
        params["Size"] = f"{meta['width']}x{meta['height']}"
    return Infotext(str(meta.get("prompt") or ""), str(meta.get("negativePrompt") or ""), params)


@dataclass
class Reproduction:
    """What re-running a picture asks for: the prompt, `settings` (keyword arguments of
    `Engine.generate`), and one sentence per setting that cannot be followed."""

    prompt: str
    negative_prompt: str
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sampler: str | None = None  # the infotext's own Sampler and Schedule type values
    schedule_type: str | None = None
    model_hash: str | None = None
    model: str | None = None


def _bool(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def reproduction(info: Infotext, supported: Any = None) -> Reproduction:
    """Turn parsed infotext into generation settings.

    `supported`: the setting names the engine can follow (None: all of SETTING_KEYS). LoRA,
    LyCORIS and hypernetwork tags are taken out of the prompts (A1111 does not condition on them
    either) and named; A1111's defaults for absent keys (RNG GPU) are filled in, so an engine
    that cannot follow them says so.
    """
    p = dict(info.parameters)
    notes: list[str] = []
    prompts = []
    for text in (info.prompt, info.negative_prompt):
        for m in _EXTRA_NETWORK.finditer(text):
            kind = {"hypernet": "hypernetwork", "lyco": "LyCORIS", "locon": "LyCORIS"}.get(m.group(1).lower(), "LoRA")
            notes.append(f"The {kind} '{m.group(2)}' in the prompt is not applied (tihub draws embeddings only), so the picture will differ.")
        prompts.append(_EXTRA_NETWORK.sub("", text))
    if "Hypernet" in p:
        notes.append(f"The hypernetwork '{p['Hypernet']}' is not applied (tihub draws embeddings only), so the picture will differ.")
    rep = Reproduction(prompts[0], prompts[1], sampler=p.get("Sampler"), schedule_type=p.get("Schedule type"),
                       model_hash=p.get("Model hash"), model=p.get("Model"))
    p.setdefault("RNG", "GPU")  # A1111 leaves its default out
    hires = "Hires upscale" in p or "Hires resize" in p or "Hires steps" in p or "Hires upscaler" in p
    for key, value in p.items():
        if key in SETTING_KEYS:
            name, kind = SETTING_KEYS[key]
            ddim = (p.get("Sampler") or "").strip().upper().startswith("DDIM")
            if (key == "Eta DDIM" and not ddim) or (key == "Eta" and ddim):
                continue  # the other sampler family's eta: no effect on this picture
            if key in ("Variation seed", "Variation seed strength") and p.get("Variation seed strength", "0").strip() in _OFF:
                continue  # written, but off
            if key == "Denoising strength" and not hires:
                notes.append(f"'Denoising strength: {value}' without hires fix means an img2img picture; tihub draws it from text only, so it will differ.")
                continue
            if key == "Hires upscaler" and value.strip().lower() not in BUILTIN_UPSCALERS:
                notes.append(f"The hires upscaler '{value}' is a model file tihub does not have; give its file with --hires-upscaler PATH to follow it.")
                continue
            try:
                typed: Any = _bool(value) if kind is bool else kind(value)
            except ValueError:
                notes.append(f"'{key}: {value}' is not a valid value; it is not followed.")
                continue
            if supported is not None and name not in supported:
                if key == "RNG" and value.strip().upper() == "CPU":
                    continue  # what tihub does anyway
                notes.append(f"'{key}: {value}' is not followed by this tihub, so the picture will differ.")
                continue
            rep.settings[name] = typed.lower() if key == "RNG" else typed
        elif key in RECORD_KEYS or key == "Hypernet" or key == "Hypernet strength":
            if key == "Emphasis" and value != "Original":
                notes.append(f"'Emphasis: {value}' is not followed (tihub weights prompts as A1111's Original), so the picture may differ.")
        elif key == "Comfy workflow":
            notes.append("The picture was made by a ComfyUI workflow; only its prompt, sampler, steps, CFG, seed and size are followed.")
        elif key in NOT_FOLLOWED:
            if value.strip().lower() in _OFF:
                continue  # written, but off
            notes.append(f"'{key}: {value}' asks for {NOT_FOLLOWED[key]}, which tihub does not do, so the picture will differ.")
        elif key.startswith(("Hires resize-", "Size-")):
            continue
        elif key.startswith(("ADetailer", "ControlNet")):
            group = "ADetailer" if key.startswith("ADetailer") else "ControlNet"
            line = f"The {group} extension's settings are not followed, so the picture will differ."
            if line not in notes:
                notes.append(line)
        else:
            notes.append(f"'{key}: {value}' is a setting tihub does not know; it is not followed.")
    rep.notes = notes
    return rep
