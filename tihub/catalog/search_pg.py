"""Search on PostgreSQL: the same contract as the SQLite (FTS5) search, built from PostgreSQL's
own full-text search and pg_trgm.

What matches: every word of the query (AND), each one either
- a whole word of the name, triggers, title, tags, description or source name (tsvector, and the
  last word also as a prefix of a word of the name, triggers or title while it is being typed),
- or a substring of the name or a trigger ("negative" finds EasyNegative; pg_trgm index, words of
  three characters or more).
Case and accents never matter (`tihub_fold`: NFKD, combining marks dropped, lower case).

How it ranks: an exact name first; then names holding every word; then entries whose name,
triggers or title hold every word; then the rest; within each, `ts_rank` over the field weights
(name, triggers A; title B; tags C; description D), shorter names, then id. With a limit, each way
of matching looks at a bounded number of candidates (like the SQLite search's RANK_BOUND), so a
word found in half a million entries costs milliseconds, not a full ranking.

The indexes (created by migration `m016_pg_search`) are expression indexes over immutable SQL
functions, so the `entries` table has exactly the columns it has on SQLite.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, text

MAX_WORD = 255  # a longer "word" matches nothing that is indexed
BOUND = 1000  # candidates looked at per way of matching, when a limit is given
SUBSTRING_MIN = 3  # pg_trgm needs three characters to use its index

DDL = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    # Case- and accent-folded text (the Python `fold` below does the same to the query).
    r"""CREATE OR REPLACE FUNCTION tihub_fold(t text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN lower(regexp_replace(normalize(coalesce(t, ''), NFKD), '[\u0300-\u036f]', '', 'g'))""",
    # The name and the trigger words (JSON values without their keys), for substring matches.
    r"""CREATE OR REPLACE FUNCTION tihub_names(name text, triggers text) RETURNS text LANGUAGE sql
        IMMUTABLE PARALLEL SAFE
        RETURN tihub_fold(coalesce(name, '') || ' ' || regexp_replace(coalesce(triggers, ''), '"[^"]*"\s*:', ' ', 'g'))""",
    # The weighted document: name and triggers A, title B, tags C, description D.
    """CREATE OR REPLACE FUNCTION tihub_doc(name text, triggers text, title text, description text, tags text)
        RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN setweight(to_tsvector('simple'::regconfig, tihub_fold(name)), 'A')
            || setweight(to_tsvector('simple'::regconfig, tihub_fold(triggers)), 'A')
            || setweight(to_tsvector('simple'::regconfig, tihub_fold(title)), 'B')
            || setweight(to_tsvector('simple'::regconfig, tihub_fold(tags)), 'C')
            || setweight(to_tsvector('simple'::regconfig, tihub_fold(description)), 'D')""",
    "CREATE INDEX IF NOT EXISTS ix_entries_pg_doc ON entries USING gin "
    "(tihub_doc(name, triggers, title, description, tags))",
    "CREATE INDEX IF NOT EXISTS ix_entries_pg_names ON entries USING gin (tihub_names(name, triggers) gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS ix_entries_pg_name_fold ON entries (tihub_fold(name))",
]

_DOC = "tihub_doc(e.name, e.triggers, e.title, e.description, e.tags)"
_NAMES = "tihub_names(e.name, e.triggers)"
ANALYZE_AFTER = 5000  # new entries in one ingest after which the planner's statistics are refreshed


def fold(s: str) -> str:
    """What `tihub_fold` does in the database: NFKD, combining marks dropped, lower case."""
    d = unicodedata.normalize("NFKD", s)
    return "".join(ch for ch in d if not 0x300 <= ord(ch) <= 0x36F).lower()


def _like(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_ids(
    conn: Connection, query: str, where: list[str], params: Mapping[str, Any], limit: int
) -> list[int]:
    """Entry ids matching `query` under the filter conditions `where` (SQL over `e`, with
    `params`), ranked; at most `limit` (0: all)."""
    raw = query.replace("\x00", " ")
    words = re.findall(r"\w+", fold(raw))
    if not words or any(len(w) > MAX_WORD for w in words):
        return []
    prefix = len(words[-1]) >= 2 and not raw.endswith((" ", "\t"))
    p: dict[str, Any] = dict(params)
    p["exact"] = fold(raw.strip())
    sources = [(sid, set(re.findall(r"\w+", fold(name)))) for sid, name in conn.execute(text("SELECT id, name FROM sources"))]
    match, in_name, in_named, ranks = [], [], [], []
    for i, w in enumerate(words):
        last = prefix and i == len(words) - 1
        # quoted lexemes: the query's words are \w only, so no tsquery operator gets through
        p[f"t{i}"] = f"'{w}'" + (f" | '{w}':*AB" if last else "")
        p[f"n{i}"] = f"'{w}'" + (":*AB" if last else ":AB")
        p[f"s{i}"] = _like(w)
        word_hit = f"{_DOC} @@ to_tsquery('simple', :t{i})"
        named_hit = f"{_DOC} @@ to_tsquery('simple', :n{i})"
        sub_hit = f"{_NAMES} LIKE :s{i}"
        alts = [word_hit]
        if len(w) >= SUBSTRING_MIN:
            alts.append(sub_hit)
        src = [sid for sid, toks in sources if w in toks or (last and any(t.startswith(w) for t in toks))]
        if src:
            alts.append(f"e.source_id IN ({', '.join(str(int(s)) for s in src)})")
        match.append("(" + " OR ".join(alts) + ")")
        in_name.append(f"tihub_fold(e.name) LIKE :s{i}")
        in_named.append(f"({sub_hit} OR {named_hit})")
        ranks.append(f"to_tsquery('simple', :t{i})")
    filters = "".join(f" AND {w}" for w in where)
    matched = " AND ".join(match)
    tier = (
        "CASE WHEN tihub_fold(e.name) = :exact THEN 0 "
        f"WHEN {' AND '.join(in_name)} THEN 1 "
        f"WHEN {' AND '.join(in_named)} THEN 2 ELSE 3 END"
    )
    rank = f"ts_rank('{{0.1, 0.2, 0.4, 1.0}}', {_DOC}, {' || '.join(ranks)})"
    order = f" ORDER BY {tier}, {rank} DESC, length(e.name), e.id"
    if limit <= 0:
        sql = f"SELECT e.id FROM entries e WHERE {matched}{filters}{order}"
        return [r[0] for r in conn.execute(text(sql), p)]
    # Bounded: the exact name (btree), name substrings (trigram) and everything else that matches,
    # each at most BOUND candidates, then one ranking of that small set.
    p["bound"] = max(BOUND, limit * 10)
    p["limit"] = limit
    branches = [f"SELECT e.id FROM entries e WHERE tihub_fold(e.name) = :exact{filters}"]
    if all(len(w) >= SUBSTRING_MIN for w in words):
        subs = " AND ".join(f"{_NAMES} LIKE :s{i}" for i in range(len(words)))
        branches.append(f"(SELECT e.id FROM entries e WHERE {subs}{filters} LIMIT :bound)")
    branches.append(f"(SELECT e.id FROM entries e WHERE {matched}{filters} LIMIT :bound)")
    sql = (
        f"SELECT e.id FROM entries e WHERE e.id IN ({' UNION '.join(branches)}) AND {matched}"
        f"{order} LIMIT :limit"
    )
    return [r[0] for r in conn.execute(text(sql), p)]


def after_ingest(conn: Connection, new_entries: int) -> None:
    """After a large ingest, refresh the planner's statistics of `entries` (its expression
    indexes included), so the next search uses the indexes rather than a table scan."""
    if new_entries >= ANALYZE_AFTER:
        conn.execute(text("ANALYZE entries"))
