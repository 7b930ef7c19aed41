"""Seed inputs per target: files tihub's writers produce, real corpus files (when
../shared/corpus exists), the hostile files of the test suite, and small text samples."""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"


@functools.lru_cache(maxsize=1)
def _written() -> dict[str, bytes]:
    from tihub.formats import Embedding, write_embedding

    rng = np.random.default_rng(7)
    out: dict[str, bytes] = {}
    emb = Embedding("seed", {"clip_l": rng.standard_normal((2, 768)).astype(np.float32)}, "f32", step=3, sd_checkpoint="abcdef0123")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("safetensors", ".safetensors"), ("a1111", ".pt"), ("png", ".png")):
            path = Path(tmp) / f"seed{suffix}"
            write_embedding(emb, path, fmt)
            out[suffix] = path.read_bytes()
    return out


@functools.lru_cache(maxsize=1)
def _hostile() -> dict[str, bytes]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import hostile_files
    finally:
        sys.path.pop(0)
    out = {}
    # multi-MB bombs, and 50,000 nested tuples (slow to free under tracemalloc): they have their own tests
    slow = ("bomb-png-json", "bomb-shared-views", "bomb-codecs", "bomb-png-text", "zip-deep-nesting")
    for name, build in hostile_files.builders().items():
        if name.startswith(slow):
            continue
        data = build(Path(tempfile.gettempdir()) / "tihub-fuzz-canary")
        if len(data) <= 64 * 1024:  # the multi-MB bombs make every mutation slow; they have their own tests
            out[name] = data
    return out


def _corpus(suffixes: tuple[str, ...], limit: int = 6) -> list[bytes]:
    if not CORPUS.exists():
        return []
    found = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and p.stat().st_size < 64_000)
    return [p.read_bytes() for p in found[:limit]]


def seeds(target: str) -> list[bytes]:
    """A few valid and hostile inputs for `target`."""
    from fuzz.targets import TARGETS

    if target not in TARGETS:
        raise KeyError(target)
    written = _written()
    hostile = _hostile()
    if target in ("zip_container", "torch_zip"):
        return [written[".pt"], *_corpus((".pt", ".bin")), *[v for k, v in hostile.items() if k.endswith((".pt", ".bin"))]]
    if target == "pickle_vm":
        import zipfile
        import io

        out = []
        for raw in [written[".pt"], *_corpus((".pt",))]:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                out += [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
        return out
    if target == "safetensors_header":
        return [written[".safetensors"], *_corpus((".safetensors",)), *[v for k, v in hostile.items() if k.endswith(".safetensors")]]
    if target == "png_chunks":
        return [written[".png"], *_corpus((".png",), 3), *[v for k, v in hostile.items() if k.endswith(".png")]]
    if target == "png_pixels":
        return [bytes([40, 40]) + bytes(range(256)) * 20, bytes([8, 8]) + b"\x00" * 200]
    if target == "infotext":
        return [b"a cat, <lora:x:1>\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, TI hashes: \"bad: 0123456789ab\"",
                b"tEXt" + b"parameters\x00Steps: 1"]
    if target == "sources_yaml":
        return [(ROOT / "sources.yaml").read_bytes(), b"sources:\n  - {name: a, kind: local, path: x}\n", b"a: &x [1]\nb: [*x, *x]\n"]
    if target == "links_page":
        return [b'<html><body><a href="https://files.catbox.moe/abc.pt">Owl</a> SD 1.5</body></html>',
                b"| Name | Model | Download |\n|-|-|-|\n| A | SD 1.5 | [dl](https://files.catbox.moe/aaaaaa.pt) |\n",
                b'{"status": "200", "content": "[x](https://files.catbox.moe/x.pt)"}', *_corpus((".md", ".html"), 2)]
    return []
