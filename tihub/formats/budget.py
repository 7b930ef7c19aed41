"""One memory budget per file read.

Every allocation a reader makes *because of what the file says* is charged here before it is
made: a tensor copied out of its storage (a second view of one storage, a strided or zero-stride
view, a big-endian storage swapped to native order, bfloat16 widened to float32), every string
`_codecs.encode` builds, the Python objects a JSON payload becomes, the pixels an image decodes
to. A tensor that is used in place (a view of the file's own bytes) costs nothing beyond the
file, which is itself capped (`MAX_EMBEDDING_FILE`).

The budget fits embeddings with a wide margin: the largest embedding a reader accepts is 75
vectors x 1280 + 768 wide (SDXL) in float32, 0.6 MiB, and the widest it recognises (to refuse) is
a T5 embedding of 75 x 4096, 1.2 MiB; an A1111 PNG card of an SDXL embedding decodes to about
10 MiB of Python objects. A file that needs more than `EMBEDDING_BUDGET` is refused in one
sentence (UnsafeFile) before the allocation that would pass it.
"""

from __future__ import annotations

from tihub.errors import UnsafeFile

MiB = 1024 * 1024
EMBEDDING_BUDGET = 32 * MiB  # per embedding file (read_embedding)
MAX_EMBEDDING_VECTORS = 75  # no real embedding has more (A1111's own limit); widths are 768/1024/1280


class MemoryBudget:
    """Bytes a reader may still allocate for one file; `charge` raises UnsafeFile past the limit."""

    __slots__ = ("limit", "used", "what")

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.used = 0
        self.what = what

    def charge(self, nbytes: int, for_what: str) -> None:
        """Account `nbytes` about to be allocated for `for_what` (a short noun phrase)."""
        if nbytes < 0:
            nbytes = 0
        self.used += nbytes
        if self.used > self.limit:
            raise UnsafeFile(
                f"{self.what} would need more than {_size(self.limit)} of memory to read ({for_what} "
                f"asks for {_size(nbytes)}), more than any embedding needs; refusing it."
            )

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit


def _size(n: int) -> str:
    if n >= 1 << 60:
        return "more than an exbibyte"
    if n >= 10 * MiB:
        return f"{n // MiB} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n} bytes"
