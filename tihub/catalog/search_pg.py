"""Search on PostgreSQL: the same contract as the SQLite (FTS5) search, built from PostgreSQL's
own full-text search and pg_trgm.

What matches: every word of the query (AND), each one either
- a whole word of the name, triggers, title, tags, description or source name (tsvector), the
  last word also as a prefix of a word of the name, triggers or title while it is being typed,
- or a substring of the name or a trigger ("negative" finds EasyNegative; pg_trgm index for words
  of three characters or more, the `pairs` index for words of two: "nt" finds "entry").
Case and accents never matter (`tihub_fold`: NFKD, combining marks dropped, lower case).

How it ranks: an exact name first; then names holding every word; then entries whose name,
triggers or title hold every word; then the rest; within each, `ts_rank` over the field weights
(name, triggers A; title B; tags, source C; description D), shorter names, then id. With a limit,
each way of matching looks at a bounded number of candidates (like the SQLite search's
RANK_BOUND), so a word found in half the catalogue costs milliseconds, not a full ranking.

The index is the table `entries_search` (one row per entry: the weighted document, the naming
words, the folded names for pg_trgm, their two-character pieces, the folded name), kept in step with `entries` by triggers,
as SQLite's `entries_fts` is: `entries` has exactly the same columns on both engines.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, text

MAX_WORD = 255  # a longer "word" matches nothing that is indexed
BOUND = 200  # candidates looked at per way of matching, when a limit is given (SQLite: 100)
SUBSTRING_MIN = 3  # pg_trgm needs three characters to use its index; two: the `pairs` index
ANALYZE_AFTER = 5000  # new entries in one ingest after which the planner's statistics are refreshed


def _pairs(names_text: str) -> str:
    """Every two-character piece of `names_text` (SQL), as a text array: the GIN index keeps each
    distinct one once (removing repeats or the pieces with a space in SQL costs ten times more)."""
    return f"ARRAY(SELECT substr({names_text}, i, 2) FROM generate_series(1, length({names_text}) - 1) i)"


# The search row of the entries in a transition table (or NEW), as a SELECT over `n`. The words
# are those of `tihub_words` (folded, punctuation as spaces), as SQLite's unicode61 tokenizer
# splits them: PostgreSQL's own parser would read "entry-14" as "entry" and "-14", "SD 1.5" as
# "sd" and "1.5", and drop a trigger "<easy-neg>" as an XML tag. `names` is the part of `doc` that
# comes from name, triggers and title (weights A and B; the same words at the same positions).
_ROW_OF = """SELECT n.id, d.doc, ts_filter(d.doc, '{{a,b}}'), t.names_text, """ + _pairs("t.names_text") + """,
        tihub_fold(n.name)
    FROM {src} n JOIN sources s ON s.id = n.source_id, LATERAL (SELECT
        tihub_fold(concat_ws(' ', n.name, regexp_replace(coalesce(n.triggers, ''), '"[^"]*"\s*:', ' ', 'g')))
        AS names_text OFFSET 0) t, LATERAL (SELECT
        setweight(to_tsvector('simple'::regconfig, tihub_words(n.name)), 'A')
        || setweight(to_tsvector('simple'::regconfig, tihub_words(n.triggers)), 'A')
        || setweight(to_tsvector('simple'::regconfig, tihub_words(n.title)), 'B')
        || setweight(to_tsvector('simple'::regconfig, tihub_words(n.tags)), 'C')
        || setweight(to_tsvector('simple'::regconfig, tihub_words(s.name)), 'C')
        || setweight(to_tsvector('simple'::regconfig, tihub_words(n.description)), 'D') AS doc OFFSET 0) d"""

# Case- and accent-folded text (the Python `fold` below does the same to the query). ASCII text
# (as many bytes as characters) is only lower-cased: NFKD leaves it as it is and it holds no
# combining marks, so the answer is the same, at a third of the cost of a whole ingest's folds.
FOLD_DDL = r"""CREATE OR REPLACE FUNCTION tihub_fold(t text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN octet_length(t) = char_length(t) THEN lower(t)
                ELSE lower(regexp_replace(normalize(coalesce(t, ''), NFKD), '[\u0300-\u036f]', '', 'g')) END"""

# The words of a text for to_tsvector: folded, every run of punctuation a space.
WORDS_DDL = r"""CREATE OR REPLACE FUNCTION tihub_words(t text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN regexp_replace(tihub_fold(t), '[[:punct:]]+', ' ', 'g')"""

# The triggers that keep `entries_search` in step with `entries`.
TRIGGER_DDL = [
    # New entries: one statement-level trigger per INSERT or COPY statement (an ingest's rows).
    f"""CREATE OR REPLACE FUNCTION tihub_entries_search_ins() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO entries_search (id, doc, names, names_text, pairs, name_key) {_ROW_OF.format(src="new_rows")};
        RETURN NULL;
    END $$""",
    # A changed entry (rare: only when its searchable text or source changed).
    f"""CREATE OR REPLACE FUNCTION tihub_entries_search_upd() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM entries_search WHERE id = NEW.id;
        INSERT INTO entries_search (id, doc, names, names_text, pairs, name_key)
            {_ROW_OF.format(src="(SELECT NEW.*)")};
        RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS entries_search_ins ON entries",
    "CREATE TRIGGER entries_search_ins AFTER INSERT ON entries REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION tihub_entries_search_ins()",
    "DROP TRIGGER IF EXISTS entries_search_upd ON entries",
    "CREATE TRIGGER entries_search_upd AFTER UPDATE OF name, triggers, title, description, tags, source_id "
    "ON entries FOR EACH ROW EXECUTE FUNCTION tihub_entries_search_upd()",
]

# The search rows of every entry not indexed yet.
BACKFILL = (
    f"INSERT INTO entries_search (id, doc, names, names_text, pairs, name_key) {_ROW_OF.format(src='entries')} "
    "ON CONFLICT (id) DO NOTHING"
)

DDL = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    FOLD_DDL,
    WORDS_DDL,
    """CREATE TABLE IF NOT EXISTS entries_search (
        id INTEGER PRIMARY KEY REFERENCES entries (id) ON DELETE CASCADE,
        doc tsvector NOT NULL,        -- every searchable word, weighted by field
        names tsvector NOT NULL,      -- the words of name, triggers and title (prefix matches)
        names_text TEXT NOT NULL,     -- folded name and trigger words (pg_trgm substrings)
        pairs TEXT[],                 -- their distinct two-character pieces (2-character substrings)
        name_key TEXT NOT NULL        -- the folded name (exact matches)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_entries_search_doc ON entries_search USING gin (doc)",
    "CREATE INDEX IF NOT EXISTS ix_entries_search_names ON entries_search USING gin (names)",
    "CREATE INDEX IF NOT EXISTS ix_entries_search_trgm ON entries_search USING gin (names_text gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS ix_entries_search_key ON entries_search (name_key)",
    "CREATE INDEX IF NOT EXISTS ix_entries_search_pairs ON entries_search USING gin (pairs)",
    *TRIGGER_DDL,
    # Entries already there (a catalogue that was on PostgreSQL before this migration).
    BACKFILL,
]

# The two-character pieces of names and triggers, for a catalogue indexed before them.
PAIRS_BACKFILL = f"UPDATE entries_search SET pairs = {_pairs('names_text')} WHERE pairs IS NULL"
PAIRS_DDL = [
    "ALTER TABLE entries_search ADD COLUMN IF NOT EXISTS pairs TEXT[]",
    "CREATE INDEX IF NOT EXISTS ix_entries_search_pairs ON entries_search USING gin (pairs)",
]

# Re-index every entry with the words of `tihub_words` (a catalogue indexed before it).
REINDEX_DDL = [FOLD_DDL, WORDS_DDL, *PAIRS_DDL, *TRIGGER_DDL, "TRUNCATE entries_search", BACKFILL]


def fold(s: str) -> str:
    """What `tihub_fold` does in the database: NFKD, combining marks dropped, lower case."""
    d = unicodedata.normalize("NFKD", s)
    return "".join(ch for ch in d if not 0x300 <= ord(ch) <= 0x36F).lower()


def _like(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _substring(word: str, i: int) -> str:
    """The condition "the names or triggers hold the query's word `i` as a substring", through an
    index: pg_trgm for three characters or more, the two-character pieces (`pairs`) for two."""
    if len(word) >= SUBSTRING_MIN:
        return f"x.names_text LIKE :s{i}"
    return f"x.pairs @> ARRAY[CAST(:w{i} AS text)]"


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
    match, in_name, in_named, ranks = [], [], [], []
    for i, w in enumerate(words):
        last = prefix and i == len(words) - 1
        # quoted lexemes: the query's words are \w only, so no tsquery operator gets through
        p[f"t{i}"] = f"'{w}'"
        p[f"n{i}"] = f"'{w}'" + (":*" if last else "")
        p[f"s{i}"] = _like(w)
        p[f"w{i}"] = w
        named = f"x.names @@ to_tsquery('simple', :n{i})"
        alts = [f"x.doc @@ to_tsquery('simple', :t{i})", named]
        if len(w) >= 2:
            alts.append(_substring(w, i))
        match.append("(" + " OR ".join(alts) + ")")
        in_name.append(f"x.name_key LIKE :s{i}")
        in_named.append(f"(x.names_text LIKE :s{i} OR {named})")
        ranks.append(f"to_tsquery('simple', :t{i})")
    tier = (
        "CASE WHEN x.name_key = :exact THEN 0 "
        f"WHEN {' AND '.join(in_name)} THEN 1 "
        f"WHEN {' AND '.join(in_named)} THEN 2 ELSE 3 END"
    )
    rank = f"ts_rank('{{0.1, 0.2, 0.4, 1.0}}', x.doc, {' || '.join(ranks)})"
    # Two steps: candidate ids from the search table alone (index scans, no join), then the
    # filters and the ranking over those candidates only (primary-key lookups).
    ranked = (
        "SELECT e.id FROM entries_search x JOIN entries e ON e.id = x.id WHERE x.id = ANY(:ids)"
        + "".join(f" AND {w}" for w in where)
        + f" ORDER BY {tier}, {rank} DESC, length(e.name), e.id"
        + (" LIMIT :limit" if limit > 0 else "")
    )
    every = f"SELECT x.id FROM entries_search x WHERE {' AND '.join(match)}"
    p["limit"] = limit
    if limit > 0:
        # Bounded: the exact name (btree), name substrings (trigram), name words and prefixes,
        # and anything else that matches, each at most BOUND candidates.
        p["bound"] = max(BOUND, limit * 5)
        branches = ["SELECT x.id FROM entries_search x WHERE x.name_key = :exact"]
        if all(len(w) >= 2 for w in words):
            subs = " AND ".join(_substring(w, i) for i, w in enumerate(words))
            branches.append(f"(SELECT x.id FROM entries_search x WHERE {subs} LIMIT :bound)")
        named_all = " AND ".join(f"x.names @@ to_tsquery('simple', :n{i})" for i in range(len(words)))
        branches.append(f"(SELECT x.id FROM entries_search x WHERE {named_all} LIMIT :bound)")
        # One word: its whole-word matches anywhere (its prefix and substring matches are the
        # branches above). The OR of all three would be estimated by the prefix's default
        # selectivity (2% of the table), and a LIMIT over that estimate picks a table scan
        # that reads every row when the word is rare.
        anywhere = "SELECT x.id FROM entries_search x WHERE x.doc @@ to_tsquery('simple', :t0)"
        branches.append(f"({anywhere if len(words) == 1 else every} LIMIT :bound)")
        p["ids"] = [r[0] for r in conn.execute(text(" UNION ".join(branches)), p)]
        ids = [r[0] for r in conn.execute(text(ranked), p)] if p["ids"] else []
        if len(ids) >= limit or not where or len(p["ids"]) < p["bound"]:
            return ids
        # the filters rejected too many of the bounded candidates: rank every match, as SQLite does
    p["ids"] = [r[0] for r in conn.execute(text(every), p)]
    return [r[0] for r in conn.execute(text(ranked), p)] if p["ids"] else []


def after_ingest(conn: Connection, new_entries: int) -> None:
    """After a large ingest, refresh the planner's statistics of `entries` and `entries_search`,
    so the next search picks index scans rather than a table scan."""
    if new_entries >= ANALYZE_AFTER:
        conn.execute(text("ANALYZE entries"))
        conn.execute(text("ANALYZE entries_search"))
