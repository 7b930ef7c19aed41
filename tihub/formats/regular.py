"""Open only regular files, without blocking.

A FIFO (or a socket, or a device) named `x.pt` in `embeddings/` would make a plain `open()`
wait forever for a writer. `regular_opener` opens with O_NONBLOCK, checks with fstat that the
file is a regular one (or a folder, which `open()` itself then refuses), and only then turns
blocking back on. Use it as `open(path, "rb", opener=regular_opener)` or `open_regular(path)`.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from tihub.errors import NotAnEmbedding

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_KINDS = {stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


class NotRegularFile(NotAnEmbedding):
    """A path names a FIFO, socket or device: never read."""

    def __init__(self, path: Any, kind: str) -> None:
        super().__init__(f"'{os.fspath(path)}' is a {kind}, not a regular file; tihub reads only regular files.", kind="special")


def regular_opener(path: Any, flags: int) -> int:
    """An `open(..., opener=)` that never blocks on a special file and refuses it."""
    fd = os.open(path, flags | _NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise NotRegularFile(path, _KINDS.get(stat.S_IFMT(mode), "special file"))
        if _NONBLOCK:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Any, flags: int = os.O_RDONLY) -> int:
    """A file descriptor for a regular file (or folder) at `path`; NotRegularFile otherwise."""
    return regular_opener(path, flags)


def read_regular(path: Any, limit: int = -1) -> bytes:
    """The bytes of a regular file (at most `limit` when given)."""
    with open(path, "rb", opener=regular_opener) as fh:
        return fh.read(limit)
