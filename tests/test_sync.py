"""`tihub.sync`: per-source isolation, incremental state, unchanged sources, deadlines,
malformed indexer output, and the local source end to end (tmp folder and the real corpus)."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import text

from tihub import sources as registry
from tihub.catalog.db import read
from tihub.catalog.store import Catalog
from tihub.config import Workspace
from tihub.errors import ConfigError, NetworkError
from tihub.sources.base import Candidate, CandidateFile, SourceUnchanged
from tihub.sync import sync

YAML = """\
sources:
  - name: alpha
    kind: git
    url: https://example.org/alpha.git
  - name: beta
    kind: links
    url: https://example.org/beta
  - name: off
    kind: civitai
    enabled: false
"""

BEHAVIOUR: dict[str, object] = {}
SEEN_STATE: dict[str, dict] = {}


def fake_index(spec, ctx):
    """A test indexer driven by BEHAVIOUR[spec.name]."""
    SEEN_STATE[spec.name] = dict(ctx.state)
    how = BEHAVIOUR.get(spec.name, 3)
    ctx.set_state("runs", ctx.state.get("runs", 0) + 1)
    if how == "unchanged":
        raise SourceUnchanged(spec.name)
    if how == "keep-one":
        ctx.keep(f"{spec.name}-0")
        yield Candidate(remote_id=f"{spec.name}-1", name=f"{spec.name}1")
        return
    if how == "partial":
        ctx.partial()
        yield Candidate(remote_id=f"{spec.name}-0", name=f"{spec.name}0")
        return
    if how == "sleep":
        time.sleep(3)
    if how == "bad-type":
        yield {"remote_id": "x"}
        return
    if how == "bad-sha":
        yield Candidate(remote_id="x", name="x", files=[CandidateFile("x.pt", "https://x", sha256="zz")])
        return
    n = how if isinstance(how, int) else 3
    for i in range(n):
        if how == "boom" and i == 1:
            raise NetworkError(f"The request to https://example.org/{spec.name} failed: 503.")
        if how == "bug" and i == 1:
            raise KeyError("items")
        yield Candidate(remote_id=f"{spec.name}-{i}", name=f"{spec.name}{i}",
                        files=[CandidateFile(f"{spec.name}{i}.pt", f"https://example.org/{spec.name}{i}.pt")])


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "sources.yaml").write_text(YAML)
    for kind in ("git", "links", "civitai"):
        monkeypatch.setitem(registry.INDEXERS, kind, fake_index)
    BEHAVIOUR.clear()
    SEEN_STATE.clear()
    return Workspace.locate(root)


def entries_of(cat: Catalog, source: str) -> list[tuple]:
    with read(cat.engine) as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT e.* FROM entries e JOIN sources s ON s.id = e.source_id WHERE s.name = :n ORDER BY e.id"),
            {"n": source})]


def source_row(cat: Catalog, name: str) -> dict:
    return next(s for s in cat.sources() if s["name"] == name)


def test_sync_enabled_sources(ws: Workspace) -> None:
    reports = sync(ws)
    assert [(r.name, r.status, r.new) for r in reports] == [("alpha", "ok", 3), ("beta", "ok", 3)]
    assert "3 new" in reports[0].summary()
    reports = sync(ws)
    assert [(r.new, r.unchanged, r.removed) for r in reports] == [(0, 3, 0), (0, 3, 0)]


def test_failing_source_keeps_previous_state_while_others_sync(ws: Workspace) -> None:
    sync(ws)
    cat = Catalog.open(ws)
    before = entries_of(cat, "alpha")
    state_before = cat.source_state("alpha")
    BEHAVIOUR.update(alpha="boom", beta=5)
    reports = sync(ws)
    alpha, beta = reports
    assert alpha.failed and "503" in alpha.error and alpha.summary().startswith("alpha: failed:")
    assert beta.status == "ok" and beta.new == 2
    assert entries_of(cat, "alpha") == before  # nothing written, nothing marked removed
    assert cat.source_state("alpha") == state_before  # state of a failed run is not saved
    row = source_row(cat, "alpha")
    assert row["last_status"] == "failed" and "503" in row["last_error"]


@pytest.mark.parametrize("how,needle", [
    ("bug", "KeyError"),
    ("bad-type", "instead of a catalogue entry"),
    ("bad-sha", "malformed sha256"),
])
def test_malformed_indexer_output_is_one_sentence(ws: Workspace, how: str, needle: str) -> None:
    sync(ws, ["alpha"])
    cat = Catalog.open(ws)
    before = entries_of(cat, "alpha")
    BEHAVIOUR["alpha"] = how
    (r,) = sync(ws, ["alpha"])
    assert r.failed and needle in r.error and "\n" not in r.error
    assert entries_of(cat, "alpha") == before


def test_deadline(ws: Workspace) -> None:
    BEHAVIOUR["alpha"] = "sleep"
    started = time.monotonic()
    r_alpha, r_beta = sync(ws, deadline_s=0.5)
    assert time.monotonic() - started < 3
    assert r_alpha.failed and "did not finish" in r_alpha.error
    assert r_beta.status == "ok"


def test_state_is_passed_back(ws: Workspace) -> None:
    sync(ws, ["alpha"])
    assert SEEN_STATE["alpha"] == {}
    sync(ws, ["alpha"])
    assert SEEN_STATE["alpha"] == {"runs": 1}
    assert Catalog.open(ws).source_state("alpha") == {"runs": 2}


def test_unchanged_source_keeps_entries(ws: Workspace) -> None:
    sync(ws)
    cat = Catalog.open(ws)
    before = entries_of(cat, "alpha")
    BEHAVIOUR["alpha"] = "unchanged"
    r = sync(ws, ["alpha"])[0]
    assert r.status == "unchanged" and r.total == 3 and "unchanged" in r.summary()
    assert entries_of(cat, "alpha") == before
    assert cat.source_state("alpha") == {"runs": 2}  # state set before raising is kept
    assert source_row(cat, "alpha")["last_status"] == "unchanged"


def test_keep_and_partial(ws: Workspace) -> None:
    sync(ws, ["alpha"])
    BEHAVIOUR["alpha"] = "keep-one"
    r = sync(ws, ["alpha"])[0]
    assert (r.removed, r.total) == (1, 2)  # alpha-2 gone, alpha-0 kept, alpha-1 seen
    BEHAVIOUR["alpha"] = "partial"
    r = sync(ws, ["alpha"])[0]
    assert r.removed == 0


def test_named_sources(ws: Workspace) -> None:
    with pytest.raises(ConfigError, match="known sources: alpha, beta, off"):
        sync(ws, ["nope"])
    assert [r.name for r in sync(ws, ["off"])] == ["off"]  # disabled, but named: synced
    assert [r.name for r in sync(ws, ["beta", "beta"])] == ["beta"]


def test_unknown_kind_in_registry_fails_cleanly(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.INDEXERS, "git", "tihub.sources.no_such_module:index")
    (r,) = sync(ws, ["alpha"])
    assert r.failed and "not available" in r.error


# ----------------------------------------------------------------------------- local source


def write_st(path: Path, **tensors: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


@pytest.fixture
def local_ws(tmp_path: Path, db_url: str) -> Workspace:
    root = tmp_path / "lws"
    emb = root / "embeddings"
    write_st(emb / "watercolor.safetensors", emb_params=np.ones((2, 768), np.float32))
    write_st(emb / "xl" / "detail.safetensors", clip_l=np.ones((1, 768), np.float32),
             clip_g=np.ones((1, 1280), np.float32))
    write_st(emb / "sd2.safetensors", emb_params=np.ones((3, 1024), np.float16))
    (emb / "broken.pt").write_bytes(b"<html>not found</html>")
    (emb / "watercolor.preview.png").write_bytes(b"\x89PNG preview")
    (emb / "notes.txt").write_text("ignored")
    (emb / ".hidden").mkdir()
    write_st(emb / ".hidden" / "h.safetensors", emb_params=np.ones((1, 768), np.float32))
    (root / "sources.yaml").write_text("sources:\n  - name: mine\n    kind: local\n    path: embeddings\n")
    return Workspace.locate(root)


def test_local_big_file_is_streamed_and_a_vanished_one_is_an_error_entry(local_ws: Workspace) -> None:
    from tihub.sources.local import READ_WHOLE, read_candidate

    p = local_ws.root / "embeddings" / "watercolor.safetensors"
    whole = read_candidate(p, "w", p.stat().st_size)
    streamed = read_candidate(p, "w", READ_WHOLE + 1)  # the size picks the streamed hash path
    assert whole.status == streamed.status == "ok"
    assert streamed.files[0].sha256 == whole.files[0].sha256 and streamed.files[0].vectors == 2
    gone = local_ws.root / "embeddings" / "gone.pt"  # listed, then deleted before it was hashed
    c = read_candidate(gone, "gone.pt", READ_WHOLE + 1)
    assert c.status == "error" and str(gone) in c.extra["error"] and c.files[0].sha256 is None


def test_progress_is_reported_and_a_failing_display_does_not_break_the_sync(local_ws: Workspace) -> None:
    seen: list[tuple] = []
    (r,) = sync(local_ws, progress=lambda *a: seen.append(a))
    assert r.status == "ok" and r.new == 4
    assert ("mine", "listing", None, None) in seen
    assert [a[2:] for a in seen if a[2] is not None] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # one per file read
    (local_ws.root / "embeddings" / "new.pt").write_bytes(b"not an embedding")

    def broken(source: str, message: str, done: int | None, total: int | None) -> None:
        if done is not None:
            raise RuntimeError("terminal gone")

    (r,) = sync(local_ws, progress=broken)
    assert (r.status, r.new, r.error) == ("ok", 1, None)


def test_local_source_end_to_end(local_ws: Workspace) -> None:
    (r,) = sync(local_ws)
    assert (r.status, r.new) == ("ok", 4), r.error
    cat = Catalog.open(local_ws)
    by = {x["name"]: x for x in cat.search("", limit=0)}
    assert set(by) == {"watercolor", "detail", "sd2", "broken"}
    assert by["watercolor"]["base"] == "sd1" and by["detail"]["base"] == "sdxl" and by["sd2"]["base"] == "sd2"
    assert all(x["local"] for x in by.values())
    w = cat.entry("watercolor")
    f = w["files"][0]
    assert f["vectors"] == 2 and f["widths"] == {"clip_l": 768} and f["format"] == "safetensors"
    assert f["sha256"] and len(f["sha256"]) == 64
    assert f["local_path"] == str((local_ws.root / "embeddings" / "watercolor.safetensors").resolve())
    b = cat.entry("broken")
    assert b["status"] == "error" and b["extra"]["error"]

    # unchanged folder: nothing is read again, the source reports unchanged
    (r,) = sync(local_ws)
    assert r.status == "unchanged" and r.total == 4

    # one file changed, one removed, one added
    p = local_ws.root / "embeddings" / "watercolor.safetensors"
    write_st(p, emb_params=np.zeros((4, 768), np.float32))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    (local_ws.root / "embeddings" / "sd2.safetensors").unlink()
    write_st(local_ws.root / "embeddings" / "new.safetensors", emb_params=np.ones((1, 768), np.float32))
    (r,) = sync(local_ws)
    assert (r.new, r.updated, r.removed, r.unchanged) == (1, 1, 1, 2), r.summary()
    assert cat.entry("watercolor")["files"][0]["vectors"] == 4
    assert not cat.entry("sd2")["local"]  # gone from disk
    assert cat.entry("sd2")["removed_at"] is not None


def test_local_source_missing_folder(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    (root / "sources.yaml").write_text("sources:\n  - name: mine\n    kind: local\n    path: nowhere\n")
    (r,) = sync(Workspace.locate(root))
    assert r.failed and "not a folder" in r.error and "nowhere" in r.error


def test_local_source_on_real_corpus(corpus: Path, tmp_path: Path) -> None:
    from tihub.sources.local import walk

    root = tmp_path / "w"
    root.mkdir()
    (root / "sources.yaml").write_text(f"sources:\n  - name: corpus\n    kind: local\n    path: '{corpus}'\n")
    ws = Workspace.locate(root)
    (r,) = sync(ws)
    assert r.status == "ok", r.error
    files = walk(corpus)
    assert r.new == len(files) > 20  # every embedding-suffixed file gets an entry
    cat = Catalog.open(ws)
    rows = {x["file_name"]: x for x in cat.search("", limit=0, nsfw=True)}
    with open(corpus / "MANIFEST.tsv", newline="") as fh:
        manifest = list(csv.DictReader(fh, delimiter="\t"))
    checked = 0
    entry = cat.search("", limit=0, nsfw=True, source="corpus")
    for m in manifest:
        kind = m["kind"]
        expect = "sdxl" if "SDXL (768+1280)" in kind else "sd2" if "SD2.x" in kind else "sd1" if "SD1.x" in kind else None
        if expect is None or Path(m["relative_path"]).suffix not in (".pt", ".bin", ".safetensors"):
            continue
        match = [e for e in entry if e["sha256"] == m["sha256"]]
        assert match, f"no entry for {m['relative_path']}"
        if match[0]["status"] == "ok":
            assert match[0]["base"] == expect, m["relative_path"]
            checked += 1
    assert checked >= 20
    assert rows
    (r,) = sync(ws)
    assert r.status == "unchanged"
