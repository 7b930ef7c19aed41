"""The per-file memory budget (issue 11, items 1-2): small files that ask for gigabytes are
refused in one sentence before the allocation, measured in a fresh interpreter; big-endian torch
zips read correctly; float64 beyond float32 range is refused without a numpy warning."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_files  # noqa: E402
from hostile_files import _tensor_record, _unicode, payload_pickle, torch_zip  # noqa: E402
from tihub.errors import FormatError, UnsafeFile  # noqa: E402
from tihub.formats import read_embedding  # noqa: E402
from tihub.formats.budget import EMBEDDING_BUDGET  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: read each file under tracemalloc (numpy reports its buffers to it)
# and print name, peak bytes, the error class and message as one JSON line per file.
_MEASURE = r"""
import json, sys, tracemalloc
from PIL import Image  # imported before measuring: the read, not the import, is measured
from tihub.formats import read_embedding
from tihub.errors import TihubError
for path in sys.argv[1:]:
    tracemalloc.start()
    try:
        read_embedding(path)
        kind, msg = "accepted", ""
    except TihubError as exc:
        kind, msg = type(exc).__name__, str(exc)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"path": path, "peak": peak, "kind": kind, "msg": msg}), flush=True)
"""


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    out = {}
    for name, build in hostile_files.memory_bombs().items():
        out[name] = root / name
        out[name].write_bytes(build(root / "CANARY"))
    return out


def test_every_bomb_is_refused_under_the_budget_in_a_fresh_process(bomb_files: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, bomb_files.values())],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(bomb_files)
    for row in rows:
        path = Path(row["path"])
        size = path.stat().st_size
        assert row["kind"] == "UnsafeFile", row
        assert path.name in row["msg"] and "\n" not in row["msg"] and row["msg"].endswith("."), row
        # the file itself (read once) and the budget, which every other allocation is charged to
        limit = EMBEDDING_BUDGET + size + 4 * 1024 * 1024
        assert row["peak"] < limit, f"{path.name}: peak {row['peak']} bytes, over {limit}"


def test_the_refusal_names_the_memory(bomb_files: dict[str, Path]) -> None:
    with pytest.raises(UnsafeFile, match="would need more than 32 MiB of memory"):
        read_embedding(bomb_files["bomb-zero-stride.pt"])


def test_views_within_the_budget_still_read() -> None:
    """Two tensors on one storage (a second view is a copy, charged, and fits)."""
    numel = 768
    pkl = payload_pickle(
        b"}(" + _unicode("string_to_param") + b"}" + _unicode("*") + _tensor_record("0", numel, (1, numel), (numel, 1)) + b"s"
        + _unicode("again") + _tensor_record("0", numel, (1, numel), (numel, 1)) + b"u"
    )
    values = np.arange(numel, dtype="<f4")
    emb = read_embedding("two-views.pt", hostile_files.zipped(pkl, storage=values.tobytes()))
    assert np.array_equal(emb.vectors["clip_l"][0], values)


def _zip_with_order(order: bytes, storage: bytes, kind: str = "FloatStorage", numel: int = 768) -> bytes:
    pkl = payload_pickle(b"}(" + _unicode("string_to_param") + b"}" + _unicode("*") + _tensor_record("0", numel, (1, numel), (numel, 1), kind) + b"s" + b"u")
    return torch_zip([("archive/data.pkl", pkl), ("archive/byteorder", order), ("archive/version", b"3\n"), ("archive/data/0", storage)])


def test_a_big_endian_torch_zip_reads_its_true_values() -> None:
    values = np.linspace(-2, 2, 768, dtype=np.float32)
    emb = read_embedding("big.pt", _zip_with_order(b"big", values.astype(">f4").tobytes()))
    assert np.array_equal(emb.vectors["clip_l"][0], values)
    little = read_embedding("little.pt", _zip_with_order(b"little", values.astype("<f4").tobytes()))
    assert np.array_equal(little.vectors["clip_l"][0], values)


def test_a_big_endian_half_zip_reads_its_true_values() -> None:
    values = np.linspace(-1, 1, 768, dtype=np.float16)
    emb = read_embedding("big16.pt", _zip_with_order(b"big", values.astype(">f2").tobytes(), "HalfStorage"))
    assert np.array_equal(emb.vectors["clip_l"][0], values)


def test_an_unknown_byteorder_is_refused() -> None:
    with pytest.raises(FormatError, match="byteorder"):
        read_embedding("odd.pt", _zip_with_order(b"middle", b"\x00" * 3072))


def test_float64_beyond_float32_range_is_refused_without_a_warning() -> None:
    values = np.full(768, 1e300, dtype="<f8")
    data = _zip_with_order(b"little", values.tobytes(), "DoubleStorage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FormatError, match="beyond the float32 range"):
            read_embedding("f64.pt", data)
        ok = np.full(768, 0.5, dtype="<f8")
        emb = read_embedding("f64ok.pt", _zip_with_order(b"little", ok.tobytes(), "DoubleStorage"))
    assert emb.dtype == "f64"


def test_float64_json_in_a_png_beyond_float32_is_refused_without_a_warning() -> None:
    body = json.dumps({"string_to_param": {"*": {"TORCHTENSOR": [[1e300] * 768]}}}).encode()
    import base64

    data = hostile_files.png(4, 4, [hostile_files._chunk(b"tEXt", b"sd-ti-embedding\x00" + base64.b64encode(body))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FormatError, match="beyond the float32 range"):
            read_embedding("card.png", data)



def test_a_state_dict_of_shared_references_is_refused_by_tensor_shapes(tmp_path: Path) -> None:
    """Thirty dicts, each holding the previous one twice (memo references): 2**30 key paths for a
    reader that flattens the state dict by walking it."""
    from tihub.formats import tensor_shapes

    body = b"}q\x00"  # d0 = {} (memo 0)
    for _ in range(30):
        body += b"0}(" + _unicode("a") + b"h\x00" + _unicode("b") + b"h\x00" + b"uq\x00"  # POP; memo 0 = {a: prev, b: prev}
    pkl = payload_pickle(body)
    path = tmp_path / "dag.ckpt"
    path.write_bytes(torch_zip([("archive/data.pkl", pkl), ("archive/version", b"3\n")]))
    done: dict[str, BaseException] = {}

    def run() -> None:
        try:
            tensor_shapes(path)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            done["exc"] = exc

    import threading

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "flattening never ended"
    assert isinstance(done.get("exc"), UnsafeFile), done


def test_the_largest_real_embedding_card_reads_within_the_budget(tmp_path: Path) -> None:
    """A PNG card of a 75-vector SDXL embedding (JSON floats in its text chunk): the biggest read
    a real embedding asks for must stay inside the budget."""
    from tihub.formats import Embedding, write_embedding

    rng = np.random.default_rng(0)
    vectors = {"clip_l": rng.standard_normal((75, 768)).astype(np.float32), "clip_g": rng.standard_normal((75, 1280)).astype(np.float32)}
    path = tmp_path / "big.png"
    write_embedding(Embedding("big", vectors, "f32"), path, "png")
    emb = read_embedding(path)
    assert np.array_equal(emb.vectors["clip_g"], vectors["clip_g"])
