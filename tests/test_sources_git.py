"""The git indexer against real repositories: file:// and smart HTTP on loopback."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from servers import Ctx, run_index
from servers.gitforge import GitForge, commit_more, make_repo
from tihub.config import SourceSpec
from tihub.errors import SourceError, UnsafeURL
from tihub.sources.git import GitURL, index, match_section, parse_git_url, raw_url, readme_sections, section_facts

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

README = b"""# Embeddings

Put them in your embeddings folder.
""" + b"Long introduction. " * 200 + b"""

## Bunyip (Monster Girl Encyclopedia)
Model: Waifu Diffusion v1.2
Trained for 30000 steps with 8 vectors per token.

## Hellhound (Monster Girl Encyclopedia)
Trained on NAI, 40k steps, 16 vectors.

## Hellhound v2 (Monster Girl Encyclopedia)
Model: Yiffy e15
"""
LFS_CONTENT = b"the real hellhound v2 embedding" * 100
POINTER = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(LFS_CONTENT).hexdigest()}\nsize {len(LFS_CONTENT)}\n".encode()
TINY = b"tiny embedding bytes"


def files() -> dict:
    return {
        "README.md": README,
        "embeddings/bunyip-30000.pt": b"PK" + bytes(range(256)) * 40,
        "embeddings/hellhound-40000.pt": b"PK" + bytes(range(255, -1, -1)) * 40,
        "embeddings/hellhound_v2-50000.pt": POINTER,
        "embeddings/tiny.bin": TINY,
        "embeddings/evil.pt": ("symlink", "/etc/passwd"),
        "notes/other.txt": b"not an embedding",
        ".gitattributes": b"embeddings/hellhound_v2-50000.pt filter=lfs diff=lfs merge=lfs -text\n",
    }


def spec(url: str, **options: object) -> SourceSpec:
    return SourceSpec(name="repo", kind="git", options={"url": url, **options}, allow_private=True)


def by_path(cands: list) -> dict:
    return {c.remote_id: c for c in cands}


def test_file_repo_lists_files_hashes_and_readme_facts(tmp_path: Path) -> None:
    bare = make_repo(tmp_path, "viper1/embeds", files())
    url = bare.as_uri()
    ctx = Ctx()
    cands = by_path(run_index(index, spec(url, allow_file=True), ctx))
    assert set(cands) == {"embeddings/bunyip-30000.pt", "embeddings/hellhound-40000.pt", "embeddings/hellhound_v2-50000.pt", "embeddings/tiny.bin"}
    commit = ctx.new_state["commit"]
    b = cands["embeddings/bunyip-30000.pt"]
    assert b.name == "bunyip-30000" and b.triggers == {"a1111": "bunyip-30000"}
    assert b.title == "Bunyip (Monster Girl Encyclopedia)" and b.base_model == "Waifu Diffusion v1.2"
    assert b.files[0].step == 30000 and b.files[0].vectors == 8
    assert b.files[0].url == f"git+{url}@{commit}#path=embeddings/bunyip-30000.pt"
    assert b.files[0].extra["git"] == {"repo": url, "commit": commit, "path": "embeddings/bunyip-30000.pt", "blob": b.files[0].hashes["git_blob"]}
    h = cands["embeddings/hellhound-40000.pt"]
    assert h.title == "Hellhound (Monster Girl Encyclopedia)" and h.files[0].step == 40000 and h.files[0].vectors == 16
    assert h.base_model == "NAI"
    v2 = cands["embeddings/hellhound_v2-50000.pt"]
    assert v2.title.startswith("Hellhound v2") and v2.base_model == "Yiffy e15"
    assert v2.files[0].sha256 == hashlib.sha256(LFS_CONTENT).hexdigest() and v2.files[0].size == len(LFS_CONTENT)
    assert v2.files[0].extra["lfs"] is True
    tiny = cands["embeddings/tiny.bin"]
    assert tiny.files[0].sha256 == hashlib.sha256(TINY).hexdigest() and tiny.files[0].size == len(TINY)
    # Unchanged commit: SourceUnchanged; a new commit is seen.
    ctx2 = ctx.next()
    assert run_index(index, spec(url, allow_file=True), ctx2) is None
    commit_more(tmp_path, "viper1/embeds", {"embeddings/new-1000.pt": b"new" * 1000})
    again = by_path(run_index(index, spec(url, allow_file=True), ctx2.next()))
    assert "embeddings/new-1000.pt" in again and len(again) == 5


def test_file_urls_need_allow_file(tmp_path: Path) -> None:
    bare = make_repo(tmp_path, "a/b", {"x.pt": b"x"})
    with pytest.raises(UnsafeURL, match="allow_file"):
        run_index(index, spec(bare.as_uri()), Ctx())


def test_smart_http_partial_clone_and_resync_requests(tmp_path: Path) -> None:
    make_repo(tmp_path, "viper1/embeds", files())
    with GitForge(tmp_path) as forge:
        url = forge.repo_url("viper1/embeds")
        ctx = Ctx()
        cands = by_path(run_index(index, spec(url), ctx))
        assert len(cands) == 4
        # Big embedding blobs stayed on the server (blob:limit filter): no size known for them,
        # while the LFS pointer and the tiny file were read.
        assert cands["embeddings/bunyip-30000.pt"].files[0].size is None
        assert cands["embeddings/bunyip-30000.pt"].files[0].sha256 is None
        assert cands["embeddings/hellhound_v2-50000.pt"].files[0].sha256 == hashlib.sha256(LFS_CONTENT).hexdigest()
        assert cands["embeddings/bunyip-30000.pt"].base_model == "Waifu Diffusion v1.2"
        # Re-sync of an unchanged repository: only the ls-remote requests.
        forge.server.reset()
        assert run_index(index, spec(url), ctx.next()) is None
        paths = forge.server.paths()
        assert paths and all(p.endswith(("/info/refs", "/git-upload-pack")) for p in paths)
        assert len(paths) <= 2
        # Path globs select files.
        only = run_index(index, spec(url, paths=["embeddings/hell*"]), Ctx())
        assert sorted(c.name for c in only) == ["hellhound-40000", "hellhound_v2-50000"]
        # A GitLab-style raw URL serves the file itself (for the fetcher).
        import httpx

        commit = ctx.new_state["commit"]
        r = httpx.get(f"{forge.url}/viper1/embeds/-/raw/{commit}/embeddings/tiny.bin")
        assert r.content == TINY


def test_missing_repo_and_branch_fail_fast(tmp_path: Path) -> None:
    make_repo(tmp_path, "a/b", {"x.pt": b"x"})
    with GitForge(tmp_path) as forge:
        with pytest.raises(SourceError, match="git ls-remote failed"):
            run_index(index, spec(forge.repo_url("nobody/nothing")), Ctx())
        with pytest.raises(SourceError, match="no branch 'nope'"):
            run_index(index, spec(forge.repo_url("a/b"), branch="nope"), Ctx())
        with pytest.raises(SourceError, match="branch name"):
            run_index(index, spec(forge.repo_url("a/b"), branch="--upload-pack=touch"), Ctx())


@pytest.mark.parametrize(
    "url, match",
    [
        ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
        ("ext::sh -c touch% /tmp/pwned", "whitespace|transport"),
        ("ext::sh", "transport"),
        ("/tmp/some/repo", "local path"),
        ("ftp://example.org/repo.git", "only https"),
        ("ssh://-oProxyCommand=touch/x", "valid host|option"),
        ("https://user:pw@gitlab.com/a/b.git", "credentials"),
        ("http://127.0.0.1:9/a.git", "allow_private"),
        ("git://10.0.0.1/a.git", "allow_private"),
    ],
)
def test_hostile_git_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(UnsafeURL, match=match):
        parse_git_url(url, allow_file=False, allow_private=False)


def test_url_forms_and_raw_urls() -> None:
    g = parse_git_url("git@gitgud.io:viper1/stable-diffusion-embeddings.git", False, True)
    assert g.scheme == "ssh" and g.owner_repo == "viper1/stable-diffusion-embeddings"
    g = GitURL("https://gitgud.io/viper1/stable-diffusion-embeddings.git", "https", "gitgud.io", "viper1/stable-diffusion-embeddings")
    assert raw_url(g, "c0ffee", "embeddings/a b.pt", False) == "https://gitgud.io/viper1/stable-diffusion-embeddings/-/raw/c0ffee/embeddings/a%20b.pt"
    gh = GitURL("https://github.com/o/r", "https", "github.com", "o/r")
    assert raw_url(gh, "c", "x.pt", False) == "https://raw.githubusercontent.com/o/r/c/x.pt"
    assert raw_url(gh, "c", "x.pt", True) == "https://media.githubusercontent.com/media/o/r/c/x.pt"


def test_readme_matching_rules() -> None:
    sections = readme_sections(README.decode())
    assert match_section("hellhound-40000.pt", sections)[0] == "Hellhound (Monster Girl Encyclopedia)"
    assert match_section("hellhound_v2-50000.pt", sections)[0] == "Hellhound v2 (Monster Girl Encyclopedia)"
    assert match_section("unrelated.pt", sections) is None
    setext = readme_sections("Kanata (hololive)\n-----------------\nWD 1.3, 5000 steps\n")
    assert match_section("kanata-hololive.bin", setext)[0] == "Kanata (hololive)"
    assert section_facts(*setext[1]) == {"base_model": "WD 1.3", "step": 5000}


def test_through_sync_new_commits_add_entries(tmp_path: Path) -> None:
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace
    from tihub.sync import sync_source

    ws = Workspace.locate(tmp_path / "ws").ensure()
    cat = Catalog.open(ws)
    bare = make_repo(tmp_path, "o/r", {"README.md": README, "embeddings/bunyip-30000.pt": b"PK" * 3000})
    s = spec(bare.as_uri(), allow_file=True)
    assert sync_source(cat, s, ws).new == 1
    assert sync_source(cat, s, ws).status == "unchanged"
    commit_more(tmp_path, "o/r", {"embeddings/other-2000.pt": b"x" * 5000})
    rep = sync_source(cat, s, ws)
    assert (rep.new, rep.removed) == (1, 0), rep
    assert cat.entry("bunyip-30000")["base_model"] == "Waifu Diffusion v1.2"


def test_forge_tree_api_paginates_like_gitlab(tmp_path: Path) -> None:
    import httpx

    make_repo(tmp_path, "o/r", {f"e/{i}.pt": b"x%d" % i for i in range(5)})
    with GitForge(tmp_path, page_size=2) as forge:
        seen, page = [], "1"
        while page:
            r = httpx.get(f"{forge.url}/api/v4/projects/o%2Fr/repository/tree", params={"recursive": "true", "page": page, "per_page": "2"})
            seen += [e["path"] for e in r.json() if e["type"] == "blob"]
            page = r.headers["X-Next-Page"]
        assert seen == [f"e/{i}.pt" for i in range(5)]
