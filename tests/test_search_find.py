"""Search finds what people type: substrings of names and trigger words, typos in names,
exact names first, inferred kinds, and refusal of unknown --kind/--source values.
Real embedding names from the shared corpus are the held-out cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from tihub.catalog.db import open_engine, read
from tihub.catalog.kinds import infer_kind
from tihub.catalog.store import Catalog
from tihub.config import SourceSpec, Workspace
from tihub.errors import ConfigError
from tihub.sources.base import Candidate, CandidateFile


def c(rid: str, name: str, **kw) -> Candidate:
    return Candidate(remote_id=rid, name=name, files=[CandidateFile(f"{name}.pt", f"https://example.org/{rid}.pt")], **kw)


def names(rows) -> list[str]:
    return [r["name"] for r in rows]


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    cat = Catalog.open(Workspace.locate(tmp_path / "ws"))
    cat.ingest(SourceSpec("links", "links"), [
        c("1", "EasyNegative"),
        c("2", "ng_deepnegative_v1_75t"),
        c("3", "bad-hands-5"),
        c("4", "badhandv4"),
        c("5", "negative"),
        c("6", "watercolor", description="not a negative embedding at all: a style", kind="style"),
        c("7", "charturner", triggers={"a1111": "charturnerv2"}),
        c("8", "photoreal", description="a style, use it in the positive prompt"),
        c("9", "aurora-style", description="put it in the negative prompt to remove auroras"),
    ])
    return cat


def test_substring_inside_names(cat: Catalog) -> None:
    found = names(cat.search("negative", limit=0))
    assert found[0] == "negative"  # the exact name first
    assert {"EasyNegative", "ng_deepnegative_v1_75t"} <= set(found)
    assert found.index("EasyNegative") < found.index("watercolor")  # a name beats a description
    assert {"bad-hands-5", "badhandv4"} <= set(names(cat.search("bad")))
    assert "badhandv4" in names(cat.search("handv"))
    assert names(cat.search("turnerv2")) == ["charturner"]  # inside a trigger word


def test_substring_ranking_same_in_bounded_and_full_paths(cat: Catalog) -> None:
    assert names(cat.search("negative", limit=3))[0] == "negative"
    assert names(cat.search("NEGATIVE", limit=0))[0] == "negative"  # case-blind exact name
    assert names(cat.search("EasyNegative", limit=1)) == ["EasyNegative"]


def test_typo_tolerance_for_names(cat: Catalog) -> None:
    rows = cat.search("easynegatve")
    assert names(rows)[0] == "EasyNegative" and rows[0]["fuzzy"] is True
    assert names(cat.search("watercolr")) == ["watercolor"]
    assert "badhandv4" in names(cat.search("badhandv5"))
    assert cat.search("zzzzqqqq") == []
    assert cat.search("bda") == []  # 3 letters: no typo tolerance (too many near names)
    assert "fuzzy" not in cat.search("watercolor")[0]


def test_typo_tolerance_respects_filters(cat: Catalog) -> None:
    assert cat.search("watercolr", kind="negative") == []
    assert names(cat.search("watercolr", kind="style")) == ["watercolor"]


def test_kind_inferred_for_unlabelled_entries(cat: Catalog) -> None:
    kinds = {r["name"]: r["kind"] for r in cat.search("", limit=0)}
    assert kinds["EasyNegative"] == kinds["ng_deepnegative_v1_75t"] == "negative"
    assert kinds["bad-hands-5"] == kinds["badhandv4"] == kinds["aurora-style"] == "negative"
    assert kinds["watercolor"] == "style"  # a source's own label wins
    assert kinds["charturner"] is None and kinds["photoreal"] is None
    assert set(names(cat.search("", kind="negative", limit=0))) == {
        "EasyNegative", "ng_deepnegative_v1_75t", "bad-hands-5", "badhandv4", "negative", "aurora-style"}


@pytest.mark.parametrize("name,kind", [
    ("SD1.5-HandNeg", "negative"), ("SDXL-HandsNeg", "negative"), ("Pony-ScoresNeg", "negative"),
    ("Pony-ScoresPos", None), ("bad-prompt", "negative"), ("bad-artist", "negative"),
    ("verybadimagenegative_v1.3", "negative"), ("negroni", None), ("neon", None), ("badbunny", None),
])
def test_infer_kind_rules(name: str, kind: str | None) -> None:
    assert infer_kind(name) == kind


def test_unknown_kind_and_source_refused_with_valid_values(cat: Catalog) -> None:
    with pytest.raises(ConfigError, match=r"Unknown kind 'negatives'; use one of: object, style, negative"):
        cat.search("", kind="negatives")
    with pytest.raises(ConfigError, match=r"Unknown source 'civit'; the catalogue has: links"):
        cat.search("x", source="civit")
    assert cat.search("", kind="NEGATIVE", limit=1)  # case-blind


def test_cli_refuses_unknown_kind(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    Catalog.open(Workspace.locate(home)).ingest(SourceSpec("links", "links"), [c("1", "EasyNegative")])
    env = {"TIHUB_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "tihub", "search", "neg", "--kind", "negativ"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "use one of: object, style, negative" in r.stderr and "Traceback" not in r.stderr  # the library's check
    r = subprocess.run([sys.executable, "-m", "tihub", "search", "neg", "--source", "nope", "--json"],
                       capture_output=True, text=True, env=env)
    out = json.loads(r.stdout)  # the CLI contract: an unknown --source is a whole-command failure (exit 1)
    assert r.returncode == 1 and out["ok"] is False and "'nope'" in out["error"] and "links" in out["error"]
    r = subprocess.run([sys.executable, "-m", "tihub", "search", "negative", "--json"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0 and [x["name"] for x in json.loads(r.stdout)] == ["EasyNegative"]


def test_migration_indexes_and_labels_an_existing_catalogue(tmp_path: Path) -> None:
    """A catalogue made before m005: its entries become substring-searchable and get kinds."""
    from tihub.catalog import migrations as M

    ws = Workspace.locate(tmp_path / "ws")
    ws.ensure()
    saved = list(M.MIGRATIONS)
    try:
        M.MIGRATIONS[:] = [m for m in saved if m[0] < "m005"]
        cat = Catalog(open_engine(ws.db_url), ws)
        cat.ingest(SourceSpec("links", "links"), [c("1", "EasyNegative"), c("2", "watercolor")])
        with cat.engine.begin() as conn:  # as an older tihub wrote it: no kind
            conn.execute(text("UPDATE entries SET kind = NULL"))
    finally:
        M.MIGRATIONS[:] = saved
    from tihub.catalog.db import dispose_all

    dispose_all()
    cat = Catalog(open_engine(ws.db_url), ws)
    assert names(cat.search("negative")) == ["EasyNegative"]
    with read(cat.engine) as conn:
        kinds = dict(conn.execute(text("SELECT name, kind FROM entries")).all())
    assert kinds == {"EasyNegative": "negative", "watercolor": None}


def test_real_corpus_names(corpus: Path, tmp_path: Path) -> None:
    """Every embedding file name of the shared corpus as a catalogue entry: the substring cases
    people type find the real negative embeddings."""
    rows = [line.split("\t") for line in (corpus / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    stems = sorted({Path(r[0]).stem for r in rows if Path(r[0]).suffix in (".pt", ".safetensors", ".bin")})
    cat = Catalog.open(Workspace.locate(tmp_path / "ws"))
    cat.ingest(SourceSpec("corpus", "git"), [c(str(i), s) for i, s in enumerate(stems)])
    neg = set(names(cat.search("negative", limit=0)))
    assert {"easynegative", "EasyNegative", "ng_deepnegative_v1_75t", "negative_hand-neg"} <= neg
    assert {"bad-hands-5", "bad-artist", "bad-prompt", "bad-image-v2-39000"} <= set(names(cat.search("bad", limit=0)))
    assert {"SD1.5-HandNeg", "SDXL-HandsNeg"} <= set(names(cat.search("handneg", limit=0))) | set(
        names(cat.search("handsneg", limit=0)))
    assert names(cat.search("easynegative", limit=0))[:2] == ["easynegative", "EasyNegative"] or names(
        cat.search("easynegative", limit=0))[:2] == ["EasyNegative", "easynegative"]
    negatives = set(names(cat.search("", kind="negative", limit=0)))
    assert {"EasyNegative", "bad-hands-5", "SDXL-HandsNeg", "Pony-ScoresNeg", "bad-picture-chill-75v"} <= negatives
    assert not {"HyperStylizeV6", "Pony-ScoresPos", "charturnerv2_1.5", "SDXL-Detail"} & negatives


def test_substring_index_follows_renames_and_bulk_ingest(tmp_path: Path) -> None:
    cat = Catalog.open(Workspace.locate(tmp_path / "ws"))
    cat.ingest(SourceSpec("a", "git"), [c("1", "oldname", triggers={"a1111": "oldtrigger"})])
    assert names(cat.search("dtrig")) == ["oldname"]
    cat.ingest(SourceSpec("a", "git"), [c("1", "freshname", triggers={"a1111": "freshword"})])
    assert cat.search("dtrig") == [] and names(cat.search("shwor")) == ["freshname"]
    with cat.engine.begin() as conn:  # deletes clean the index too
        conn.execute(text("DELETE FROM entry_files"))
        conn.execute(text("DELETE FROM entries"))
        assert conn.execute(text("SELECT COUNT(*) FROM entries_sub")).scalar() == 0
    many = [c(f"m{i}", f"bulkitem{i:04d}xyz") for i in range(300)]  # the bulk ingest path
    cat.ingest(SourceSpec("b", "git"), many)
    assert len(cat.search("item0123x", limit=0)) == 1
    assert len(cat.search("4xyz", limit=0)) == 30


def test_a_kind_a_source_labels_is_valid(cat: Catalog) -> None:
    cat.ingest(SourceSpec("hf", "huggingface"), [c("p1", "someone", kind="person")])  # type_of_concept.txt
    assert names(cat.search("", kind="person")) == ["someone"]
    with pytest.raises(ConfigError, match=r"use one of: object, style, negative, person"):
        cat.search("", kind="persons")
