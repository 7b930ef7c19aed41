"""Safe readers and writers for every textual-inversion embedding format.

Public API:
    read_embedding(path, data=None) -> Embedding       raises FormatError (or a subclass)
    write_embedding(emb, path, fmt="safetensors")      fmt: safetensors | a1111 | diffusers-bin |
                                                        diffusers-safetensors | png
    tensor_shapes(path), read_safetensors_header(path) model files: names and shapes, no weights
    EMBEDDING_SUFFIXES                                 the suffixes a folder walk looks at
No byte of a file is ever executed: pickles are interpreted against an allow-list.
"""

from tihub.formats.model import ENCODER_BY_WIDTH, Embedding

__all__ = [
    "Embedding",
    "ENCODER_BY_WIDTH",
    "read_embedding",
    "write_embedding",
    "EMBEDDING_SUFFIXES",
    "tensor_shapes",
    "read_safetensors_header",
]

# File suffixes that may hold an embedding (folders are walked for these).
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp", ".ckpt")


def read_embedding(path, data=None):  # type: ignore[no-untyped-def]
    from tihub.formats.reader import read_embedding as _read

    return _read(path, data)


def write_embedding(emb, path, fmt="safetensors", **options):  # type: ignore[no-untyped-def]
    from tihub.formats.writer import write_embedding as _write

    return _write(emb, path, fmt, **options)


def tensor_shapes(path, max_pickle=256 * 1024 * 1024):  # type: ignore[no-untyped-def]
    """Flattened state-dict keys -> (shape, dtype tag) of a torch zip / legacy .ckpt, pickle only."""
    from tihub.formats.containers import tensor_shapes as _shapes

    return _shapes(path, max_pickle)


def read_safetensors_header(path, max_header=100_000_000):  # type: ignore[no-untyped-def]
    """The validated header (tensors, metadata, data_offset) of a safetensors file of any size."""
    from tihub.formats.containers import read_safetensors_header as _header

    return _header(path, max_header)
