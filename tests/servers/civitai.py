"""A loopback Civitai v1 API, answering as the real one does:

- `GET /api/v1/models` (types, query, baseModels, nsfw, limit, page, cursor) with the real
  envelope `{items, metadata: {nextCursor, nextPage, currentPage, pageSize}}` and the 429 "too
  many pages" past page x limit 1000. Without `nsfw=true` only SFW models and images come back
  (the API's default is SFW, not "both"); image `nsfwLevel` is a bit flag (1 PG, 2 PG-13, 4 R,
  8 X, 16 XXX, 32 blocked).
- `GET /api/v1/model-versions/by-hash/{hash}`: any hash form (AutoV1, AutoV2, SHA256, CRC32,
  BLAKE3), case-blind; an unknown hash is 404 `{"error": "Model not found"}`.
- `POST /api/v1/model-versions/by-hash`: a JSON array of at most 100 64-hex SHA256 hashes; any
  other element (an 8-, 10- or 12-hex short hash) or more than 100 makes the whole request a 400.
- `/api/download/models/{versionId}`; any other path: an HTML 404 page (as the website's).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any
from urllib.parse import urlencode

from . import LoopbackServer, Reply, Request, Served


def make_model(mid: int, *, nsfw: bool = False, base: str = "SD 1.5", versions: int = 1, updated: str = "2023-05-01T00:00:00.000Z", server: str = "") -> dict[str, Any]:
    mvs = []
    for v in range(versions):
        vid = mid * 100 + v
        data = f"embedding {mid}/{vid}".encode()
        sha = hashlib.sha256(data).hexdigest().upper()
        mvs.append({
            "id": vid,
            "modelId": mid,
            "name": f"v{v + 1}.0",
            "createdAt": "2023-04-01T00:00:00.000Z",
            "updatedAt": updated,
            "publishedAt": "2023-04-02T00:00:00.000Z",
            "trainedWords": [f"word{mid}", f"alt{mid}"],
            "baseModel": base,
            "baseModelType": "Standard",
            "air": f"urn:air:sd1:embedding:civitai:{mid}@{vid}",
            "status": "Published",
            "availability": "Public",
            "nsfwLevel": 1,
            "description": "<p>version notes</p>",
            "stats": {"downloadCount": 10, "ratingCount": 0, "rating": 0},
            "files": [
                {
                    "id": vid * 10,
                    "name": f"model{mid}v{v}.safetensors",
                    "sizeKB": len(data) / 1024,
                    "type": "Model",
                    "primary": True,
                    "metadata": {"fp": "fp16", "size": None, "format": "SafeTensor"},
                    "pickleScanResult": "Success",
                    "pickleScanMessage": "No Pickle imports",
                    "virusScanResult": "Success",
                    "virusScanMessage": None,
                    "scannedAt": "2023-04-01T00:10:00.000Z",
                    "hashes": {
                        "AutoV1": "E3B0C442",
                        "AutoV2": sha[:10],
                        "SHA256": sha,
                        "CRC32": f"{zlib.crc32(data):08X}",
                        "BLAKE3": hashlib.blake2b(data).hexdigest()[:64].upper(),
                    },
                    "downloadUrl": f"{server}/api/download/models/{vid}",
                },
                {
                    "id": vid * 10 + 1,
                    "name": f"training{mid}.zip",
                    "sizeKB": 900.5,
                    "type": "Training Data",
                    "metadata": {"format": "Other"},
                    "hashes": {},
                    "downloadUrl": f"{server}/api/download/models/{vid}?type=Training%20Data",
                },
            ],
            "images": [
                {
                    "url": f"{server}/img/{vid}/width=450/0.jpeg",
                    "nsfwLevel": 1,
                    "width": 512,
                    "height": 768,
                    "hash": "U5E{[8~q",
                    "type": "image",
                    "meta": {
                        "prompt": f"masterpiece, word{mid}",
                        "negativePrompt": "lowres",
                        "seed": 1234,
                        "steps": 28,
                        "sampler": "Euler a",
                        "cfgScale": 7,
                        "Size": "512x768",
                        "Model": "anything-v3",
                        "Model hash": "38c1ebe3",
                    },
                },
                {"url": f"{server}/img/{vid}/width=450/1.jpeg", "nsfwLevel": 8, "width": 512, "height": 512, "type": "image", "meta": None},
                {"url": f"{server}/img/{vid}/width=450/2.jpeg", "nsfwLevel": 2, "width": 512, "height": 512, "type": "image", "meta": None},
            ],
            "downloadUrl": f"{server}/api/download/models/{vid}",
        })
    return {
        "id": mid,
        "name": f"Model {mid}",
        "description": f"<p>An <b>embedding</b> number {mid}.</p>",
        "type": "TextualInversion",
        "poi": False,
        "nsfw": nsfw,
        "allowNoCredit": True,
        "allowCommercialUse": ["Image"],
        "allowDerivatives": True,
        "allowDifferentLicense": True,
        "tags": ["anime", "negative embedding"] if mid % 5 == 0 else ["style"],
        "creator": {"username": f"user{mid}", "image": None},
        "stats": {"downloadCount": 100, "favoriteCount": 3},
        "modelVersions": mvs,
    }


class CivitaiAPI(Served):
    def __init__(self, n_models: int = 7, page_size_cap: int = 100, cursors: bool = True) -> None:
        self.server = LoopbackServer(self.app)
        self.models: list[dict[str, Any]] = []
        self.n_models = n_models
        self.page_size_cap = page_size_cap
        self.cursors = cursors  # False: only `nextPage` (page numbers), like old API answers
        self.token: str | None = None
        self.fail_next: int = 0
        self.versions: list[dict[str, Any]] = []  # extra model versions by-hash knows (checkpoints...)
        self.bulk_requests: list[list[str]] = []  # the hash arrays POSTed to by-hash
        self.images: dict[str, bytes] = {}  # path -> picture bytes served (preview images)

    def __enter__(self) -> "CivitaiAPI":
        super().__enter__()
        self.models = [make_model(i + 1, nsfw=(i + 1) % 4 == 0, base="SDXL 1.0" if (i + 1) % 3 == 0 else "SD 1.5", server=self.url) for i in range(self.n_models)]
        return self

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def app(self, req: Request) -> Reply:
        if req.path == "/api/v1/models":
            return self.models_page(req)
        if req.path == "/api/v1/model-versions/by-hash" and req.method == "POST":
            return self.by_hash_bulk(req)
        if req.path.startswith("/api/v1/model-versions/by-hash/") and req.method == "GET":
            version = self.find_version(req.path.rsplit("/", 1)[1])
            return Reply.json(version) if version else Reply.json({"error": "Model not found"}, 404)
        if req.path in self.images:
            return Reply(200, self.images[req.path], {"Content-Type": "image/png"})
        if req.path.startswith("/api/download/models/"):
            return Reply(200, b"file", {"Content-Type": "application/octet-stream"})
        return Reply.text("<!DOCTYPE html><html><body>404 | Civitai</body></html>", 404, "text/html")

    def all_versions(self) -> list[dict[str, Any]]:
        out = list(self.versions)
        for m in self.models:
            for v in m["modelVersions"]:
                out.append({**v, "model": {"name": m["name"], "type": m["type"], "nsfw": m["nsfw"], "poi": False}})
        return out

    def find_version(self, h: str) -> dict[str, Any] | None:
        h = h.lower()
        for v in self.all_versions():
            for f in v.get("files") or []:
                if h in {str(x).lower() for x in (f.get("hashes") or {}).values()}:
                    return v
        return None

    def by_hash_bulk(self, req: Request) -> Reply:
        import json
        import re

        try:
            asked = json.loads(req.body or b"null")
        except ValueError:
            return Reply.json({"error": "Invalid JSON"}, 400)
        if not isinstance(asked, list) or len(asked) > 100 or not all(
            isinstance(h, str) and re.fullmatch(r"[0-9a-fA-F]{64}", h) for h in asked
        ):
            return Reply.json({"error": "Invalid input", "issues": [{"code": "invalid_string", "message": "Invalid SHA256 hash"}]}, 400)
        self.bulk_requests.append(asked)
        out = []
        for h in asked:
            v = self.find_version(h)
            if v is not None and v not in out:
                out.append(v)
        return Reply.json(out)

    def models_page(self, req: Request) -> Reply:
        if self.fail_next > 0:
            self.fail_next -= 1
            return Reply.text("<html>502 Bad Gateway</html>", 502, "text/html")
        if self.token and req.headers.get("authorization") != f"Bearer {self.token}":
            return Reply.json({"error": "Unauthorized"}, 401)
        limit = int(req.arg("limit") or 100)
        if not 1 <= limit <= self.page_size_cap:
            return Reply.json({"error": "limit out of range"}, 400)
        types = ",".join(req.query.get("types", []))
        items = [m for m in self.models if not types or m["type"] in types.split(",")]
        nsfw = (req.arg("nsfw") or "").lower() == "true"
        if not nsfw:  # the API's default is SFW only; NSFW needs nsfw=true
            items = [{**m, "modelVersions": [{**v, "images": [i for i in v["images"] if not i["nsfwLevel"] & 0b111100]}
                                             for v in m["modelVersions"]]} for m in items if not m["nsfw"]]
        bases = req.query.get("baseModels")
        if bases:
            items = [m for m in items if any(v["baseModel"] in bases for v in m["modelVersions"])]
        q = req.arg("query")
        if q:
            if req.arg("page"):
                return Reply.json({"error": "Cannot use page param with query search. Use cursor-based pagination."}, 400)
            items = [m for m in items if q.lower() in m["name"].lower()]
        page = req.arg("page")
        cursor = req.arg("cursor")
        if page:
            p = int(page)
            if p * limit > 1000:
                return Reply.json({"error": "You've requested too many pages, please use cursors instead"}, 429)
            start = (p - 1) * limit
        elif cursor:
            start = int(base64.b64decode(cursor).decode())
        else:
            start = 0
        chunk = items[start : start + limit]
        meta: dict[str, Any] = {"pageSize": limit}
        more = start + limit < len(items)
        base_q = {k: v for k, v in req.query.items() if k not in ("page", "cursor")}
        if self.cursors:
            if more:
                nxt = base64.b64encode(str(start + limit).encode()).decode()
                meta["nextCursor"] = nxt
                meta["nextPage"] = f"{self.api}/models?{urlencode({**base_q, 'cursor': [nxt]}, doseq=True)}"
        else:
            cur = start // limit + 1
            meta.update({"currentPage": cur, "totalItems": len(items), "totalPages": -(-len(items) // limit)})
            if more:
                meta["nextPage"] = f"{self.api}/models?{urlencode({**base_q, 'page': [str(cur + 1)]}, doseq=True)}"
        return Reply.json({"items": chunk, "metadata": meta})
