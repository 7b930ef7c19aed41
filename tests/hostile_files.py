"""Builds hostile files for the reader tests (security.md sections 1-3).

Every payload's only side effect, if it were ever executed, is creating the canary file given to
`build_all`. Files are built at test time from raw pickle opcodes; nothing hostile is committed.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# pickle snippets (protocol 2 opcodes)
# ---------------------------------------------------------------------------------------------


def _unicode(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def touch_cmd(canary: Path) -> str:
    return f"touch '{canary}'"


def global_call(module: str, name: str, arg: str) -> bytes:
    """GLOBAL module.name ; (arg,) ; REDUCE"""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n" + _unicode(arg) + b"\x85R"


def stack_global_call(module: str, name: str, arg: str) -> bytes:
    return _unicode(module) + _unicode(name) + b"\x93" + _unicode(arg) + b"\x85R"


def payload_pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def os_system(canary: Path) -> bytes:
    return payload_pickle(global_call("os", "system", touch_cmd(canary)))


def eval_stack_global(canary: Path) -> bytes:
    code = f"open({str(canary)!r}, 'w').close()"
    return payload_pickle(stack_global_call("builtins", "eval", code))


def exec_global(canary: Path) -> bytes:
    code = f"open({str(canary)!r}, 'w').close()"
    return payload_pickle(global_call("builtins", "exec", code))


def memo_trick(canary: Path) -> bytes:
    """Strings stored through BINPUT/MEMOIZE, fetched with BINGET, then STACK_GLOBAL."""
    body = (
        _unicode("os") + b"q\x05" + b"0"  # memo[5] = 'os'; POP
        + _unicode("system") + b"\x94" + b"0"  # MEMOIZE (index 1) = 'system'; POP
        + b"h\x05" + b"h\x01" + b"\x93"  # BINGET 5, BINGET 1, STACK_GLOBAL
        + _unicode(touch_cmd(canary)) + b"\x85R"
    )
    return payload_pickle(body)


def _getattr_system(importer: bytes, canary: Path) -> bytes:
    """builtins.getattr(<importer>('os'), 'system')('touch canary'), `importer` a GLOBAL line pair."""
    body = (
        b"cbuiltins\ngetattr\n"
        + importer + _unicode("os") + b"\x85R"
        + _unicode("system") + b"\x86R"
        + _unicode(touch_cmd(canary)) + b"\x85R"
    )
    return payload_pickle(body)


def getattr_gadget(canary: Path) -> bytes:
    return _getattr_system(b"cbuiltins\n__import__\n", canary)


def importlib_gadget(canary: Path) -> bytes:
    return _getattr_system(b"cimportlib\nimport_module\n", canary)


def numpy_reconstruct(canary: Path) -> bytes:
    body = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n" + b"K\x00\x85" + b"C\x01b" + b"\x87R"
        + b"}" + _unicode("x") + _unicode(touch_cmd(canary)) + b"sb"  # BUILD with a dict
    )
    return payload_pickle(body)


def marshal_gadget(canary: Path) -> bytes:
    return payload_pickle(global_call("marshal", "loads", touch_cmd(canary)))


def nested_pickle(canary: Path) -> bytes:
    inner = os_system(canary)
    return payload_pickle(b"c_pickle\nloads\n" + b"C" + bytes([len(inner)]) + inner + b"\x85R")


def subprocess_gadget(canary: Path) -> bytes:
    return payload_pickle(b"csubprocess\nrun\n" + b"(" + _unicode("touch") + _unicode(str(canary)) + b"l\x85R")


def scanner_tamper(canary: Path) -> bytes:
    return payload_pickle(global_call("torch.serialization", "add_safe_globals", touch_cmd(canary)))


def inst_opcode(canary: Path) -> bytes:
    return b"(" + _unicode(touch_cmd(canary)) + b"ios\nsystem\n."


def obj_opcode(canary: Path) -> bytes:
    return b"\x80\x02(cos\nsystem\n" + _unicode(touch_cmd(canary)) + b"o."


def ext_opcode(canary: Path) -> bytes:
    return b"\x80\x02\x82\x01."


def reduce_on_allowed_data(canary: Path) -> bytes:
    """REDUCE applied to a dict that holds a command string (not a callable)."""
    return payload_pickle(b"}" + _unicode(touch_cmd(canary)) + b"\x85R")


def deep_nesting(canary: Path) -> bytes:
    depth = 50_000  # far past any recursion limit
    return payload_pickle(b")" + b"\x85" * depth)


def huge_long(canary: Path) -> bytes:
    return payload_pickle(b"\x8b" + struct.pack("<i", 2**30) + b"\x00" * 16)


def huge_unicode(canary: Path) -> bytes:
    return payload_pickle(b"\x8d" + struct.pack("<Q", 2**60) + b"abc")


def missing_memo(canary: Path) -> bytes:
    return payload_pickle(b"j" + struct.pack("<I", 0xFFFFFFF0))


# ---------------------------------------------------------------------------------------------
# torch zips
# ---------------------------------------------------------------------------------------------


def tensor_pickle(numel: int = 768, shape: tuple[int, ...] = (1, 768), stride: tuple[int, ...] = (768, 1), key: str = "0") -> bytes:
    """A valid A1111-style data.pkl referencing storage `key`."""

    def tup(vals: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in vals) + b"t"

    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode(key) + _unicode("cpu")
        + (b"J" + struct.pack("<i", numel) if numel < 2**31 else b"\x8a\x08" + struct.pack("<q", numel))
        + b"tQ"
        + b"K\x00" + tup(shape) + tup(stride) + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"tR"
    )
    return payload_pickle(b"}(" + _unicode("string_to_param") + b"}" + _unicode("*") + tensor + b"s" + _unicode("name") + _unicode("x") + b"u")


def torch_zip(entries: list[tuple[str, bytes]], compress: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = (compress or {}).get(name, zipfile.ZIP_STORED)
            zf.writestr(info, data)
    return buf.getvalue()


def zipped(pkl: bytes, extra: list[tuple[str, bytes]] | None = None, storage: bytes | None = None) -> bytes:
    entries = [("archive/data.pkl", pkl), ("archive/version", b"3\n")]
    if storage is not None:
        entries.append(("archive/data/0", storage))
    return torch_zip(entries + (extra or []))


def legacy(objects: list[bytes], tail: bytes = b"") -> bytes:
    return b"".join(objects) + tail


LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
LEGACY_PROTO = b"\x80\x02M\xe9\x03."
LEGACY_INFO = b"\x80\x02}(" + _unicode("protocol_version") + b"M\xe9\x03" + _unicode("little_endian") + b"\x88u."


# ---------------------------------------------------------------------------------------------
# PNG
# ---------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, chunks: list[bytes], pixels: bytes | None = None) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if pixels is None:
        raw = b"".join(b"\x00" + b"\x10" * (3 * min(width, 4)) for _ in range(min(height, 4)))
        pixels = zlib.compress(raw)
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(chunks) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def black_columns_png() -> bytes:
    """A 2048x2048 decoy: two black columns make the whole image look like pixel data blocks."""
    from PIL import Image

    arr = np.full((2048, 2048, 3), 17, np.uint8)
    arr[:, 1000:1002] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def zlib_bomb(size: int) -> bytes:
    c = zlib.compressobj(9)
    block = b"\x00" * (1 << 20)
    out = [c.compress(block) for _ in range(size >> 20)]
    out.append(c.flush())
    return b"".join(out)


def pixel_bomb_png(size: int) -> bytes:
    from PIL import Image

    from tihub.formats.image import pixel_blocks

    lo, hi = pixel_blocks(zlib_bomb(size), 128, np.full(4, 200, np.uint8))
    h, wl = lo.shape[:2]
    out = np.zeros((h, wl + 1 + 8 + 1 + hi.shape[1], 3), np.uint8)
    out[:, :wl] = lo
    out[:, wl + 1 : wl + 9] = 100
    out[:, wl + 10 :] = hi
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------


def safetensors(header: dict | bytes, body: bytes, declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + body


def _st(shape: list[int], begin: int, end: int, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# ---------------------------------------------------------------------------------------------
# the catalogue of hostile files
# ---------------------------------------------------------------------------------------------

Builder = Callable[[Path], bytes]


def builders() -> dict[str, Builder]:
    """name (with the suffix the file gets) -> builder(canary) -> bytes."""
    emb_storage = np.zeros(768, "<f4").tobytes()
    b: dict[str, Builder] = {
        # pickles in torch zips
        "zip-os-system.pt": lambda c: zipped(os_system(c)),
        "zip-eval-stack-global.pt": lambda c: zipped(eval_stack_global(c)),
        "zip-exec-global.bin": lambda c: zipped(exec_global(c)),
        "zip-memo-trick.pt": lambda c: zipped(memo_trick(c)),
        "zip-getattr-import.pt": lambda c: zipped(getattr_gadget(c)),
        "zip-importlib.pt": lambda c: zipped(importlib_gadget(c)),
        "zip-numpy-reconstruct.pt": lambda c: zipped(numpy_reconstruct(c)),
        "zip-marshal.pt": lambda c: zipped(marshal_gadget(c)),
        "zip-nested-pickle.pt": lambda c: zipped(nested_pickle(c)),
        "zip-subprocess.pt": lambda c: zipped(subprocess_gadget(c)),
        "zip-scanner-tamper.pt": lambda c: zipped(scanner_tamper(c)),
        "zip-inst.pt": lambda c: zipped(inst_opcode(c)),
        "zip-obj.pt": lambda c: zipped(obj_opcode(c)),
        "zip-ext.pt": lambda c: zipped(ext_opcode(c)),
        "zip-reduce-data.pt": lambda c: zipped(reduce_on_allowed_data(c)),
        "zip-deep-nesting.pt": lambda c: zipped(deep_nesting(c)),
        "zip-huge-long.pt": lambda c: zipped(huge_long(c)),
        "zip-huge-unicode.pt": lambda c: zipped(huge_unicode(c)),
        "zip-missing-memo.pt": lambda c: zipped(missing_memo(c)),
        # payload next to a valid pickle
        "zip-payload-in-version.pt": lambda c: torch_zip([("archive/data.pkl", tensor_pickle()), ("archive/version", os_system(c)), ("archive/data/0", emb_storage)]),
        "zip-second-datapkl.pt": lambda c: torch_zip(
            [("archive/data.pkl", tensor_pickle()), ("archive/data/0", emb_storage), ("archive/data.pkl", os_system(c))]
        ),
        "zip-extra-py.pt": lambda c: zipped(tensor_pickle(), extra=[("archive/evil.py", b"import os\nos.system('x')\n")], storage=emb_storage),
        "zip-slip.pt": lambda c: torch_zip([("archive/data.pkl", tensor_pickle()), ("../../evil/data/0", emb_storage)]),
        "zip-absolute.pt": lambda c: torch_zip([("/tmp/archive/data.pkl", tensor_pickle())]),
        "zip-mixed-roots.pt": lambda c: torch_zip([("a/data.pkl", tensor_pickle()), ("b/data/0", emb_storage)]),
        "zip-huge-storage.pt": lambda c: zipped(tensor_pickle(numel=10**12, shape=(1, 768)), storage=emb_storage),
        "zip-stride-past-storage.pt": lambda c: zipped(tensor_pickle(shape=(4, 768), stride=(768, 1)), storage=emb_storage),
        "zip-storage-short.pt": lambda c: zipped(tensor_pickle(), storage=emb_storage[:100]),
        "zip-deflate-bomb.pt": lambda c: torch_zip(
            [("archive/data.pkl", tensor_pickle(numel=2**28 - 1)), ("archive/data/0", b"\x00" * (64 << 20))],
            compress={"archive/data/0": zipfile.ZIP_DEFLATED},
        ),
        # legacy non-zip pickles
        "legacy-payload-first.ckpt": lambda c: os_system(c) + LEGACY_PROTO,
        "legacy-payload-object.pt": lambda c: legacy([LEGACY_MAGIC, LEGACY_PROTO, LEGACY_INFO, os_system(c)]),
        "legacy-payload-keys.pt": lambda c: legacy([LEGACY_MAGIC, LEGACY_PROTO, LEGACY_INFO, tensor_pickle(), os_system(c)]),
        "plain-pickle.bin": lambda c: os_system(c),
        "pickle-as-safetensors.safetensors": lambda c: os_system(c),
        # PNG
        "png-huge-dimensions.png": lambda c: png(100_000, 100_000, []),
        "png-ztxt-bomb.png": lambda c: png(4, 4, [_chunk(b"zTXt", b"sd-ti-embedding\x00\x00" + zlib_bomb(64 << 20))]),
        "png-itxt-bomb.png": lambda c: png(4, 4, [_chunk(b"iTXt", b"sd-ti-embedding\x00\x01\x00\x00\x00" + zlib_bomb(64 << 20))]),
        "png-empty-ztxt.png": lambda c: png(4, 4, [_chunk(b"zTXt", b"sd-ti-embedding\x00\x00" + b"not zlib")]),
        "png-bad-base64.png": lambda c: png(4, 4, [_chunk(b"tEXt", b"sd-ti-embedding\x00!!!not base64!!!")]),
        "png-deep-json.png": lambda c: png(
            4, 4, [_chunk(b"tEXt", b"sd-ti-embedding\x00" + base64.b64encode(b"[" * 100_000 + b"]" * 100_000))]
        ),
        "png-ragged-tensor.png": lambda c: png(
            4,
            4,
            [
                _chunk(
                    b"tEXt",
                    b"sd-ti-embedding\x00"
                    + base64.b64encode(json.dumps({"string_to_param": {"*": {"TORCHTENSOR": [[1.0], [1.0, 2.0]]}}}).encode()),
                )
            ],
        ),
        "png-pixel-bomb.png": lambda c: pixel_bomb_png(64 << 20),
        "png-black-columns-decoy.png": lambda c: black_columns_png(),
        "webp-huge-dimensions.webp": lambda c: b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10)
        + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") + (16383).to_bytes(3, "little") + b"\x00" * 8,
        # safetensors
        "st-oversized-header.safetensors": lambda c: safetensors(b'{"a":1}', b"", declared=2**40),
        "st-header-past-end.safetensors": lambda c: safetensors(b'{"a":1}', b"", declared=5000),
        "st-overlap.safetensors": lambda c: safetensors(
            {"a": _st([1, 768], 0, 3072), "b": _st([1, 768], 0, 3072)}, b"\x00" * 3072
        ),
        "st-out-of-range.safetensors": lambda c: safetensors({"emb_params": _st([1, 768], 0, 3072)}, b"\x00" * 100),
        "st-duplicate-keys.safetensors": lambda c: safetensors(
            b'{"emb_params":{"dtype":"F32","shape":[1,768],"data_offsets":[0,3072]},'
            b'"emb_params":{"dtype":"F32","shape":[1,768],"data_offsets":[3072,6144]}}',
            b"\x00" * 6144,
        ),
        "st-unknown-dtype.safetensors": lambda c: safetensors({"emb_params": _st([1, 768], 0, 3072, "Q4_K")}, b"\x00" * 3072),
        "st-negative-shape.safetensors": lambda c: safetensors({"emb_params": _st([-1, 768], 0, 3072)}, b"\x00" * 3072),
        "st-overflow-shape.safetensors": lambda c: safetensors({"emb_params": _st([2**32, 2**32], 0, 3072)}, b"\x00" * 3072),
        "st-truncated.safetensors": lambda c: safetensors({"emb_params": _st([1, 768], 0, 3072)}, b"\x00" * 3072)[:-10],
        "st-hole.safetensors": lambda c: safetensors(
            {"a": _st([1, 768], 0, 3072), "b": _st([1, 768], 4000, 7072)}, b"\x00" * 7072
        ),
        "st-not-json.safetensors": lambda c: safetensors(b"{\xff\xfe garbage", b""),
        "st-metadata-nonstring.safetensors": lambda c: safetensors(
            {"__metadata__": {"name": {"x": 1}}, "emb_params": _st([1, 768], 0, 3072)}, b"\x00" * 3072
        ),
    }
    b.update(memory_bombs())  # issue 11: each refused under the per-file memory budget
    return b


# ---------------------------------------------------------------------------------------------
# memory bombs (issue 11): small files whose reading would allocate gigabytes without a budget
# ---------------------------------------------------------------------------------------------


def _tensor_record(key: str, numel: int, shape: tuple[int, ...], stride: tuple[int, ...], storage: str = "FloatStorage") -> bytes:
    def tup(vals: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", v) for v in vals) + b"t"

    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + b"(" + _unicode("storage") + b"ctorch\n" + storage.encode() + b"\n" + _unicode(key) + _unicode("cpu")
        + b"\x8a\x08" + struct.pack("<q", numel) + b"tQ"
        + b"K\x00" + tup(shape) + tup(stride) + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"tR"
    )


def zero_stride_bomb() -> bytes:
    """One float of storage viewed as a 65536 x 65536 tensor (16 GiB) through zero strides."""
    pkl = payload_pickle(
        b"}(" + _unicode("string_to_param") + b"}" + _unicode("*") + _tensor_record("0", 1, (65536, 65536), (0, 0)) + b"s" + b"u"
    )
    return zipped(pkl, storage=b"\x00" * 4)


def shared_views_bomb(views: int = 150, numel: int = 1 << 20) -> bytes:
    """`views` tensors on one 4 MiB storage: each would get its own 4 MiB copy (600 MB)."""
    items = b"".join(_tensor_record("0", numel, (numel,), (1,)) for _ in range(views))
    pkl = payload_pickle(b"}(" + _unicode("string_to_param") + b"}" + _unicode("*") + _tensor_record("0", numel, (numel,), (1,)) + b"s" + _unicode("views") + b"(" + items + b"l" + b"u")
    return zipped(pkl, storage=b"\x00" * (numel * 4))


def codecs_bomb(copies: int = 500, size: int = 4 << 20) -> bytes:
    """One memoized 4 MiB string passed to _codecs.encode 500 times (2 GB of bytes copies)."""
    text = b"X" + struct.pack("<I", size) + b"a" * size + b"r" + struct.pack("<I", 7)
    calls = b"".join(b"c_codecs\nencode\n(j" + struct.pack("<I", 7) + _unicode("latin1") + b"tR" for _ in range(copies))
    return zipped(payload_pickle(text + b"0" + b"(" + calls + b"l"))


def png_text_bomb() -> bytes:
    """The _codecs bomb as a torch zip inside a PNG's sd-ti-embedding text chunk."""
    raw = codecs_bomb(copies=200, size=2 << 20)
    return png(4, 4, [_chunk(b"tEXt", b"sd-ti-embedding\x00" + base64.b64encode(raw))])


def json_values_bomb(values: int = 3_000_000) -> bytes:
    """A PNG text chunk whose JSON is millions of one-digit numbers (each a Python object)."""
    body = b'{"string_to_param": {"*": {"TORCHTENSOR": [' + b"0," * (values - 1) + b"0]}}}"
    return png(4, 4, [_chunk(b"tEXt", b"sd-ti-embedding\x00" + base64.b64encode(body))])


def bf16_zero_stride_bomb() -> bytes:
    pkl = payload_pickle(
        b"}(" + _unicode("emb_params") + _tensor_record("0", 1, (1 << 15, 1 << 15), (0, 0), "BFloat16Storage") + b"u"
    )
    return zipped(pkl, storage=b"\x00" * 2)


def tuple_key_bomb(depth: int = 64) -> bytes:
    """A dict key of 2**64 nested tuples built from memo references (hashing it never ends)."""
    body = b"K\x01K\x01\x86q\x00"
    for _ in range(depth):
        body += b"0h\x00h\x00\x86q\x00"
    return zipped(payload_pickle(b"}" + body + b"K\x01s"))


def memory_bombs() -> dict[str, Builder]:
    return {
        "bomb-zero-stride.pt": lambda c: zero_stride_bomb(),
        "bomb-shared-views.pt": lambda c: shared_views_bomb(),
        "bomb-codecs-encode.pt": lambda c: codecs_bomb(),
        "bomb-png-text-codecs.png": lambda c: png_text_bomb(),
        "bomb-png-json-values.png": lambda c: json_values_bomb(),
        "bomb-bf16-zero-stride.pt": lambda c: bf16_zero_stride_bomb(),
        "bomb-tuple-key.pt": lambda c: tuple_key_bomb(),
    }


def build_all(directory: Path, canary: Path) -> dict[str, Path]:
    """Write every hostile file into `directory`; returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, build in builders().items():
        path = directory / name
        path.write_bytes(build(canary))
        out[name] = path
    return out
