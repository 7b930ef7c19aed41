"""Issue 14, part 5: similar / dupes / explain over real SQLite and real embedding files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from tihub.cli import cli
from tihub.formats import Embedding, write_embedding
from tihub.similar import SimilarityIndex, score, summarize


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def rng_vec(seed: int, n: int = 4, width: int = 768) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def test_the_multi_vector_rule() -> None:
    a = rng_vec(1)
    s = summarize({"clip_l": a})
    # order, count-preserving scaling of each vector, and the overall length do not matter
    assert score(s, summarize({"clip_l": a[::-1] * np.array([[2.0], [0.5], [3.0], [1.0]], np.float32)})) == pytest.approx(1.0, abs=1e-6)
    # an SD1 file against an SDXL file: compared on clip_l only
    xl = summarize({"clip_l": a, "clip_g": rng_vec(2, 4, 1280)})
    assert score(s, xl) == pytest.approx(1.0, abs=1e-6)
    assert score(s, summarize({"clip_h": rng_vec(3, 1, 1024)})) is None  # nothing shared
    assert summarize({"clip_l": np.zeros((2, 768), np.float32)}) == {}  # nothing to compare


def test_index_matches_brute_force_and_groups() -> None:
    items = [(i, {"clip_l": rng_vec(100 + i, 1 + i % 3)}) for i in range(300)]
    items.append((1000, {"clip_l": items[5][1]["clip_l"] * 3}))  # a rescaled copy of item 5
    items.append((1001, {"clip_l": items[5][1]["clip_l"] + 0.01 * rng_vec(9, items[5][1]["clip_l"].shape[0])}))
    idx = SimilarityIndex.build(items)
    q = items[7][1]
    got = idx.query(q, limit=10, exclude=[7])
    sums = [summarize(v) for _, v in items]
    want = sorted(((k, score(summarize(q), s)) for (k, _), s in zip(items, sums) if k != 7), key=lambda t: -t[1])[:10]
    assert [k for k, _ in got] == [k for k, _ in want]
    assert [round(s, 5) for _, s in got] == [round(s, 5) for _, s in want]
    groups = idx.groups(0.95)
    assert [sorted(g["keys"]) for g in groups] == [[5, 1000, 1001]]
    assert groups[0]["max_score"] == pytest.approx(1.0, abs=1e-5)


def write(path: Path, vectors: dict[str, np.ndarray], fmt: str) -> None:
    write_embedding(Embedding(name=path.stem, vectors=vectors), path, fmt)


@pytest.fixture
def library(home: Path, tmp_path: Path) -> Path:
    e = home / "embeddings"
    a = rng_vec(1)
    write(e / "painterly.pt", {"clip_l": a}, "a1111")
    write(e / "painterly-reupload.safetensors", {"clip_l": a[[2, 0, 3, 1]]}, "safetensors")  # renamed, reordered copy
    write(e / "painterly-tuned.safetensors", {"clip_l": a + 0.05 * rng_vec(2)}, "safetensors")  # a light fine-tune
    write(e / "other.safetensors", {"clip_l": rng_vec(3, 2)}, "safetensors")
    write(e / "xl-painterly.safetensors", {"clip_l": a, "clip_g": rng_vec(4, 4, 1280)}, "safetensors")
    write(e / "sd2-thing.safetensors", {"clip_h": rng_vec(5, 1, 1024)}, "safetensors")
    (home / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n")
    code, out, err = run("sync")
    assert code == 0, err
    return home


def test_similar_dupes_cli(library: Path, tmp_path: Path) -> None:
    code, out, err = run("similar", "painterly", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows[:2]] == ["painterly-reupload", "xl-painterly"] or \
        [r["name"] for r in rows[:2]] == ["xl-painterly", "painterly-reupload"]
    assert rows[0]["score"] == pytest.approx(1.0, abs=1e-4) and rows[2]["name"] == "painterly-tuned"
    assert 0.9 < rows[2]["score"] < 0.9999 and rows[-1]["name"] == "other" and rows[-1]["score"] < 0.3
    assert all(r["ok"] and r["path"] and r["sha256"] and r["widths"] for r in rows)
    assert "sd2-thing" not in {r["name"] for r in rows}  # no shared encoder
    code, out, err = run("similar", "painterly", "--limit", "1")
    assert code == 0 and len(out.strip().splitlines()) == 1 and "1.0000" in out
    # a file imported later (never synced) is read into the index on demand
    src = tmp_path / "o2.safetensors"
    write(src, {"clip_l": rng_vec(3, 2) * 1.5}, "safetensors")
    code, out, err = run("import", str(src), "--name", "other-copy")
    assert code == 0, err
    code, out, err = run("dupes", "--json")
    assert code == 0, err
    groups = [sorted(m["name"] for m in g["members"]) for g in json.loads(out)]
    assert groups == [["painterly", "painterly-reupload", "painterly-tuned", "xl-painterly"], ["other", "other-copy"]]
    code, out, err = run("dupes", "--threshold", "0.9999")
    assert code == 0 and "painterly-tuned" not in out and "other-copy" in out
    # failures: one sentence, JSON object with --json
    code, out, err = run("similar", "nothing-like-this", "--json")
    assert code == 1 and json.loads(out)["ok"] is False and "nothing-like-this" in json.loads(out)["error"]


def test_explain_reads_the_token_table_without_torch(library: Path, tmp_path: Path) -> None:
    from tihub.explain import token_strings

    table = np.random.default_rng(0).standard_normal((1000, 768)).astype(np.float16) * 0.02
    ckpt = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": table,
               "model.diffusion_model.out.2.bias": np.zeros(4, np.float16)}, str(ckpt))
    emb = library / "embeddings" / "twowords.safetensors"
    vecs = table[[320, 777]].astype(np.float32) * 3 + 0.001
    write(emb, {"clip_l": vecs}, "safetensors")
    code, out, err = run("explain", str(emb), "--model", str(ckpt), "--json", "--top", "3")
    assert code == 0, err
    rows = json.loads(out)
    words = token_strings()
    assert [r["tokens"][0]["id"] for r in rows] == [320, 777]
    assert rows[0]["tokens"][0]["token"] == words[320].replace("</w>", "") and rows[0]["tokens"][0]["score"] > 0.99
    assert rows[0]["norm"] > rows[0]["model_token_norm"] and rows[0]["encoder"] == "clip_l"
    # an SD2 embedding on an SD1 table: one sentence per vector, exit 1
    code, out, err = run("explain", "sd2-thing", "--model", str(ckpt), "--json")
    assert code == 1 and json.loads(out)[0]["ok"] is False and "clip_h" in json.loads(out)[0]["error"]
    code, out, err = run("explain", "painterly", "--model", str(tmp_path), "--json")
    assert code == 1 and "token table" in json.loads(out)["error"]


def test_cli_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from tihub.cli import cli; "
            "CliRunner().invoke(cli, ['similar', '--help']); CliRunner().invoke(cli, ['outdated', '--help']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_faiss_ivf_path_scores_exactly_what_it_finds() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((100, 768)).astype(np.float32)
    items = [(i, {"clip_l": base[i % 100][None, :] + 0.7 * rng.standard_normal((2, 768)).astype(np.float32)}) for i in range(3000)]
    items.append((9999, {"clip_l": items[3][1]["clip_l"], "clip_g": rng.standard_normal((2, 1280)).astype(np.float32)}))
    exact = SimilarityIndex.build(items, approx=False)
    approx = SimilarityIndex.build(items, approx=True)
    assert set(approx.ann) == {"clip_l", "clip_g"} and not exact.ann
    hits = 0
    for qi in range(0, 3000, 150):
        want = dict(exact.query(items[qi][1], limit=10, exclude=[qi]))
        got = approx.query(items[qi][1], limit=10, exclude=[qi])
        assert all(s == pytest.approx(want.get(k, s), abs=1e-5) for k, s in got)  # found ones are scored exactly
        hits += len(set(want) & {k for k, _ in got})
    assert hits / (20 * 10) >= 0.8
    # a two-encoder query ranks the union of each encoder's candidates by the combined score
    top = approx.query(items[-1][1], limit=3, exclude=[9999])
    assert top[0][0] == 3 and top[0][1] == pytest.approx(1.0, abs=1e-5)


def test_index_round_trips_through_its_disk_cache(tmp_path: Path) -> None:
    items = [(i, {"clip_l": rng_vec(i, 2), **({"clip_g": rng_vec(50 + i, 2, 1280)} if i % 2 else {})}) for i in range(40)]
    idx = SimilarityIndex.build(items, approx=bool(pytest.importorskip("faiss")))
    idx.save(tmp_path / "sim", "fp1")
    assert SimilarityIndex.load(tmp_path / "sim", "fp2") is None  # another catalogue state
    back = SimilarityIndex.load(tmp_path / "sim", "fp1")
    assert back is not None and set(back.ann) == set(idx.ann) == {"clip_l", "clip_g"}
    for q in (items[3][1], items[4][1]):
        a, b = back.query(q, limit=5), idx.query(q, limit=5)
        assert [k for k, _ in a] == [k for k, _ in b] and [s for _, s in a] == pytest.approx([s for _, s in b])
    assert back.groups(0.5) == idx.groups(0.5)


def test_dupes_through_faiss_range_search_match_exact() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    base = rng.standard_normal((400, 768)).astype(np.float32)
    items = [(i, {"clip_l": base[i] + 0.1 * rng.standard_normal((1, 768)).astype(np.float32)}) for i in range(400)]
    items += [(1000 + i, {"clip_l": base[i] + 0.1 * rng.standard_normal((2, 768)).astype(np.float32)}) for i in range(0, 400, 40)]
    exact = SimilarityIndex.build(items, approx=False).groups(0.95)
    approx = SimilarityIndex.build(items, approx=True).groups(0.95)
    assert len(exact) == 10 and [sorted(g["keys"]) for g in approx] == [sorted(g["keys"]) for g in exact]


def test_real_files_easynegative_in_two_containers_are_one_group(home: Path, corpus: Path) -> None:
    import shutil

    e = home / "embeddings"
    shutil.copy(corpus / "fgjd4j23423f__sd" / "embeddings" / "EasyNegative.pt", e / "EasyNegative.pt")
    shutil.copy(corpus / "lazealia__Stable_Diff_WebUI_with_Ext" / "embeddings" / "easynegative.safetensors", e / "en-copy.safetensors")
    for rel in ("lazealia__Stable_Diff_WebUI_with_Ext/embeddings/HyperStylizeV6.pt",
                "lazealia__Stable_Diff_WebUI_with_Ext/embeddings/charturnerv2_1.5.pt"):
        shutil.copy(corpus / rel, e / Path(rel).name)
    (home / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n")
    assert run("sync")[0] == 0
    code, out, err = run("dupes", "--json")
    assert code == 0, err
    (group,) = json.loads(out)  # a pickle and a safetensors file of the same vectors: different bytes, one group
    assert sorted(m["name"] for m in group["members"]) == ["EasyNegative", "en-copy"] and group["min_score"] > 0.9999
    code, out, err = run("similar", "EasyNegative", "--json")
    rows = json.loads(out)
    assert rows[0]["name"] == "en-copy" and rows[0]["sha256"] != rows[1]["sha256"] and rows[1]["score"] < 0.9
