"""Which known embedding is this file? Local files are recognised by their sha256.

1. The catalogue: any source's entry whose file has this sha256 (Hugging Face LFS oids, Civitai
   SHA256 hashes, git and link-page files once fetched or deep-synced). The `local` source does
   not count: a file is not identified by its own entry.
2. Civitai, for the rest (when a civitai source is configured and lookups are allowed): the
   bulk `POST /api/v1/model-versions/by-hash` with the full sha256s (100 per request; see
   `tihub.compat.civitai_lookup`). Answers are kept in the `hash_lookups` table: a hit for
   good, a miss for `MISS_TTL` seconds, after which the file is asked about again.

Each identified file gets where it came from (source), its page and its trigger words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tihub.errors import NetworkError, TihubError

if TYPE_CHECKING:  # pragma: no cover
    from tihub.catalog.store import Catalog

MISS_TTL = 7 * 24 * 3600  # a Civitai miss is asked again after a week
SERVICE = "civitai"


@dataclass
class Identity:
    """What a file is, as a catalogue entry or Civitai knows it."""

    name: str  # the entry's name (Civitai: the model's name and version)
    source: str  # catalogue source name, or "civitai" for a by-hash answer
    via: str  # "catalog" | "civitai"
    page_url: str | None = None
    triggers: list[str] = field(default_factory=list)
    base_model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trigger_words(triggers: dict[str, Any] | None) -> list[str]:
    """The words an entry's triggers name: Civitai's trained words, a diffusers token, the
    A1111 word, in that order, each once."""
    t = triggers or {}
    words: list[str] = []
    for w in str(t.get("trained_words") or "").split(","):
        words.append(w.strip())
    words += [str(t.get(k) or "") for k in ("diffusers", "a1111")]
    return [w for w in dict.fromkeys(words) if w]


def from_catalog(
    catalog: Catalog | None, shas: Iterable[str], local_out: dict[str, list[tuple[str, str]]] | None = None
) -> dict[str, Identity]:
    """sha256 -> the catalogue entry (any source but `local`) with a file of that hash; the
    oldest entry of a remote source wins. `local_out`, if given, receives sha256 -> [(name,
    source)] of the `local` entries with those bytes (one query for both)."""
    wanted = sorted({s.lower() for s in shas if s})
    if catalog is None or not wanted:
        return {}
    from sqlalchemy import bindparam, text

    from tihub.catalog.db import read

    stmt = text(
        "SELECT f.sha256, e.name, s.name, s.kind, e.page_url, e.triggers, e.base_model FROM files f "
        "JOIN entry_files ef ON ef.file_id = f.id JOIN entries e ON e.id = ef.entry_id "
        "JOIN sources s ON s.id = e.source_id WHERE f.sha256 IN :shas "
        "ORDER BY e.removed_at IS NOT NULL, e.id"
    ).bindparams(bindparam("shas", expanding=True))
    out: dict[str, Identity] = {}
    try:
        with read(catalog.engine) as conn:
            for i in range(0, len(wanted), 500):
                for sha, name, source, kind, page, trig, base_model in conn.execute(stmt, {"shas": wanted[i : i + 500]}):
                    if kind == "local":
                        if local_out is not None:
                            local_out.setdefault(sha, []).append((name, source))
                        continue
                    if sha in out:
                        continue
                    try:
                        t = json.loads(trig) if trig else {}
                    except ValueError:
                        t = {}
                    out[sha] = Identity(name, source, "catalog", page, _trigger_words(t if isinstance(t, dict) else {}), base_model)
    except TihubError:
        return {}
    return out


def _site(api_root: str) -> str:
    """The website of a Civitai API root (pages live there, not under /api/v1)."""
    from urllib.parse import urlsplit

    parts = urlsplit(api_root)
    if parts.netloc.endswith("civitai.com"):
        return "https://civitai.com"
    return f"{parts.scheme}://{parts.netloc}"


def _civitai_identity(version: dict[str, Any], site: str) -> Identity:
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    name = " ".join(str(x) for x in (model.get("name"), version.get("name")) if x) or f"civitai-{version.get('id')}"
    mid, vid = version.get("modelId"), version.get("id")
    page = f"{site}/models/{mid}?modelVersionId={vid}" if mid is not None and vid is not None else None
    words = [w.strip() for w in version.get("trainedWords") or [] if isinstance(w, str) and w.strip()]
    base = version.get("baseModel") if isinstance(version.get("baseModel"), str) else None
    return Identity(name, SERVICE, "civitai", page, list(dict.fromkeys(words)), base)


def _expired(checked_at: str) -> bool:
    try:
        when = datetime.strptime(checked_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return True
    return datetime.now(UTC) - when > timedelta(seconds=MISS_TTL)


def from_civitai(
    catalog: Catalog | None,
    shas: Iterable[str],
    civitai_url: str,
    *,
    allow_private: bool = False,
    remote: bool = True,
    client: Any = None,
) -> dict[str, Identity]:
    """sha256 -> what Civitai knows of that file: cached answers first, then one bulk lookup
    for the rest (`remote`), whose answers (and misses) are cached."""
    from sqlalchemy import bindparam, text

    from tihub.catalog.db import now, read, write
    from tihub.compat import civitai_api, civitai_lookup

    wanted = sorted({s.lower() for s in shas if s and len(s) == 64})
    site = _site(civitai_api(civitai_url))
    out: dict[str, Identity] = {}
    ask: list[str] = []
    cached: dict[str, tuple[int, str | None, str]] = {}
    if catalog is not None and wanted:
        stmt = text(
            "SELECT sha256, found, data, checked_at FROM hash_lookups WHERE service = :s AND sha256 IN :shas"
        ).bindparams(bindparam("shas", expanding=True))
        with read(catalog.engine) as conn:
            for i in range(0, len(wanted), 500):
                for sha, found, data, checked in conn.execute(stmt, {"s": SERVICE, "shas": wanted[i : i + 500]}):
                    cached[sha] = (found, data, checked)
    for sha in wanted:
        hit = cached.get(sha)
        if hit is not None and hit[0] and hit[1]:
            try:
                out[sha] = Identity(**json.loads(hit[1]))
                continue
            except (TypeError, ValueError):
                pass
        elif hit is not None and not _expired(hit[2]):
            continue  # a recent miss
        ask.append(sha)
    if not ask or not remote:
        return out
    try:
        versions, answered = civitai_lookup(ask, civitai_url, allow_private=allow_private, client=client)
    except NetworkError:
        return out  # not known this time; nothing cached, asked again next time
    rows = []
    t = now()
    for sha in ask:
        if sha not in answered:
            continue
        if sha in versions:
            ident = _civitai_identity(versions[sha], site)
            out[sha] = ident
            rows.append({"s": SERVICE, "h": sha, "f": 1, "d": json.dumps(ident.as_dict()), "t": t})
        else:
            rows.append({"s": SERVICE, "h": sha, "f": 0, "d": None, "t": t})
    if catalog is not None and rows:
        with write(catalog.engine) as conn:
            conn.execute(
                text(
                    "INSERT INTO hash_lookups (service, sha256, found, data, checked_at) VALUES (:s, :h, :f, :d, :t) "
                    "ON CONFLICT (service, sha256) DO UPDATE SET found = excluded.found, data = excluded.data, "
                    "checked_at = excluded.checked_at"
                ),
                rows,
            )
    return out


def identify(
    catalog: Catalog | None,
    shas: Iterable[str],
    *,
    civitai_url: str | None = None,
    allow_private: bool = False,
    remote: bool = True,
    client: Any = None,
    local_out: dict[str, list[tuple[str, str]]] | None = None,
) -> dict[str, Identity]:
    """sha256 -> Identity for every file the catalogue or Civitai recognises (`local_out`: see
    `from_catalog`)."""
    wanted = {s.lower() for s in shas if s}
    found = from_catalog(catalog, wanted, local_out)
    rest = wanted - set(found)
    if rest and civitai_url:
        found.update(from_civitai(catalog, rest, civitai_url, allow_private=allow_private, remote=remote, client=client))
    return found
