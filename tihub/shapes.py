"""The JSON vocabulary (README "JSON output"): how library rows become the documented items.

One mapping, shared by the CLI's `--json` and the web API, so both faces print the same shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def item(ok: bool, error: str | None = None, **facts: Any) -> dict[str, Any]:
    """One item of a `--json` list: its facts, then `ok`, then `error` (only when not ok)."""
    out = dict(facts)
    out["ok"] = bool(ok)
    if not ok:
        out["error"] = error or "failed."
    else:
        out.pop("error", None)
    return out


def checkpoint_name(label: str | None, sd_checkpoint: str | None) -> str | None:
    """The model name out of a "name [hash]" label (None for unknown names)."""
    if not label:
        return None
    if sd_checkpoint and label.endswith(f" [{sd_checkpoint}]"):
        label = label[: -len(sd_checkpoint) - 3]
    return None if label in ("", "?") else label


def compat_item(c: dict[str, Any]) -> dict[str, Any]:
    """An entry's fit on one known model, as `tihub compat --json` items are: its `fit` and the
    per-app verdicts `apps` ({app: {fit, reason}}, as tihub.catalog.compat_rules makes them)."""
    return dict(c)


def list_item(folder: Path, row: dict[str, Any]) -> dict[str, Any]:
    """A `tihub list` row in the JSON vocabulary: `path` on disk, `trained_on` hash and name."""
    out = {k: v for k, v in row.items() if k not in ("sd_checkpoint", "sd_checkpoint_name", "trained_on")}
    out["path"] = str(folder / row["path"])
    out["trained_on"] = row.get("sd_checkpoint")
    out["trained_on_name"] = checkpoint_name(row.get("trained_on"), row.get("sd_checkpoint")) or row.get("sd_checkpoint_name")
    problems = row.get("problems") or []
    return item(not problems, "; ".join(problems), **out)


def show_item(entry: dict[str, Any]) -> dict[str, Any]:
    """A catalogue entry (`Hub.show`) in the JSON vocabulary, as `tihub show --json`: `triggers` a
    list; files with `path`, `trained_on` and `trained_on_name`; per-app verdicts as `fit`."""
    out = {k: v for k, v in entry.items() if k != "trigger"}
    triggers = [entry["trigger"]] if entry.get("trigger") else []
    for v in (entry.get("triggers") or {}).values():
        for word in v if isinstance(v, list) else [v]:
            if isinstance(word, str) and word not in triggers:
                triggers.append(word)
    out["triggers"] = triggers
    out["files"] = [
        {
            **{k: v for k, v in f.items() if k not in ("local_path", "sd_checkpoint", "sd_checkpoint_name")},
            "path": f.get("local_path"),
            "trained_on": f.get("sd_checkpoint"),
            "trained_on_name": f.get("sd_checkpoint_name"),
        }
        for f in entry.get("files") or []
    ]
    out["compat"] = [compat_item(c) for c in entry.get("compat") or []]
    return item(True, **out)
