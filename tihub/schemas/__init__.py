"""The JSON Schema of every command's `--json` output (README "JSON output"), shipped with the package.

`load("inspect")` returns the schema of `tihub inspect --json`. Tests validate real output
against these files; a web API returns the same shapes.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def names() -> list[str]:
    """Every command that has a schema."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load(command: str) -> dict[str, Any]:
    """The JSON Schema of `tihub COMMAND --json`."""
    return json.loads(resources.files(__name__).joinpath(f"{command}.json").read_text(encoding="utf-8"))
