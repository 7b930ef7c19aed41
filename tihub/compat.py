"""Will this embedding work on my model? Model identification and per-embedding verdicts.

A model is named by a file (hashed through the hash cache, family read from its headers by
`tihub.checkpoints`) or by any hash form: A1111 old hash (8 hex), AutoV2 (10 hex) or the full
sha256. A hash is looked up, in order, among:

1. the catalogue's `models` table (every model tihub hashed, earlier Civitai answers);
2. the built-in table `tihub/data/known_models.json` (well-known checkpoints, each row citing
   where its hash was seen), which is also copied into the `models` table so `tihub search
   --model HASH` finds the same models;
3. Civitai's `GET /api/v1/model-versions/by-hash/{hash}` (or, for many hashes at once,
   `POST /api/v1/model-versions/by-hash` with a JSON array), whose answer (or "not found", kept
   for `NOT_FOUND_TTL` seconds) is cached in the `models` table.

The verdict for one embedding comes from `check()` (which applies the shared family rule
`tihub.catalog.compat_rules.fits`): trained-on / same-family / partial / wont-load / unknown,
with one sentence of reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from tihub.catalog.compat_rules import (
    APP_LABELS,
    APPS,
    FAMILY_LABELS,
    LINE_LABELS,
    PARTIAL,
    SAME_FAMILY,
    TRAINED_ON,
    UNKNOWN,
    WONT_LOAD,
    app_fits,
    base_from_widths,
    encoders_of,
    family_fit,
    fits,
    line_of,
    model_family,
)
from tihub.errors import ConfigError, NetworkError

log = logging.getLogger("tihub.compat")

if TYPE_CHECKING:  # pragma: no cover
    from tihub.catalog.store import Catalog

NOT_FOUND_TTL = 7 * 24 * 3600  # a Civitai "not found" is asked again after a week
STATUSES = (TRAINED_ON, SAME_FAMILY, PARTIAL, WONT_LOAD, UNKNOWN)
FAMILY_WIDTHS = {
    "sd1": {"clip_l": 768},
    "sd2": {"clip_h": 1024},
    "sdxl": {"clip_l": 768, "clip_g": 1280},
    "sdxl-refiner": {"clip_g": 1280},
    "sd3": {"clip_l": 768, "clip_g": 1280, "t5xxl": 4096},
    "flux": {"clip_l": 768, "t5xxl": 4096},
}
FAMILY_NAMES = FAMILY_LABELS
VARIANT_LABELS = {"inpainting": "an inpainting model", "768-v": "the 768-v (v-prediction) model",
                  "512": "the 512 (epsilon) model"}
_HEX = re.compile(r"[0-9a-f]{8,64}")


def normalize_hash(value: str) -> str:
    """Lower-case hex without decorations (`[abc]`, `0x`); raise ConfigError if it is no hash form."""
    h = (value or "").strip().strip("[]()").strip().lower().removeprefix("0x")
    if not _HEX.fullmatch(h) or len(h) not in (8, 10, 12, 64):
        raise ConfigError(
            f"{value!r} is not a model hash; give the A1111 old hash (8 hex), AutoV2 (10 hex) or the full sha256 (64 hex)."
        )
    return h


@dataclass
class KnownModel:
    """A model tihub can name: by file or by hash."""

    query: str
    name: str | None = None
    family: str | None = None  # sd1 | sd2 | sdxl | None when unknown
    sha256: str | None = None
    autov2: str | None = None
    old_hash: str | None = None
    origin: str = "unknown"  # hashed | builtin | civitai | catalog | unknown
    widths: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    variant: str | None = None  # inpainting | 512 | 768-v | refiner, when known
    base_model: str | None = None  # the base-model text a source gave (Civitai "Pony", ...)

    @property
    def line(self) -> str | None:
        """The SDXL fine-tune line (pony | illustrious | noobai) the model belongs to, if known."""
        if self.family != "sdxl":
            return None
        return line_of(self.base_model, self.name)

    @property
    def hashes(self) -> list[str]:
        out = [h for h in (self.sha256, self.autov2, self.old_hash) if h]
        if self.sha256 and self.sha256[:10] not in out:
            out.append(self.sha256[:10])
        return out

    def matches(self, any_hash: str | None) -> bool:
        """True when `any_hash` (8/10/12/64 hex) names this model."""
        if not any_hash:
            return False
        h = any_hash.strip().strip("[]").lower().removeprefix("0x")
        if not h:
            return False
        if len(h) == 8:
            return h == self.old_hash
        if self.sha256:
            return self.sha256.startswith(h) if len(h) < 64 else self.sha256 == h
        return bool(self.autov2) and (h == self.autov2 or (len(h) > 10 and h.startswith(self.autov2)))

    def label(self) -> str:
        h = self.autov2 or self.old_hash or (self.sha256 or "")[:10] or self.query
        return f"{self.name} [{h}]" if self.name else f"the model [{h}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "sha256": self.sha256,
            "autov2": self.autov2,
            "old_hash": self.old_hash,
            "origin": self.origin,
            "widths": self.widths,
            "variant": self.variant,
            "line": self.line,
        }


# --------------------------------------------------------------------------------------------
# The verdict


def check(
    embedding_widths: Mapping[str, int] | None,
    sd_checkpoint: str | None,
    model_info: KnownModel | Mapping[str, Any] | None,
) -> tuple[str, str]:
    """(status, reason) for an embedding of these widths on this model, whatever the app.

    `model_info` is a KnownModel or a mapping with `family` and any of sha256/autov2/old_hash
    (a catalogue `models` row works). Statuses: trained-on, same-family, partial, wont-load,
    unknown. `verdict()` adds what each app does and the fine-tune line.
    """
    model = _as_model(model_info)
    widths = dict(embedding_widths or {})
    enc = encoders_of(widths)
    base = base_from_widths(widths)
    family = model.family if model.family in FAMILY_WIDTHS else None
    shown = _widths_text(widths) or "unknown widths"
    target = model.label()
    if enc - {"clip_l", "clip_h", "clip_g", "t5xxl"}:
        return UNKNOWN, f"the embedding's widths ({shown}) match no known family"
    if widths and family and (base == "unknown" or family not in ("sd1", "sd2", "sdxl")):
        # T5 embeddings, the SDXL refiner, SD3, Flux: by text encoders
        status = family_fit(enc, family)
        if base == "unknown" and status == UNKNOWN:
            return UNKNOWN, f"the embedding's widths ({shown}) match no known family"
        verdict = status
    else:
        verdict = fits(base if widths else "unknown", family, sd_checkpoint, model.hashes)
    if verdict == TRAINED_ON:
        if widths and family and base != family:
            # the file says so, but its shape cannot load there: trust the shape
            return WONT_LOAD, f"its sd_checkpoint {sd_checkpoint} names {target}, but its {shown} vectors do not fit a {FAMILY_NAMES[family]} model"
        return TRAINED_ON, f"trained on {target} (sd_checkpoint {sd_checkpoint})"
    if verdict == SAME_FAMILY:
        return SAME_FAMILY, f"{shown} fits {FAMILY_NAMES[family or base]} like {target}; it loads but may look different from the author's pictures"
    if verdict == PARTIAL:
        have = FAMILY_WIDTHS[family or "sdxl"]
        used = " + ".join(k for k in have if k in enc) or "part"
        return PARTIAL, (f"{shown} on the {FAMILY_NAMES[family or 'sdxl']} model {target}, which has "
                         f"{_widths_text(have)}: only {used} can be used, and apps differ (see per app)")
    if verdict == WONT_LOAD:
        need = _widths_text(FAMILY_WIDTHS[family]) if family else "?"
        return WONT_LOAD, f"width mismatch: the embedding has {shown} but {target} is {FAMILY_NAMES.get(family or '', '?')} ({need})"
    if not widths:
        return UNKNOWN, "the embedding's widths are unknown (not fetched or unreadable)"
    if base == "unknown":
        return UNKNOWN, f"the embedding's widths ({shown}) match no known family"
    if family is None:
        if model.origin == "hashed":
            return UNKNOWN, f"{target} is not an SD1, SD2 or SDXL model{' (' + model.note + ')' if model.note else ''}"
        return UNKNOWN, f"the family of {target} is unknown; pass --model FILE so tihub can read it"
    return UNKNOWN, "no rule applies"


def _as_model(model_info: KnownModel | Mapping[str, Any] | None) -> KnownModel:
    if isinstance(model_info, KnownModel):
        return model_info
    if model_info is not None:
        return KnownModel(
            query="",
            name=model_info.get("name"),
            family=model_info.get("family"),
            sha256=model_info.get("sha256"),
            autov2=model_info.get("autov2"),
            old_hash=model_info.get("old_hash"),
            variant=model_info.get("variant"),
        )
    return KnownModel(query="")


def verdict(
    embedding_widths: Mapping[str, int] | None,
    sd_checkpoint: str | None,
    model_info: KnownModel | Mapping[str, Any] | None,
    *,
    line: str | None = None,
    made_on: KnownModel | None = None,
) -> dict[str, Any]:
    """`check()` plus what each app does and the model line.

    Returns {"fit", "reason", "apps": {app: {"fit", "reason"}}, "line"}: every app's
    fit is the family verdict unless that app does something else with the file (A1111
    lists an SD1 embedding on SDXL as skipped, ComfyUI applies it to CLIP-L only, ...).
    `line`: the fine-tune line the embedding was made for (pony | illustrious | noobai), from
    its source's base model, its sd_checkpoint_name or its name. `made_on`: the model its
    sd_checkpoint names, when known (SD2 512 vs 768-v, inpainting notes).
    """
    model = _as_model(model_info)
    status, reason = check(embedding_widths, sd_checkpoint, model)
    notes = []
    family = model.family if model.family in FAMILY_WIDTHS else None
    if status in (TRAINED_ON, SAME_FAMILY):
        made_line = line or (made_on.line if made_on is not None else None)
        if family == "sdxl" and made_line and made_line != model.line:
            here = LINE_LABELS[model.line] if model.line else "base SDXL"
            notes.append(f"made for {LINE_LABELS[made_line]}: same architecture, trained for a different line than "
                         f"this {here} model, so expect {LINE_LABELS[made_line]}'s look and prompt style")
        if model.variant == "inpainting":
            notes.append("an inpainting model has the same text encoder, so the embedding loads there too")
        if (family == "sd2" and made_on is not None and made_on.variant and model.variant
                and made_on.variant != model.variant):
            notes.append(f"made on {made_on.label()} ({made_on.variant}); this is {VARIANT_LABELS.get(model.variant, model.variant)}: "
                         "same OpenCLIP-H encoder, so it loads, but the look can differ")
    if notes:
        reason = reason + "; " + "; ".join(notes)
    apps = app_fits(encoders_of(embedding_widths), family, status, reason)
    return {"fit": status, "reason": reason, "apps": apps, "line": line}


def _widths_text(widths: Mapping[str, int]) -> str:
    return " + ".join(f"{k} {v}" for k, v in widths.items())


# --------------------------------------------------------------------------------------------
# Known models


def variant_from_name(name: str | None, family: str | None) -> str | None:
    """inpainting / 768-v / 512 as a model's (file) name says, else None."""
    t = (name or "").lower()
    if "inpaint" in t:
        return "inpainting"
    if family == "sd2":
        if "768" in t:
            return "768-v"
        if "512" in t:
            return "512"
    return None


def builtin_models() -> list[dict[str, Any]]:
    """The rows of `tihub/data/known_models.json` (each has name, family, hashes, source)."""
    text = resources.files("tihub.data").joinpath("known_models.json").read_text(encoding="utf-8")
    return list(json.loads(text)["models"])


def builtin_lookup(h: str) -> KnownModel | None:
    for row in builtin_models():
        m = KnownModel(h, row["name"], row["family"], row.get("sha256"), row.get("autov2"), row.get("old_hash"), "builtin")
        if m.matches(h):
            m.note = row.get("source")
            m.variant = row.get("variant")
            return m
    return None


_seeded: set[int] = set()


def seed_builtin(catalog: Catalog) -> None:
    """Copy the built-in table into the catalogue's `models` table (idempotent, once per engine)."""
    key = id(catalog.engine)
    if key in _seeded:
        return
    for row in builtin_models():
        h = row.get("sha256") or row.get("autov2") or row.get("old_hash")
        found = catalog.find_model(h) if h else None
        if found is None or found.get("origin") == "builtin":
            # a row seeded by an older table is corrected (the refiner used to say "sdxl")
            if found is None or found.get("name") != row["name"] or found.get("family") != row["family"]:
                catalog.add_model(
                    row["name"], row.get("sha256"), row.get("autov2"), row.get("old_hash"), row["family"], FAMILY_WIDTHS.get(row["family"]), "builtin"
                )
    _seeded.add(key)


def _from_row(query: str, row: Mapping[str, Any]) -> KnownModel:
    widths = row.get("widths") or {}
    if isinstance(widths, str):
        widths = json.loads(widths)
    model = KnownModel(
        query,
        row.get("name"),
        row.get("family") or None,
        row.get("sha256"),
        row.get("autov2"),
        row.get("old_hash"),
        row.get("origin") or "catalog",
        dict(widths or {}),
    )
    if model.origin == "builtin":
        b = builtin_lookup(model.sha256 or model.autov2 or model.old_hash or query)
        model.variant = b.variant if b is not None else None
    model.variant = model.variant or variant_from_name(model.name, model.family)
    return model


def model_from_file(path: str | os.PathLike[str], catalog: Catalog | None = None) -> KnownModel:
    """Hash a model file or diffusers folder (through the hash cache) and read its family."""
    from tihub.checkpoints import inspect_model
    from tihub.hashing import HashCache, model_hashes

    cache = HashCache(catalog.engine) if catalog is not None else None
    hashes = model_hashes(path, cache)
    info = inspect_model(path)
    family = info.compat_family if info.compat_family in FAMILY_WIDTHS else None
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    model = KnownModel(os.fspath(path), name, family, hashes.sha256, hashes.autov2, hashes.old_hash, "hashed", dict(info.widths))
    model.variant = info.variant if info.variant not in ("refiner", "sd3", "flux") else None
    if model.variant is None and family == "sd2" and info.prediction:
        model.variant = "768-v" if info.prediction == "v" else None
    if model.variant is None:
        model.variant = variant_from_name(name, family)
    if family is None and info.reason:
        model.note = info.reason
    if catalog is not None:
        catalog.add_model(name, hashes.sha256, hashes.autov2, hashes.old_hash, family or info.family, info.widths, "hashed", os.fspath(path))
    return model


def model_from_hash(
    value: str,
    catalog: Catalog | None = None,
    *,
    civitai_url: str | None = None,
    allow_private: bool = False,
    remote: bool = True,
    client: Any = None,
) -> KnownModel:
    """Name a model from any hash form; unknown hashes still give a KnownModel (family None)."""
    h = normalize_hash(value)
    if catalog is not None:
        seed_builtin(catalog)
        row = catalog.find_model(h)
        if row is not None and not row.get("not_found"):
            return _from_row(h, row)
        if row is not None and row.get("not_found") and not _expired(row.get("checked_at")):
            return _unknown(h, "Civitai did not know this hash when last asked")
    builtin = builtin_lookup(h)
    if builtin is not None:
        return builtin
    if remote and civitai_url:
        try:
            found = civitai_by_hash(h, civitai_url, allow_private=allow_private, client=client)
        except NetworkError as exc:
            return _unknown(h, f"the Civitai lookup failed ({exc})")
        if catalog is not None:
            if found is None:
                _remember_not_found(catalog, h)
            else:
                catalog.add_model(found.name, found.sha256, found.autov2, found.old_hash, found.family, FAMILY_WIDTHS.get(found.family or ""), "civitai")
        if found is not None:
            return found
        return _unknown(h, "neither tihub nor Civitai knows this hash")
    return _unknown(h, "tihub does not know this hash; pass --model FILE to read the model itself")


def _unknown(h: str, note: str) -> KnownModel:
    m = KnownModel(h, None, None, h if len(h) == 64 else None, h if len(h) == 10 else None, h if len(h) == 8 else None, "unknown")
    m.note = note
    return m


def _expired(checked_at: str | None) -> bool:
    if not checked_at:
        return True
    try:
        when = datetime.strptime(checked_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return True
    return datetime.now(UTC) - when > timedelta(seconds=NOT_FOUND_TTL)


def _remember_not_found(catalog: Catalog, h: str) -> None:
    from sqlalchemy import text

    from tihub.catalog.db import write

    mid = catalog.add_model(
        None, h if len(h) == 64 else None, h if len(h) == 10 else None, h if len(h) == 8 else None, None, None, "civitai"
    )
    with write(catalog.engine) as conn:
        conn.execute(text("UPDATE models SET not_found = 1 WHERE id = :i"), {"i": mid})


def civitai_api(url: str | None) -> str:
    """The Civitai API root (`https://civitai.com/api/v1`) from a source's `url`, which may be
    the API root itself (as the civitai source takes it) or the site."""
    base = (url or "https://civitai.com").rstrip("/")
    return base if base.endswith("/api/v1") else base + "/api/v1"


_FULL_SHA = re.compile(r"[0-9a-f]{64}")


def civitai_version_by_hash(
    h: str, base_url: str, *, allow_private: bool = False, client: Any = None
) -> dict[str, Any] | None:
    """Civitai's model-version object for a file hash in any form (`GET .../by-hash/{hash}`:
    AutoV1, AutoV2, sha256, CRC32, BLAKE3), or None when Civitai says it knows no such file.

    Civitai answers an unknown hash with 404 and a JSON `{"error": ...}`; any other 404 (an
    HTML page from a wrong URL) is a NetworkError, so it is never cached as "not found"."""
    from tihub.net import URLPolicy, make_client, stream

    url = civitai_api(base_url) + f"/model-versions/by-hash/{h}"
    own = client is None
    client = client or make_client(timeout=15.0)
    try:
        with stream(client, "GET", url, policy=URLPolicy(allow_private=allow_private)) as resp:
            if resp.status_code == 404:
                body = _read_json(resp, 64 * 1024, f"for the hash {h}", quiet=True)
                if isinstance(body, dict) and "error" in body:
                    return None
                raise NetworkError(
                    f"{url} answered 404 without Civitai's error object; check the civitai source's `url` (the API root, e.g. https://civitai.com/api/v1)."
                )
            if resp.status_code != 200:
                raise NetworkError(f"Civitai answered {resp.status_code} for the hash {h}.")
            data = _read_json(resp, 8 * 1024 * 1024, f"for the hash {h}")
    finally:
        if own:
            client.close()
    return data if isinstance(data, dict) else None


def civitai_by_hash(h: str, base_url: str, *, allow_private: bool = False, client: Any = None) -> KnownModel | None:
    """Ask Civitai which model version has this file hash; None when it does not know it."""
    data = civitai_version_by_hash(h, base_url, allow_private=allow_private, client=client)
    return _version_model(h, data) if data is not None else None


def _read_json(resp: Any, cap: int, what: str, quiet: bool = False) -> Any:
    """Civitai's JSON answer, read at most `cap` bytes (stops reading past it); `what` ends the
    sentence "Civitai's answer ..." in the errors. `quiet`: None instead of an error for a body
    that is not JSON or too large (reading an error page)."""
    import httpx

    chunks: list[bytes] = []
    total = 0
    try:
        for part in resp.iter_bytes():
            total += len(part)
            if total > cap:
                if quiet:
                    return None
                raise NetworkError(f"Civitai's answer {what} is too large.")
            chunks.append(part)
    except httpx.HTTPError as exc:  # cut or timed out mid-body: a lookup failure, not a crash
        raise NetworkError(f"Reading Civitai's answer {what} failed: {exc}.") from None
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        if quiet:
            return None
        raise NetworkError(f"Civitai's answer {what} is not JSON.") from None


def _version_model(h: str, data: Mapping[str, Any]) -> KnownModel | None:
    """The model a Civitai model-version object describes, if one of its files has hash `h`."""
    model_name = (data.get("model") or {}).get("name") if isinstance(data.get("model"), dict) else None
    name = " ".join(x for x in (model_name, data.get("name")) if isinstance(x, str)) or None
    family = model_family(data.get("baseModel") if isinstance(data.get("baseModel"), str) else None)
    files = [f for f in (data.get("files") or []) if isinstance(f, dict)]
    sha = a2 = old = None
    for f in files:
        raw = f.get("hashes")
        hashes = {str(k).lower(): str(v).lower() for k, v in raw.items()} if isinstance(raw, dict) else {}
        cand = KnownModel(h, sha256=hashes.get("sha256"), autov2=hashes.get("autov2"), old_hash=hashes.get("autov1"))
        if cand.matches(h) or len(files) == 1:
            sha, a2, old = cand.sha256, cand.autov2 or (cand.sha256 or "")[:10] or None, cand.old_hash
            break
    if not (sha or a2 or old):
        sha, a2, old = (h if len(h) == 64 else None), (h if len(h) == 10 else None), (h if len(h) == 8 else None)
    model = KnownModel(h, name, family if family in FAMILY_WIDTHS else None, sha, a2, old, "civitai")
    base_model = data.get("baseModel")
    model.base_model = base_model if isinstance(base_model, str) else None
    model.variant = variant_from_name(f"{name} {model.base_model or ''}", model.family)
    return model


BULK_SIZE = 100  # hashes per bulk request: Civitai's limit


def civitai_lookup(
    hashes: list[str], base_url: str, *, allow_private: bool = False, client: Any = None
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Civitai's model-version objects for many file hashes: `({hash: version}, answered)`,
    where `answered` holds every hash Civitai answered about (known or not); a hash missing
    from it could not be asked (network trouble) and must not be cached as unknown.

    Full sha256 hashes go to the bulk `POST /api/v1/model-versions/by-hash` (a JSON array of at
    most 100 64-hex hashes: Civitai answers 400 to the whole request if one is shorter); the
    short forms (AutoV1 8-hex, AutoV2 10-hex, 12-hex) each take one `GET .../by-hash/{hash}`.
    """
    from tihub.net import URLPolicy, make_client, stream

    url = civitai_api(base_url) + "/model-versions/by-hash"
    wanted = list(dict.fromkeys(h.strip().lower() for h in hashes))
    full = [h for h in wanted if _FULL_SHA.fullmatch(h)]
    short = [h for h in wanted if not _FULL_SHA.fullmatch(h)]
    own = client is None
    client = client or make_client(timeout=30.0)
    found: dict[str, dict[str, Any]] = {}
    answered: set[str] = set()
    try:
        for i in range(0, len(full), BULK_SIZE):
            chunk = full[i : i + BULK_SIZE]
            body = json.dumps(chunk).encode()
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            with stream(client, "POST", url, policy=URLPolicy(allow_private=allow_private), headers=headers, content=body) as resp:
                if resp.status_code != 200:
                    raise NetworkError(f"Civitai answered {resp.status_code} to a lookup of {len(chunk)} hashes.")
                versions = _read_json(resp, 32 * 1024 * 1024, f"to a lookup of {len(chunk)} hashes")
            if not isinstance(versions, list):
                raise NetworkError(f"Civitai's answer to a lookup of {len(chunk)} hashes is not a list.")
            for version in versions:
                if not isinstance(version, dict):
                    continue
                for h in chunk:
                    if h not in found and _names_hash(version, h):
                        found[h] = version
            answered.update(chunk)
        for h in short:
            try:
                version = civitai_version_by_hash(h, base_url, allow_private=allow_private, client=client)
            except NetworkError as exc:
                log.info("Civitai lookup of %s failed: %s", h, exc)
                continue
            answered.add(h)
            if version is not None:
                found[h] = version
    finally:
        if own:
            client.close()
    return found, answered


def civitai_by_hashes(
    hashes: list[str], base_url: str, *, allow_private: bool = False, client: Any = None
) -> dict[str, KnownModel]:
    """The models Civitai knows among many hashes ({hash: model}); see `civitai_lookup`."""
    found, _ = civitai_lookup(hashes, base_url, allow_private=allow_private, client=client)
    return {h: _version_model(h, v) for h, v in found.items()}


def _names_hash(version: Mapping[str, Any], h: str) -> bool:
    """True when one of the version's files carries hash `h` in any form."""
    for f in version.get("files") or []:
        hashes = (f or {}).get("hashes") if isinstance(f, dict) else None
        if not isinstance(hashes, dict):
            continue
        forms = {str(k).lower(): str(v).lower() for k, v in hashes.items()}
        if KnownModel(h, sha256=forms.get("sha256"), autov2=forms.get("autov2"), old_hash=forms.get("autov1")).matches(h):
            return True
    return False


def name_checkpoints(
    values: list[str] | set[str],
    catalog: Catalog | None = None,
    *,
    civitai_url: str | None = None,
    allow_private: bool = False,
    remote: bool = True,
    client: Any = None,
) -> dict[str, KnownModel]:
    """Name the models behind many `sd_checkpoint` hashes: catalogue, built-in table, then one
    bulk Civitai lookup for the rest (answers and "not found" cached like single lookups).

    Returns {hash as given: KnownModel} for the hashes that could be named.
    """
    named: dict[str, KnownModel] = {}
    ask: dict[str, list[str]] = {}
    if catalog is not None:
        seed_builtin(catalog)
    for value in values:
        try:
            h = normalize_hash(value)
        except ConfigError:
            continue
        if catalog is not None:
            row = catalog.find_model(h)
            if row is not None and not row.get("not_found"):
                named[value] = _from_row(h, row)
                continue
            if row is not None and row.get("not_found") and not _expired(row.get("checked_at")):
                continue
        builtin = builtin_lookup(h)
        if builtin is not None:
            named[value] = builtin
            continue
        ask.setdefault(h, []).append(value)
    if ask and remote and civitai_url:
        try:
            versions, answered = civitai_lookup(sorted(ask), civitai_url, allow_private=allow_private, client=client)
        except NetworkError:
            return named  # unknown this time; nothing cached, asked again next time
        for h, originals in ask.items():
            if h not in answered:
                continue  # not asked this time (network): nothing cached
            model = _version_model(h, versions[h]) if h in versions else None
            if catalog is not None:
                if model is None:
                    _remember_not_found(catalog, h)
                else:
                    catalog.add_model(model.name, model.sha256, model.autov2, model.old_hash, model.family,
                                      FAMILY_WIDTHS.get(model.family or ""), "civitai")
            if model is not None:
                for v in originals:
                    named[v] = model
    return named


# --------------------------------------------------------------------------------------------
# Reports


def report_local(
    items: list[dict[str, Any]], model: KnownModel, made_on: Mapping[str, KnownModel] | None = None
) -> list[dict[str, Any]]:
    """Verdicts for listed local files (dicts with name, widths, sd_checkpoint, problem, and
    optionally sd_checkpoint_name, line). `made_on`: {sd_checkpoint: the model it names}."""
    out = []
    for it in items:
        if it.get("problem") and not it.get("widths"):
            reason = f"unreadable: {it['problem']}"
            out.append({"name": it["name"], "fit": UNKNOWN, "reason": reason, "path": it.get("path"),
                        "apps": {a: {"fit": UNKNOWN, "reason": reason} for a in APPS}, "line": None})
            continue
        ck = it.get("sd_checkpoint")
        trained = (made_on or {}).get(ck or "")
        line = it.get("line") or line_of(it.get("sd_checkpoint_name"), trained.name if trained else None,
                                         it.get("path"), it.get("name"))
        v = verdict(it.get("widths"), ck, model, line=line, made_on=trained)
        out.append({"name": it["name"], "path": it.get("path"), "sd_checkpoint": ck, **v})
    return out


def report_catalog(
    rows: list[dict[str, Any]], model: KnownModel, made_on: Mapping[str, KnownModel] | None = None
) -> list[dict[str, Any]]:
    """Verdicts for catalogue entries (search rows: name, base, base_model?, widths?, sd_checkpoint?)."""
    out = []
    for r in rows:
        widths = r.get("widths")
        if isinstance(widths, str):
            try:
                widths = json.loads(widths)
            except ValueError:
                widths = None
        ck = r.get("sd_checkpoint")
        trained = (made_on or {}).get(ck or "")
        line = line_of(r.get("base_model"), trained.name if trained else None, r.get("name"))
        declared = not widths and r.get("base") in FAMILY_WIDTHS
        if declared:
            widths = FAMILY_WIDTHS[r["base"]]
        v = verdict(widths, ck, model, line=line, made_on=trained)
        if declared:
            note = " (widths from the source's declared base, not measured)"
            v["reason"] += note
            for a in v["apps"].values():
                a["reason"] += note
        out.append({"name": r.get("name"), "source": r.get("source"), "sd_checkpoint": ck, **v})
    return out


def app_summary(apps: Mapping[str, Mapping[str, str]]) -> str:
    """"A1111 wont-load, ComfyUI partial, ..." for one verdict's per-app statuses."""
    return ", ".join(f"{APP_LABELS[a]} {v['fit']}" for a, v in apps.items())
