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
