"""Crash safety: kill -9 a fetch mid-body at random offsets; two processes fetching one file."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fileserver import FileServer, embedding_bytes
from tihub.download import Downloader, Request

ROOT = Path(__file__).resolve().parent.parent
DATA = embedding_bytes(vectors=24, name="victim")  # ~74 KB
SHA = hashlib.sha256(DATA).hexdigest()

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _part_size(folder: Path) -> int:
    for p in folder.glob(".*.part"):
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0
    return 0


def _child(url: str, folder: str) -> None:
    with Downloader(folder, convert="original", env={}) as d:
        r = d.fetch(Request(url, trusted=True))
    os._exit(0 if r.ok else 1)


@pytest.mark.slow
def test_kill_9_at_random_offsets_then_resume(tmp_path):
    import multiprocessing

    fork = multiprocessing.get_context("fork")  # a forked child starts in milliseconds
    rng = random.Random(1234)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    offsets = []
    resumed = 0
    with FileServer() as srv:
        url = srv.add("/victim.pt", DATA, drip=(1024, 0.002))
        for trial in range(60):  # until 15 resumes from distinct offsets (on a loaded box some children finish first)
            if resumed >= 15 and len(set(offsets)) >= 15:
                break
            target = rng.randrange(1, len(DATA) - 1)
            proc = fork.Process(target=_child, args=(url, str(folder)))
            proc.start()
            deadline = time.monotonic() + 20
            while _part_size(folder) < target and proc.is_alive() and time.monotonic() < deadline:
                time.sleep(0.0005)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the child finished the whole file and is_alive() reaped it: exit code 0
            proc.join()
            assert proc.exitcode in (-signal.SIGKILL, 0)
            at = _part_size(folder)
            offsets.append(at)
            # never a partial or unverified file under a visible name
            shown = [p for p in folder.iterdir() if not p.name.startswith(".")]
            for p in shown:
                assert p.read_bytes() == DATA, f"trial {trial}: {p.name} is partial"
            if shown:
                continue  # killed after the rename: the file is complete and correct
            # the next fetch resumes from what is on disk and ends with the right sha256
            n_before = len(srv.requests_for("/victim.pt"))
            srv.files["/victim.pt"].drip = None  # the resume itself may be fast
            with Downloader(folder, convert="original", env={}) as d:
                r = d.fetch(Request(url, trusted=True, sha256=SHA))
            srv.files["/victim.pt"].drip = (1024, 0.002)
            assert r.status == "fetched", r.error
            assert hashlib.sha256(r.path.read_bytes()).hexdigest() == SHA
            new = srv.requests_for("/victim.pt")[n_before:]
            if at > 0:
                assert new[0].get("Range") == f"bytes={at}-", (trial, at, new[0])
                assert r.resumed_from == at
                resumed += 1
            r.path.unlink()
            assert [p.name for p in folder.iterdir()] == []
    assert len(set(offsets)) >= 15, offsets
    assert resumed >= 15, offsets


TWO = """
import sys
from tihub.download import Downloader, Request
with Downloader(sys.argv[2], env={{}}) as d:
    r = d.fetch(Request(sys.argv[1], trusted=True))
print(r.status, r.error or "")
sys.exit(0 if r.ok else 1)
"""


def test_two_processes_same_file_end_with_one_correct_file(tmp_path):
    folder = tmp_path / "embeddings"
    with FileServer() as srv:
        url = srv.add("/victim.pt", DATA, drip=(4096, 0.005))
        procs = [subprocess.Popen([sys.executable, "-c", TWO.format(), url, str(folder)], env=_env(), stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.split()[0] for o in outs) == ["exists", "fetched"]
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["victim.safetensors"]
    from tihub.formats import read_embedding

    assert read_embedding(folder / "victim.safetensors").vector_count == 24


def test_two_cli_processes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _env()
    env["TIHUB_HOME"] = str(home)
    with FileServer() as srv:
        url = srv.add("/victim.safetensors", DATA, drip=(8192, 0.01))
        cmd = [sys.executable, "-m", "tihub", "fetch", url]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(p.name for p in (home / "embeddings").iterdir()) == ["victim.safetensors"]
    assert (home / "embeddings" / "victim.safetensors").read_bytes() == DATA
