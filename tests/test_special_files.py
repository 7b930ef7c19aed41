"""FIFOs and other special files in embeddings/ (issue 11, item 12): list, inspect, hash, import
and a local sync each refuse them in one sentence instead of waiting forever for a writer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fileserver import embedding_bytes
from tihub.errors import FormatError
from tihub.formats import read_embedding
from tihub.hashing import hash_file

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    emb = tmp_path / "ws" / "embeddings"
    emb.mkdir(parents=True)
    (emb / "good.safetensors").write_bytes(embedding_bytes("safetensors", name="good"))
    os.mkfifo(emb / "pipe.pt")
    # only the local source: `tihub sync` must not reach the internet
    (tmp_path / "ws" / "sources.yaml").write_text("sources:\n  - {name: local, kind: local, path: embeddings}\n")
    return tmp_path / "ws"


def tihub(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tihub", "--home", str(home), *args], capture_output=True, text=True, timeout=120, env=env)


def test_the_library_refuses_a_fifo_without_blocking(home: Path) -> None:
    fifo = home / "embeddings" / "pipe.pt"
    with pytest.raises(FormatError, match="FIFO"):
        read_embedding(fifo)
    with pytest.raises(FormatError, match="FIFO"):
        hash_file(fifo)


@pytest.mark.parametrize("args", [("list",), ("list", "--json"), ("inspect", "embeddings"), ("hash", "embeddings"), ("sync",)])
def test_commands_finish_and_name_the_fifo(home: Path, args: tuple[str, ...]) -> None:
    argv = [a if a != "embeddings" else str(home / "embeddings") for a in args]
    proc = tihub(home, *argv)  # before the fix this waited for a writer until the 120 s timeout
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "internal error" not in out, out
    if args[0] in ("inspect", "hash"):
        assert "FIFO" in out or "not a regular file" in out, out
