"""Indexers, one per source kind, all with the signature `index(spec, ctx) -> Iterator[Candidate]`
(see `tihub.sources.base`). They are imported only when a source of their kind is synced."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

from tihub.errors import SourceError

# kind -> "module:function"
INDEXERS: dict[str, str] = {
    "huggingface": "tihub.sources.huggingface:index",
    "git": "tihub.sources.git:index",
    "links": "tihub.sources.links:index",
    "civitai": "tihub.sources.civitai:index",
    "local": "tihub.sources.local:index",
}

Indexer = Callable[[Any, Any], Iterator[Any]]


def get_indexer(kind: str) -> Indexer:
    """The indexer function for a source kind (imported now)."""
    target = INDEXERS.get(kind)
    if target is None:
        raise SourceError(f"No indexer handles sources of kind {kind!r}; use one of {', '.join(INDEXERS)}.")
    if callable(target):
        return target  # tests may register a function directly
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise SourceError(f"The {kind} indexer is not available in this tihub build.") from None
        raise
    return getattr(module, attr)
