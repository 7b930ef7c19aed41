"""The catalogue API: ingest indexer output, search, describe entries, record local files,
models, previews, verifications and training runs.

Everything goes through `Catalog`; every write is one transaction (`tihub.catalog.db.write`).
Entries are keyed by (source, remote_id); files by sha256, so one file reached from two sources
is one `files` row linked to both entries. Nothing is ever deleted by a sync: entries missing
from a complete listing get `removed_at`, and lose it again when they come back.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import ARRAY, Connection, Engine, any_, bindparam, func, select, text

from tihub.catalog import schema as S
from tihub.catalog import search_pg
from tihub.catalog.compat_rules import (
    ENCODERS,
    LINE_LABELS,
    app_fits,
    base_from_widths,
    encoders_of,
    fits,
    line_of,
    normalize_base,
)
from tihub.catalog.db import is_sqlite, now, open_engine, read, write
from tihub.catalog.kinds import infer_kind
from tihub.catalog.rows import chunks as _chunks
from tihub.catalog.rows import loads as _loads
from tihub.catalog.search import _BM25, _NAMES_BM25, RANK_BOUND, SearchMixin, fts_query  # noqa: F401 (re-exported)
from tihub.errors import NotFound

if TYPE_CHECKING:
    from tihub.config import SourceSpec, Workspace
    from tihub.formats.model import Embedding
    from tihub.sources.base import Candidate, CandidateFile

LOCAL_SOURCE = "local"  # the source that files recorded by fetch/import/train belong to
BULK_FTS_MIN = 200  # new entries from which one ingest indexes them in bulk (SQLite)

_ENTRY_FIELDS = (
    "name",
    "title",
    "description",
    "kind",
    "tags",
    "base_model",
    "base",
    "nsfw",
    "licence",
    "page_url",
    "triggers",
    "status",
    "extra",
    "removed_at",
)
_FILE_META = (
    "file_name",
    "size",
    "format",
    "vectors",
    "widths",
    "base",
    "sd_checkpoint",
    "sd_checkpoint_name",
    "step",
    "hashes",
    "local_path",
)


@dataclass
class SyncResult:
    """What one ingest changed."""

    source: str
    new: int = 0
    updated: int = 0
    removed: int = 0
    revived: int = 0
    unchanged: int = 0
    files_new: int = 0
    total: int = 0  # entries of the source present (not removed) after the ingest

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_enc_str = json.encoder.encode_basestring  # the C escaper, as JSONEncoder(ensure_ascii=False) uses


def _dumps(value: Any) -> str | None:
    """Compact JSON with sorted keys; lists of strings and str->str maps (tags, triggers: most
    of what ingest writes) skip the general encoder and give the very same text."""
    if value is None:
        return None
    if type(value) is list:
        if all(type(v) is str for v in value):
            return "[" + ",".join(map(_enc_str, value)) + "]"
    elif type(value) is dict:
        if all(type(k) is str and type(v) is str for k, v in value.items()):
            return "{" + ",".join(_enc_str(k) + ":" + _enc_str(v) for k, v in sorted(value.items())) + "}"
    return _ENCODER.encode(value)


def trigger_syntax(name: str, triggers: Mapping[str, str] | None = None, base: str | None = None) -> dict[str, str]:
    """How to call an embedding installed under `name` in each runtime (A1111 and ComfyUI use
    the file stem; InvokeAI `<stem>`; diffusers the token given at load time)."""
    token = (triggers or {}).get("diffusers") or f"<{name}>"
    if base == "sdxl":
        diffusers = (
            f'sd = safetensors.torch.load_file("{name}.safetensors"); '
            f'pipe.load_textual_inversion(sd["clip_l"], token="{token}", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer); '
            f'pipe.load_textual_inversion(sd["clip_g"], token="{token}", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)'
        )
    else:
        diffusers = f'pipe.load_textual_inversion("{name}.safetensors", token="{token}")'
    return {
        "a1111": (triggers or {}).get("a1111") or name,
        "comfyui": f"embedding:{name}",
        "invokeai": f"<{name}>",
        "diffusers": diffusers,
    }


class Catalog(SearchMixin):
    """The catalogue database of one workspace (or any SQLAlchemy URL)."""

    def __init__(self, engine: Engine, workspace: Workspace | None = None) -> None:
        self.engine = engine
        self.workspace = workspace

    @classmethod
    def open(cls, workspace: Workspace) -> Catalog:
        workspace.ensure()
        return cls(open_engine(workspace.db_url), workspace)

    @property
    def fts(self) -> bool:
        return is_sqlite(self.engine)

    def _run(self, conn: Connection, sql: str, params: Mapping[str, Any] | tuple[Any, ...]) -> list[Any]:
        """All rows of SQL with `:name` (or, SQLite only, `?`) parameters. On SQLite this goes
        straight to the driver inside the current transaction: the hot search path pays no
        statement compilation and no per-row wrapping."""
        if is_sqlite(self.engine):
            raw = conn.connection.driver_connection
            return raw.execute(sql, params if isinstance(params, tuple) else dict(params)).fetchall()  # type: ignore[union-attr]
        return list(conn.execute(text(sql), dict(params)))

    # ------------------------------------------------------------------ sources

    def _ensure_source(self, conn: Connection, spec: SourceSpec) -> int:
        row = conn.execute(
            select(S.sources.c.id, S.sources.c.kind, S.sources.c.nsfw).where(S.sources.c.name == spec.name)
        ).first()
        if row is None:
            return _insert_id(conn, S.sources, name=spec.name, kind=spec.kind, nsfw=int(spec.nsfw), entry_count=0)
        if row.kind != spec.kind or row.nsfw != int(spec.nsfw):
            conn.execute(
                S.sources.update().where(S.sources.c.id == row.id).values(kind=spec.kind, nsfw=int(spec.nsfw))
            )
        return int(row.id)

    def source_state(self, name: str) -> dict[str, Any]:
        """The state an indexer recorded at the last successful sync of source `name`."""
        with read(self.engine) as conn:
            raw = conn.execute(select(S.sources.c.state).where(S.sources.c.name == name)).scalar()
        return _loads(raw, {}) or {}

    def record_sync(
        self,
        spec: SourceSpec,
        status: str,
        error: str | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the outcome of a sync that wrote no entries (failed or unchanged)."""
        with write(self.engine) as conn:
            sid = self._ensure_source(conn, spec)
            values: dict[str, Any] = {"last_sync": now(), "last_status": status, "last_error": error}
            if state is not None:
                values["state"] = _dumps(dict(state))
            conn.execute(S.sources.update().where(S.sources.c.id == sid).values(**values))

    def sources(self) -> list[dict[str, Any]]:
        """Every source the catalogue knows, with its last sync and entry counts."""
        with read(self.engine) as conn:
            rows = conn.execute(
                text(
                    "SELECT s.id, s.name, s.kind, s.nsfw, s.last_sync, s.last_status, s.last_error, "
                    "s.entry_count, (SELECT COUNT(*) FROM entries e WHERE e.source_id = s.id AND e.removed_at IS NOT NULL) "
                    "AS removed FROM sources s ORDER BY s.name"
                )
            ).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        spec: SourceSpec,
        candidates: Iterable[Candidate],
        *,
        complete: bool = True,
        keep: Iterable[str] = (),
        state: Mapping[str, Any] | None = None,
    ) -> SyncResult:
        """Write one source's listing in one transaction.

        `complete`: the listing is the whole source, so entries not in it (and not in `keep`,
        the remote ids the indexer reported unchanged without re-yielding them) are marked
        removed. `state` is stored on the source row for the next incremental sync.
        """
        cands: dict[str, Candidate] = {}
        for c in candidates:  # materialize before touching the database
            cands[str(c.remote_id)] = c
        keep_ids = set(map(str, keep)) - cands.keys()
        t = now()
        result = SyncResult(source=spec.name)
        with write(self.engine) as conn:
            sid = self._ensure_source(conn, spec)
            self._ingest(conn, sid, spec, cands, keep_ids, complete, t, result)
            values: dict[str, Any] = {"last_sync": t, "last_status": "ok", "last_error": None, "entry_count": result.total}
            if state is not None:
                values["state"] = _dumps(dict(state))
            conn.execute(S.sources.update().where(S.sources.c.id == sid).values(**values))
        return result

    def _ingest(
        self,
        conn: Connection,
        sid: int,
        spec: SourceSpec,
        cands: dict[str, Candidate],
        keep_ids: set[str],
        complete: bool,
        t: str,
        result: SyncResult,
    ) -> None:
        E, F, EF = S.entries, S.files, S.entry_files
        raw = conn.connection.driver_connection if is_sqlite(self.engine) else None
        ecols = [E.c.id, E.c.remote_id] + [E.c[f] for f in _ENTRY_FIELDS]
        existing: dict[str, tuple[Any, ...]] = {}
        if raw is not None:  # the driver directly: 100,000 rows in a fraction of the time
            erows = raw.execute(
                f"SELECT id, remote_id, {', '.join(_ENTRY_FIELDS)} FROM entries WHERE source_id = ?", (sid,)
            ).fetchall()
        else:
            erows = conn.execute(select(*ecols).where(E.c.source_id == sid)).tuples().all()
        for row in erows:
            existing[row[1]] = tuple(row)
        links: dict[int, dict[int, tuple[str | None, int]]] = defaultdict(dict)
        if raw is not None:
            lrows = raw.execute(
                "SELECT ef.entry_id, ef.file_id, ef.url, ef.manual FROM entries e "
                "JOIN entry_files ef ON ef.entry_id = e.id WHERE e.source_id = ?",
                (sid,),
            ).fetchall()
        else:
            lrows = conn.execute(
                select(EF.c.entry_id, EF.c.file_id, EF.c.url, EF.c.manual)
                .join(E, E.c.id == EF.c.entry_id)
                .where(E.c.source_id == sid)
            ).all()
        for eid, fid, url, manual in lrows:
            links[eid][fid] = (url, manual)

        fcols = [F.c.id, F.c.sha256] + [F.c[f] for f in _FILE_META]
        files_by_id: dict[int, dict[str, Any]] = {}
        fkeys = ["id", "sha256", *_FILE_META]

        pg = conn.dialect.name == "postgresql"

        def load_files(col: str, values: list[Any]) -> None:
            # PostgreSQL takes the whole list as one array parameter; the others IN lists of CHUNK
            for chunk in [values] if pg and values else _chunks(values):
                if raw is not None:
                    rows_ = raw.execute(
                        f"SELECT {', '.join(fkeys)} FROM files WHERE {col} IN ({', '.join('?' * len(chunk))})",
                        tuple(chunk),
                    ).fetchall()
                elif pg:
                    arg = bindparam("v", chunk, type_=ARRAY(F.c[col].type))
                    rows_ = conn.execute(select(*fcols).where(F.c[col] == any_(arg))).tuples().all()
                else:
                    rows_ = conn.execute(select(*fcols).where(F.c[col].in_(chunk))).tuples().all()
                for row in rows_:
                    files_by_id[row[0]] = dict(zip(fkeys, row))

        load_files("id", sorted({fid for d in links.values() for fid in d}))
        known = {f["sha256"] for f in files_by_id.values()}
        load_files("sha256", sorted({f.sha256.lower() for c in cands.values() for f in c.files if f.sha256} - known))
        files_by_sha = {f["sha256"]: f for f in files_by_id.values() if f["sha256"]}

        new_files: dict[str, dict[str, Any]] = {}  # sha -> row (new, with a sha)
        new_nosha: list[dict[str, Any]] = []  # new rows without a sha
        changed_files: dict[int, dict[str, Any]] = {}
        new_entries: list[dict[str, Any]] = []
        changed_entries: list[dict[str, Any]] = []
        # remote_id -> [(file key, url, manual)]; key: ("id", id) | ("sha", sha) | ("nosha", index)
        wanted: dict[str, list[tuple[tuple[str, Any], str | None, int]]] = {}
        own_paths: dict[tuple[str, tuple[str, Any]], str] = {}  # (remote_id, key) -> this entry's copy on disk
        touched: set[str] = set()  # entries whose files changed
        previews_wanted: dict[str, list[dict[str, Any]]] = {}

        for rid, c in cands.items():
            old = existing.get(rid)
            old_links = links.get(old[0], {}) if old else {}
            flist: list[tuple[tuple[str, Any], str | None, int]] = []
            widths_seen: list[dict[str, int]] = []
            for cf in c.files:
                sha = cf.sha256.lower() if cf.sha256 else None
                incoming = _file_values(cf)
                key: tuple[str, Any]
                current: dict[str, Any] | None = None
                if sha:
                    current = files_by_sha.get(sha)
                    if current is None and sha in new_files:
                        merged = _merge_file(new_files[sha], incoming)
                        new_files[sha] = merged
                        key = ("sha", sha)
                        if merged.get("widths"):
                            widths_seen.append(_loads(merged["widths"], {}))
                        flist.append((key, cf.url, int(cf.manual)))
                        continue
                else:
                    for fid in old_links:
                        f = files_by_id.get(fid)
                        if f and f["sha256"] is None and f["file_name"] == cf.file_name and old_links[fid][0] == cf.url:
                            current = f
                            break
                if current is not None:
                    merged = _merge_file(current, incoming)
                    fid = current["id"]
                    if any(merged[k] != current[k] for k in _FILE_META):
                        changed_files[fid] = merged
                        files_by_id[fid] = merged
                        if sha:
                            files_by_sha[sha] = merged
                        touched.add(rid)
                    key = ("id", fid)
                    w = merged.get("widths")
                elif sha:
                    new_files[sha] = {"sha256": sha, **incoming}
                    key = ("sha", sha)
                    w = None
                    if cf.widths:
                        widths_seen.append(cf.widths)
                else:
                    new_nosha.append({"sha256": None, **incoming})
                    key = ("nosha", len(new_nosha) - 1)
                    w = None
                    if cf.widths:
                        widths_seen.append(cf.widths)
                if w:
                    widths_seen.append(_loads(w, {}))
                flist.append((key, cf.url, int(cf.manual)))
                if cf.local_path:
                    own_paths[(rid, key)] = cf.local_path
            wanted[rid] = flist
            if c.previews:
                previews_wanted[rid] = c.previews

            base = "unknown"
            for w in widths_seen:
                b = base_from_widths(w)
                if b != "unknown":
                    base = b
                    break
            if base == "unknown":
                base = normalize_base(c.base_model)
            values = {
                "name": c.name,
                "title": c.title,
                "description": c.description,
                "kind": c.kind or infer_kind(c.name, (c.triggers or {}).values(), c.description, c.tags or ()),
                "tags": _dumps(list(c.tags or [])),
                "base_model": c.base_model,
                "base": base,
                "nsfw": int(bool(spec.nsfw or c.nsfw)),
                "licence": c.licence,
                "page_url": c.page_url,
                "triggers": _dumps(dict(c.triggers or {})),
                "status": c.status or "ok",
                "extra": _dumps(c.extra) if c.extra else None,
                "removed_at": None,
            }
            if old is None:
                new_entries.append({"source_id": sid, "remote_id": rid, "first_seen": t, "last_seen": t, **values})
                result.new += 1
            else:
                if old[-1] is not None:
                    result.revived += 1
                if tuple(values[f] for f in _ENTRY_FIELDS) != old[2:]:
                    changed_entries.append({"_id": old[0], **values})

        # -- files
        if new_files:
            if is_sqlite(self.engine):
                # the write lock is held: every id above the old maximum is one of ours
                max_f = conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM files").scalar() or 0
                _insert_many(conn, F, list(new_files.values()))
                for fid, sha in conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                    "SELECT id, sha256 FROM files WHERE id > ?", (max_f,)
                ).fetchall():
                    if sha in new_files:
                        new_files[sha]["id"] = fid
            elif pg:  # ids drawn up front, then one COPY
                _insert_many(conn, F, _with_new_ids(conn, F, list(new_files.values())))
            else:
                conn.execute(F.insert(), list(new_files.values()))
                for chunk in _chunks(list(new_files)):
                    for fid, sha in conn.execute(select(F.c.id, F.c.sha256).where(F.c.sha256.in_(chunk))):
                        new_files[sha]["id"] = fid
        if new_nosha and pg:
            _insert_many(conn, F, _with_new_ids(conn, F, new_nosha))
        else:
            for row in new_nosha:
                row["id"] = _insert_id(conn, F, **row)
        result.files_new = len(new_files) + len(new_nosha)
        if changed_files:
            _update_many(conn, F, [{"_id": fid, **{k: v[k] for k in _FILE_META}} for fid, v in changed_files.items()],
                         {"_id": "id"}, _FILE_META)

        # -- entries
        ids: dict[str, int] = {rid: row[0] for rid, row in existing.items()}
        if new_entries:
            if pg:
                # ids drawn up front, then one COPY: the search rows are built by one
                # statement-level trigger call over all of them
                _insert_many(conn, E, _with_new_ids(conn, E, new_entries))
                got = [(row["id"], row["remote_id"]) for row in new_entries]
            else:
                max_before = conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM entries")).scalar() or 0
                if is_sqlite(self.engine) and len(new_entries) >= BULK_FTS_MIN:
                    _bulk_insert_entries(conn, new_entries, sid, max_before)
                else:
                    _insert_many(conn, E, new_entries)
                if is_sqlite(self.engine):
                    got = conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                        "SELECT id, remote_id FROM entries WHERE id > ? ORDER BY id", (max_before,)
                    ).fetchall()
                else:
                    got = conn.execute(
                        select(E.c.id, E.c.remote_id).where(E.c.source_id == sid, E.c.id > max_before)
                    ).all()
            for eid, rid in got:
                ids[rid] = eid
        if changed_entries:
            _update_many(conn, E, changed_entries, {"_id": "id"}, _ENTRY_FIELDS)

        # -- links
        add_links: list[dict[str, Any]] = []
        upd_links: list[dict[str, Any]] = []
        del_links: list[dict[str, Any]] = []
        own_links: list[dict[str, Any]] = []
        for rid, flist in wanted.items():
            eid = ids[rid]
            want: dict[int, tuple[str | None, int]] = {}
            for key, url, manual in flist:
                if key[0] == "id":
                    fid = key[1]
                elif key[0] == "sha":
                    fid = new_files[key[1]]["id"]
                else:
                    fid = new_nosha[key[1]]["id"]
                if (rid, key) in own_paths:
                    own_links.append({"_e": eid, "_f": fid, "_p": own_paths[(rid, key)]})
                if fid not in want or (want[fid][0] is None and url):
                    want[fid] = (url, manual)
            have = links.get(eid, {})
            for fid, (url, manual) in want.items():
                if fid not in have:
                    add_links.append({"entry_id": eid, "file_id": fid, "url": url, "manual": manual})
                elif have[fid] != (url, manual):
                    upd_links.append({"_e": eid, "_f": fid, "url": url, "manual": manual})
            for fid in have:
                if fid not in want:
                    del_links.append({"_e": eid, "_f": fid})
            if rid in existing and (want.keys() != have.keys() or any(have[f] != want[f] for f in want if f in have)):
                touched.add(rid)
        if add_links:
            _insert_many(conn, EF, add_links)
        link_keys = {"_e": "entry_id", "_f": "file_id"}
        if upd_links:
            _update_many(conn, EF, upd_links, link_keys, ("url", "manual"))
        if del_links:
            _delete_many(conn, EF, del_links, link_keys)
        if own_links:  # local sources: each entry's own copy (duplicates keep their own paths)
            _update_many(conn, EF, [{"_e": r["_e"], "_f": r["_f"], "local_path": r["_p"]} for r in own_links],
                         link_keys, ("local_path",))

        # -- a file now measured: entries of other sources linked to it learn their base
        measured = [
            {"_f": fid, "_b": v["base"]} for fid, v in changed_files.items() if v.get("base") and v["base"] != "unknown"
        ]
        if measured:
            conn.execute(
                E.update()
                .where(
                    E.c.base == "unknown",
                    E.c.id.in_(select(EF.c.entry_id).where(EF.c.file_id == bindparam("_f")).scalar_subquery()),
                )
                .values(base=bindparam("_b")),
                measured,
            )

        # -- previews (keyed by entry and URL; never duplicated)
        if previews_wanted:
            have_prev: set[tuple[int, str]] = set()
            for eid, url in conn.execute(
                select(S.previews.c.entry_id, S.previews.c.url)
                .join(E, E.c.id == S.previews.c.entry_id)
                .where(E.c.source_id == sid)
            ):
                have_prev.add((eid, url))
            add_prev = []
            for rid, plist in previews_wanted.items():
                eid = ids[rid]
                for p in plist:
                    url = p.get("url")
                    if not url or (eid, url) in have_prev:
                        continue
                    have_prev.add((eid, url))
                    meta = p.get("meta") or {}
                    mh = meta.get("Model hash") or meta.get("model_hash") or p.get("model_hash")
                    params = {k: v for k, v in p.items() if k not in ("url", "path", "kind")}
                    add_prev.append(
                        {"entry_id": eid, "file_id": None, "url": url, "path": p.get("path"), "model_hash": mh,
                         "params": _dumps(params), "created_at": t, "kind": p.get("kind")}
                    )
                    if rid in existing:
                        touched.add(rid)
            if add_prev:
                _insert_many(conn, S.previews, add_prev)
            # a source's pictures of a re-listed entry are what it lists now (commit-pinned URLs
            # move with each commit); grids and other records without a kind stay
            stale = [
                {"_e": ids[rid], "_u": url}
                for rid, plist in previews_wanted.items()
                if rid in existing
                for (eid, url) in list(have_prev)
                if eid == ids[rid] and url not in {p.get("url") for p in plist}
            ]
            if stale:
                conn.execute(
                    S.previews.delete().where(
                        S.previews.c.entry_id == bindparam("_e"), S.previews.c.url == bindparam("_u"),
                        S.previews.c.kind.is_not(None),
                    ),
                    stale,
                )

        changed_ids = {row["_id"] for row in changed_entries}
        updated = changed_ids | {existing[r][0] for r in touched if r in existing}
        result.updated = len(updated)
        result.unchanged = sum(1 for rid in cands if rid in existing) - result.updated + len(
            [r for r in keep_ids if r in existing and existing[r][-1] is None]
        )

        # -- removed upstream
        if complete:
            gone = [
                {"_id": row[0]}
                for rid, row in existing.items()
                if rid not in cands and rid not in keep_ids and row[-1] is None
            ]
            if gone:
                _update_many(conn, E, [{"_id": g["_id"], "removed_at": t} for g in gone], {"_id": "id"}, ("removed_at",))
                if spec.kind == "local":
                    # the file left the folder: it is no longer on disk at that path
                    present = {cf.local_path for c in cands.values() for cf in c.files if cf.local_path}
                    stale = [
                        {"_f": fid}
                        for g in gone
                        for fid in links.get(g["_id"], {})
                        if files_by_id.get(fid, {}).get("local_path") and files_by_id[fid]["local_path"] not in present
                    ]
                    if stale:
                        conn.execute(F.update().where(F.c.id == bindparam("_f")).values(local_path=None), stale)
                    conn.execute(EF.update().where(EF.c.entry_id == bindparam("_e")).values(local_path=None),
                                 [{"_e": g["_id"]} for g in gone])
            result.removed = len(gone)

        # -- last seen
        # new entries already carry last_seen = t
        seen_ids = [row[0] for r, row in existing.items() if r in cands or r in keep_ids]
        if complete and len(seen_ids) > 1000:
            conn.execute(
                E.update().where(E.c.source_id == sid, E.c.removed_at.is_(None), E.c.last_seen != t).values(last_seen=t)
            )
        elif seen_ids and pg:
            _update_many(conn, E, [{"_id": i, "last_seen": t} for i in seen_ids], {"_id": "id"}, ("last_seen",),
                         changed_only=True)
        elif seen_ids:
            conn.execute(
                E.update().where(E.c.id == bindparam("_id"), E.c.last_seen != t).values(last_seen=t),
                [{"_id": i} for i in seen_ids],
            )
        if pg:
            search_pg.after_ingest(conn, len(new_entries))
        result.total = int(
            conn.execute(
                select(func.count()).select_from(E).where(E.c.source_id == sid, E.c.removed_at.is_(None))
            ).scalar()
            or 0
        )

    # ------------------------------------------------------------------ one entry

    def _resolve(self, conn: Connection, name_or_id: str | int) -> tuple[int, list[int]]:
        """The entry id for a name, `#id`/id, or trigger; plus the other entries of that name."""
        key = str(name_or_id).strip()
        digits = key.lstrip("#")
        if digits.isascii() and digits.isdigit() and len(digits) <= 18:  # an id fits SQLite's INTEGER
            eid = int(digits)
            if conn.execute(select(S.entries.c.id).where(S.entries.c.id == eid)).first():
                return eid, []
            if key.startswith("#"):
                raise NotFound(f"No catalogue entry has the id {eid}; find one with `tihub search`.")
        bare = key.strip("<>")
        rows = conn.execute(
            text(
                "SELECT e.id, e.removed_at, "
                "EXISTS (SELECT 1 FROM entry_files ef JOIN files f ON f.id = ef.file_id "
                "        WHERE ef.entry_id = e.id AND f.local_path IS NOT NULL) AS loc "
                "FROM entries e WHERE lower(e.name) = lower(:k) OR lower(e.name) = lower(:b)"
            ),
            {"k": key, "b": bare},
        ).all()
        if not rows:
            like = "%" + bare.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = [
                r
                for r in conn.execute(
                    text(
                        "SELECT e.id, e.removed_at, 0 AS loc, e.triggers FROM entries e "
                        "WHERE e.triggers LIKE :l ESCAPE '\\'"
                    ),
                    {"l": like},
                ).all()
                if key in (_loads(r.triggers, {}) or {}).values() or bare in (_loads(r.triggers, {}) or {}).values()
            ]
        if not rows:
            raise NotFound(f"No catalogue entry is named {key!r}; find one with `tihub search {bare}`.")
        rows.sort(key=lambda r: (not r.loc, r.removed_at is not None, r.id))
        return rows[0].id, [r.id for r in rows[1:]]

    def entry(self, name_or_id: str | int) -> dict[str, Any]:
        """Everything known about one entry: fields, source, files with hashes, trigger syntax,
        other sources of the same files, previews, verifications, training runs and how it fits
        every known model. Raises NotFound."""
        with read(self.engine) as conn:
            eid, others = self._resolve(conn, name_or_id)
            e = dict(
                conn.execute(
                    text(
                        "SELECT e.*, s.name AS source, s.kind AS source_kind FROM entries e "
                        "JOIN sources s ON s.id = e.source_id WHERE e.id = :i"
                    ),
                    {"i": eid},
                )
                .mappings()
                .one()
            )
            for k, d in (("tags", []), ("triggers", {}), ("extra", {})):
                e[k] = _loads(e[k], d) or d
            e["nsfw"] = bool(e["nsfw"])
            files = []
            for r in conn.execute(
                text(
                    "SELECT f.*, ef.url, ef.manual, ef.local_path AS own_path FROM entry_files ef "
                    "JOIN files f ON f.id = ef.file_id WHERE ef.entry_id = :i ORDER BY f.id"
                ),
                {"i": eid},
            ).mappings():
                f = dict(r)
                own = f.pop("own_path")
                if own or e["source_kind"] == "local":
                    # a local entry's file is its own copy (never another name's same bytes)
                    f["local_path"] = own
                f["widths"] = _loads(f["widths"], None)
                f["hashes"] = _loads(f["hashes"], {}) or {}
                f["manual"] = bool(f["manual"])
                files.append(f)
            file_ids = [f["id"] for f in files]
            also = []
            if file_ids:
                ph = ", ".join(str(int(i)) for i in file_ids)
                for r in conn.execute(
                    text(
                        "SELECT DISTINCT e.id, e.name, s.name AS source, ef.url, e.page_url, e.removed_at, "
                        "ef.local_path AS own_path "
                        "FROM entry_files ef JOIN entries e ON e.id = ef.entry_id JOIN sources s ON s.id = e.source_id "
                        f"WHERE ef.file_id IN ({ph}) AND e.id != :i ORDER BY e.id"
                    ),
                    {"i": eid},
                ).mappings():
                    also.append(dict(r))
            fcond = f" OR file_id IN ({', '.join(str(int(i)) for i in file_ids)})" if file_ids else ""
            records = {
                table: [dict(r) for r in conn.execute(
                    text(f"SELECT * FROM {table} WHERE entry_id = :i{fcond} ORDER BY id"), {"i": eid}
                ).mappings()]
                for table in _RECORD_JSON
            }
            models = [dict(r) for r in conn.execute(text("SELECT * FROM models ORDER BY name, id")).mappings()]
        for table, json_cols in _RECORD_JSON.items():
            for rec in records[table]:
                for col, empty in json_cols.items():
                    rec[col] = _loads(rec[col], empty) or type(empty)()
        sd_ck = next((f["sd_checkpoint"] for f in files if f["sd_checkpoint"]), None)
        widths = next((f["widths"] for f in files if f["widths"]), None)
        enc = encoders_of(widths) if widths else ENCODERS.get(e["base"], frozenset())
        line = line_of(e["base_model"], next((f["sd_checkpoint_name"] for f in files if f["sd_checkpoint_name"]), None))
        compat = []
        for m in models:
            verdict = fits(e["base"], m["family"], sd_ck, [m["sha256"], m["autov2"], m["old_hash"]])
            apps = app_fits(enc, m["family"], verdict)  # what each app does with it
            mline = line_of(m["name"]) if m["family"] == "sdxl" else None
            note = None
            if line and m["family"] == "sdxl" and line != mline and verdict in ("trained-on", "same-family"):
                note = f"made for {LINE_LABELS[line]}: same architecture, trained for a different line"
            compat.append({"model": m["name"], "family": m["family"], "sha256": m["sha256"],
                           "autov2": m["autov2"], "fit": verdict, "apps": apps, "note": note})
        e["line"] = line
        e["files"] = files
        e["trigger"] = e["triggers"].get("a1111") or e["name"]
        e["trigger_syntax"] = trigger_syntax(e["name"], e["triggers"], e["base"])
        e["also_in"] = also
        # the same bytes on disk under other names (exact duplicates)
        e["duplicates"] = [{"name": a["name"], "id": a["id"], "path": a.get("own_path")} for a in also
                           if a.get("own_path") and not a["removed_at"]]
        e.update(records)
        e["compat"] = compat
        e["same_name"] = others
        e["local"] = any(f["local_path"] for f in files)
        return e

    def files_for(self, name_or_id: str | int) -> list[dict[str, Any]]:
        """The files of one entry, with what a downloader needs (url, manual, size, sha256,
        the source name to look up its settings)."""
        with read(self.engine) as conn:
            eid, _ = self._resolve(conn, name_or_id)
            rows = conn.execute(
                text(
                    "SELECT f.id, ef.entry_id, e.name AS entry_name, f.file_name, ef.url, ef.manual, f.size, "
                    "f.sha256, f.format, f.hashes, f.local_path, f.widths, f.base, s.name AS source, "
                    "s.kind AS source_kind, e.page_url, e.base_model FROM entry_files ef JOIN files f ON f.id = ef.file_id "
                    "JOIN entries e ON e.id = ef.entry_id JOIN sources s ON s.id = e.source_id "
                    "WHERE ef.entry_id = :i ORDER BY ef.manual, f.id"
                ),
                {"i": eid},
            ).mappings()
            out = []
            for r in rows:
                d = dict(r)
                d["manual"] = bool(d["manual"])
                d["hashes"] = _loads(d["hashes"], {}) or {}
                d["widths"] = _loads(d["widths"], None)
                out.append(d)
            return out

    def file_by_sha256(self, sha: str) -> dict[str, Any] | None:
        with read(self.engine) as conn:
            r = conn.execute(select(S.files).where(S.files.c.sha256 == sha.strip().lower())).mappings().first()
        if r is None:
            return None
        d = dict(r)
        d["widths"] = _loads(d["widths"], None)
        d["hashes"] = _loads(d["hashes"], {}) or {}
        return d

    # ------------------------------------------------------------------ local files

    def _local_remote_id(self, path: Path) -> str:
        if self.workspace is not None:
            try:
                return path.resolve().relative_to(self.workspace.embeddings_dir.resolve()).as_posix()
            except ValueError:
                pass
        return str(path.resolve())

    def upsert_local_file(
        self, path: str | os.PathLike[str], emb: Embedding, sha256: str, entry_id: int | None = None
    ) -> int:
        """Record a file on disk (in `embeddings/`): its files row (by sha256) gets the local
        path and what the reader found; it is linked to `entry_id`, or else to an entry of the
        `local` source named after the file stem. Returns the file id."""
        p = Path(path).resolve()
        sha = sha256.strip().lower()
        t = now()
        meta = {
            "file_name": p.name,
            "size": p.stat().st_size if p.exists() else None,
            "format": p.suffix.lstrip(".").lower() or None,
            "vectors": emb.vector_count,
            "widths": _dumps(emb.widths),
            "base": emb.base,
            "sd_checkpoint": emb.sd_checkpoint,
            "sd_checkpoint_name": emb.sd_checkpoint_name,
            "step": emb.step,
            "local_path": str(p),
            "fetched_at": t,
        }
        with write(self.engine) as conn:
            F = S.files
            conn.execute(F.update().where(F.c.local_path == str(p), F.c.sha256 != sha).values(local_path=None))
            row = conn.execute(select(F.c.id).where(F.c.sha256 == sha)).first()
            if row is None:
                fid = _insert_id(conn, F, sha256=sha, **meta)
            else:
                fid = int(row.id)
                conn.execute(F.update().where(F.c.id == fid).values(**meta))
            if entry_id is None:
                sid = self._local_source_id(conn)
                rid = self._local_remote_id(p)
                er = conn.execute(
                    select(S.entries.c.id).where(S.entries.c.source_id == sid, S.entries.c.remote_id == rid)
                ).first()
                values = {
                    "name": p.stem,
                    "kind": infer_kind(p.stem),
                    "base": emb.base,
                    "triggers": _dumps({"a1111": p.stem}),
                    "tags": "[]",
                    "status": "ok",
                    "removed_at": None,
                    "last_seen": t,
                }
                if er is None:
                    entry_id = _insert_id(conn, S.entries, source_id=sid, remote_id=rid, first_seen=t, nsfw=0, **values)
                else:
                    entry_id = int(er.id)
                    conn.execute(S.entries.update().where(S.entries.c.id == entry_id).values(**values))
            EF = S.entry_files
            # this path is this entry's copy only (a duplicate under another name keeps its own)
            conn.execute(EF.update().where(EF.c.local_path == str(p), EF.c.entry_id != entry_id).values(local_path=None))
            link = conn.execute(select(EF.c.file_id).where(EF.c.entry_id == entry_id, EF.c.file_id == fid)).first()
            if link is None:
                conn.execute(EF.insert().values(entry_id=entry_id, file_id=fid, url=None, manual=0, local_path=str(p)))
            else:
                conn.execute(EF.update().where(EF.c.entry_id == entry_id, EF.c.file_id == fid).values(local_path=str(p)))
        return fid

    def _local_source_id(self, conn: Connection) -> int:
        row = conn.execute(select(S.sources.c.id).where(S.sources.c.name == LOCAL_SOURCE)).first()
        if row is not None:
            return int(row.id)
        return _insert_id(conn, S.sources, name=LOCAL_SOURCE, kind="local", nsfw=0, entry_count=0)

    def forget_local(self, path: str | os.PathLike[str]) -> None:
        """A file left `embeddings/`: clear its local path; its `local` entry is marked removed."""
        p = Path(path).resolve()
        with write(self.engine) as conn:
            EF, F = S.entry_files, S.files
            conn.execute(EF.update().where(EF.c.local_path == str(p)).values(local_path=None))
            for (fid,) in conn.execute(select(F.c.id).where(F.c.local_path == str(p))).all():
                # another name's copy of the same bytes, if one is still on disk, stands in
                other = next((r.local_path for r in conn.execute(
                    select(EF.c.local_path).where(EF.c.file_id == fid, EF.c.local_path.is_not(None))
                ).all() if Path(r.local_path).is_file()), None)
                conn.execute(F.update().where(F.c.id == fid).values(local_path=other))
            row = conn.execute(select(S.sources.c.id).where(S.sources.c.name == LOCAL_SOURCE)).first()
            if row is not None:
                conn.execute(
                    S.entries.update()
                    .where(
                        S.entries.c.source_id == row.id,
                        S.entries.c.remote_id == self._local_remote_id(p),
                        S.entries.c.removed_at.is_(None),
                    )
                    .values(removed_at=now())
                )

    # ------------------------------------------------------------------ models

    def add_model(
        self,
        name: str | None,
        sha256: str | None,
        autov2: str | None,
        old_hash: str | None,
        family: str | None,
        widths: Mapping[str, int] | None,
        origin: str,
        path: str | None = None,
    ) -> int:
        """Record a known model (upserted on any of its hashes); returns its id."""
        sha = (sha256 or "").strip().lower() or None
        a2 = (autov2 or "").strip().lower() or (sha[:10] if sha else None)
        old = (old_hash or "").strip().lower() or None
        M = S.models
        values = {
            "name": name,
            "sha256": sha,
            "autov2": a2,
            "old_hash": old,
            "family": family,
            "widths": _dumps(dict(widths)) if widths else None,
            "origin": origin,
            "path": str(path) if path else None,
            "checked_at": now(),
            "not_found": 0,
        }
        with write(self.engine) as conn:
            row = None
            for col, val in ((M.c.sha256, sha), (M.c.autov2, a2), (M.c.old_hash, old)):
                if val and row is None:
                    row = conn.execute(select(M).where(col == val)).mappings().first()
            if row is None:
                return _insert_id(conn, M, **values)
            merged = {k: (v if v is not None else row[k]) for k, v in values.items()}
            conn.execute(M.update().where(M.c.id == row["id"]).values(**merged))
            return int(row["id"])

    def find_model(self, any_hash: str) -> dict[str, Any] | None:
        """A known model by full sha256, AutoV2 (10 hex) or old A1111 hash (8 hex)."""
        h = (any_hash or "").strip().strip("[]()").lower().removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]{8,64}", h):
            return None
        M = S.models
        with read(self.engine) as conn:
            row = None
            if len(h) == 64:
                row = conn.execute(select(M).where(M.c.sha256 == h)).mappings().first()
            if row is None:
                row = conn.execute(select(M).where((M.c.autov2 == h) | (M.c.old_hash == h))).mappings().first()
            if row is None and len(h) >= 10:
                row = conn.execute(select(M).where(M.c.sha256.like(h + "%"))).mappings().first()
        if row is None:
            return None
        d = dict(row)
        d["widths"] = _loads(d["widths"], None)
        return d

    # ------------------------------------------------------------------ records

    def add_preview(
        self,
        entry_id: int | None = None,
        file_id: int | None = None,
        url: str | None = None,
        path: str | None = None,
        model_hash: str | None = None,
        params: Mapping[str, Any] | None = None,
        kind: str | None = None,
    ) -> int:
        with write(self.engine) as conn:
            return _insert_id(
                conn, S.previews, entry_id=entry_id, file_id=file_id, url=url, path=str(path) if path else None,
                model_hash=model_hash, params=_dumps(dict(params or {})), created_at=now(), kind=kind,
            )

    def add_verification(
        self,
        entry_id: int | None = None,
        file_id: int | None = None,
        model_hash: str | None = None,
        model_name: str | None = None,
        result: str | None = None,
        details: Mapping[str, Any] | None = None,
        grid_path: str | None = None,
    ) -> int:
        with write(self.engine) as conn:
            return _insert_id(
                conn, S.verifications, entry_id=entry_id, file_id=file_id, model_hash=model_hash,
                model_name=model_name, created_at=now(), result=result, details=_dumps(dict(details or {})),
                grid_path=str(grid_path) if grid_path else None,
            )

    def add_training_run(
        self,
        entry_id: int | None = None,
        file_id: int | None = None,
        settings: Mapping[str, Any] | None = None,
        pictures: int | None = None,
        loss_csv: str | None = None,
        loss_png: str | None = None,
        checkpoints: list[Any] | None = None,
    ) -> int:
        with write(self.engine) as conn:
            return _insert_id(
                conn, S.training_runs, entry_id=entry_id, file_id=file_id, settings=_dumps(dict(settings or {})),
                pictures=pictures, loss_csv=str(loss_csv) if loss_csv else None,
                loss_png=str(loss_png) if loss_png else None,
                checkpoints=_dumps(list(checkpoints or [])), created_at=now(),
            )


# The record tables an entry shows, and their JSON columns with the value an empty one reads as.
_RECORD_JSON: dict[str, dict[str, Any]] = {
    "previews": {"params": {}},
    "verifications": {"details": {}},
    "training_runs": {"settings": {}, "checkpoints": []},
}


def _insert_id(conn: Connection, table: Any, **values: Any) -> int:
    """Insert one row; return its new id."""
    return int(conn.execute(table.insert().values(**values)).inserted_primary_key[0])


def _insert_many(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert same-keyed dict rows: on SQLite an executemany straight through the driver; on
    PostgreSQL one COPY (one round trip, and statement-level triggers fire once, not per row)."""
    if not rows:
        return
    cols = list(rows[0])
    get = operator.itemgetter(*cols)
    if conn.dialect.name == "sqlite":
        sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        conn.connection.driver_connection.executemany(sql, [get(r) for r in rows])  # type: ignore[union-attr]
    elif conn.dialect.name == "postgresql":
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(get(r) if len(cols) > 1 else (get(r),))
    else:
        conn.execute(table.insert(), rows)


def _with_new_ids(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PostgreSQL: give the rows, in order, the next ids of the table's sequence (one block of
    len(rows), reserved in one statement), so that they can be COPYed and their ids are known
    without reading them back. Every tihub writer holds the write lock, so no other session
    draws from the sequence between the nextval and the setval."""
    seq = f"pg_get_serial_sequence('{table.name}', 'id')"
    last = int(conn.execute(text(f"SELECT setval({seq}, nextval({seq}) + :n - 1)"), {"n": len(rows)}).scalar_one())
    for new_id, row in enumerate(rows, start=last - len(rows) + 1):
        row["id"] = new_id
    return rows


def _pg_arrays(
    conn: Connection, table: Any, rows: list[dict[str, Any]], params: Mapping[str, str]
) -> tuple[str, list[Any]]:
    """`unnest(%s::type[], ...) AS u (col, ...)` over the rows' `params` (param -> column), and its
    arguments: many rows as one relation in one statement."""
    casts = ", ".join(f"%s::{table.c[col].type.compile(dialect=conn.dialect)}[]" for col in params.values())
    names = ", ".join(params.values())
    return f"unnest({casts}) AS u ({names})", [[r[p] for r in rows] for p in params]


def _update_many(
    conn: Connection,
    table: Any,
    rows: list[dict[str, Any]],
    keys: Mapping[str, str],
    sets: Iterable[str],
    *,
    changed_only: bool = False,
) -> None:
    """UPDATE `table` from dict rows: `keys` maps a row's key parameters to the columns that pick
    the row, `sets` are the columns set (row keys of the same name). On PostgreSQL one statement
    over the rows as arrays (`changed_only`: rows already holding the values are not rewritten);
    elsewhere an executemany."""
    if not rows:
        return
    sets = list(sets)
    if conn.dialect.name == "postgresql":
        rel, args = _pg_arrays(conn, table, rows, {**keys, **{c: c for c in sets}})
        where = " AND ".join(f"t.{col} = u.{col}" for col in keys.values())
        if changed_only:
            where += " AND (" + " OR ".join(f"t.{c} IS DISTINCT FROM u.{c}" for c in sets) + ")"
        sql = f"UPDATE {table.name} t SET {', '.join(f'{c} = u.{c}' for c in sets)} FROM {rel} WHERE {where}"
        conn.connection.driver_connection.execute(sql, args)  # type: ignore[union-attr]
        return
    cond = [table.c[col] == bindparam(p) for p, col in keys.items()]
    conn.execute(table.update().where(*cond).values({c: bindparam(c) for c in sets}), rows)


def _delete_many(conn: Connection, table: Any, rows: list[dict[str, Any]], keys: Mapping[str, str]) -> None:
    """DELETE the rows of `table` whose `keys` columns (param -> column) hold a row's values."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        rel, args = _pg_arrays(conn, table, rows, keys)
        where = " AND ".join(f"t.{col} = u.{col}" for col in keys.values())
        sql = f"DELETE FROM {table.name} t USING {rel} WHERE {where}"
        conn.connection.driver_connection.execute(sql, args)  # type: ignore[union-attr]
        return
    conn.execute(table.delete().where(*[table.c[col] == bindparam(p) for p, col in keys.items()]), rows)


def _bulk_insert_entries(conn: Connection, rows: list[dict[str, Any]], sid: int, max_before: int) -> None:
    """Insert many new entries, then index them in two INSERT ... SELECT statements, in rowid
    order, instead of one trigger call per row (about 4x faster). Every row above `max_before`
    is ours: the write lock is held. The insert triggers are dropped and recreated
    inside the same write transaction, so no other connection ever sees them missing, and a
    failure rolls the whole thing back."""
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS entries_fts_ai")
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS entries_names_ai")
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS entries_sub_ai")
    _insert_many(conn, S.entries, rows)
    conn.exec_driver_sql(
        "INSERT INTO entries_fts (rowid, name, triggers, title, description, tags, source) "
        "SELECT e.id, e.name, e.triggers, e.title, e.description, e.tags, s.name FROM entries e "
        "JOIN sources s ON s.id = e.source_id WHERE e.id > ? ORDER BY e.id",
        (max_before,),
    )
    conn.exec_driver_sql(
        "INSERT INTO entries_names_fts (rowid, name, triggers, title) "
        "SELECT id, name, triggers, title FROM entries WHERE id > ? ORDER BY id",
        (max_before,),
    )
    conn.exec_driver_sql(S.sub_bulk_sql(f"e.id > {int(max_before)}"))
    conn.exec_driver_sql(S.FTS_DDL[1])
    conn.exec_driver_sql(S.NAMES_FTS_DDL[1])
    conn.exec_driver_sql(S.SUB_DDL[3])


def _file_values(cf: CandidateFile) -> dict[str, Any]:
    widths = dict(cf.widths) if cf.widths else None
    return {
        "file_name": cf.file_name,
        "size": cf.size,
        "format": cf.format,
        "vectors": cf.vectors,
        "widths": _dumps(widths) if widths else None,
        "base": base_from_widths(widths) if widths else None,
        "sd_checkpoint": cf.sd_checkpoint,
        "sd_checkpoint_name": cf.sd_checkpoint_name,
        "step": cf.step,
        "hashes": _dumps({k: str(v).lower() for k, v in cf.hashes.items()}) if cf.hashes else None,
        "local_path": cf.local_path,
    }


def _merge_file(current: Mapping[str, Any], incoming: Mapping[str, Any]) -> dict[str, Any]:
    """A file row updated with what a source now says; nothing known is forgotten."""
    merged = dict(current)
    for k in _FILE_META:
        v = incoming.get(k)
        if v is None:
            continue
        if k == "hashes" and current.get("hashes"):
            h = _loads(current["hashes"], {}) or {}
            h.update(_loads(v, {}) or {})
            merged[k] = _dumps(h)
        elif k == "file_name" and current.get(k):
            continue  # the first name a file was seen under stays
        else:
            merged[k] = v
    return merged
