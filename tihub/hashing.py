"""File and model hashes: sha256, AutoV2, the A1111 old hash, the embedding short hash, a cache.

The forms every tool in the ecosystem uses (all lower-case hex):

- **sha256**: the whole file (Civitai `SHA256`, HF `lfs.sha256`, git-LFS `oid`).
- **AutoV2**: `sha256[:10]`; A1111's checkpoint short hash and the infotext `Model hash`.
- **shorthash**: `sha256[:12]`; an embedding's hash in infotext `TI hashes`.
- **old hash** (A1111 `model_hash`, Civitai AutoV1): sha256 of the bytes at offsets
  `[0x100000, 0x110000)` (64 KiB read at 1 MiB), first 8 hex. A file no longer than 1 MiB hashes
  the empty string (`e3b0c442`); a file shorter than 1 MiB + 64 KiB hashes what is there.

A diffusers folder (a directory holding `model_index.json`) is a model too. Its hashes are
defined as follows:

1. Take every file under the folder, recursively, whose name ends in `.safetensors`, `.bin`,
   `.ckpt`, `.pt` or `.pth`, skipping any path part that starts with a dot (`.cache/`, `.git/`).
2. In each directory separately: a *variant* is a file whose name before the suffix still contains
   a dot (`diffusion_pytorch_model.fp16.safetensors`,
   `model.fp16-00001-of-00002.safetensors`). If the directory holds any non-variant weight file,
   its variants are dropped. Then, if the directory holds any `.safetensors` file, its other
   weight files (`.bin`, `.ckpt`, `.pt`, `.pth`) are dropped. What is left is what a default
   `from_pretrained` loads.
3. For each kept file write the line `<relative path with / separators>\\t<sha256 hex>\\n`; sort
   the lines by relative path (code-point order); the folder's sha256 is the sha256 of the
   UTF-8 bytes of those lines joined together.
4. AutoV2 = the first 10 hex of that; shorthash = the first 12; the old hash is None.

This value is what tihub writes as `Model hash` in infotext and as `sd_checkpoint` in embeddings
it trains when the model is a folder. Copying the folder elsewhere, or creating its files in a
different order, does not change it; adding an fp16 variant or a `.bin` copy next to the
`.safetensors` does not either.

`HashCache` keeps hashes in the catalogue's `hash_cache` table keyed by absolute path, size and
mtime in nanoseconds: a second look at an unchanged file is one `stat` and (for a whole batch)
one indexed query. sqlalchemy is imported only when a cache is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat as stat_mod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tihub.errors import FormatError, NotFound
from tihub.formats.regular import regular_opener

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy import Engine

CHUNK = 1 << 20  # read size (1 MiB): measured as fast as 4-8 MiB and file_digest, cache friendly
OLD_HASH_OFFSET = 0x100000
OLD_HASH_SIZE = 0x10000
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX = re.compile(r"[0-9a-f]{8,64}")


def autov2(sha256: str) -> str:
    """A1111's checkpoint short hash (infotext `Model hash`): the first 10 hex of the sha256."""
    return sha256[:10].lower()


def shorthash(sha256: str) -> str:
    """An embedding's short hash as in infotext `TI hashes`: the first 12 hex of the sha256."""
    return sha256[:12].lower()


@dataclass(slots=True)
class FileHashes:
    """Every hash form of one file (a value: treat it as read-only)."""

    path: str
    sha256: str
    autov2: str
    old_hash: str | None
    shorthash: str

    @classmethod
    def of(cls, path: str | os.PathLike[str], sha256: str, old_hash: str | None) -> FileHashes:
        return cls(str(path), sha256, autov2(sha256), old_hash, shorthash(sha256))


@dataclass(slots=True)
class ModelHashes(FileHashes):
    """Hashes of a model: a single file, or a diffusers folder (`parts` = its hashed weight files)."""

    folder: bool = False
    parts: tuple[tuple[str, str], ...] = field(default=())  # (relative path, sha256), sorted

    @property
    def hashes(self) -> tuple[str, ...]:
        """Every form this model may be referred to by (sha256, AutoV2, old hash)."""
        return tuple(h for h in (self.sha256, self.autov2, self.old_hash) if h)


# --------------------------------------------------------------------------------------------
# Plain hashing


def _open_error(path: str | os.PathLike[str], exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{os.fspath(path)} does not exist; check the path.")
    if isinstance(exc, IsADirectoryError):
        return FormatError(f"{os.fspath(path)} is a folder, not a file; pass a file or a diffusers folder.")
    return FormatError(f"Cannot read {os.fspath(path)}: {exc.strerror or exc}.")


def hash_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Stream `path` once and return `(sha256, old_hash)` (both lower-case hex; old hash 8 hex).

    Reads 1 MiB at a time into one reused buffer; hashlib releases the GIL while hashing, so
    several files can be hashed on several threads.
    """
    h = hashlib.sha256()
    old = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    lo, hi = OLD_HASH_OFFSET, OLD_HASH_OFFSET + OLD_HASH_SIZE
    try:
        with open(path, "rb", buffering=0, opener=regular_opener) as f:
            try:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):  # pragma: no cover - not on every platform
                pass
            readinto = f.readinto
            update = h.update
            while True:
                n = readinto(buf)
                if not n:
                    break
                chunk = view[:n] if n < CHUNK else view
                update(chunk)
                end = pos + n
                if end > lo and pos < hi:  # this chunk overlaps the old-hash window
                    old.update(chunk[max(lo - pos, 0) : min(hi - pos, n)])
                pos = end
    except OSError as exc:
        raise _open_error(path, exc) from None
    return h.hexdigest(), old.hexdigest()[:8]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 (lower-case hex) of a whole file, streamed."""
    return hash_file(path)[0]


def old_hash_file(path: str | os.PathLike[str]) -> str:
    """A1111's old model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex (one read)."""
    try:
        with open(path, "rb", opener=regular_opener) as f:
            f.seek(OLD_HASH_OFFSET)
            data = f.read(OLD_HASH_SIZE)
    except OSError as exc:
        raise _open_error(path, exc) from None
    return hashlib.sha256(data).hexdigest()[:8]


def file_hashes(path: str | os.PathLike[str], cache: HashCache | None = None) -> FileHashes:
    """All hash forms of one file, through `cache` when given."""
    if cache is not None:
        return cache.hashes([path])[0]
    sha, old = hash_file(path)
    return FileHashes.of(path, sha, old)


# --------------------------------------------------------------------------------------------
# Models: single files and diffusers folders


def is_diffusers_folder(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


def _is_variant(name: str) -> bool:
    stem = name.rsplit(".", 1)[0]
    return "." in stem


def folder_weight_files(folder: str | os.PathLike[str]) -> list[str]:
    """The weight files that define a diffusers folder's hash (relative posix paths, sorted).

    See the module docstring for the rule.
    """
    root = os.fspath(folder)
    kept: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        weights = [f for f in filenames if not f.startswith(".") and f.lower().endswith(WEIGHT_SUFFIXES)]
        if not weights:
            continue
        plain = [f for f in weights if not _is_variant(f)]
        if plain:
            weights = plain
        safe = [f for f in weights if f.lower().endswith(".safetensors")]
        if safe:
            weights = safe
        rel_dir = os.path.relpath(dirpath, root)
        for f in weights:
            rel = f if rel_dir == "." else os.path.join(rel_dir, f)
            kept.append(rel.replace(os.sep, "/"))
    kept.sort()
    return kept


def folder_sha256(parts: Iterable[tuple[str, str]]) -> str:
    """sha256 over the lines `<relpath>\\t<sha256>\\n` sorted by relative path."""
    text = "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(parts))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_hashes(path: str | os.PathLike[str], cache: HashCache | None = None) -> ModelHashes:
    """Hashes of a model file or a diffusers folder (see the module docstring for folders)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        if not is_diffusers_folder(p):
            raise FormatError(f"{p} is a folder without model_index.json, so it is not a diffusers model; pass a model file or a diffusers folder.")
        rels = folder_weight_files(p)
        if not rels:
            raise FormatError(f"The diffusers folder {p} holds no weight files (.safetensors, .bin, .ckpt, .pt, .pth); is the download complete?")
        files = [os.path.join(p, *rel.split("/")) for rel in rels]
        if cache is not None:
            hashed = [fh.sha256 for fh in cache.hashes(files)]
        else:
            hashed = [hash_file(f)[0] for f in files]
        parts = tuple(zip(rels, hashed, strict=True))
        sha = folder_sha256(parts)
        return ModelHashes(p, sha, autov2(sha), None, shorthash(sha), folder=True, parts=parts)
    fh = file_hashes(p, cache)
    return ModelHashes(p, fh.sha256, fh.autov2, fh.old_hash, fh.shorthash)


def matches(model: FileHashes, any_hash: str) -> bool:
    """True when `any_hash` names this model: 8 hex = the old hash; 10+ hex = a sha256 prefix
    (AutoV2, shorthash, full sha256). Case, `0x` and `[...]` decorations are ignored."""
    h = any_hash.strip().strip("[]").strip().lower().removeprefix("0x")
    if not _HEX.fullmatch(h):
        return False
    if len(h) == 8:
        return model.old_hash is not None and h == model.old_hash
    return model.sha256.startswith(h)


# --------------------------------------------------------------------------------------------
# The cache


def _hash_one(p: str) -> tuple[str, str, os.stat_result] | Exception:
    """`(sha256, old_hash, stat after hashing)` of one file, or the error to report for it."""
    try:
        sha, old = hash_file(p)
        return sha, old, os.stat(p)
    except OSError as exc:
        return _open_error(p, exc)
    except (FormatError, NotFound) as exc:
        return exc


def _abs(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if p.startswith(os.sep) and "/." not in p and "//" not in p and not p.endswith(os.sep):
        return p  # already absolute and normal (the common case in big batches): skip normpath
    return os.path.abspath(p)


def _common_folder(paths: Sequence[str]) -> str:
    """The deepest folder containing every one of `paths` (absolute), "" when it is the root."""
    prefix = os.path.commonprefix([min(paths), max(paths)])
    return prefix[: prefix.rfind(os.sep)]


class HashCache:
    """sha256 + old hash per file, stored in the catalogue's `hash_cache` table.

    An entry is valid while the file's size and `st_mtime_ns` are unchanged. Lookups for a batch
    of files are one query (a range scan on the primary key when the files share a folder), and
    every new hash of a batch is stored in one transaction.
    """

    # Above this many paths, one range query over the common folder replaces an IN list.
    RANGE_THRESHOLD = 64

    def __init__(self, engine: Engine, jobs: int = 1) -> None:
        self.engine = engine
        self.jobs = max(1, jobs)  # files hashed at once (hashlib releases the GIL); 1 suits HDDs
        self.hits = 0
        self.misses = 0

    # -- lookups ----------------------------------------------------------------------------

    def _rows(self, paths: Sequence[str]) -> dict[str, tuple[int, int, str, str | None]]:
        from sqlalchemy import bindparam, text

        from tihub.catalog.db import read

        if not paths:
            return {}
        out: dict[str, tuple[int, int, str, str | None]] = {}
        with read(self.engine) as conn:
            common = _common_folder(paths) if len(paths) > self.RANGE_THRESHOLD else ""
            if common:
                # One range scan of the primary key: every key in [common/, common/ + U+10FFFF).
                # On SQLite the rows are read through the driver's cursor (same transaction):
                # building 10,000 SQLAlchemy rows would cost as much as the 10,000 stats.
                sql = "SELECT path, size, mtime_ns, sha256, old_hash FROM hash_cache WHERE path >= :lo AND path < :hi"
                params = {"lo": common + os.sep, "hi": common + os.sep + "\U0010ffff"}
                driver = conn.connection.driver_connection if self.engine.dialect.name == "sqlite" else None
                rows = driver.execute(sql, params) if driver is not None else conn.execute(text(sql), params)
                out = {path: (size, mtime_ns, sha, old) for path, size, mtime_ns, sha, old in rows}
            else:
                stmt = text("SELECT path, size, mtime_ns, sha256, old_hash FROM hash_cache WHERE path IN :paths").bindparams(
                    bindparam("paths", expanding=True)
                )
                for i in range(0, len(paths), 500):
                    for path, size, mtime_ns, sha, old in conn.execute(stmt, {"paths": list(paths[i : i + 500])}):
                        out[path] = (size, mtime_ns, sha, old)
        return out

    def lookup(self, paths: Iterable[str | os.PathLike[str]]) -> dict[str, FileHashes]:
        """Cached hashes of those `paths` whose size and mtime still match (absolute path keys).

        Files that are missing or changed are simply absent from the result.
        """
        abspaths = [_abs(p) for p in paths]
        stats: dict[str, os.stat_result] = {}
        for p in abspaths:
            try:
                stats[p] = os.stat(p)
            except OSError:
                continue
        rows = self._rows(list(stats))  # keys are unique absolute paths
        out: dict[str, FileHashes] = {}
        for p, st in stats.items():
            row = rows.get(p)
            if row is not None and row[0] == st.st_size and row[1] == st.st_mtime_ns:
                out[p] = FileHashes.of(p, row[2], row[3])
        return out

    # -- hashing through the cache -----------------------------------------------------------

    def hashes(self, paths: Iterable[str | os.PathLike[str]]) -> list[FileHashes]:
        """Hashes of every path, in order: cached where unchanged, hashed (and stored) otherwise.

        Raises NotFound / FormatError for the first path that cannot be read; use
        `hashes_or_errors` to carry on past bad files.
        """
        out = self.hashes_or_errors(paths)
        for item in out:
            if isinstance(item, Exception):
                raise item
        return out  # type: ignore[return-value]

    def hashes_or_errors(self, paths: Iterable[str | os.PathLike[str]]) -> list[FileHashes | Exception]:
        """Like `hashes`, but an unreadable file yields its error in place instead of raising."""
        originals = [os.fspath(p) for p in paths]
        abspaths = [_abs(p) for p in originals]
        stats: dict[str, os.stat_result] = {}
        errors: dict[str, Exception] = {}
        stat, is_reg = os.stat, stat_mod.S_ISREG
        for p in abspaths:
            try:
                st = stat(p)
            except OSError as exc:
                errors[p] = _open_error(p, exc)
                continue
            if not is_reg(st.st_mode):
                errors[p] = FormatError(f"{p} is not a regular file; pass a model or embedding file.")
                continue
            stats[p] = st
        rows = self._rows(list(stats))  # keys are unique absolute paths

        # One pass: cache hits become results at once; the rest are hashed below.
        result: list[Any] = []
        missing: dict[str, list[int]] = {}
        get_row, get_stat = rows.get, stats.get
        for i, (orig, p) in enumerate(zip(originals, abspaths, strict=True)):
            st = get_stat(p)
            if st is None:
                result.append(errors[p])
                continue
            row = get_row(p)
            if row is not None and row[0] == st.st_size and row[1] == st.st_mtime_ns:
                sha = row[2]
                result.append(FileHashes(orig, sha, sha[:10], row[3], sha[:12]))
            else:
                result.append(None)
                missing.setdefault(p, []).append(i)
        self.hits += sum(1 for r in result if r.__class__ is FileHashes)
        if missing:
            self._hash_missing(missing, stats, originals, result)
        return result

    def _hash_missing(self, missing: dict[str, list[int]], stats: dict[str, os.stat_result], originals: list[str], result: list[Any]) -> None:
        todo = list(missing)
        if self.jobs > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.jobs, len(todo)), thread_name_prefix="tihub-hash") as pool:
                outcomes = list(pool.map(_hash_one, todo))
        else:
            outcomes = [_hash_one(p) for p in todo]
        store: list[dict[str, Any]] = []
        for p, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, Exception):
                for i in missing[p]:
                    result[i] = outcome
                continue
            sha, old, after = outcome
            self.misses += 1
            for i in missing[p]:
                result[i] = FileHashes(originals[i], sha, sha[:10], old, sha[:12])
            st = stats[p]
            if after.st_size == st.st_size and after.st_mtime_ns == st.st_mtime_ns:  # unchanged while hashed
                store.append({"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "old_hash": old})
        if store:
            self._store(store)

    def _store(self, rows: list[dict[str, Any]]) -> None:
        from sqlalchemy import text

        from tihub.catalog.db import write

        with write(self.engine) as conn:
            conn.execute(
                text(
                    "INSERT INTO hash_cache (path, size, mtime_ns, sha256, old_hash) VALUES (:path, :size, :mtime_ns, :sha256, :old_hash) "
                    "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                    "sha256 = excluded.sha256, old_hash = excluded.old_hash"
                ),
                rows,
            )

    def forget(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Drop the entries of `paths` (e.g. after a file was deleted)."""
        from sqlalchemy import bindparam, text

        from tihub.catalog.db import write

        keys = [_abs(p) for p in paths]
        if not keys:
            return
        with write(self.engine) as conn:
            conn.execute(text("DELETE FROM hash_cache WHERE path IN :paths").bindparams(bindparam("paths", expanding=True)), {"paths": keys})

