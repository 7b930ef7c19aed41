"""Index a Hugging Face author/organisation (default: sd-concepts-library).

Talks to the Hub's documented REST API with tihub's own checked HTTP (every URL through
`tihub.net`), taking the endpoint and token the way `huggingface_hub` does: option `endpoint`,
else `$HF_ENDPOINT`, else huggingface.co; token from `$HF_TOKEN` or the `hf auth login` store,
sent only to the endpoint's host. `HF_HUB_OFFLINE=1` refuses the default public Hub but not an
explicitly configured endpoint (a mirror or a test server).

Requests per sync: the listing pages (`/api/models?author=...&full=true`, `Link` pagination),
then for each repo whose head commit (`sha`) or `lastModified` changed since the stored state:
its file tree at that commit (sha256 of every LFS file, without downloading it), its
`token_identifier.txt` / `type_of_concept.txt`, its README (for the images it embeds; the
`concept_images/` come from the tree) and, with deep sync, the small embedding file itself. Unchanged repos are not re-read: their entries
are kept with `ctx.keep(remote_id)`, so an unchanged organisation costs only its listing pages
(and raises SourceUnchanged).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from itertools import islice
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from tihub.errors import SourceError
from tihub.sources._http import SMALL_CAP, Fetcher, SourceUnchanged, StatusError, clean_link, fetcher_for
from tihub.sources.base import EMBED_SUFFIXES, Candidate, CandidateFile

log = logging.getLogger("tihub.sources")

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_AUTHOR = "sd-concepts-library"
MAX_EMBED_SIZE = 50 * 1024 * 1024  # bigger "embeddings" are checkpoints / model weights
# Weight files of whole models, never embeddings.
NOT_EMBEDDINGS = {
    "pytorch_model.bin", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors",
    "model.safetensors", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scheduler.bin",
    "training_args.bin", "rng_state.pth", "scaler.pt", "random_states_0.pkl",
}
MODEL_DIRS = {"unet", "text_encoder", "text_encoder_2", "vae", "tokenizer", "tokenizer_2", "scheduler",
              "safety_checker", "feature_extractor", "transformer", "image_encoder"}


def endpoint_and_token(spec: Any) -> tuple[str, str | None, bool]:
    """(endpoint, token, explicit) as huggingface_hub would pick them."""
    explicit = spec.get("endpoint") or os.environ.get("HF_ENDPOINT")
    endpoint = (explicit or DEFAULT_ENDPOINT).rstrip("/")
    token = os.environ.get("HF_TOKEN") or None
    if token is None:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:  # pragma: no cover - an unreadable token store is "no token"
            token = None
    return endpoint, token, bool(explicit)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_embedding_path(path: str, size: int | None = None) -> bool:
    name = posixpath.basename(path)
    if not name.lower().endswith(EMBED_SUFFIXES) or name in NOT_EMBEDDINGS:
        return False
    if any(part in MODEL_DIRS for part in path.split("/")[:-1]):
        return False
    if name.startswith(("pytorch_model-", "model-", "diffusion_pytorch_model")):
        return False
    return size is None or size <= MAX_EMBED_SIZE


def _api_base(repo_type: str) -> str:
    return "datasets" if repo_type == "dataset" else "models"


def _web_prefix(endpoint: str, repo_type: str, repo_id: str) -> str:
    return f"{endpoint}/datasets/{repo_id}" if repo_type == "dataset" else f"{endpoint}/{repo_id}"


class _Indexer:
    def __init__(self, spec: Any, ctx: Any) -> None:
        self.spec = spec
        self.ctx = ctx
        self.endpoint, self.token, explicit = endpoint_and_token(spec)
        if _offline() and not explicit:
            raise SourceError(
                f"Source {spec.name!r}: HF_HUB_OFFLINE is set, so the Hugging Face Hub is not contacted; "
                "unset it (or set an `endpoint`) to sync."
            )
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self.fetch: Fetcher = fetcher_for(spec, ctx, auth_headers=auth)
        if auth and urlsplit(self.endpoint).scheme != "https" and not spec.allow_private:
            self.fetch.auth_headers = {}  # never send a token in clear text to a public host
        self.author = spec.get("author") or DEFAULT_AUTHOR
        types = spec.get("repo_types") or ["model"]
        bad = [t for t in types if t not in ("model", "dataset", "models", "datasets")]
        if bad:
            raise SourceError(f"Source {spec.name!r}: unknown repo type {bad[0]!r} in `repo_types`; use model and/or dataset.")
        self.repo_types = sorted({t.rstrip("s") for t in types}, key=lambda t: t != "model")
        self.limit = spec.get("limit")

    # -- listing -------------------------------------------------------------------------------

    def _paginate(self, url: str) -> Iterator[Any]:
        seen: set[str] = set()
        while url:
            if url in seen:
                raise SourceError(f"Source {self.spec.name!r}: the Hub's pagination loops at {url}.")
            seen.add(url)
            _reply, data = self.fetch.get_json(url)
            if not isinstance(data, list):
                raise SourceError(f"Source {self.spec.name!r}: {url} did not answer with a list; the endpoint may not be a Hugging Face Hub.")
            yield from data
            nxt = _reply.next_link()
            url = self._same_host(nxt) if nxt else ""

    def _same_host(self, url: str) -> str:
        # Pagination links must stay on the Hub; an absolute link elsewhere is refused.
        if url.startswith("/"):
            return self.endpoint + url
        ep, nx = urlsplit(self.endpoint), urlsplit(url)
        if (ep.scheme, ep.netloc) != (nx.scheme, nx.netloc):
            raise SourceError(f"Source {self.spec.name!r}: a pagination link points away from the Hub ({url}).")
        return url

    def listing(self, repo_type: str) -> list[dict[str, Any]]:
        query = {"author": self.author, "full": "true"}
        if self.limit:
            query["limit"] = str(min(int(self.limit), 1000))
        url = f"{self.endpoint}/api/{_api_base(repo_type)}?{urlencode(query)}"
        items = self._paginate(url)
        if self.limit:
            items = islice(items, int(self.limit))
        out = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and "/" in item["id"]:
                out.append(item)
        return out

    # -- one repo ------------------------------------------------------------------------------

    def repo_candidates(self, repo_type: str, item: dict[str, Any]) -> list[Candidate]:
        repo_id: str = item["id"]
        sha = item.get("sha") or "main"
        name = repo_id.split("/", 1)[1]
        web = _web_prefix(self.endpoint, repo_type, repo_id)
        card = item.get("cardData") if isinstance(item.get("cardData"), dict) else {}
        licence = card.get("license") if isinstance(card.get("license"), str) else None
        tags = [t for t in item.get("tags") or [] if isinstance(t, str)]
        gated = item.get("gated") or False
        extra = {
            "repo": repo_id,
            "repo_type": repo_type,
            "sha": item.get("sha"),
            "lastModified": item.get("lastModified"),
            "gated": gated,
            "downloads": item.get("downloads"),
            "likes": item.get("likes"),
        }
        remote_base = repo_id if repo_type == "model" else f"datasets/{repo_id}"
        base = Candidate(remote_id=remote_base, name=name, title=repo_id, licence=licence, tags=tags, page_url=web, extra=extra)
        if item.get("disabled"):
            base.status = "disabled"
            base.description = "Access to this repository has been disabled by Hugging Face."
            return [base]

        tree_url = f"{self.endpoint}/api/{_api_base(repo_type)}/{repo_id}/tree/{quote(sha, safe='')}?recursive=true"
        try:
            entries = list(self._paginate(tree_url))
        except StatusError as exc:
            # A gated/disabled/removed repo answers 401/403/404 to the tree; record, don't crash.
            if exc.status in (401, 403, 451):
                code = exc.reply.headers.get("x-error-code", "")
                base.status = "gated" if gated or code == "GatedRepo" else "disabled"
                return [base]
            if exc.status == 404:
                return []
            raise
        files = [e for e in entries if isinstance(e, dict) and e.get("type") == "file" and isinstance(e.get("path"), str)]
        paths = {e["path"] for e in files}
        embeds = [e for e in files if is_embedding_path(e["path"], _size(e))]

        token = kind = None
        status = "ok"
        if embeds and ("token_identifier.txt" in paths or "type_of_concept.txt" in paths):
            for fname in ("token_identifier.txt", "type_of_concept.txt"):
                if fname not in paths:
                    continue
                reply = self.fetch.get(f"{web}/resolve/{sha}/{fname}", cap=SMALL_CAP)
                if reply.status in (401, 403):
                    status = "gated" if gated or reply.headers.get("x-error-code") == "GatedRepo" else "disabled"
                    break
                if reply.ok and not reply.body[:64].lstrip().lower().startswith((b"<!doctype", b"<html")):
                    value = reply.text().strip().splitlines()[0].strip() if reply.text().strip() else ""
                    if fname == "token_identifier.txt":
                        token = value[:200] or None
                    else:
                        kind = value.lower()[:40] or None
        elif gated and not self.token:
            status = "gated"

        def file_of(e: dict[str, Any]) -> CandidateFile:
            lfs = e.get("lfs") if isinstance(e.get("lfs"), dict) else None
            sha256 = (lfs.get("oid") or lfs.get("sha256")) if lfs else None
            path = e["path"]
            return CandidateFile(
                file_name=posixpath.basename(path),
                url=f"{web}/resolve/{sha}/{quote(path)}",
                size=_size(e),
                sha256=sha256.lower() if isinstance(sha256, str) else None,
                hashes={"git_blob": e["oid"]} if isinstance(e.get("oid"), str) else {},
                format=posixpath.splitext(path)[1].lstrip(".").lower() or None,
                extra={"path": path, "lfs": bool(lfs), "commit": item.get("sha")},
            )

        if not embeds:
            base.status = "empty" if status == "ok" else status
            base.description = "The repository holds no embedding file."
            return [base]
        concept = [e for e in embeds if posixpath.basename(e["path"]).startswith("learned_embeds")]
        groups: list[tuple[str, list[dict[str, Any]]]]
        if concept or len(embeds) == 1:
            groups = [("", concept or embeds)]
            rest = [e for e in embeds if e not in concept] if concept else []
            groups += [(e["path"], [e]) for e in rest]
        else:
            groups = [(e["path"], [e]) for e in embeds]
        previews = self.previews(web, sha, files, paths)
        out = []
        for path, group in groups:
            stem = posixpath.splitext(posixpath.basename(path))[0] if path else name
            c = dataclasses.replace(
                base,
                remote_id=f"{remote_base}/{path}" if path else remote_base,
                name=stem,
                files=[file_of(e) for e in group],
                status=status,
                kind=kind if not path else None,
                triggers={"a1111": stem},
                tags=list(tags),
                extra=dict(extra),
            )
            if token and not path:
                c.triggers["diffusers"] = token
                c.description = f"Concept {token} ({kind or 'unknown kind'}) from {repo_id}."
            if not path or len(groups) == 1:
                c.previews = list(previews)
            c.previews += beside_previews(group, paths, lambda p: f"{web}/resolve/{sha}/{quote(p)}")
            if status == "ok":
                self.deep_read(c.files)
            out.append(c)
        return out

    # -- pictures and deep reads (issue 14) ----------------------------------------------------

    def previews(self, web: str, sha: str, files: list[dict[str, Any]], paths: set[str]) -> list[dict[str, Any]]:
        """`concept_images/*` of the repo, then the images its README embeds (one small request)."""
        out: list[dict[str, Any]] = []
        for e in sorted(files, key=lambda e: e["path"]):
            p = e["path"]
            if p.startswith("concept_images/") and p.lower().endswith(IMAGE_SUFFIXES):
                out.append({"url": f"{web}/resolve/{sha}/{quote(p)}", "kind": "concept_image"})
        readme = next((e for e in files if e["path"].lower() == "readme.md"), None)
        if readme is not None and (_size(readme) or 0) <= MAX_README:
            try:
                reply = self.fetch.get(f"{web}/resolve/{sha}/{quote(readme['path'])}", cap=MAX_README)
            except SourceError:
                reply = None
            if reply is not None and reply.ok:
                base = f"{web}/resolve/{sha}/"
                known = {p["url"] for p in out}
                for src in readme_images(reply.text()):
                    url = clean_link(urljoin(base, src), bool(self.spec.allow_private))
                    if url and url not in known:
                        known.add(url)
                        out.append({"url": url, "kind": "readme"})
        return out[:MAX_PREVIEWS]

    def deep_read(self, files: list[CandidateFile]) -> None:
        """Read small embedding files now (deep sync), within the sync's byte budget."""
        deep = getattr(self.ctx, "deep", None)
        if deep is None:
            return
        for cf in files:
            if cf.url is None or not deep.wants(cf):
                continue
            try:
                reply = self.fetch.get(cf.url, cap=deep.cap())
            except SourceError as exc:
                log.info("%s: deep read of %s skipped: %s", self.spec.name, cf.url, exc)
                continue
            if reply.ok:
                deep.measure(cf, reply.body)
            else:
                deep.count(len(reply.body))

    def _keep(self, record: dict[str, Any]) -> None:
        """The repo's entries from the last sync stay as they are (not yielded again)."""
        for rid in record["ids"]:
            self.ctx.keep(rid)

    def run(self) -> Iterator[Candidate]:
        prev: dict[str, Any] = self.ctx.state.get("repos") or {}
        if self.ctx.state.get("endpoint") not in (None, self.endpoint):
            prev = {}
        listed: list[tuple[str, str, dict[str, Any]]] = []
        for rtype in self.repo_types:
            for item in self.listing(rtype):
                listed.append((f"{rtype}:{item['id']}", rtype, item))
                self.ctx.progress(f"listed {len(listed)} repos")
        keys = {k for k, _, _ in listed}

        def same(key: str, item: dict[str, Any]) -> bool:
            p = prev.get(key)
            return bool(p) and "ids" in p and p.get("sha") == item.get("sha") and p.get("lastModified") == item.get("lastModified") \
                and bool(p.get("disabled")) == bool(item.get("disabled")) and p.get("gated") == item.get("gated")

        if keys == set(prev) and all(same(k, i) for k, _, i in listed):
            raise SourceUnchanged(self.spec.name)
        new: dict[str, Any] = {}
        for n, (key, rtype, item) in enumerate(listed):
            record = {"sha": item.get("sha"), "lastModified": item.get("lastModified"),
                      "disabled": bool(item.get("disabled")), "gated": item.get("gated")}
            if same(key, item):
                self._keep(prev[key])
                new[key] = prev[key]
                continue
            self.ctx.progress(f"reading {item['id']}", n + 1, len(listed))
            try:
                cands = self.repo_candidates(rtype, item)
            except SourceError as exc:
                if key not in prev or "ids" not in prev[key]:
                    log.warning("%s", exc)
                    continue
                # Keep what we knew, with the old sha so that the next sync retries this repo.
                log.warning("%s (keeping the previous record of %s)", exc, item["id"])
                self._keep(prev[key])
                new[key] = prev[key]
                continue
            record["ids"] = [c.remote_id for c in cands]
            new[key] = record
            yield from cands
        self.ctx.set_state("repos", new)
        self.ctx.set_state("endpoint", self.endpoint)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
MAX_README = 256 * 1024
MAX_PREVIEWS = 24
_MD_IMAGE = re.compile(r"!\[[^\]]{0,500}\]\(\s*<?([^()\s<>]{1,2048})>?(?:\s+\"[^\"]{0,300}\")?\s*\)")
_HTML_IMAGE = re.compile(r"<img\b[^>]{0,2000}?\bsrc\s*=\s*[\"']([^\"'<>]{1,2048})[\"']", re.I)


def readme_images(text: str) -> list[str]:
    """Image references of a markdown/HTML README, in order (markdown `![..](src)` and `<img src>`)."""
    found = sorted([(m.start(), m.group(1)) for m in _MD_IMAGE.finditer(text)] + [(m.start(), m.group(1)) for m in _HTML_IMAGE.finditer(text)])
    out: list[str] = []
    for _, src in found:
        if src not in out and not src.lower().startswith(("data:", "javascript:")):
            out.append(src)
    return out


def beside_previews(group: list[dict[str, Any]], paths: set[str], url_of: Any) -> list[dict[str, Any]]:
    """`NAME.preview.png|jpg|jpeg|webp` next to each embedding file (A1111 / Civitai Helper)."""
    out = []
    for e in group:
        stem = posixpath.splitext(e["path"])[0]
        for ext in (".png", ".jpg", ".jpeg", ".webp"):
            if f"{stem}.preview{ext}" in paths:
                out.append({"url": url_of(f"{stem}.preview{ext}"), "kind": "preview"})
    return out


def _size(e: dict[str, Any]) -> int | None:
    lfs = e.get("lfs")
    if isinstance(lfs, dict) and isinstance(lfs.get("size"), int):
        return lfs["size"]
    return e["size"] if isinstance(e.get("size"), int) else None


def index(spec: Any, ctx: Any) -> Iterator[Candidate]:
    """Yield one Candidate per concept repo (or per embedding file in other repos)."""
    indexer = _Indexer(spec, ctx)
    with indexer.fetch:
        yield from indexer.run()
