"""A1111 prompt syntax, in pure Python: attention weights and prompt-editing schedules.

Two independent passes, as in the A1111 web UI:

* `prompt_schedule(prompt, steps)` resolves prompt editing `[from:to:when]`, `[to:when]`,
  `[from::when]` and alternation `[a|b]` into a list of `(end_step, text)`: the text to condition
  on up to and including `end_step`.
* `parse_attention(text)` splits one of those texts into `(text, weight)` runs: `(x)` x1.1,
  `[x]` /1.1, `(x:1.3)`, escapes `\\(`, and `BREAK` as `("BREAK", -1)`.

Weights are multiplied in the same order A1111 multiplies them, so floats match exactly
(`(((house:1.3)))` gives 1.5730000000000004). No torch import here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

ROUND = 1.1
SQUARE = 1 / 1.1

# ---------------------------------------------------------------------------------------------
# Attention


_ATTENTION_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\]|\\)              # \( \) \[ \] \\ or a lone backslash
  | (?P<weight>:\s*(?P<num>[+-]?[.\d]+)\s*\))   # :1.3)  closes a round bracket with a weight
  | (?P<open>[(\[])
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _is_number(text: str) -> bool:
    """`(x:.)` would make A1111 raise; tihub keeps such a 'weight' as text instead."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into `(text, weight)` runs with A1111's weighting rules.

    >>> parse_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        piece = m.group(0)
        if m.group("escape"):
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(runs))
        elif piece == "[":
            square_open.append(len(runs))
        elif m.group("weight") and round_open and _is_number(m.group("num")):
            scale(round_open.pop(), float(m.group("num")))
        elif piece == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif piece == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            # plain text (or an unmatched bracket, kept as text); BREAK splits it
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    runs.append(["BREAK", -1])  # an int, as A1111 writes it
                runs.append([part, 1.0])

    # brackets left open apply to the end of the prompt
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)

    if not runs:
        runs = [["", 1.0]]

    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]


# ---------------------------------------------------------------------------------------------
# Prompt editing and alternation


@dataclass
class _Scheduled:
    before: list  # nodes (None when the `from` part is absent)
    after: list
    when_text: str
    when: int = 0


@dataclass
class _Alternate:
    options: list  # list of node lists


@dataclass
class _Group:
    """Brackets kept as text, e.g. `(a:2)` or `[x]`, whose inside may hold edits."""

    parts: list  # strings and node lists


Node = Union[str, _Scheduled, _Alternate, _Group]

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_PLAIN_BAR = re.compile(r"(?:[^\\\[\]():]|\\.)+", re.S)  # `|` as text: a `[` that is no alternation


class _Fail(Exception):
    pass


class _ScheduleParser:
    """Recursive descent over the prompt-editing grammar; failure means 'keep the text'."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def top(self) -> list:
        nodes: list = []
        i = 0
        while i < self.n:
            ch = self.s[i]
            if ch in "[]():":
                # a construct if one parses here, else (top level only) a literal character
                try:
                    node, i = self.construct(i)
                    nodes.append(node)
                except _Fail:
                    nodes.append(ch)
                    i += 1
                continue
            m = _PLAIN.match(self.s, i)
            if not m:
                raise _Fail  # `|` or a lone trailing backslash: not a valid prompt
            nodes.append(m.group(0))
            i = m.end()
        return nodes

    def sequence(self, i: int, bar_is_text: bool = False) -> tuple[list, int]:
        """prompt: (emphasized | scheduled | alternate | plain)*  — stops at `:`, `|`, `]`, `)`."""
        nodes: list = []
        while i < self.n:
            ch = self.s[i]
            if ch in "([":
                node, i = self.construct(i)
                nodes.append(node)
                continue
            m = (_PLAIN_BAR if bar_is_text else _PLAIN).match(self.s, i)
            if not m:
                break
            nodes.append(m.group(0))
            i = m.end()
        return nodes, i

    def construct(self, i: int) -> tuple[Node, int]:
        if self.s[i] == "(":
            inner, j = self.sequence(i + 1)
            if j < self.n and self.s[j] == ")":
                return _Group(["(", inner, ")"]), j + 1
            if j < self.n and self.s[j] == ":":
                inner2, k = self.sequence(j + 1)
                if k < self.n and self.s[k] == ")":
                    return _Group(["(", inner, ":", inner2, ")"]), k + 1
            raise _Fail
        if self.s[i] != "[":
            raise _Fail
        first, j = self.sequence(i + 1)
        if j >= self.n:
            raise _Fail
        ch = self.s[j]
        if ch == "]":
            return _Group(["[", first, "]"]), j + 1
        if ch == "|":
            options = [first]
            while j < self.n and self.s[j] == "|":
                opt, j = self.sequence(j + 1)
                options.append(opt)
            if j < self.n and self.s[j] == "]":
                return _Alternate(options), j + 1
            # not an alternation: A1111's documented example `[{b|d{:.5]` keeps `|` as text
            first, j = self.sequence(i + 1, bar_is_text=True)
            if j >= self.n or self.s[j] != ":":
                raise _Fail
            ch = ":"
        if ch == ":":
            when = self.when(j + 1)
            if when is not None:
                text, k = when
                return _Scheduled(None, first, text), k  # type: ignore[arg-type]
            second, k = self.sequence(j + 1)
            if k < self.n and self.s[k] == ":":
                when = self.when(k + 1)
                if when is not None:
                    text, end = when
                    return _Scheduled(first, second, text), end
        raise _Fail

    def when(self, i: int) -> tuple[str, int] | None:
        """`[ws] NUMBER [ws] ]` -> (number text, index after `]`)."""
        while i < self.n and self.s[i].isspace():
            i += 1
        m = _NUMBER.match(self.s, i)
        if not m:
            return None
        j = m.end()
        while j < self.n and self.s[j].isspace():
            j += 1
        if j < self.n and self.s[j] == "]":
            return m.group(0), j + 1
        return None


def _walk(nodes: list, steps: int, found: set[int], int_offset: int = 0, float_offset: float = 0.0) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            v = float(node.when_text)
            if "." in node.when_text:
                v = (v - float_offset) * steps  # a fraction of the steps
            else:
                v -= int_offset
            node.when = min(steps, int(v))
            if node.when >= 1:
                found.add(node.when)
            if node.before:
                _walk(node.before, steps, found, int_offset, float_offset)
            _walk(node.after, steps, found, int_offset, float_offset)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for opt in node.options:
                _walk(opt, steps, found, int_offset, float_offset)
        elif isinstance(node, _Group):
            for part in node.parts:
                if isinstance(part, list):
                    _walk(part, steps, found, int_offset, float_offset)


def _render(nodes: list, step: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = (node.before or []) if step <= node.when else node.after
            out.append(_render(chosen, step))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
        else:
            for part in node.parts:
                out.append(part if isinstance(part, str) else _render(part, step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, first_pass: int | None = None) -> list[tuple[int, str]]:
    """The texts a prompt conditions on, as `(end_step, text)` pairs (A1111 semantics).

    With `first_pass` (the first pass's steps) the schedule is the hires pass's, of `steps`
    steps, as A1111 1.6+ makes it: a whole-number `when` counts on from the first pass's steps
    (`[a:b:25]` after 20 steps switches at hires step 5) and a fraction from 1 (`[a:b:1.5]` at half
    the hires steps); a switch inside the first pass has already happened.

    >>> prompt_schedule("a [b:c:2] d", 4)
    [(2, 'a b d'), (4, 'a c d')]
    >>> prompt_schedule("a [b:c:1.5] d", 4, first_pass=10)
    [(2, 'a b d'), (4, 'a c d')]
    """
    try:
        nodes = _ScheduleParser(prompt).top()
    except _Fail:
        return [(steps, prompt)]
    found = {steps}
    if first_pass is None:
        _walk(nodes, steps, found)
    else:
        _walk(nodes, steps, found, int_offset=first_pass, float_offset=1.0)
    return [(s, _render(nodes, s)) for s in sorted(found)]


_AND = re.compile(r"\bAND\b")
# `text:weight` at the end of an AND part; `.` stops at a newline, so a part spanning lines keeps
# weight 1 and its whole text (as A1111's own pattern does)
_PART_WEIGHT = re.compile(r"^(\s*.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable diffusion: the `AND`-separated parts of a prompt with their weights.

    Split before prompt editing is resolved, as in A1111; trailing whitespace of a part goes,
    leading whitespace stays.

    >>> split_and("a cat AND a dog:0.5")
    [('a cat', 1.0), (' a dog', 0.5)]
    """
    parts = []
    for part in _AND.split(prompt):
        m = _PART_WEIGHT.search(part)
        if m is None:
            parts.append((part, 1.0))
        else:
            parts.append((m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0))
    return parts


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The schedule entry used at sampling step `step` (1-based)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]


def explain(prompt: str, steps: int = 20) -> dict:
    """Schedule and attention runs of a prompt (no tokenizer, no model)."""
    schedule = prompt_schedule(prompt, steps)
    return {
        "and_parts": [[text, weight] for text, weight in split_and(prompt)],
        "schedule": [[end, text] for end, text in schedule],
        "attention": [[t, w] for t, w in parse_attention(schedule[-1][1])],
    }
