"""Search: FTS5 ranking, filters, NSFW, empty query, limits, hostile input, model filter,
and the LIKE fallback used for non-SQLite databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tihub.catalog.store import Catalog
from tihub.config import SourceSpec, Workspace
from tihub.errors import NotFound
from tihub.sources.base import Candidate, CandidateFile

HOSTILE = ['"', '""', "AND(", "*", "NEAR", "NEAR(a b)", "a OR", "NOT", "title:x", "^a", "-x", "(", ")", "'",
           "a\x00b", "\\", "%", "_", "🙂", "日本語", "ＡＮＤ", "col:*", '"unterminated', "a AND OR NOT b", "x" * 5000]


def c(rid: str, name: str, **kw) -> Candidate:
    widths = kw.pop("widths", None)
    url = kw.pop("url", f"https://example.org/{rid}.pt")
    files = [CandidateFile(f"{name}.pt", url, sha256=kw.pop("sha", None), widths=widths,
                           sd_checkpoint=kw.pop("sd_checkpoint", None), manual=kw.pop("manual", False))]
    return Candidate(remote_id=rid, name=name, files=files, **kw)


@pytest.fixture
def cat(tmp_path: Path, db_url: str) -> Catalog:
    cat = Catalog.open(Workspace.locate(tmp_path / "ws"))
    cat.ingest(SourceSpec("hf", "huggingface"), [
        c("1", "watercolor", title="Watercolor style", kind="style", widths={"clip_l": 768}, tags=["painting"]),
        c("2", "cat-toy", description="a toy that looks like a watercolor cat", kind="object", base_model="SD 1.5"),
        c("3", "xl-style", kind="style", widths={"clip_l": 768, "clip_g": 1280}, title="watercolour XL"),
        c("4", "sd2thing", widths={"clip_h": 1024}),
        c("5", "mystery"),
        c("6", "café-au-lait", title="Coffee"),
    ])
    cat.ingest(SourceSpec("civ", "civitai"), [
        c("10", "easynegative", kind="negative", base_model="SD 1.5", triggers={"a1111": "easynegative"}),
        c("11", "spicy-watercolor", nsfw=True, base_model="SD 1.5"),
        c("12", "megafile", url="https://mega.nz/file/abc", manual=True, status="manual", page_url="https://p/12"),
    ])
    cat.ingest(SourceSpec("rentry", "links", nsfw=True), [c("20", "rentry-thing", base_model="NAI")])
    return cat


def names(rows) -> list[str]:
    return [r["name"] for r in rows]


def test_ranking_prefers_name_then_title_over_description(cat: Catalog) -> None:
    rows = cat.search("watercolor")
    assert names(rows) == ["watercolor", "cat-toy"]  # a name hit beats a description hit
    assert set(names(rows)) == {"watercolor", "cat-toy"}  # nsfw one hidden; "watercolour" differs


def test_prefix_and_multiword(cat: Catalog) -> None:
    assert names(cat.search("waterc"))[0] == "watercolor"
    assert names(cat.search("toy cat")) == ["cat-toy"]  # words AND-ed, any order


def test_nsfw_hidden_unless_asked(cat: Catalog) -> None:
    assert "spicy-watercolor" not in names(cat.search("watercolor"))
    assert "spicy-watercolor" in names(cat.search("watercolor", nsfw=True))
    assert "rentry-thing" not in names(cat.search("", limit=0))  # the whole source is NSFW
    assert "rentry-thing" in names(cat.search("", nsfw=True, limit=0))


def test_empty_query_lists_everything_by_name(cat: Catalog) -> None:
    rows = cat.search("")
    assert names(rows) == sorted(names(rows))
    assert len(rows) == 8


def test_limit_default_and_zero(cat: Catalog) -> None:
    cat.ingest(SourceSpec("many", "git"), [c(f"m{i}", f"many{i:03d}") for i in range(50)])
    assert len(cat.search("")) == 20
    assert len(cat.search("", limit=0)) == 58
    assert len(cat.search("", limit=None)) == 58
    assert len(cat.search("many", limit=5)) == 5


def test_filters(cat: Catalog) -> None:
    assert names(cat.search("", base="sdxl")) == ["xl-style"]
    assert names(cat.search("", base="sd2")) == ["sd2thing"]
    assert set(names(cat.search("", base="sd1"))) == {"watercolor", "cat-toy", "easynegative"}
    assert set(names(cat.search("", source="civ"))) == {"easynegative", "megafile"}
    assert names(cat.search("", kind="negative")) == ["easynegative"]
    assert set(names(cat.search("", kind="style"))) == {"watercolor", "xl-style"}
    assert names(cat.search("", local=True)) == []
    assert cat.search("hf") and all(r["source"] == "hf" for r in cat.search("hf"))  # source name is searchable


def test_result_keys_and_manual_url(cat: Catalog) -> None:
    r = cat.search("megafile")[0]
    for key in ("id", "name", "trigger", "source", "base", "url", "sha256", "local"):
        assert key in r
    assert r["url"] == "https://mega.nz/file/abc" and r["manual"]
    assert cat.search("easynegative")[0]["trigger"] == "easynegative"


def test_unicode_and_diacritics(cat: Catalog) -> None:
    assert names(cat.search("cafe")) == ["café-au-lait"]
    assert names(cat.search("CAFÉ")) == ["café-au-lait"]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_input_never_errors(cat: Catalog, query: str) -> None:
    rows = cat.search(query, nsfw=True, limit=0)
    assert isinstance(rows, list)


def test_model_filter_by_family_and_hash(cat: Catalog) -> None:
    rows = cat.search("", model="sdxl", limit=0)
    assert set(names(rows)) == {"xl-style", "mystery", "café-au-lait", "megafile"}  # + unknown bases
    fit = {r["name"]: r["fit"] for r in rows}
    assert fit["xl-style"] == "same-family" and fit["mystery"] == "unknown"
    assert all("note" in r for r in rows if r["base"] == "unknown")
    sha = "f" * 64
    cat.add_model("sd15", sha, None, "12345678", "sd1", {"clip_l": 768}, "hashed")
    assert set(names(cat.search("", model="12345678", limit=0))) >= {"watercolor", "easynegative"}
    assert "xl-style" not in names(cat.search("", model=sha[:10], limit=0))
    with pytest.raises(NotFound, match="family"):
        cat.search("", model="0123456789")


def test_trained_on_verdict(cat: Catalog) -> None:
    sha = "7460a6fa12" + "0" * 54
    cat.ingest(SourceSpec("a1111", "git"), [c("t", "trained", widths={"clip_l": 768}, sd_checkpoint="7460a6fa12")])
    rows = cat.search("trained", model={"family": "sd1", "sha256": sha})
    assert rows[0]["fit"] == "trained-on"


def test_like_fallback_without_fts(cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Catalog, "fts", property(lambda self: False))
    assert set(names(cat.search("watercolor"))) == {"watercolor", "cat-toy"}
    assert names(cat.search("toy cat")) == ["cat-toy"]
    for q in HOSTILE:
        assert isinstance(cat.search(q), list)
    assert cat.search("%") == [] and cat.search("_") == []


def test_filtered_out_best_matches_do_not_hide_others(cat: Catalog) -> None:
    # the 200 best-ranked matches are NSFW; the one safe match must still come back
    cat.ingest(SourceSpec("lots", "civitai"), [c(f"g{i}", f"glitter{i}", title="glitter glitter", nsfw=True)
                                               for i in range(200)])
    cat.ingest(SourceSpec("one", "git"), [c("s", "safe-one", description="has some glitter in it")])
    assert names(cat.search("glitter", limit=5)) == ["safe-one"]
    assert len(cat.search("glitter", limit=5, nsfw=True)) == 5


def test_bounded_ranking_falls_back_to_full_ranking(cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import tihub.catalog.store as store

    monkeypatch.setattr(store, "RANK_BOUND", 3)
    cat.ingest(SourceSpec("bulk", "git"), [c(f"b{i}", f"bulk{i}", description="common word here") for i in range(12)])
    cat.ingest(SourceSpec("rare", "git"), [c("r", "rare-one", description="common word too")])
    assert len(cat.search("common", limit=5)) == 5  # bounded: enough without a full ranking
    # the filter rejects every bounded candidate: the full ranking still finds the one match
    assert names(cat.search("common", source="rare", limit=5)) == ["rare-one"]
    assert len(cat.search("common", limit=0)) == 13


def test_broad_query_puts_name_hits_first(cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import tihub.catalog.store as store

    monkeypatch.setattr(store, "RANK_BOUND", 3)
    cat.ingest(SourceSpec("bulk", "git"), [c(f"b{i}", f"item{i}", description="sparkle everywhere") for i in range(10)])
    cat.ingest(SourceSpec("z", "git"), [c("s1", "sparkle-long-name"), c("s2", "sparkle")])
    assert names(cat.search("sparkle", limit=3))[:2] == ["sparkle", "sparkle-long-name"]
    assert len(cat.search("sparkle", limit=3)) == 3
