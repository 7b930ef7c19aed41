"""Deep sync: read small embedding files during `tihub sync`, so facts are known before download.

A source lists a file (HF concept repos: `learned_embeds.bin`, about 4 KB; git and link-page files:
mostly under 100 KB). When the file is small enough and the sync's byte budget allows, the indexer
hands its bytes to `DeepReader.measure`, which checks them against the sha256 the source gave,
reads them with the safe readers (`tihub.formats`, no code runs) and fills in the candidate file:
sha256, vectors, widths, step, the trained-on checkpoint (`sd_checkpoint`) and the vectors
themselves (kept in `file_vectors` for `tihub similar`). The bytes go into the content-addressed
cache (`tihub.blobcache`), so a later `tihub fetch` of the same sha256 needs no network.

Re-syncs read only what changed: a file whose sha256 the catalogue has already measured is not
read again (`known`), and a file already in the cache is measured from disk (no request). What a
sync read is counted in `DeepStats` (requests, bytes, files) and reported by `tihub sync`.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

DEFAULT_BUDGET = 64 * 1024 * 1024  # bytes read per sync (all sources together)
MAX_DEEP_FILE = 100 * 1024  # files above this are left for `tihub fetch`


@dataclass
class DeepStats:
    requests: int = 0  # HTTP requests (or git blobs) made for deep reads
    bytes: int = 0  # bytes transferred for them
    measured: int = 0  # files read and recorded
    from_cache: int = 0  # measured from the content-addressed cache, no network
    known: int = 0  # skipped: the catalogue had measured this sha256 already
    over_budget: int = 0  # skipped: the budget was spent
    failed: int = 0  # read but not an embedding / not matching the listed sha256

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class DeepReader:
    """Per-sync state of deep reads: the byte budget, the cache and what is already known."""

    budget: int = DEFAULT_BUDGET
    max_file: int = MAX_DEEP_FILE
    cache: Any = None  # tihub.blobcache.BlobCache | None
    known: set[str] = field(default_factory=set)  # sha256 values with measured facts
    stats: DeepStats = field(default_factory=DeepStats)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def left(self) -> int:
        return max(0, self.budget - self.stats.bytes)

    def skip_known(self, cf: Any) -> bool:
        """True when `cf`'s sha256 was measured before (nothing to read)."""
        sha = (cf.sha256 or "").lower()
        if sha and sha in self.known:
            self.stats.known += 1
            return True
        return False

    def try_cache(self, cf: Any) -> bool:
        """Measure `cf` from the cache when its bytes are there; True when it was."""
        sha = (cf.sha256 or "").lower()
        if not sha or self.cache is None:
            return False
        data = self.cache.get(sha)
        if data is None:
            return False
        if self._measure(cf, data):
            self.stats.from_cache += 1
        return True

    def wants(self, cf: Any, size: int | None = None) -> bool:
        """Should the indexer read this file now? (small enough, budget left, not known; a file
        in the cache is measured here and then not wanted)."""
        if self.skip_known(cf) or self.try_cache(cf):
            return False
        size = cf.size if size is None else size
        if size is None or size > self.max_file:
            return False
        if size > self.left:
            self.stats.over_budget += 1
            return False
        return True

    def cap(self) -> int:
        """The most bytes one read of unknown size may take now."""
        return min(self.max_file, self.left)

    def count(self, nbytes: int, requests: int = 1) -> None:
        with self._lock:
            self.stats.requests += requests
            self.stats.bytes += nbytes

    def measure(self, cf: Any, data: bytes, requests: int = 1) -> bool:
        """Count the transfer, then read `data` as `cf`'s file. True when facts were recorded."""
        self.count(len(data), requests)
        ok = self._measure(cf, data)
        if ok and self.cache is not None:
            self.cache.put(data)
        return ok

    def _measure(self, cf: Any, data: bytes) -> bool:
        from tihub.errors import FormatError
        from tihub.formats import read_embedding

        sha = hashlib.sha256(data).hexdigest()
        if cf.sha256 and cf.sha256.lower() != sha:
            self.stats.failed += 1  # the listing and the bytes disagree: trust neither here
            return False
        name = cf.file_name or "embedding.bin"
        try:
            emb = read_embedding(PurePosixPath(name).name, data)
        except FormatError as exc:
            self.stats.failed += 1
            cf.extra = {**(cf.extra or {}), "deep_error": str(exc)[:300]}
            return False
        apply_facts(cf, emb, sha, len(data))
        cf.extra = {**(cf.extra or {}), "deep": True}
        self.stats.measured += 1
        self.known.add(sha)
        return True


def apply_facts(cf: Any, emb: Any, sha: str, size: int) -> None:
    """Copy what the safe reader measured onto a CandidateFile (vectors kept for the index)."""
    cf.sha256 = sha
    cf.size = size
    cf.vectors = emb.vector_count
    cf.widths = emb.widths
    cf.step = emb.step if emb.step is not None else cf.step
    cf.sd_checkpoint = emb.sd_checkpoint
    cf.sd_checkpoint_name = emb.sd_checkpoint_name
    cf.vector_data = {k: np.asarray(v, dtype=np.float32) for k, v in emb.vectors.items()}
