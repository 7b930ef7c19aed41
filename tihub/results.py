"""The typed results of `tihub.hub.Hub`: each `as_dict()` (or `item()`) is the command's `--json`
item in the shared JSON vocabulary (tihub/schemas/), built with `tihub.shapes.item`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tihub.shapes import item, list_item, show_item


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
    model: str | None = None  # the model's label (`Hub.compat`; `Hub.judge` keeps it on the report)

    def as_dict(self) -> dict[str, Any]:
        more = {"model": self.model} if self.model is not None else {}
        if not self.ok:
            return item(False, self.error, name=self.name, fit=None, reason=None, trained_on=None, trained_on_name=None, **more)
        return item(True, name=self.name, fit=self.fit, reason=self.reason, trained_on=self.trained_on,
                    trained_on_name=self.trained_on_name, line=self.line, path=self.path, source=self.source,
                    apps=self.apps, **({"app": self.app} if self.app else {}), **more)


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
        failed = "; ".join(f"{c['check']}: {str(c['detail']).rstrip('. ')}" for c in self.checks if c["status"] == "failed")
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


@dataclass
class TrainResult:
    """A finished training run (`tihub train --json` item): the embedding file, the run folder's
    checkpoints, previews and loss log, and the model hash it was trained on."""

    name: str
    path: str
    run_dir: str
    steps: int
    pictures: int
    final_loss: float | None
    trained_on: str | None
    loss_csv: str
    loss_png: str | None
    seconds: float
    steps_from: str | None = None  # "cuda graph" when the steps were replayed from one
    file_id: int | None = None  # the catalogue file row it was recorded as
    extra_paths: list[str] = field(default_factory=list)  # other formats written beside `path`
    checkpoints: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return item(True, name=self.name, path=self.path, extra_paths=list(self.extra_paths), run_dir=self.run_dir,
                    steps=self.steps, pictures=self.pictures, final_loss=self.final_loss, trained_on=self.trained_on,
                    checkpoints=list(self.checkpoints), previews=list(self.previews), loss_csv=self.loss_csv,
                    loss_png=self.loss_png, seconds=self.seconds, steps_from=self.steps_from, file_id=self.file_id)


@dataclass
class SyncResult:
    """How syncing one source went (`tihub sync --json` item), with its one-line `summary`."""

    name: str
    kind: str
    status: str  # ok | unchanged | failed
    summary: str
    new: int = 0
    updated: int = 0
    removed: int = 0
    revived: int = 0
    unchanged: int = 0
    total: int = 0
    error: str | None = None
    seconds: float = 0.0
    offline: bool = False  # failed because a host name did not resolve
    deep: dict[str, int] | None = None  # what deep sync read (tihub.deep.DeepStats)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict[str, Any]:
        return item(self.ok, self.error, name=self.name, kind=self.kind, status=self.status, new=self.new,
                    updated=self.updated, removed=self.removed, revived=self.revived, unchanged=self.unchanged,
                    total=self.total, seconds=self.seconds, offline=self.offline, deep=self.deep)


@dataclass
class SourceInfo:
    """One source (`tihub sources --json` item): its settings in sources.yaml and its last sync."""

    name: str
    kind: str
    target: str  # its URL, author or folder ("" for one only the catalogue knows)
    enabled: bool
    nsfw: bool
    allow_private: bool
    status: str  # ok | unchanged | failed | never synced | ... (not in sources.yaml)
    last_sync: str | None = None
    error: str | None = None  # the last sync's error
    entries: int = 0
    removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.status.startswith("failed")

    def as_dict(self) -> dict[str, Any]:
        return item(self.ok, self.error, name=self.name, kind=self.kind, target=self.target, enabled=self.enabled,
                    nsfw=self.nsfw, allow_private=self.allow_private, last_sync=self.last_sync, status=self.status,
                    entries=self.entries, removed=self.removed)


@dataclass
class RemoveResult:
    """One embedding deleted from embeddings/ (`tihub remove --json` item) with its sidecars."""

    name: str
    path: str | None
    sidecars: list[str] = field(default_factory=list)  # NAME.preview.* and NAME.json removed with it
    ok: bool = True
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return item(self.ok, self.error, name=self.name, path=self.path, sidecars=list(self.sidecars))


@dataclass
class LocalFile:
    """One file in embeddings/ as `tihub list` shows it; `path` is relative to `folder`
    (embeddings/), `problems` one sentence each (`ok` when none)."""

    name: str
    path: str
    folder: str  # the embeddings/ folder `path` is relative to
    format: str | None = None
    base: str | None = None
    vectors: int | None = None
    widths: dict[str, int] | None = None
    sd_checkpoint: str | None = None  # the trained-on hash
    sd_checkpoint_name: str | None = None  # the name the file recorded for it
    trained_on: str | None = None  # "name [hash]" as the table shows it
    entry: str | None = None  # the catalogue entry with these bytes
    source: str | None = None
    sha256: str | None = None
    size: int | None = None
    problems: list[str] = field(default_factory=list)
    readable: bool = True
    identified: str | None = None  # catalog | civitai: what recognised the bytes
    page_url: str | None = None
    triggers: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # other paths with the very same bytes

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> dict[str, Any]:
        """The `tihub list` row (path relative to embeddings/, no `ok`)."""
        out = asdict(self)
        del out["folder"]
        return out

    def as_dict(self) -> dict[str, Any]:
        """As a `tihub list --json` item (`path` on disk, `trained_on` the hash, `trained_on_name`)."""
        return list_item(Path(self.folder), self.row())


@dataclass
class EntryDetail:
    """Everything the catalogue knows about one entry (`Hub.show`); `data` holds it all as
    `tihub show` reads it (files, previews, verifications, training runs, compat), the fields
    are its most used facts. `as_dict()` is the `tihub show --json` item."""

    id: int
    name: str
    source: str
    base: str
    kind: str | None
    title: str | None
    nsfw: bool
    data: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        return True

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.data.get("files") or [])

    @property
    def pictures(self) -> list[dict[str, Any]]:
        return list(self.data.get("pictures") or [])

    def as_dict(self) -> dict[str, Any]:
        return show_item(self.data)


@dataclass
class InspectResult:
    """What one embedding file is, read safely without the catalogue (`tihub inspect --json`
    item); a file that could not be read is `ok` False with its one-sentence `error`."""

    path: str
    ok: bool
    name: str
    error: str | None = None
    file_kind: str | None = None  # what a file that is no embedding is (a checkpoint, a LoRA, ...)
    format: str | None = None  # the container: safetensors, pt, ...
    layout: str | None = None
    internal_name: str | None = None  # the name the file records for itself
    vectors: int = 0
    widths: dict[str, int] = field(default_factory=dict)
    base: str = "unknown"
    dtype: str | None = None
    step: int | None = None
    trained_on: str | None = None
    trained_on_name: str | None = None
    size: int | None = None
    sha256: str | None = None
    shorthash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "ok": self.ok}
        if not self.ok:
            out["error"] = self.error or f"{self.path} could not be read."
        out.update(file_kind=self.file_kind, format=self.format, layout=self.layout, name=self.name,
                   internal_name=self.internal_name, vectors=self.vectors, widths=self.widths, base=self.base,
                   dtype=self.dtype, step=self.step, trained_on=self.trained_on, trained_on_name=self.trained_on_name,
                   size=self.size, sha256=self.sha256, shorthash=self.shorthash)
        return out


@dataclass
class SimilarHit:
    """One catalogued embedding whose vectors point the same way as the one asked about
    (`tihub similar --json` item); `score` is the cosine of the summaries (1.0 = same directions)."""

    name: str | None
    score: float
    source: str | None = None
    base: str | None = None
    widths: dict[str, int] | None = None
    vectors: int | None = None
    sha256: str | None = None
    path: str | None = None
    entry_id: int | None = None
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "name": self.name, "score": self.score, "source": self.source, "base": self.base,
                "widths": self.widths, "vectors": self.vectors, "sha256": self.sha256, "path": self.path,
                "entry_id": self.entry_id}


@dataclass
class OutdatedFile:
    """One fetched file still on disk and whether its source has newer bytes (`tihub outdated
    --json` item): `status` current | newer | gone | unknown, `latest` what is newer, `reason` why."""

    name: str
    path: str
    sha256: str | None
    source: str | None
    remote_id: str | None = None
    version: str | None = None
    status: str = "current"
    latest: dict[str, Any] | None = None  # entry_id, version, url, sha256 of the newer file
    reason: str | None = None
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "name": self.name, "path": self.path, "sha256": self.sha256, "source": self.source,
                "remote_id": self.remote_id, "version": self.version, "status": self.status, "latest": self.latest,
                "reason": self.reason}


@dataclass
class DupeMember:
    """One embedding in a group of near-duplicates; `also` the other names its bytes are listed under."""

    name: str | None
    source: str | None = None
    base: str | None = None
    sha256: str | None = None
    path: str | None = None
    entry_id: int | None = None
    also: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "base": self.base, "sha256": self.sha256, "path": self.path,
                "entry_id": self.entry_id, "also": list(self.also)}


@dataclass
class DupeGroup:
    """A group of near-duplicate embeddings (`tihub dupes --json` item): re-uploads, renamed
    copies, light fine-tunes, linked by pairs scoring at least the threshold."""

    group: int  # its number, from 1
    min_score: float
    max_score: float
    members: list[DupeMember] = field(default_factory=list)
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "group": self.group, "min_score": self.min_score, "max_score": self.max_score,
                "members": [m.as_dict() for m in self.members]}


@dataclass
class VectorTokens:
    """The nearest vocabulary tokens of one vector of an embedding on a model's token table
    (`tihub explain --json` item); `tokens` holds {token, id, score} best first. An encoder the
    model has no table of that width for is one failed item (`index` None)."""

    name: str
    encoder: str
    ok: bool = True
    index: int | None = None
    norm: float | None = None
    model_token_norm: float | None = None  # the mean norm of the model's own token vectors
    tokens: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"ok": False, "encoder": self.encoder, "error": self.error or f"{self.name} failed.", "name": self.name}
        return {"ok": True, "encoder": self.encoder, "index": self.index, "norm": self.norm,
                "model_token_norm": self.model_token_norm, "tokens": [dict(t) for t in self.tokens], "name": self.name}


@dataclass
class ModelHash:
    """Every hash of one model file or diffusers folder (`tihub hash --json` item): sha256,
    AutoV2, the old A1111 hash, the short hash, its family and text-encoder widths; `note` says
    why a file is no Stable Diffusion model (family "other")."""

    path: str
    sha256: str
    autov2: str
    old_hash: str | None
    shorthash: str
    family: str  # sd1 | sd2 | sdxl | ... | other
    widths: dict[str, int] = field(default_factory=dict)
    prediction: str | None = None  # "v" | "epsilon" when the model says so
    note: str | None = None
    folder: bool = False  # a diffusers folder (hash of its weight files)
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return item(True, path=self.path, sha256=self.sha256, autov2=self.autov2, old_hash=self.old_hash,
                    shorthash=self.shorthash, family=self.family, widths=self.widths, prediction=self.prediction,
                    note=self.note)


@dataclass
class UpgradeResult:
    """What `tihub fetch --upgrade` did to one local file (`--json` item): `upgraded` with the new
    file's `path` and `sha256` (and `old_path`, the replaced file when kept), or not upgraded
    with the `tihub outdated` `status` and `reason`; a name tihub did not fetch, or a failed
    download, is a failed item (`path` None for the former)."""

    name: str
    ok: bool
    status: str | None = None  # upgraded, or the outdated status (current | gone | unknown | newer)
    path: str | None = None
    upgraded: bool = False
    sha256: str | None = None
    old_path: str | None = None
    reason: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if not self.ok:
            where = {"path": self.path} if self.path is not None else {}
            return {"ok": False, "name": self.name, **where, "error": self.error or f"{self.name} could not be upgraded."}
        if self.upgraded:
            return {"ok": True, "name": self.name, "path": self.path, "sha256": self.sha256, "status": self.status,
                    "upgraded": True, "old_path": self.old_path, "reason": self.reason}
        return {"ok": True, "name": self.name, "path": self.path, "status": self.status, "upgraded": False,
                "reason": self.reason}


@dataclass
class PromptEmbedding:
    """One embedding of embeddings/ a prompt uses: its file (`path`, None when held in memory),
    vector count and text-encoder widths (None when it could not be read)."""

    name: str
    path: str | None = None
    vectors: int | None = None
    widths: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "vectors": self.vectors, "widths": self.widths}


@dataclass
class PromptReport:
    """How A1111 reads one prompt (`tihub prompt --json`, one object): its AND parts, the
    prompt-editing `schedule` ([last step, text] pairs), the `attention` ([text, weight] pairs)
    of the final text, its token count in 75-token chunks, each scheduled text's tokens
    (`per_text`), the embeddings it uses and the warnings reading them gave."""

    prompt: str
    steps: int
    and_parts: list[list[Any]] = field(default_factory=list)
    schedule: list[list[Any]] = field(default_factory=list)
    attention: list[list[Any]] = field(default_factory=list)
    tokens: int = 0
    chunks: int = 0
    chunk_tokens: list[int] = field(default_factory=list)
    per_text: list[dict[str, Any]] = field(default_factory=list)  # {text, tokens, chunks, embeddings}
    embeddings: list[PromptEmbedding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return item(True, prompt=self.prompt, steps=self.steps, and_parts=self.and_parts, schedule=self.schedule,
                    attention=self.attention, tokens=self.tokens, chunks=self.chunks, chunk_tokens=list(self.chunk_tokens),
                    per_text=self.per_text, embeddings=[e.as_dict() for e in self.embeddings],
                    warnings=list(self.warnings))
