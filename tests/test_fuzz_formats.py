"""Property test: mutated real files (byte flips, truncations, insertions, splices) never make
`read_embedding` raise anything but tihub's own FormatError (or return a valid embedding)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tihub.errors import FormatError
from tihub.formats import Embedding, read_embedding, write_embedding

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
CORPUS_SEEDS = [
    "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/bad-hands-5.pt",
    "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/bad-image-v2-39000.pt",
    "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/easynegative.safetensors",
    "fastai__diffusion-nbs/learned_embeds.bin",
    "oss-roettger__XL-Textual-Inversion/Embeddings/myPuppet768.pt",
    "Kaleidia__Embeddings-for-AI-Imagery/General Embeddings/SDXL-Pony/SDXL-Detail.safetensors",
    "eastonhill__stable-diffusion/embeddings.pt",
]


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[tuple[str, bytes], ...]:
    """Real corpus files plus files from every writer (built once, on first use)."""
    import tempfile

    import torch

    out: list[tuple[str, bytes]] = []
    for rel in CORPUS_SEEDS:
        path = CORPUS / rel
        if path.exists():
            out.append((path.name, path.read_bytes()))
    rng = np.random.default_rng(7)
    emb = Embedding("seed", {"clip_l": rng.standard_normal((2, 768)).astype(np.float32)}, "f32", step=3, sd_checkpoint="abcdef0123")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("safetensors", ".safetensors"), ("a1111", ".pt"), ("diffusers-bin", ".bin"), ("png", ".png")):
            path = Path(tmp) / f"seed{suffix}"
            write_embedding(emb, path, fmt)
            out.append((path.name, path.read_bytes()))
        legacy = Path(tmp) / "legacy.pt"
        torch.save({"string_to_param": {"*": torch.randn(1, 768)}, "name": "l"}, legacy, _use_new_zipfile_serialization=False)
        out.append((legacy.name, legacy.read_bytes()))
    return tuple(out)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name, data = draw(st.sampled_from(seeds()))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "byte"]))
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            buf[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[i : i + draw(st.integers(1, 64))]
        else:  # splice a run of bytes from elsewhere in the file (e.g. duplicated headers)
            j = draw(st.integers(0, len(buf) - 1))
            buf[i:i] = buf[j : j + draw(st.integers(1, 256))]
    # most mutations should hit the structure (headers, pickles), not float data: bias to the head
    return name, bytes(buf)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_only_format_errors_escape(sample: tuple[str, bytes]) -> None:
    name, data = sample
    try:
        emb = read_embedding(Path("/nonexistent") / name, data=data)
    except FormatError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    # accepted: it must be a well-formed embedding
    assert emb.vectors and all(v.ndim == 2 and v.shape[1] in (768, 1024, 1280) for v in emb.vectors.values())


def test_every_prefix_of_seed_headers_is_refused() -> None:
    """Deterministic: cutting any seed file early (first 600 bytes, every 7th) is refused cleanly."""
    for name, data in seeds():
        for cut in range(0, min(len(data), 600), 7):
            try:
                read_embedding(Path("/nonexistent") / name, data=data[:cut])
            except FormatError:
                continue
            pytest.fail(f"{name} cut at {cut} bytes was accepted")
