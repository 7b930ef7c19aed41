"""A loopback Hugging Face Hub: the REST subset tihub's huggingface indexer uses.

- `GET /api/models?author=A&full=true` (and `/api/datasets`): pages of `page_size` items with a
  GitHub-style `Link: <...>; rel="next"` header; items carry `id, author, sha, lastModified,
  private, gated, disabled, tags, siblings[{rfilename}]`, and `cardData` only when asked with
  `cardData=true` (as the Hub: `full=true` does not include it; the licence is a `license:` tag).
- Rate limit (`rate_budget`): past the budget every API request answers 429 with the Hub's
  headers `RateLimit: "api";r=0;t=<seconds>` and `RateLimit-Policy: "fixed window";"api";q=500;w=300`
  until `new_window()`.
- `GET /api/{models|datasets}/{id}/tree/{rev}?recursive=true`: `[{type, oid, size, path,
  lfs?: {oid, size, pointerSize}}]`, paginated the same way.
- `GET /api/{models|datasets}/{id}[/revision/{rev}]`: one repo's info (`id, sha, siblings, ...`),
  what `huggingface_hub.snapshot_download` and diffusers' `from_pretrained` ask first.
- `GET|HEAD /{id}/resolve/{rev}/{path}` (datasets under `/datasets/`): plain files directly, LFS files
  by a 302 to `/cdn/...`; gated repos answer 401 with `X-Error-Code: GatedRepo` without a token;
  disabled repos answer 403 `X-Error-Code: DisabledRepo`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from . import LoopbackServer, Reply, Request, Served


@dataclass
class HFFile:
    data: bytes
    lfs: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        body = self.pointer() if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()


@dataclass
class HFRepo:
    id: str
    files: dict[str, HFFile] = field(default_factory=dict)
    sha: str = "0" * 40
    last_modified: str = "2022-09-10T12:00:00.000Z"
    gated: bool | str = False
    disabled: bool = False
    repo_type: str = "model"
    card_data: dict | None = None
    tags: list[str] = field(default_factory=list)

    def touch(self, n: int) -> None:
        self.sha = hashlib.sha1(f"{self.id}{n}".encode()).hexdigest()
        self.last_modified = f"2023-01-{n % 28 + 1:02d}T00:00:00.000Z"


def concept_repo(org: str, name: str, token: str, kind: str, embed: bytes, **kw: object) -> HFRepo:
    """A repo laid out like the sd-concepts-library ones."""
    repo = HFRepo(
        id=f"{org}/{name}",
        files={
            ".gitattributes": HFFile(b"*.bin filter=lfs diff=lfs merge=lfs -text\n"),
            "README.md": HFFile(b"---\nlicense: mit\n---\n### " + name.encode() + b" on Stable Diffusion\n"),
            "learned_embeds.bin": HFFile(embed, lfs=True),
            "token_identifier.txt": HFFile(token.encode()),
            "type_of_concept.txt": HFFile(kind.encode()),
            "concept_images/0.jpeg": HFFile(b"\xff\xd8\xff\xe0jpeg"),
        },
        card_data={"license": "mit"},
        **kw,  # type: ignore[arg-type]
    )
    repo.touch(len(name))
    return repo


class HFHub(Served):
    def __init__(self, repos: list[HFRepo] | None = None, page_size: int = 2, tree_page_size: int = 100) -> None:
        self.repos: dict[str, HFRepo] = {}
        for r in repos or []:
            self.add(r)
        self.page_size = page_size
        self.tree_page_size = tree_page_size
        self.token: str | None = None  # when set, gated repos open with `Authorization: Bearer <token>`
        self.fail_listing: int = 0  # answer the next N listing requests with 503
        # where LFS redirects point; the real CDN is another host, and huggingface_hub follows a
        # HEAD redirect only within one host, so clients of the metadata flow want "localhost"
        self.cdn_host: str | None = None
        self.rate_budget: int | None = None  # API requests left in the window (None: no limit)
        self.rate_wait = 300  # the `t=` of the 429s: seconds until the window resets
        self.rate_limited = 0  # how many 429s were answered
        self.server = LoopbackServer(self.app)

    def new_window(self, budget: int | None = None) -> None:
        """The rate-limit window reset: `budget` more requests (None: unlimited)."""
        self.rate_budget = budget

    def add(self, repo: HFRepo) -> None:
        self.repos[f"{repo.repo_type}:{repo.id}"] = repo

    # -- routing -----------------------------------------------------------------------------

    def app(self, req: Request) -> Reply:
        path = unquote(req.path)
        if self.rate_budget is not None and (path.startswith("/api/") or "/resolve/" in path):
            if self.rate_budget <= 0:
                self.rate_limited += 1
                return Reply.json({"error": "You have exceeded our rate limit. Please retry later."}, 429,
                                  RateLimit=f'"api";r=0;t={self.rate_wait}',
                                  RateLimit_Policy='"fixed window";"api";q=500;w=300')
            self.rate_budget -= 1
        for rtype in ("models", "datasets"):
            if path == f"/api/{rtype}":
                return self.listing(req, rtype[:-1])
            prefix = f"/api/{rtype}/"
            if path.startswith(prefix) and "/tree/" in path:
                repo_id, rest = path[len(prefix):].split("/tree/", 1)
                rev, _, sub = rest.partition("/")
                return self.tree(req, rtype[:-1], repo_id, rev, sub)
            if path.startswith(prefix):
                repo_id, _, rev = path[len(prefix):].partition("/revision/")
                return self.info(rtype[:-1], repo_id, rev or "main")
        if path.startswith("/cdn/"):
            key, _, fpath = path[len("/cdn/"):].partition("/-/")
            repo = self.repos.get(key.replace("~", ":", 1))
            if repo is None or fpath not in repo.files:
                return Reply.text("not found", 404)
            return Reply(200, repo.files[fpath].data, {"Content-Type": "application/octet-stream"})
        rtype = "model"
        if path.startswith("/datasets/"):
            rtype, path = "dataset", path[len("/datasets"):]
        if "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            rev, _, fpath = rest.partition("/")
            return self.resolve(req, rtype, repo_id, rev, fpath)
        return Reply.text("not found", 404)

    @staticmethod
    def _refusal(repo: HFRepo | None) -> Reply:
        """The Hub's answer for a missing (404) or disabled (403) repo."""
        if repo is None:
            return Reply.json({"error": "Repository not found"}, 404, X_Error_Code="RepoNotFound")
        return Reply.json({"error": "Access to this model has been disabled"}, 403, X_Error_Code="DisabledRepo")

    def _repo(self, rtype: str, repo_id: str) -> HFRepo | None:
        return self.repos.get(f"{rtype}:{repo_id}")

    def listing(self, req: Request, rtype: str) -> Reply:
        if self.fail_listing > 0:
            self.fail_listing -= 1
            return Reply.text("upstream unavailable", 503, Retry_After="0")
        author = req.arg("author")
        items = sorted((r for r in self.repos.values() if r.repo_type == rtype and (author is None or r.id.split("/")[0] == author)), key=lambda r: r.id)
        start = int(req.arg("cursor") or 0)
        page = items[start : start + self.page_size]
        headers: dict[str, str] = {}
        if start + self.page_size < len(items):
            nxt = f"{self.url}/api/{rtype}s?author={quote(author or '')}&full=true&cursor={start + self.page_size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        card = (req.arg("cardData") or "").lower() == "true"
        return Reply.json([self._item(r, card_data=card) for r in page], **headers)

    def info(self, rtype: str, repo_id: str, rev: str) -> Reply:
        repo = self._repo(rtype, repo_id)
        if repo is None or repo.disabled:
            return self._refusal(repo)
        if rev not in (repo.sha, "main"):
            return Reply.json({"error": "Invalid rev id"}, 404, X_Error_Code="RevisionNotFound")
        return Reply.json(self._item(repo))

    @staticmethod
    def _item(r: HFRepo, card_data: bool = True) -> dict:
        """A repo as the Hub's JSON describes it (listings: cardData only when asked)."""
        item = {
            "_id": hashlib.md5(r.id.encode()).hexdigest()[:24],
            "id": r.id,
            "author": r.id.split("/")[0],
            "sha": r.sha,
            "lastModified": r.last_modified,
            "createdAt": "2022-09-09T00:00:00.000Z",
            "private": False,
            "gated": r.gated,
            "disabled": r.disabled,
            "downloads": 3,
            "likes": 1,
            "tags": r.tags or ["license:mit", "region:us"],
            "siblings": [{"rfilename": p} for p in sorted(r.files)],
        }
        if card_data:
            item["cardData"] = r.card_data
        if r.repo_type == "model":
            item["modelId"] = r.id
        return item

    def tree(self, req: Request, rtype: str, repo_id: str, rev: str, sub: str) -> Reply:
        repo = self._repo(rtype, repo_id)
        if repo is None or repo.disabled:
            return self._refusal(repo)
        if rev not in (repo.sha, "main"):
            return Reply.json({"error": "Invalid rev id"}, 404, X_Error_Code="RevisionNotFound")
        entries = []
        dirs = sorted({p.rsplit("/", 1)[0] for p in repo.files if "/" in p})
        for d in dirs:
            entries.append({"type": "directory", "oid": "d" * 40, "size": 0, "path": d})
        for p in sorted(repo.files):
            f = repo.files[p]
            e = {"type": "file", "oid": f.git_oid, "size": len(f.data), "path": p}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer())}
            entries.append(e)
        start = int(req.arg("cursor") or 0)
        page = entries[start : start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(entries):
            base = "datasets" if rtype == "dataset" else "models"
            headers["Link"] = f'<{self.url}/api/{base}/{repo_id}/tree/{rev}?recursive=true&cursor={start + self.tree_page_size}>; rel="next"'
        return Reply.json(page, **headers)

    def resolve(self, req: Request, rtype: str, repo_id: str, rev: str, fpath: str) -> Reply:
        repo = self._repo(rtype, repo_id)
        if repo is None or repo.disabled:
            return self._refusal(repo)
        if repo.gated and req.headers.get("authorization") != f"Bearer {self.token}":
            return Reply.json({"error": "Access to model is restricted and you are not in the authorized list."}, 401, X_Error_Code="GatedRepo")
        f = repo.files.get(fpath)
        if f is None:
            return Reply.json({"error": "Entry not found"}, 404, X_Error_Code="EntryNotFound")
        if f.lfs:
            key = f"{rtype}~{repo_id}"
            cdn = self.url if self.cdn_host is None else self.url.replace("127.0.0.1", self.cdn_host)
            return Reply(302, b"", {"Location": f"{cdn}/cdn/{key}/-/{fpath}", "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)), "X-Repo-Commit": repo.sha})
        return Reply(200, f.data, {"Content-Type": "text/plain; charset=utf-8", "ETag": f'"{f.git_oid}"', "X-Repo-Commit": repo.sha})
