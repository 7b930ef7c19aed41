"""Test-wide settings: offline, one torch thread, an isolated workspace per test."""

from __future__ import annotations

import os

# Before any Hugging Face import: never reach the Hub, never phone home.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# CLI lookups of unknown hashes on Civitai stay off unless a test turns them on (loopback only).
os.environ["TIHUB_OFFLINE"] = "1"
os.environ.pop("TIHUB_HOME", None)
os.environ.pop("TIHUB_DB", None)
os.environ.pop("CIVITAI_TOKEN", None)
os.environ.pop("HF_TOKEN", None)

import itertools  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgserver  # noqa: E402

ENGINES = ["sqlite", "postgresql"]
_schemas = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def corpus() -> Path:
    """The shared corpus of real files; tests using it skip where it is absent."""
    if not (CORPUS / "MANIFEST.tsv").exists():
        pytest.skip(f"the shared corpus is absent ({CORPUS}); CI has it")
    return CORPUS


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace, used as TIHUB_HOME."""
    ws = tmp_path / "home"
    (ws / "embeddings").mkdir(parents=True)
    monkeypatch.setenv("TIHUB_HOME", str(ws))
    return ws


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-shaped diffusers folder (random weights, real CLIP vocabulary)."""
    from tihub.engine.tiny import build_tiny_sd1

    return build_tiny_sd1(tmp_path_factory.mktemp("models") / "tiny-sd1")


@pytest.fixture(scope="module")
def sd1(tiny_sd1_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny SD1 model loaded on the CPU, shared by one test module."""
    from tihub.engine.models import load_model

    return load_model(tiny_sd1_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-shaped diffusers folder."""
    from tihub.engine.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(autouse=True)
def _fresh_engines():
    """Each test gets its own catalogue connections."""
    yield
    try:
        from tihub.catalog.db import dispose_all

        dispose_all()
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def pg_server(worker_id: str) -> Iterator[pgserver.PgServer]:
    """One throwaway PostgreSQL server per test process (initdb + pg_ctl into a temp folder on a
    loopback port), with a `tihub_<worker>` database; skipped with the reason where no server
    binary or no psycopg exists."""
    reason = pgserver.unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = pgserver.start()
    server.database = f"tihub_{worker_id}"
    server.create_database(server.database)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> str:
    """A fresh, empty catalogue on the PostgreSQL server: its own schema (fast to make)."""
    schema = f"t{next(_schemas)}"
    pg_server.execute(f"CREATE SCHEMA {schema}", pg_server.database)
    return pg_server.url(pg_server.database, schema)


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a catalogue test on both engines: the URL of a fresh catalogue, SQLite (in tmp_path)
    or PostgreSQL. On PostgreSQL it is also $TIHUB_DB, so a workspace (and a `python -m tihub`
    child) uses it; on SQLite the workspace keeps its own `catalog.db`."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("TIHUB_DB", url)
    return url
