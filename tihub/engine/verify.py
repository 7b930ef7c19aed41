"""`verify`: does an embedding load on a model, are its numbers sane, and what does it do?

Checks, in order (each adds a line to `checks`):
1. readable: the file parses (tihub.formats);
2. width: its vectors fit the model's text encoder(s) (SDXL needs clip_l + clip_g);
3. finite: no NaN or infinite numbers;
4. norms: each vector's L2 norm against the model's own token-embedding norms. Vectors far
   above the vocabulary's largest norms are typical of over-trained ("burnt") embeddings:
   above 4x the vocabulary's 99th percentile it is flagged `strong`, above 8x `over-trained`;
5. preview: the standard preview grid (skipped with `grid=False`);
6. reproduce (`reproduce_published`, `tihub verify --reproduce`): the entry's published previews
   made on this model (their `Model hash` names it) are regenerated from their settings and
   each is compared with its picture (SSIM and mean abs difference at 128 px, see
   engine/reproduce.py); the numbers go into the same record (`details.reproduced`).

The outcome is `ok`, `warning` (loads, but flagged) or `failed`, and is recorded in the catalogue
(`verifications`: model hash, date, result, details, grid path) when a catalogue is given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tihub.errors import TihubError

STRONG = 4.0
OVERTRAINED = 8.0


@dataclass
class Verification:
    name: str
    file: str | None
    model: str
    model_hash: str | None
    result: str = "ok"  # ok | warning | failed
    checks: list[dict[str, Any]] = field(default_factory=list)
    norms: dict[str, Any] = field(default_factory=dict)
    grid: str | None = None
    warnings: list[str] = field(default_factory=list)
    reproduced: list[dict[str, Any]] = field(default_factory=list)  # per published preview

    def add(self, check: str, ok: bool | None, detail: str) -> None:
        self.checks.append({"check": check, "status": "ok" if ok else ("warning" if ok is None else "failed"), "detail": detail})
        if ok is False:
            self.result = "failed"
        elif ok is None and self.result == "ok":
            self.result = "warning"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _widths(widths: dict[str, int]) -> str:
    """{"clip_l": 768, "clip_g": 1280} as words: "clip_l 768 + clip_g 1280"."""
    return " + ".join(f"{k} {v}" for k, v in widths.items())


def vocabulary_norms(table: Any) -> dict[str, float]:
    """Statistics of a token-embedding table's row norms (torch tensor [vocab, width])."""
    norms = table.detach().float().norm(dim=1).cpu().numpy()
    return {"median": float(np.median(norms)), "p99": float(np.percentile(norms, 99)), "max": float(norms.max())}


def check_numbers(arrays: dict[str, np.ndarray], tables: dict[str, Any], v: Verification) -> None:
    finite = all(np.isfinite(a).all() for a in arrays.values())
    v.add("finite", finite, "all numbers finite" if finite else "holds NaN or infinite numbers; the file is damaged or training diverged")
    if not finite:
        return
    worst = 0.0
    for key, arr in arrays.items():
        stats = vocabulary_norms(tables[key])
        norms = np.linalg.norm(arr.astype(np.float64), axis=1)
        ratio = float(norms.max() / stats["p99"]) if stats["p99"] > 0 else float("inf")
        worst = max(worst, ratio)
        v.norms[key] = {"vectors": [round(float(n), 4) for n in norms], "vocabulary": {k: round(x, 4) for k, x in stats.items()}, "max_ratio": round(ratio, 2)}
    if worst > OVERTRAINED:
        v.add("norms", None, f"over-trained: a vector's norm is {worst:.1f}x the vocabulary's 99th percentile (above {OVERTRAINED:g}x); expect burnt, oversaturated images, try weight (name:0.6) or an earlier checkpoint")
    elif worst > STRONG:
        v.add("norms", None, f"strong: a vector's norm is {worst:.1f}x the vocabulary's 99th percentile; it may dominate prompts")
    else:
        v.add("norms", True, f"vector norms within {worst:.1f}x of the vocabulary's 99th percentile")


def verify(engine: Any, name: str, path: Path | None = None, embedding: Any = None, grid: bool = True, steps: int = 20, size: Any = None, out: Path | None = None, kind: str | None = None) -> Verification:
    """Verify embedding `name` (from `path`, `embedding`, or the engine's vocabulary) on the engine's model."""
    model = engine.model
    v = Verification(name=name, file=str(path) if path else None, model=model.name, model_hash=model.hash)
    emb = embedding
    if emb is None:
        try:
            if path is not None:
                reader = engine.vocabulary.reader
                if reader is None:
                    from tihub.formats import read_embedding as reader
                emb = reader(Path(path))
            else:
                engine.vocabulary.refresh()
                emb = engine.vocabulary.load(name)
                found = engine.vocabulary.path_of(name)
                v.file = str(found) if found else None
                if emb is None:
                    raise TihubError(" ".join(engine.vocabulary.take_warnings()) or f"no embedding named '{name}' in the embeddings folder")
        except TihubError as exc:
            v.add("readable", False, str(exc))
            return v
    v.add("readable", True, f"{emb.vector_count} vector(s), widths {_widths(emb.widths)}, format {emb.layout}/{emb.container}")
    enc = engine.encoder()
    arrays = enc.vectors_for(emb)
    model_widths = {e.key: e.width for e in enc.encoders}
    if arrays is None:
        v.add("width", False, f"width {emb.width} ({_widths(emb.widths)}) does not fit the {model.family.upper()} model ({_widths(model_widths)}); use a model of the embedding's family ({emb.base})")
        return v
    v.add("width", True, f"fits the {model.family.upper()} model ({_widths(model_widths)})")
    tables = {e.key: e.text_encoder.get_input_embeddings().weight for e in enc.encoders}
    check_numbers({e.key: a for e, a in zip(enc.encoders, arrays, strict=True)}, tables, v)
    if v.result == "failed" or not grid:
        return v
    from tihub.engine.grid import standard_preview

    if path is not None or embedding is not None:
        engine.vocabulary.extra[name] = emb
    try:
        g = standard_preview(engine, name, kind, steps=steps, size=size, out=out)
    finally:
        if path is not None or embedding is not None:
            engine.vocabulary.extra.pop(name, None)
    v.grid = str(g.path) if g.path else None
    v.warnings = g.warnings
    return v


def reproduce_published(
    engine: Any,
    v: Verification,
    previews: list[dict[str, Any]],
    fetch: Any,
    out: Path | None = None,
    embedding: Any = None,
    steps_cap: int | None = None,
) -> Verification:
    """Regenerate the published previews made on the engine's model and compare each with its
    picture (`fetch(url) -> bytes`); adds the `reproduce` check and `v.reproduced`."""
    from tihub.engine.reproduce import reproduce_previews

    if embedding is not None:
        engine.vocabulary.extra[v.name] = embedding
    try:
        checks = reproduce_previews(engine, previews, fetch, out=out, steps_cap=steps_cap)
    finally:
        if embedding is not None:
            engine.vocabulary.extra.pop(v.name, None)
    v.reproduced = [c.to_dict() for c in checks]
    v.warnings += engine.vocabulary.take_warnings()
    done = [c for c in checks if c.ok]
    if not checks:
        v.add("reproduce", True, f"no published preview was made on this model (Model hash {v.model_hash}); nothing to compare")
    elif not done:
        v.add("reproduce", None, f"none of the {len(checks)} published previews made on this model could be compared: {checks[0].error}")
    else:
        sims = ", ".join(f"{c.ssim:.3f}" for c in done)
        v.add("reproduce", True, f"{len(done)} of {len(checks)} published previews made on this model regenerated; SSIM to the published pictures: {sims}")
    return v


def record(catalog: Any, v: Verification, entry_id: int | None = None, file_id: int | None = None) -> int:
    """Store the outcome in the catalogue's `verifications` table."""
    return catalog.add_verification(entry_id=entry_id, file_id=file_id, model_hash=v.model_hash, model_name=v.model, result=v.result, details=v.to_dict(), grid_path=v.grid)
