"""Hostile files: every one is refused with a FormatError subclass, nothing from it runs (a canary
file the payloads would create never appears), and reading it keeps memory bounded."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the builder sits next to this file
import hostile_files  # noqa: E402
from hostile_files import build_all, builders, os_system, zipped  # noqa: E402
from tihub.errors import FormatError, UnsafeFile  # noqa: E402
from tihub.formats import read_embedding, read_safetensors_header, tensor_shapes  # noqa: E402

MEMORY_LIMIT = 64 * 1024 * 1024
NAMES = sorted(builders())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("hostile")
    canary = root / "CANARY"
    files = build_all(root / "files", canary)
    # warm up lazy imports (Pillow) so memory deltas measure the read only
    from PIL import Image  # noqa: F401

    return files, canary


def test_there_are_at_least_25_hostile_files() -> None:
    assert len(NAMES) >= 25


@pytest.mark.parametrize("name", NAMES)
def test_hostile_file_is_refused_and_runs_nothing(name: str, hostile: tuple[dict[str, Path], Path]) -> None:
    files, canary = hostile
    path = files[name]
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as info:
            read_embedding(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message
    assert path.name in message, message
    assert not canary.exists(), f"{name}: the payload ran"
    assert peak < MEMORY_LIMIT, f"{name}: read peaked at {peak} bytes"


@pytest.mark.parametrize("name", ["zip-os-system.pt", "zip-memo-trick.pt", "zip-getattr-import.pt", "zip-numpy-reconstruct.pt", "zip-inst.pt"])
def test_code_payloads_are_refused_as_unsafe(name: str, hostile: tuple[dict[str, Path], Path]) -> None:
    files, _ = hostile
    with pytest.raises(UnsafeFile):
        read_embedding(files[name])


@pytest.mark.parametrize("name", ["zip-os-system.pt", "zip-memo-trick.pt", "zip-huge-storage.pt", "zip-slip.pt"])
def test_tensor_shapes_refuses_hostile_zips_too(name: str, hostile: tuple[dict[str, Path], Path]) -> None:
    files, canary = hostile
    try:
        tensor_shapes(files[name])
    except FormatError:
        pass
    else:
        assert name == "zip-huge-storage.pt"  # shapes-only mode reads no storage, so a big declaration is just a shape
    assert not canary.exists()


def test_safetensors_header_reader_refuses_malformed_headers(hostile: tuple[dict[str, Path], Path]) -> None:
    files, _ = hostile
    for name in NAMES:
        if name.startswith("st-"):
            with pytest.raises(FormatError):
                read_safetensors_header(files[name], max_header=1 << 20)


def test_the_payload_is_real(tmp_path: Path) -> None:
    """The canary mechanism works: the same pickle, run by Python's own unpickler in a child
    process, does create the canary. So its absence above means our reader ran nothing."""
    canary = tmp_path / "CANARY"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(os_system(canary))
    code = "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(payload)], check=True, timeout=60)
    assert canary.exists()
    canary.unlink()
    zpath = tmp_path / "evil.pt"
    zpath.write_bytes(zipped(os_system(canary)))
    with pytest.raises(UnsafeFile):
        read_embedding(zpath)
    assert not canary.exists()


# Gadgets that run code under Python's own unpickler (the rest are refused for their structure).
LIVE_GADGETS = (
    "os_system", "eval_stack_global", "exec_global", "memo_trick", "getattr_gadget",
    "importlib_gadget", "nested_pickle", "subprocess_gadget", "obj_opcode", "inst_opcode",
)


def test_every_code_gadget_is_live(tmp_path: Path) -> None:
    """Each code gadget, unpickled by Python in a child process, creates its canary: a gadget
    that broke would otherwise still be 'refused' above and prove nothing."""
    paths = []
    for name in LIVE_GADGETS:
        payload = tmp_path / f"{name}.pkl"
        payload.write_bytes(getattr(hostile_files, name)(tmp_path / f"CANARY-{name}"))
        paths.append(str(payload))
    code = "import pickle, sys\nfor p in sys.argv[1:]:\n    pickle.loads(open(p, 'rb').read())"
    subprocess.run([sys.executable, "-c", code, *paths], check=True, timeout=60, capture_output=True)
    assert [n for n in LIVE_GADGETS if not (tmp_path / f"CANARY-{n}").exists()] == []
