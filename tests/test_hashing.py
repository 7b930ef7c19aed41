"""Hashes (sha256, AutoV2, A1111 old hash, shorthash), the hash cache and diffusers-folder hashes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from sqlalchemy import event, text

import tihub.hashing as hashing
from tihub.catalog.db import open_engine, read
from tihub.errors import FormatError, NotFound
from tihub.hashing import (
    CHUNK,
    FileHashes,
    HashCache,
    autov2,
    file_hashes,
    folder_sha256,
    folder_weight_files,
    hash_file,
    matches,
    model_hashes,
    old_hash_file,
    sha256_file,
    shorthash,
)

MIB = 1 << 20


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _ref_old(data: bytes) -> str:
    # A1111: seek(0x100000); read(0x10000); sha256; [0:8]
    return hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]


# --------------------------------------------------------------------------------------------
# Plain hashes


def test_known_vectors(tmp_path: Path) -> None:
    abc = _write(tmp_path / "abc", b"abc")
    assert sha256_file(abc) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    empty = _write(tmp_path / "empty", b"")
    sha, old = hash_file(empty)
    assert sha == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # every file up to 1 MiB has the same old hash: the hash of nothing (A1111, Civitai AutoV1)
    assert old == "e3b0c442"
    assert old_hash_file(abc) == "e3b0c442"
    # one million 'a' (FIPS 180-2 test vector), crossing no chunk boundary but close to 1 MiB
    million = _write(tmp_path / "million", b"a" * 1_000_000)
    assert sha256_file(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


@pytest.mark.parametrize(
    "size",
    [1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 4096, CHUNK + 0x10000 - 1, CHUNK + 0x10000, CHUNK + 0x10000 + 1, 3 * CHUNK + 17],
)
def test_hashes_match_hashlib_at_boundaries(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = _write(tmp_path / "f.bin", data)
    sha, old = hash_file(path)
    assert sha == hashlib.sha256(data).hexdigest()
    assert old == _ref_old(data) == old_hash_file(path)
    fh = file_hashes(path)
    assert fh == FileHashes(str(path), sha, sha[:10], old, sha[:12])


def test_old_hash_ignores_everything_outside_its_window(tmp_path: Path) -> None:
    data = bytearray(random.Random(1).randbytes(2 * MIB))
    a = _write(tmp_path / "a", bytes(data))
    data[0] ^= 0xFF  # before the window
    data[0x110000] ^= 0xFF  # after it
    b = _write(tmp_path / "b", bytes(data))
    assert old_hash_file(a) == old_hash_file(b)
    assert sha256_file(a) != sha256_file(b)
    data[0x100000] ^= 0xFF  # inside it
    c = _write(tmp_path / "c", bytes(data))
    assert old_hash_file(c) != old_hash_file(a)


def test_short_forms() -> None:
    sha = "6CE0161689B3853ACAA03779EC93EAFE75A02F4CED659BEE03F50797806FA2FA"
    assert autov2(sha) == "6ce0161689"
    assert shorthash(sha) == "6ce0161689b3"


def test_matches_every_alias(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(CHUNK + 100_000)
    fh = file_hashes(_write(tmp_path / "m.safetensors", data))
    for alias in (fh.sha256, fh.sha256.upper(), fh.autov2, f"[{fh.autov2}]", fh.shorthash, fh.old_hash, f"0x{fh.old_hash}"):
        assert matches(fh, alias), alias
    assert not matches(fh, fh.sha256[:8] if fh.sha256[:8] != fh.old_hash else "00000000")  # 8 hex means the old hash
    assert not matches(fh, "zzzzzzzzzz")
    assert not matches(fh, "")
    assert not matches(fh, "0123456789")


def test_missing_and_folder_errors_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        hash_file(tmp_path / "nope.safetensors")
    with pytest.raises(FormatError, match="is a folder"):
        hash_file(tmp_path)
    with pytest.raises(FormatError, match="model_index.json"):
        model_hashes(tmp_path)


def test_corpus_hashes_match_manifest(corpus: Path) -> None:
    with open(corpus / "MANIFEST.tsv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get("sha256")]
    assert rows
    for row in rows[:40]:
        path = corpus / row["relative_path"]
        if path.exists():
            assert sha256_file(path) == row["sha256"].lower(), row["relative_path"]


# --------------------------------------------------------------------------------------------
# The cache


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_engine(f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every real file hash (full read) the library performs, by path."""
    calls: list[str] = []
    real = hashing.hash_file

    def counting(path):  # type: ignore[no-untyped-def]
        calls.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(hashing, "hash_file", counting)
    return calls


def test_cache_hit_when_unchanged_miss_after_touch_or_resize(tmp_path: Path, engine, counted: list[str]) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "model.safetensors", b"x" * 5000)
    cache = HashCache(engine)
    first = cache.hashes([path])[0]
    assert first.sha256 == hashlib.sha256(b"x" * 5000).hexdigest()
    assert len(counted) == 1

    again = HashCache(engine).hashes([path])[0]
    assert again == first
    assert len(counted) == 1  # unchanged: no read

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched (same content)
    assert cache.hashes([path])[0].sha256 == first.sha256
    assert len(counted) == 2

    st = path.stat()
    path.write_bytes(b"y" * 4000)  # different size, mtime put back: the size alone invalidates
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = cache.hashes([path])[0]
    assert len(counted) == 3
    assert changed.sha256 == hashlib.sha256(b"y" * 4000).hexdigest()
    assert cache.hashes([path])[0] == changed
    assert len(counted) == 3


def test_cache_is_keyed_by_absolute_path_and_survives_reopen(tmp_path: Path, engine, counted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "sub" / "a.ckpt", b"abc")
    monkeypatch.chdir(tmp_path)
    rel = HashCache(engine).hashes(["sub/a.ckpt"])[0]
    assert rel.path == "sub/a.ckpt"
    with read(engine) as conn:
        keys = [r[0] for r in conn.execute(text("SELECT path FROM hash_cache"))]
    assert keys == [str(path.resolve())]
    engine.dispose()
    again = HashCache(open_engine(str(engine.url))).hashes([path])[0]
    assert again.sha256 == rel.sha256
    assert len(counted) == 1


def test_batch_lookup_is_one_query_and_one_write(tmp_path: Path, engine, counted) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "many"
    paths = [_write(folder / f"d{i % 7}" / f"e{i}.pt", f"file {i}".encode()) for i in range(300)]
    statements: list[str] = []

    # Every statement SQLite itself runs (the cache may use the driver's cursor directly).
    # (executemany shows one trace per row: runs of one statement are collapsed, and writes are
    # counted as transactions)
    def _trace(statement: str) -> None:
        word = statement.split()[0].upper()
        if "hash_cache" in statement or statement.upper().startswith("BEGIN IMMEDIATE"):
            word = "WRITE-TX" if word == "BEGIN" else word
            if not statements or statements[-1] != word:
                statements.append(word)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, record, proxy):  # type: ignore[no-untyped-def]
        dbapi_conn.set_trace_callback(_trace)

    cache = HashCache(engine)
    first = cache.hashes(paths)
    assert [h.sha256 for h in first] == [hashlib.sha256(f"file {i}".encode()).hexdigest() for i in range(300)]
    assert statements == ["SELECT", "WRITE-TX", "INSERT"]  # one lookup, one write transaction
    assert len(counted) == 300

    statements.clear()
    second = HashCache(engine).hashes(paths)
    assert second == first
    assert statements == ["SELECT"]
    assert len(counted) == 300

    # a few changed files: still one query, only those re-read
    for p in paths[:3]:
        p.write_bytes(b"changed " + p.name.encode())
    statements.clear()
    third = cache.hashes(paths)
    assert statements == ["SELECT", "WRITE-TX", "INSERT"]
    assert len(counted) == 303
    assert third[0].sha256 == hashlib.sha256(b"changed e0.pt").hexdigest()
    assert third[3:] == first[3:]


def test_hashes_or_errors_keeps_going(tmp_path: Path, engine) -> None:  # type: ignore[no-untyped-def]
    good = _write(tmp_path / "good.pt", b"good")
    out = HashCache(engine).hashes_or_errors([tmp_path / "missing.pt", good, tmp_path])
    assert isinstance(out[0], NotFound) and "missing.pt" in str(out[0])
    assert isinstance(out[1], FileHashes) and out[1].sha256 == hashlib.sha256(b"good").hexdigest()
    assert isinstance(out[2], FormatError)
    with pytest.raises(NotFound):
        HashCache(engine).hashes([tmp_path / "missing.pt"])


def test_file_changed_while_hashing_is_not_cached(tmp_path: Path, engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "growing.safetensors", b"v1")
    real = hashing.hash_file

    def racing(p):  # type: ignore[no-untyped-def]
        result = real(p)
        Path(p).write_bytes(b"v2 longer")  # a download still writing it
        return result

    monkeypatch.setattr(hashing, "hash_file", racing)
    HashCache(engine).hashes([path])
    with read(engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM hash_cache")).scalar() == 0


def test_forget(tmp_path: Path, engine, counted) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "a.pt", b"a")
    cache = HashCache(engine)
    cache.hashes([path])
    found = cache.lookup([path])  # absolute path -> what is cached for it
    assert list(found) == [os.path.abspath(path)] and found[os.path.abspath(path)].sha256 == hashlib.sha256(b"a").hexdigest()
    cache.forget([path])
    assert cache.lookup([path]) == {}
    cache.hashes([path])
    assert len(counted) == 2


# --------------------------------------------------------------------------------------------
# Diffusers folders


def _make_folder(root: Path, order: list[str] | None = None) -> Path:
    files = {
        "model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline"}).encode(),
        "unet/config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": b"unet weights",
        "text_encoder/model.safetensors": b"te weights",
        "vae/diffusion_pytorch_model.safetensors": b"vae weights",
        "tokenizer/vocab.json": b"{}",
        "README.md": b"hello",
    }
    names = order or list(files)
    for name in names:
        _write(root / name, files[name])
    return root


def _expected(root: Path) -> str:
    lines = "".join(
        f"{rel}\t{hashlib.sha256((root / rel).read_bytes()).hexdigest()}\n"
        for rel in sorted(["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"])
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def test_folder_hash_follows_the_documented_rule(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "m")
    h = model_hashes(root)
    assert h.folder and h.old_hash is None
    assert h.sha256 == _expected(root)
    assert h.autov2 == h.sha256[:10] and h.shorthash == h.sha256[:12]
    assert [rel for rel, _ in h.parts] == sorted(rel for rel, _ in h.parts)
    assert folder_sha256(h.parts) == h.sha256


def test_folder_hash_independent_of_creation_order_and_location(tmp_path: Path) -> None:
    a = _make_folder(tmp_path / "a")
    names = ["README.md", "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "text_encoder/model.safetensors",
             "unet/diffusion_pytorch_model.safetensors", "unet/config.json", "model_index.json"]  # fmt: skip
    b = _make_folder(tmp_path / "elsewhere" / "b", order=names)
    assert model_hashes(a).sha256 == model_hashes(b).sha256
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)
    assert model_hashes(moved).sha256 == model_hashes(a).sha256


def test_folder_hash_ignores_copies_variants_configs_and_hidden(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "m")
    base = model_hashes(root).sha256
    _write(root / "unet" / "diffusion_pytorch_model.bin", b"same weights as pickle")
    _write(root / "unet" / "diffusion_pytorch_model.fp16.safetensors", b"half")
    _write(root / "text_encoder" / "model.fp16-00001-of-00002.safetensors", b"half shard")
    _write(root / ".cache" / "huggingface" / "x.safetensors", b"download metadata")
    (root / "unet" / "config.json").write_text('{"changed": true}')
    (root / "README.md").write_text("other text")
    assert model_hashes(root).sha256 == base
    _write(root / "unet" / "diffusion_pytorch_model.safetensors", b"retrained unet")
    assert model_hashes(root).sha256 != base


def test_folder_with_only_variants_or_bins_hashes_those(tmp_path: Path) -> None:
    root = tmp_path / "m"
    _write(root / "model_index.json", b"{}")
    _write(root / "unet" / "diffusion_pytorch_model.fp16.safetensors", b"half")
    _write(root / "text_encoder" / "pytorch_model.bin", b"bin")
    assert folder_weight_files(root) == ["text_encoder/pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors"]


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "m"
    _write(root / "model_index.json", b"{}")
    with pytest.raises(FormatError, match="no weight files"):
        model_hashes(root)


def test_folder_hash_through_cache(tmp_path: Path, engine, counted) -> None:  # type: ignore[no-untyped-def]
    root = _make_folder(tmp_path / "m")
    cache = HashCache(engine)
    first = model_hashes(root, cache)
    assert len(counted) == 3
    assert model_hashes(root, cache) == first
    assert len(counted) == 3
    assert first.sha256 == _expected(root)


def test_tiny_pipeline_folder_hash_is_stable(tiny_sd1_dir: Path, engine) -> None:  # type: ignore[no-untyped-def]
    h = model_hashes(tiny_sd1_dir)
    assert h.folder and h.old_hash is None and len(h.parts) >= 3
    assert any(rel.startswith("unet/") for rel, _ in h.parts)
    assert model_hashes(tiny_sd1_dir, HashCache(engine)).sha256 == h.sha256


def test_single_file_model_hashes(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(2 * MIB)
    h = model_hashes(_write(tmp_path / "m.safetensors", data))
    assert not h.folder and h.parts == ()
    assert h.sha256 == hashlib.sha256(data).hexdigest()
    assert h.old_hash == _ref_old(data)
    assert h.hashes == (h.sha256, h.autov2, h.old_hash)


def test_common_folder_for_range_lookups() -> None:
    from tihub.hashing import _common_folder

    assert _common_folder(["/a/b/c.pt", "/a/b/d/e.pt", "/a/bx.pt"]) == "/a"
    assert _common_folder(["/a/b/c.pt", "/a/b/c2.pt"]) == "/a/b"
    assert _common_folder(["/x/1.pt", "/y/2.pt"]) == ""  # no common folder: IN lists instead


def test_many_files_outside_one_folder(tmp_path: Path, engine, counted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(HashCache, "RANGE_THRESHOLD", 5)
    paths = [_write(tmp_path / f"f{i}.pt", bytes([i])) for i in range(12)]
    cache = HashCache(engine)
    first = cache.hashes(paths)
    monkeypatch.setattr(hashing, "_common_folder", lambda _paths: "")  # force the IN-list path
    assert cache.hashes(paths) == first
    assert len(counted) == 12


def test_parallel_hashing_gives_the_same_answers(tmp_path: Path, engine, counted) -> None:  # type: ignore[no-untyped-def]
    paths = [_write(tmp_path / f"m{i}.safetensors", random.Random(i).randbytes(CHUNK + 70_000 * i)) for i in range(6)]
    paths.insert(3, tmp_path / "missing.safetensors")
    out = HashCache(engine, jobs=4).hashes_or_errors(paths)
    assert isinstance(out[3], NotFound)
    for p, fh in zip(paths, out, strict=True):
        if p.exists():
            data = p.read_bytes()
            assert (fh.sha256, fh.old_hash) == (hashlib.sha256(data).hexdigest(), _ref_old(data))
    assert len(counted) == 6
    assert HashCache(engine, jobs=4).hashes(paths[:3]) == out[:3]
    assert len(counted) == 6


def test_duplicate_paths_are_hashed_once(tmp_path: Path, engine, counted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "a.pt", b"twice")
    monkeypatch.chdir(tmp_path)
    cache = HashCache(engine)
    out = cache.hashes([path, "a.pt", path])
    assert len(counted) == 1
    assert [h.path for h in out] == [str(path), "a.pt", str(path)]
    assert len({h.sha256 for h in out}) == 1
    assert (cache.hits, cache.misses) == (0, 1)
    cache.hashes([path, "a.pt"])
    assert (cache.hits, cache.misses) == (2, 1)
