"""The Python API (`tihub.hub.Hub`) for the long work: export, generate, grid, verify, train, each
with typed results in the CLI's JSON shapes and the one progress callback, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tihub.cli import cli
from tihub.errors import ConfigError, NotFound
from tihub.hub import (DupeGroup, DupeMember, EntryDetail, Hub, InspectResult, LocalFile, ModelHash, OutdatedFile,
                       PromptReport, RemoveResult, SimilarHit, SourceInfo, SyncResult, TrainResult, UpgradeResult, VectorTokens)
from tihub.progress import Event, event_kind

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, str]] = []

    def __call__(self, done: int, total: int | None, message: str) -> None:
        self.calls.append((done, total, message))

    def kinds(self) -> list[str]:
        return [event_kind(m) for _, _, m in self.calls]

    def of(self, kind: str) -> list[Any]:
        return [m for _, _, m in self.calls if event_kind(m) == kind]


def _emb768(home: Path, name: str, n: int = 2) -> Path:
    from safetensors.numpy import save_file

    path = home / "embeddings" / f"{name}.safetensors"
    save_file({"emb_params": np.full((n, 768), 0.01, dtype=np.float32)}, str(path))
    return path


def _cli_json(*args: str) -> Any:
    res = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    return json.loads(res.stdout)


def test_hub_imports_without_torch() -> None:
    code = "import sys, tihub.hub, tihub.runs, tihub.progress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_event_is_a_string_that_says_what_happened() -> None:
    e = Event("preview /x/a-2.preview.png", "preview", path="/x/a-2.preview.png", step=2)
    assert isinstance(e, str) and e == "preview /x/a-2.preview.png"
    assert e.kind == "preview" and e.data == {"path": "/x/a-2.preview.png", "step": 2}
    assert event_kind("downloading") == "status"


def test_export_results_are_the_cli_json_items(home: Path, tmp_path: Path) -> None:
    _emb768(home, "wideone")
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    progress = Recorder()
    results = Hub(home).export(["wideone", "nosuch"], comfy, "comfyui", progress=progress)
    ok, missing = results
    assert ok.ok and ok.status == "exported" and ok.triggers == ["embedding:wideone"]
    assert Path(ok.path or "") == comfy / "models" / "embeddings" / "wideone.safetensors" and Path(ok.path or "").is_file()
    assert not missing.ok and missing.status == "failed" and "nosuch" in (missing.error or "")
    assert progress.calls[-1][:2] == (2, 2)
    # the same item shapes as `tihub export --json` (a second export finds the file there)
    again = [r.as_dict() for r in Hub(home).export("wideone", comfy, "comfyui")]
    assert again == _cli_json("--home", str(home), "export", "wideone", "--to", str(comfy), "--app", "comfyui")
    assert again[0]["status"] == "exists" and again[0]["ok"] is True
    with pytest.raises(ConfigError, match="no such folder"):
        Hub(home).export(["wideone"], tmp_path / "nowhere", "a1111")


def test_generate_tells_each_pass_and_step(home: Path, tiny_sd1_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    progress = Recorder()
    result = Hub(home).generate("a photo of a cat", model=tiny_sd1_dir, steps=3, size=64, seed=7, batch_count=2,
                                device="cpu", out=tmp_path / "out", progress=progress)
    assert [p.seed for p in result.pictures] == [7, 8]
    assert all(Path(p.path).is_file() and "Seed: " in p.infotext for p in result.pictures)
    passes = progress.of("pass")
    assert [str(p) for p in passes] == ["generate", "generate 2"]
    assert [d for d, _, m in progress.calls if event_kind(m) == "status"] == [1, 2, 3, 1, 2, 3]
    d = result.as_dict()
    assert d["ok"] is True and d["model_hash"] == result.model_hash and len(d["pictures"]) == 2
    assert set(d["pictures"][0]) == {"path", "seed", "infotext", "embeddings", "plan", "ok"}
    with pytest.raises(ConfigError, match="cfg"):  # refused before the model loads
        Hub(home).generate("x", model=tiny_sd1_dir, cfg=1e9)


def test_grid_and_standard_preview(home: Path, tiny_sd1_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    hub = Hub(home)
    progress = Recorder()
    g = hub.grid(model=tiny_sd1_dir, prompt="a cat", x="seed:1,2", steps=1, size=64, device="cpu", out=tmp_path / "g",
                 progress=progress)
    assert len(g.cells) == 2 and g.pipeline_calls == 1 and Path(g.path).is_file()
    assert "grid" in [str(p) for p in progress.of("pass")]
    assert set(g.as_dict()) == {"name", "path", "cells", "pipeline_calls", "ok"}
    _emb768(home, "wideone")
    preview = hub.grid("wideone", model=tiny_sd1_dir, steps=1, size=64, device="cpu")
    assert any("wideone" in w for w in preview.warnings)  # 768-wide on a 32-wide model: plain text
    entry = hub.entry("wideone")
    assert entry["pictures"] and entry["pictures"][0]["path"] == preview.path
    with pytest.raises(ConfigError, match="NAME"):
        hub.grid(model=tiny_sd1_dir)


def test_verify_records_and_matches_the_cli(home: Path, tiny_sd1_dir: Path) -> None:
    pytest.importorskip("torch")
    _emb768(home, "toowide")
    hub = Hub(home)
    v = hub.verify("toowide", tiny_sd1_dir, grid=False, device="cpu")
    assert v.ok is False and v.result == "failed" and "width" in (v.error or "")
    assert [c["check"] for c in v.checks][1] == "width"
    assert hub.entry("toowide")["verifications"][0]["result"] == "failed"
    mine = v.as_dict()
    [theirs] = _cli_json("--home", str(home), "verify", "toowide", "--model", str(tiny_sd1_dir), "--no-grid")
    assert list(mine) == list(theirs) and mine["error"] == theirs["error"] and mine["checks"] == theirs["checks"]
    with pytest.raises(NotFound, match="nosuchthing"):
        hub.verify("nosuchthing", tiny_sd1_dir)


def test_train_reports_each_preview_as_it_is_made(home: Path, tmp_path: Path, tiny_sd1_dir: Path) -> None:
    pytest.importorskip("torch")
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(2):
        arr = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(pics / f"{i}-a red fox.png")
    progress = Recorder()
    seen_steps: list[int] = []
    result = Hub(home).train("foxtok", pics, tiny_sd1_dir, steps=4, device="cpu", preview_every=2, preview_steps=1,
                             progress=progress, on_step=lambda info: seen_steps.append(info["step"]))
    assert isinstance(result, TrainResult) and result.ok and Path(result.path).is_file()
    previews = progress.of("preview")
    assert [p.data["step"] for p in previews] == [2, 4]
    assert [p.data["path"] for p in previews] == result.previews
    assert all(Path(p).is_file() for p in result.previews)
    # the preview of step 2 was told before step 4 was (while the run was going on)
    order = [(event_kind(m), d) for d, _, m in progress.calls if event_kind(m) in ("preview", "step")]
    assert order.index(("preview", 2)) < order.index(("step", 4))
    steps = progress.of("step")
    assert [s.data["step"] for s in steps] == [1, 2, 3, 4] == seen_steps and "loss" in steps[-1]
    assert any(str(n).startswith("Run folder: ") for n in progress.of("note"))
    assert set(result.as_dict()) == {"name", "path", "extra_paths", "run_dir", "steps", "pictures", "final_loss", "trained_on",
                                     "checkpoints", "previews", "loss_csv", "loss_png", "seconds", "steps_from", "file_id", "ok"}
    with pytest.raises(ConfigError, match="init-text"):
        Hub(home).train("foxtok2", pics, tiny_sd1_dir, steps=1, init_text="nosuch/file.pt")


def test_the_readme_python_api_example_runs(tmp_path: Path, tiny_sd1_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Python API" block, run as written (HOME and the current folder point at a
    small offline workspace with the tiny model as ./sd15)."""
    pytest.importorskip("torch")
    import re

    from fileserver import embedding_bytes

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    [code] = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    home = tmp_path / "tihub"
    (home / "embeddings").mkdir(parents=True)
    (home / "embeddings" / "mycat.safetensors").write_bytes(embedding_bytes(name="mycat"))
    (tmp_path / "sd15").symlink_to(tiny_sd1_dir, target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code = code.replace('seed=42,', 'seed=42, steps=2, size=64,')  # the fewest steps on the tiny model
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "watercolor-style" in out and "mycat" in out  # the failed fetch's sentence, the verdict
    assert len(list((tmp_path / "tihub" / "outputs").glob("*.png"))) == 1 and out.rstrip().endswith("True")


# ------------------------------------------------------------------ the collection and the catalogue


@pytest.fixture
def mirror(home: Path) -> Iterator[tuple[Any, str]]:
    """A loopback file server with one catalogued file (and a manual download) in `home`."""
    import hashlib

    from fileserver import FileServer, embedding_bytes

    from tihub.catalog.db import open_engine
    from tihub.catalog.store import Catalog
    from tihub.config import SourceSpec, Workspace
    from tihub.sources.base import Candidate, CandidateFile

    srv = FileServer().start()
    (home / "sources.yaml").write_text("sources:\n  - {name: mirror, kind: links, url: 'http://127.0.0.1/', allow_private: true}\n"
                                       "  - {name: local, kind: local, path: embeddings}\n")
    data = embedding_bytes("a1111", name="EasyNeg", sd_checkpoint="925997e9")
    url = srv.add("/files/easynegative.pt", data)
    ws = Workspace.locate(home)
    Catalog(open_engine(ws.db_url), ws).ingest(SourceSpec(name="mirror", kind="links", allow_private=True), [
        Candidate("easy", "easynegative", base_model="SD 1.5", files=[CandidateFile(
            "easynegative.pt", url, len(data), hashlib.sha256(data).hexdigest(), widths={"clip_l": 768}, sd_checkpoint="925997e9")]),
        Candidate("megafile", "megafile", files=[CandidateFile("x.pt", "https://mega.nz/file/abc#k", manual=True)], status="manual"),
    ])
    try:
        yield srv, url
    finally:
        srv.stop()


def test_fetch_many_decides_per_target_in_order(home: Path, mirror: tuple[Any, str]) -> None:
    srv, _ = mirror
    from fileserver import embedding_bytes

    direct = srv.add("/d/thing.pt", embedding_bytes("a1111", name="thing"))
    hub = Hub(home)
    progress = Recorder()
    results = hub.fetch_many(["megafile", "easynegative", "nosuch", direct], progress=progress)
    manual, easy, missing, thing = results
    assert [r.target for r in results] == ["megafile", "easynegative", "nosuch", direct]
    assert not manual.ok and manual.manual and "manual download" in (manual.error or "") and "mega.nz" in (manual.error or "")
    assert manual.as_dict()["status"] == "manual"
    assert easy.ok and easy.status == "fetched" and easy.converted and Path(easy.path or "").name == "easynegative.safetensors"
    assert not missing.ok and "nosuch" in (missing.error or "")
    assert thing.ok and Path(thing.path or "").is_file()
    assert any(getattr(m, "data", {}).get("label") == "fetch 2/2" for _, _, m in progress.calls)
    assert progress.calls[-1][2] == "done"
    again = hub.fetch_many(["easynegative"])
    assert again[0].already_local and again[0].status == "exists"
    with pytest.raises(ConfigError, match="--name only works with one target"):
        hub.fetch_many(["a", "b"], name="x")
    # the CLI prints the same items
    assert [r.as_dict() for r in hub.fetch_many(["easynegative", "megafile"])] == \
        _cli_json("--home", str(home), "fetch", "easynegative", "megafile")


def test_search_show_sources_and_judge_are_the_cli_items(home: Path, mirror: tuple[Any, str]) -> None:
    hub = Hub(home)
    hub.fetch("easynegative")
    assert [h.item() for h in hub.search("", limit=None, pictures=False)] == _cli_json("--home", str(home), "search", "", "--limit", "0")
    assert {h.name: h.fit for h in hub.search("", model="sd1", limit=None)}["easynegative"] == "same-family"
    assert "easynegative" not in {h.name for h in hub.search("", model="sdxl", limit=None)}  # an SD1 file
    with pytest.raises(NotFound, match="--source 'nope' is not known"):
        hub.search("", source="nope")
    with pytest.raises(ConfigError, match="Unknown kind 'foo'"):
        hub.search("", kind="foo")
    shown = hub.show("easynegative")
    assert isinstance(shown, EntryDetail) and shown.name == "easynegative" and shown.files
    assert [shown.as_dict()] == _cli_json("--home", str(home), "show", "easynegative")
    sources = hub.sources()
    assert all(isinstance(s, SourceInfo) for s in sources)
    assert [s.as_dict() for s in sources] == _cli_json("--home", str(home), "sources")
    assert [r.as_dict() for r in hub.local()] == _cli_json("--home", str(home), "list", "--offline")
    verdicts = hub.compat("sdxl")
    assert {r.name: r.fit for r in verdicts}["easynegative"] == "partial" and verdicts[0].model
    cli_items = _cli_json("--home", str(home), "compat", "--model-hash", "sdxl")  # the CLI names the model once, in its header
    assert [{k: v for k, v in r.as_dict().items() if k != "model"} for r in verdicts] == cli_items
    wrote, message = hub.init_sources()
    assert not wrote and "already lists 2 source(s)" in message
    report = hub.judge(["easynegative", "nosuch"], model_hash="sdxl")
    assert report.model.family == "sdxl"
    easy, missing = report.results
    assert easy.ok and easy.fit == "partial" and easy.apps["a1111"]["fit"] == "wont-load" and not missing.ok
    assert [r.as_dict() for r in report.results] == _cli_json("--home", str(home), "compat", "easynegative", "nosuch",
                                                              "--model-hash", "sdxl")
    for_app = hub.judge(["easynegative"], model_hash="sdxl", app="comfyui").results[0]
    assert for_app.fit == "partial" and for_app.as_dict()["app"] == "comfyui"
    with pytest.raises(ConfigError, match="exactly one"):
        hub.judge()


def test_import_list_remove(home: Path, tmp_path: Path) -> None:
    from fileserver import embedding_bytes

    src = tmp_path / "dl" / "mystyle.pt"
    src.parent.mkdir()
    src.write_bytes(embedding_bytes("a1111", name="mystyle"))
    hub = Hub(home)
    [r] = hub.import_files(src, remote=False)
    assert r.ok and r.status == "imported" and Path(r.path or "").parent == home / "embeddings"
    assert set(r.as_dict()) == {"input", "status", "name", "path", "entry", "matched_by", "identified", "source", "page_url",
                                "triggers", "duplicates", "ok"}
    [bad] = hub.import_files(tmp_path / "nothing.pt", remote=False)
    assert not bad.ok and bad.as_dict()["error"]
    [row] = hub.local()
    assert isinstance(row, LocalFile) and row.name == "mystyle" and row.ok and row.path == "mystyle.pt"
    assert row.as_dict()["path"] == str(home / "embeddings" / "mystyle.pt")
    gone = hub.remove("mystyle")
    assert isinstance(gone, RemoveResult) and gone.ok and (gone.path or "").endswith("mystyle.pt") and hub.local() == []
    assert gone.as_dict() == {"name": "mystyle", "path": gone.path, "sidecars": [], "ok": True}
    with pytest.raises(NotFound):
        hub.remove("mystyle")


def test_the_terminal_bar_is_a_progress_callback() -> None:
    import io

    from tihub.progress import Bar

    out = io.StringIO()
    bar = Bar("work", "step", stream=out)  # not a terminal: a line per tenth, notes as lines
    bar(0, None, Event("Loading model m ...", "loading", model="m"))  # said on a terminal only
    bar(0, 4, Event("generate", "pass", number=1))
    for i in range(1, 5):
        bar(i, 4, "")
    bar(0, None, Event("preview /r/a-2.preview.png", "preview", path="/r/a-2.preview.png", step=2))
    bar(0, 2, Event("generate 2", "pass", number=2))
    bar(2, 2, "")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "generate: 20% (1/4 step)" and "generate: 100% (4/4 step)" in lines
    assert "preview /r/a-2.preview.png" in lines and lines[-1] == "generate 2: 100% (2/2 step)"
    assert not any("Loading" in line for line in lines)


def test_sync_tells_each_source_as_it_starts(home: Path) -> None:
    from fileserver import embedding_bytes

    (home / "embeddings" / "mine.safetensors").write_bytes(embedding_bytes(name="mine"))
    (home / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n", encoding="utf-8")
    progress = Recorder()
    [report] = Hub(home).sync(progress=progress, deep_budget=0)
    assert isinstance(report, SyncResult) and report.ok and report.name == "local" and report.summary
    assert "summary" not in report.as_dict() and report.as_dict()["ok"] is True
    passes = progress.of("pass")
    assert [p.data["source"] for p in passes] == ["local"]
    assert progress.kinds().index("note") < progress.kinds().index("pass")  # "local: ..." said first
    assert [h.name for h in Hub(home).search("mine")] == ["mine"]
    with pytest.raises(ConfigError):
        Hub(home).sync(["nosuch"])


def test_fold_sampling_turns_hires_fix_on_with_a1111_defaults() -> None:
    pytest.importorskip("torch")
    from tihub.runs import fold_sampling

    out = fold_sampling({"rng": "cpu", "hires_scale": None, "hires_cfg_scale": 5.0, "hires_prompt": "sharp"})
    assert out["rng"] == "cpu" and not any(k.startswith("hires_") for k in out)
    hires = out["hires"]
    assert (hires.scale, hires.steps, hires.denoising, hires.upscaler, hires.cfg_scale, hires.prompt, hires.sampler) == \
        (2.0, 0, 0.7, "Latent", 5.0, "sharp", None)
    assert fold_sampling({"rng": "gpu", "hires_scale": None, "denoising": None}) == {"rng": "gpu"}


def test_inspect_and_hash_models(home: Path, tmp_path: Path, tiny_sd1_dir: Path) -> None:
    from fileserver import embedding_bytes

    f = tmp_path / "one.pt"
    f.write_bytes(embedding_bytes("a1111", name="one"))
    hub = Hub(home)
    good, missing = hub.inspect([f, tmp_path / "nothing.pt"])
    assert isinstance(good, InspectResult) and good.ok and good.name == "one" and good.vectors >= 1
    assert not missing.ok and "does not exist" in (missing.error or "")
    rows, errors = hub.hash_models([tiny_sd1_dir, tmp_path / "nowhere"])
    [row] = rows
    assert isinstance(row, ModelHash) and row.folder and len(row.autov2) == 10 and errors and "does not exist" in errors[0][1]
    assert hub.model(row.autov2).name == Path(tiny_sd1_dir).name  # recorded: a known model now
    # as_dict() is the `tihub hash --json` item (no `folder`), key order included; the failures follow
    assert "folder" not in row.as_dict()
    want = _cli_json("hash", str(tiny_sd1_dir), str(tmp_path / "nowhere"))
    assert json.dumps(want[0]) == json.dumps(row.as_dict()) and want[1]["ok"] is False and want[1]["error"] == errors[0][1]


def test_allows_private_reads_sources_yaml_again_only_when_it_changed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from tihub.config import Workspace

    yaml = home / "sources.yaml"
    yaml.write_text("sources:\n  - {name: lan, kind: links, url: 'http://10.0.0.5/', allow_private: false}\n", encoding="utf-8")
    hub = Hub(home)
    reads: list[int] = []
    real = Workspace.sources
    monkeypatch.setattr(Workspace, "sources", lambda self: reads.append(1) or real(self))
    assert [hub.allows_private("lan") for _ in range(5)] == [False] * 5 and len(reads) == 1  # read once
    yaml.write_text(yaml.read_text(encoding="utf-8").replace("false", "true "), encoding="utf-8")  # the same size
    st = yaml.stat()
    os.utime(yaml, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a changed stamp, even on a coarse clock
    assert hub.allows_private("lan") is True and len(reads) == 2
    yaml.write_text("sources: [\n", encoding="utf-8")  # broken: no source permits private addresses
    assert hub.allows_private("lan") is False
    yaml.unlink()  # absent: the built-in defaults
    assert hub.allows_private("lan") is False and not hub.allows_private(None)


def test_a_failed_verification_is_one_sentence_with_one_full_stop() -> None:
    from tihub.results import VerifyResult

    v = VerifyResult(name="cat", path=None, model="tiny", model_hash=None, result="failed", checks=[
        {"check": "loads", "status": "failed", "detail": "its width 1024 does not fit the model's 768."},
        {"check": "finite", "status": "ok", "detail": "all finite"},
        {"check": "norms", "status": "failed", "detail": "vector 0 is 40x the model's"}])
    assert v.error == "cat failed verification on tiny: loads: its width 1024 does not fit the model's 768; norms: vector 0 is 40x the model's."
    assert v.as_dict()["error"] == v.error and not v.ok


def test_inspect_results_are_the_cli_json_items(home: Path, tmp_path: Path) -> None:
    """Each InspectResult's `as_dict()` is `tihub inspect --json`'s item, key order included,
    for a good file, a missing one and a file that is no embedding."""
    from fileserver import embedding_bytes

    (tmp_path / "one.pt").write_bytes(embedding_bytes("a1111", name="one"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    paths = [str(tmp_path / "one.pt"), str(tmp_path / "nothing.pt"), str(tmp_path / "junk.safetensors")]
    got = Hub(home).inspect(paths)
    assert [r.ok for r in got] == [True, False, False]
    want = _cli_json("inspect", *paths)
    assert [r.as_dict() for r in got] == want
    assert [json.dumps(r.as_dict()) for r in got] == [json.dumps(w) for w in want]  # same keys, same order


@pytest.fixture
def small_library(home: Path) -> Path:
    """A synced local source: inky, a reordered copy of it, another SD1 file and an SD2 one."""
    from tihub.formats import Embedding, write_embedding

    a = np.random.default_rng(1).standard_normal((3, 768)).astype(np.float32)
    e = home / "embeddings"
    for name, vectors in (("inky", {"clip_l": a}), ("inky-copy", {"clip_l": a[::-1]}),
                          ("other", {"clip_l": np.random.default_rng(2).standard_normal((2, 768)).astype(np.float32)}),
                          ("sd2-thing", {"clip_h": np.random.default_rng(3).standard_normal((1, 1024)).astype(np.float32)})):
        write_embedding(Embedding(name=name, vectors=vectors), e / f"{name}.safetensors", "safetensors")
    (home / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n")
    assert CliRunner().invoke(cli, ["sync"], catch_exceptions=False).exit_code == 0
    return home


def test_similar_hits_are_the_cli_json_items(small_library: Path) -> None:
    """`Hub.similar` gives SimilarHits, best first, whose `as_dict()` is `tihub similar --json`'s item."""
    hits = Hub(small_library).similar("inky")
    assert all(isinstance(h, SimilarHit) for h in hits)
    assert hits[0].name == "inky-copy" and hits[0].score == pytest.approx(1.0, abs=1e-3) and hits[0].vectors == 3
    want = _cli_json("similar", "inky")
    assert [json.dumps(h.as_dict()) for h in hits] == [json.dumps(w) for w in want]


def test_dupe_groups_are_the_cli_json_items(small_library: Path) -> None:
    """`Hub.dupes` gives DupeGroups of DupeMembers; `as_dict()` is `tihub dupes --json`'s item."""
    [group] = Hub(small_library).dupes(0.99)
    assert isinstance(group, DupeGroup) and group.group == 1 and all(isinstance(m, DupeMember) for m in group.members)
    assert sorted(m.name or "" for m in group.members) == ["inky", "inky-copy"] and group.min_score >= 0.99
    assert json.dumps(_cli_json("dupes", "--threshold", "0.99")) == json.dumps([group.as_dict()])


def test_explained_vectors_are_the_cli_json_items(small_library: Path, tmp_path: Path) -> None:
    """`Hub.explain` gives one VectorTokens per vector (a failed one per encoder the model lacks);
    `as_dict()` is `tihub explain --json`'s item."""
    from safetensors.numpy import save_file

    table = np.random.default_rng(0).standard_normal((1000, 768)).astype(np.float16) * 0.02
    ckpt = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": table,
               "model.diffusion_model.out.2.bias": np.zeros(4, np.float16)}, str(ckpt))
    rows = Hub(small_library).explain("inky", ckpt, top=3)
    assert [(r.name, r.ok, r.index, len(r.tokens)) for r in rows] == [("inky", True, i, 3) for i in range(3)]
    assert all(isinstance(r, VectorTokens) for r in rows)
    assert json.dumps(_cli_json("explain", "inky", "--model", str(ckpt), "--top", "3")) == json.dumps([r.as_dict() for r in rows])
    [bad] = Hub(small_library).explain("sd2-thing", ckpt)
    assert not bad.ok and bad.encoder == "clip_h" and "clip_h" in (bad.error or "")
    assert json.dumps(_cli_json("explain", "sd2-thing", "--model", str(ckpt))) == json.dumps([bad.as_dict()])


def test_outdated_files_are_the_cli_json_items(home: Path) -> None:
    """`Hub.outdated` gives OutdatedFiles (current ones too); `as_dict()` is `tihub outdated --json`'s
    item, which lists only the files that are not current unless --all."""
    from tihub.catalog.store import Catalog
    from tihub.config import SourceSpec, Workspace
    from tihub.formats import Embedding, write_embedding
    from tihub.sources.base import Candidate, CandidateFile
    from tihub.updates import record_origin

    def cand(vid: int, sha: str) -> Candidate:
        return Candidate(remote_id=f"7@{vid}", name="easyneg", base_model="SD 1.5",
                         files=[CandidateFile("easyneg.safetensors", f"https://civitai.com/api/download/models/{vid}", sha256=sha)],
                         extra={"modelId": 7, "versionId": vid, "version": f"v{vid}"})

    ws = Workspace.locate(str(home))
    ws.ensure()
    cat = Catalog.open(ws)
    spec = SourceSpec(name="civitai", kind="civitai", options={})
    cat.ingest(spec, [cand(100, "a" * 64)])
    p = home / "embeddings" / "easyneg.safetensors"
    write_embedding(Embedding(name="easyneg", vectors={"clip_l": np.ones((2, 768), np.float32)}), p, "safetensors")
    record_origin(cat, p, "a" * 64, cat.entry("easyneg")["id"], "https://civitai.com/api/download/models/100")
    [current] = Hub(home).outdated()
    assert isinstance(current, OutdatedFile) and current.status == "current" and current.reason is None
    assert _cli_json("outdated") == [] and _cli_json("outdated", "--all") == [current.as_dict()]
    cat.ingest(spec, [cand(100, "a" * 64), cand(200, "b" * 64)])  # a newer version for the same base
    [newer] = Hub(home).outdated()
    assert newer.status == "newer" and newer.latest and newer.latest["sha256"] == "b" * 64 and newer.name == "easyneg"
    assert json.dumps(_cli_json("outdated")) == json.dumps([newer.as_dict()])


def test_upgrade_results_are_the_cli_json_items(home: Path, tmp_path: Path) -> None:
    """`Hub.upgrade` gives UpgradeResults: a name tihub did not fetch fails, a current file is
    not upgraded, a file with newer upstream bytes is; `as_dict()` is `tihub fetch --upgrade
    --json`'s item (a loopback Hugging Face hub)."""
    from servers.hf import HFHub
    from test_knowledge_pictures import ORG, concept, vec
    from test_knowledge_pictures import embedding_bytes as emb_bytes

    old, new = emb_bytes(tmp_path, "inky", {"clip_l": vec(1)}), emb_bytes(tmp_path, "inky", {"clip_l": vec(2)})
    with HFHub([concept("inky", old), concept("still", emb_bytes(tmp_path, "s", {"clip_l": vec(3)}))]) as h:
        (home / "sources.yaml").write_text(
            f"sources:\n  - {{name: hf, kind: huggingface, author: {ORG}, endpoint: '{h.url}', allow_private: true}}\n")
        hub = Hub(home)
        assert all(r.ok for r in hub.sync()) and all(f.ok for f in hub.fetch_many(["inky", "still"]))
        repo = h.repos[f"model:{ORG}/inky"]
        repo.files["learned_embeds.bin"].data = new
        repo.touch(42)
        assert all(r.ok for r in hub.sync())
        nosuch, still = hub.upgrade(["nosuch", "still"])
        assert isinstance(nosuch, UpgradeResult) and not nosuch.ok and nosuch.path is None
        assert "nothing to upgrade" in (nosuch.error or "")
        assert still.ok and not still.upgraded and still.status == "current"
        assert json.dumps(_cli_json("fetch", "--upgrade", "nosuch", "still")) == json.dumps([nosuch.as_dict(), still.as_dict()])
        [inky] = hub.upgrade(["inky"], keep_old=True)
        assert inky.ok and inky.upgraded and inky.status == "upgraded"
        assert inky.old_path and inky.old_path.endswith("inky.v1.safetensors")
        assert list(inky.as_dict()) == ["ok", "name", "path", "sha256", "status", "upgraded", "old_path", "reason"]
        assert _cli_json("outdated") == []


def test_prompt_report_is_the_cli_json_object(small_library: Path) -> None:
    """`Hub.prompt` (no model: no torch) gives a PromptReport whose `as_dict()` is `tihub prompt
    --json`'s object, with the embeddings of embeddings/ it uses by file name."""
    text = "a (inky:1.2), [cat:dog:0.5] painting BREAK other"
    report = Hub(small_library).prompt(text, 10)
    assert isinstance(report, PromptReport) and report.steps == 10 and len(report.schedule) == 2
    assert [(e.name, e.vectors) for e in report.embeddings] == [("inky", 3), ("other", 2)]
    assert report.embeddings[0].path and report.embeddings[0].path.endswith("inky.safetensors")
    assert json.dumps(_cli_json("prompt", text, "--steps", "10")) == json.dumps(report.as_dict())
