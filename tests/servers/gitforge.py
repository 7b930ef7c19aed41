"""A loopback git forge: real repositories served over smart HTTP (`git http-backend` run as a
CGI), GitLab-style raw files (`/<owner>/<repo>/-/raw/<ref>/<path>`) and the GitLab tree API
(`/api/v4/projects/<id>/repository/tree`, offset pagination with `X-Next-Page`).

`make_repo(root, "owner/repo", files)` builds a bare repository under `root` from a dict of
path -> bytes (or ("symlink", target)) and returns its path; `commit_more` adds a commit.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import unquote

from . import LoopbackServer, Reply, Request, Served

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_DATE": "2023-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2023-01-01T00:00:00Z",
}


def _git(*args: str, cwd: Path | str | None = None, input: bytes | None = None) -> bytes:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, input=input, env=env, check=True, capture_output=True).stdout


def _write(work: Path, files: dict[str, bytes | tuple[str, str]]) -> None:
    for path, data in files.items():
        p = work / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            p.unlink()
        if isinstance(data, tuple):
            os.symlink(data[1], p)
        else:
            p.write_bytes(data)


def make_repo(root: Path, name: str, files: dict[str, bytes | tuple[str, str]], branch: str = "main") -> Path:
    """A bare repository `root/<name>.git` holding `files` in one commit on `branch`."""
    work = root / "work" / name
    work.mkdir(parents=True)
    _git("init", "-q", "-b", branch, str(work))
    _git("config", "core.symlinks", "true", cwd=work)
    _write(work, files)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "initial", cwd=work)
    bare = root / f"{name}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "-q", "--bare", str(work), str(bare))
    for key, value in (("uploadpack.allowFilter", "true"), ("uploadpack.allowAnySHA1InWant", "true"), ("http.receivepack", "false")):
        _git("config", key, value, cwd=bare)
    return bare


def commit_more(root: Path, name: str, files: dict[str, bytes | tuple[str, str]], message: str = "more") -> str:
    work = root / "work" / name
    _write(work, files)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", message, cwd=work)
    bare = root / f"{name}.git"
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=work).decode().strip()
    _git("push", "-q", str(bare), f"{branch}:{branch}", cwd=work)
    return _git("rev-parse", "HEAD", cwd=work).decode().strip()


class GitForge(Served):
    def __init__(self, root: Path, page_size: int = 20) -> None:
        self.root = root
        self.page_size = page_size
        self.server = LoopbackServer(self.app)

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name}.git"

    def app(self, req: Request) -> Reply:
        path = unquote(req.path)
        if path.startswith("/api/v4/projects/"):
            return self.tree_api(req, path)
        if "/-/raw/" in path:
            name, rest = path.lstrip("/").split("/-/raw/", 1)
            ref, _, fpath = rest.partition("/")
            bare = self.root / f"{name}.git"
            try:
                data = _git("show", f"{ref}:{fpath}", cwd=bare)
            except subprocess.CalledProcessError:
                return Reply.text("404 File Not Found", 404)
            return Reply(200, data, {"Content-Type": "application/octet-stream"})
        if ".git/" in path or path.endswith(".git"):
            return self.cgi(req, path)
        return Reply.text("not found", 404)

    def cgi(self, req: Request, path: str) -> Reply:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": req.method,
            "PATH_INFO": path,
            "QUERY_STRING": req.raw_path.partition("?")[2],
            "CONTENT_TYPE": req.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(req.body)),
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        if "git-protocol" in req.headers:
            env["GIT_PROTOCOL"] = req.headers["git-protocol"]
        if "content-encoding" in req.headers:
            env["HTTP_CONTENT_ENCODING"] = req.headers["content-encoding"]
        proc = subprocess.run(["git", "http-backend"], input=req.body, env=env, capture_output=True, check=False)
        head, _, body = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, body = proc.stdout.partition(b"\n\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return Reply(status, body, headers)

    def tree_api(self, req: Request, path: str) -> Reply:
        # /api/v4/projects/<owner%2Frepo>/repository/tree?ref=&path=&recursive=true&per_page=&page=
        rest = path[len("/api/v4/projects/"):]
        name, _, tail = rest.partition("/repository/")
        if tail != "tree":
            return Reply.json({"message": "404 Not Found"}, 404)
        bare = self.root / f"{name}.git"
        if not bare.exists():
            return Reply.json({"message": "404 Project Not Found"}, 404)
        ref = req.arg("ref") or "HEAD"
        args = ["ls-tree", "-z"] + (["-r", "-t"] if req.arg("recursive") == "true" else []) + [ref]
        entries = []
        for rec in _git(*args, cwd=bare).split(b"\0"):
            if not rec:
                continue
            meta, _, p = rec.partition(b"\t")
            mode, otype, oid = meta.decode().split()
            entries.append({"id": oid, "name": p.decode().rsplit("/", 1)[-1], "type": otype, "path": p.decode(), "mode": mode})
        per = min(int(req.arg("per_page") or self.page_size), 100)
        page = int(req.arg("page") or 1)
        chunk = entries[(page - 1) * per : page * per]
        total_pages = max(1, -(-len(entries) // per))
        headers = {"X-Page": str(page), "X-Per-Page": str(per), "X-Total": str(len(entries)), "X-Total-Pages": str(total_pages),
                   "X-Next-Page": str(page + 1) if page < total_pages else ""}
        return Reply.json(json.loads(json.dumps(chunk)), **{k.replace("-", "_"): v for k, v in headers.items()})
