"""Containers: torch zip, legacy torch pickle, safetensors. Each returns plain Python data
(dicts, strings, numbers, numpy arrays) without running anything from the file."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tihub.errors import FormatError, NotAnEmbedding, UnsafeFile
from tihub.formats import pickle_vm
from tihub.formats.budget import MemoryBudget
from tihub.formats.pickle_vm import ITEMSIZE, NUMPY_DTYPE, BF16Array, StorageRef, TensorInfo

# Caps for embedding files (models use the larger caps in tensor_shapes/read_safetensors_header).
MAX_EMBEDDING_FILE = 64 * 1024 * 1024
MAX_EMBEDDING_PICKLE = 8 * 1024 * 1024
MAX_EMBEDDING_HEADER = 1024 * 1024
MAX_MODEL_PICKLE = 256 * 1024 * 1024
MAX_MODEL_HEADER = 100_000_000

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Allowed entry names below the single root folder of a torch zip.
_TORCH_ENTRY = re.compile(
    r"^(data\.pkl|version|byteorder|data/\d{1,9}|\.data/version|\.data/serialization_id"
    r"|\.format_version|\.storage_alignment)$"
)


_TORCH_FIXED_ENTRIES = frozenset(
    ("data.pkl", "version", "byteorder", ".data/version", ".data/serialization_id", ".format_version", ".storage_alignment")
)


def _normalize(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------------------------
# torch zip
# ---------------------------------------------------------------------------------------------
def _torch_zip_members(infos: list[Any], what: str) -> tuple[str, dict[str, Any]]:
    if not infos:
        raise NotAnEmbedding(f"{what} is an empty zip archive, not an embedding.", kind="archive")
    root = None
    members: dict[str, Any] = {}
    for info in infos:
        name = info.filename
        if "\\" in name or name.startswith("/") or "\x00" in name:
            raise UnsafeFile(f"{what} has a zip entry named {name[:60]!r} that escapes its folder; refusing it.")
        head, sep, tail = name.partition("/")
        if not sep or head in ("", ".", ".."):
            raise UnsafeFile(f"{what} has a zip entry {name[:60]!r} outside a single root folder; refusing it.")
        if root is None:
            root = head
        elif head != root:
            raise UnsafeFile(f"{what} mixes zip root folders {root[:30]!r} and {head[:30]!r}; refusing it.")
        if tail not in _TORCH_FIXED_ENTRIES and not _TORCH_ENTRY.match(tail):
            if tail.endswith("/") and not info.file_size:
                continue  # a directory entry
            raise UnsafeFile(f"{what} has an unexpected zip entry {name[:60]!r} for a torch file; refusing it.")
        if tail in members:
            raise UnsafeFile(f"{what} holds the zip entry {name[:60]!r} twice; refusing it.")
        if info.compress_type != 0:  # ZIP_STORED
            raise UnsafeFile(f"{what} has a compressed zip entry {name[:60]!r}, which torch never writes; refusing it.")
        if info.flag_bits & 0x1:
            raise UnsafeFile(f"{what} has an encrypted zip entry; refusing it.")
        members[tail] = info
    assert root is not None
    return root, members


def _read_member(zf: Any, info: Any, cap: int, what: str) -> bytes:
    if info.file_size > cap:
        raise UnsafeFile(f"{what} has a zip entry of {info.file_size} bytes, over the {cap}-byte limit; refusing it.")
    with zf.open(info) as fh:
        out = fh.read(cap + 1)
    if len(out) != info.file_size:
        raise FormatError(f"{what} has a zip entry whose size disagrees with its header; it is corrupt.")
    return out


def open_zip(source: Any, what: str) -> Any:
    import zipfile  # only model files (tensor_shapes) need the general zip reader

    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise NotAnEmbedding(
            f"{what} is a truncated or corrupt zip archive; download it again.", kind="truncated"
        ) from None
    except (OSError, ValueError, EOFError, struct.error, NotImplementedError) as exc:
        raise FormatError(f"{what} is a corrupt zip archive ({type(exc).__name__}).") from None


class _Entry:
    """One central-directory record of a zip held in memory (duck-types zipfile.ZipInfo)."""

    __slots__ = ("filename", "file_size", "compress_type", "flag_bits", "crc", "data_offset")

    def __init__(self, filename: str, file_size: int, compress_type: int, flag_bits: int, crc: int, data_offset: int) -> None:
        self.filename = filename
        self.file_size = file_size
        self.compress_type = compress_type
        self.flag_bits = flag_bits
        self.crc = crc
        self.data_offset = data_offset


def _truncated(what: str) -> NotAnEmbedding:
    return NotAnEmbedding(f"{what} is a truncated or corrupt zip archive; download it again.", kind="truncated")


def scan_zip(data: bytes, what: str) -> list[_Entry]:
    """A strict zip reader for in-memory files: the central directory must agree with every local
    header (name, sizes, position), entries may not overlap, and no zip64/multi-disk tricks."""
    n = len(data)
    end = data.rfind(b"PK\x05\x06", max(0, n - 65557))
    if end < 0 or end + 22 > n:
        raise _truncated(what)
    _sig, disk, cd_disk, n_here, n_total, cd_size, cd_off, comment_len = _EOCD.unpack_from(data, end)
    if disk or cd_disk or n_here != n_total or end + 22 + comment_len != n:
        raise UnsafeFile(f"{what} has an inconsistent zip end record (multi-disk, trailing data or two archives); refusing it.")
    cd_end = end
    if end >= 20 and data[end - 20 : end - 16] == b"PK\x06\x07":  # zip64 locator (torch writes one)
        (z64_off,) = _U64.unpack_from(data, end - 12)
        if z64_off + 56 > end - 20 or data[z64_off : z64_off + 4] != b"PK\x06\x06":
            raise _truncated(what)
        z_total, z_cd_size, z_cd_off = _Z64.unpack_from(data, z64_off + 24)
        if n_total == 0xFFFF:
            n_total = z_total
        if cd_size == 0xFFFFFFFF:
            cd_size = z_cd_size
        if cd_off == 0xFFFFFFFF:
            cd_off = z_cd_off
        if (z_total, z_cd_size, z_cd_off) != (n_total, cd_size, cd_off):
            raise UnsafeFile(f"{what} has zip end records that disagree with each other; refusing it.")
        cd_end = z64_off
        if n_total > 100_000:
            raise UnsafeFile(f"{what} declares {n_total} zip entries; refusing it.")
    if cd_off + cd_size != cd_end:
        raise _truncated(what) if cd_off + cd_size > cd_end else UnsafeFile(
            f"{what} has bytes between its zip directory and end record; refusing it."
        )
    entries: list[_Entry] = []
    pos = cd_off
    spans: list[tuple[int, int]] = []
    cd_unpack = _CD.unpack_from
    lh_unpack = _LH.unpack_from
    for _ in range(n_total):
        if data[pos : pos + 4] != b"PK\x01\x02":
            raise _truncated(what)
        (flags, method, crc, csize, usize, nlen, elen, clen, loff) = cd_unpack(data, pos)
        name_end = pos + 46 + nlen
        raw_name = data[pos + 46 : name_end]
        pos = name_end + elen + clen
        if pos > cd_end:
            raise _truncated(what)
        if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or loff == 0xFFFFFFFF:  # zip64 (files over 4 GB)
            usize, csize, loff = _zip64_extra(data[pos - elen - clen : pos - clen], usize, csize, loff, what)
        if data[loff : loff + 4] != b"PK\x03\x04":
            raise _truncated(what)
        lmethod, lnlen, lelen = lh_unpack(data, loff)
        if data[loff + 30 : loff + 30 + lnlen] != raw_name or lmethod != method:
            raise UnsafeFile(f"{what} has a zip entry whose local header disagrees with its directory; refusing it.")
        doff = loff + 30 + lnlen + lelen
        if doff + csize > cd_off:
            raise _truncated(what)
        spans.append((loff, doff + csize))
        # ASCII names read the same in UTF-8 and cp437; skip the (Python-level) cp437 codec for them
        name = raw_name.decode("ascii") if raw_name.isascii() else raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if method == 0 and csize != usize:
            raise FormatError(f"{what} has a stored zip entry whose sizes disagree; it is corrupt.")
        entries.append(_Entry(name, usize, method, flags, crc, doff))
    if len(spans) > 1:
        spans.sort()
        prev_end = spans[0][1]
        for b0, b1 in spans[1:]:
            if b0 < prev_end:
                raise UnsafeFile(f"{what} has overlapping zip entries; refusing it.")
            prev_end = b1
    return entries


def _zip64_extra(extra: bytes, usize: int, csize: int, loff: int, what: str) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + size]
        if tag == 0x0001:
            j = 0
            vals = []
            for field in (usize, csize, loff):
                if field == 0xFFFFFFFF:
                    if j + 8 > len(body):
                        break
                    vals.append(struct.unpack_from("<Q", body, j)[0])
                    j += 8
                else:
                    vals.append(field)
            if len(vals) == 3:
                return vals[0], vals[1], vals[2]
        i += 4 + size
    raise FormatError(f"{what} has a zip64 entry without its size record; it is corrupt.")


_CD = struct.Struct("<8xHH4xIIIHHH8xI")
_EOCD = struct.Struct("<IHHHHIIH")
_U64 = struct.Struct("<Q")
_Z64 = struct.Struct("<8xQQQ")
_LH = struct.Struct("<8xH16xHH")


def _member_bytes(data: bytes, entry: _Entry, cap: int, what: str, check_crc: bool = True) -> memoryview:
    if entry.file_size > cap:
        raise UnsafeFile(f"{what} has a zip entry of {entry.file_size} bytes, over the {cap}-byte limit; refusing it.")
    view = memoryview(data)[entry.data_offset : entry.data_offset + entry.file_size]
    if check_crc and zlib.crc32(view) != entry.crc:
        raise FormatError(f"{what} has a zip entry {entry.filename[:60]!r} that fails its CRC check; it is corrupt.")
    return view


def read_torch_zip(
    data: bytes, what: str, max_storage_bytes: int = MAX_EMBEDDING_FILE, model: bool = False, budget: MemoryBudget | None = None
) -> Any:
    """Interpret `data.pkl` of a torch zip held in memory; tensors come back as numpy arrays
    (bfloat16 as BF16Array). `model=True` (checkpoint conversion) allows a larger pickle and turns
    the extra classes checkpoints carry (Lightning callbacks, numpy scalars) into inert Opaque
    values; the tensor allow-list is the same."""
    _root, members = _torch_zip_members(scan_zip(data, what), what)
    pkl = members.get("data.pkl")
    if pkl is None:
        raise NotAnEmbedding(f"{what} is a zip archive without a torch data.pkl, not an embedding.", kind="archive")
    version = members.get("version") or members.get(".data/version")
    if version is not None:
        text = bytes(_member_bytes(data, version, 64, what)).strip()  # type: ignore[arg-type]
        if not text.isdigit():
            raise UnsafeFile(f"{what} has a torch 'version' entry that is not a number; refusing it.")
    big_endian = False
    order = members.get("byteorder")
    if order is not None:
        text = bytes(_member_bytes(data, order, 16, what)).strip()  # type: ignore[arg-type]
        if text == b"big":
            big_endian = True  # storages are swapped to native order as they are read
        elif text != b"little":
            raise FormatError(f"{what} has a torch 'byteorder' entry that says neither little nor big; it is corrupt.")
    pickle_cap = MAX_MODEL_PICKLE if model else MAX_EMBEDDING_PICKLE
    if budget is not None:
        budget.charge(pkl.file_size, "a copy of its data.pkl")
    pickle_bytes = bytes(_member_bytes(data, pkl, pickle_cap, what))  # type: ignore[arg-type]

    def load(ref: StorageRef) -> memoryview:
        info = members.get(f"data/{ref.key}")
        if info is None:
            raise FormatError(f"{what} refers to tensor storage {ref.key!r} that the archive lacks.")
        want = ref.numel * ITEMSIZE[ref.dtype]
        if info.file_size != want:
            raise FormatError(f"{what} has tensor storage {ref.key!r} of {info.file_size} bytes where {want} were declared.")
        # tensor bytes skip the CRC (sizes are checked; the values are only floats, checked later)
        return _member_bytes(data, info, max_storage_bytes, what, check_crc=False)  # type: ignore[arg-type]

    result = pickle_vm.interpret(
        pickle_bytes,
        load_storage=load,
        what=what,
        max_storage_bytes=max_storage_bytes,
        lenient=model,
        max_ops=pickle_vm.MAX_MODEL_OPS if model else pickle_vm.MAX_OPS,
        budget=budget,
        big_endian=big_endian,
    )
    return result.value


# ---------------------------------------------------------------------------------------------
# legacy (non-zip) torch pickle
# ---------------------------------------------------------------------------------------------
def is_legacy_torch(data: bytes) -> bool:
    # protocol-2 pickle of the magic number: PROTO 2, LONG1 10 bytes
    return data[:4] == b"\x80\x02\x8a\x0a" and int.from_bytes(data[4:14], "little") == LEGACY_MAGIC


def read_legacy_torch(
    data: bytes,
    what: str,
    max_storage_bytes: int = MAX_EMBEDDING_FILE,
    shapes_only: bool = False,
    model: bool = False,
    budget: MemoryBudget | None = None,
) -> Any:
    """The pre-1.6 format: magic, protocol, sys-info pickles, the object pickle, storage keys,
    then each storage as <u64 numel><bytes>."""
    buffer = data
    if type(data) is not bytes:
        data = bytes(data)  # the pickles are interpreted from bytes; storages are cut from `buffer`
    magic = pickle_vm.interpret(data, what=what)
    if magic.value != LEGACY_MAGIC:
        raise NotAnEmbedding(f"{what} is a plain Python pickle, not a torch file.", kind="pickle")
    proto = pickle_vm.interpret(data, what=what, start=magic.end)
    if proto.value != 1001:
        raise FormatError(f"{what} is a legacy torch file of unknown protocol {proto.value!r}.")
    info = pickle_vm.interpret(data, what=what, start=proto.end)
    if not isinstance(info, pickle_vm.PickleResult) or not isinstance(info.value, dict):
        raise FormatError(f"{what} is a legacy torch file without its system-info record.")
    if info.value.get("little_endian") is False:
        raise FormatError(f"{what} is a big-endian legacy torch file, which tihub does not read.")
    refs: dict[str, StorageRef] = {}
    storages: dict[str, memoryview] = {}
    view = memoryview(buffer)  # storages are cut as views: no copy of the tensor bytes
    # first pass: shapes only, to learn the storages; their data follows the object pickle
    model = model or shapes_only
    max_ops = pickle_vm.MAX_MODEL_OPS if model else pickle_vm.MAX_OPS
    obj = pickle_vm.interpret(data, what=what, start=info.end, shapes_only=True, lenient=model, refs=refs, max_ops=max_ops)
    if shapes_only:
        return _normalize(obj.value)
    keys = pickle_vm.interpret(data, what=what, start=obj.end)
    if not isinstance(keys.value, list) or not all(isinstance(k, str) for k in keys.value):
        raise FormatError(f"{what} is a legacy torch file with a bad storage-key list.")
    pos = keys.end
    for key in keys.value:
        ref = refs.get(key)
        if ref is None:
            raise FormatError(f"{what} lists storage {key!r} that no tensor uses.")
        if pos + 8 > len(data):
            raise FormatError(f"{what} is truncated inside its tensor data.")
        (numel,) = struct.unpack_from("<q", data, pos)
        if numel != ref.numel:
            raise FormatError(f"{what} has storage {key!r} of {numel} elements where {ref.numel} were declared.")
        pos += 8
        nbytes = numel * ITEMSIZE[ref.dtype]
        if pos + nbytes > len(data):
            raise FormatError(f"{what} is truncated inside its tensor data.")
        storages[key] = view[pos : pos + nbytes]
        pos += nbytes

    def load(ref: StorageRef) -> memoryview | None:
        return storages.get(ref.key)

    result = pickle_vm.interpret(
        data,
        what=what,
        start=info.end,
        load_storage=load,
        max_storage_bytes=max_storage_bytes,
        lenient=model,
        max_ops=max_ops,
        budget=budget,
    )
    return result.value


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass
class SafetensorsHeader:
    """A validated safetensors header: tensors name -> (dtype, shape, begin, end) relative to
    `data_offset`, and the string metadata."""

    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]
    metadata: dict[str, str]
    data_offset: int


def looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = _U64.unpack_from(head, 0)
    return head[8:9] == b"{" and n >= 2


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a key came twice: name the first repeat
        seen: set[str] = set()
        for k, _v in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return out


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


_HEADER_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)  # what json.loads builds per call


def parse_safetensors_header(head: bytes, file_size: int, what: str, max_header: int) -> SafetensorsHeader:
    """Validate a safetensors header (`head` = at least the first 8 + N bytes)."""
    if file_size < 8 or len(head) < 8:
        raise FormatError(f"{what} is too short to be a safetensors file.")
    (n,) = _U64.unpack_from(head, 0)
    if n > max_header:
        raise UnsafeFile(f"{what} declares a {n}-byte safetensors header, over the {max_header}-byte limit; refusing it.")
    if 8 + n > file_size or 8 + n > len(head):
        raise FormatError(f"{what} is a truncated safetensors file (its header runs past the end).")
    try:
        header = _HEADER_DECODER.decode(str(head[8 : 8 + n], "utf-8"))
    except _Duplicate as dup:
        raise UnsafeFile(f"{what} names the safetensors entry {dup.key[:60]!r} twice; refusing it.") from None
    except RecursionError:
        raise UnsafeFile(f"{what} has a safetensors header nested too deeply; refusing it.") from None
    except (UnicodeDecodeError, ValueError):
        raise FormatError(f"{what} has a safetensors header that is not valid UTF-8 JSON.") from None
    if not isinstance(header, dict):
        raise FormatError(f"{what} has a safetensors header that is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    if type(metadata) is not dict:
        raise FormatError(f"{what} has safetensors __metadata__ that is not a map of strings.")
    for v in metadata.values():
        if type(v) is not str:
            raise FormatError(f"{what} has safetensors __metadata__ that is not a map of strings.")
    data_offset = 8 + n
    buffer_len = file_size - data_offset
    entries: list[tuple[int, int, str]] = []
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, spec in header.items():
        if not isinstance(spec, dict):
            raise FormatError(f"{what} has a safetensors entry {name[:60]!r} that is not an object.")
        dtype = spec.get("dtype")
        shape = spec.get("shape")
        offsets = spec.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise FormatError(f"{what} has a safetensors entry {name[:60]!r} of unknown dtype {str(dtype)[:20]!r}.")
        if type(shape) is not list or len(shape) > 16:
            raise FormatError(f"{what} has a safetensors entry {name[:60]!r} with an invalid shape.")
        numel = 1
        for d in shape:
            if type(d) is not int or d < 0:
                raise FormatError(f"{what} has a safetensors entry {name[:60]!r} with an invalid shape.")
            numel *= d
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or type(offsets[0]) is not int
            or type(offsets[1]) is not int
            or offsets[0] < 0
            or offsets[0] > offsets[1]
        ):
            raise FormatError(f"{what} has a safetensors entry {name[:60]!r} with invalid data offsets.")
        if numel * SAFETENSORS_DTYPES[dtype] != offsets[1] - offsets[0]:
            raise FormatError(
                f"{what} has a safetensors entry {name[:60]!r} whose shape {shape} does not match its byte range."
            )
        if offsets[1] > buffer_len:
            raise FormatError(f"{what} has a safetensors entry {name[:60]!r} that reaches past the end of the file.")
        entries.append((offsets[0], offsets[1], name))
        tensors[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    entries.sort()
    expected = 0
    for begin, end, name in entries:
        if begin != expected:
            kind = "overlaps another entry" if begin < expected else "leaves a hole before it"
            raise UnsafeFile(f"{what} has a safetensors entry {name[:60]!r} that {kind}; refusing it.")
        expected = end
    if expected != buffer_len:
        raise FormatError(
            f"{what} has {buffer_len - expected} bytes after its last safetensors tensor; it is corrupt or truncated."
        )
    return SafetensorsHeader(tensors, dict(metadata), data_offset)


def read_safetensors(data: bytes, what: str, budget: MemoryBudget | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    header = parse_safetensors_header(data, len(data), what, MAX_EMBEDDING_HEADER)
    if budget is None:
        budget = MemoryBudget(MAX_EMBEDDING_FILE, what)
    out: dict[str, Any] = {}
    base = header.data_offset
    for name, (dtype, shape, begin, end) in header.tensors.items():
        if dtype not in NUMPY_DTYPE:
            raise FormatError(f"{what} stores {name[:60]!r} as {dtype}, which is not an embedding dtype.")
        arr = np.frombuffer(data, dtype=NUMPY_DTYPE[dtype], count=(end - begin) // ITEMSIZE[dtype], offset=base + begin)
        arr = arr.reshape(shape)
        flags = arr.flags
        if dtype == "BF16":
            budget.charge(arr.size * 4, f"the bfloat16 tensor {name[:40]!r}")
            wide = arr.astype(np.uint32)
            wide <<= 16
            out[name] = BF16Array(wide.view(np.float32))
            continue
        if not (flags.writeable and flags.aligned):  # a private writable buffer: entries never overlap
            budget.charge(arr.nbytes, f"a copy of the tensor {name[:40]!r}")
            arr = arr.copy()
        out[name] = arr
    return out, header.metadata


def read_safetensors_header(path: str | os.PathLike[str], max_header: int = MAX_MODEL_HEADER) -> SafetensorsHeader:
    """Read and validate only the header of a (possibly multi-GB) safetensors file."""
    what = f"'{os.fspath(path)}'"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            first = fh.read(8)
            if len(first) < 8:
                raise FormatError(f"{what} is too short to be a safetensors file.")
            (n,) = struct.unpack("<Q", first)
            if n > max_header:
                raise UnsafeFile(
                    f"{what} declares a {n}-byte safetensors header, over the {max_header}-byte limit; refusing it."
                )
            head = first + fh.read(n)
    except OSError as exc:
        raise FormatError(f"{what} cannot be read ({exc.strerror or exc}).") from None
    return parse_safetensors_header(head, size, what, max_header)


# ---------------------------------------------------------------------------------------------
# shapes without data (for model files)
# ---------------------------------------------------------------------------------------------
def tensor_shapes(path: str | os.PathLike[str], max_pickle: int = MAX_MODEL_PICKLE) -> dict[str, tuple[tuple[int, ...], str]]:
    """Flattened state-dict keys -> (shape, dtype tag) of a torch zip or legacy `.ckpt`/`.pt`,
    reading only the pickle (never the tensor data). dtype tags are safetensors names (F16, F32...).
    A top-level `state_dict` is descended into; nested dicts are joined with '.'."""
    what = f"'{os.fspath(path)}'"
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if head[:4] == b"PK\x03\x04":
                zf = open_zip(fh, what)
                with zf:
                    _root, members = _torch_zip_members(zf.infolist(), what)
                    pkl = members.get("data.pkl")
                    if pkl is None:
                        raise NotAnEmbedding(f"{what} is a zip archive without a torch data.pkl.", kind="archive")
                    pickle_bytes = _read_member(zf, pkl, max_pickle, what)
                value = pickle_vm.interpret(
                    pickle_bytes, what=what, shapes_only=True, lenient=True, max_ops=pickle_vm.MAX_MODEL_OPS
                ).value
            elif is_legacy_torch(head):
                size = os.fstat(fh.fileno()).st_size
                want = min(size, 4 << 20, max_pickle)
                while True:  # the pickles come first: read a growing prefix until they parse
                    fh.seek(0)
                    data = fh.read(want)
                    try:
                        value = read_legacy_torch(data, what, shapes_only=True)
                        break
                    except UnsafeFile:
                        raise
                    except FormatError:
                        if want >= min(size, max_pickle):
                            raise
                        want = min(size, max_pickle, want * 8)
            else:
                raise FormatError(f"{what} is not a torch zip or legacy torch pickle.")
    except FormatError:
        raise
    except OSError as exc:
        raise FormatError(f"{what} cannot be read ({exc.strerror or exc}).") from None
    except Exception as exc:  # zipfile.BadZipFile, bad CRC, struct errors from a damaged archive
        raise FormatError(f"{what} is a damaged torch archive ({type(exc).__name__}).") from None
    value = _normalize(value)
    if isinstance(value, dict) and isinstance(value.get("state_dict"), dict):
        value = value["state_dict"]
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    _flatten(value, "", out, 0, [0], what)
    return out


_MAX_FLAT_NODES = 200_000  # a checkpoint has ~2,500 tensors (optimizer states ~10x); memo references can make a DAG of 2**32 paths


def _flatten(
    value: Any, prefix: str, out: dict[str, tuple[tuple[int, ...], str]], depth: int, seen: list[int], what: str = "the file"
) -> None:
    if depth > 32:
        return
    seen[0] += 1
    if seen[0] > _MAX_FLAT_NODES:
        raise UnsafeFile(f"{what} nests its state dict into more entries than any model has; refusing it.")
    if isinstance(value, TensorInfo):
        out[prefix] = (value.shape, value.dtype)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                _flatten(v, f"{prefix}.{k}" if prefix else k, out, depth + 1, seen, what)
