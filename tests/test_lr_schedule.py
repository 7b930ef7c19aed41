"""The learning-rate schedule parser follows A1111's Train-tab rules."""

from __future__ import annotations

import pytest

from tihub.engine.lr_schedule import parse_schedule, validate_schedule
from tihub.errors import ConfigError


def test_single_rate_runs_to_max_steps() -> None:
    s = parse_schedule("0.005", 1000)
    assert s.pieces == ((0.005, 1000),)
    assert s(0) == 0.005 and s(999) == 0.005
    assert s.value_at(1000) is None
    assert s.last_step == 1000


def test_pairs_hold_until_their_step() -> None:
    s = parse_schedule("0.005:100, 1e-3:1000, 1e-5", 5000)
    assert s.pieces == ((0.005, 100), (1e-3, 1000), (1e-5, 5000))
    assert s(0) == 0.005 and s(99) == 0.005
    assert s(100) == 1e-3 and s(999) == 1e-3
    assert s(1000) == 1e-5 and s(4999) == 1e-5


def test_last_pair_ends_training_early() -> None:
    s = parse_schedule("0.01:10, 0.001:50", 1000)
    assert s.last_step == 50
    assert s.value_at(49) == 0.001 and s.value_at(50) is None


def test_step_beyond_max_is_clamped_and_stops_parsing() -> None:
    s = parse_schedule("0.01:10, 0.001:500, 0.0001", 100)
    assert s.pieces == ((0.01, 10), (0.001, 100))


def test_minus_one_means_to_the_end_and_stops_parsing() -> None:
    s = parse_schedule("0.01:10, 0.001:-1, 0.5:900", 300)
    assert s.pieces == ((0.01, 10), (0.001, 300))


def test_pairs_at_or_before_resume_step_are_skipped() -> None:
    s = parse_schedule("0.01:10, 0.001:20, 1e-4", 100, cur_step=10)
    assert s.pieces == ((0.001, 20), (1e-4, 100))
    # and the rates seen from step 10 on equal those of the un-resumed schedule
    full = parse_schedule("0.01:10, 0.001:20, 1e-4", 100)
    assert all(s(k) == full(k) for k in range(10, 100))


def test_empty_items_and_spaces_are_ignored() -> None:
    assert parse_schedule(" 0.1 : 5 ,, 0.2 ", 10).pieces == ((0.1, 5), (0.2, 10))


@pytest.mark.parametrize("bad", ["", "abc", "0.1:x", "0.1:5:6", "-0.1", "nan", ",", "0.1:0"])
def test_bad_schedules_are_one_sentence(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_schedule(bad, 100)
    msg = str(info.value)
    assert "--lr" in msg and "\n" not in msg and msg.endswith(".")


def test_validate_names_the_option() -> None:
    with pytest.raises(ConfigError, match="--clip-grad"):
        validate_schedule("zz", what="--clip-grad")


def test_absurd_learning_rate_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match=r"--lr 1e\+38 is too large"):
        parse_schedule("1e38", 100)
    with pytest.raises(ConfigError, match="too large"):
        parse_schedule("0.005:10, 50", 100)
    assert parse_schedule("100", 10, what="--clip-grad").pieces == ((100.0, 10),)  # other schedules are not capped
