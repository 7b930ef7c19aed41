"""Issue 14, parts 1 and 2: pictures from every source, sidecars, deep sync and the blob cache.

Real HTTP against the loopback Hub and page server, real git repositories, real SQLite, real
embedding files written by tihub's writers and real pictures written by Pillow."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import text

from servers.gitforge import make_repo
from servers.hf import HFFile, HFHub, HFRepo
from servers.pages import PageServer
from tihub.catalog.db import read
from tihub.catalog.store import Catalog
from tihub.cli import cli
from tihub.config import Workspace
from tihub.formats import Embedding, write_embedding
from tihub.sources import _http
from tihub.sync import sync

ORG = "sd-concepts-library"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "BACKOFF", 0.01)


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def embedding_bytes(tmp: Path, name: str, vectors: dict[str, np.ndarray], fmt: str = "diffusers-bin") -> bytes:
    suffix = {"diffusers-bin": ".bin", "a1111": ".pt", "safetensors": ".safetensors"}[fmt]
    p = tmp / f"{name}-{hashlib.sha1(repr(sorted(vectors)).encode()).hexdigest()[:6]}{suffix}"
    write_embedding(Embedding(name=name, vectors=vectors, step=500 if fmt == "a1111" else None,
                              sd_checkpoint="7460a6fa" if fmt == "a1111" else None), p, fmt)
    return p.read_bytes()


def picture(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (640, 480)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


def vec(seed: int, n: int = 1, width: int = 768) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32) * 0.3


def concept(name: str, data: bytes, readme_extra: str = "") -> HFRepo:
    repo = HFRepo(
        id=f"{ORG}/{name}",
        files={
            "README.md": HFFile(f"---\nlicense: mit\n---\n# {name}\n![sample](concept_images/1.png)\n"
                                f"<img src=\"https://images.example.org/{name}.jpg\" alt=x>\n{readme_extra}".encode()),
            "learned_embeds.bin": HFFile(data, lfs=True),
            "token_identifier.txt": HFFile(f"<{name}>".encode()),
            "type_of_concept.txt": HFFile(b"style"),
            "concept_images/0.png": HFFile(picture((200, 20, 20)), lfs=True),
            "concept_images/1.png": HFFile(picture((20, 200, 20)), lfs=True),
        },
        card_data={"license": "mit"},
    )
    repo.touch(len(name))
    return repo


def workspace(home: Path, sources: str) -> Workspace:
    (home / "sources.yaml").write_text("sources:\n" + sources)
    return Workspace.locate(str(home))


def test_hf_deep_sync_pictures_cache_fetch_sidecars_remove(home: Path, tmp_path: Path) -> None:
    cat_toy = embedding_bytes(tmp_path, "cat-toy", {"clip_l": vec(1)})
    big = embedding_bytes(tmp_path, "big", {"clip_l": vec(2, 75)})  # ~230 KB: over the deep limit
    hub = HFHub([concept("cat-toy", cat_toy), concept("big-one", big)], page_size=10)
    with hub as h:
        ws = workspace(home, f"  - {{name: hf, kind: huggingface, author: {ORG}, endpoint: '{h.url}', allow_private: true}}\n")
        (report,) = sync(ws)
        assert report.status == "ok", report.error
        # deep sync read the 4 KB file (one resolve + one CDN hop), never the big one
        assert report.deep["measured"] == 1 and report.deep["bytes"] == len(cat_toy)
        assert "read 1 small files" in report.summary()
        cdn = [p for p in h.server.paths() if p.startswith("/cdn/")]
        assert cdn == [f"/cdn/model~{ORG}/cat-toy/-/learned_embeds.bin"]
        cat = Catalog.open(ws)
        e = cat.entry("cat-toy")
        (f,) = e["files"]
        assert f["sha256"] == hashlib.sha256(cat_toy).hexdigest()
        assert f["widths"] == {"clip_l": 768} and f["vectors"] == 1 and e["base"] == "sd1"
        assert cat.entry("big-one")["files"][0]["widths"] is None  # left for fetch
        # pictures: the concept images, then the README's own (relative resolved, external kept)
        kinds = [(p["kind"], p["url"].rsplit("/", 1)[-1]) for p in e["previews"]]
        assert kinds == [("concept_image", "0.png"), ("concept_image", "1.png"), ("readme", "cat-toy.jpg")]
        with read(cat.engine) as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM file_vectors")).scalar() == 1
        # the bytes are in the content-addressed cache
        blob = home / ".tihub-cache" / "blobs" / f["sha256"][:2] / f["sha256"]
        assert blob.read_bytes() == cat_toy

        # a re-sync after a commit that did not change the file reads nothing again
        repo = h.repos[f"model:{ORG}/cat-toy"]
        repo.touch(99)
        h.server.reset()
        (again,) = sync(ws)
        assert again.status == "ok" and again.deep["measured"] == 0 and again.deep["known"] == 1
        assert not [p for p in h.server.paths() if p.startswith("/cdn/")]

        # fetch: served from the cache (no CDN request), sidecars written beside the file
        h.server.reset()
        code, out, err = run("--home", str(home), "fetch", "cat-toy", "--json")
        assert code == 0, err
        (res,) = json.loads(out)
        assert not [p for p in h.server.paths() if "learned_embeds" in p or p.startswith("/cdn/" + f"model~{ORG}/cat-toy/-/l")]
        target = Path(res["path"])
        meta = json.loads((target.parent / "cat-toy.json").read_text())
        assert meta["sd version"] == "SD1" and meta["activation text"] == "" and meta["preferred weight"] == 0
        assert "Concept <cat-toy>" in meta["description"] and meta["sha256"] == res["sha256"]
        preview = target.parent / "cat-toy.preview.png"
        with Image.open(preview) as im:
            assert im.format == "PNG" and im.getpixel((1, 1)) == (200, 20, 20)  # concept_images/0.png
        # `tihub list` does not take the preview for an embedding
        code, out, err = run("--home", str(home), "list", "--json")
        assert [Path(r["path"]).name for r in json.loads(out)] == [target.name]
        # show lists the pictures; --thumbnails makes WEBP thumbnails (the external one fails in one sentence)
        code, out, err = run("--home", str(home), "show", "cat-toy", "--thumbnails")
        assert code == 0, err
        assert "Previews:" in out and out.count("(concept_image") == 2 and "concept_image" in out and out.count("thumbnail: ") == 3
        thumbs = sorted((home / ".tihub-cache" / "thumbs").glob("*.webp"))
        assert len(thumbs) == 2
        with Image.open(thumbs[0]) as im:
            assert im.format == "WEBP" and max(im.size) == 256
        # remove takes the sidecars along
        code, out, err = run("--home", str(home), "remove", "cat-toy")
        assert code == 0, err
        assert not preview.exists() and not (target.parent / "cat-toy.json").exists()


def test_deep_budget_zero_and_too_small(home: Path, tmp_path: Path) -> None:
    data = embedding_bytes(tmp_path, "a", {"clip_l": vec(3)})
    with HFHub([concept("one", data)]) as h:
        ws = workspace(home, f"  - {{name: hf, kind: huggingface, author: {ORG}, endpoint: '{h.url}', allow_private: true}}\n")
        (r,) = sync(ws, deep_budget=0)
        assert r.status == "ok" and r.deep is None
        assert not [p for p in h.server.paths() if p.startswith("/cdn/")]
        h.repos[f"model:{ORG}/one"].touch(7)
        (r,) = sync(ws, deep_budget=100)
        assert r.deep["over_budget"] == 1 and r.deep["measured"] == 0
        assert "left for a bigger --deep-budget" in r.summary()
        code, out, err = run("--home", str(home), "sync", "--deep-budget", "lots")
        assert code == 2 and "not a size" in err


def test_git_previews_readme_images_and_deep_facts(home: Path, tmp_path: Path) -> None:
    a = embedding_bytes(tmp_path, "bunyip", {"clip_l": vec(4, 2)}, "a1111")
    b = embedding_bytes(tmp_path, "xl", {"clip_l": vec(5), "clip_g": vec(6, 1, 1280)}, "safetensors")
    readme = (b"# Embeddings\n\n## bunyip\nA style. ![grid](img/bunyip-grid.jpg) and "
              b"<img src=\"https://images.example.org/b.png\">\n\n## xl\nNo pictures.\n")
    bare = make_repo(tmp_path / "git", "me/embeds", {
        "README.md": readme,
        "bunyip.pt": a, "bunyip.preview.png": picture((1, 2, 3)),
        "img/bunyip-grid.jpg": picture((9, 9, 9), "JPEG"),
        "sdxl/xl.safetensors": b, "sdxl/xl.preview.webp": picture((4, 5, 6), "WEBP"),
    })
    ws = workspace(home, f"  - {{name: g, kind: git, url: 'file://{bare}', allow_file: true}}\n")
    (r,) = sync(ws)
    assert r.status == "ok", r.error
    assert r.deep["measured"] == 2 and r.deep["requests"] == 0  # the blobs came with the clone
    cat = Catalog.open(ws)
    e = cat.entry("bunyip")
    (f,) = e["files"]
    assert f["widths"] == {"clip_l": 768} and f["vectors"] == 2 and f["step"] == 500 and f["sd_checkpoint"] == "7460a6fa"
    assert [(p["kind"], p["url"].rsplit("path=", 1)[-1]) for p in e["previews"]] == [
        ("preview", "bunyip.preview.png"), ("readme", "img/bunyip-grid.jpg"), ("readme", "https://images.example.org/b.png")]
    xl = cat.entry("xl")
    assert xl["base"] == "sdxl" and xl["files"][0]["widths"] == {"clip_g": 1280, "clip_l": 768}
    assert [p["kind"] for p in xl["previews"]] == ["preview"]


def test_link_page_pictures_deep_read_and_resync(home: Path, tmp_path: Path) -> None:
    data = embedding_bytes(tmp_path, "ink", {"clip_l": vec(7, 3)}, "a1111")
    with PageServer() as srv:
        srv.set("/files/ink.pt", data, "application/octet-stream")
        srv.set("/files/huge.pt", b"\0" * 300_000, "application/octet-stream")
        srv.set("/shots/ink.png", picture((7, 7, 7)), "image/png")
        page = ("<html><body><table><tr><th>Name</th><th>Preview</th><th>Model</th></tr>"
                "<tr><td><a href='/files/ink.pt'>ink</a></td><td><img src='/shots/ink.png' alt='ink sample'></td><td>SDXL</td></tr>"
                "<tr><td><a href='/files/huge.pt'>huge</a></td><td></td><td>NAI</td></tr></table></body></html>")
        url = srv.set("/page", page)
        ws = workspace(home, f"  - {{name: rentry, kind: links, url: '{url}', allow_private: true}}\n")
        (r,) = sync(ws)
        assert r.status == "ok", r.error
        assert r.deep["measured"] == 1
        cat = Catalog.open(ws)
        e = cat.entry("ink")
        assert e["files"][0]["sha256"] == hashlib.sha256(data).hexdigest() and e["files"][0]["vectors"] == 3
        assert [(p["kind"], p["url"]) for p in e["previews"]] == [("link_page", srv.url + "/shots/ink.png")]
        assert cat.entry("huge")["files"][0]["sha256"] is None  # over the 100 KB cap: left for fetch
        # the row says SDXL, the file is SD1 (768 wide): measured facts win, in search --model too
        assert e["base_model"] == "SDXL" and e["base"] == "sd1"
        code, out, err = run("--home", str(home), "search", "", "--model", "sdxl", "--json")
        assert code == 0, err
        assert {r["fit"] for r in json.loads(out) if r["name"] == "ink"} <= {"partial"}  # an SD1 file on SDXL
        code, out, err = run("--home", str(home), "search", "", "--model", "sd1", "--json")
        assert [r["fit"] for r in json.loads(out) if r["name"] == "ink"] == ["same-family"]
        # the page changes (a new row), the linked file does not: it is not read again
        srv.set("/page", page.replace("</table>", "<tr><td><a href='/files/other.pt'>other</a></td></tr></table>"))
        srv.server.reset()
        (r2,) = sync(ws)
        assert r2.deep["known"] == 1 and "/files/ink.pt" not in srv.server.paths()
        assert cat.entry("ink")["files"][0]["vectors"] == 3


def test_local_sidecars_are_read_and_import_copies_them(home: Path, tmp_path: Path) -> None:
    emb = home / "embeddings"
    (emb / "wc.pt").write_bytes(embedding_bytes(tmp_path, "wc", {"clip_l": vec(8)}, "a1111"))
    (emb / "wc.preview.png").write_bytes(picture((3, 3, 3)))
    (emb / "wc.json").write_text(json.dumps({"description": "Watercolour look", "activation text": "wc style",
                                             "preferred weight": 0.8, "sd version": "SD1", "notes": "mine"}))
    ws = workspace(home, "  - {name: local, kind: local, path: embeddings}\n")
    (r,) = sync(ws)
    assert r.status == "ok", r.error
    e = Catalog.open(ws).entry("wc")
    assert e["description"] == "Watercolour look" and e["triggers"]["activation_text"] == "wc style"
    assert e["extra"]["sidecar"]["preferred weight"] == 0.8
    assert [p["kind"] for p in e["previews"]] == ["local"] and e["previews"][0]["path"].endswith("wc.preview.png")
    # import: the sidecars beside the source come along under the new name
    src = tmp_path / "dl"
    src.mkdir()
    (src / "learned.pt").write_bytes(embedding_bytes(tmp_path, "x", {"clip_l": vec(9)}, "a1111"))
    (src / "learned.json").write_text(json.dumps({"activation text": "xx"}))
    (src / "learned.preview.jpg").write_bytes(picture((5, 5, 5), "JPEG"))
    code, out, err = run("--home", str(home), "import", str(src / "learned.pt"), "--name", "xtok")
    assert code == 0, err
    assert json.loads((emb / "xtok.json").read_text()) == {"activation text": "xx"}
    assert (emb / "xtok.preview.jpg").is_file()
    x = Catalog.open(ws).entry("xtok")  # read on import, before any sync
    assert x["triggers"]["activation_text"] == "xx" and [p["kind"] for p in x["previews"]] == ["local"]


def test_preview_fetch_checks_urls_and_refuses_non_pictures(home: Path) -> None:
    from tihub.errors import DownloadError, UnsafeURL
    from tihub.previews import fetch_image, thumbnail

    with PageServer() as srv:
        srv.set("/p.png", picture((1, 1, 1)), "image/png")
        srv.set("/not.png", "<html>login</html>")
        with pytest.raises(UnsafeURL):
            fetch_image(srv.url + "/p.png")  # loopback without allow_private
        with pytest.raises(DownloadError, match="did not answer with a PNG"):
            fetch_image(srv.url + "/not.png", allow_private=True)
        t = thumbnail(home, {"url": srv.url + "/p.png"}, allow_private=True)
        assert t.suffix == ".webp" and t.parent == home / ".tihub-cache" / "thumbs"
        srv.server.reset()
        assert thumbnail(home, {"url": srv.url + "/p.png"}, allow_private=True) == t
        assert srv.server.paths() == []  # cached


def test_blob_cache_rejects_altered_bytes(tmp_path: Path) -> None:
    from tihub.blobcache import BlobCache

    c = BlobCache(tmp_path)
    sha = c.put(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest() and c.get(sha) == b"hello"
    assert c.put(b"hello", "0" * 64) is None
    c.path(sha).write_bytes(b"tampered")
    assert c.get(sha) is None and not c.has(sha)


def test_civitai_pictures_keep_generation_metadata_and_sidecar_keys(home: Path) -> None:
    from servers.civitai import CivitaiAPI
    from tihub.collection import sidecar_values

    with CivitaiAPI(n_models=3) as api:
        ws = workspace(home, f"  - {{name: civitai, kind: civitai, url: '{api.api}', allow_private: true}}\n")
        (r,) = sync(ws)
        assert r.status == "ok", r.error
        code, out, err = run("--home", str(home), "show", "model3v0", "--json")
        assert code == 0, err
        e = json.loads(out)
        pic = next(p for p in e["pictures"] if p.get("generation"))  # the PG one carries its metadata
        assert pic["kind"] == "civitai" and pic["model_hash"] == "38c1ebe3"
        assert pic["generation"]["seed"] == 1234 and pic["generation"]["prompt"]
        values = sidecar_values(Catalog.open(ws).entry("model3v0"), "ab" * 32)
        assert values["activation text"] == "word3, alt3" and values["modelId"] == 3 and values["modelVersionId"] == 300
        assert values["sd version"] == "SDXL" and values["sha256"] == "ab" * 32
