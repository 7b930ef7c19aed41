"""Verified, resumable, atomic, concurrent downloads of embeddings.

One file goes through these steps, and only a file that passed all of them is ever visible under
its real name in the target folder:

1. the URL is rewritten for hosts tihub knows (pixeldrain `/u/ID` -> `/api/file/ID`, HF `blob` ->
   `resolve`, GitHub `blob` -> raw, GitLab `/-/blob/` -> `/-/raw/`); mega.nz links and Google Drive
   folders are refused as manual downloads naming the page to open;
2. a hidden temp file `.STEM.KEY.part` beside the target is opened and locked (`flock`), so two
   tihub processes fetching the same URL queue up instead of interleaving bytes; a sidecar
   `.STEM.KEY.part.json` keeps the validator (ETag or Last-Modified) and the expected size;
3. the body is streamed (`tihub.net.stream`: each redirect hop checked, tokens only sent to the
   first origin) into the temp file and sha256-hashed as it is written; an existing temp file
   is resumed with `Range` + `If-Range` (the old bytes are hashed first); a server that ignores
   the range (200) or whose content changed restarts the file from zero;
4. the first bytes are sniffed: HTML pages (login walls, Drive warnings), JSON error bodies and
   Git-LFS pointers are refused with one sentence saying what came back (an LFS pointer from a
   GitLab/GitHub raw URL is followed to the media URL and checked against its oid and size);
5. size and sha256 are checked against what the catalogue knows, the file is parsed by the safe
   readers (`tihub.formats.read_embedding`), converted to safetensors if it was a pickle and
   `--as safetensors` was asked, then hard-linked into place under its final name (`link`
   refuses to overwrite: a different file already there is reported, the same file is a no-op)
   and recorded in the catalogue.

Transient failures (connection errors, timeouts, 408/5xx, 429) are retried with exponential
backoff (429/503 wait as long as `Retry-After` says, clamped); a per-file deadline bounds a
server that drips bytes. Files are fetched by a pool of threads (`jobs`).

Host notes:
- Hugging Face: `/{repo}/resolve/{rev}/{path}` serves LFS files (redirect to a CDN); `blob` pages
  are HTML, so they are rewritten. `HF_TOKEN` is sent to huggingface.co only.
- GitLab / gitgud.io: `/-/raw/{ref}/{path}` returns the LFS *pointer* for LFS-tracked files; the
  content is at `/-/media/{ref}/{path}` (GitLab's "download LFS object" route). tihub follows a
  pointer from a raw URL to the media URL and verifies the oid (sha256) and size.
- GitHub: `raw.githubusercontent.com/{o}/{r}/{ref}/{path}` likewise returns LFS pointers; the
  content is at `media.githubusercontent.com/media/{o}/{r}/{ref}/{path}`.
- Civitai: `/api/download/models/{id}` redirects to a signed CDN URL; without a token
  early-access or login-only files answer 401/403 or a login page. `CIVITAI_TOKEN` is sent as
  `Authorization: Bearer` to the Civitai origin only, never to the CDN.
- catbox.moe (`files.catbox.moe/x.pt`) is a direct link; pixeldrain `/u/ID` is a page whose file
  is `/api/file/ID`.
- mega.nz (client-side encrypted) and Google Drive folders cannot be fetched without a browser:
  tihub says which page to open, and `tihub import FILE` adds the file afterwards.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from tihub.errors import DownloadError, FormatError, HashMismatch, NetworkError, NotAnEmbedding, TihubError, UnsafeURL
from tihub.hashing import sha256_file
from tihub.naming import inside, is_generic_stem, safe_filename, safe_stem, token_stem
from tihub.net import URLPolicy, make_client, stream

try:  # POSIX advisory locks; elsewhere the O_EXCL link below still prevents overwrites
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
MAX_EMBEDDING_BYTES = 64 * 1024 * 1024  # the largest embedding file tihub accepts (the readers' cap too)
SNIFF_CAP = 1 << 20  # how much of a textual answer is read to classify it
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
PICKLE_CONTAINERS = ("torch-zip", "torch-legacy")
SUFFIX_BY_CONTAINER = {"safetensors": ".safetensors", "torch-zip": ".pt", "torch-legacy": ".pt", "png": ".png", "webp": ".webp"}
KNOWN_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp", ".ckpt")


class ManualDownload(DownloadError):
    """A link that only a browser can fetch (mega.nz, Drive folders)."""


class Transient(NetworkError):
    """A failure worth retrying (network error, timeout, 408/429/5xx)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


# ---------------------------------------------------------------------------------------------
# Host knowledge


@dataclass(frozen=True)
class Resolved:
    url: str
    auth_headers: dict[str, str] = field(default_factory=dict)
    host: str = "generic"  # huggingface | civitai | gitlab | github | pixeldrain | catbox | generic


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _is(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def resolve_url(url: str, env: dict[str, str] | None = None, host_kinds: dict[str, str] | None = None) -> Resolved:
    """Rewrite `url` for a host tihub knows, attach that host's token, or refuse a manual link.

    `host_kinds` maps a `host:port` to a host kind (`civitai`, `huggingface`, ...) for mirrors
    and test servers that stand in for a known host.
    """
    env = dict(os.environ) if env is None else env
    url = url.strip()
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    path = parts.path
    alias = (host_kinds or {}).get(parts.netloc.lower())
    if alias == "civitai":
        host = "civitai.com"
    elif alias == "huggingface":
        host = "huggingface.co"
    if _is(host, "mega.nz") or _is(host, "mega.co.nz") or _is(host, "mega.io"):
        raise ManualDownload(
            f"{url} is a mega.nz link, which only a browser can decrypt; open it, download the file and run `tihub import FILE`."
        )
    if _is(host, "drive.google.com") or _is(host, "docs.google.com"):
        if "/folders/" in path or "/drive/" in path and "folders" in path:
            raise ManualDownload(
                f"{url} is a Google Drive folder; open it in a browser, download the files and run `tihub import FILE...`."
            )
        m = re.search(r"/file/d/([\w-]+)", path)
        if m:
            url = f"https://drive.usercontent.google.com/download?id={m.group(1)}&export=download"
        return Resolved(url, {}, "gdrive")
    if _is(host, "pixeldrain.com"):
        m = re.fullmatch(r"/u/([\w-]+)/?", path)
        if m:
            url = urlunsplit((parts.scheme, parts.netloc, f"/api/file/{m.group(1)}", "", ""))
        return Resolved(url, {}, "pixeldrain")
    if _is(host, "catbox.moe"):
        return Resolved(url, {}, "catbox")
    if _is(host, "huggingface.co") or _is(host, "hf.co"):
        url = urlunsplit((parts.scheme, parts.netloc, re.sub(r"^(/(?:[^/]+/){1,2}(?:(?:datasets|spaces)/[^/]+/[^/]+/)?)blob/", r"\1resolve/", path), parts.query, ""))
        token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
        return Resolved(url, {"Authorization": f"Bearer {token}"} if token else {}, "huggingface")
    if _is(host, "civitai.com") or _is(host, "civitai.green"):
        token = env.get("CIVITAI_TOKEN")
        return Resolved(url, {"Authorization": f"Bearer {token}"} if token else {}, "civitai")
    if host == "github.com":
        m = re.fullmatch(r"/([^/]+)/([^/]+)/(?:blob|raw)/(.+)", path)
        if m:
            url = f"https://raw.githubusercontent.com/{m.group(1)}/{m.group(2)}/{m.group(3)}"
        return Resolved(url, {}, "github")
    if host in ("raw.githubusercontent.com", "media.githubusercontent.com"):
        return Resolved(url, {}, "github")
    if host in ("gitlab.com", "gitgud.io") or "/-/raw/" in path or "/-/blob/" in path or "/-/media/" in path:
        url = urlunsplit((parts.scheme, parts.netloc, path.replace("/-/blob/", "/-/raw/", 1), parts.query, ""))
        return Resolved(url, {}, "gitlab")
    return Resolved(url, {}, "generic")


def lfs_media_url(url: str) -> str | None:
    """The URL that serves the LFS object behind a raw URL that returned a pointer, if known."""
    parts = urlsplit(url)
    if "/-/raw/" in parts.path:
        return urlunsplit((parts.scheme, parts.netloc, parts.path.replace("/-/raw/", "/-/media/", 1), parts.query, ""))
    if (parts.hostname or "").lower() == "raw.githubusercontent.com":
        return urlunsplit((parts.scheme, "media.githubusercontent.com", "/media" + parts.path, "", ""))
    return None


# ---------------------------------------------------------------------------------------------
# Sniffing what came back

_LFS_RE = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\s*\noid sha256:([0-9a-f]{64})\s*\nsize (\d+)", re.M)


@dataclass(frozen=True)
class LfsPointer:
    oid: str
    size: int


def parse_lfs_pointer(data: bytes) -> LfsPointer | None:
    if not data.startswith(b"version https://git-lfs"):
        return None
    m = _LFS_RE.search(data[:1024])
    if not m:
        return LfsPointer("", 0)
    return LfsPointer(m.group(1).decode(), int(m.group(2)))


def looks_textual(head: bytes) -> bool:
    """True when the first bytes look like a page, a JSON body or an LFS pointer."""
    h = head[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not h or b"\x00" in h:
        return False
    return h[:1] in (b"<", b"{", b"[") or h.startswith(b"version https://git-lfs")


def describe_text_answer(body: bytes, url: str, host_kind: str, content_type: str = "") -> str:
    """One sentence saying what a textual answer (instead of a file) was."""
    host = _host(url)
    stripped = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    lower = stripped[:4096].lower()
    if stripped.startswith(b"version https://git-lfs"):
        ptr = parse_lfs_pointer(stripped)
        oid = f" (oid sha256:{ptr.oid[:12]}..., {ptr.size} bytes)" if ptr and ptr.oid else ""
        return f"{url} returned a Git LFS pointer{oid} instead of the file; use the repository's LFS media URL (GitLab `/-/media/`, GitHub media.githubusercontent.com)."
    if stripped[:1] in (b"{", b"["):
        msg = ""
        try:
            obj = json.loads(stripped[:SNIFF_CAP].decode("utf-8", errors="replace"))
            if isinstance(obj, dict):
                for key in ("error", "message", "detail", "msg", "reason"):
                    if obj.get(key):
                        msg = str(obj[key])
                        break
        except ValueError:
            pass
        msg = " ".join(_clean(msg).split())[:200]
        if host_kind == "civitai" and re.search(r"unauthori|login|log in|sign in|token|api key", msg, re.I):
            return f"Civitai asked for a login to download {url}: set CIVITAI_TOKEN to an API key from your Civitai account settings."
        return f"{host or url} answered {url} with a JSON error instead of a file{': ' + msg if msg else ''}."
    is_html = b"<html" in lower or b"<!doctype html" in lower or b"<head" in lower or b"<body" in lower or "html" in content_type
    if host_kind == "civitai" and (is_html or b"login" in lower):
        return f"Civitai asked for a login to download {url}: set CIVITAI_TOKEN to an API key from your Civitai account settings."
    if host_kind == "gdrive":
        return f"Google Drive showed a warning or sign-in page instead of the file for {url}; open it in a browser, download the file and run `tihub import FILE`."
    if is_html:
        m = re.search(rb"<title[^>]*>(.*?)</title>", stripped[:SNIFF_CAP], re.I | re.S)
        title = _clean(m.group(1).decode("utf-8", errors="replace")) if m else ""
        title = " ".join(title.split())[:120]
        login = re.search(r"log ?in|sign ?in|captcha|verify", title, re.I)
        what = "a login page" if login else "a web page"
        return f"{host or url} sent {what}{' (' + repr(title) + ')' if title else ''} instead of a file for {url}; open it in a browser to see why."
    return f"{host or url} sent text instead of an embedding file for {url}."


def _clean(text: str) -> str:
    """Drop control characters (ANSI/OSC escapes, CR) before text reaches a terminal."""
    return "".join(ch for ch in text if ch.isprintable() or ch == " ")


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Per-file and total progress: one redrawn line on a terminal, nothing otherwise."""

    def __init__(self, enabled: bool | None = None, stream_: Any = None) -> None:
        self.stream = stream_ or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.lock = threading.Lock()
        self.files: dict[str, list[int]] = {}  # key -> [done, total]
        self.finished = 0
        self.count = 0
        self._last = 0.0
        self._done_bytes = 0

    def set_count(self, n: int) -> None:
        self.count = n

    def start(self, key: str, total: int | None, done: int = 0) -> None:
        with self.lock:
            self.files[key] = [done, total or 0]
        self._draw()

    def advance(self, key: str, n: int) -> None:
        with self.lock:
            f = self.files.get(key)
            if f is not None:
                f[0] += n
        self._draw()

    def finish(self, key: str) -> None:
        with self.lock:
            f = self.files.pop(key, None)
            if f is not None:
                self._done_bytes += f[0]
            self.finished += 1
        self._draw(force=True)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        with self.lock:
            parts = []
            done = self._done_bytes
            for key, (d, t) in list(self.files.items())[:3]:
                pct = f"{100 * d // t:3d}%" if t else _mb(d)
                parts.append(f"{_clean(key.split(chr(0), 1)[0])[:24]} {_bar(d, t)} {pct}")
            done += sum(d for d, _ in self.files.values())
            line = f"[{self.finished}/{self.count or '?'}] {_mb(done)}  " + "  ".join(parts)
        self.stream.write("\r\x1b[K" + line[:200])
        self.stream.flush()


def _bar(done: int, total: int, width: int = 12) -> str:
    if not total:
        return ""
    n = min(width, width * done // total)
    return "[" + "#" * n + "." * (width - n) + "]"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# One transfer into a locked .part file


@dataclass
class PartFile:
    """The temp file (and its sidecar) a download writes into."""

    path: Path
    sidecar: Path
    fd: int = -1

    @classmethod
    def for_target(cls, folder: Path, stem: str, key: str) -> "PartFile":
        name = f".{safe_stem(stem, max_bytes=100)}.{key}.part"
        return cls(folder / name, folder / (name + ".json"))

    def acquire(self) -> "PartFile":
        """Open (creating) and exclusively lock the .part file; waits while another process holds it."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        while True:
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                raise DownloadError(f"Cannot create the temp file {self.path}: {exc.strerror or exc}.") from None
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # the holder finished and removed it: start over on a fresh file

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_sidecar(self) -> dict[str, Any]:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_sidecar(self, info: dict[str, Any]) -> None:
        tmp = self.sidecar.with_name(self.sidecar.name + f".{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, self.sidecar)

    def truncate(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def discard(self) -> None:
        """Remove the temp file and sidecar (while still holding the lock), then release."""
        for p in (self.path, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


@dataclass
class Transfer:
    """What one finished transfer produced."""

    sha256: str
    size: int
    final_url: str
    resumed_from: int = 0
    content_disposition: str | None = None


def _parse_retry_after(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, min(float(value), cap))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, min(when.timestamp() - time.time(), cap))


def _transient_cause(exc: BaseException) -> bool:
    ctx = exc.__context__ or exc.__cause__
    return isinstance(ctx, (httpx.TransportError, OSError)) and not isinstance(exc, UnsafeURL)


@dataclass
class Request:
    """What to fetch and how much to trust it."""

    url: str
    name: str | None = None  # wanted file stem (from --name or the catalogue entry)
    sha256: str | None = None  # expected, when the catalogue knows it
    size: int | None = None
    entry_id: int | None = None
    entry_name: str | None = None
    file_name: str | None = None  # the remote file name (for the suffix)
    trusted: bool = False  # typed on the command line: the first hop may be loopback/private
    allow_private: bool = False  # the source allows private addresses everywhere
    label: str | None = None  # what the user typed (for messages)


@dataclass
class Result:
    request: Request
    status: str  # fetched | exists | failed
    path: Path | None = None
    sha256: str | None = None
    size: int = 0
    resumed_from: int = 0
    converted: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class Downloader:
    """Fetch embedding files into a folder: verified, resumable, atomic, concurrent."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        convert: str = "safetensors",  # safetensors | original
        force: bool = False,
        jobs: int = 4,
        retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 120.0,
        deadline: float = 1800.0,
        timeout: httpx.Timeout | float | None = None,
        progress: Progress | None = None,
        record: Callable[[Path, Any, str, Request], None] | None = None,
        env: dict[str, str] | None = None,
        max_bytes: int = MAX_EMBEDDING_BYTES,
        host_kinds: dict[str, str] | None = None,
    ) -> None:
        if convert not in ("safetensors", "original"):
            raise TihubError(f"--as {convert!r} is not a choice; use safetensors or original.")
        self.folder = Path(folder).resolve()
        self.convert = convert
        self.force = force
        self.jobs = max(1, int(jobs))
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.deadline = deadline
        self.progress = progress or Progress(enabled=False)
        self.record = record
        self.env = env
        self.max_bytes = max_bytes
        self.host_kinds = host_kinds
        _widen_reads()
        self._client = make_client(
            timeout=timeout,
            limits=httpx.Limits(max_connections=self.jobs * 2 + 2, max_keepalive_connections=self.jobs * 2 + 2),
            headers={"Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batch ---------------------------------------------------------------------------------

    def fetch_all(self, requests: Iterable[Request]) -> list[Result]:
        reqs = list(requests)
        self.progress.set_count(len(reqs))
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.jobs == 1 or len(reqs) <= 1:
            results = [self.fetch(r) for r in reqs]
        else:
            with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="tihub-fetch") as pool:
                results = list(pool.map(self.fetch, reqs))
        self.progress.close()
        return results

    def fetch(self, req: Request) -> Result:
        """Fetch one file; never raises for a per-file failure (the Result says what went wrong)."""
        try:
            return self._fetch(req)
        except TihubError as exc:
            return Result(req, "failed", error=str(exc))
        except OSError as exc:
            return Result(req, "failed", error=f"Writing into {self.folder} failed for {req.label or req.url}: {exc.strerror or exc}.")
        except Exception as exc:  # a bug must not end the batch and hide the files already written
            msg = " ".join(str(exc).split())[:120].rstrip(".")
            return Result(req, "failed", error=f"Fetching {req.label or req.url} failed unexpectedly ({type(exc).__name__}: {msg}); please report it.")

    def fetch_raw(self, req: Request, dest: str | os.PathLike[str]) -> Transfer:
        """Download any file to `dest` (checked, hashed, resumable, atomic) without reading it as
        an embedding; raises on failure. Used for models and by the benchmark."""
        resolved = resolve_url(req.url, self.env, self.host_kinds)
        dest = Path(dest)
        key = hashlib.sha256(resolved.url.encode("utf-8")).hexdigest()[:12]
        part = PartFile.for_target(dest.parent, dest.stem, key).acquire()
        keep = False
        try:
            try:
                transfer, expected_sha, expected_size = self._transfer_with_retries(req, resolved, part, sniff=False)
            except DownloadError:
                raise
            except NetworkError:
                keep = part.size() > 0
                raise
            if expected_size is not None and transfer.size != expected_size:
                raise DownloadError(f"The download of {req.url} has {transfer.size} bytes but {expected_size} were expected.")
            if expected_sha and transfer.sha256 != expected_sha:
                raise HashMismatch(f"The download of {req.url} has sha256 {transfer.sha256[:12]}... but {expected_sha[:12]}... was expected.")
            os.replace(part.path, dest)
            part.discard()
            return transfer
        except BaseException:
            if keep:
                part.release()
            else:
                part.discard()
            raise

    # -- one file ------------------------------------------------------------------------------

    def _wanted_stem(self, req: Request, url: str) -> tuple[str, str]:
        """(stem, suffix) guessed before the download (the suffix may change after reading)."""
        tail = url.rpartition("#path=")[2] if url.startswith("git+") else urlsplit(url).path
        remote = req.file_name or unquote(tail.rsplit("/", 1)[-1])
        suffix = ""
        for s in KNOWN_SUFFIXES:
            if remote.lower().endswith(s):
                suffix = s
                break
        remote_stem = remote[: -len(suffix)] if suffix else remote
        stem = req.name or req.entry_name or remote_stem
        return safe_stem(stem), suffix

    def _fetch(self, req: Request) -> Result:
        resolved = resolve_url(req.url, self.env, self.host_kinds)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem, suffix = self._wanted_stem(req, resolved.url)
        key = hashlib.sha256(resolved.url.encode("utf-8")).hexdigest()[:12]
        part = PartFile.for_target(self.folder, stem, key).acquire()
        keep_part = False
        try:
            if not self.force and req.sha256:
                existing = self._existing_with_sha(stem, req.sha256.lower())
                if existing is not None:
                    part.discard()
                    if self.record is not None:
                        from tihub.formats import read_embedding

                        self.record(existing, read_embedding(existing), req.sha256.lower(), req)
                    return Result(req, "exists", path=existing, sha256=req.sha256.lower(), size=existing.stat().st_size)
            cached = self._from_blob_cache(req, part)  # deep sync kept these bytes: no network
            if cached is not None:
                return self._finish(req, part, cached, stem, suffix)
            try:
                transfer, expected_sha, expected_size = self._transfer_with_retries(req, resolved, part)
            except DownloadError:
                raise
            except NetworkError:
                keep_part = part.size() > 0  # resumable next time
                raise
            if expected_size is not None and transfer.size != expected_size:
                raise DownloadError(
                    f"The download of {req.label or req.url} has {transfer.size} bytes but {expected_size} were expected; the server sent a different or cut file, try again later."
                )
            if expected_sha and transfer.sha256 != expected_sha:
                raise HashMismatch(
                    f"The download of {req.label or req.url} has sha256 {transfer.sha256[:12]}... but {expected_sha[:12]}... was expected; the file was altered or the catalogue is stale, run `tihub sync` and try again."
                )
            if not suffix and transfer.content_disposition:
                m = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)', transfer.content_disposition, re.I)
                if m:
                    cd_name = unquote(m.group(1))
                    for s in KNOWN_SUFFIXES:
                        if cd_name.lower().endswith(s):
                            suffix = s
                            if not (req.name or req.entry_name):
                                stem = safe_stem(cd_name[: -len(s)])
                            break
            return self._finish(req, part, transfer, stem, suffix)
        except BaseException:
            if keep_part:
                part.release()
            else:
                part.discard()
            raise

    # set by callers that have a workspace: tihub.blobcache.BlobCache of bytes already read
    blob_cache: Any = None

    def _from_blob_cache(self, req: Request, part: PartFile) -> Transfer | None:
        """The file's bytes from the content-addressed cache (put there by deep sync), written
        into the part file, when the catalogue knows the sha256 and the cache holds it."""
        if self.blob_cache is None or not req.sha256:
            return None
        data = self.blob_cache.get(req.sha256)
        if data is None or (req.size is not None and len(data) != req.size):
            return None
        part.truncate()
        _write_all(part.fd, data)
        return Transfer(sha256=req.sha256.lower(), size=len(data), final_url=req.url)

    def _existing_with_sha(self, stem: str, sha: str) -> Path | None:
        for p in same_stem(self.folder, stem):
            try:
                if sha256_file(p) == sha:
                    return p
            except (OSError, TihubError):
                continue
        return None

    def _transfer_with_retries(
        self, req: Request, resolved: Resolved, part: PartFile, sniff: bool = True
    ) -> tuple[Transfer, str | None, int | None]:
        start = time.monotonic()
        url = resolved.url
        expected_sha = req.sha256.lower() if req.sha256 else None
        expected_size = req.size
        lfs_followed = False
        attempt = 0
        while True:
            try:
                transfer = self._transfer(req, url, resolved, part, start, sniff)
                return transfer, expected_sha, expected_size
            except _LfsPointer as ptr:
                media = lfs_media_url(url)
                if lfs_followed or media is None or not ptr.pointer.oid:
                    raise DownloadError(describe_text_answer(ptr.body, url, resolved.host)) from None
                if expected_sha and expected_sha != ptr.pointer.oid:
                    raise HashMismatch(
                        f"The LFS pointer at {url} names sha256 {ptr.pointer.oid[:12]}... but the catalogue expects {expected_sha[:12]}...; run `tihub sync` and try again."
                    ) from None
                expected_sha, expected_size = ptr.pointer.oid, ptr.pointer.size
                url, lfs_followed = media, True
                part.truncate()
                continue
            except Transient as exc:
                attempt += 1
                left = self.deadline - (time.monotonic() - start)
                if attempt > self.retries:
                    hint = "the partial download is kept, run the same fetch later to resume" if part.size() else "check the URL or try again later"
                    raise NetworkError(f"{str(exc).rstrip('.')}; gave up after {attempt} tries, {hint}.") from None
                wait = exc.wait if exc.wait is not None else min(8.0, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                if wait > left:
                    raise NetworkError(
                        f"{str(exc).rstrip('.')}, and waiting {wait:.0f} s more would pass the {self.deadline:.0f} s deadline; run the same fetch later to resume."
                    ) from None
                time.sleep(wait)

    def _transfer(self, req: Request, url: str, resolved: Resolved, part: PartFile, start: float, sniff: bool = True) -> Transfer:
        label = req.label or req.url
        if url.startswith("git+"):  # a file in a git repository on a host without a raw-file URL
            from tihub.sources.git import fetch_blob

            sha, size = fetch_blob(
                url, part.fd, self.max_bytes, allow_private=req.allow_private or req.trusted,
                deadline=start + self.deadline, label=label,
            )
            return Transfer(sha, size, url)
        have = part.size()
        side = part.read_sidecar()
        validator = side.get("etag") or side.get("last_modified")
        headers: dict[str, str] = {}
        if have and validator and side.get("url") == url and not str(validator).startswith("W/"):
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = str(validator)
        elif have:
            part.truncate()
            have = 0
        policy = URLPolicy(allow_private=req.allow_private)
        auth = resolved.auth_headers or None
        try:
            with stream(
                self._client, "GET", url, policy=policy, headers=headers, auth_host_headers=auth,
                first_hop_trusted=req.trusted, deadline=start + self.deadline,
            ) as resp:
                return self._receive(req, url, resolved, part, resp, have, headers, start, sniff)
        except (Transient, DownloadError, _LfsPointer):
            raise
        except NetworkError as exc:
            if _transient_cause(exc):
                raise Transient(str(exc)) from None
            raise
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            kind = "timed out" if isinstance(exc, httpx.TimeoutException) else f"broke off ({_clean(str(exc)) or type(exc).__name__})"
            raise Transient(f"The download of {label} {kind} after {part.size()} bytes.") from None

    def _receive(
        self,
        req: Request,
        url: str,
        resolved: Resolved,
        part: PartFile,
        resp: httpx.Response,
        have: int,
        sent: dict[str, str],
        start: float,
        sniff: bool = True,
    ) -> Transfer:
        label = req.label or req.url
        status = resp.status_code
        final_url = str(resp.url)
        if status in RETRY_STATUSES:
            wait = _parse_retry_after(resp.headers.get("retry-after"), self.max_wait)
            what = "429 Too Many Requests" if status == 429 else f"{status} {resp.reason_phrase}"
            raise Transient(f"{_host(final_url)} answered {what} for {label}.", wait)
        if status in (401, 403):
            if resolved.host == "civitai" or _is(_host(final_url), "civitai.com"):
                have_token = bool(resolved.auth_headers)
                hint = "your CIVITAI_TOKEN was refused, check it" if have_token else "set CIVITAI_TOKEN to an API key from your Civitai account settings"
                raise DownloadError(f"Civitai asked for a login to download {label} ({status}): {hint}.")
            if resolved.host == "huggingface":
                raise DownloadError(
                    f"Hugging Face refused {label} ({status}): the repository is gated or private; accept its terms on the model page and set HF_TOKEN."
                )
            raise DownloadError(f"{_host(final_url)} refused {label} with {status} {resp.reason_phrase}; it needs a login, so download it in a browser and run `tihub import FILE`.")
        if status in (404, 410):
            raise DownloadError(f"{_host(final_url)} has no file at {label} ({status}); the entry may be gone, run `tihub sync`.")
        if status == 416 and have:
            m = re.match(r"bytes \*/(\d+)", resp.headers.get("content-range", ""))
            etag = resp.headers.get("etag")
            same = (not etag or etag == sent.get("If-Range")) and part.read_sidecar().get("size") in (None, have)
            if m and int(m.group(1)) == have and sent.get("Range") and same:
                # the partial file is already complete (killed between the last byte and the rename)
                return Transfer(_hash_prefix(part.fd, have).hexdigest(), have, final_url, have, resp.headers.get("content-disposition"))
            part.truncate()
            raise Transient(f"{_host(final_url)} refused the resume range for {label}.", 0.0)
        if status not in (200, 206):
            raise DownloadError(f"{_host(final_url)} answered {status} {resp.reason_phrase} for {label}; nothing was saved.")

        etag = resp.headers.get("etag")
        last_modified = resp.headers.get("last-modified")
        clen = resp.headers.get("content-length")
        try:
            body_len = int(clen) if clen is not None else None
        except ValueError:
            body_len = None
        resumed_from = 0
        if status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("content-range", ""))
            if not sent.get("Range") or not m or int(m.group(1)) != have:
                part.truncate()
                raise Transient(f"{_host(final_url)} answered {label} with a range that does not continue the partial file; restarting.", 0.0)
            total = int(m.group(3)) if m.group(3) != "*" else None
            hasher = _hash_prefix(part.fd, have)  # what is already on disk, before appending
            os.lseek(part.fd, have, os.SEEK_SET)
            resumed_from = have
        else:
            if have:
                part.truncate()  # the server ignored the range or the content changed: start over
            have = 0
            total = body_len
            hasher = hashlib.sha256()
            os.lseek(part.fd, 0, os.SEEK_SET)
        part.write_sidecar({"url": url, "etag": etag, "last_modified": last_modified, "size": total})
        if total is not None and total > self.max_bytes:
            raise DownloadError(f"{label} is {total} bytes, more than any embedding ({self.max_bytes} bytes); it is probably a model, not an embedding.")
        if total is not None:
            free = _free_bytes(part.path.parent)
            if free is not None and free < total - have:
                raise DownloadError(f"{label} needs {total - have} bytes but {part.path.parent} has only {free} free; make room and fetch again.")

        received = have
        first = status == 200 and sniff
        deadline_at = start + self.deadline
        # (an answer with a Content-Encoding was refused by `stream`: these are the file's bytes)
        shown = req.name or req.entry_name or unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or req.label or url
        key = f"{shown}\x00{id(req)}"
        self.progress.start(key, total, have)
        try:
            it = resp.iter_raw()
            for chunk in it:
                if first:
                    first = False
                    if looks_textual(chunk):
                        body = chunk
                        for more in it:
                            body += more
                            if len(body) >= SNIFF_CAP:
                                break
                        ptr = parse_lfs_pointer(body.lstrip())
                        if ptr is not None:
                            raise _LfsPointer(ptr, body)
                        raise DownloadError(describe_text_answer(body, final_url if resolved.host != "civitai" else label, resolved.host, resp.headers.get("content-type", "")))
                received += len(chunk)
                if received > self.max_bytes:
                    raise DownloadError(f"{label} sent more than {self.max_bytes} bytes, more than any embedding; it is probably a model, not an embedding.")
                # write, then hash (inline: a second hashing thread measured slower, see bench_fetch)
                _write_all(part.fd, chunk)
                hasher.update(chunk)
                self.progress.advance(key, len(chunk))
                if time.monotonic() > deadline_at:
                    raise NetworkError(
                        f"The download of {label} did not finish within the {self.deadline:.0f} s deadline ({received} bytes so far, the server is too slow); run the same fetch later to resume."
                    )
        finally:
            self.progress.finish(key)
        if total is not None and received != total:
            raise Transient(f"{_host(final_url)} ended the body of {label} after {received} of {total} bytes.")
        return Transfer(hasher.hexdigest(), received, final_url, resumed_from, resp.headers.get("content-disposition"))

    # -- verify, convert, place, record --------------------------------------------------------

    def _finish(self, req: Request, part: PartFile, transfer: Transfer, stem: str, suffix: str) -> Result:
        from tihub.formats import read_embedding, write_embedding

        label = req.label or req.url
        with open(part.path, "rb") as fh:
            data = fh.read(self.max_bytes + 1)
        if len(data) != transfer.size or hashlib.sha256(data).hexdigest() != transfer.sha256:
            raise DownloadError(f"The temp file for {label} changed while it was being checked; run the fetch again.")
        if data[:1] in (b"<", b"{") and looks_textual(data):
            raise DownloadError(describe_text_answer(data, label, "generic"))
        probe = self.folder / (stem + (suffix or ".bin"))
        try:
            emb = read_embedding(probe, data)
        except NotAnEmbedding as exc:
            raise DownloadError(f"The file from {label} is not an embedding: {exc}") from None
        except FormatError as exc:
            raise DownloadError(f"The file from {label} could not be read as an embedding: {exc}") from None
        if is_generic_stem(stem):
            stem = safe_stem(token_stem(emb.internal_name) or req.entry_name or req.name or "embedding")
        suffix = suffix_for(emb.container, suffix)
        converted = False
        final_bytes_path = part.path
        final_sha = transfer.sha256
        conv_tmp: Path | None = None
        if self.convert == "safetensors" and emb.container in PICKLE_CONTAINERS:
            conv_tmp = part.path.with_name(part.path.name + ".safetensors")
            emb.name = stem
            write_embedding(emb, conv_tmp, "safetensors")
            final_bytes_path, final_sha, suffix, converted = conv_tmp, sha256_file(conv_tmp), ".safetensors", True
        try:
            final = inside(self.folder, safe_filename(stem, suffix))
            placed = place_file(final_bytes_path, final, final_sha, stem, force=self.force)
        finally:
            if conv_tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(conv_tmp)
        part.discard()
        size = final.stat().st_size
        if self.record is not None:
            self.record(final, emb, final_sha, req)
        return Result(req, "fetched" if placed else "exists", final, final_sha, size, transfer.resumed_from, converted)


class _LfsPointer(Exception):
    def __init__(self, pointer: LfsPointer, body: bytes) -> None:
        super().__init__("lfs pointer")
        self.pointer = pointer
        self.body = body


def _widen_reads() -> None:
    """Let httpcore read up to 1 MiB per recv instead of 64 KiB: a 512 MB body then costs ~500
    trips through the HTTP parser instead of ~8,000, which is what lets a download keep up with
    curl (measured in benchmarks/bench_fetch.py). Only the read size changes."""
    try:
        from httpcore._sync.http11 import HTTP11Connection
    except ImportError:  # pragma: no cover - a future httpcore layout
        return
    if getattr(HTTP11Connection, "READ_NUM_BYTES", 0) < READ_BYTES:
        HTTP11Connection.READ_NUM_BYTES = READ_BYTES


READ_BYTES = 1 << 20


def _free_bytes(folder: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _hash_prefix(fd: int, size: int) -> Any:
    """A sha256 object fed the first `size` bytes of the open file `fd` (a partial download)."""
    hasher = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    left = size
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            break
        hasher.update(chunk)
        left -= len(chunk)
    return hasher


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def suffix_for(container: str, suffix: str) -> str:
    """The file suffix that matches the content: a safetensors or PNG file named `.pt` would be
    misread by every app, while torch pickles may keep `.pt`/`.bin`/`.ckpt`."""
    if container in PICKLE_CONTAINERS:
        return suffix if suffix in (".pt", ".bin", ".ckpt") else ".pt"
    return SUFFIX_BY_CONTAINER.get(container, suffix or ".bin")


def same_stem(folder: Path, stem: str) -> list[Path]:
    """Embedding files in `folder` whose stem (the trigger word) equals `stem`, ignoring case."""
    low = stem.lower()
    out = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                s, dot, suf = e.name.rpartition(".")
                if dot and "." + suf.lower() in KNOWN_SUFFIXES and s.lower() == low and e.is_file(follow_symlinks=False):
                    out.append(Path(e.path))
    except FileNotFoundError:
        pass
    return out


def place_file(src: Path, final: Path, sha: str, stem: str, *, force: bool = False) -> bool:
    """Put the verified file `src` at `final` without ever overwriting a different file.

    Returns True when placed, False when the same bytes (same sha256) are already there under
    this trigger name. A different file with the same trigger name (any suffix) is an error
    unless `force`. `src` stays in place (the caller removes it).
    """
    others = [p for p in same_stem(final.parent, stem) if p != final]
    if final.exists() or final.is_symlink():
        others.append(final)
    for p in others:
        if not p.is_symlink() and p.is_file() and sha256_file(p) == sha:
            return False
    if others and not force:
        shown = ", ".join(sorted(p.name for p in others))
        raise DownloadError(
            f"{final.parent} already holds a different file with the trigger name {stem!r} ({shown}); pass --name NEW to keep both, or --force to replace it."
        )
    if force and others:
        for p in others:
            if p != final:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        os.link(src, tmp)
        os.replace(tmp, final)  # replaces a planted symlink itself, never writes through it
        return True
    try:
        os.link(src, final)  # fails if anything appeared there meanwhile: never overwrites
    except FileExistsError:
        if sha256_file(final) == sha:
            return False
        raise DownloadError(f"{final} appeared meanwhile with different content; pass --name NEW to keep both, or --force to replace it.") from None
    except OSError:
        # No hard links here (some network/FAT file systems): exclusive create + copy instead.
        with open(src, "rb") as s, open(final, "xb") as d:
            while chunk := s.read(CHUNK):
                d.write(chunk)
    return True


@contextlib.contextmanager
def downloader(folder: str | os.PathLike[str], **kwargs: Any) -> Iterator[Downloader]:
    d = Downloader(folder, **kwargs)
    try:
        yield d
    finally:
        d.close()
