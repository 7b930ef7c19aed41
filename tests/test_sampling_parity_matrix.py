"""The full A1111 parity matrices (slow; they run in `make test`): every sampler x schedule type
on the in-memory tiny model, every sampler on every model source. See test_sampling_parity.py."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from test_sampling_parity import MATRIX, _check, _source_check, sources, tiny  # noqa: E402, F401

from tihub.engine.samplers import SAMPLERS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Should have:UserWarning"), pytest.mark.filterwarnings("ignore:To copy construct:UserWarning")]


@pytest.mark.parametrize(("sampler", "schedule"), MATRIX)
def test_a1111_parity_every_sampler_and_schedule(tiny, sampler, schedule):  # noqa: F811
    pipe, cond, uncond = tiny
    _check(pipe, sampler, schedule, cond, uncond, [3])


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("name", ["pndm-folder", "euler-folder", "single-file", "in-memory"])
def test_every_sampler_on_every_model_source(sources, name, sampler):  # noqa: F811
    _source_check(sources, name, sampler)
