"""A synced workspace with pictures and a live `tihub serve` on a loopback port, for the web tests.

The catalogue comes from a real sync of the loopback Hugging Face Hub (tests/servers/hf.py):
three concepts with concept pictures (PNG, written by Pillow) and real embedding files; one of
them is too big for deep sync, so fetching it downloads through the Hub with progress. One
entry is marked NSFW (as a Civitai source marks them) so the blur can be checked.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import text

from servers.hf import HFFile, HFHub, HFRepo
from tihub.catalog.db import write
from tihub.config import Workspace
from tihub.formats import Embedding, write_embedding
from tihub.hub import Hub
from tihub.sync import sync

ORG = "sd-concepts-library"


def picture(color: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    out = io.BytesIO()
    im = Image.new("RGB", size, color)
    for x in range(0, size[0], 40):  # stripes, so a thumbnail is visibly a picture
        im.paste((255, 255, 255), (x, 0, x + 8, size[1]))
    im.save(out, "PNG")
    return out.getvalue()


def embedding(tmp: Path, name: str, n: int) -> bytes:
    vec = np.random.default_rng(len(name) + n).standard_normal((n, 768)).astype(np.float32) * 0.3
    p = tmp / f"{name}.bin"
    write_embedding(Embedding(name=name, vectors={"clip_l": vec}), p, "diffusers-bin")
    return p.read_bytes()


def concept(name: str, data: bytes, kind: str, color: tuple[int, int, int]) -> HFRepo:
    repo = HFRepo(
        id=f"{ORG}/{name}",
        files={
            "README.md": HFFile(f"---\nlicense: mit\n---\n# {name}\nA {kind} concept called {name}.\n".encode()),
            "learned_embeds.bin": HFFile(data, lfs=True),
            "token_identifier.txt": HFFile(f"<{name}>".encode()),
            "type_of_concept.txt": HFFile(kind.encode()),
            "concept_images/0.png": HFFile(picture(color), lfs=True),
        },
        card_data={"license": "mit"},
    )
    repo.touch(len(name))
    return repo


@contextmanager
def synced_workspace(root: Path) -> Iterator[tuple[Path, HFHub]]:
    """A workspace under `root` synced from a loopback Hub that stays up while in use."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "embeddings").mkdir(exist_ok=True)
    repos = [
        concept("cat-toy", embedding(root, "cat-toy", 1), "object", (200, 40, 40)),
        concept("watercolor-style", embedding(root, "watercolor-style", 2), "style", (40, 90, 200)),
        concept("big-one", embedding(root, "big-one", 75), "object", (40, 160, 60)),  # ~230 KB: fetched over HTTP
        concept("spicy-thing", embedding(root, "spicy-thing", 1), "object", (220, 120, 200)),
    ]
    for p in root.glob("*.bin"):
        p.unlink()
    with HFHub(repos, page_size=10) as h:
        (root / "sources.yaml").write_text(
            f"sources:\n  - {{name: hf, kind: huggingface, author: {ORG}, endpoint: '{h.url}', allow_private: true}}\n"
        )
        ws = Workspace.locate(str(root))
        (report,) = sync(ws)
        assert report.status == "ok", report.error
        hub = Hub(root)
        with write(hub.catalog.engine) as conn:
            conn.execute(text("UPDATE entries SET nsfw = 1 WHERE name = 'spicy-thing'"))
        yield root, h


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    hub: Hub
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(10)


def start_server(home: Path, token: str | None = None, host: str = "127.0.0.1") -> LiveServer:
    """The real app under uvicorn in a thread on a free loopback port."""
    import uvicorn

    from tihub.web.app import create_app

    hub = Hub(home)
    port = free_port()
    app = create_app(hub, token=token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the tihub server did not start")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", hub, app, server, thread)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
