"""Hostile names never escape the target folder, never become device names or hidden files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fileserver import FileServer, embedding_bytes
from tihub.collection import import_file
from tihub.download import Downloader, Request
from tihub.errors import UnsafeFile
from tihub.naming import MAX_STEM_BYTES, inside, is_generic_stem, safe_filename, safe_stem, token_stem

HOSTILE = [
    "../x",
    "../../../../etc/passwd",
    "/etc/passwd",
    "C:\\x",
    "C:x",
    "D:\\Windows\\System32\\evil",
    "\\\\server\\share\\x",
    "..\\..\\x",
    "a\x00b",
    "CON",
    "nul.pt",
    "com1",
    "LPT9.safetensors",
    "x" * 400,
    "é" * 300,
    "..",
    ".",
    "...",
    "",
    "   ",
    "a\uff0f..\uff0fb",  # fullwidth solidus
    "..\uff3c..\uff3cx",  # fullwidth reverse solidus
    "a\u2215b",  # division slash
    "evil\u202egnp.pt",  # right-to-left override
    "trailing. . .",
    "name \t",
    ".hidden",
    "%2e%2e%2fx",
    "x\r\ny",
    "\x1b[31mred\x1b[0m",
    'a<b>c:d"e|f?g*h',
    "e\u0301",  # NFD e + combining acute
]

DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_stem_is_one_harmless_component(name):
    s = safe_stem(name)
    assert s and s not in (".", "..")
    assert not any(c in s for c in "/\\\x00\uff0f\uff3c\u2215:<>\"|?*")
    assert all(c.isprintable() for c in s)
    assert "\u202e" not in s
    assert not s.startswith((".", " ")) and not s.endswith((".", " "))
    assert s.split(".", 1)[0].upper() not in DEVICES
    assert len(s.encode("utf-8")) <= MAX_STEM_BYTES


def test_specific_reductions():
    assert safe_stem("../../../../etc/passwd") == "passwd"
    assert safe_stem("C:\\x") == "x"
    assert safe_stem("\\\\server\\share\\x") == "x"
    assert safe_stem("CON") == "_CON"
    assert safe_stem("nul.pt") == "_nul.pt"
    assert safe_stem("..") == "embedding"
    assert safe_stem("e\u0301") == "\u00e9"  # NFC
    assert safe_stem("trailing. . .") == "trailing"
    assert safe_filename("thing.safetensors", ".safetensors") == "thing.safetensors"
    assert safe_filename("../thing", ".pt") == "thing.pt"
    assert token_stem("<cat-toy>") == "cat-toy" and token_stem("<>") is None
    assert is_generic_stem("learned_embeds") and not is_generic_stem("cat-toy")


def test_inside_refuses_escapes(tmp_path):
    for bad in ("../x.pt", "..", ".", "", "a/b.pt", "a\\b.pt", "a\x00.pt"):
        with pytest.raises(UnsafeFile):
            inside(tmp_path, bad)
    (tmp_path / "link.pt").symlink_to("/etc/hostname")
    with pytest.raises(UnsafeFile):
        inside(tmp_path, "link.pt")
    assert inside(tmp_path, "ok.pt") == (tmp_path / "ok.pt").resolve()


def _all_files(root: Path) -> set[Path]:
    return {Path(dp) / f for dp, _, fs in os.walk(root) for f in fs}


def test_hostile_names_through_fetch_stay_inside(tmp_path):
    data = embedding_bytes()
    root = tmp_path / "root"
    target = root / "embeddings"
    target.mkdir(parents=True)
    (root / "sentinel").write_text("x")
    before = _all_files(tmp_path)
    with FileServer() as srv:
        url = srv.add("/e.safetensors", data)
        with Downloader(target, env={}, retries=0) as d:
            # each hostile name, as --name / a catalogue entry name; force so clashes overwrite
            for i, name in enumerate(HOSTILE):
                r = d.fetch(Request(url, trusted=True, name=name, entry_name=name))
                assert r.status in ("fetched", "exists"), (name, r.error)
                assert r.path.parent == target.resolve(), name
                r.path.unlink()
    after = _all_files(tmp_path)
    assert after == before, after - before


def test_hostile_remote_file_names_stay_inside(tmp_path):
    data = embedding_bytes()
    target = tmp_path / "emb"
    with FileServer() as srv:
        for i, name in enumerate(["..%2F..%2Fevil.pt", "%2e%2e%2f%2e%2e%2fevil.pt", "CON.safetensors", "..%5C..%5Cevil.pt"]):
            url = srv.add(f"/d{i}/{name}", data)
            with Downloader(target, env={}, retries=0) as d:
                r = d.fetch(Request(url, trusted=True))
            assert r.status == "fetched", r.error
            assert r.path.parent == target.resolve()
            r.path.unlink()
    assert {p.name for p in tmp_path.iterdir()} == {"emb"}


def test_hostile_names_through_import_stay_inside(tmp_path):
    src = tmp_path / "src.safetensors"
    src.write_bytes(embedding_bytes())
    target = tmp_path / "emb"
    for name in HOSTILE:
        r = import_file(src, target, None, name=name)
        assert r.status == "imported", (name, r.error)
        assert r.path.parent == target.resolve()
        r.path.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "src.safetensors"]
