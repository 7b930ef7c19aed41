"""A1111's learning-rate schedule syntax: `"0.005:100, 1e-3:1000, 1e-5"`.

Rules (the same as A1111's Train tab):
- comma-separated `rate:step` pairs; each rate holds while the number of finished steps is below
  its step, then the next pair takes over;
- a rate without a step (or with step `-1`) runs to the last step; parsing stops there;
- a step beyond `max_steps` is clamped to it and parsing stops there;
- pairs whose step is at or below the resume step are skipped (they are already over);
- when the last pair ends before `max_steps`, training ends with it.

The schedule here is a pure function of the step number, so a resumed run sees exactly the rates
an uninterrupted run would. The same syntax drives the gradient-clipping value.

No torch import: the CLI validates `--lr` before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from tihub.errors import ConfigError

_HELP = 'write a number, or pairs like "0.005:100, 1e-3:1000, 1e-5" (rate 0.005 until step 100, 1e-3 until 1000, then 1e-5)'


@dataclass(frozen=True)
class Schedule:
    """Piecewise-constant values: `pieces[i] = (value, end_step)`, end steps increasing."""

    pieces: tuple[tuple[float, int], ...]
    text: str = ""

    @property
    def last_step(self) -> int:
        """The step at which the schedule ends (training stops there)."""
        return self.pieces[-1][1]

    def value_at(self, step: int) -> float | None:
        """The value for the step that starts after `step` finished steps; None once it is over."""
        for value, end in self.pieces:
            if step < end:
                return value
        return None

    def __call__(self, step: int) -> float:
        value = self.value_at(step)
        return self.pieces[-1][0] if value is None else value


# A learning rate above this only makes the vectors overflow (AdamW then fails deep inside torch).
MAX_LR = 10.0


def parse_schedule(text: str | float | int, max_steps: int, cur_step: int = 0, what: str = "--lr") -> Schedule:
    """Parse an A1111 schedule string for a run of `max_steps` steps resumed at `cur_step`.

    Raises ConfigError (one sentence) for anything that is not a valid schedule.
    """
    if isinstance(text, (int, float)):
        text = repr(float(text))
    raw = str(text)
    pieces: list[tuple[float, int]] = []
    try:
        for pair in raw.split(","):
            if not pair.strip():
                continue
            parts = pair.split(":")
            if len(parts) > 2:
                raise ValueError(pair)
            rate = float(parts[0])
            if rate != rate or rate in (float("inf"), float("-inf")) or rate < 0:
                raise ValueError(pair)
            if what == "--lr" and rate > MAX_LR:
                raise ConfigError(f"--lr {rate:g} is too large to train with; use a rate of at most {MAX_LR:g} (A1111's default is 0.005).")
            if len(parts) == 1:
                pieces.append((rate, max_steps))
                break
            step = int(parts[1])
            if step > cur_step:
                pieces.append((rate, min(step, max_steps)))
                if step > max_steps:
                    break
            elif step == -1:
                pieces.append((rate, max_steps))
                break
    except ValueError:
        raise ConfigError(f"{what} {raw!r} is not a valid schedule; {_HELP}.") from None
    if not pieces:
        raise ConfigError(f"{what} {raw!r} has no rate left after step {cur_step}; {_HELP}.")
    return Schedule(tuple(pieces), raw)


def validate_schedule(text: str, what: str = "--lr") -> None:
    """Check the syntax only (for the CLI, before any work)."""
    parse_schedule(text, max_steps=10**9, cur_step=0, what=what)
