"""Catalogue search: what people type finds what they mean.

On SQLite a query is answered from four FTS5 indexes, best tier first:

1. exact name (case-blind, through an index),
2. whole words and a typed prefix in name, trigger and title (`entries_names_fts`),
3. substrings of names and trigger words (`entries_sub`, a B-tree of their suffixes: one index
   range per word): `negative` finds EasyNegative and ng_deepnegative_v1_75t, `bad` finds
   badhandv4,
4. whole words anywhere: description, tags, source (`entries_fts`, bm25).

When nothing matches, names within a small edit distance of each query word are offered
(typo tolerance, `fuzzy: true` on those rows): candidates come from pieces of
each word, so one typo leaves a piece intact) in the suffix index, distances from rapidfuzz.

Other databases (PostgreSQL) get a LIKE scan over the same text, exact names first.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from tihub.catalog import search_pg
from tihub.catalog.compat_rules import FAMILIES, fits
from tihub.catalog.db import read
from tihub.catalog.kinds import KINDS
from tihub.catalog.rows import chunks, loads, primary_file
from tihub.catalog.schema import SUB_LEN
from tihub.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from sqlalchemy import Engine

RANK_BOUND = 100  # matches ranked per search pass (a full ranking only for --limit 0 or narrow filters)
FUZZY_CANDIDATES = 500  # suffix rows read per word piece by the typo-tolerant pass

# bm25 weights, in FTS column order: name, triggers, title, description, tags, source
_BM25 = "bm25(entries_fts, 10.0, 6.0, 4.0, 1.0, 3.0, 2.0)"
_NAMES_BM25 = "bm25(entries_names_fts, 10.0, 6.0, 4.0)"
# tier offsets of the full ranking (lower is better; bm25 scores are small negatives)
_EXACT, _NAMED, _SUBSTRING = -3e9, -1e9, -5e8


def fts_query(user_text: str, prefix: bool = True) -> str | None:
    """Turn free user text into a safe FTS5 query: every word a quoted string (AND-ed); with
    `prefix`, the last one (2+ characters, not followed by a space) also matches as a prefix.
    Quotes, operators (AND, OR, NOT, NEAR), `*`, `(`, `:` are just text here. Returns None when
    the text holds no searchable word."""
    words = re.findall(r"\w+", user_text or "")
    if not words:
        return None
    parts = ['"' + w.replace('"', '""') + '"' for w in words]
    if prefix and len(words[-1]) >= 2 and not (user_text or "").endswith((" ", "\t")):
        parts[-1] += " *"
    return " ".join(parts)


def substring_words(user_text: str) -> list[str]:
    """The lower-cased words of a query for the substring tier; empty when a word has fewer than
    2 characters (the suffix index holds suffixes of 2 or more)."""
    words = [w.lower() for w in re.findall(r"\w+", user_text or "")]
    if not words or any(len(w) < 2 for w in words):
        return []
    return words


def _range(word: str) -> tuple[str, str]:
    """The suffix-index range of every suffix starting with `word` (cut to SUB_LEN)."""
    key = word[:SUB_LEN]
    return key, key + "\U0010ffff"


def _texts(conn_run: Any, conn: Connection, ids: list[int]) -> dict[int, tuple[str, str]]:
    """{id: (name, lower-cased name + triggers)} for entry ids (the triggers' JSON text as it
    is: parsing it would cost more than the few extra characters)."""
    out: dict[int, tuple[str, str]] = {}
    for part in chunks(ids):
        ph = ", ".join("?" * len(part))
        for eid, name, trig in conn_run(conn, f"SELECT id, name, triggers FROM entries WHERE id IN ({ph})", tuple(part)):
            out[eid] = (name or "", f"{name or ''} {trig or ''}".lower())
    return out


def _tolerance(word: str) -> int:
    """Edits allowed for a typed word: none under 4 characters, 1 up to 7, 2 beyond."""
    return 0 if len(word) < 4 else 1 if len(word) < 8 else 2


def _pieces(word: str) -> list[str]:
    """k + 1 pieces of `word` (2+ characters each) for k allowed edits: a word within k edits
    keeps at least one piece intact (pigeonhole), so the suffix index finds it."""
    n, k = len(word), _tolerance(word)
    if k == 0:
        return []
    parts = k + 1
    size = n // parts
    return [word[i * size : (i + 1) * size if i < parts - 1 else n] for i in range(parts)]


def _word_distance(word: str, hay: str) -> int | None:
    """Edits between `word` and the closest word (or stretch) of `hay`, if within tolerance."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz import fuzz

    if word in hay:
        return 0
    k = _tolerance(word)
    if k == 0:
        return None
    tokens = [t for t in re.split(r"[\W_]+", hay) if t]
    best = min((Levenshtein.distance(word, t, score_cutoff=k) for t in tokens), default=k + 1)
    if best <= k:
        return best
    # a typo inside a longer name ("negatve" in "easynegative"): best-aligned stretch
    if len(word) >= 5:
        al = fuzz.partial_ratio_alignment(word, hay)
        if al is not None:
            d = Levenshtein.distance(word, hay[al.dest_start : al.dest_end], score_cutoff=k)
            if d <= k:
                return d
    return None


class SearchMixin:
    """`Catalog.search` and its helpers (mixed into `tihub.catalog.store.Catalog`)."""

    engine: Engine

    # provided by Catalog
    fts: bool

    def _run(self, conn: Connection, sql: str, params: Mapping[str, Any] | tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def find_model(self, any_hash: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def search(
        self,
        query: str = "",
        base: str | None = None,
        source: str | None = None,
        kind: str | None = None,
        model: str | Mapping[str, Any] | None = None,
        local: bool | None = None,
        nsfw: bool = False,
        limit: int | None = 20,
        include_removed: bool = False,
    ) -> list[dict[str, Any]]:
        """Entries matching `query`, best first (empty query: everything, by name).

        `model`: a family (sd1/sd2/sdxl), a model hash (resolved with `find_model`) or a model
        dict (`family`, hashes): keeps entries whose base is that family or unknown, each with
        a `fit` verdict. `local`: only entries with a file on disk. `limit` 0/None: no limit.
        Raises ConfigError for a `kind` or `source` the catalogue does not know (naming the
        valid ones). When nothing matches, names within a typo or two are returned with
        `fuzzy: true`.
        """
        family, model_hashes = self._model_family(model)
        where = []
        params: dict[str, Any] = {}
        if not nsfw:
            where.append("e.nsfw = 0")
        if not include_removed:
            where.append("e.removed_at IS NULL")
        if base:
            where.append("e.base = :base")
            params["base"] = base.lower()
        if source:
            self._check_source(source)
            where.append("e.source_id IN (SELECT id FROM sources WHERE name = :source)")
            params["source"] = source
        if kind:
            self._check_kind(kind)
            where.append("e.kind = :kind")
            params["kind"] = kind.lower()
        if family:
            where.append("e.base IN (:family, 'unknown')")
            params["family"] = family
        if local is not None:
            cond = (
                "EXISTS (SELECT 1 FROM entry_files ef JOIN files f ON f.id = ef.file_id "
                "WHERE ef.entry_id = e.id AND f.local_path IS NOT NULL)"
            )
            where.append(cond if local else f"NOT {cond}")
        lim = int(limit) if limit else 0
        limit_sql = " LIMIT :limit" if lim > 0 else ""
        if lim > 0:
            params["limit"] = lim

        q = (query or "").strip()
        with read(self.engine) as conn:
            if q and self.fts:
                params["ma"] = fts_query(q, prefix=False)
                params["mn"] = fts_query(q, prefix=True)
                if params["ma"] is None:
                    return []
                params["exact"] = q
                subs = substring_words(q)
                if subs:
                    params["sl"], params["sh"] = _range(max(subs, key=len))
                    params.update({f"sw{i}": w for i, w in enumerate(subs)})
                params["subs"] = subs
                ids: list[int] | None = None
                if lim > 0:
                    ids = self._bounded_search(conn, params, where, lim)
                if ids is None:
                    ids = self._ranked_search(conn, params, where, limit_sql)
                fuzzy = False
                if not ids:
                    ids = self._fuzzy_search(conn, q, where, params, lim)
                    fuzzy = bool(ids)
                rows = self._summaries(conn, ids)
                if fuzzy:
                    for r in rows:
                        r["fuzzy"] = True
                return self._with_fit(rows, family, model_hashes)
            if q and self.engine.dialect.name == "postgresql":  # the same contract, PostgreSQL's way
                ids = search_pg.search_ids(conn, q, where, params, lim)
                return self._with_fit(self._summaries(conn, ids), family, model_hashes)
            if q:
                words = [w.lower() for w in re.findall(r"\w+", q)]
                if not words:
                    return []
                hay = (
                    "lower(COALESCE(e.name,'') || ' ' || COALESCE(e.triggers,'') || ' ' || COALESCE(e.title,'') || ' ' "
                    "|| COALESCE(e.description,'') || ' ' || COALESCE(e.tags,'') || ' ' || "
                    "(SELECT name FROM sources WHERE id = e.source_id))"
                )
                for i, w in enumerate(words):
                    params[f"w{i}"] = "%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                    where.append(f"{hay} LIKE :w{i} ESCAPE '\\'")
                params["exact"] = q.lower()
                sql = "SELECT e.id FROM entries e" + (" WHERE " + " AND ".join(where) if where else "")
                sql += " ORDER BY CASE WHEN lower(e.name) = :exact THEN 0 ELSE 1 END, e.name, e.id" + limit_sql
                ids = [r[0] for r in conn.execute(text(sql), params)]
            else:
                sql = "SELECT e.id FROM entries e" + (" WHERE " + " AND ".join(where) if where else "")
                sql += " ORDER BY e.name, e.id" + limit_sql
                ids = [r[0] for r in self._run(conn, sql, params)]
            rows = self._summaries(conn, ids)
        return self._with_fit(rows, family, model_hashes)

    def _check_kind(self, kind: str) -> None:
        """Refuse a kind no entry has and tihub does not define, naming the valid ones."""
        if kind.lower() in KINDS:
            return
        with read(self.engine) as conn:  # a source may label other kinds (HF type_of_concept.txt)
            present = [r[0] for r in conn.execute(text("SELECT DISTINCT kind FROM entries WHERE kind IS NOT NULL"))]
        if kind.lower() not in present:
            valid = list(dict.fromkeys([*KINDS, *sorted(present)]))
            raise ConfigError(f"Unknown kind {kind!r}; use one of: {', '.join(valid)}.")

    def _check_source(self, source: str) -> None:
        with read(self.engine) as conn:
            known = [r[0] for r in conn.execute(text("SELECT name FROM sources ORDER BY name"))]
        if source not in known:
            valid = ", ".join(known) if known else "none yet (run `tihub sync`)"
            raise ConfigError(f"Unknown source {source!r}; the catalogue has: {valid}.")

    def _ranked_search(self, conn: Connection, params: Mapping[str, Any], where: list[str], limit_sql: str) -> list[int]:
        """Every match ranked: one SQL over the four tiers (exact, names, substring, anywhere)."""
        tiers = [
            f"SELECT id AS rid, {_EXACT} AS score FROM entries WHERE name = :exact COLLATE NOCASE",
            f"SELECT rowid, {_BM25} FROM entries_fts WHERE entries_fts MATCH :ma",
            f"SELECT rowid, {_NAMES_BM25} + {_NAMED} FROM entries_names_fts WHERE entries_names_fts MATCH :mn",
        ]
        if params.get("subs"):
            has = " AND ".join(
                f"instr(lower(e2.name || ' ' || COALESCE(e2.triggers, '')), :sw{i}) > 0" for i in range(len(params["subs"]))
            )
            tiers.append(
                f"SELECT s.entry_id, s.size + {_SUBSTRING} FROM entries_sub s JOIN entries e2 ON e2.id = s.entry_id "
                f"WHERE s.suffix >= :sl AND s.suffix < :sh AND {has}"
            )
        filters = "".join(f" AND {w}" for w in where)
        sql = (
            f"SELECT e.id FROM ({' UNION ALL '.join(tiers)}) h "
            "CROSS JOIN entries e ON e.id = h.rid WHERE 1 = 1" + filters + " GROUP BY e.id ORDER BY MIN(h.score), e.id" + limit_sql
        )
        return [r[0] for r in self._run(conn, sql, {k: v for k, v in params.items() if k != "subs"})]

    def _bounded_search(
        self, conn: Connection, params: Mapping[str, Any], where: list[str], lim: int
    ) -> list[int] | None:
        """Ranked ids with bounded work, or None when only a full ranking can be exact.

        Exact names first; then name/trigger/title hits (prefix on the last word) by bm25 over
        those short texts; then substrings of names and triggers (shortest first, read only when
        the tiers above do not fill the page); then whole-word hits anywhere by bm25. Each list
        ranks at most RANK_BOUND matches exactly; past that (a word in half the catalogue) it
        keeps catalogue order instead of ranking every match, which would cost as much as a
        table scan. If the filters reject too many of these bounded candidates, returns None
        and the caller ranks every match.
        """
        exhaustive = True
        exact = [r[0] for r in self._run(
            conn, "SELECT id FROM entries WHERE name = ? COLLATE NOCASE ORDER BY id", (params["exact"],))]
        named = self._run(
            conn,
            f"SELECT rowid, {_NAMES_BM25} FROM entries_names_fts WHERE entries_names_fts MATCH ? LIMIT ?",
            (params["mn"], RANK_BOUND + 1),
        )
        if len(named) > RANK_BOUND:
            exhaustive = False
            named = named[:RANK_BOUND]
        named.sort(key=lambda r: (r[1], r[0]))  # bm25 over short texts: exact, short names first
        head = list(dict.fromkeys(exact + [r[0] for r in named]))
        sub: list[int] = []
        if params.get("subs"):
            sub, complete = self._substring_ids(conn, params["subs"], RANK_BOUND)
            exhaustive = exhaustive and complete
        probe = [r[0] for r in self._run(
            conn, "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? LIMIT ?", (params["ma"], RANK_BOUND + 1))]
        if len(probe) <= RANK_BOUND:
            rows = self._run(
                conn, f"SELECT rowid, {_BM25} FROM entries_fts WHERE entries_fts MATCH ?", (params["ma"],)
            ) if probe else []
            rows.sort(key=lambda r: (r[1], r[0]))
            anywhere = [r[0] for r in rows]
        else:
            exhaustive = False
            anywhere = probe[:RANK_BOUND]
        ordered = list(dict.fromkeys(head + sub + anywhere))
        kept = self._keep(conn, ordered, where, params, lim)
        if len(kept) >= lim or exhaustive:
            return kept[:lim]
        return None

    def _keep(self, conn: Connection, ordered: list[int], where: list[str], params: Mapping[str, Any], lim: int) -> list[int]:
        """`ordered` ids that pass the filters, in order, reading only as many as `lim` needs."""
        if not where or not ordered:
            return ordered
        cond = " AND ".join(where)
        kept: list[int] = []
        step = max(lim * 2, 40) if lim else len(ordered)
        for i in range(0, len(ordered), step):  # filter lazily, best first
            chunk = ordered[i : i + step]
            ok = {r[0] for r in self._filter(conn, chunk, cond, params)}
            kept += [x for x in chunk if x in ok]
            if lim and len(kept) >= lim:
                break
        return kept

    def _substring_ids(self, conn: Connection, words: list[str], bound: int) -> tuple[list[int], bool]:
        """Entries whose name or trigger words contain every word (lower-cased), shortest names
        first, at most `bound`; and whether that is all of them. The longest word is looked up
        in the suffix index (one range); other words, and the tail of a word longer than the
        indexed SUB_LEN characters, are checked on those few candidates."""
        longest = max(words, key=len)
        exact = len(words) == 1 and len(longest) <= SUB_LEN  # the range alone is the answer
        cap = bound + 1 if exact else bound * 4 + 1
        lo, hi = _range(longest)
        rows = self._run(
            conn, "SELECT entry_id, size FROM entries_sub WHERE suffix >= ? AND suffix < ? LIMIT ?", (lo, hi, cap))
        complete = len(rows) < cap
        size: dict[int, int] = {}
        for eid, n in rows:
            size[eid] = min(n, size.get(eid, n))
        if exact:
            found = sorted((n, eid) for eid, n in size.items())
        else:
            texts = _texts(self._run, conn, list(size))
            found = sorted((size[eid], eid) for eid, (_, hay) in texts.items() if all(w in hay for w in words))
        if len(found) > bound:
            found, complete = found[:bound], False
        return [eid for _, eid in found], complete

    def _fuzzy_search(
        self, conn: Connection, q: str, where: list[str], params: Mapping[str, Any], lim: int
    ) -> list[int]:
        """Entries whose name or a trigger word is within `_tolerance` edits of a one-word query,
        closest first. Candidates: entries holding a piece of the word (`_pieces`), at most
        FUZZY_CANDIDATES per piece."""
        from rapidfuzz import fuzz, process

        words = [w.lower() for w in re.findall(r"\w+", q)]
        if len(words) != 1 or not _tolerance(words[0]):
            return []  # one word: a name (a typo in a phrase of description words finds noise)
        word = words[0]
        cand: dict[int, None] = {}
        for piece in _pieces(word):
            lo, hi = _range(piece)
            for (eid,) in self._run(
                conn, "SELECT entry_id FROM entries_sub WHERE suffix >= ? AND suffix < ? LIMIT ?", (lo, hi, FUZZY_CANDIDATES)
            ):
                cand[eid] = None
        texts = _texts(self._run, conn, list(cand))
        ids = list(texts)
        hays = [texts[i][1] for i in ids]
        scored = []
        # a cheap first cut in C (best-aligned stretch), then exact edit counts on the few left
        for _, _, i in process.extract_iter(word, hays, scorer=fuzz.partial_ratio, score_cutoff=70):
            d = _word_distance(word, hays[i])
            if d is not None:
                scored.append((d, len(texts[ids[i]][0]), ids[i]))
        scored.sort()
        return self._keep(conn, [r[2] for r in scored], where, params, lim)[: lim or None]

    def _filter(self, conn: Connection, ids: list[int], cond: str, params: Mapping[str, Any], cols: str = "e.id") -> Any:
        p2 = {k: v for k, v in params.items() if f":{k}" in cond}
        p2.update({f"i{n}": v for n, v in enumerate(ids)})
        ph = ", ".join(f":i{n}" for n in range(len(ids)))
        return self._run(conn, f"SELECT {cols} FROM entries e WHERE e.id IN ({ph}) AND {cond}", p2)

    @staticmethod
    def _with_fit(rows: list[dict[str, Any]], family: str | None, model_hashes: list[Any]) -> list[dict[str, Any]]:
        if family:
            for r in rows:
                r["fit"] = fits(r["base"], family, r.get("sd_checkpoint"), model_hashes)
                if r["base"] == "unknown":
                    r["note"] = "base unknown: check before use"
        return rows

    def _model_family(self, model: str | Mapping[str, Any] | None) -> tuple[str | None, list[str]]:
        if model is None or model == "":
            return None, []
        if isinstance(model, Mapping):
            hashes = [model.get(k) for k in ("sha256", "autov2", "old_hash") if model.get(k)]
            return (model.get("family") or "unknown"), hashes
        if model.lower() in FAMILIES:
            return model.lower(), []
        found = self.find_model(model)
        if found is None:
            raise NotFound(
                f"No known model has the hash {model!r}; pass the model file instead, or a family (sd1, sd2, sdxl)."
            )
        return found["family"] or "unknown", [found.get("sha256"), found.get("autov2"), found.get("old_hash")]

    def _summaries(self, conn: Connection, ids: list[int]) -> list[dict[str, Any]]:
        """Search-result dicts for entry ids, in the given order."""
        if not ids:
            return []
        out: dict[int, dict[str, Any]] = {}
        files: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for chunk in chunks(ids):
            params = {f"i{k}": v for k, v in enumerate(chunk)}
            ph = ", ".join(f":i{k}" for k in range(len(chunk)))
            ekeys = ("id", "name", "title", "kind", "base", "base_model", "nsfw", "status", "triggers",
                     "page_url", "removed_at", "remote_id", "source", "source_kind")
            for r in self._run(
                conn,
                "SELECT e.id, e.name, e.title, e.kind, e.base, e.base_model, e.nsfw, e.status, e.triggers, "
                "e.page_url, e.removed_at, e.remote_id, s.name AS source, s.kind AS source_kind "
                f"FROM entries e JOIN sources s ON s.id = e.source_id WHERE e.id IN ({ph})",
                params,
            ):
                out[r[0]] = dict(zip(ekeys, r))
            fkeys = ("entry_id", "url", "manual", "file_id", "file_name", "sha256", "size", "local_path",
                     "sd_checkpoint", "format")
            for r in self._run(
                conn,
                "SELECT ef.entry_id, ef.url, ef.manual, f.id AS file_id, f.file_name, f.sha256, f.size, "
                "COALESCE(ef.local_path, f.local_path), f.sd_checkpoint, f.format FROM entry_files ef JOIN files f ON f.id = ef.file_id "
                f"WHERE ef.entry_id IN ({ph}) ORDER BY ef.entry_id, f.id",
                params,
            ):
                files[r[0]].append(dict(zip(fkeys, r)))
        rows = []
        for eid in ids:
            e = out.get(eid)
            if e is None:
                continue
            triggers = loads(e.pop("triggers"), {}) or {}
            fl = files.get(eid, [])
            primary = primary_file(fl)
            url = None
            if primary is not None:
                url = primary["url"] if primary["url"] and not primary["manual"] else (primary["url"] or e["page_url"])
            else:
                url = e["page_url"]
            rows.append(
                {
                    "id": eid,
                    "name": e["name"],
                    "trigger": triggers.get("a1111") or e["name"],
                    "source": e["source"],
                    "base": e["base"],
                    "url": url,
                    "sha256": primary["sha256"] if primary else None,
                    "local": any(f["local_path"] for f in fl),
                    "title": e["title"],
                    "kind": e["kind"],
                    "base_model": e["base_model"],
                    "nsfw": bool(e["nsfw"]),
                    "status": e["status"],
                    "manual": bool(primary["manual"]) if primary else e["status"] == "manual",
                    "file_name": primary["file_name"] if primary else None,
                    "size": primary["size"] if primary else None,
                    "files": len(fl),
                    "removed": e["removed_at"] is not None,
                    "page_url": e["page_url"],
                    "sd_checkpoint": next((f["sd_checkpoint"] for f in fl if f["sd_checkpoint"]), None),
                }
            )
        return rows
