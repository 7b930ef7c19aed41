"""The typed results of `tihub.hub.Hub`: each `as_dict()` (or `item()`) is the command's `--json`
item in the shared JSON vocabulary (tihub/schemas/), built with `tihub.shapes.item`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tihub.shapes import item


@dataclass
class SearchHit:
    """One search result (a catalogue entry), as a card or a `tihub search --json` row shows it."""

    id: int
    name: str
    title: str | None
    base: str
    kind: str | None
    source: str
    trigger: str
    triggers: list[str]
    url: str | None
    sha256: str | None
    local: bool
    path: str | None
    nsfw: bool
    status: str
    manual: bool
    trained_on: str | None
    fit: str | None = None
    preview_id: int | None = None
    preview_nsfw: bool = False
    ok: bool = True
    base_model: str | None = None  # the base the source declared
    file_name: str | None = None
    size: int | None = None
    files: int = 0
    removed: bool = False  # gone upstream
    page_url: str | None = None
    fuzzy: bool = False  # shown because its name is within a typo or two of the query

    def as_dict(self) -> dict[str, Any]:
        """As a card shows it (the JSON vocabulary: `triggers` only, no `trigger`), with its
        first picture (`preview_id`) and where it is on disk (`path`)."""
        out = asdict(self)
        del out["trigger"]
        return out

    def item(self) -> dict[str, Any]:
        """As a `tihub search --json` item (tihub/schemas/search.json)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _SEARCH_ITEM_KEYS}
        if self.fit is not None:
            out["fit"] = self.fit
        if self.fuzzy:
            out["fuzzy"] = True
        out["triggers"] = list(self.triggers)
        out["trained_on"] = self.trained_on
        return item(True, **out)


_SEARCH_ITEM_KEYS = ("id", "name", "source", "base", "url", "sha256", "local", "title", "kind", "base_model", "nsfw",
                     "status", "manual", "file_name", "size", "files", "removed", "page_url")


@dataclass
class FetchResult:
    """The outcome of fetching one catalogue entry's file."""

    target: str
    ok: bool
    status: str  # fetched | exists | manual | failed
    path: str | None = None
    sha256: str | None = None
    size: int | None = None
    converted: bool = False
    error: str | None = None
    name: str | None = None  # the file's name (trigger word)
    url: str | None = None
    resumed_from: int | None = None  # bytes an interrupted download was continued from
    already_local: bool = False  # the catalogue knew it on disk: nothing was downloaded
    manual: bool = False  # failed because the file is a manual download (a page to open in a browser)

    def as_dict(self) -> dict[str, Any]:
        """As a `tihub fetch --json` item (every key present, null when unknown; `status` "manual"
        for a manual download)."""
        status = "manual" if self.manual else self.status
        return item(self.ok, self.error or f"{self.target} failed.", target=self.target, status=status, name=self.name,
                    path=self.path, url=self.url, sha256=self.sha256, size=self.size, converted=self.converted,
                    resumed_from=self.resumed_from)


@dataclass
class ImportResult:
    """One file added by `Hub.import_files` (`tihub import --json` item): where it went and what it is."""

    input: str
    ok: bool
    status: str  # imported | exists | failed
    path: str | None = None
    entry: str | None = None  # the catalogue entry it matched
    matched_by: str | None = None  # sha256 | name
    identified: str | None = None  # catalog | civitai: what recognised the bytes
    source: str | None = None  # the catalogue source (or civitai) the bytes come from
    page_url: str | None = None
    triggers: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # files on disk with the very same bytes
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return item(self.ok, self.error or f"{self.input} failed.", input=self.input, status=self.status,
                    name=Path(self.path).stem if self.path else None, path=self.path, entry=self.entry,
                    matched_by=self.matched_by, identified=self.identified, source=self.source, page_url=self.page_url,
                    triggers=list(self.triggers), duplicates=list(self.duplicates))


@dataclass
class CompatResult:
    """How one embedding fits a model (`tihub compat --json` item); `apps` holds each app's verdict."""

    name: str
    ok: bool
    fit: str | None = None  # trained-on | same-family | partial | wont-load | unknown
    reason: str | None = None
    trained_on: str | None = None
    trained_on_name: str | None = None
    line: str | None = None  # a fine-tune line (pony, illustrious, ...) it was made for
    path: str | None = None
    source: str | None = None
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> {fit, reason}
    app: str | None = None  # the app `fit` and `reason` are for (None: the family verdict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if not self.ok:
            return item(False, self.error, name=self.name, fit=None, reason=None, trained_on=None, trained_on_name=None)
        return item(True, name=self.name, fit=self.fit, reason=self.reason, trained_on=self.trained_on,
                    trained_on_name=self.trained_on_name, line=self.line, path=self.path, source=self.source,
                    apps=self.apps, **({"app": self.app} if self.app else {}))


@dataclass
class CompatReport:
    """The verdicts of `Hub.judge` on one model (`model`: a tihub.compat.KnownModel)."""

    model: Any
    results: list[CompatResult] = field(default_factory=list)


@dataclass
class ExportResult:
    """One embedding copied into another app's folder (`tihub export --json` item)."""

    name: str
    ok: bool
    status: str  # exported | exists | failed
    path: str | None = None
    triggers: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return item(self.ok, self.error or f"{self.name} failed.", name=self.name, status=self.status, path=self.path,
                    triggers=list(self.triggers))


@dataclass
class Picture:
    """One generated picture (`tihub generate --json` item): its file, seed and A1111 infotext."""

    path: str
    seed: int
    infotext: str
    embeddings: list[str] = field(default_factory=list)  # embedding names the prompts used
    plan: dict[str, Any] | None = None  # what its batch ran: sampler, schedule, sigmas, RNG, seeds

    def as_dict(self) -> dict[str, Any]:
        return item(True, path=self.path, seed=self.seed, infotext=self.infotext, embeddings=list(self.embeddings), plan=self.plan)


@dataclass
class GenerateResult:
    """The pictures of one `Hub.generate` call, and the warnings it gave (one sentence each)."""

    pictures: list[Picture]
    model: str
    model_hash: str | None = None
    warnings: list[str] = field(default_factory=list)
    ok: bool = True

    def items(self) -> list[dict[str, Any]]:
        """As `tihub generate --json`: one item per picture."""
        return [p.as_dict() for p in self.pictures]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "pictures": self.items(), "model": self.model, "model_hash": self.model_hash,
                "warnings": list(self.warnings)}


@dataclass
class GridResult:
    """A grid picture (`tihub grid --json` item): the whole grid, each cell, the pipeline calls."""

    name: str | None
    path: str
    cells: list[str] = field(default_factory=list)
    pipeline_calls: int = 0
    warnings: list[str] = field(default_factory=list)
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return item(True, name=self.name, path=self.path, cells=list(self.cells), pipeline_calls=self.pipeline_calls)


@dataclass
class VerifyResult:
    """How an embedding fared on a model (`tihub verify --json` item); recorded in the catalogue."""

    name: str
    path: str | None
    model: str
    model_hash: str | None
    result: str  # ok | warning | failed
    checks: list[dict[str, Any]] = field(default_factory=list)  # {check, status, detail}
    norms: dict[str, Any] = field(default_factory=dict)
    grid: str | None = None
    warnings: list[str] = field(default_factory=list)
    reproduced: list[dict[str, Any]] = field(default_factory=list)  # per published preview: ssim, mad, ...

    @property
    def ok(self) -> bool:
        return self.result != "failed"

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in self.checks if c["status"] == "failed")
        return f"{self.name} failed verification on {self.model}: {failed}."

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "model": self.model, "model_hash": self.model_hash, "result": self.result, "checks": self.checks,
             "norms": self.norms, "grid": self.grid, "warnings": self.warnings, "reproduced": self.reproduced, "path": self.path}
        return item(self.ok, self.error, **d)


@dataclass
class Facets:
    """The values a search can be narrowed by."""

    bases: list[str] = field(default_factory=lambda: ["sd1", "sd2", "sdxl", "unknown"])
    kinds: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)  # known models: name, family, autov2
