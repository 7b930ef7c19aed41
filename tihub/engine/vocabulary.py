"""The embeddings folder as a prompt vocabulary: a file's stem is its prompt word.

`Vocabulary(folder)` keeps a name -> file index of every embedding file in the folder and its
subfolders, and loads a file only when a prompt uses its name. It stays correct while it lives:

- the index is rebuilt when any folder's mtime changed (a file added, removed or renamed, in
  any subfolder), and also while a folder's mtime is so recent that a same-tick change could
  hide (the "racy" window), so a file dropped in right after a scan is still seen;
- a loaded embedding is re-read when its file's size or mtime changed (replaced in place).

So the cost of a prompt depends on the number of folders and of names it uses, not on how many
files the folder holds. Duplicate names, unreadable files and width mismatches are reported once
each (`warnings`). No torch import here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tihub.errors import FormatError, TihubError
from tihub.formats import EMBEDDING_SUFFIXES
from tihub.formats.model import Embedding

RACY_SECONDS = 2.0  # folder mtimes this recent are re-checked by listing


@dataclass
class Entry:
    name: str
    path: Path
    size: int
    mtime_ns: int
    embedding: Embedding | None = None
    sha256: str | None = None
    error: str | None = None


@dataclass
class Vocabulary:
    """Name -> embedding file, hot-reloaded. `extra` holds in-memory embeddings (they win)."""

    folder: Path | None
    extra: dict[str, Embedding] = field(default_factory=dict)
    reader: Callable[[Path], Embedding] | None = None
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)
    _dirs: dict[str, int] = field(default_factory=dict, repr=False)
    _scanned_at: float = field(default=0.0, repr=False)
    _reported: set[str] = field(default_factory=set, repr=False)
    warnings: list[str] = field(default_factory=list)
    gone: dict[str, Path] = field(default_factory=dict)  # names whose file disappeared while we lived
    scans: int = 0
    version: int = 0  # bumped whenever the set of names changes
    _racy: bool = field(default=True, repr=False)

    # -- reporting ---------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        """Record a warning once per distinct message (the caller prints new ones)."""
        if message not in self._reported:
            self._reported.add(message)
            self.warnings.append(message)

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out

    # -- index -------------------------------------------------------------------------------

    def _dirs_changed(self) -> bool:
        if not self._dirs or self._racy:
            return True
        for d, mtime in self._dirs.items():
            try:
                if os.stat(d).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def refresh(self) -> None:
        """Re-list the folder when something may have changed (cheap when nothing did)."""
        if self.folder is None or not self.folder.is_dir():
            self._entries = {}
            return
        if not self._dirs_changed():
            return
        self.scans += 1
        self._scanned_at = time.time()
        dirs: dict[str, int] = {}
        found: dict[str, list[tuple[Path, os.stat_result]]] = {}
        stack = [str(self.folder)]
        while stack:
            d = stack.pop()
            try:
                dirs[d] = os.stat(d).st_mtime_ns
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            if not e.name.startswith("."):
                                stack.append(e.path)
                            continue
                        lower = e.name.lower()
                        if not lower.endswith(EMBEDDING_SUFFIXES) or lower.endswith((".optim.safetensors", ".preview.png")) or ".tmp" in lower:
                            continue
                        st = e.stat()
                        if st.st_size == 0:
                            continue
                        stem = e.name.rsplit(".", 1)[0]
                        found.setdefault(stem, []).append((Path(e.path), st))
            except OSError:
                continue
        self._dirs = dirs
        # a folder changed within RACY_SECONDS before this listing may change again within the
        # same mtime tick; list again next time until its mtime is safely in the past
        self._racy = any(self._scanned_at - m / 1e9 < RACY_SECONDS for m in dirs.values())
        entries: dict[str, Entry] = {}
        duplicates: dict[str, str] = {}
        for name, files in found.items():
            files.sort(key=lambda f: (len(f[0].parts), str(f[0])))
            path, st = files[0]
            if len(files) > 1:  # said when a prompt uses the name (see load), not on every listing
                others = ", ".join(str(f[0]) for f in files[1:])
                duplicates[name] = f"Embedding name '{name}' is used by several files; using {path} and ignoring {others} (rename one to use both)."
            old = self._entries.get(name)
            if old is not None and old.path == path and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                entries[name] = old
            else:
                entries[name] = Entry(name, path, st.st_size, st.st_mtime_ns)
        for name, old_entry in self._entries.items():
            if name not in entries:
                self.gone[name] = old_entry.path
        for name in entries:
            self.gone.pop(name, None)
        if entries.keys() != self._entries.keys():
            self.version += 1
        self._entries = entries
        self._duplicates = duplicates

    def require(self, names: list[str]) -> list[str]:
        """Warn for each name that is no embedding here; returns the missing names."""
        self.refresh()
        missing = [n for n in names if n not in self._entries and n not in self.extra]
        for name in missing:
            where = self.folder if self.folder is not None else "the embeddings folder"
            self.warn(f"Embedding '{name}' is not in {where}; '{name}' is used as plain text (fetch or import it first).")
        return missing

    def names(self) -> list[str]:
        self.refresh()
        return sorted(set(self._entries) | set(self.extra))

    def key(self) -> tuple:
        """Changes whenever names() may have changed (cheap; refreshes the index)."""
        self.refresh()
        return (self.version, tuple(self.extra), tuple(self.gone))

    def path_of(self, name: str) -> Path | None:
        entry = self._entries.get(name)
        return entry.path if entry else None

    # -- loading -----------------------------------------------------------------------------

    def load(self, name: str) -> Embedding | None:
        """The embedding for `name` (re-read if its file changed), or None if missing/unreadable."""
        if name in self.extra:
            return self.extra[name]
        entry = self._entries.get(name)
        if entry is not None and name in getattr(self, "_duplicates", {}):
            self.warn(self._duplicates[name])
        if entry is None:
            if name in self.gone:
                self.warn(f"Embedding file {self.gone[name]} was removed; '{name}' is now used as plain text.")
            return None
        try:
            st = entry.path.stat()
        except OSError:
            self.gone[name] = entry.path
            self._entries.pop(name, None)
            self.warn(f"Embedding file {entry.path} was removed; '{name}' is now used as plain text.")
            return None
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            entry = Entry(name, entry.path, st.st_size, st.st_mtime_ns)
            self._entries[name] = entry
        if entry.embedding is None and entry.error is None:
            try:
                reader = self.reader or _default_reader
                emb = reader(entry.path)
                emb.name = name
                entry.embedding = emb
            except (TihubError, OSError, ValueError) as exc:
                entry.error = str(exc)
                self.warn(f"Embedding file {entry.path} cannot be read ({exc}); '{name}' is used as plain text.")
        return entry.embedding

    def sha256(self, name: str) -> str | None:
        """sha256 of the file behind `name` (cached per size+mtime), for `TI hashes`."""
        entry = self._entries.get(name)
        if entry is None:
            emb = self.extra.get(name)
            return emb.extra.get("sha256") if emb is not None else None
        if entry.sha256 is None:
            from tihub.hashing import sha256_file

            try:
                entry.sha256 = sha256_file(entry.path)
            except (TihubError, OSError):
                return None
        return entry.sha256


def _default_reader(path: Path) -> Embedding:
    from tihub.formats import read_embedding

    try:
        return read_embedding(path)
    except FormatError:
        raise
