"""`write_embedding(emb, path, fmt)`: safetensors (default), A1111 `.pt`, diffusers `.bin` /
`.safetensors`, and the A1111 PNG embedding card. Writes are atomic (temp file + os.replace) and
values round-trip bit-exactly (dtype preserved, bf16 included).

The torch files are written by our own minimal pickler (protocol 2) into a torch zip with the
entries torch itself writes; torch reads them back with weights_only=True.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tihub.errors import FormatError
from tihub.formats.model import Embedding

FORMATS = ("safetensors", "a1111", "diffusers-bin", "diffusers-safetensors", "png")
SUFFIX = {
    "safetensors": ".safetensors",
    "a1111": ".pt",
    "diffusers-bin": ".bin",
    "diffusers-safetensors": ".safetensors",
    "png": ".png",
}
A1111_STAR_TOKEN = 265  # CLIP id of "*", what A1111 writes in string_to_token

# dtype tag -> (safetensors dtype, torch storage class, itemsize)
_DTYPES = {
    "f32": ("F32", "FloatStorage", 4),
    "f16": ("F16", "HalfStorage", 2),
    "bf16": ("BF16", "BFloat16Storage", 2),
    "f64": ("F64", "DoubleStorage", 8),
}


class TensorBytes:
    """A tensor ready to write: raw little-endian bytes, a dtype tag and a shape."""

    __slots__ = ("raw", "dtype", "shape")

    def __init__(self, array: np.ndarray, dtype: str) -> None:
        if dtype not in _DTYPES:
            raise FormatError(f"cannot write vectors of dtype {dtype!r}; use f32, f16, bf16 or f64.")
        self.dtype = dtype
        self.shape = tuple(int(x) for x in array.shape)
        if dtype == "bf16":
            bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
            if np.any(bits & np.uint32(0xFFFF)):
                raise FormatError("the vectors are marked bf16 but hold values bfloat16 cannot represent exactly.")
            self.raw = (bits >> np.uint32(16)).astype("<u2").tobytes()
        else:
            np_dtype = {"f32": "<f4", "f16": "<f2", "f64": "<f8"}[dtype]
            self.raw = np.ascontiguousarray(array).astype(np_dtype, copy=False).tobytes()

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _tensor_dtype(emb: Embedding, arr: np.ndarray) -> str:
    if emb.dtype == "bf16":
        return "bf16"
    tag = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.float64): "f64"}.get(arr.dtype)
    if tag is None:
        raise FormatError(f"embedding '{emb.name}' has vectors of dtype {arr.dtype}, which tihub cannot write.")
    return tag


def _tensors(emb: Embedding) -> dict[str, TensorBytes]:
    if not emb.vectors:
        raise FormatError(f"embedding '{emb.name}' has no vectors to write.")
    return {k: TensorBytes(v, _tensor_dtype(emb, v)) for k, v in emb.vectors.items()}


def write_embedding(emb: Embedding, path: str | os.PathLike[str], fmt: str = "safetensors", preview: Any = None) -> Path:
    """Write `emb` to `path` in `fmt`; returns the path. Atomic: the file appears complete or not at all.

    `preview` (png only): a PIL image to show between the data blocks (A1111 uses the last
    training preview); a plain card is drawn when it is None."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = Path(path)
    if fmt == "safetensors":
        data = _safetensors_bytes(emb, diffusers=False)
    elif fmt == "diffusers-safetensors":
        data = _safetensors_bytes(emb, diffusers=True)
    elif fmt == "a1111":
        data = _torch_zip_bytes(_a1111_object(emb), root=_archive_root(out))
    elif fmt == "diffusers-bin":
        data = _torch_zip_bytes(_diffusers_object(emb), root=_archive_root(out))
    else:
        data = _png_bytes(emb, preview)
    atomic_write(out, data)
    return out


def file_mode() -> int:
    """The mode a new file gets from open(): 0666 less the process umask (0644 under the usual
    022), so files tihub writes are readable by an app running as another user, as any file
    a user saves is. mkstemp's 0600 is for secrets, which embeddings are not."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read the umask by setting it (and put it back at once)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path` and rename it into place, mode per `file_mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _archive_root(path: Path) -> str:
    stem = "".join(c if (c.isascii() and (c.isalnum() or c in "-_.")) else "_" for c in path.stem)
    return stem.strip(".") or "archive"


def _token(emb: Embedding) -> str:
    if emb.internal_name and emb.layout == "diffusers":
        return emb.internal_name
    return f"<{emb.name}>"


def _meta(emb: Embedding) -> dict[str, str]:
    out: dict[str, str] = {}
    if emb.internal_name is not None:
        out["name"] = emb.internal_name
    elif emb.name:
        out["name"] = emb.name
    if emb.step is not None:
        out["step"] = str(emb.step)
    if emb.sd_checkpoint is not None:
        out["sd_checkpoint"] = emb.sd_checkpoint
    if emb.sd_checkpoint_name is not None:
        out["sd_checkpoint_name"] = emb.sd_checkpoint_name
    return out


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------
def _safetensors_bytes(emb: Embedding, diffusers: bool) -> bytes:
    tensors = _tensors(emb)
    if diffusers:
        if len(tensors) != 1:
            raise FormatError(
                f"embedding '{emb.name}' is SDXL (two encoders); diffusers files hold one tensor, use --to safetensors."
            )
        named = {_token(emb): next(iter(tensors.values()))}
        metadata = {"format": "pt"}
    else:
        named = dict(tensors) if len(tensors) > 1 else {"emb_params": next(iter(tensors.values()))}
        metadata = _meta(emb)
    return safetensors_bytes(named, metadata)


def safetensors_bytes(named: dict[str, TensorBytes], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for key in sorted(named):
        t = named[key]
        header[key] = {
            "dtype": _DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(t.raw)],
        }
        offset += len(t.raw)
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + b"".join(named[k].raw for k in sorted(named))


# ---------------------------------------------------------------------------------------------
# torch zip with our own pickler
# ---------------------------------------------------------------------------------------------
def _a1111_object(emb: Embedding) -> dict[str, Any]:
    tensors = _tensors(emb)
    if len(tensors) != 1:
        raise FormatError(
            f"embedding '{emb.name}' is SDXL; A1111 .pt files hold one encoder, use --to safetensors for SDXL."
        )
    return {
        "string_to_token": {"*": A1111_STAR_TOKEN},
        "string_to_param": {"*": next(iter(tensors.values()))},
        "name": emb.internal_name if emb.internal_name is not None else emb.name,
        "step": emb.step,
        "sd_checkpoint": emb.sd_checkpoint,
        "sd_checkpoint_name": emb.sd_checkpoint_name,
    }


def _diffusers_object(emb: Embedding) -> dict[str, Any]:
    tensors = _tensors(emb)
    if len(tensors) != 1:
        raise FormatError(
            f"embedding '{emb.name}' is SDXL (two encoders); diffusers files hold one tensor, use --to safetensors."
        )
    return {_token(emb): next(iter(tensors.values()))}


class _Pickler:
    """Protocol-2 pickler for exactly the values torch embedding files contain."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.storages: list[TensorBytes] = []

    def dump(self, obj: Any) -> bytes:
        self.write(obj)
        self.out += b"."
        return bytes(self.out)

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def write(self, obj: Any) -> None:  # noqa: C901
        out = self.out
        if obj is None:
            out += b"N"
        elif obj is True:
            out += b"\x88"
        elif obj is False:
            out += b"\x89"
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                out += b"K" + bytes([obj])
            elif 0 <= obj < 65536:
                out += b"M" + struct.pack("<H", obj)
            elif -(2**31) <= obj < 2**31:
                out += b"J" + struct.pack("<i", obj)
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += b"\x8a" + bytes([len(raw)]) + raw
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            raw = obj.encode("utf-8", "surrogatepass")
            out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(obj, tuple):
            out += b"("
            for x in obj:
                self.write(x)
            out += b"t"
        elif isinstance(obj, dict):
            out += b"}"
            if obj:
                out += b"("
                for k, v in obj.items():
                    self.write(k)
                    self.write(v)
                out += b"u"
        elif isinstance(obj, TensorBytes):
            self.tensor(obj)
        else:
            raise FormatError(f"cannot write a value of type {type(obj).__name__} into a torch file.")

    def tensor(self, t: TensorBytes) -> None:
        key = str(len(self.storages))
        self.storages.append(t)
        stride = []
        acc = 1
        for s in reversed(t.shape):
            stride.append(acc)
            acc *= s
        stride.reverse()
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"("  # args tuple
        self.out += b"("  # persistent id tuple
        self.write("storage")
        self.global_("torch", _DTYPES[t.dtype][1])
        self.write(key)
        self.write("cpu")
        self.write(t.numel)
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.write(0)
        self.write(tuple(t.shape))
        self.write(tuple(stride))
        self.write(False)
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # OrderedDict()
        self.out += b"tR"  # args tuple, REDUCE


def _torch_zip_bytes(obj: dict[str, Any], root: str) -> bytes:
    pickler = _Pickler()
    pkl = pickler.dump(obj)
    buf = io.BytesIO()
    # exactly the entries A1111's safe loader accepts (^[^/]+/((data/\d+)|version|(data\.pkl))$); torch
    # reads a missing `byteorder` as little-endian, which is what we write
    entries: list[tuple[str, bytes]] = [(f"{root}/data.pkl", pkl)]
    entries += [(f"{root}/data/{i}", t.raw) for i, t in enumerate(pickler.storages)]
    entries += [(f"{root}/version", b"3\n")]
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 0
            # pad with an extra field so the record data starts on a 64-byte boundary, as torch does
            here = buf.tell() + 30 + len(name.encode())
            pad = -(here + 4) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            zf.writestr(info, payload)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# PNG card
# ---------------------------------------------------------------------------------------------
def _png_bytes(emb: Embedding, preview: Any = None) -> bytes:
    from tihub.formats.image import write_png_card

    tensors = {k: np.asarray(v, dtype=np.float64) for k, v in emb.vectors.items()}
    if not tensors:
        raise FormatError(f"embedding '{emb.name}' has no vectors to write.")
    payload: dict[str, Any]
    if len(tensors) == 1:
        payload = {"string_to_token": {"*": A1111_STAR_TOKEN}, "string_to_param": {"*": next(iter(tensors.values()))}}
    else:
        payload = dict(tensors)
    payload.update(
        {
            "name": emb.internal_name if emb.internal_name is not None else emb.name,
            "step": emb.step,
            "sd_checkpoint": emb.sd_checkpoint,
            "sd_checkpoint_name": emb.sd_checkpoint_name,
        }
    )
    if emb.dtype in ("f16", "bf16", "f64"):
        payload["dtype"] = emb.dtype  # tihub's own key: A1111 ignores it, our reader restores the dtype
    first = next(iter(tensors.values()))
    footer = f"{emb.vector_count}v {emb.step if emb.step is not None else 0}s"
    if emb.sd_checkpoint:
        footer = f"[{emb.sd_checkpoint}] " + footer
    return write_png_card(payload, first[0], f"<{emb.name}>", footer, preview)
