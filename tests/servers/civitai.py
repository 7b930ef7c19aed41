"""A loopback Civitai v1 API: `GET /api/v1/models` (types, query, baseModels, nsfw, limit, page,
cursor) with the real envelope `{items, metadata: {nextCursor, nextPage, currentPage, pageSize}}`,
the 429 "too many pages" past page x limit 1000, and `/api/download/models/{versionId}`.
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
        if req.path in self.images:
            return Reply(200, self.images[req.path], {"Content-Type": "image/png"})
        if req.path.startswith("/api/download/models/"):
            return Reply(200, b"file", {"Content-Type": "application/octet-stream"})
        return Reply.json({"error": "Not found"}, 404)

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
        if req.arg("nsfw") == "false":
            items = [m for m in items if not m["nsfw"]]
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
