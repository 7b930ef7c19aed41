"""`tihub farm` on a local Ray instance (CPU, 2 CPUs, started once for this module) with the
tiny SD1 model: a few dozen catalogue entries served over loopback HTTP (good, incompatible,
damaged and hostile files), a worker killed mid-run, a rerun that repeats no work, previews on
PostgreSQL, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("torch")

import hostile_files as H  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from engine_helpers import vec  # noqa: E402
from fileserver import FileServer  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from sqlalchemy import text  # noqa: E402

from tihub.catalog.db import open_engine, read  # noqa: E402
from tihub.catalog.store import Catalog  # noqa: E402
from tihub.config import SourceSpec  # noqa: E402
from tihub.farm import FarmSettings, farm  # noqa: E402
from tihub.sources.base import Candidate, CandidateFile  # noqa: E402

TESTS = Path(__file__).resolve().parent
READER = "farm_helpers:read"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module; workers import tihub and tests/ like we do."""
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TIHUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def server():
    srv = FileServer().start()
    yield srv
    srv.stop()


def st_bytes(tmp: Path, name: str, arr: np.ndarray) -> bytes:
    p = tmp / f"{name}.safetensors"
    save_file({"emb_params": np.asarray(arr, np.float32)}, str(p))
    return p.read_bytes()


def catalogue(url: str, server: FileServer, tmp: Path, prefix: str, good: int = 16) -> dict[str, list[str]]:
    """Ingest a links source of embeddings served by `server`; return the names by what they are."""
    tmp.mkdir(parents=True, exist_ok=True)
    canary = tmp / "canary"
    files: dict[str, tuple[str, bytes, str]] = {}  # name -> (suffix, bytes, claimed sha)
    kinds: dict[str, list[str]] = {"good": [], "incompatible": [], "hostile": [], "damaged": [], "lying": []}
    for i in range(good):
        name = f"{prefix}good{i}"
        files[name] = (".safetensors", st_bytes(tmp, name, vec(1 + i % 2, seed=i) * 0.2), "")
        kinds["good"].append(name)
    for i in range(4):
        name = f"{prefix}wide{i}"
        files[name] = (".safetensors", st_bytes(tmp, name, vec(2, width=48, seed=i)), "")
        kinds["incompatible"].append(name)
    for i, make in enumerate((H.os_system, H.exec_global, H.eval_stack_global, H.getattr_gadget)):
        name = f"{prefix}evil{i}"
        files[name] = (".pt", H.zipped(make(canary)), "")
        kinds["hostile"].append(name)
    bad = vec(2, seed=99)
    bad[0, 0] = np.nan
    files[f"{prefix}nan"] = (".safetensors", st_bytes(tmp, f"{prefix}nan", bad), "")
    kinds["damaged"].append(f"{prefix}nan")
    files[f"{prefix}liar"] = (".safetensors", st_bytes(tmp, f"{prefix}liar", vec(1, seed=5)), "f" * 64)
    kinds["lying"].append(f"{prefix}liar")
    cands = []
    for name, (suffix, data, claimed) in files.items():
        server.add(f"/{name}{suffix}", data)
        sha = claimed or hashlib.sha256(data).hexdigest()
        cands.append(Candidate(remote_id=name, name=name, kind="object",
                               files=[CandidateFile(f"{name}{suffix}", server.url(f"/{name}{suffix}"), size=len(data), sha256=sha)]))
    Catalog(open_engine(url)).ingest(SourceSpec(f"{prefix}src", "links"), cands)
    kinds["canary"] = [str(canary)]
    return kinds


def settings(action: str = "verify", batch: int = 3) -> FarmSettings:
    return FarmSettings(action=action, steps=2, size="64", batch=batch, reader=READER, allow_private=True)


def records(url: str) -> list[tuple]:
    with read(open_engine(url)) as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT e.name, v.result, v.model_hash, v.grid_path FROM verifications v JOIN entries e ON e.id = v.entry_id ORDER BY e.name"))]


def test_verify_a_catalogue_with_a_worker_killed_then_rerun(ray_local, server, tiny_sd1_dir, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    kinds = catalogue(url, server, tmp_path / "files", "v", good=10)
    killed: list[int] = []
    lines: list[str] = []

    def kill_one(p) -> None:  # the first progress report: kill a live worker, mid-run
        lines.append(p.line())
        if not killed and p.remaining > 6 and p.workers:
            killed.append(p.workers[-1])
            os.kill(p.workers[-1], signal.SIGKILL)

    cat = Catalog(open_engine(url))
    run_args = dict(workers=2, gpus_per_worker=0, device="cpu", threads=1, cache_dir=tmp_path / "cache",
                    out_dir=tmp_path / "grids")
    report = farm(cat, [str(tiny_sd1_dir)], settings(), "", {"source": "vsrc"}, on_progress=kill_one, **run_args)
    by = {r.name: r for r in report.results}
    assert killed and report.retried >= 1 and report.workers_started >= 3  # a replacement took over
    assert lines[-1].startswith(f"{report.done} done, {report.failed} failed, 0 remaining") and "entries/s, ETA" in lines[-1]
    assert len(by) == sum(len(v) for k, v in kinds.items() if k != "canary")
    for name in kinds["good"]:
        assert by[name].ok and by[name].result in ("ok", "warning") and Path(by[name].grid).is_file(), by[name]
    for name in kinds["incompatible"]:
        assert not by[name].ok and "width 48" in by[name].error
    for name in kinds["hostile"]:
        assert not by[name].ok and by[name].error.startswith(name)
    assert "NaN" in by["vnan"].error and "sha256" in by["vliar"].error
    assert not Path(kinds["canary"][0]).exists()  # no hostile file ran code
    rows = records(url)
    assert len(rows) == len(by) - 1  # one record per file (the liar never downloaded), no duplicates
    mh = {r[2] for r in rows}
    assert len(mh) == 1 and None not in mh  # the model's hash on every record
    with read(cat.engine) as conn:  # measured widths written back to the files
        widths = dict(conn.execute(text("SELECT file_name, widths FROM files WHERE file_name LIKE 'vgood%'")).all())
    assert set(widths.values()) == {'{"clip_l":32}'}

    again = farm(cat, [str(tiny_sd1_dir)], settings(), "", {"source": "vsrc"}, **{**run_args, "workers": 1})
    assert again.skipped == len(rows)  # nothing done twice ...
    assert [r.name for r in again.results] == ["vliar"] and not again.results[0].ok  # ... but the download
    assert records(url) == rows


def test_previews_on_postgresql_batch_several_embeddings(ray_local, server, tiny_sd1_dir, tmp_path, pg_url) -> None:
    kinds = catalogue(pg_url, server, tmp_path / "files", "p", good=5)
    cat = Catalog(open_engine(pg_url))
    report = farm(cat, [str(tiny_sd1_dir)], settings("preview", batch=5), "pgood", {}, workers=1, gpus_per_worker=0,
                  device="cpu", threads=1, cache_dir=tmp_path / "cache", out_dir=tmp_path / "grids")
    assert sorted(r.name for r in report.results if r.ok) == sorted(kinds["good"])
    with read(cat.engine) as conn:
        rows = conn.execute(text("SELECT path, params, model_hash FROM previews WHERE path IS NOT NULL")).all()
    assert len(rows) == 5 and all(Path(p).is_file() and mh for p, _, mh in rows)
    params = json.loads(rows[0][1])
    assert params["norms"]["clip_l"]["vectors"] and params["farm"]["farm_key"] == settings("preview").key()
    assert len({r.worker for r in report.results}) == 1  # one worker, one task of five embeddings


def test_cli_farm_verify_json(ray_local, server, tiny_sd1_dir, tmp_path, home) -> None:
    from tihub.cli import cli
    from tihub.config import Workspace

    url = Workspace.locate(str(home), None).db_url
    cands = []
    for i in range(2):  # real SD1 files (768 wide): tihub's own readers take them; the tiny model does not
        data = st_bytes(tmp_path, f"real{i}", vec(1, width=768, seed=i))
        server.add(f"/real{i}.safetensors", data)
        cands.append(Candidate(remote_id=str(i), name=f"real{i}", files=[CandidateFile(
            f"real{i}.safetensors", server.url(f"/real{i}.safetensors"), size=len(data),
            sha256=hashlib.sha256(data).hexdigest())]))
    Catalog(open_engine(url)).ingest(SourceSpec("cli", "links"), cands)
    args = ["farm", "verify", "real", "--model", str(tiny_sd1_dir), "--workers", "1", "--gpus-per-worker", "0",
            "--device", "cpu", "--no-grid", "--allow-private", "--json"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    rows = json.loads(res.stdout)
    assert res.exit_code == 1, res.output  # an item failed
    assert sorted(r["name"] for r in rows) == ["real0", "real1"]
    assert all(not r["ok"] and "width 768" in r["error"] and r["result"] == "failed" for r in rows)
    res = CliRunner().invoke(cli, ["farm", "verify", "--model", str(tmp_path / "nope"), "--json"], catch_exceptions=False)
    out = json.loads(res.stdout)
    assert res.exit_code == 1 and out["ok"] is False and "nope" in out["error"]
