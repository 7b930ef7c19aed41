"""Preview pictures of catalogue entries: listing, lazy fetching and a WEBP thumbnail cache.

Sources store pictures as URLs plus metadata (`previews` rows, see migration m006_knowledge):
Hugging Face `concept_images/` and README images, git `NAME.preview.*` files and README images,
pictures beside a link on a link page, Civitai images with their generation parameters, local
`NAME.preview.*` files and tihub's own grids. Nothing is downloaded at sync time. `thumbnail()`
fetches a picture when it is first wanted, through tihub's checked HTTP (`tihub.net.stream`:
every hop checked, private addresses refused unless allowed), decodes it with Pillow under a pixel
cap and keeps a WEBP thumbnail in `WORKSPACE/.tihub-cache/thumbs/`.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tihub.errors import DownloadError, FormatError, NetworkError, NotFound

MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 64_000_000  # a decompression bomb is refused before decoding
THUMB_SIZE = 256
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
GEN_KEYS = ("prompt", "negativePrompt", "sampler", "seed", "steps", "cfgScale", "Model hash", "Model", "Size")


def is_image(data: bytes) -> bool:
    return data.startswith(IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def describe(row: dict[str, Any]) -> dict[str, Any]:
    """A preview row (from `Catalog.entry`) as shown to users: url or path, kind, size and the
    generation metadata (prompt, sampler, seed, model hash) where the source gave it."""
    params = row.get("params") or {}
    meta = params.get("meta") if isinstance(params.get("meta"), dict) else {}
    kind = row.get("kind") or params.get("kind") or ("grid" if row.get("path") and not row.get("url") else None)
    gen = {k: meta[k] for k in GEN_KEYS if meta.get(k) not in (None, "")}
    url = row.get("url")
    path = row.get("path")
    return {
        "url": url if url and not url.startswith("file:") else None,
        "path": path,
        "kind": kind,
        "width": params.get("width"),
        "height": params.get("height"),
        "nsfw": bool(params.get("nsfw")) if "nsfw" in params else None,
        "model_hash": row.get("model_hash") or meta.get("Model hash"),
        "generation": gen or None,
    }


def fetch_image(url: str, *, allow_private: bool = False, cap: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of one picture, through tihub's checked HTTP; raises NetworkError/DownloadError."""
    from tihub.net import URLPolicy, make_client, stream

    if urlsplit(url).scheme == "file":
        return _local_bytes(Path(unquote(urlsplit(url).path)))
    if not url.startswith(("http://", "https://")):
        raise NotFound(f"The picture {url} is not on the web (it lives inside a git repository); fetch the embedding to see it.")
    with make_client() as client, stream(client, "GET", url, policy=URLPolicy(allow_private=allow_private)) as r:
        if r.status_code != 200:
            raise DownloadError(f"The picture {url} answered status {r.status_code}; try again later.")
        chunks, total = [], 0
        for chunk in r.iter_bytes():
            total += len(chunk)
            if total > cap:
                raise DownloadError(f"The picture {url} is larger than {cap:,} bytes; tihub does not fetch it.")
            chunks.append(chunk)
    data = b"".join(chunks)
    if not is_image(data):
        raise DownloadError(f"{url} did not answer with a PNG, JPEG, WEBP or GIF picture.")
    return data


def _local_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise DownloadError(f"The picture {path} is larger than {MAX_IMAGE_BYTES:,} bytes.")
        return path.read_bytes()
    except OSError as exc:
        raise NotFound(f"The picture {path} cannot be read ({exc.strerror or exc}); run `tihub sync` again.") from None


def open_image(data: bytes, what: str):  # type: ignore[no-untyped-def]
    """A decoded Pillow image, refusing non-pictures and decompression bombs."""
    from PIL import Image

    if not is_image(data):
        raise FormatError(f"{what} is not a PNG, JPEG, WEBP or GIF picture.")
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > MAX_PIXELS:
            raise FormatError(f"{what} is {im.width}x{im.height} pixels, over tihub's limit for a preview.")
        im.load()
    except FormatError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise FormatError(f"{what} could not be decoded as a picture ({type(exc).__name__}).") from None
    return im


def as_png(data: bytes, what: str = "the picture") -> bytes:
    """`data` (any supported picture) re-encoded as PNG (what `NAME.preview.png` must hold)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        open_image(data, what)  # still check it decodes
        return data
    im = open_image(data, what)
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def thumb_dir(workspace: Any) -> Path:
    root = workspace if isinstance(workspace, (str, os.PathLike)) else workspace.root
    return Path(root) / ".tihub-cache" / "thumbs"


def thumb_path(workspace: Any, key: str, size: int = THUMB_SIZE) -> Path:
    return thumb_dir(workspace) / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}-{size}.webp"


def thumbnail(workspace: Any, preview: dict[str, Any], *, size: int = THUMB_SIZE, allow_private: bool = False) -> Path:
    """The cached WEBP thumbnail of one preview (fetched and made on first use)."""
    from PIL import Image

    key = preview.get("url") or preview.get("path")
    if not key:
        raise NotFound("The preview has neither a URL nor a path.")
    out = thumb_path(workspace, key, size)
    if out.is_file():
        return out
    if preview.get("path") and Path(preview["path"]).is_file():
        data = _local_bytes(Path(preview["path"]))
    else:
        data = fetch_image(preview["url"], allow_private=allow_private)
    im = open_image(data, key)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    im.save(tmp, "WEBP", quality=80)
    os.replace(tmp, out)
    return out


def entry_previews(catalog: Any, name: str, *, thumbs: bool = False, allow_private: bool = False) -> list[dict[str, Any]]:
    """The previews of one entry, described; with `thumbs` each gets a `thumb` path (fetched
    now if needed) or a `thumb_error` sentence."""
    e = catalog.entry(name)
    out = []
    for row in e.get("previews") or []:
        d = describe(row)
        cached = thumb_path(catalog.workspace, row.get("url") or row.get("path") or "") if catalog.workspace else None
        d["thumb"] = str(cached) if cached is not None and cached.is_file() else None
        if thumbs and d["thumb"] is None and catalog.workspace is not None:
            try:
                d["thumb"] = str(thumbnail(catalog.workspace, row, allow_private=allow_private))
            except (NetworkError, FormatError, NotFound) as exc:
                d["thumb_error"] = str(exc)
        out.append(d)
    return out
