"""Updates: where each fetched file came from, and whether its source has something newer.

`record_origin` notes, for a file fetched from a catalogue entry, the entry (source and remote
id) and the version it had: the Civitai model version id, the Hugging Face repo commit, the git
commit, or the link URL. `outdated()` compares every such file still on disk with what the
catalogue knows now (after `tihub sync`):

- Civitai: another version of the same model (same `modelId`) for the same base, newer
  (a higher version id), is listed;
- Hugging Face / git / link pages: the entry's file now has another sha256 (a newer commit
  changed it), or the link now points at another URL;
- the entry was removed upstream: reported as `gone`, nothing to upgrade to.

`tihub fetch --upgrade NAME|--all` fetches the newer file under the same name; the old file is
kept as `NAME.vN.<ext>` only with `--keep-old`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tihub.catalog.db import now, read, write


def _version_of(entry: dict[str, Any]) -> str | None:
    extra = entry.get("extra") or {}
    for key in ("versionId", "sha", "commit"):
        if extra.get(key) is not None:
            return str(extra[key])
    return None


def record_origin(catalog: Any, path: str | os.PathLike[str], sha256: str, entry_id: int, url: str | None = None,
                  upstream_sha256: str | None = None) -> None:
    """Remember that `path` (bytes `sha256`) was fetched from entry `entry_id` (at `url`, whose
    bytes were `upstream_sha256` before any conversion to safetensors)."""
    with read(catalog.engine) as conn:
        row = conn.execute(
            text("SELECT e.remote_id, e.extra, s.name, s.kind FROM entries e JOIN sources s ON s.id = e.source_id WHERE e.id = :i"),
            {"i": int(entry_id)},
        ).first()
    if row is None or row[3] == "local":
        return
    import json

    extra = json.loads(row[1]) if row[1] else {}
    version = _version_of({"extra": extra})
    with write(catalog.engine) as conn:
        conn.execute(text("DELETE FROM fetch_origins WHERE path = :p"), {"p": str(Path(path).resolve())})
        conn.execute(
            text(
                "INSERT INTO fetch_origins (path, sha256, upstream_sha256, entry_id, source, remote_id, url, version, fetched_at) "
                "VALUES (:p, :s, :us, :e, :src, :r, :u, :v, :t)"
            ),
            {"p": str(Path(path).resolve()), "s": sha256.lower(), "us": (upstream_sha256 or sha256).lower(),
             "e": int(entry_id), "src": row[2], "r": row[0], "u": url, "v": version, "t": now()},
        )


def _current(conn: Any, entry_id: int) -> dict[str, Any] | None:
    import json

    row = conn.execute(
        text("SELECT e.id, e.name, e.base, e.extra, e.removed_at, e.source_id, s.kind, s.name FROM entries e "
             "JOIN sources s ON s.id = e.source_id WHERE e.id = :i"),
        {"i": entry_id},
    ).first()
    if row is None:
        return None
    files = conn.execute(
        text("SELECT f.sha256, ef.url, f.size FROM entry_files ef JOIN files f ON f.id = ef.file_id "
             "WHERE ef.entry_id = :i AND ef.manual = 0 ORDER BY f.id"),
        {"i": entry_id},
    ).all()
    return {"id": row[0], "name": row[1], "base": row[2], "extra": json.loads(row[3]) if row[3] else {},
            "removed_at": row[4], "source_id": row[5], "kind": row[6], "source": row[7],
            "files": [{"sha256": f[0], "url": f[1], "size": f[2]} for f in files]}


def _newer_civitai(conn: Any, cur: dict[str, Any]) -> dict[str, Any] | None:
    """The newest other version of the same Civitai model for the same base, if newer."""
    import json

    mid = cur["extra"].get("modelId")
    vid = cur["extra"].get("versionId")
    if mid is None or vid is None:
        return None
    best = None
    for eid, extra, base, removed in conn.execute(
        text("SELECT id, extra, base, removed_at FROM entries WHERE source_id = :s AND id != :i AND remote_id LIKE :p"),
        {"s": cur["source_id"], "i": cur["id"], "p": f"{mid}@%"},
    ):
        ex = json.loads(extra) if extra else {}
        if removed or ex.get("modelId") != mid or base != cur["base"]:
            continue
        try:
            newer = int(ex.get("versionId")) > int(vid)
        except (TypeError, ValueError):
            continue
        if newer and (best is None or int(ex["versionId"]) > int(best[1])):
            best = (eid, ex["versionId"], ex.get("version"))
    if best is None:
        return None
    return {"entry_id": best[0], "version": str(best[1]), "version_name": best[2]}


def outdated(catalog: Any) -> list[dict[str, Any]]:
    """One row per fetched file still on disk: `status` current | newer | gone | unknown, what
    is newer (`latest`: entry id, version, url, sha256) and the reason in one sentence."""
    out = []
    with read(catalog.engine) as conn:
        origins = conn.execute(
            text("SELECT path, sha256, upstream_sha256, entry_id, source, remote_id, url, version FROM fetch_origins ORDER BY path")
        ).all()
        for path, sha, upstream, entry_id, source, remote_id, url, version in origins:
            p = Path(path)
            if not p.is_file():
                continue
            row: dict[str, Any] = {"ok": True, "name": p.stem, "path": str(p), "sha256": sha, "source": source,
                                   "remote_id": remote_id, "version": version, "status": "current",
                                   "latest": None, "reason": None}
            cur = _current(conn, entry_id) if entry_id is not None else None
            if cur is None:
                row.update(status="unknown", reason=f"The catalogue entry {remote_id!r} of {source} is no longer known.")
            elif cur["removed_at"]:
                row.update(status="gone", reason=f"{source} no longer lists {remote_id!r} (removed upstream {cur['removed_at']}).")
            elif cur["kind"] == "civitai":
                newer = _newer_civitai(conn, cur)
                if newer:
                    nxt = _current(conn, newer["entry_id"]) or {"files": []}
                    f0 = nxt["files"][0] if nxt["files"] else {}
                    row.update(status="newer", latest={**newer, "url": f0.get("url"), "sha256": f0.get("sha256")},
                               reason=f"Civitai lists a newer version ({newer['version_name'] or newer['version']}) of this model for the same base.")
            else:
                files = cur["files"]
                shas = {f["sha256"] for f in files if f["sha256"]}
                urls = {f["url"] for f in files if f["url"]}
                f0 = files[0] if files else {}
                latest = {"entry_id": cur["id"], "version": _version_of(cur), "url": f0.get("url"), "sha256": f0.get("sha256")}
                if shas and (upstream or sha) not in shas and sha not in shas:
                    what = {"huggingface": "a newer commit of the repository", "git": "a newer commit"}.get(cur["kind"], "the linked file")
                    row.update(status="newer", latest=latest, reason=f"{source} now has different bytes for {remote_id!r} ({what}).")
                elif url and urls and url not in urls and cur["kind"] == "links":
                    row.update(status="newer", latest=latest, reason=f"The link for {remote_id!r} now points at {f0.get('url')}.")
                elif not shas and version is not None and _version_of(cur) not in (None, version):
                    row.update(status="newer", latest=latest, reason=f"{source} moved {remote_id!r} to {_version_of(cur)}.")
            out.append(row)
    return out


def keep_old_name(path: Path) -> Path:
    """`NAME.vN.<ext>` beside `path`, N the first free number (N >= 1)."""
    n = 1
    while True:
        cand = path.with_name(f"{path.stem}.v{n}{path.suffix}")
        if not cand.exists():
            return cand
        n += 1


def upgrade(catalog: Any, workspace: Any, names: Iterable[str] = (), *, all_: bool = False, keep_old: bool = False,
            convert: str = "safetensors", jobs: int = 4, timeout: float = 1800.0, progress: Any = None,
            allow_private: Callable[[str | None], bool] = lambda source: False) -> list[dict[str, Any]]:
    """Fetch the newer upstream file of each outdated local file named in `names` (or every one
    with `all_`) under the same name; with `keep_old` the replaced file is first renamed
    `NAME.vN.<ext>` (and put back if the fetch fails). One result object per file."""
    from tihub.blobcache import BlobCache
    from tihub.collection import after_fetch
    from tihub.download import Downloader, Request

    rows = outdated(catalog)
    wanted = {n.lower() for n in names}
    picked = [r for r in rows if all_ or r["name"].lower() in wanted or Path(r["path"]).name.lower() in wanted]
    known = {r["name"].lower() for r in picked} | {Path(r["path"]).name.lower() for r in picked}
    out: list[dict[str, Any]] = [
        {"ok": False, "name": n, "error": f"{n} is not a file tihub fetched from a catalogue entry; nothing to upgrade."}
        for n in sorted(wanted - known)
    ]
    todo = [r for r in picked if r["status"] == "newer" and (r["latest"] or {}).get("url")]
    out += [{"ok": True, "name": r["name"], "path": r["path"], "status": r["status"], "upgraded": False,
             "reason": r["reason"] or "Already the newest version."} for r in picked if r not in todo]
    plan: dict[int, tuple[dict[str, Any], Path | None]] = {}
    requests = []
    for r in todo:
        old = Path(r["path"])
        kept = None
        if keep_old:
            kept = keep_old_name(old)
            os.replace(old, kept)
        latest = r["latest"]
        req = Request(latest["url"], name=old.stem, sha256=latest.get("sha256"), entry_id=latest.get("entry_id"),
                      label=r["name"], allow_private=allow_private(r["source"]))
        plan[id(req)] = (r, kept)
        requests.append(req)

    def record(path: Path, emb: Any, sha: str, req: Request) -> None:
        catalog.upsert_local_file(path, emb, sha, req.entry_id)
        after_fetch(catalog, path, sha, req.entry_id, req.url, allow_private=req.allow_private, upstream_sha256=req.sha256)

    results = []
    if requests:
        with Downloader(Path(todo[0]["path"]).parent, convert=convert, force=True, jobs=jobs, deadline=timeout,
                        progress=progress, record=record) as dl:
            dl.blob_cache = BlobCache.for_workspace(workspace)
            results = dl.fetch_all(requests)
    for res in results:
        r, kept = plan[id(res.request)]
        old = Path(r["path"])
        if res.ok:
            if not keep_old and res.path is not None and old.exists() and old.resolve() != res.path.resolve():
                old.unlink()  # converted to another suffix: the old file would shadow the new one
                catalog.forget_local(old)
            out.append({"ok": True, "name": r["name"], "path": str(res.path), "sha256": res.sha256, "status": "upgraded",
                        "upgraded": True, "old_path": str(kept) if kept else None, "reason": r["reason"]})
        else:
            if kept is not None and not old.exists():
                os.replace(kept, old)  # put the old file back
            out.append({"ok": False, "name": r["name"], "path": r["path"], "error": res.error or f"{r['name']} could not be upgraded."})
    return out
