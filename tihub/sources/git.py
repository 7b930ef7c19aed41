"""Index a git repository of embeddings without a full clone.

1. `git ls-remote` gives the head commit of the branch (or HEAD); the same commit as last time
   raises SourceUnchanged, so an unchanged repository costs one ls-remote.
2. Otherwise a shallow, single-branch partial clone (`--filter=blob:limit=2k --no-checkout
   --depth 1`) brings the trees and only the tiny blobs: git-LFS pointers (whose `oid sha256:`
   is the file's content hash), `.gitattributes` and small READMEs. Embedding blobs stay on the
   server; larger READMEs are fetched one by one, nothing else.
3. `git ls-tree -r` lists the files; each `.pt/.bin/.safetensors` (optionally limited by `paths`
   globs) becomes a Candidate. README sections that describe a file (heading matching its name)
   give its description, declared model, steps and vector count.

Hardened (research/security.md §7): only http/https/ssh/git (file only with `allow_file: true`),
URLs starting with `-`, `ext::`/`transport::` forms and bare local paths refused, `--` before
the URL, hooks off, symlinks and submodules ignored (never checked out), no credential prompts,
no user/system git config, a time limit on every command; the clone lives in a temp dir that is
removed afterwards. An http(s) remote is pinned to the addresses its check resolved
(`http.curloptResolve`, no redirects to other hosts), so a rebinding name cannot move git to a
loopback address. Blob sizes are asked first (`cat-file --batch-check`) and only small blobs are
read, so a server that ignores the blob filter (or a file:// repo, where git copies everything)
costs disk, never memory.

Download URLs: GitHub raw (media.githubusercontent.com for LFS), GitLab/gitgud `/-/raw/<commit>/`
and Hugging Face `/resolve/<commit>/`; any other host (self-hosted, file://, git://, ssh) gets
`git+<repo-url>@<commit>#path=<path>` with the parts in `CandidateFile.extra["git"]`
({repo, commit, path, blob}) so the fetcher can read the blob with git.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from tihub.errors import DownloadError, SourceError, UnsafeURL
from tihub.net import URLPolicy, checked_addresses, resolve
from tihub.sources._http import SourceUnchanged
from tihub.sources.base import EMBED_SUFFIXES, Candidate, CandidateFile

log = logging.getLogger("tihub.sources")

BLOB_LIMIT = 2048  # blobs at most this big come with the clone (LFS pointers, small READMEs)
HASH_LIMIT = 1024 * 1024  # embedding blobs present and at most this big are read and hashed
MAX_README = 1024 * 1024
MAX_READMES = 8
COMMAND_TIMEOUT = 300.0
LFS_POINTER = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n?$")


@dataclass(frozen=True)
class GitURL:
    url: str
    scheme: str  # https | http | ssh | git | file
    host: str | None
    owner_repo: str | None  # "owner/repo" for web forges
    pinned: tuple[str, ...] = ()  # addresses an http(s) host was checked at (git connects only there)

    def config(self) -> list[str]:
        """git `-c` options that pin an http(s) remote to its checked addresses."""
        if not self.pinned or self.host is None:
            return []
        parts = urlsplit(self.url)
        port = parts.port or (443 if self.scheme == "https" else 80)
        addrs = ",".join(f"[{a}]" if ":" in a else a for a in self.pinned)
        return ["-c", f"http.curloptResolve={self.host}:{port}:{addrs}", "-c", "http.followRedirects=false"]


def parse_git_url(url: str, allow_file: bool, allow_private: bool) -> GitURL:
    """Validate a git remote; raise UnsafeURL with the reason if it is refused."""
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL("The git source has no URL.")
    url = url.strip()
    if url.startswith("-") or any(c in url for c in "\r\n\t\x00 "):
        raise UnsafeURL(f"The git URL {url!r} starts with '-' or contains whitespace; tihub refuses it.")
    if "::" in url.split("/", 1)[0] or url.lower().startswith("ext::"):
        raise UnsafeURL(f"The git URL {url!r} uses a transport helper (`<transport>::`); only https, ssh, git and file:// URLs are allowed.")
    scp = re.match(r"^(?:([\w.+-]+)@)?([\w.-]+):(?!//)(.+)$", url)
    if "://" not in url and scp:
        user, host, path = scp.groups()
        url = f"ssh://{user + '@' if user else ''}{host}/{path.lstrip('/')}"
    if "://" not in url:
        raise UnsafeURL(f"The git URL {url!r} is a local path; write it as file:///... and set `allow_file: true`.")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise UnsafeURL(f"The git URL {url!r} is malformed.") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not allow_file:
            raise UnsafeURL(f"The git URL {url!r} is a file:// URL; set `allow_file: true` on the source to index local repositories.")
        return GitURL(url, "file", None, None)
    if scheme not in ("https", "http", "ssh", "git"):
        raise UnsafeURL(f"The git URL {url!r} uses {scheme!r}; only https, http, ssh and git (and file with allow_file) are allowed.")
    host = parts.hostname
    if not host or host.startswith("-"):
        raise UnsafeURL(f"The git URL {url!r} has no valid host.")
    pinned: tuple[str, ...] = ()
    if scheme in ("https", "http"):
        found = checked_addresses(url, URLPolicy(allow_private=allow_private))
        pinned = tuple(str(ip) for ip in found or ())
    else:
        if parts.password or (parts.username or "").startswith("-"):
            raise UnsafeURL(f"The git URL {url!r} carries a password or an option-like user; tihub refuses it.")
        if not allow_private:
            from tihub.net import _is_private

            for ip in resolve(host):
                if _is_private(ip):
                    raise UnsafeURL(f"The git URL {url!r} points at the private or loopback address {ip}; set `allow_private: true` on the source to permit it.")
    path = parts.path.strip("/")
    path = path[:-4] if path.endswith(".git") else path
    owner_repo = path if path.count("/") >= 1 else None
    return GitURL(url, scheme, host.lower(), owner_repo, pinned)


class Git:
    """Run hardened git commands."""

    def __init__(self, allow_file: bool, deadline: float | None, source: str, remote: GitURL | None = None) -> None:
        protocols = ["http", "https", "ssh", "git"] + (["file"] if allow_file else [])
        self.config = [
            "-c", "protocol.allow=never",
            *[x for p in protocols for x in ("-c", f"protocol.{p}.allow=always")],
            "-c", "core.hooksPath=/dev/null",
            "-c", "core.symlinks=false",
            "-c", "core.fsmonitor=false",
            "-c", "submodule.recurse=false",
            "-c", "fetch.recurseSubmodules=false",
            "-c", "credential.helper=",
            "-c", "core.askPass=",
            "-c", "http.followRedirects=initial",
            "-c", "filter.lfs.smudge=",
            "-c", "filter.lfs.process=",
            "-c", "filter.lfs.required=false",
            "-c", "safe.directory=*",
            *(remote.config() if remote is not None else []),  # last: its followRedirects=false wins
        ]
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "SSH_AUTH_SOCK", "SYSTEMROOT", "TMPDIR", "TEMP", "TMP")}
        keep.setdefault("PATH", os.defpath)
        self.env = {
            **keep,
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_LFS_SKIP_SMUDGE": "1",
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=20",
        }
        self.deadline = deadline
        self.source = source

    def run(
        self, args: list[str], cwd: str | None = None, input: bytes | None = None, what: str = "git", stdout: int | None = None
    ) -> bytes:
        """Run git; its output comes back as bytes, or goes to the file descriptor `stdout`."""
        timeout = COMMAND_TIMEOUT
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise SourceError(f"Source {self.source!r} ran past its deadline during {what}; sync it again later.")
        try:
            proc = subprocess.run(
                ["git", *self.config, *args], cwd=cwd, input=input, env=self.env,
                stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE, timeout=timeout, check=False,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SourceError("git is not installed; install git to index git sources.") from None
        except subprocess.TimeoutExpired:
            raise SourceError(f"Source {self.source!r}: {what} took longer than {timeout:.0f} s; the repository may be too big or the server too slow.") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            last = next((line for line in reversed(err) if line.strip()), "no message")
            raise SourceError(f"Source {self.source!r}: {what} failed ({_clean(last)}); check the URL and branch.")
        return proc.stdout or b""


def _clean(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)[:300]


def _ls_remote(git: Git, url: str, branch: str | None) -> str:
    ref = f"refs/heads/{branch}" if branch else "HEAD"
    out = git.run(["ls-remote", "--", url, ref], what="git ls-remote").decode("utf-8", "replace")
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", parts[0]) and parts[1] == ref:
            return parts[0]
    what = f"branch {branch!r}" if branch else "a default branch (HEAD)"
    raise SourceError(f"Source {git.source!r}: the repository has no {what}; set `branch` to an existing one.")


def raw_url(g: GitURL, commit: str, path: str, lfs: bool) -> str:
    qpath = quote(path)
    host = g.host or ""
    if g.owner_repo and g.scheme in ("https", "http"):
        base = f"{g.scheme}://{urlsplit(g.url).netloc}/{g.owner_repo}"
        if host == "github.com":
            owner, repo = g.owner_repo.split("/")[:2]
            if lfs:
                return f"https://media.githubusercontent.com/media/{owner}/{repo}/{commit}/{qpath}"
            return f"https://raw.githubusercontent.com/{owner}/{repo}/{commit}/{qpath}"
        if host in ("gitlab.com", "gitgud.io") or "gitlab" in host:
            return f"{base}/-/raw/{commit}/{qpath}"
        if host in ("huggingface.co", "hf.co"):
            return f"{base}/resolve/{commit}/{qpath}"
        if host == "codeberg.org":
            return f"{base}/raw/commit/{commit}/{qpath}"
    return f"git+{g.url}@{commit}#path={qpath}"


def page_url(g: GitURL, commit: str, path: str) -> str | None:
    if not g.owner_repo or g.scheme not in ("https", "http"):
        return None
    base = f"{g.scheme}://{urlsplit(g.url).netloc}/{g.owner_repo}"
    if g.host == "github.com":
        return f"{base}/blob/{commit}/{quote(path)}"
    if g.host in ("gitlab.com", "gitgud.io") or "gitlab" in (g.host or ""):
        return f"{base}/-/blob/{commit}/{quote(path)}"
    return None


# -- README sections ----------------------------------------------------------------------------

_HEAD = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")


def readme_sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) pairs of a markdown README."""
    lines = text.splitlines()
    out: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _HEAD.match(line)
        if m:
            out.append((m.group(2), []))
        elif i + 1 < len(lines) and line.strip() and not line.lstrip().startswith(("-", "*", "|")) and _SETEXT.match(lines[i + 1]) and len(lines[i + 1].strip()) >= 3:
            out.append((line.strip(), []))
            i += 1
        else:
            out[-1][1].append(line)
        i += 1
    return [(h, "\n".join(b).strip()) for h, b in out]


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def split_stem(stem: str) -> tuple[str, int | None]:
    """'bunyip-30000' -> ('bunyip', 30000); 'kanata-hololive' -> unchanged."""
    m = re.match(r"^(.*?)[-_ ](\d{3,7})$", stem)
    if m and m.group(1):
        return m.group(1), int(m.group(2))
    return stem, None


def match_section(file_name: str, sections: list[tuple[str, str]]) -> tuple[str, str] | None:
    stem = posixpath.splitext(file_name)[0]
    core, _ = split_stem(stem)
    want = set(_tokens(core))
    if not want:
        return None
    best: tuple[int, int, tuple[str, str]] | None = None
    for n, (heading, body) in enumerate(sections):
        if not heading:
            continue
        if file_name in body or stem in body.split():
            score = -1  # the section names the file itself
        else:
            have = set(_tokens(heading))
            if not want <= have:
                continue
            score = len(have - want)
        if best is None or (score, n) < best[:2]:
            best = (score, n, (heading, body))
    return best[2] if best else None


def section_facts(heading: str, body: str) -> dict[str, Any]:
    from tihub.sources.links import detect_base

    facts: dict[str, Any] = {}
    m = re.search(r"(?im)^\W*(?:base\s+)?model[^:\n]{0,20}:\s*(.+)$", body) or re.search(r"(?i)trained (?:on|with|using)\s+([^\n.,;]{3,80})", body)
    if m:
        facts["base_model"] = re.sub(r"[*_`]|\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).strip()[:100]
    else:
        found = detect_base(f"{heading}\n{body}")
        if found:
            facts["base_model"] = found[0]
    m = re.search(r"(?i)(\d[\d,.]*)\s*(k)?\s*steps", body) or re.search(r"(?i)steps?\W{0,3}(\d[\d,]*)(k)?", body)
    if m:
        try:
            n = float(m.group(1).replace(",", ""))
            facts["step"] = int(n * 1000) if m.group(2) else int(n)
        except ValueError:
            pass
    m = re.search(r"(?i)(\d{1,3})\s*(?:vectors?|tokens?)(?:\s+per\s+token)?", body) or re.search(r"(?i)vectors?(?:\s+per\s+token)?\W{0,3}(\d{1,3})", body)
    if m:
        facts["vectors"] = int(m.group(1))
    return facts


# -- the indexer --------------------------------------------------------------------------------


def _glob_ok(path: str, globs: list[str]) -> bool:
    if not globs:
        return True
    return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(path, g.rstrip("/") + "/*") for g in globs)


def index(spec: Any, ctx: Any) -> Iterator[Candidate]:
    """Yield one Candidate per embedding file in the repository."""
    allow_file = bool(spec.get("allow_file", False))
    g = parse_git_url(spec.get("url") or "", allow_file, bool(spec.allow_private))
    branch = spec.get("branch") or None
    if branch is not None and (branch.startswith("-") or not re.fullmatch(r"[\w./-]{1,200}", branch) or ".." in branch):
        raise SourceError(f"Source {spec.name!r}: the branch name {branch!r} is not valid.")
    globs = [p for p in spec.get("paths") or []]
    git = Git(allow_file, getattr(ctx, "deadline", None), spec.name, g)
    commit = _ls_remote(git, g.url, branch)
    config_key = {"url": g.url, "branch": branch, "paths": globs}
    state = ctx.state or {}
    if state.get("commit") == commit and state.get("config") == config_key:
        raise SourceUnchanged(spec.name)
    ctx.progress(f"cloning {g.url} at {commit[:12]}")
    tmp = tempfile.mkdtemp(prefix="tihub-git-")
    try:
        cands = list(_index_clone(git, g, branch, commit, globs, os.path.join(tmp, "repo"),
                                  deep=getattr(ctx, "deep", None), allow_private=bool(spec.allow_private)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.set_state("commit", commit)
    ctx.set_state("config", config_key)
    yield from cands


def _index_clone(git: Git, g: GitURL, branch: str | None, commit: str, globs: list[str], dest: str,
                 deep: Any = None, allow_private: bool = False) -> Iterator[Candidate]:
    args = ["clone", "--quiet", f"--filter=blob:limit={deep_blob_limit(deep)}", "--no-checkout", "--depth", "1",
            "--single-branch", "--no-tags", "--no-recurse-submodules"]
    if branch:
        args += ["--branch", branch]
    git.run([*args, "--", g.url, dest], what="git clone")
    head = git.run(["rev-parse", "HEAD"], cwd=dest, what="git rev-parse").decode().strip()
    if head != commit:
        log.info("%s moved from %s to %s during the sync", g.url, commit[:12], head[:12])
        commit = head
    listing = git.run(["ls-tree", "-r", "-z", "--full-tree", "HEAD"], cwd=dest, what="git ls-tree")
    entries: list[tuple[str, str, str]] = []  # (mode, oid, path)
    for rec in listing.split(b"\0"):
        if not rec:
            continue
        meta, _, path_b = rec.partition(b"\t")
        mode, otype, oid = meta.decode().split()
        path = path_b.decode("utf-8", "replace")
        if otype != "blob" or mode not in ("100644", "100755"):
            continue  # symlinks (120000) and submodules (160000) are never followed
        if path.startswith("/") or ".." in path.split("/"):
            continue
        entries.append((mode, oid, path))
    missing = {
        line[1:].split()[0]
        for line in git.run(["rev-list", "--objects", "--missing=print", "HEAD"], cwd=dest, what="git rev-list").decode().splitlines()
        if line.startswith("?")
    }
    all_paths = {p for _, _, p in entries}
    embeds = [(oid, p) for _, oid, p in entries if p.lower().endswith(EMBED_SUFFIXES) and _glob_ok(p, globs)]
    embed_dirs = {posixpath.dirname(p) for _, p in embeds}
    readmes = [(oid, p) for _, oid, p in entries
               if re.fullmatch(r"readme(\.(md|markdown|txt))?", posixpath.basename(p).lower())
               and (posixpath.dirname(p) == "" or posixpath.dirname(p) in embed_dirs or any(d.startswith(posixpath.dirname(p) + "/") for d in embed_dirs))]
    readmes.sort(key=lambda x: (x[1].count("/"), x[1]))
    readmes = readmes[:MAX_READMES]
    # Sizes first (a server that ignored the filter, or a file:// repo, brought every blob):
    # read only LFS pointers, small embeddings (hashed) and READMEs (lazily fetched) under caps.
    present = [oid for oid, _ in embeds if oid not in missing]
    sizes = _blob_sizes(git, dest, present + [oid for oid, _ in readmes])
    want = [oid for oid in present if sizes.get(oid, HASH_LIMIT + 1) <= HASH_LIMIT]
    want += [oid for oid, _ in readmes if sizes.get(oid, MAX_README + 1) <= MAX_README]
    blobs = _cat_blobs(git, dest, want)
    sections: dict[str, list[tuple[str, str]]] = {}
    for oid, p in readmes:
        data = blobs.get(oid)
        if data:
            sections[p] = readme_sections(data[:MAX_README].decode("utf-8", "replace"))
    for oid, path in embeds:
        data = blobs.get(oid)
        sha256 = None
        size = sizes.get(oid)  # known for every present blob, read or not
        lfs = False
        if data is not None:
            m = LFS_POINTER.match(data)
            if m:
                sha256, size, lfs = m.group(1).decode(), int(m.group(2)), True
            else:
                import hashlib

                sha256, size = hashlib.sha256(data).hexdigest(), len(data)
        name = posixpath.basename(path)
        stem = posixpath.splitext(name)[0]
        core, steps = split_stem(stem)
        section = None
        # The README nearest to the file first, then the root one.
        for rp in sorted(sections, key=lambda r: (-(posixpath.dirname(r) == posixpath.dirname(path)), r.count("/"))):
            section = match_section(name, sections[rp])
            if section:
                anchor = re.sub(r"[^\w\- ]", "", section[0].lower()).strip().replace(" ", "-")
                readme_path = rp
                break
        facts = section_facts(*section) if section else {}
        url = raw_url(g, commit, path, lfs)
        cfile = CandidateFile(
            file_name=name,
            url=url,
            size=size,
            sha256=sha256,
            hashes={"git_blob": oid},
            format=posixpath.splitext(name)[1].lstrip(".").lower(),
            vectors=facts.get("vectors"),
            step=facts.get("step", steps),
            extra={"git": {"repo": g.url, "commit": commit, "path": path, "blob": oid}, "lfs": lfs},
        )
        desc = None
        extra: dict[str, Any] = {"commit": commit, "path": path}
        if section:
            desc = re.sub(r"\s+", " ", f"{section[0]}: {section[1]}").strip()[:1000]
            extra["readme"] = {"path": readme_path, "heading": section[0], "anchor": anchor}
        previews = git_previews(g, commit, path, all_paths, (readme_path, section[1]) if section else None, allow_private)
        if deep is not None and data is not None and not lfs:
            _deep_measure(deep, cfile, data)
        yield Candidate(
            previews=previews,
            remote_id=path,
            name=stem,
            title=section[0] if section else stem,
            description=desc,
            triggers={"a1111": stem},
            base_model=facts.get("base_model"),
            page_url=page_url(g, commit, path),
            files=[cfile],
            extra=extra,
        )


def _blob_sizes(git: Git, cwd: str, oids: list[str]) -> dict[str, int]:
    """oid -> size of each blob, without reading any (`cat-file --batch-check`)."""
    if not oids:
        return {}
    out = git.run(["cat-file", "--batch-check"], cwd=cwd, input=("\n".join(oids) + "\n").encode(), what="git cat-file")
    sizes: dict[str, int] = {}
    for line in out.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob" and parts[2].isdigit():
            sizes[parts[0]] = int(parts[2])
    return sizes


def _cat_blobs(git: Git, cwd: str, oids: list[str]) -> dict[str, bytes]:
    """Contents of `oids` via one `git cat-file --batch` (missing READMEs are fetched lazily)."""
    if not oids:
        return {}
    out = git.run(["cat-file", "--batch"], cwd=cwd, input=("\n".join(oids) + "\n").encode(), what="git cat-file")
    blobs: dict[str, bytes] = {}
    pos = 0
    while pos < len(out):
        nl = out.index(b"\n", pos)
        header = out[pos:nl].decode().split()
        pos = nl + 1
        if len(header) == 2 and header[1] == "missing":
            continue
        oid, _type, size = header[0], header[1], int(header[2])
        blobs[oid] = out[pos : pos + size]
        pos += size + 1
    return blobs


# -- pictures and deep reads (issue 14) ---------------------------------------------------------


def deep_blob_limit(deep: Any) -> int:
    """The clone's blob filter: with deep sync, blobs up to the per-file deep limit (and what is
    left of the budget) come with the one clone request; otherwise only tiny ones."""
    if deep is None:
        return BLOB_LIMIT
    return max(BLOB_LIMIT, min(deep.max_file, deep.left))


def _deep_measure(deep: Any, cfile: CandidateFile, data: bytes) -> None:
    """The embedding's bytes came with the clone: read them (no extra request)."""
    if deep.skip_known(cfile) or len(data) > deep.max_file:
        return
    if len(data) > deep.left:
        deep.stats.over_budget += 1
        return
    deep.measure(cfile, data, requests=0)


def git_previews(g: GitURL, commit: str, path: str, paths: set[str], section: tuple[str, str] | None,
                 allow_private: bool) -> list[dict[str, Any]]:
    """`NAME.preview.png|jpg|jpeg|webp` beside the embedding, then the images its README section
    shows (relative paths resolved against the README's folder; web URLs checked)."""
    from tihub.sources._http import clean_link
    from tihub.sources.huggingface import readme_images

    out: list[dict[str, Any]] = []
    stem = posixpath.splitext(path)[0]
    for ext in (".png", ".jpg", ".jpeg", ".webp"):
        pic = f"{stem}.preview{ext}"
        if pic in paths:
            out.append({"url": raw_url(g, commit, pic, False), "kind": "preview", "path_in_repo": pic})
    if section is not None:
        readme_path, body = section
        for src in readme_images(body):
            if "://" in src:
                url = clean_link(src, allow_private)
                if url:
                    out.append({"url": url, "kind": "readme"})
                continue
            rel = posixpath.normpath(posixpath.join(posixpath.dirname(readme_path), src.split("#")[0].split("?")[0]))
            if rel in paths:
                out.append({"url": raw_url(g, commit, rel, False), "kind": "readme", "path_in_repo": rel})
    return out[:24]


# -- fetching one blob (`git+<repo>@<commit>#path=<path>` catalogue URLs) -------------------------


def parse_blob_url(url: str) -> tuple[str, str, str]:
    """(repo URL, commit, path) of a `git+<repo>@<commit>#path=<path>` URL, or UnsafeURL."""
    from urllib.parse import unquote

    if not url.startswith("git+") or "#path=" not in url:
        raise UnsafeURL(f"The URL {url[:200]!r} is not a git+<repo>@<commit>#path=<file> URL.")
    head, _, qpath = url[4:].partition("#path=")
    repo, _, commit = head.rpartition("@")
    path = unquote(qpath)
    if not repo or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise UnsafeURL(f"The git URL {url[:200]!r} does not name a full commit id after '@'.")
    if not path or path.startswith(("/", "-")) or ".." in path.split("/") or any(ord(c) < 0x20 for c in path):
        raise UnsafeURL(f"The git URL {url[:200]!r} names an unsafe file path {path[:100]!r}.")
    return repo, commit, path


def fetch_blob(url: str, out_fd: int, max_bytes: int, *, allow_private: bool, deadline: float | None, label: str) -> tuple[str, int]:
    """Write the file a `git+...` catalogue URL names into `out_fd`; return (sha256, size).

    The same hardened git as `index` (checked, pinned remote; no hooks, prompts or submodules;
    time limits): a shallow, blob-less clone brings the commit's trees, the blob's size is read
    first (`--batch-check`) and the blob is streamed to the file only when it is at most
    `max_bytes` (a server that honours the filter sends a bigger blob not at all)."""
    import hashlib

    repo, commit, path = parse_blob_url(url)
    g = parse_git_url(repo, allow_file=True, allow_private=allow_private)
    git = Git(g.scheme == "file", deadline, label, g)
    tmp = tempfile.mkdtemp(prefix="tihub-git-")
    dest = os.path.join(tmp, "repo")
    try:
        git.run(["init", "-q", "--bare", dest], what="git init")
        for key, value in (("remote.origin.url", g.url), ("remote.origin.promisor", "true"),
                           ("remote.origin.partialclonefilter", f"blob:limit={max_bytes + 1}"), ("extensions.partialClone", "origin")):
            git.run(["config", key, value], cwd=dest, what="git config")
        git.run(["fetch", "-q", "--depth", "1", "--no-tags", f"--filter=blob:limit={max_bytes + 1}", "origin", commit], cwd=dest, what="git fetch")
        listing = git.run(["ls-tree", "-z", "--full-tree", commit, "--", path], cwd=dest, what="git ls-tree")
        rec = listing.split(b"\0", 1)[0]
        meta, _, found = rec.partition(b"\t")
        fields = meta.decode("ascii", "replace").split()
        if len(fields) != 3 or found.decode("utf-8", "replace") != path:
            raise DownloadError(f"{label} names {path!r}, which commit {commit[:12]} of {g.url} does not have; run `tihub sync`.")
        mode, otype, oid = fields
        if otype != "blob" or mode not in ("100644", "100755"):
            raise DownloadError(f"{label} names {path!r}, which is a {'symlink' if mode == '120000' else otype} in the repository, not a file.")
        missing = git.run(["rev-list", "--objects", "--missing=print", commit], cwd=dest, what="git rev-list").decode("ascii", "replace")
        if f"?{oid}" in missing.split():
            raise DownloadError(f"{label} is larger than {max_bytes} bytes, more than any embedding; it is probably a model, not an embedding.")
        size = _blob_sizes(git, dest, [oid]).get(oid)
        if size is None:
            raise DownloadError(f"{label}: the repository did not send the file's blob; try again later.")
        if size > max_bytes:
            raise DownloadError(f"{label} is {size} bytes, more than any embedding ({max_bytes} bytes); it is probably a model, not an embedding.")
        os.ftruncate(out_fd, 0)
        os.lseek(out_fd, 0, os.SEEK_SET)
        git.run(["cat-file", "blob", oid], cwd=dest, what="git cat-file", stdout=out_fd)
        hasher = hashlib.sha256()
        total = 0
        os.lseek(out_fd, 0, os.SEEK_SET)
        while True:
            chunk = os.read(out_fd, 1 << 20)
            if not chunk:
                break
            hasher.update(chunk)
            total += len(chunk)
        if total != size:
            raise DownloadError(f"{label}: git wrote {total} bytes where the blob has {size}; try again.")
        return hasher.hexdigest(), total
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
