"""A1111 prompt syntax: the documented examples of A1111's own parser give the same results."""

from __future__ import annotations

import pytest

from tihub.engine.prompts import explain, parse_attention, prompt_schedule, text_at_step

# A1111 modules/prompt_parser.py doctests (parse_prompt_attention), results as lists of pairs.
ATTENTION_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_EXAMPLES)
def test_attention_matches_a1111_examples(text, expected):
    assert parse_attention(text) == expected


def test_attention_weights_break_and_escapes():
    assert parse_attention("[x]") == [("x", 0.9090909090909091)]
    assert parse_attention("((x))") == [("x", 1.2100000000000002)]
    assert parse_attention("(x:1.5 )") == [("x", 1.5)]
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    assert parse_attention("") == [("", 1.0)]
    assert parse_attention("\\\\ back") == [("\\ back", 1.0)]
    # a colon with no number stays text; a malformed number (A1111 raises) stays text too
    assert parse_attention("a:b") == [("a:b", 1.0)]
    assert parse_attention("(:.)") == [(":.)", 1.1)]
    assert parse_attention("(a:1.2.3)") == [("a:1.2.3)", 1.1)]


# A1111 get_learned_conditioning_prompt_schedules doctests (steps=10).
SCHEDULE_EXAMPLES = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [{b|d{:.5] c", [[5, "a  c"], [10, "a {b|d{ c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]),
    ("[fe|]male", [[i, "female" if i % 2 else "male"] for i in range(1, 11)]),
    ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), SCHEDULE_EXAMPLES)
def test_schedule_matches_a1111_examples(prompt, expected):
    assert [list(x) for x in prompt_schedule(prompt, 10)] == expected


def test_schedule_comment_example_100_steps():
    # the example at the top of A1111's prompt_parser.py
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
              "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]")
    assert [list(x) for x in prompt_schedule(prompt, 100)] == [
        [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
        [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
        [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
        [75, "fantasy landscape with a lake and an oak in background masterful"],
        [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
    ]


def test_text_at_step_and_explain():
    sched = prompt_schedule("a [b:c:2] d", 4)
    assert [text_at_step(sched, s) for s in (1, 2, 3, 4)] == ["a b d", "a b d", "a c d", "a c d"]
    out = explain("a (cat:1.2) [dog:fox:0.5]", steps=10)
    assert out["schedule"] == [[5, "a (cat:1.2) dog"], [10, "a (cat:1.2) fox"]]
    assert out["attention"] == [["a ", 1.0], ["cat", 1.2], [" fox", 1.0]]


def test_prompts_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, tihub.engine.prompts, tihub.infotext; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROMPT_CHARS = st.text(alphabet=st.sampled_from(list("ab ()[]:|\\,.0123456789-BREAK")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(PROMPT_CHARS, st.integers(min_value=1, max_value=30))
def test_parsers_never_fail_on_any_text(text, steps):
    sched = prompt_schedule(text, steps)
    assert sched[-1][0] == steps and all(1 <= end <= steps for end, _ in sched)
    assert [end for end, _ in sched] == sorted({end for end, _ in sched})
    for _, t in sched:
        runs = parse_attention(t)
        assert runs and all(isinstance(w, (int, float)) for _, w in runs)
