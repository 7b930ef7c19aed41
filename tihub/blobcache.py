"""A content-addressed cache of small files: bytes stored under their sha256.

Deep sync (`tihub.deep`) keeps every small embedding it reads here, so a later `tihub fetch` of the
same sha256 is served from disk without touching the network. Layout:
`WORKSPACE/.tihub-cache/blobs/ab/abcdef...` (the first two hex digits as a folder). A blob is
written to a temp file and renamed into place, and checked against its name when read back, so a
torn or altered blob reads as a miss, never as wrong bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path

_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_BLOB = 64 * 1024 * 1024  # a bigger file is never cached (embeddings are far smaller)


class BlobCache:
    """Bytes by sha256 under `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def for_workspace(cls, workspace: object) -> "BlobCache":
        """The cache of a workspace (`tihub.config.Workspace` or its root folder)."""
        root = workspace if isinstance(workspace, (str, os.PathLike)) else workspace.root  # type: ignore[attr-defined]
        return cls(Path(root) / ".tihub-cache" / "blobs")

    def path(self, sha256: str) -> Path:
        sha = sha256.strip().lower()
        if not _HEX64.fullmatch(sha):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.root / sha[:2] / sha

    def has(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except ValueError:
            return False

    def get(self, sha256: str) -> bytes | None:
        """The bytes whose sha256 is `sha256`, or None (absent, unreadable or not matching)."""
        try:
            p = self.path(sha256)
            with open(p, "rb") as fh:
                data = fh.read(MAX_BLOB + 1)
        except (OSError, ValueError):
            return None
        if len(data) > MAX_BLOB or hashlib.sha256(data).hexdigest() != sha256.strip().lower():
            with contextlib.suppress(OSError):
                os.unlink(p)  # torn or altered: drop it, the next read is a clean miss
            return None
        return data

    def put(self, data: bytes, sha256: str | None = None) -> str | None:
        """Store `data`; return its sha256 (None when it is too big or the disk refuses it).
        A given `sha256` that does not match the bytes is refused (returns None)."""
        digest = hashlib.sha256(data).hexdigest()
        if (sha256 and sha256.strip().lower() != digest) or len(data) > MAX_BLOB:
            return None
        p = self.path(digest)
        if p.is_file():
            return digest
        tmp = p.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, p)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return None
        return digest
