"""A short smoke of the fuzz targets (fuzz/targets.py) with hypothesis: mutated seeds and random
bytes for every reader of untrusted input. Only tihub's own errors may escape, and no read may
pass the per-file memory budget. `make fuzz` runs the same targets coverage-guided (atheris)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fuzz.seeds import seeds  # noqa: E402
from fuzz.targets import TARGETS, run_one  # noqa: E402


@functools.lru_cache(maxsize=None)
def _seeds(name: str) -> tuple[bytes, ...]:
    return tuple(seeds(name)) or (b"",)


@st.composite
def inputs(draw: st.DrawFn, name: str) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    buf = bytearray(draw(st.sampled_from(_seeds(name))))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "dup"]))
        if not buf:
            buf += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            buf[i] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del buf[i:]
        else:
            j = draw(st.integers(0, len(buf) - 1))
            buf[i:i] = buf[j : j + draw(st.integers(1, 64))]
    return bytes(buf)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_tihub_errors_escape_and_memory_stays_in_budget(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    @given(inputs(name))
    def run(data: bytes) -> None:
        run_one(target, data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_passes_its_target(name: str) -> None:
    for seed in _seeds(name):
        run_one(TARGETS[name], seed)


REGRESSIONS = sorted((Path(__file__).resolve().parent.parent / "fuzz" / "regressions").glob("*"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_inputs_fuzzing_once_broke_are_refused_cleanly(path: Path) -> None:
    """Each file is `<target>-<what>`: an input `make fuzz` found escaping as a non-tihub error."""
    run_one(TARGETS[path.name.split("-", 1)[0]], path.read_bytes())
