"""A pickle interpreter that never runs code from the file.

`interpret(data, ...)` walks the opcode stream itself (protocols 0-5). Globals are looked up in an
exact (module, name) allow-list and mapped to *our* functions, which build plain data: dicts,
lists, strings, numbers, and tensors rebuilt from raw storage bytes into numpy arrays. Every other
global, and every opcode that could reach arbitrary objects (INST, OBJ, EXT*, out-of-band
buffers), is refused with `UnsafeFile` before anything is built. Every size is checked before it
is allocated.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tihub.errors import FormatError, UnsafeFile
from tihub.formats.budget import MemoryBudget

# Caps for one pickle stream.
MAX_OPS = 200_000  # embeddings need ~100; model checkpoints pass a larger max_ops
MAX_MODEL_OPS = 10_000_000
MAX_MEMO = 1_000_000
MAX_MARKS = 10_000
MAX_TEXT = 64 * 1024 * 1024  # one string / bytes literal
MAX_LONG_BYTES = 64  # LONG1/LONG4 payload (no 2**(8*2**32) integers)
MAX_TENSOR_RANK = 8
_BIG_LITERAL = 64 * 1024  # string/bytes literals above this are charged to the memory budget


@dataclass(frozen=True)
class StorageType:
    """`torch.FloatStorage` and friends: only a dtype tag."""

    dtype: str  # safetensors-style: F32, F16, BF16, F64, I64, ...


# torch storage class name -> (dtype tag, itemsize)
STORAGE_TYPES: dict[str, tuple[str, int]] = {
    "FloatStorage": ("F32", 4),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "DoubleStorage": ("F64", 8),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}
ITEMSIZE = {tag: size for tag, size in STORAGE_TYPES.values()}
# torch.<dtype> globals (newer pickles may name dtypes directly)
TORCH_DTYPES = {
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "double": "F64",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
NUMPY_DTYPE = {
    "F32": "<f4",
    "F16": "<f2",
    "F64": "<f8",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
    "BF16": "<u2",  # widened to float32 after the copy
}


@dataclass
class StorageRef:
    """A persistent-id reference to a storage record (zip `data/<key>`, or a legacy storage)."""

    dtype: str
    key: str
    location: str
    numel: int


@dataclass
class TensorInfo:
    """A tensor whose data was not read (shapes-only mode)."""

    shape: tuple[int, ...]
    dtype: str


class ModuleState(dict):  # type: ignore[type-arg]
    """An allow-listed module class (ParameterDict) rebuilt as its plain state dict, never instantiated."""

    __slots__ = ("cls",)

    def __init__(self, cls: str) -> None:
        super().__init__()
        self.cls = cls


class BF16Array:
    """A bfloat16 tensor widened to float32 (exactly); layouts record dtype 'bf16'."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


@dataclass
class Opaque:
    """A value from an allow-listed but irrelevant class (shapes-only mode); never called."""

    name: str


class _Mark:
    __slots__ = ()


_MARK = _Mark()


_K_OTHER, _K_REBUILD_TENSOR, _K_ORDERED_DICT, _K_REBUILD_PARAMETER, _K_SET, _K_ENCODE, _K_SIZE, _K_PARAMETER_DICT = range(8)
_GLOBAL_KINDS = {
    ("collections", "OrderedDict"): _K_ORDERED_DICT,
    ("torch._utils", "_rebuild_tensor_v2"): _K_REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor"): _K_REBUILD_TENSOR,
    ("torch._utils", "_rebuild_parameter"): _K_REBUILD_PARAMETER,
    ("torch._utils", "_rebuild_parameter_with_state"): _K_REBUILD_PARAMETER,
    ("torch.nn.modules.container", "ParameterDict"): _K_PARAMETER_DICT,
    ("__builtin__", "set"): _K_SET,
    ("builtins", "set"): _K_SET,
    ("_codecs", "encode"): _K_ENCODE,
    ("torch", "Size"): _K_SIZE,
}


@dataclass(frozen=True)
class _Global:
    """A resolved allow-listed global: a callable of ours, or a marker value."""

    module: str
    name: str
    kind: int = field(default=_K_OTHER, compare=False)


def _is_torch_storage(module: str, name: str) -> bool:
    return module == "torch" and name in STORAGE_TYPES


EMBEDDING_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch.nn.modules.container", "ParameterDict"),
    ("__builtin__", "set"),
    ("builtins", "set"),
    ("_codecs", "encode"),
    ("torch", "Size"),
}
# Extra names that appear in model checkpoints; in shapes mode they become inert Opaque values.
CHECKPOINT_OPAQUE = {
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("torch.torch_version", "TorchVersion"),
    ("argparse", "Namespace"),
    ("collections", "defaultdict"),
    ("__builtin__", "dict"),
    ("builtins", "dict"),
    ("__builtin__", "object"),
    ("builtins", "object"),
    ("torch", "device"),
    ("__builtin__", "frozenset"),
    ("builtins", "frozenset"),
}


def _resolve(module: str, name: str, lenient: bool) -> Any:
    """The allow-list: a torch storage/dtype marker, one of our callables, or None (refused)."""
    if _is_torch_storage(module, name):
        return StorageType(STORAGE_TYPES[name][0])
    if module == "torch" and name in TORCH_DTYPES:
        return StorageType(TORCH_DTYPES[name])
    if (module, name) in EMBEDDING_GLOBALS:
        return _Global(module, name, _GLOBAL_KINDS.get((module, name), _K_OTHER))
    if lenient and (module, name) in CHECKPOINT_OPAQUE:
        return _Global(module, name, _GLOBAL_KINDS.get((module, name), _K_OTHER))
    return None


def _global_table(lenient: bool) -> dict[bytes, Any]:
    """`b"module\\nname"` (the GLOBAL opcode's operand) -> the resolved value, for every allowed
    pair; the values are immutable, so one shared instance serves every file."""
    pairs = {("torch", n) for n in STORAGE_TYPES} | {("torch", n) for n in TORCH_DTYPES} | EMBEDDING_GLOBALS | CHECKPOINT_OPAQUE
    table: dict[bytes, Any] = {}
    for module, name in pairs:
        found = _resolve(module, name, lenient)
        if found is not None:
            table[f"{module}\n{name}".encode()] = found
    return table


_GLOBALS_BY_LINE = {False: _global_table(False), True: _global_table(True)}


_U32 = struct.Struct("<I")


class PickleResult:
    __slots__ = ("value", "end")

    def __init__(self, value: Any, end: int) -> None:
        self.value = value
        self.end = end


StorageLoader = Callable[[StorageRef], "bytes | memoryview | None"]


def interpret(
    data: bytes | memoryview,
    *,
    load_storage: StorageLoader | None = None,
    what: str = "the file",
    start: int = 0,
    shapes_only: bool = False,
    lenient: bool = False,
    max_storage_bytes: int = 64 * 1024 * 1024,
    refs: dict[str, StorageRef] | None = None,
    max_ops: int = MAX_OPS,
    budget: MemoryBudget | None = None,
    big_endian: bool = False,
) -> PickleResult:
    """Interpret one pickle from `data[start:]`; return its value and the offset after STOP.

    `load_storage(ref)` returns the raw bytes of a storage (exactly numel * itemsize), or None in
    shapes-only mode, where tensors come back as `TensorInfo`. Every tensor copy and decoded
    string is charged to `budget` (by default one of `max_storage_bytes`) before it is made;
    `big_endian` storages (a torch zip whose `byteorder` says big) are swapped to native order.
    """
    vm = _VM(data, load_storage, what, shapes_only, max_storage_bytes, lenient)
    vm.max_ops = max_ops
    vm.budget = budget if budget is not None else MemoryBudget(max_storage_bytes, what)
    vm.big_endian = big_endian
    if refs is not None:
        vm.refs = refs
    try:
        return vm.run(start)
    except FormatError:
        raise
    except RecursionError:
        raise UnsafeFile(f"{what} nests its pickle data too deeply; refusing it.") from None
    except MemoryError:
        raise UnsafeFile(f"{what} asks for more memory than a data file should; refusing it.") from None
    except (IndexError, KeyError, ValueError, TypeError, struct.error, OverflowError, UnicodeDecodeError, AttributeError) as exc:
        raise FormatError(f"{what} holds a malformed pickle ({type(exc).__name__}); it cannot be read.") from None


class _VM:
    __slots__ = (
        "lenient", "max_ops", "refs", "data", "load_storage", "what", "shapes_only", "max_storage_bytes",
        "storage_cache", "total_storage", "lent", "budget", "big_endian",
    )

    def __init__(
        self,
        data: bytes | memoryview,
        load_storage: StorageLoader | None,
        what: str,
        shapes_only: bool,
        max_storage_bytes: int,
        lenient: bool = False,
    ) -> None:
        self.lenient = lenient
        self.max_ops = MAX_OPS
        self.refs: dict[str, StorageRef] = {}
        self.data = data if type(data) is bytes else bytes(data)  # hashable slices (GLOBAL lookup)
        self.load_storage = load_storage
        self.what = what
        self.shapes_only = shapes_only
        self.max_storage_bytes = max_storage_bytes
        self.storage_cache: dict[str, Any] = {}
        self.lent: set[str] = set()  # storages one tensor already uses in place
        self.total_storage = 0
        self.budget = MemoryBudget(max_storage_bytes, what)
        self.big_endian = False

    # -- helpers -------------------------------------------------------------------------------
    def unsafe(self, why: str) -> UnsafeFile:
        return UnsafeFile(f"{self.what} {why}; refusing it (no code from it was run).")

    def bad(self, why: str) -> FormatError:
        return FormatError(f"{self.what} holds a malformed pickle ({why}); it cannot be read.")

    def resolve_global(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.unsafe("names a global through non-string values")
        found = _resolve(module, name, self.lenient)
        if found is None:
            raise self.unsafe(f"references the Python global {module}.{name}, which a data file never needs")
        return found

    def call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global):
            raise self.unsafe(f"calls a non-callable value ({type(func).__name__})")
        if type(args) is not tuple:
            if not isinstance(args, tuple):
                raise self.bad("REDUCE arguments are not a tuple")
            args = tuple(args)
        kind = func.kind
        if kind == _K_REBUILD_TENSOR:
            if len(args) < 4:
                raise self.bad("a tensor record has too few fields")
            return self.rebuild_tensor(args[0], args[1], args[2], args[3])
        if kind == _K_ORDERED_DICT:
            out: dict[Any, Any] = {}
            if args:
                for item in args[0]:
                    k, v = item
                    out[_hashable(k, self)] = v
            return out
        if kind == _K_REBUILD_PARAMETER:
            if not args:
                raise self.bad("a parameter record is empty")
            return args[0]
        if kind == _K_SET:
            if not args:
                return set()
            if not isinstance(args[0], (list, tuple, set, frozenset)):
                raise self.unsafe("builds a set from something other than a list")
            return set(_hashable_all(list(args[0]), self))
        if kind == _K_ENCODE:
            if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
                if len(args[0]) > MAX_TEXT:
                    raise self.unsafe("holds an oversized byte string")
                self.budget.charge(len(args[0]) + 33, "a byte string")  # each call builds a new copy
                return args[0].encode("latin-1")
            raise self.unsafe("uses _codecs.encode with an unexpected encoding")
        if kind == _K_SIZE:
            if len(args) == 1 and isinstance(args[0], tuple) and all(type(x) is int for x in args[0]):
                return args[0]
            raise self.bad("torch.Size of non-integers")
        if kind == _K_PARAMETER_DICT:
            return ModuleState("ParameterDict")
        if self.lenient:
            return Opaque(f"{func.module}.{func.name}")
        raise self.unsafe(f"calls {func.module}.{func.name}")  # pragma: no cover - guarded above

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> Any:
        if type(storage) is not StorageRef:
            raise self.unsafe("rebuilds a tensor from something that is not a storage record")
        if type(offset) is not int or not isinstance(size, tuple) or not isinstance(stride, tuple):
            raise self.bad("tensor offset/size/stride have the wrong types")
        rank = len(size)
        if rank != len(stride) or rank > MAX_TENSOR_RANK:
            raise self.bad("tensor size and stride disagree")
        if offset < 0:
            raise self.bad("negative tensor offset")
        # one pass, last axis first: types, element count, last element reached, contiguity
        numel = 1
        last = offset
        acc = 1
        contiguous = True
        for i in range(rank - 1, -1, -1):
            s_ = size[i]
            st = stride[i]
            if type(s_) is not int or type(st) is not int or s_ < 0 or st < 0:
                raise self.bad("tensor sizes and strides must be non-negative integers")
            numel *= s_
            last += (s_ - 1) * st
            if s_ != 1 and st != acc:
                contiguous = False
            acc *= s_
        if numel and last >= storage.numel:
            raise self.bad(f"a tensor of shape {list(size)} reaches past its storage of {storage.numel} elements")
        if self.shapes_only:
            return TensorInfo(tuple(size), storage.dtype)
        raw = self.storage_array(storage)
        itemsize = ITEMSIZE[storage.dtype]
        bf16 = storage.dtype == "BF16"
        # the real output size, charged before anything is allocated: a tensor used in place
        # costs nothing; every copy (a second view of a storage, a strided or zero-stride view,
        # bfloat16 widened to float32) costs numel x its output itemsize
        out_bytes = numel * (4 if bf16 else itemsize)
        if numel == 0:
            arr = np.zeros(size, dtype=raw.dtype)
        elif contiguous:
            arr = raw[offset : offset + numel].reshape(size)
            # the first tensor of a private, writable, aligned storage keeps its bytes in place;
            # a read-only buffer (the caller's bytes) or a second user of one storage gets a copy
            flags = arr.flags
            if bf16:
                pass  # widened below (a new array either way)
            elif flags.writeable and flags.aligned and storage.key not in self.lent:
                self.lent.add(storage.key)
            else:
                self.budget.charge(out_bytes, f"a tensor of shape {_shape_text(size)}")
                arr = arr.copy()
        else:
            if not bf16:
                self.budget.charge(out_bytes, f"a tensor of shape {_shape_text(size)}")
            view = np.lib.stride_tricks.as_strided(
                raw[offset:], shape=size, strides=tuple(st * itemsize for st in stride), writeable=False
            )
            arr = view if bf16 else np.array(view, copy=True)
        if bf16:
            if numel:
                self.budget.charge(out_bytes, f"a bfloat16 tensor of shape {_shape_text(size)}")
            wide = arr.astype(np.uint32)
            wide <<= 16
            return BF16Array(wide.view(np.float32))
        return arr

    def storage_array(self, ref: StorageRef) -> np.ndarray:
        cached = self.storage_cache.get(ref.key)
        if cached is not None:
            return cached
        if self.load_storage is None:
            raise self.bad("a tensor refers to storage in a file without storages")
        raw = self.load_storage(ref)
        if raw is None:
            raise self.bad(f"storage {ref.key!r} is missing")
        dtype = NUMPY_DTYPE[ref.dtype]
        if self.big_endian and dtype[0] == "<":
            self.budget.charge(len(raw), f"big-endian storage {ref.key!r} swapped to native order")
            arr = np.frombuffer(raw, dtype=">" + dtype[1:]).astype(dtype)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        self.storage_cache[ref.key] = arr
        return arr

    def persistent(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise self.unsafe("uses a persistent id that is not a tensor storage")
        stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(stype, StorageType):
            raise self.unsafe("names a storage type that is not a torch storage")
        if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int:
            raise self.bad("a storage record has the wrong field types")
        if len(key) > 64 or not key.replace("_", "").isalnum():
            raise self.unsafe(f"names a storage {key[:40]!r} that is not a plain record name")
        if len(pid) >= 6 and pid[5] is not None:
            raise self.bad("storage views are not supported")
        if numel < 0:
            raise self.bad("a storage declares a negative size")
        nbytes = numel * ITEMSIZE[stype.dtype]
        prev = self.refs.get(key)
        if prev is None:
            if not self.shapes_only:
                self.total_storage += nbytes
                if self.total_storage > self.max_storage_bytes:
                    raise self.unsafe(
                        f"declares {self.total_storage} bytes of tensor storage, over the "
                        f"{self.max_storage_bytes}-byte limit for this kind of file"
                    )
            ref = StorageRef(stype.dtype, key, location, numel)
            self.refs[key] = ref
            return ref
        if prev.dtype != stype.dtype or prev.numel != numel:
            raise self.unsafe("declares one storage twice with different types or sizes")
        return prev

    # -- the loop ------------------------------------------------------------------------------
    def run(self, pos: int) -> PickleResult:
        """The hot loop: the opcodes torch files use, inlined with plain locals and ordered by how
        often torch pickles use them; the rest go through `_one_op`. IndexError/KeyError/
        struct.error raised here become FormatError. The ops cap also bounds the stack, the memo
        and every container."""
        data = self.data
        n = len(data)
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        unpack_from = struct.unpack_from
        u32 = _U32.unpack_from
        find = data.find
        append = stack.append
        pop = stack.pop
        mark_append = marks.append
        mark_pop = marks.pop
        max_marks = MAX_MARKS
        globals_by_line = _GLOBALS_BY_LINE[bool(self.lenient)]
        for _ in range(self.max_ops):
            op = data[pos]  # IndexError at the end: "it ends before STOP"
            pos += 1
            if op == 0x71:  # BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x58:  # BINUNICODE
                end = pos + 4 + u32(data, pos)[0]
                pos += 4
                if end > n:
                    raise self.bad("it is truncated")
                if end - pos > _BIG_LITERAL:
                    self.budget.charge(end - pos, "a string")
                append(data[pos:end].decode("utf-8", "surrogatepass"))
                pos = end
            elif op == 0x28:  # MARK
                if len(marks) >= max_marks:
                    raise self.unsafe("nests pickle MARKs too deeply")
                mark_append(len(stack))
            elif op == 0x4D:  # BININT2
                append(data[pos] | (data[pos + 1] << 8))
                pos += 2
            elif op == 0x63:  # GLOBAL
                end1 = find(b"\n", pos, pos + 256)
                end2 = find(b"\n", end1 + 1, end1 + 257) if end1 >= 0 else -1
                if end2 < 0:
                    raise self.bad("an unterminated global name")
                found = globals_by_line.get(data[pos:end2])
                if found is None:  # not allowed (or oddly spelled): the full check names it
                    found = self.resolve_global(data[pos:end1].decode("utf-8"), data[end1 + 1 : end2].decode("utf-8"))
                append(found)
                pos = end2 + 1
            elif op == 0x4B:  # BININT1
                append(data[pos])
                pos += 1
            elif op == 0x74:  # TUPLE
                m = mark_pop()
                items = tuple(stack[m:])
                del stack[m:]
                append(items)
            elif op == 0x7D:  # EMPTY_DICT
                append({})
            elif op == 0x52:  # REDUCE
                args = pop()
                append(self.call(pop(), args))
            elif op == 0x75:  # SETITEMS
                m = mark_pop()
                items = stack[m:]
                del stack[m:]
                if len(items) % 2:
                    raise self.bad("odd number of dict items")
                target = stack[-1]
                if type(target) is not dict:
                    _as(target, dict, self)
                for i in range(0, len(items), 2):
                    k = items[i]
                    if type(k) is not str:
                        k = _hashable(k, self)
                    target[k] = items[i + 1]
            elif op == 0x80:  # PROTO
                if data[pos] > 5:
                    raise self.bad("unknown pickle protocol")
                pos += 1
            elif op == 0x51:  # BINPERSID
                append(self.persistent(pop()))
            elif op == 0x29:  # EMPTY_TUPLE
                append(())
            elif op == 0x2E:  # STOP
                if len(stack) != 1 or marks:
                    raise self.bad("the stack is unbalanced at STOP")
                return PickleResult(_finish(stack[0]), pos)
            elif op == 0x73:  # SETITEM
                v = pop()
                k = pop()
                target = stack[-1]
                if type(target) is not dict:
                    _as(target, dict, self)
                if type(k) is not str:
                    k = _hashable(k, self)
                target[k] = v
            elif op == 0x86:  # TUPLE2
                b = pop()
                stack[-1] = (stack[-1], b)
            elif op == 0x4E:  # NONE
                append(None)
            elif op == 0x89:  # NEWFALSE
                append(False)
            elif op == 0x68:  # BINGET
                append(self._get(memo, data[pos]))
                pos += 1
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x88:  # NEWTRUE
                append(True)
            elif op == 0x87:  # TUPLE3
                c = pop()
                b = pop()
                stack[-1] = (stack[-1], b, c)
            elif op == 0x4A:  # BININT
                (k,) = unpack_from("<i", data, pos)
                pos += 4
                append(k)
            elif op == 0x8C:  # SHORT_BINUNICODE
                k = data[pos]
                pos += 1
                end = pos + k
                if end > n:
                    raise self.bad("it is truncated")
                append(data[pos:end].decode("utf-8", "surrogatepass"))
                pos = end
            elif op == 0x94:  # MEMOIZE
                self._put(memo, len(memo), stack)
            else:
                pos, done = self._one_op(op, pos, stack, marks, memo)
                if done is not None:
                    return done  # type: ignore[no-any-return]
        raise self.unsafe("runs more pickle operations than this kind of file needs")

    def _one_op(  # noqa: C901 - one opcode switch
        self, op: int, pos: int, stack: list[Any], marks: list[int], memo: dict[int, Any]
    ) -> tuple[int, Any]:
        """Every opcode (the hot loop in `run` inlines the common ones). Returns the new offset
        and, for STOP, a PickleResult."""
        data = self.data
        n = len(data)
        unpack_from = struct.unpack_from

        def take(k: int) -> bytes:
            nonlocal pos
            if k < 0 or pos + k > n:
                raise self.bad("it is truncated")
            if k > _BIG_LITERAL:  # a literal is a new object (strings and bytes are copied out)
                self.budget.charge(k, "a string")
            out = data[pos : pos + k]
            pos += k
            return out

        def readline() -> bytes:
            nonlocal pos
            end = data.find(b"\n", pos, min(n, pos + 4096))
            if end < 0:
                raise self.bad("an unterminated text field")
            out = data[pos:end]
            pos = end + 1
            return out

        def pop_mark() -> list[Any]:
            if not marks:
                raise self.bad("a MARK is missing")
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            return items

        def text(k: int, enc: str = "utf-8") -> str:
            if k > MAX_TEXT:
                raise self.unsafe("holds an oversized string")
            return take(k).decode(enc, "surrogatepass")

        if True:
            if op == 0x71:  # BINPUT q
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x58:  # BINUNICODE X
                (k,) = unpack_from("<I", data, pos)
                pos += 4
                end = pos + k
                if end > n:
                    raise self.bad("it is truncated")
                if k > _BIG_LITERAL:
                    self.budget.charge(k, "a string")
                stack.append(data[pos:end].decode("utf-8", "surrogatepass"))
                pos = end
            elif op == 0x28:  # MARK (
                if len(marks) >= MAX_MARKS:
                    raise self.unsafe("nests pickle MARKs too deeply")
                marks.append(len(stack))
            elif op == 0x4B:  # BININT1 K
                stack.append(data[pos])
                pos += 1
            elif op == 0x74:  # TUPLE t
                stack.append(tuple(pop_mark()))
            elif op == 0x63:  # GLOBAL c
                module = readline().decode("utf-8")
                name = readline().decode("utf-8")
                stack.append(self.resolve_global(module, name))
            elif op == 0x51:  # BINPERSID Q
                stack.append(self.persistent(stack.pop()))
            elif op == 0x52:  # REDUCE R
                args = stack.pop()
                func = stack.pop()
                stack.append(self.call(func, args))
            elif op == 0x86:  # TUPLE2
                if len(stack) < 2:
                    raise self.bad("empty stack")
                stack[-2:] = [(stack[-2], stack[-1])]
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x29:  # EMPTY_TUPLE )
                stack.append(())
            elif op == 0x75:  # SETITEMS u
                items = pop_mark()
                if len(items) % 2:
                    raise self.bad("odd number of dict items")
                target = _as(stack[-1], dict, self)
                target.update(_dict_from(items, self))
            elif op == 0x73:  # SETITEM s
                v = stack.pop()
                k = stack.pop()
                _as(stack[-1], dict, self)[_hashable(k, self)] = v
            elif op == 0x7D:  # EMPTY_DICT }
                stack.append({})
            elif op == 0x68:  # BINGET h
                stack.append(self._get(memo, data[pos]))
                pos += 1
            elif op == 0x85:  # TUPLE1
                stack[-1:] = [(stack[-1],)] if stack else _raise(self.bad("empty stack"))
            elif op == 0x87:  # TUPLE3
                if len(stack) < 3:
                    raise self.bad("empty stack")
                stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
            elif op == 0x4A:  # BININT J
                stack.append(unpack_from("<i", take(4))[0])
            elif op == 0x4D:  # BININT2 M
                stack.append(unpack_from("<H", take(2))[0])
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x4E:  # NONE N
                stack.append(None)
            elif op == 0x94:  # MEMOIZE
                self._put(memo, len(memo), stack)
            elif op == 0x8C:  # SHORT_BINUNICODE
                stack.append(text(take(1)[0]))
            elif op == 0x93:  # STACK_GLOBAL
                if len(stack) < 2:
                    raise self.bad("STACK_GLOBAL on a short stack")
                name = stack.pop()
                module = stack.pop()
                stack.append(self.resolve_global(module, name))
            elif op == 0x62:  # BUILD b
                state = stack.pop()
                self.build(stack[-1], state)
            elif op == 0x81:  # NEWOBJ
                args = stack.pop()
                cls = stack.pop()
                stack.append(self.newobj(cls, args))
            elif op == 0x65:  # APPENDS e
                items = pop_mark()
                _as(stack[-1], list, self).extend(items)
            elif op == 0x61:  # APPEND a
                v = stack.pop()
                _as(stack[-1], list, self).append(v)
            elif op == 0x5D:  # EMPTY_LIST ]
                stack.append([])
            elif op == 0x2E:  # STOP '.'
                if len(stack) != 1 or marks:
                    raise self.bad("the stack is unbalanced at STOP")
                return pos, PickleResult(_finish(stack[0]), pos)
            elif op == 0x80:  # PROTO
                if take(1)[0] > 5:
                    raise self.bad("unknown pickle protocol")
            elif op == 0x95:  # FRAME
                take(8)
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x72:  # LONG_BINPUT r
                (idx,) = unpack_from("<I", take(4))
                self._put(memo, idx, stack)
            elif op == 0x70:  # PUT p
                self._put(memo, _int_text(readline(), self), stack)
            elif op == 0x6A:  # LONG_BINGET j
                stack.append(self._get(memo, unpack_from("<I", take(4))[0]))
            elif op == 0x67:  # GET g
                stack.append(self._get(memo, _int_text(readline(), self)))
            elif op == 0x8D:  # BINUNICODE8
                (k,) = unpack_from("<Q", take(8))
                stack.append(text(k))
            elif op == 0x56:  # UNICODE V (raw-unicode-escape line)
                stack.append(readline().decode("raw_unicode_escape"))
            elif op == 0x8A:  # LONG1
                k = take(1)[0]
                stack.append(int.from_bytes(take(k), "little", signed=True))
            elif op == 0x8B:  # LONG4
                (k,) = unpack_from("<i", take(4))
                if k < 0 or k > MAX_LONG_BYTES:
                    raise self.unsafe("holds an oversized integer")
                stack.append(int.from_bytes(take(k), "little", signed=True))
            elif op == 0x49:  # INT I
                line = readline()
                if line == b"01":
                    stack.append(True)
                elif line == b"00":
                    stack.append(False)
                else:
                    stack.append(_int_text(line, self))
            elif op == 0x4C:  # LONG L
                line = readline()
                if line.endswith(b"L"):
                    line = line[:-1]
                stack.append(_int_text(line, self))
            elif op == 0x47:  # BINFLOAT G
                stack.append(unpack_from(">d", take(8))[0])
            elif op == 0x46:  # FLOAT F
                line = readline()
                if len(line) > 64:
                    raise self.bad("an oversized float literal")
                stack.append(float(line))
            elif op == 0x55:  # SHORT_BINSTRING U
                stack.append(take(take(1)[0]).decode("latin-1"))
            elif op == 0x54:  # BINSTRING T
                (k,) = unpack_from("<i", take(4))
                if k < 0 or k > MAX_TEXT:
                    raise self.unsafe("holds an oversized string")
                stack.append(take(k).decode("latin-1"))
            elif op == 0x53:  # STRING S (quoted repr)
                stack.append(_quoted_string(readline(), self))
            elif op == 0x43:  # SHORT_BINBYTES C
                stack.append(take(take(1)[0]))
            elif op == 0x42:  # BINBYTES B
                (k,) = unpack_from("<I", take(4))
                if k > MAX_TEXT:
                    raise self.unsafe("holds an oversized byte string")
                stack.append(take(k))
            elif op == 0x8E:  # BINBYTES8
                (k,) = unpack_from("<Q", take(8))
                if k > MAX_TEXT:
                    raise self.unsafe("holds an oversized byte string")
                stack.append(take(k))
            elif op == 0x96:  # BYTEARRAY8
                (k,) = unpack_from("<Q", take(8))
                if k > MAX_TEXT:
                    raise self.unsafe("holds an oversized byte string")
                stack.append(take(k))
            elif op == 0x6C:  # LIST l
                stack.append(pop_mark())
            elif op == 0x64:  # DICT d
                items = pop_mark()
                if len(items) % 2:
                    raise self.bad("odd number of dict items")
                stack.append(_dict_from(items, self))
            elif op == 0x91:  # FROZENSET
                stack.append(frozenset(_hashable_all(pop_mark(), self)))
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                _as(stack[-1], set, self).update(_hashable_all(items, self))
            elif op == 0x30:  # POP 0
                if stack and len(stack) > (marks[-1] if marks else 0):
                    stack.pop()
                elif marks and len(stack) == marks[-1]:
                    marks.pop()
                else:
                    raise self.bad("POP on an empty stack")
            elif op == 0x31:  # POP_MARK 1
                pop_mark()
            elif op == 0x32:  # DUP 2
                stack.append(stack[-1])
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = stack.pop()
                args = stack.pop()
                cls = stack.pop()
                if kwargs:
                    raise self.unsafe("constructs an object with keyword arguments")
                stack.append(self.newobj(cls, args))
            elif op == 0x50:  # PERSID P
                raise self.unsafe("uses a text persistent id")
            elif op in (0x69, 0x6F):  # INST i, OBJ o
                raise self.unsafe("instantiates a class with INST/OBJ")
            elif op in (0x82, 0x83, 0x84):  # EXT1/2/4
                raise self.unsafe("uses the copyreg extension registry")
            elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise self.unsafe("uses out-of-band pickle buffers")
            else:
                raise self.bad(f"unknown opcode 0x{op:02x}")
        return pos, None

    def _put(self, memo: dict[int, Any], idx: int, stack: list[Any]) -> None:
        if not stack:
            raise self.bad("memoizing an empty stack")
        if idx not in memo and len(memo) >= MAX_MEMO:
            raise self.unsafe("fills the pickle memo beyond limits")
        memo[idx] = stack[-1]

    def _get(self, memo: dict[int, Any], idx: int) -> Any:
        try:
            return memo[idx]
        except KeyError:
            raise self.bad(f"memo entry {idx} is missing") from None

    def newobj(self, cls: Any, args: Any) -> Any:
        if isinstance(cls, _Global) and (cls.module, cls.name) == ("torch.nn.modules.container", "ParameterDict"):
            return ModuleState("ParameterDict")
        if isinstance(cls, _Global) and (cls.module, cls.name) == ("collections", "OrderedDict"):
            return {}
        if self.lenient and isinstance(cls, _Global):
            return Opaque(f"{cls.module}.{cls.name}")
        name = f"{cls.module}.{cls.name}" if isinstance(cls, _Global) else type(cls).__name__
        raise self.unsafe(f"constructs an object of {name}")

    def build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, ModuleState):
            if isinstance(state, dict):
                obj.update(state)
                return
            raise self.bad("module state is not a dict")
        if isinstance(obj, Opaque):
            return
        if isinstance(obj, dict) and (
            isinstance(state, dict)
            or (isinstance(state, tuple) and len(state) == 2 and all(x is None or isinstance(x, dict) for x in state))
        ):
            return  # instance attributes of an OrderedDict (torch's state_dict `_metadata`): dropped, never set
        if isinstance(obj, (np.ndarray, BF16Array, TensorInfo)):
            # tensors carry python attributes via BUILD on some torch versions; ignore only empty ones
            if state in (None, {}) or (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
                return
        raise self.unsafe(f"sets state on a {type(obj).__name__} with BUILD")


def _shape_text(size: tuple[int, ...]) -> str:
    text = "x".join(str(d) for d in size)
    return text if len(text) <= 60 else text[:57] + "..."


def _finish(value: Any) -> Any:
    return value


def _raise(exc: Exception) -> Any:
    raise exc


def _as(obj: Any, kind: type, vm: _VM) -> Any:
    if not isinstance(obj, kind):
        raise vm.unsafe(f"adds items to a {type(obj).__name__} as if it were a {kind.__name__}")
    return obj


_MAX_KEY_NODES = 10_000


def _hashable(k: Any, vm: _VM) -> Any:
    """`k` itself when it is a hashable key: scalars, or tuples of them. Tuples are walked with a
    node limit, since memo references can make a small pickle a key of 2**60 nested tuples (and
    Python hashes a tuple by walking all of it)."""
    if isinstance(k, (str, int, float, bool, bytes, type(None))):
        return k
    if isinstance(k, tuple):
        todo = [k]
        nodes = 0
        while todo:
            t = todo.pop()
            for x in t:
                nodes += 1
                if nodes > _MAX_KEY_NODES:
                    raise vm.unsafe("uses a dict key nested beyond limits")
                if isinstance(x, tuple):
                    todo.append(x)
                elif not isinstance(x, (str, int, float, bool, bytes, type(None))):
                    raise vm.bad(f"a dict key of type {type(x).__name__}")
        return k
    raise vm.bad(f"a dict key of type {type(k).__name__}")


def _hashable_all(items: list[Any], vm: _VM) -> list[Any]:
    return [_hashable(x, vm) for x in items]


def _dict_from(items: list[Any], vm: _VM) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for i in range(0, len(items), 2):
        out[_hashable(items[i], vm)] = items[i + 1]
    return out


def _int_text(line: bytes, vm: _VM) -> int:
    if len(line) > 40:
        raise vm.bad("an oversized integer literal")
    return int(line)


def _quoted_string(line: bytes, vm: _VM) -> str:
    if len(line) >= 2 and line[:1] == line[-1:] and line[:1] in (b"'", b'"'):
        body = line[1:-1]
        return body.decode("unicode_escape" if b"\\" in body else "latin-1")
    raise vm.bad("an unquoted STRING literal")
