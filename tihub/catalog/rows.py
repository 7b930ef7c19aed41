"""Small helpers shared by the catalogue modules: JSON columns, chunked IN lists, the file a
listing shows for an entry."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

CHUNK = 500  # bound parameters per IN (...) query


def loads(value: str | None, default: Any = None) -> Any:
    """A JSON column's value, or `default` when empty or not JSON."""
    if value is None or value == "":
        return default
    try:
        return json.loads(value)
    except ValueError:
        return default


def chunks(items: list[Any], n: int = CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def primary_file(files: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The file an entry is shown with: on disk first, then downloadable, then the oldest."""
    if not files:
        return None
    return sorted(files, key=lambda f: (not f["local_path"], bool(f["manual"]), not f["url"], f["file_id"]))[0]
