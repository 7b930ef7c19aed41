"""sources.yaml validation: every refusal is one sentence naming the line and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tihub.config import DEFAULT_SOURCES_YAML, SOURCE_KINDS, Workspace, load_sources, parse_sources
from tihub.errors import ConfigError


def err(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_sources(text, "sources.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_defaults_are_valid() -> None:
    specs = parse_sources(DEFAULT_SOURCES_YAML)
    assert {s.kind for s in specs} == set(SOURCE_KINDS)
    hf = next(s for s in specs if s.kind == "huggingface")
    assert hf.get("author") == "sd-concepts-library" and not hf.nsfw and hf.enabled
    assert all(s.line > 0 for s in specs)


def test_full_item() -> None:
    (s,) = parse_sources(
        "sources:\n"
        "  - name: mirror\n"
        "    kind: git\n"
        "    url: http://127.0.0.1:8080/x.git\n"
        "    branch: main\n"
        "    paths: ['embeddings/*.pt']\n"
        "    nsfw: true\n"
        "    allow_private: true\n"
        "    enabled: false\n"
    )
    assert (s.name, s.kind, s.nsfw, s.allow_private, s.enabled, s.line) == ("mirror", "git", True, True, False, 2)
    assert s.get("paths") == ["embeddings/*.pt"] and s.get("branch") == "main" and s.get("missing", 1) == 1


def test_malformed_yaml_names_the_line() -> None:
    msg = err("sources:\n  - name: a\n    kind: [local\n")
    assert msg.startswith("sources.yaml line ") and ("line 3" in msg or "line 4" in msg)


def test_tab_indentation() -> None:
    assert "sources.yaml line 2" in err("sources:\n\t- name: a\n")


def test_unknown_kind() -> None:
    msg = err("sources:\n  - name: a\n    kind: gitlab\n")
    assert "line 3" in msg and "'gitlab'" in msg and "huggingface" in msg


def test_bad_types() -> None:
    msg = err("sources:\n  - name: a\n    kind: local\n    path: x\n    nsfw: 'yes'\n")
    assert "line 5" in msg and "`nsfw` must be a bool" in msg and "'yes'" in msg
    msg = err("sources:\n  - name: a\n    kind: civitai\n    limit: lots\n")
    assert "line 4" in msg and "`limit` must be an int" in msg and "'lots'" in msg
    msg = err("sources:\n  - name: a\n    kind: civitai\n    limit: true\n")
    assert "line 4" in msg and "True" in msg
    msg = err("sources:\n  - name: a\n    kind: git\n    url: https://x/y.git\n    paths: [1, 2]\n")
    assert "line 5" in msg and "list of strings" in msg
    msg = err("sources:\n  - name: a\n    kind: local\n    path:\n")
    assert "line" in msg and "`path`" in msg


def test_unknown_option_and_missing_required() -> None:
    msg = err("sources:\n  - name: a\n    kind: local\n    path: x\n    colour: red\n")
    assert "line 5" in msg and "`colour`" in msg and "allowed:" in msg
    msg = err("sources:\n  - name: a\n    kind: git\n")
    assert "line 2" in msg and "needs `url`" in msg


def test_names() -> None:
    assert "needs a `name`" in err("sources:\n  - kind: local\n    path: x\n")
    msg = err("sources:\n  - name: two words\n    kind: local\n    path: x\n")
    assert "line 2" in msg and "'two words'" in msg
    msg = err("sources:\n  - name: a\n    kind: local\n    path: x\n  - name: a\n    kind: local\n    path: y\n")
    assert "line 5" in msg and "already used on line 2" in msg
    # YAML 1.1 would read these as a bool / a number; a name is always text
    specs = parse_sources("sources:\n  - name: off\n    kind: local\n    path: x\n  - name: 2023\n    kind: local\n    path: y\n")
    assert [s.name for s in specs] == ["off", "2023"]


def test_urls() -> None:
    msg = err("sources:\n  - name: a\n    kind: links\n    url: javascript:alert(1)\n")
    assert "line 4" in msg and "javascript:alert(1)" in msg and "http" in msg
    msg = err("sources:\n  - name: a\n    kind: git\n    url: file:///srv/repo.git\n")
    assert "allow_file: true" in msg
    (s,) = parse_sources("sources:\n  - name: a\n    kind: git\n    url: file:///srv/repo.git\n    allow_file: true\n")
    assert s.get("url") == "file:///srv/repo.git"
    assert "ftp" in err("sources:\n  - name: a\n    kind: links\n    url: ftp://x/y\n")


def test_shape_errors() -> None:
    assert "`sources:`" in err("- name: a\n")
    assert "missing the top-level" in err("other: 1\n")
    assert "must be a list" in err("sources: 3\n")
    assert "each source must be a mapping" in err("sources:\n  - just-a-string\n")
    assert parse_sources("") == [] and parse_sources("sources:\n") == []


def test_load_sources_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_sources(tmp_path / "nope.yaml")
    p = tmp_path / "sources.yaml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="could not be read"):
        load_sources(p)
    p.write_text("sources:\n  - name: a\n    kind: nope\n")
    with pytest.raises(ConfigError, match=str(p).replace("\\", "\\\\") + " line 3"):
        load_sources(p)


def test_workspace_uses_defaults_without_file(tmp_path: Path) -> None:
    ws = Workspace.locate(tmp_path)
    assert [s.name for s in ws.sources()] == [s.name for s in parse_sources(DEFAULT_SOURCES_YAML)]
    (tmp_path / "sources.yaml").write_text("sources:\n  - name: only\n    kind: local\n    path: e\n")
    assert [s.name for s in ws.sources()] == ["only"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        Workspace.locate(f)
