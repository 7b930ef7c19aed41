"""Model files for tests that look at checkpoints without the weights (shared by
test_checkpoints.py and test_cli_inspect_hash.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}


def write_st(path: Path, tensors: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None, dtype: str = "F16") -> Path:
    """A valid safetensors file with real key names and shapes; the data area is a sparse hole,
    so multi-GB checkpoints cost nothing on disk."""
    header: dict[str, object] = {}
    offset = 0
    for key, shape in tensors.items():
        n = ITEMSIZE[dtype]
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path
