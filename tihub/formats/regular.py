"""Open only regular files, without blocking.

A FIFO (or a socket, or a device) named `x.pt` in `embeddings/` would make a plain `open()`
wait forever for a writer. `regular_opener` opens with O_NONBLOCK (which a regular file
ignores), and checks with fstat that the file is a regular one (or a folder, which `open()`
itself then refuses) before anything is read. Use it as `open(path, "rb", opener=regular_opener)` or `open_regular(path)`.
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


def open_regular(path: Any, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """(file descriptor, fstat) for a regular file (or folder) at `path`; NotRegularFile for a
    FIFO, socket or device, which is never waited on. O_NONBLOCK stays set: it changes nothing
    for regular files and folders."""
    fd = os.open(path, flags | _NONBLOCK)
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise NotRegularFile(path, _KINDS.get(stat.S_IFMT(mode), "special file"))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def regular_opener(path: Any, flags: int) -> int:
    """An `open(..., opener=)` that never blocks on a special file and refuses it."""
    return open_regular(path, flags)[0]


def read_regular(path: Any, limit: int = -1) -> bytes:
    """The bytes of a regular file (at most `limit` when given)."""
    with open(path, "rb", opener=regular_opener) as fh:
        return fh.read(limit)
