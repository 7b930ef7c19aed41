"""The catalogue tables (SQLAlchemy Core), as created by migration `m002_catalog`.

JSON columns are TEXT holding JSON; timestamps are ISO text from `tihub.catalog.db.now()`.
On SQLite, `entries_fts` (FTS5) indexes name, triggers, title, description, tags and the source
name of every entry; triggers keep it in step with `entries`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# Byte sizes are 64-bit (PostgreSQL's INTEGER is 32-bit); SQLite keeps its INTEGER.
Size = BigInteger().with_variant(Integer(), "sqlite")

sources = Table(
    "sources",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("nsfw", Integer, nullable=False, default=0),
    Column("last_sync", Text),
    Column("last_status", Text),  # "ok" | "unchanged" | "failed" | None (never synced)
    Column("last_error", Text),
    Column("state", Text),  # JSON: what the indexer recorded (etag, commit, cursor, ...)
    Column("entry_count", Integer, nullable=False, default=0),
)

entries = Table(
    "entries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source_id", Integer, ForeignKey("sources.id"), nullable=False),
    Column("remote_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("title", Text),
    Column("description", Text),
    Column("kind", Text),  # object | style | negative
    Column("tags", Text),  # JSON list
    Column("base_model", Text),  # declared, free text ("SD 1.5", "Waifu Diffusion v1.3")
    Column("base", Text, nullable=False, default="unknown"),  # sd1 | sd2 | sdxl | unknown
    Column("nsfw", Integer, nullable=False, default=0),
    Column("licence", Text),
    Column("page_url", Text),
    Column("triggers", Text),  # JSON {app: trigger}
    Column("status", Text, nullable=False, default="ok"),  # ok|gated|disabled|empty|manual|error
    Column("first_seen", Text, nullable=False),
    Column("last_seen", Text, nullable=False),
    Column("removed_at", Text),
    Column("extra", Text),  # JSON
    UniqueConstraint("source_id", "remote_id", name="uq_entries_source_remote"),
)
Index("ix_entries_name", entries.c.name)
Index("ix_entries_base", entries.c.base)

files = Table(
    "files",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sha256", Text, unique=True),  # lower-case hex; NULL when no source told it yet
    Column("file_name", Text, nullable=False),
    Column("size", Size),
    Column("format", Text),
    Column("vectors", Integer),
    Column("widths", Text),  # JSON {"clip_l": 768, ...}
    Column("base", Text),
    Column("sd_checkpoint", Text),
    Column("sd_checkpoint_name", Text),
    Column("step", Integer),
    Column("hashes", Text),  # JSON {"AutoV2": ..., "CRC32": ...}
    Column("local_path", Text),
    Column("fetched_at", Text),
)
Index("ix_files_local_path", files.c.local_path)

entry_files = Table(
    "entry_files",
    metadata,
    Column("entry_id", Integer, ForeignKey("entries.id"), nullable=False),
    Column("file_id", Integer, ForeignKey("files.id"), nullable=False),
    Column("url", Text),
    Column("manual", Integer, nullable=False, default=0),
    # (m005) where this entry's copy of the file is on disk: the same bytes saved under two
    # names are one `files` row, but each name's entry keeps its own path
    Column("local_path", Text),
    PrimaryKeyConstraint("entry_id", "file_id"),
)
Index("ix_entry_files_file", entry_files.c.file_id)

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text),
    Column("sha256", Text),
    Column("autov2", Text),
    Column("old_hash", Text),
    Column("family", Text),  # sd1 | sd2 | sdxl | unknown
    Column("widths", Text),  # JSON
    Column("origin", Text),  # hashed | civitai | builtin
    Column("path", Text),
    Column("checked_at", Text),
    Column("not_found", Integer, nullable=False, default=0),
)
Index("ix_models_sha256", models.c.sha256)
Index("ix_models_autov2", models.c.autov2)
Index("ix_models_old_hash", models.c.old_hash)

previews = Table(
    "previews",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_id", Integer, ForeignKey("entries.id")),
    Column("file_id", Integer, ForeignKey("files.id")),
    Column("url", Text),
    Column("path", Text),
    Column("model_hash", Text),
    Column("params", Text),  # JSON
    Column("created_at", Text, nullable=False),
    Column("kind", Text),  # added by m006_knowledge: concept_image | readme | preview | link_page | civitai | local | grid
)
Index("ix_previews_entry", previews.c.entry_id)

verifications = Table(
    "verifications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_id", Integer, ForeignKey("entries.id")),
    Column("file_id", Integer, ForeignKey("files.id")),
    Column("model_hash", Text),
    Column("model_name", Text),
    Column("created_at", Text, nullable=False),
    Column("result", Text),
    Column("details", Text),  # JSON
    Column("grid_path", Text),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_id", Integer, ForeignKey("entries.id")),
    Column("file_id", Integer, ForeignKey("files.id")),
    Column("settings", Text),  # JSON
    Column("pictures", Integer),
    Column("loss_csv", Text),
    Column("loss_png", Text),
    Column("checkpoints", Text),  # JSON
    Column("created_at", Text, nullable=False),
)

# (m005) what a remote service said about a file hash (Civitai's by-hash lookup of embeddings
# on disk): found = 1 with `data` (JSON: name, page_url, triggers, base_model, ...), or 0 (a miss,
# asked again once `checked_at` is older than the miss lifetime).
hash_lookups = Table(
    "hash_lookups",
    metadata,
    Column("service", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("found", Integer, nullable=False),
    Column("data", Text),
    Column("checked_at", Text, nullable=False),
    PrimaryKeyConstraint("service", "sha256"),
)

CATALOG_TABLES = [sources, entries, files, entry_files, models, previews, verifications, training_runs]

# FTS5 over the searchable text of each entry; rowid = entries.id. Column order matters for the
# bm25 weights in store.py.
FTS_COLUMNS = ("name", "triggers", "title", "description", "tags", "source")

FTS_DDL = [
    """CREATE VIRTUAL TABLE entries_fts USING fts5(
        name, triggers, title, description, tags, source, tokenize = 'unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER entries_fts_ai AFTER INSERT ON entries BEGIN
        INSERT INTO entries_fts (rowid, name, triggers, title, description, tags, source)
        VALUES (new.id, new.name, new.triggers, new.title, new.description, new.tags,
                (SELECT name FROM sources WHERE id = new.source_id));
    END""",
    """CREATE TRIGGER entries_fts_au AFTER UPDATE OF name, triggers, title, description, tags, source_id
        ON entries BEGIN
        DELETE FROM entries_fts WHERE rowid = old.id;
        INSERT INTO entries_fts (rowid, name, triggers, title, description, tags, source)
        VALUES (new.id, new.name, new.triggers, new.title, new.description, new.tags,
                (SELECT name FROM sources WHERE id = new.source_id));
    END""",
    """CREATE TRIGGER entries_fts_ad AFTER DELETE ON entries BEGIN
        DELETE FROM entries_fts WHERE rowid = old.id;
    END""",
]

# A second, small FTS5 index over the naming columns only (external content: no copy of the
# text). A word found in half the descriptions has a short list here, so "name hits first" stays
# cheap for broad queries.
NAMES_FTS_DDL = [
    """CREATE VIRTUAL TABLE entries_names_fts USING fts5(
        name, triggers, title, content = 'entries', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3 4 5 6'
    )""",
    """CREATE TRIGGER entries_names_ai AFTER INSERT ON entries BEGIN
        INSERT INTO entries_names_fts (rowid, name, triggers, title) VALUES (new.id, new.name, new.triggers, new.title);
    END""",
    """CREATE TRIGGER entries_names_ad AFTER DELETE ON entries BEGIN
        INSERT INTO entries_names_fts (entries_names_fts, rowid, name, triggers, title)
        VALUES ('delete', old.id, old.name, old.triggers, old.title);
    END""",
    """CREATE TRIGGER entries_names_au AFTER UPDATE OF name, triggers, title ON entries BEGIN
        INSERT INTO entries_names_fts (entries_names_fts, rowid, name, triggers, title)
        VALUES ('delete', old.id, old.name, old.triggers, old.title);
        INSERT INTO entries_names_fts (rowid, name, triggers, title) VALUES (new.id, new.name, new.triggers, new.title);
    END""",
    "INSERT INTO entries_names_fts (entries_names_fts) VALUES ('rebuild')",
]

# Substring search (migration m005): every suffix of each entry's lower-cased name and trigger
# words (first SUB_LEN characters of each, from each of the first SUB_POSITIONS positions) in a
# B-tree, so a substring is one index range: "negative" finds EasyNegative and
# ng_deepnegative_v1_75t, "bad" finds badhandv4, at a cost proportional to the matches (a
# trigram FTS5 index costs the length of every trigram's posting list: ~10 ms per word over a
# million names). `name_positions` holds 0..SUB_POSITIONS-1 so triggers can expand a text into
# its suffixes in plain SQL (triggers cannot use recursive CTEs).
SUB_LEN = 12
SUB_POSITIONS = 64


def sub_rows_sql(alias: str) -> str:
    """SELECT (suffix, entry id) rows for the entry row `alias` (`new`, `old` or a table alias):
    its name and the trigger words that differ from it (most repeat the name)."""
    texts = (
        f"SELECT lower({alias}.name) AS text UNION SELECT lower(value) FROM json_each("
        f"CASE WHEN json_valid({alias}.triggers) THEN {alias}.triggers END) "
        f"WHERE value <> {alias}.name COLLATE NOCASE AND value <> '<' || {alias}.name || '>'"
    )
    return (
        f"SELECT substr(t.text, p.n + 1, {SUB_LEN}) AS suffix, {alias}.id AS entry_id, length(t.text) AS size "
        f"FROM ({texts}) t JOIN name_positions p ON p.n < length(t.text) - 1"
    )


def sub_bulk_sql(where: str = "1 = 1") -> str:
    """INSERT the suffix rows of every entry `e` matching `where`, sorted (a sorted insert into
    the B-tree is several times faster than one trigger call per entry)."""
    return (
        "INSERT OR IGNORE INTO entries_sub (suffix, entry_id, size) "
        f"SELECT substr(t.text, p.n + 1, {SUB_LEN}) AS suffix, t.id, length(t.text) FROM ("
        f"SELECT e.id, lower(e.name) AS text FROM entries e WHERE {where} "
        "UNION SELECT e.id, lower(j.value) FROM entries e, json_each(CASE WHEN json_valid(e.triggers) THEN e.triggers END) j "
        f"WHERE {where} AND j.value <> e.name COLLATE NOCASE AND j.value <> '<' || e.name || '>'"
        ") t JOIN name_positions p ON p.n < length(t.text) - 1 ORDER BY suffix, t.id"
    )


SUB_DDL = [
    "CREATE TABLE name_positions (n INTEGER PRIMARY KEY)",
    f"WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n < {SUB_POSITIONS - 1}) "
    "INSERT INTO name_positions (n) SELECT n FROM c",
    # size: the length of the name or trigger word the suffix comes from (shorter ranks first)
    "CREATE TABLE entries_sub (suffix TEXT NOT NULL, entry_id INTEGER NOT NULL, size INTEGER NOT NULL, "
    "PRIMARY KEY (suffix, entry_id)) WITHOUT ROWID",
    f"""CREATE TRIGGER entries_sub_ai AFTER INSERT ON entries BEGIN
        INSERT OR IGNORE INTO entries_sub (suffix, entry_id, size) {sub_rows_sql('new')};
    END""",
    f"""CREATE TRIGGER entries_sub_au AFTER UPDATE OF name, triggers ON entries BEGIN
        DELETE FROM entries_sub WHERE entry_id = old.id AND suffix IN (SELECT suffix FROM ({sub_rows_sql('old')}));
        INSERT OR IGNORE INTO entries_sub (suffix, entry_id, size) {sub_rows_sql('new')};
    END""",
    f"""CREATE TRIGGER entries_sub_ad AFTER DELETE ON entries BEGIN
        DELETE FROM entries_sub WHERE entry_id = old.id AND suffix IN (SELECT suffix FROM ({sub_rows_sql('old')}));
    END""",
    sub_bulk_sql(),
    # exact names first: `name = ? COLLATE NOCASE` through an index
    "CREATE INDEX IF NOT EXISTS ix_entries_name_nocase ON entries (name COLLATE NOCASE)",
]
