"""A1111's sampler names, schedule types and their infotext, as tihub reads and writes them."""

from __future__ import annotations

import pytest

from tihub.engine.samplers import SAMPLERS, calls_per_step, canonical, canonical_schedule, check_schedule_type, effective_schedule, from_infotext, infotext_schedule, resolve
from tihub.errors import ConfigError

A1111_NAMES = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun",
    "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM",
]


def test_every_a1111_sampler_is_known_or_refused_by_name():
    assert list(SAMPLERS) == A1111_NAMES
    assert resolve("unipc") == ("UniPC", "Automatic") and SAMPLERS["UniPC"].timesteps
    with pytest.raises(ConfigError, match="Sampler UniPC runs on A1111's fixed timestep grid and takes no schedule type"):
        check_schedule_type("UniPC", "Karras")
    assert resolve("ddim cfg++") == ("DDIM CFG++", "Automatic")
    with pytest.raises(ConfigError, match="Unknown sampler 'Eulerish'; choose one of: DPM\\+\\+ 2M, .*LCM\\."):
        resolve("Eulerish")


def test_old_names_and_aliases_are_sampler_plus_schedule():
    assert resolve("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert resolve("dpm++ 2m sde heun exponential") == ("DPM++ 2M SDE Heun", "Exponential")
    assert resolve("Euler a", "sgm uniform") == ("Euler a", "SGM Uniform")
    assert resolve("k_dpmpp_2m") == ("DPM++ 2M", "Automatic") and resolve(None) == ("Euler a", "Automatic")
    assert canonical("dpm++ 2m", "Karras") == "DPM++ 2M"
    with pytest.raises(ConfigError, match="Sampler 'DPM\\+\\+ 2M Karras' already names the Karras schedule; pass 'DPM\\+\\+ 2M' with schedule type Beta"):
        resolve("DPM++ 2M Karras", "Beta")
    assert canonical_schedule("align_your_steps") == "Align Your Steps" and canonical_schedule("KL optimal") == "KL Optimal"
    with pytest.raises(ConfigError, match="Unknown schedule type 'Sideways'; choose one of: Automatic, Uniform, Karras"):
        canonical_schedule("Sideways")


def test_automatic_is_the_samplers_a1111_default():
    assert effective_schedule("DPM++ 2M", "Automatic") == "Karras"
    assert effective_schedule("DPM++ 3M SDE", "Automatic") == "Exponential"
    assert effective_schedule("Euler", "Automatic") == "Uniform"
    assert effective_schedule("Euler", "Beta") == "Beta"
    # A1111 writes the type that ran, "Automatic" where the sampler has none of its own
    assert infotext_schedule("DPM++ 2M", "Automatic") == "Karras" and infotext_schedule("Euler a", "Automatic") == "Automatic"
    assert infotext_schedule("DPM++ 2M", "Uniform") == "Uniform"


def test_schedule_types_a_sampler_does_not_take_are_refused():
    with pytest.raises(ConfigError, match="Sampler DDIM runs on A1111's fixed timestep grid and takes no schedule type"):
        check_schedule_type("DDIM", "Karras")
    with pytest.raises(ConfigError, match="Sampler DPM adaptive picks its own steps"):
        check_schedule_type("DPM adaptive", "Exponential")
    check_schedule_type("LCM", "Karras")


def test_infotext_reads_as_a1111_means_it():
    # A1111 1.9+: the key names the schedule that ran
    assert from_infotext("DPM++ 2M", "Karras") == ("DPM++ 2M", "Karras", None)
    assert from_infotext("DPM++ 2M", "Automatic") == ("DPM++ 2M", "Automatic", None)
    assert from_infotext("Euler a", "Align Your Steps") == ("Euler a", "Align Your Steps", None)
    # before 1.9 (no key): a plain name ran the uniform schedule, "X Karras" the Karras one
    assert from_infotext("DPM++ 2M", None) == ("DPM++ 2M", "Uniform", None)
    assert from_infotext("DPM++ 2M Karras", None) == ("DPM++ 2M", "Karras", None)
    assert from_infotext("Euler", None) == ("Euler", "Automatic", None)
    assert from_infotext("DDIM", "Karras") == ("DDIM", "Automatic", None)  # A1111 ignores it there
    name, kind, warning = from_infotext("Euler", "Wobbly")
    assert (name, kind) == ("Euler", "Automatic") and "'Wobbly' is not one tihub knows" in warning
    # what tihub writes reads back to the same schedule
    for sampler in A1111_NAMES:
        for kind in ("Automatic", "Karras", "Uniform"):
            try:
                check_schedule_type(sampler, kind)
            except ConfigError:
                continue
            name, back, _ = from_infotext(sampler, infotext_schedule(sampler, kind))
            assert effective_schedule(name, back) == effective_schedule(sampler, kind) or SAMPLERS[sampler].timesteps, (sampler, kind)


def test_second_order_samplers_count_two_calls_per_step():
    second = {"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "Restart"}
    assert {n for n in SAMPLERS if calls_per_step(n) == 2} == second
