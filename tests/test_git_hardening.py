"""git hardening (issue 11, items 5, 8, 13): blob sizes before reading (a file:// repo brings
every blob), `git+<repo>@<commit>#path=` catalogue URLs fetched through the same hardened git,
and an http(s) remote pinned to the address its check resolved."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from fileserver import embedding_bytes
from servers import Ctx, run_index
from servers.gitforge import GitForge, make_repo
from servers.hostile import rebinding_resolver
from tihub.config import SourceSpec
from tihub.download import Downloader, Request
from tihub.errors import UnsafeURL
from tihub.formats import read_embedding
from tihub.sources import git as gitsrc

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

BIG = 8 * 1024 * 1024
EMB = embedding_bytes("safetensors", name="owl")


def spec(url: str, **options: object) -> SourceSpec:
    return SourceSpec(name="repo", kind="git", options={"url": url, **options}, allow_private=True)


def dl(folder: Path, **kw) -> Downloader:  # type: ignore[no-untyped-def]
    kw.setdefault("retries", 1)
    kw.setdefault("env", {})
    return Downloader(folder, **kw)


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gitbig")
    files = {f"embeddings/big{i}.pt": os.urandom(BIG) for i in range(3)}
    files["embeddings/owl.safetensors"] = EMB
    files["embeddings/link.pt"] = ("symlink", "/etc/passwd")
    bare = make_repo(root, "big/repo", files)
    # a server that ignores the blob filter (git's own default for file:// and most servers
    # without uploadpack.allowFilter): every blob comes with the clone
    subprocess.run(["git", "config", "--unset", "uploadpack.allowFilter"], cwd=bare, check=True)
    return bare


def test_a_file_repo_with_big_blobs_is_indexed_without_reading_them(big_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[bytes] = []
    real_run = gitsrc.Git.run

    def run(self, args, cwd=None, input=None, what="git", stdout=None):  # type: ignore[no-untyped-def]
        if args[:2] == ["cat-file", "--batch"]:
            fed.append(input or b"")
        return real_run(self, args, cwd=cwd, input=input, what=what, stdout=stdout)

    monkeypatch.setattr(gitsrc.Git, "run", run)
    tracemalloc.start()
    try:
        cands = {c.remote_id: c for c in run_index(gitsrc.index, spec(big_repo.as_uri(), allow_file=True), Ctx())}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BIG, f"indexing peaked at {peak} bytes: a big blob was read"
    for i in range(3):
        f = cands[f"embeddings/big{i}.pt"].files[0]
        assert f.size == BIG and f.sha256 is None  # size from --batch-check, content never read
        assert f.hashes["git_blob"].encode() not in b"".join(fed)
    owl = cands["embeddings/owl.safetensors"].files[0]
    assert owl.sha256 == hashlib.sha256(EMB).hexdigest()  # a small embedding is still hashed
    assert "embeddings/link.pt" not in cands


def test_a_git_file_catalogue_url_is_fetched_through_git(big_repo: Path, tmp_path: Path) -> None:
    cands = {c.remote_id: c for c in run_index(gitsrc.index, spec(big_repo.as_uri(), allow_file=True), Ctx())}
    url = cands["embeddings/owl.safetensors"].files[0].url
    assert url.startswith("git+file://")
    with dl(tmp_path / "emb") as d:
        r = d.fetch(Request(url, name="owl", sha256=hashlib.sha256(EMB).hexdigest(), file_name="owl.safetensors"))
    assert r.ok, r.error
    assert r.path is not None and read_embedding(r.path).vector_count == 2
    # too big for an embedding: refused from its size, in one sentence
    big = cands["embeddings/big0.pt"].files[0].url
    with dl(tmp_path / "emb2", max_bytes=1024 * 1024) as d:
        r = d.fetch(Request(big, file_name="big0.pt"))
    assert r.status == "failed" and "more than any embedding" in r.error and "\n" not in r.error, r.error
    assert not [p for p in (tmp_path / "emb2").iterdir() if not p.name.startswith(".")]


def test_git_blob_urls_that_escape_or_name_symlinks_are_refused(big_repo: Path, tmp_path: Path) -> None:
    commit = "0" * 40
    for bad in (f"git+{big_repo.as_uri()}@{commit}#path=../x.pt", f"git+{big_repo.as_uri()}@main#path=a.pt",
                f"git+ext::sh -c touch% /tmp/x@{commit}#path=a.pt", f"git+-u@{commit}#path=a.pt"):
        with pytest.raises(UnsafeURL):
            gitsrc.parse_blob_url(bad) and gitsrc.parse_git_url(gitsrc.parse_blob_url(bad)[0], True, True)
    cands = {c.remote_id: c for c in run_index(gitsrc.index, spec(big_repo.as_uri(), allow_file=True), Ctx())}
    owl_url = cands["embeddings/owl.safetensors"].files[0].url
    link_url = owl_url.replace("owl.safetensors", "link.pt")
    with dl(tmp_path) as d:
        r = d.fetch(Request(link_url, file_name="link.pt"))
    assert r.status == "failed" and "symlink" in r.error, r.error


def test_a_git_https_url_is_fetched_over_smart_http_with_the_blob_filter(tmp_path: Path) -> None:
    make_repo(tmp_path, "o/r", {"e/owl.safetensors": EMB, "e/huge.pt": os.urandom(2 * 1024 * 1024)})
    with GitForge(tmp_path) as forge:
        cands = {c.remote_id: c for c in run_index(gitsrc.index, spec(forge.repo_url("o/r")), Ctx())}
        url = cands["e/owl.safetensors"].files[0].url
        with dl(tmp_path / "emb") as d:
            r = d.fetch(Request(url, file_name="owl.safetensors", allow_private=True))
        assert r.ok, r.error
        huge = url.replace("owl.safetensors", "huge.pt")
        with dl(tmp_path / "emb2", max_bytes=1024 * 1024) as d:
            r = d.fetch(Request(huge, file_name="huge.pt", allow_private=True))
        assert r.status == "failed" and "larger than" in r.error, r.error


def test_a_git_https_remote_connects_to_the_checked_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name answers 127.0.0.1 (treated as public here) to the check and a private address
    afterwards; git itself cannot resolve it at all. The index works only because git connects
    to the checked address, never looking the name up again."""
    import tihub.net as net

    monkeypatch.setattr(net, "_is_private", lambda ip: ip == ipaddress.ip_address("127.0.0.2"))
    make_repo(tmp_path, "o/r", {"e/owl.safetensors": EMB})
    with GitForge(tmp_path) as forge:
        port = forge.url.rsplit(":", 1)[1]
        url = f"http://rebind.test:{port}/o/r.git"
        with rebinding_resolver("rebind.test", "127.0.0.1", "127.0.0.2") as given:
            cands = run_index(gitsrc.index, SourceSpec(name="r", kind="git", options={"url": url}), Ctx())
        assert [c.name for c in cands] == ["owl"]
        assert given == ["127.0.0.1"]  # one lookup, by the check; git connected where it pointed
        with rebinding_resolver("rebind.test", "127.0.0.1", "127.0.0.2"):
            g = gitsrc.parse_git_url(url, False, False)
        assert g.pinned == ("127.0.0.1",)
        assert f"http.curloptResolve=rebind.test:{port}:127.0.0.1" in g.config()
        redirects = [x for x in gitsrc.Git(False, None, "r", g).config if x.startswith("http.followRedirects")]
        assert redirects[-1] == "http.followRedirects=false"  # git applies the last one
