"""The local collection: what is in `embeddings/`, adding files by hand, removing and exporting.

`scan()` walks `embeddings/` (subfolders included) and describes every embedding file. What it
learned about a file is kept in an index (`.tihub-cache/embeddings-index.bin`, marshal, in the
workspace) keyed by relative path with the file's size and `st_mtime_ns`: re-listing an unchanged
folder reads the index once and `stat`s each file, nothing more (per file, not the folder's
mtime, so in-place overwrites and subfolder changes are seen). A marshal file beat both a
catalogue table and JSON here (10,000 rows: SQLite query + decoding > json.load ~5x > marshal),
and the index is a pure cache (deleting it only costs a re-read).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import marshal
import os
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tihub.errors import ConfigError, FormatError, NotAnEmbedding, NotFound, TihubError
from tihub.formats import EMBEDDING_SUFFIXES
from tihub.formats.regular import regular_opener
from tihub.naming import inside, is_generic_stem, safe_filename, safe_stem, token_stem

if TYPE_CHECKING:  # pragma: no cover
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace

INDEX_VERSION = 4


def _row(rel: str, size: int, d: dict[str, Any]) -> dict[str, Any]:
    """The `tihub list` row of one file, as kept in the index: the per-call fields (trained_on,
    entry, source) start as None and are filled in only where something is known."""
    problem = d.get("problem")
    return {
        "name": d["name"],
        "path": rel,
        "format": d.get("format"),
        "base": d.get("base"),
        "vectors": d.get("vectors"),
        "widths": d.get("widths"),
        "sd_checkpoint": d.get("sd_checkpoint"),
        "sd_checkpoint_name": d.get("sd_checkpoint_name"),
        "trained_on": None,
        "entry": None,
        "source": None,
        "sha256": d.get("sha256"),
        "size": size,
        "problems": [problem["message"]] if problem else [],
        "readable": problem is None,
    }
MAX_FILE = 64 * 1024 * 1024
APPS = ("a1111", "comfyui", "invokeai")
INVOKEAI_BASE = {"sd1": "sd-1", "sd2": "sd-2", "sdxl": "sdxl"}


def index_path(workspace: Workspace) -> Path:
    return workspace.root / ".tihub-cache" / "embeddings-index.bin"


SIDECAR_SUFFIXES = (".preview.png", ".preview.webp", ".thumb.webp", ".thumb.png")  # previews, not embeddings


def walk(folder: Path) -> Iterable[tuple[str, os.DirEntry[str]]]:
    """(relative posix path, DirEntry) for every candidate file under `folder`, hidden dirs skipped."""
    stack = [("", str(folder))]
    suffixes = EMBEDDING_SUFFIXES
    skip = SIDECAR_SUFFIXES
    while stack:
        prefix, path = stack.pop()
        try:
            it = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for e in it:
                name = e.name
                if name[0] == ".":
                    continue
                low = name.lower()
                if low.endswith(suffixes):
                    if not low.endswith(skip) and not e.is_dir(follow_symlinks=False):
                        yield prefix + name, e
                elif e.is_dir(follow_symlinks=False):
                    stack.append((prefix + name + "/", e.path))


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What one file is (read safely): never raises for a bad file, `problem` says what is wrong."""
    from tihub.formats import read_embedding

    p = Path(path)
    info: dict[str, Any] = {"name": p.stem, "format": None, "base": None, "vectors": None, "widths": None,
                            "sd_checkpoint": None, "sd_checkpoint_name": None, "step": None, "sha256": None, "problem": None}
    try:
        with open(p, "rb", opener=regular_opener) as fh:  # a FIFO is refused, never waited on
            data = fh.read(MAX_FILE + 1)
    except NotAnEmbedding as exc:
        info["problem"] = {"kind": exc.kind, "message": str(exc)}
        return info
    except OSError as exc:
        info["problem"] = {"kind": "unreadable", "message": f"cannot read it ({exc.strerror or exc})"}
        return info
    info["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        emb = read_embedding(p, data)
    except NotAnEmbedding as exc:
        info["problem"] = {"kind": "not-embedding", "message": str(exc), "what": exc.kind}
        return info
    except FormatError as exc:
        info["problem"] = {"kind": "unreadable", "message": str(exc)}
        return info
    info.update(
        format=emb.container if emb.container != "unknown" else p.suffix.lstrip("."),
        layout=emb.layout,
        base=emb.base,
        vectors=emb.vector_count,
        widths=emb.widths,
        sd_checkpoint=emb.sd_checkpoint,
        sd_checkpoint_name=emb.sd_checkpoint_name,
        step=emb.step,
        internal_name=emb.internal_name,
    )
    return info


class LocalIndex:
    """The per-file size+mtime cache of `describe()` results.

    Stored with `marshal` (lists, strings, ints only): loading 10,000 rows takes about a fifth of
    what `json` needs, which is what keeps a rescan near the cost of the `stat` calls. The file is
    a cache that only tihub writes inside the workspace; anything unexpected in it (wrong magic,
    version or shape, a decoding error) just means it is rebuilt.
    """

    MAGIC = b"TIHUBIDX"

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.files: dict[str, list[Any]] = {}
        self.meta: dict[str, Any] = {}  # facts about the whole folder (duplicate names, hashes)
        self.dirty = False
        if path is None:
            return
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            if raw[:8] == self.MAGIC:
                data = marshal.loads(raw[8:])
                if isinstance(data, dict) and data.get("version") == INDEX_VERSION and isinstance(data.get("files"), dict):
                    self.files = data["files"]
                    self.meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        except (OSError, ValueError, EOFError, TypeError):
            self.files = {}

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "wb") as fh:
            fh.write(self.MAGIC + marshal.dumps({"version": INDEX_VERSION, "files": self.files, "meta": self.meta}))
        os.replace(tmp, self.path)
        self.dirty = False


def _scan(folder: Path, index_file: Path | None) -> tuple[list[tuple[str, int, dict[str, Any]]], dict[str, Any]]:
    """(relative path, size, row) for every file, via the index. The rows are fresh objects
    decoded from the index (or just described), so callers may fill them in."""
    index = LocalIndex(index_file)
    cached = index.files
    out: list[tuple[str, int, dict[str, Any]]] = []
    append = out.append
    for rel, entry in walk(folder):
        try:
            st = entry.stat()
        except OSError:
            continue
        row = cached.get(rel)
        if row is not None and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            append((rel, row[0], row[2]))
            continue
        info = _row(rel, st.st_size, describe(entry.path))
        cached[rel] = [st.st_size, st.st_mtime_ns, info]
        index.dirty = True
        append((rel, st.st_size, info))
    if len(out) != len(cached):
        seen = {r[0] for r in out}
        for rel in [r for r in cached if r not in seen]:
            del cached[rel]
        index.dirty = True
    out.sort(key=_first)
    if index.dirty or any(k not in index.meta for k in ("dups", "shas", "same_bytes")):
        index.meta = _folder_facts(out)
        index.dirty = True
    index.save()
    return out, index.meta


def _folder_facts(items: list[tuple[str, int, dict[str, Any]]]) -> dict[str, Any]:
    """What depends on the whole folder: trigger names used by several files, distinct hashes.
    Kept in the index, so an unchanged folder does not recompute them."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for rel, _, row in items:
        if row["readable"]:
            by_name[row["name"].lower()].append(rel)
    dups = {k: v for k, v in by_name.items() if len(v) > 1}
    by_sha: dict[str, list[str]] = defaultdict(list)
    for rel, _, row in items:
        if row["sha256"]:
            by_sha[row["sha256"]].append(rel)
    same_bytes = {k: v for k, v in by_sha.items() if len(v) > 1}  # exact duplicates
    return {"dups": dups, "shas": sorted(by_sha), "same_bytes": same_bytes}


def _first(t: tuple[str, int, dict[str, Any]]) -> str:
    return t[0]


def scan(folder: str | os.PathLike[str], index_file: Path | None = None) -> list[dict[str, Any]]:
    """Describe every embedding file under `folder` (cached per file by size + mtime)."""
    return [info for _rel, _size, info in _scan(Path(folder), index_file)[0]]  # already fresh dicts


def list_collection(
    workspace: Workspace,
    catalog: Catalog | None = None,
    folder: Path | None = None,
    *,
    civitai_url: str | None = None,
    allow_private: bool = False,
    remote: bool = True,
) -> list[dict[str, Any]]:
    """Rows for `tihub list`: name, path, format, base, vectors, trained_on, entry, problems.

    Each file is also identified by its sha256 (`tihub.identify`): `identified` is "catalog"
    (an entry of any source but `local` has these bytes), "civitai" (Civitai's by-hash lookup,
    when `civitai_url` is given) or None (nothing known matches); then `entry`, `source`,
    `page_url` and `triggers` say what it is. `duplicates`: the other paths with the very same
    bytes (exact duplicates); each row keeps its own name and path."""
    # Tens of thousands of small containers and no cycles: the cyclic GC would only rescan them.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _list_collection(workspace, catalog, folder, civitai_url, allow_private, remote)
    finally:
        if enabled:
            gc.enable()


def _list_collection(
    workspace: Workspace,
    catalog: Catalog | None,
    folder: Path | None,
    civitai_url: str | None = None,
    allow_private: bool = False,
    remote: bool = True,
) -> list[dict[str, Any]]:
    from tihub.compat import builtin_lookup
    from tihub.identify import identify

    root = folder or workspace.embeddings_dir
    items, facts = _scan(root, index_path(workspace) if folder is None else None)
    entries: dict[str, list[tuple[str, str]]] = {}  # sha256 -> local entries (a file's own entry)
    known = identify(catalog, facts["shas"], civitai_url=civitai_url, allow_private=allow_private, remote=remote,
                     local_out=entries)
    same_bytes: dict[str, list[str]] = facts.get("same_bytes") or {}
    dups: dict[str, list[str]] = facts["dups"]
    if dups:
        for rel, _, row in items:
            same = dups.get(row["name"].lower()) if row["readable"] else None
            if same:
                others = ", ".join(o for o in same if o != rel)
                row["problems"].append(f"duplicate trigger name {row['name']!r} (also {others}); apps load only one of them")
    models: dict[str, str | None] = {}
    rows = []
    append = rows.append
    get_entry = entries.get
    for _, _, row in items:
        # `row` is this call's own dict (decoded from the index): fill in what the catalogue knows
        ck = row["sd_checkpoint"]
        if ck:
            if ck not in models:
                mname = None
                if catalog is not None:
                    with contextlib.suppress(TihubError):
                        m = catalog.find_model(ck)
                        if m and not m.get("not_found"):
                            mname = m.get("name")
                if mname is None:
                    b = builtin_lookup(ck)
                    mname = b.name if b else None
                models[ck] = mname
            row["trained_on"] = f"{models[ck] or row['sd_checkpoint_name'] or '?'} [{ck}]"
        ident = known.get(row["sha256"]) if row["sha256"] else None
        if ident is not None:
            row["entry"], row["source"] = ident.name, ident.source
            row["identified"], row["page_url"], row["triggers"] = ident.via, ident.page_url, ident.triggers
        else:
            row["identified"], row["page_url"], row["triggers"] = None, None, []
            own = [e for e in get_entry(row["sha256"]) or () if e[0].lower() == row["name"].lower()] if entries else []
            if own:  # its own local entry, never another name's with the same bytes
                row["entry"], row["source"] = own[0]
        same = same_bytes.get(row["sha256"]) if same_bytes and row["sha256"] else None
        if same:
            dup = same.copy()  # the other paths with these bytes (copy + remove: C speed for big groups)
            dup.remove(row["path"])
            row["duplicates"] = dup
        else:
            row["duplicates"] = []
        append(row)
    return rows


# --------------------------------------------------------------------------------------------
# import / remove / export


@dataclass
class Imported:
    source: str
    status: str  # imported | exists | failed
    path: Path | None = None
    entry: str | None = None
    matched_by: str | None = None  # sha256 | name | None
    error: str | None = None
    identified: str | None = None  # "catalog" | "civitai" | None: what recognised the bytes
    origin: str | None = None  # the catalogue source (or "civitai") the bytes come from
    page_url: str | None = None
    triggers: list[str] | None = None
    duplicate_of: list[str] | None = None  # files already on disk with the very same bytes


def _entry_for_sha(catalog: Catalog, sha: str) -> tuple[int, str] | None:
    """The remote entry with these bytes (a `local` entry of another name is not this file)."""
    from sqlalchemy import text

    from tihub.catalog.db import read

    with read(catalog.engine) as conn:
        row = conn.execute(
            text(
                "SELECT e.id, e.name, s.name FROM files f JOIN entry_files ef ON ef.file_id = f.id JOIN entries e ON e.id = ef.entry_id "
                "JOIN sources s ON s.id = e.source_id WHERE f.sha256 = :s AND s.kind != 'local' ORDER BY e.id LIMIT 1"
            ),
            {"s": sha},
        ).first()
    return (int(row[0]), str(row[1])) if row else None


def _local_copies(catalog: Catalog, sha: str) -> list[str]:
    """Paths on disk the catalogue knows for these bytes (each entry's own copy)."""
    from sqlalchemy import text

    from tihub.catalog.db import read

    with read(catalog.engine) as conn:
        rows = conn.execute(
            text(
                "SELECT COALESCE(ef.local_path, f.local_path) FROM files f JOIN entry_files ef ON ef.file_id = f.id "
                "WHERE f.sha256 = :s UNION SELECT local_path FROM files WHERE sha256 = :s"
            ),
            {"s": sha},
        ).all()
    return sorted({r[0] for r in rows if r[0]})


def import_file(
    src: str | os.PathLike[str],
    folder: Path,
    catalog: Catalog | None = None,
    *,
    name: str | None = None,
    convert: str = "original",
    force: bool = False,
    civitai_url: str | None = None,
    allow_private: bool = False,
    remote: bool = True,
) -> Imported:
    """Copy a file the user downloaded by hand into `folder`, read safely and matched to the
    catalogue; its sha256 is also looked up on Civitai when `civitai_url` is given
    (`tihub.identify`), so the result says where it came from, its page and trigger words."""
    from tihub.download import PICKLE_CONTAINERS, place_file, suffix_for
    from tihub.formats import read_embedding, write_embedding
    from tihub.hashing import sha256_file

    sp = Path(src)
    try:
        if not sp.is_file():
            raise NotFound(f"{sp} is not a file; check the path.")
        size = sp.stat().st_size
        if size > MAX_FILE:
            raise NotAnEmbedding(f"{sp} is {size} bytes, far too large for an embedding; it is probably a model.")
        data = sp.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        emb = read_embedding(sp, data)
        entry_id, entry_name, matched = None, None, None
        ident = None
        same_bytes: list[str] = []
        if catalog is not None:
            from tihub.identify import identify

            ident = identify(catalog, [sha], civitai_url=civitai_url, allow_private=allow_private, remote=remote).get(sha)
            hit = _entry_for_sha(catalog, sha)
            same_bytes = _local_copies(catalog, sha)
            if hit:
                entry_id, entry_name, matched = hit[0], hit[1], "sha256"
            else:
                with contextlib.suppress(TihubError):  # NotFound included
                    e = catalog.entry(name or sp.stem)
                    entry_id, entry_name, matched = int(e["id"]), str(e["name"]), "name"
        stem = name or sp.stem
        if is_generic_stem(stem):
            stem = token_stem(emb.internal_name) or entry_name or "embedding"
        stem = safe_stem(stem)
        suffix = suffix_for(emb.container, sp.suffix.lower())
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{stem}.{os.getpid()}.{threading.get_ident()}.import"
        try:
            if convert == "safetensors" and emb.container in PICKLE_CONTAINERS:
                emb.name = stem
                write_embedding(emb, tmp, "safetensors")
                suffix = ".safetensors"
                final_sha = sha256_file(tmp)
            else:
                with open(tmp, "xb") as fh:
                    fh.write(data)
                final_sha = sha
            final = inside(folder, safe_filename(stem, suffix))
            placed = place_file(tmp, final, final_sha, stem, force=force)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        copy_sidecars(sp, final)
        if catalog is not None:
            catalog.upsert_local_file(final, emb, final_sha, entry_id)
            if entry_id is None:
                record_sidecars(catalog, final)
        result = Imported(str(sp), "imported" if placed else "exists", final, entry_name, matched)
        result.duplicate_of = sorted(
            str(q) for q in (Path(x) for x in same_bytes) if q.resolve() != final.resolve() and q.is_file()
        )
        if ident is not None:
            result.identified, result.origin, result.page_url, result.triggers = ident.via, ident.source, ident.page_url, ident.triggers
            if result.entry is None:
                result.entry, result.matched_by = ident.name, "sha256"
        return result
    except TihubError as exc:
        return Imported(str(sp), "failed", error=str(exc))
    except OSError as exc:
        return Imported(str(sp), "failed", error=f"{sp} could not be imported: {exc.strerror or exc}.")


def find_local(folder: Path, name: str) -> Path:
    """The one embedding file named `name` (trigger word, file name or relative path) under `folder`."""
    want = name.replace("\\", "/").strip("/")
    low = want.lower()
    hits = []
    for rel, e in walk(folder):
        stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if rel == want or rel.lower() == low or stem.lower() == low or rel.rsplit(".", 1)[0].lower() == low:
            hits.append((rel, Path(e.path)))
    if not hits:
        raise NotFound(f"No embedding named {name!r} in {folder}; run `tihub list` to see the names.")
    exact = [h for h in hits if h[0] == want]
    if len(hits) > 1 and not exact:
        shown = ", ".join(h[0] for h in hits)
        raise NotFound(f"{name!r} matches several files ({shown}); give the relative path instead.")
    return (exact or hits)[0][1]


def remove_files(workspace: Workspace, name: str, catalog: Catalog | None = None) -> list[Path]:
    """Delete one embedding from `embeddings/` with its `NAME.preview.*` and `NAME.json`
    sidecars, and mark it not local in the catalogue; return the paths deleted (the embedding first)."""
    path = find_local(workspace.embeddings_dir, name)
    os.unlink(path)
    gone = remove_sidecars(path)
    if catalog is not None:
        catalog.forget_local(path)
    return [path, *gone]


def remove(workspace: Workspace, name: str, catalog: Catalog | None = None) -> Path:
    """Delete one embedding (and its sidecars) from `embeddings/`; return its path."""
    return remove_files(workspace, name, catalog)[0]


def trigger_for(app: str, name: str) -> str:
    """How a prompt names the embedding `name` in `app`."""
    if app == "a1111":
        return name
    if app == "comfyui":
        return f"embedding:{name}"
    if app == "invokeai":
        return f"<{name}>"
    raise ConfigError(f"--app {app!r} is not known; choose a1111, comfyui or invokeai.")


def export_dir(root: Path, app: str, base: str | None) -> Path:
    """Where `app` looks for embeddings under its install folder `root`.

    A1111/Forge: `embeddings/`; ComfyUI: `models/embeddings/`; InvokeAI 3.x legacy layout:
    `models/<sd-1|sd-2|sdxl>/embedding/` (InvokeAI 4+ installs from any folder through its model
    manager, which accepts this folder too).
    """
    if app == "a1111":
        return root / "embeddings"
    if app == "comfyui":
        return root / "models" / "embeddings"
    if app == "invokeai":
        if base not in INVOKEAI_BASE:
            raise ConfigError(f"InvokeAI sorts embeddings by base model, and this one's base is {base or 'unknown'}; only SD1, SD2 and SDXL files can be exported there.")
        return root / "models" / INVOKEAI_BASE[base] / "embedding"
    raise ConfigError(f"--app {app!r} is not known; choose a1111, comfyui or invokeai.")


@dataclass
class Exported:
    name: str
    status: str  # exported | exists | failed
    path: Path | None = None
    trigger: str | None = None
    error: str | None = None


def export(workspace: Workspace, names: list[str], to: Path, app: str, *, force: bool = False) -> list[Exported]:
    """Copy embeddings where `app` expects them; PNG embeddings become safetensors for apps
    that cannot read images (ComfyUI, InvokeAI)."""
    from tihub.download import place_file
    from tihub.formats import read_embedding, write_embedding
    from tihub.hashing import sha256_file

    if app not in APPS:
        raise ConfigError(f"--app {app!r} is not known; choose a1111, comfyui or invokeai.")
    out = []
    for name in names:
        try:
            src = find_local(workspace.embeddings_dir, name)
            emb = read_embedding(src)
            stem = src.stem
            dest_dir = export_dir(to, app, emb.base)
            dest_dir.mkdir(parents=True, exist_ok=True)
            tmp = dest_dir / f".{stem}.{os.getpid()}.export"
            suffix = src.suffix.lower()
            try:
                if app != "a1111" and emb.container in ("png", "webp"):
                    write_embedding(emb, tmp, "safetensors")
                    suffix = ".safetensors"
                else:
                    shutil.copyfile(src, tmp)
                sha = sha256_file(tmp)
                final = inside(dest_dir, safe_filename(stem, suffix))
                placed = place_file(tmp, final, sha, stem, force=force)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            out.append(Exported(name, "exported" if placed else "exists", final, trigger_for(app, stem)))
        except TihubError as exc:
            out.append(Exported(name, "failed", error=str(exc)))
        except OSError as exc:
            out.append(Exported(name, "failed", error=f"Exporting {name} failed: {exc.strerror or exc}."))
    return out


# --------------------------------------------------------------------------------------------
# sidecars: NAME.preview.png and NAME.json beside an embedding (A1111 extra networks, Civitai Helper)
#
# A1111 shows `NAME.preview.{png,jpg,jpeg,webp,gif}` as the card picture and keeps the user
# metadata of an extra-networks card in `NAME.json` (stem, not file name): "description", "notes",
# and for networks with a prompt "activation text", "preferred weight", "negative text" and
# "sd version" (SD1 | SD2 | SDXL | Unknown). Civitai Helper writes the same file and adds
# "sha256", "modelId" and "modelVersionId". tihub writes these keys only where the file does not
# already hold a value (a user's edits win) and reads them back on import and local sync.

PREVIEW_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
SIDECAR_KEYS = ("description", "activation text", "preferred weight", "negative text", "notes", "sd version",
                "sha256", "modelId", "modelVersionId")
MAX_SIDECAR = 1024 * 1024
SD_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def _stem_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(path.suffix)] if path.suffix else path.name)


def sidecar_json(path: str | os.PathLike[str]) -> Path:
    return _stem_path(Path(path)).with_name(_stem_path(Path(path)).name + ".json")


def preview_files(path: str | os.PathLike[str]) -> list[Path]:
    """The `NAME.preview.*` pictures beside an embedding file."""
    stem = _stem_path(Path(path))
    return [p for ext in PREVIEW_EXTS if (p := stem.with_name(stem.name + ".preview" + ext)).is_file()]


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The known keys of `NAME.json` beside `path` ({} when absent or not a JSON object)."""
    import json

    p = sidecar_json(path)
    try:
        if not p.is_file() or p.stat().st_size > MAX_SIDECAR:
            return {}
        data = json.loads(p.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for k in SIDECAR_KEYS:
        v = data.get(k)
        if isinstance(v, str) and v.strip():
            out[k] = " ".join(v.split())[:4000] if k != "notes" and k != "description" else v.strip()[:4000]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


def sidecar_values(entry: dict[str, Any], sha256: str | None = None) -> dict[str, Any]:
    """What tihub knows about a catalogue entry, in A1111 / Civitai Helper sidecar keys."""
    triggers = entry.get("triggers") or {}
    extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
    desc = entry.get("description") or entry.get("title") or ""
    words = triggers.get("trained_words") or triggers.get("activation_text") or ""
    notes = [f"From {entry.get('source')}" + (f": {entry['page_url']}" if entry.get("page_url") else ""),
             "Written by tihub."]
    if entry.get("kind") == "negative":
        notes.insert(0, "A negative embedding: put it in the negative prompt.")
    values: dict[str, Any] = {
        "description": " ".join(str(desc).split())[:4000],
        "activation text": words,
        "preferred weight": 0,
        "notes": " ".join(notes),
        "sd version": SD_VERSION.get(str(entry.get("base")), "Unknown"),
    }
    if sha256:
        values["sha256"] = sha256
    if extra.get("modelId") is not None:
        values["modelId"] = extra["modelId"]
    if extra.get("versionId") is not None:
        values["modelVersionId"] = extra["versionId"]
    return values


def write_sidecars(path: str | os.PathLike[str], entry: dict[str, Any], sha256: str | None = None,
                   preview: bytes | None = None) -> list[Path]:
    """Write `NAME.json` (keys missing from an existing file only) and, given picture bytes and no
    existing `NAME.preview.*`, `NAME.preview.png`. Returns the files written."""
    import json

    from tihub.formats.writer import atomic_write

    written: list[Path] = []
    p = sidecar_json(path)
    current: dict[str, Any] = {}
    if p.is_file():
        try:
            loaded = json.loads(p.read_text(encoding="utf-8"))
            current = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            current = {}
    merged = dict(current)
    for k, v in sidecar_values(entry, sha256).items():
        if k not in merged or (merged[k] in (None, "") and v not in (None, "")):
            merged[k] = v
    if merged != current:
        atomic_write(p, json.dumps(merged, ensure_ascii=False, indent=4).encode("utf-8"))
        written.append(p)
    if preview is not None and not preview_files(path):
        from tihub.previews import as_png

        out = _stem_path(Path(path))
        out = out.with_name(out.name + ".preview.png")
        atomic_write(out, as_png(preview, str(out)))
        written.append(out)
    return written


def remove_sidecars(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the `NAME.preview.*` and `NAME.json` files of an embedding that was removed."""
    gone = []
    for p in [*preview_files(path), sidecar_json(path)]:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()
            gone.append(p)
    return gone


def after_fetch(catalog: Catalog, path: str | os.PathLike[str], sha256: str, entry_id: int | None,
                url: str | None = None, *, sidecars: bool = True, allow_private: bool = False,
                upstream_sha256: str | None = None) -> list[Path]:
    """What follows a fetch from a catalogue entry: remember where the file came from (for
    `tihub outdated`) and write its `NAME.json` and `NAME.preview.png` sidecars (the entry's first
    picture, fetched through tihub's URL checks; a picture that cannot be fetched is skipped)."""
    from tihub.errors import TihubError
    from tihub.updates import record_origin

    if entry_id is None:
        return []
    record_origin(catalog, path, sha256, entry_id, url, upstream_sha256)
    if not sidecars:
        return []
    entry = catalog.entry(int(entry_id))
    picture = None
    if not preview_files(path):
        from tihub.previews import describe, fetch_image

        for row in entry.get("previews") or []:
            d = describe(row)
            if d.get("nsfw"):
                continue
            try:
                picture = fetch_image(row.get("url") or "", allow_private=allow_private) if not d["path"] else Path(d["path"]).read_bytes()
                break
            except (TihubError, OSError):
                continue
    try:
        return write_sidecars(path, entry, sha256, picture)
    except (TihubError, OSError):
        return write_sidecars(path, entry, sha256, None)


def copy_sidecars(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """On import: bring `NAME.json` and `NAME.preview.*` from beside `src` to beside `dest`
    (renamed to dest's stem; files already there are kept). Local sync then reads them."""
    out: list[Path] = []
    d = _stem_path(Path(dest))
    pairs = [(p, d.with_name(d.name + p.name[len(_stem_path(Path(src)).name):])) for p in preview_files(src)]
    if sidecar_json(src).is_file() and read_sidecar(src):
        pairs.append((sidecar_json(src), sidecar_json(dest)))
    for a, b in pairs:
        if b.exists() or a.resolve() == b.resolve():
            continue
        with contextlib.suppress(OSError):
            shutil.copyfile(a, b)
            out.append(b)
    return out


def record_sidecars(catalog: Catalog, path: str | os.PathLike[str]) -> None:
    """On import: the `local` entry of `path` takes what its sidecars say (description,
    activation text, preview pictures), as a local sync would."""
    import json

    from sqlalchemy import text

    from tihub.catalog.db import read, write

    meta = read_sidecar(path)
    pics = preview_files(path)
    if not meta and not pics:
        return
    p = Path(path).resolve()
    rid = catalog._local_remote_id(p)
    with read(catalog.engine) as conn:
        row = conn.execute(
            text("SELECT e.id, e.description, e.triggers FROM entries e JOIN sources s ON s.id = e.source_id "
                 "WHERE s.name = 'local' AND e.remote_id = :r"),
            {"r": rid},
        ).first()
        have = {r[0] for r in conn.execute(text("SELECT path FROM previews WHERE entry_id = :e"), {"e": row[0]})} if row else set()
    if row is None:
        return
    triggers = json.loads(row[2]) if row[2] else {}
    if meta.get("activation text"):
        triggers["activation_text"] = meta["activation text"]
    with write(catalog.engine) as conn:
        conn.execute(text("UPDATE entries SET description = COALESCE(description, :d), triggers = :t WHERE id = :e"),
                     {"d": meta.get("description"), "t": json.dumps(triggers), "e": row[0]})
    for pic in pics:
        if str(pic.resolve()) not in have:
            catalog.add_preview(entry_id=row[0], url=pic.resolve().as_uri(), path=str(pic.resolve()), kind="local")
