"""Index Civitai's textual inversions through its public v1 REST API.

`GET {url}/models?types=TextualInversion&limit=100` (+ `query`, `baseModels`, `sort`,
`nsfw=false` unless the source is NSFW), following `metadata.nextCursor` (or `nextPage` on
answers without cursors). Civitai refuses page-number paging past page x limit = 1000 with a
429 "use cursors instead": the indexer then stops cleanly with what it has and records
`truncated` in the state. `$CIVITAI_TOKEN` is sent as a bearer token to the API host only.

One Candidate per model version: its files (name, download URL, size, every hash, scan
results), trained words, base model, NSFW flag, licence flags and the first preview images
with their generation parameters (`Model hash` names the model the author used).
Incremental: each model's newest `updatedAt` is kept in the state; when no model changed, the
source raises SourceUnchanged after its listing pages (the only requests it ever makes).
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from tihub.errors import SourceError
from tihub.net import URLPolicy
from tihub.sources._http import SourceUnchanged, clean_link, fetcher_for
from tihub.sources.base import Candidate, CandidateFile

log = logging.getLogger("tihub.sources")

DEFAULT_URL = "https://civitai.com/api/v1"
PAGE_SIZE = 100
PREVIEWS = 3
HASH_KEYS = ("AutoV1", "AutoV2", "AutoV3", "SHA256", "CRC32", "BLAKE3")
FORMATS = {"safetensor": "safetensors", "safetensors": "safetensors", "pickletensor": "pt", "other": None}
SKIP_FILE_TYPES = {"training data", "archive", "config"}


def _text(value: Any, limit: int = 4000) -> str | None:
    """Civitai descriptions are HTML: keep readable text only."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = re.sub(r"<(br|/p|/li|/h\d)\s*/?>", "\n", value, flags=re.I)
    text = html.unescape(re.sub(r"<[^>]{0,2000}>", "", text))
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    text = re.sub(r"\n\s*\n+", "\n", text).strip()
    return text[:limit] or None


def _nsfw_image(img: dict[str, Any]) -> bool:
    level = img.get("nsfwLevel", img.get("nsfw"))
    if isinstance(level, bool):
        return level
    if isinstance(level, (int, float)):
        return level > 1
    if isinstance(level, str):
        return level.lower() not in ("none", "pg", "false", "")
    return False


def _safe_url(url: Any, policy: URLPolicy) -> str | None:
    return clean_link(url, policy.allow_private) if isinstance(url, str) else None


class _Civitai:
    def __init__(self, spec: Any, ctx: Any) -> None:
        self.spec = spec
        self.ctx = ctx
        self.base = (spec.get("url") or DEFAULT_URL).rstrip("/")
        token = os.environ.get("CIVITAI_TOKEN") or None
        self.fetch = fetcher_for(spec, ctx, auth_headers={"Authorization": f"Bearer {token}"} if token else None)
        self.policy = URLPolicy(allow_private=bool(spec.allow_private))
        parts = urlsplit(self.base)
        self.site = f"{parts.scheme}://{parts.netloc}"
        if parts.netloc.endswith("civitai.com"):
            self.site = "https://civitai.com"
        self.limit = spec.get("limit")
        self.truncated: str | None = None

    def first_url(self) -> str:
        q: list[tuple[str, str]] = [("types", "TextualInversion"), ("limit", str(min(PAGE_SIZE, int(self.limit or PAGE_SIZE))))]
        if self.spec.get("query"):
            q.append(("query", self.spec.get("query")))
        for b in self.spec.get("base_models") or []:
            q.append(("baseModels", b))
        if self.spec.get("sort"):
            q.append(("sort", self.spec.get("sort")))
        if not self.spec.nsfw:
            q.append(("nsfw", "false"))
        return f"{self.base}/models?{urlencode(q)}"

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        url = self.first_url()
        first = url
        seen: set[str] = set()
        while url:
            if url in seen:
                raise SourceError(f"Source {self.spec.name!r}: Civitai's pagination loops at {url}.")
            seen.add(url)
            reply = self.fetch.get(url, final=lambda r: r.status == 429 and b"too many pages" in r.body.lower())
            if reply.status == 429:
                self.truncated = f"Civitai refused deeper paging at {url} (429: too many pages)"
                log.warning("Source %r: %s; keeping the %s pages read so far.", self.spec.name, self.truncated, len(seen) - 1)
                return
            if not reply.ok:
                raise SourceError(f"Source {self.spec.name!r}: {url} answered status {reply.status}; check the source's URL or token.")
            data = reply.json()
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise SourceError(f"Source {self.spec.name!r}: {url} did not answer with Civitai's {{items, metadata}} envelope.")
            yield [m for m in data["items"] if isinstance(m, dict)]
            meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            cursor = meta.get("nextCursor")
            nxt = meta.get("nextPage")
            if cursor not in (None, ""):
                sep = "&"
                base = re.sub(r"([?&])(cursor|page)=[^&]*", r"\1", first).rstrip("&?")
                url = f"{base}{sep if '?' in base else '?'}{urlencode({'cursor': str(cursor)})}"
            elif isinstance(nxt, str) and nxt:
                np, fp = urlsplit(nxt), urlsplit(first)
                if (np.scheme, np.netloc) != (fp.scheme, fp.netloc):
                    raise SourceError(f"Source {self.spec.name!r}: Civitai's next page points to another host ({nxt}).")
                url = nxt
            else:
                url = ""

    def candidates(self, model: dict[str, Any]) -> list[Candidate]:
        mid = model.get("id")
        out = []
        tags = [t if isinstance(t, str) else t.get("name") for t in model.get("tags") or [] if isinstance(t, (str, dict))]
        tags = [t for t in tags if isinstance(t, str)]
        kind = "negative" if any("negative" in t.lower() for t in tags) else None
        licence = self._licence(model)
        creator = (model.get("creator") or {}).get("username") if isinstance(model.get("creator"), dict) else None
        for v in model.get("modelVersions") or []:
            if not isinstance(v, dict) or v.get("id") is None:
                continue
            vid = v["id"]
            files = []
            for f in v.get("files") or []:
                if not isinstance(f, dict) or str(f.get("type", "")).lower() in SKIP_FILE_TYPES:
                    continue
                files.append(self._file(f))
            if not files:
                continue
            primary = next((f for f in v.get("files") or [] if isinstance(f, dict) and f.get("primary")), None)
            fname = files[0].file_name if primary is None else str(primary.get("name") or files[0].file_name)
            stem = re.sub(r"\.(safetensors|pt|bin|ckpt|png)$", "", fname, flags=re.I) or f"civitai-{vid}"
            words = [w.strip() for w in v.get("trainedWords") or [] if isinstance(w, str) and w.strip()]
            triggers = {"a1111": stem}
            if words:
                triggers["trained_words"] = ", ".join(words)
            previews = []
            for img in v.get("images") or []:
                if len(previews) >= PREVIEWS:
                    break
                if not isinstance(img, dict) or (_nsfw_image(img) and not self.spec.nsfw):
                    continue
                url = _safe_url(img.get("url"), self.policy)
                if url is None:
                    continue
                meta = img.get("meta") if isinstance(img.get("meta"), dict) else {}
                previews.append({
                    "url": url,
                    "kind": "civitai",
                    "width": img.get("width"),
                    "height": img.get("height"),
                    "nsfw": _nsfw_image(img),
                    "model_hash": meta.get("Model hash"),
                    "model": meta.get("Model"),
                    "meta": meta,
                })
            out.append(Candidate(
                remote_id=f"{mid}@{vid}",
                name=stem,
                title=f"{model.get('name') or stem} ({v.get('name') or vid})",
                description=_text(model.get("description")),
                triggers=triggers,
                kind=kind,
                tags=tags,
                base_model=v.get("baseModel") if isinstance(v.get("baseModel"), str) else None,
                nsfw=bool(model.get("nsfw")) if model.get("nsfw") is not None else None,
                licence=licence,
                page_url=f"{self.site}/models/{mid}?modelVersionId={vid}",
                files=files,
                previews=previews,
                extra={
                    "modelId": mid,
                    "versionId": vid,
                    "version": v.get("name"),
                    "air": v.get("air"),
                    "creator": creator,
                    "trainedWords": words,
                    "baseModelType": v.get("baseModelType"),
                    "createdAt": v.get("createdAt"),
                    "updatedAt": v.get("updatedAt"),
                    "publishedAt": v.get("publishedAt"),
                    "availability": v.get("availability"),
                    "earlyAccessEndsAt": v.get("earlyAccessEndsAt"),
                    "version_description": _text(v.get("description"), 2000),
                    "stats": v.get("stats") if isinstance(v.get("stats"), dict) else None,
                },
            ))
        return out

    def _file(self, f: dict[str, Any]) -> CandidateFile:
        hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
        clean = {k: str(hashes[k]).lower() for k in HASH_KEYS if isinstance(hashes.get(k), str) and re.fullmatch(r"[0-9A-Fa-f]{8,64}", hashes[k])}
        sha256 = clean.pop("SHA256", None)
        if sha256 is not None and len(sha256) != 64:
            sha256 = None
        meta = f.get("metadata") if isinstance(f.get("metadata"), dict) else {}
        fmt = meta.get("format")
        name = str(f.get("name") or f"civitai-{f.get('id')}")
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else None
        size_kb = f.get("sizeKB")
        return CandidateFile(
            file_name=name,
            url=_safe_url(f.get("downloadUrl"), self.policy),
            size=round(size_kb * 1024) if isinstance(size_kb, (int, float)) and size_kb * 1024 < 10 * 1024 * 1024 else None,
            sha256=sha256,
            hashes=clean,
            format=FORMATS.get(str(fmt).lower(), ext) if fmt else ext,
            extra={
                "id": f.get("id"),
                "type": f.get("type"),
                "primary": bool(f.get("primary")),
                "sizeKB": size_kb,
                "size_exact": False,
                "fp": meta.get("fp"),
                "pickleScanResult": f.get("pickleScanResult"),
                "pickleScanMessage": f.get("pickleScanMessage"),
                "virusScanResult": f.get("virusScanResult"),
                "scannedAt": f.get("scannedAt"),
            },
        )

    @staticmethod
    def _licence(model: dict[str, Any]) -> str | None:
        keys = ("allowNoCredit", "allowCommercialUse", "allowDerivatives", "allowDifferentLicense")
        parts = []
        for k in keys:
            if k in model:
                v = model[k]
                parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
        return "civitai: " + "; ".join(parts) if parts else None

    def run(self) -> Iterator[Candidate]:
        prev: dict[str, str] = self.ctx.state.get("models") or {}
        seen: dict[str, str] = {}
        models: list[dict[str, Any]] = []
        count = 0
        for page in self.pages():
            for m in page:
                if self.limit and count >= int(self.limit):
                    break
                if m.get("type") not in (None, "TextualInversion"):
                    continue
                if m.get("nsfw") and not self.spec.nsfw:
                    continue
                count += 1
                stamps = [str(v.get("updatedAt") or v.get("publishedAt") or "") for v in m.get("modelVersions") or [] if isinstance(v, dict)]
                seen[str(m.get("id"))] = f"{max(stamps, default='')}|{len(stamps)}"
                models.append(m)
            if self.limit and count >= int(self.limit):
                break
        if seen == prev and not self.truncated and self.ctx.state.get("query") == self._query_key():
            raise SourceUnchanged(self.spec.name)
        if self.truncated:
            self.ctx.partial()
        for m in models:
            yield from self.candidates(m)
        self.ctx.set_state("models", seen)
        self.ctx.set_state("query", self._query_key())
        self.ctx.set_state("truncated", self.truncated)

    def _query_key(self) -> str:
        return self.first_url()


def index(spec: Any, ctx: Any) -> Iterator[Candidate]:
    """Yield one Candidate per Civitai textual-inversion model version."""
    c = _Civitai(spec, ctx)
    with c.fetch:
        yield from c.run()
