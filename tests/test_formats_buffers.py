"""The reader's arrays never alias the caller's bytes, another read, or each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tihub.formats import Embedding, read_embedding, write_embedding


def _write(tmp_path: Path, fmt: str, name: str = "emb") -> Path:
    vec = np.arange(2 * 768, dtype=np.float32).reshape(2, 768) / 1000
    suffix = {"safetensors": ".safetensors", "a1111": ".pt", "diffusers-bin": ".bin"}[fmt]
    path = tmp_path / f"{name}{suffix}"
    write_embedding(Embedding(name=name, vectors={"clip_l": vec}), path, fmt)
    return path


def test_arrays_do_not_alias_the_callers_bytes(tmp_path: Path) -> None:
    for fmt in ("safetensors", "a1111", "diffusers-bin"):
        data = bytearray(_write(tmp_path, fmt).read_bytes())
        emb = read_embedding(tmp_path / f"emb.{fmt}", data)  # a mutable buffer
        before = emb.vectors["clip_l"].copy()
        data[:] = b"\0" * len(data)  # the caller reuses its buffer
        assert np.array_equal(emb.vectors["clip_l"], before), fmt


def test_two_reads_are_independent_and_writable(tmp_path: Path) -> None:
    for fmt in ("safetensors", "a1111", "diffusers-bin"):
        path = _write(tmp_path, fmt)
        a, b = read_embedding(path), read_embedding(path)
        va, vb = a.vectors["clip_l"], b.vectors["clip_l"]
        assert va.flags.writeable
        original = vb.copy()
        va[:] = 0  # a caller may scale or edit its copy in place
        assert np.array_equal(vb, original), fmt
        assert not np.shares_memory(va, vb)


def test_sdxl_encoders_do_not_share_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = Embedding(
        name="xl",
        vectors={"clip_l": rng.standard_normal((2, 768)).astype(np.float32),
                 "clip_g": rng.standard_normal((2, 1280)).astype(np.float32)},
    )
    path = tmp_path / "xl.safetensors"
    write_embedding(emb, path, "safetensors")
    got = read_embedding(path)
    assert not np.shares_memory(got.vectors["clip_l"], got.vectors["clip_g"])
    got.vectors["clip_l"][:] = 0
    assert np.array_equal(got.vectors["clip_g"], emb.vectors["clip_g"])
