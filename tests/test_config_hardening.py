"""sources.yaml that attacks its reader (issue 11, items 9 and 10): alias bombs, keys that are
lists or mappings, deep nesting, huge numbers and control characters in source names each end
as one sentence naming the line, quickly and in little memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tihub.config import parse_sources
from tihub.errors import ConfigError


def alias_bomb(levels: int = 9, key: str = "paths") -> str:
    """Nine levels of nine aliases each (9**9 strings once expanded) in one list value: the
    "must be a list of strings, not [...]" message once tried to print all of them."""
    groups = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        groups.append(f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return f"sources:\n  - name: bomb\n    kind: git\n    url: https://example.com/r.git\n    {key}: [{', '.join(groups)}]\n"


_CHILD = """
import json, sys, tracemalloc
from tihub.config import parse_sources
from tihub.errors import ConfigError
text = sys.stdin.read()
tracemalloc.start()
try:
    parse_sources(text, "sources.yaml")
    res = {"exc": None}
except ConfigError as exc:
    res = {"exc": "ConfigError", "msg": str(exc)}
except BaseException as exc:
    res = {"exc": repr(exc)}
res["peak"] = tracemalloc.get_traced_memory()[1]
print(json.dumps(res))
"""


def refuse(text: str) -> str:
    """parse_sources(text) must raise ConfigError within 30 s and 32 MiB; return the message.

    Measured in a fresh process, so no other test's threads count towards the peak."""
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["exc"] == "ConfigError", out
    assert out["peak"] < 32 * 1024 * 1024, out["peak"]
    exc = out["msg"]
    msg = str(exc)
    assert msg.startswith("sources.yaml line ") and "\n" not in msg and len(msg) < 400, msg
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in msg), msg
    return msg


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    text = alias_bomb()
    assert len(text) < 1000
    assert "expands" in refuse(text)


def test_an_alias_bomb_in_a_text_option_is_refused_too() -> None:
    assert "expands" in refuse(alias_bomb(key="branch"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("sources:\n  - name: a\n    kind: local\n    ? [x, y]\n    : 1\n", "plain text"),
        ("sources:\n  - name: a\n    kind: local\n    ? {x: 1}\n    : 1\n", "plain text"),
        ("? [sources]\n: 1\n", "plain text"),
        ("sources:\n  - name: a\n    kind: local\n    path: " + "[" * 10_000 + "]" * 10_000 + "\n", "nests deeper"),
        ("sources:\n  - name: a\n    kind: civitai\n    limit: " + "9" * 100_000 + "\n", "line 4"),
        ("sources:\n  - name: a\n    kind: civitai\n    limit: " + "9" * 5_000 + "\n", "line 4"),
        ("sources:\n  - name: a\n    kind: local\n    path: &p [*p]\n", "line 4"),
        ("sources:\n  - name: \"evil\\e]0;owned\\a\\e[2J\"\n    kind: local\n    path: x\n", "control"),
        ("sources:\n  - name: \"a\\u202eb\"\n    kind: local\n    path: x\n", "control"),
        ("sources:\n  - name: a\n    kind: \"loc\\eal\"\n    path: x\n", "unknown kind"),
        ("sources:\n  - name: a\x00b\n    kind: local\n", "control character"),  # found by `make fuzz`
    ],
)
def test_malformed_sources_files_are_one_sentence_with_a_line(text: str, words: str) -> None:
    assert words in refuse(text)


def test_ordinary_files_still_load() -> None:
    specs = parse_sources("sources:\n  - name: a\n    kind: git\n    url: https://example.com/r.git\n    paths: [a, b]\n")
    assert specs[0].name == "a" and specs[0].get("paths") == ["a", "b"]
    shared = "defaults: &d {nsfw: true}\nsources:\n  - name: a\n    kind: local\n    path: x\n    nsfw: true\n"
    assert parse_sources(shared)[0].nsfw is True
