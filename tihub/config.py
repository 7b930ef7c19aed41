"""Workspace paths and `sources.yaml`.

The workspace root is `--home DIR`, else `$TIHUB_HOME`, else the current directory. It holds
`sources.yaml`, `catalog.db` (unless `--db URL` / `$TIHUB_DB` names another database) and
`embeddings/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tihub.errors import ConfigError

SOURCE_KINDS = ("huggingface", "git", "links", "civitai", "local")

# Options each kind accepts besides the common ones (name, kind, nsfw, allow_private, enabled).
# The value is the Python type expected; `required` lists what must be present.
_KIND_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "huggingface": {"author": str, "repo_types": list, "limit": int, "endpoint": str},
    "git": {"url": str, "branch": str, "paths": list, "allow_file": bool},
    "links": {"url": str},
    "civitai": {"url": str, "query": str, "base_models": list, "limit": int, "sort": str},
    "local": {"path": str},
}
_REQUIRED: dict[str, tuple[str, ...]] = {"git": ("url",), "links": ("url",), "local": ("path",)}
_COMMON: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "kind": str,
    "nsfw": bool,
    "allow_private": bool,
    "enabled": bool,
    "description": str,
}


@dataclass(frozen=True)
class SourceSpec:
    """One item of `sources.yaml`."""

    name: str  # unique, used on the command line (`tihub sync NAME`)
    kind: str  # one of SOURCE_KINDS
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific options
    nsfw: bool = False  # entries from this source are hidden from search unless --nsfw
    allow_private: bool = False  # permit loopback/private addresses (tests, LAN mirrors)
    enabled: bool = True  # `tihub sync` with no names skips disabled sources
    line: int = 0  # line in sources.yaml, for messages

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class Workspace:
    """Where a user's catalogue, sources and embeddings live."""

    root: Path
    db_url: str

    @property
    def sources_path(self) -> Path:
        return self.root / "sources.yaml"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @classmethod
    def locate(cls, home: str | os.PathLike[str] | None = None, db: str | None = None) -> "Workspace":
        """Resolve the workspace from `--home`/`--db`, then the environment, then the cwd."""
        root = Path(home or os.environ.get("TIHUB_HOME") or os.getcwd()).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"The workspace {root} is a file, not a folder; pass --home with a folder.")
        url = db or os.environ.get("TIHUB_DB") or f"sqlite:///{root / 'catalog.db'}"
        return cls(root=root, db_url=url)

    def ensure(self) -> "Workspace":
        """Create the workspace folders if missing."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.embeddings_dir.mkdir(parents=True, exist_ok=True)
        return self

    def sources(self) -> list[SourceSpec]:
        """The sources in this workspace's `sources.yaml`, or the built-in defaults when absent."""
        if self.sources_path.exists():
            return load_sources(self.sources_path)
        return parse_sources(DEFAULT_SOURCES_YAML, "built-in sources.yaml")


DEFAULT_SOURCES_YAML = """\
# Where tihub looks for textual-inversion embeddings. `tihub sync` indexes every enabled source.
# Common keys: name, kind (huggingface | git | links | civitai | local), nsfw, allow_private, enabled.
sources:
  - name: hf-concepts
    kind: huggingface
    author: sd-concepts-library
    nsfw: false

  - name: gitlab-16777216c
    kind: git
    url: https://gitlab.com/16777216c/stable-diffusion-embeddings.git
    nsfw: true

  - name: gitlab-cattoroboto
    kind: git
    url: https://gitlab.com/cattoroboto/waifu-diffusion-embeds.git
    nsfw: true

  - name: gitgud-viper1
    kind: git
    url: https://gitgud.io/viper1/stable-diffusion-embeddings.git
    nsfw: true

  - name: rentry-embeddings
    kind: links
    url: https://rentry.org/embeddings
    nsfw: true

  - name: civitai
    kind: civitai
    nsfw: false

  - name: local
    kind: local
    path: embeddings
    nsfw: false
"""


def load_sources(path: str | os.PathLike[str]) -> list[SourceSpec]:
    """Read and validate a `sources.yaml` file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist; create it or run `tihub sources --init`.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} could not be read: {exc}.") from None
    return parse_sources(text, str(p))


# Limits for sources.yaml (a few hundred lines in practice): they keep a hostile or broken file
# (an alias bomb, 10,000 nested brackets, a 100,000-digit number) to one sentence with its line.
MAX_SOURCES_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 10_000  # values one source expands to, aliases counted as often as used
MAX_YAML_SCALAR = 8192  # characters in one value


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _loader(text: str) -> Any:
    """A SafeLoader whose composer stops at MAX_YAML_DEPTH (PyYAML composes recursively)."""
    import yaml

    class Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    raise _TooDeep(self.peek_event().start_mark.line + 1)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return Loader(text)


def _expanded_size(node: Any, where: str, key: str) -> None:
    """Refuse a value whose aliases expand it past MAX_YAML_VALUES (an alias bomb), that refers
    to itself, or that holds an oversized scalar; counted on the node graph, nothing expanded."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Any) -> int:
        nid = id(n)
        if nid in sizes:
            return sizes[nid]
        line = n.start_mark.line + 1
        if nid in active:
            raise ConfigError(f"{where} line {line}: `{key}` refers to itself through a YAML alias.")
        if isinstance(n, yaml.ScalarNode):
            if len(n.value) > MAX_YAML_SCALAR:
                raise ConfigError(f"{where} line {line}: `{key}` holds a value of {len(n.value)} characters, over the {MAX_YAML_SCALAR}-character limit.")
            total = 1
        else:
            active.add(nid)
            children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else list(n.value)
            total = 1
            for child in children:
                total += size(child)
                if total > MAX_YAML_VALUES:
                    raise ConfigError(
                        f"{where} line {line}: `{key}` expands (through YAML aliases) to more than {MAX_YAML_VALUES} values; refusing it."
                    )
            active.discard(nid)
        sizes[nid] = total
        return total

    size(node)


def _short(value: Any) -> str:
    """A bounded repr for messages (a value may be large or hostile)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 60
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 6
    r.maxlevel = 3
    return r.repr(value)


def parse_sources(text: str, where: str = "sources.yaml") -> list[SourceSpec]:
    """Validate sources YAML text; every error names the line and the bad value."""
    import yaml  # local import: only commands that read sources pay for it

    if len(text) > MAX_SOURCES_BYTES:
        raise ConfigError(f"{where} is {len(text)} characters long, over the {MAX_SOURCES_BYTES}-character limit for a sources file.")
    loader = None
    try:
        loader = _loader(text)  # the reader refuses control characters here already
        root = loader.get_single_node()
    except _TooDeep as deep:
        raise ConfigError(f"{where} line {deep.line}: the YAML nests deeper than {MAX_YAML_DEPTH} levels.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is None and isinstance(exc, yaml.reader.ReaderError):  # a control character: find its line
            line = f" line {text.count(chr(10), 0, exc.position) + 1}"
            problem = f"a control character (code {exc.character:#x}) is not allowed"
        else:
            line = f" line {mark.line + 1}" if mark is not None else " line 1"
            problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{where}{line}: {problem}.") from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{where} line {root.start_mark.line + 1}: expected a mapping with a `sources:` list.")
    for k, _v in root.value:
        if not isinstance(k, yaml.ScalarNode):
            raise ConfigError(f"{where} line {k.start_mark.line + 1}: a key must be plain text, not a list or mapping.")
    top = {k.value: v for k, v in root.value}
    if "sources" not in top:
        raise ConfigError(f"{where} line 1: missing the top-level `sources:` list.")
    items = top["sources"]
    if isinstance(items, yaml.ScalarNode) and items.value in ("", "~", "null"):
        return []
    if not isinstance(items, yaml.SequenceNode):
        raise ConfigError(f"{where} line {items.start_mark.line + 1}: `sources` must be a list.")

    specs: list[SourceSpec] = []
    seen: dict[str, int] = {}
    for node in items.value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{where} line {line}: each source must be a mapping with `name` and `kind`.")
        raw: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise ConfigError(f"{where} line {knode.start_mark.line + 1}: a key must be plain text, not a list or mapping.")
            key = knode.value
            if len(key) > 100 or not key.isprintable():
                raise ConfigError(f"{where} line {knode.start_mark.line + 1}: the key {_short(key)} is not an option name.")
            if key in raw:
                raise ConfigError(f"{where} line {knode.start_mark.line + 1}: duplicate key `{key}`.")
            _expanded_size(vnode, where, key)
            try:
                raw[key] = yaml.SafeLoader("").construct_document(vnode) if vnode is not None else None
            except yaml.YAMLError as exc:
                problem = getattr(exc, "problem", None) or "unreadable value"
                raise ConfigError(f"{where} line {vnode.start_mark.line + 1}: `{key}`: {problem}.") from None
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # e.g. a 5,000-digit integer
                raise ConfigError(f"{where} line {vnode.start_mark.line + 1}: `{key}` has a value tihub cannot read ({type(exc).__name__}).") from None
            if key == "name" and isinstance(vnode, yaml.ScalarNode) and vnode.value and not isinstance(raw[key], str):
                raw[key] = vnode.value  # `name: off` / `name: 2023` mean the text, not a bool/number
            lines[key] = vnode.start_mark.line + 1
        specs.append(_validate(raw, lines, line, where, seen))
    return specs


def _validate(raw: dict[str, Any], lines: dict[str, int], line: int, where: str, seen: dict[str, int]) -> SourceSpec:
    kind = raw.get("kind")
    if "name" not in raw:
        raise ConfigError(f"{where} line {line}: a source needs a `name`.")
    name = raw["name"]
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ConfigError(f"{where} line {lines['name']}: bad source name {_short(name)} (one word, no spaces).")
    if not name.isprintable() or len(name) > 100:  # control characters would reach the terminal in every listing
        raise ConfigError(f"{where} line {lines['name']}: bad source name {_short(name)} (control or invisible characters, or over 100 characters).")
    if name in seen:
        raise ConfigError(f"{where} line {lines['name']}: source name {name!r} is already used on line {seen[name]}.")
    seen[name] = lines["name"]
    if kind not in SOURCE_KINDS:
        at = lines.get("kind", line)
        raise ConfigError(
            f"{where} line {at}: unknown kind {_short(kind)} for source {name!r}; use one of {', '.join(SOURCE_KINDS)}."
        )
    allowed = {**_COMMON, **_KIND_OPTIONS[kind]}
    for key, value in raw.items():
        if key not in allowed:
            raise ConfigError(
                f"{where} line {lines[key]}: unknown option `{key}` for a {kind} source "
                f"(allowed: {', '.join(sorted(allowed))})."
            )
        expected = allowed[key]
        if value is None or (expected is not bool and isinstance(value, bool)) or not isinstance(value, expected):
            tname = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
            article = "an" if tname[0] in "aeiou" else "a"
            raise ConfigError(f"{where} line {lines[key]}: `{key}` must be {article} {tname}, not {_short(value)}.")
        if expected is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} line {lines[key]}: `{key}` must be a list of strings, not {_short(value)}.")
    for key in _REQUIRED.get(kind, ()):
        if key not in raw:
            raise ConfigError(f"{where} line {line}: the {kind} source {name!r} needs `{key}`.")
    if "url" in raw:
        url = raw["url"]
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        ok = {"http", "https"} | ({"ssh", "git", "file"} if kind == "git" else set())
        if scheme not in ok:
            raise ConfigError(
                f"{where} line {lines['url']}: the URL {_short(url)} of source {name!r} must use "
                f"{' or '.join(sorted(ok))}."
            )
        if scheme == "file" and not raw.get("allow_file", False):
            raise ConfigError(
                f"{where} line {lines['url']}: file:// URLs need `allow_file: true` on source {name!r}."
            )
    options = {k: v for k, v in raw.items() if k not in _COMMON}
    if kind == "huggingface":
        options.setdefault("author", "sd-concepts-library")
    return SourceSpec(
        name=name,
        kind=kind,
        options=options,
        nsfw=bool(raw.get("nsfw", False)),
        allow_private=bool(raw.get("allow_private", False)),
        enabled=bool(raw.get("enabled", True)),
        line=line,
    )
