"""Downloads against a real loopback HTTP server: verification, resume, lying servers, hosts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from fileserver import FileServer, embedding_bytes
from tihub.download import (
    Downloader,
    ManualDownload,
    Request,
    describe_text_answer,
    lfs_media_url,
    looks_textual,
    resolve_url,
)
from tihub.errors import UnsafeURL
from tihub.formats import read_embedding

SD1 = embedding_bytes("safetensors", name="thing")
PT = embedding_bytes("a1111", name="thing", sd_checkpoint="925997e9")
SHA = hashlib.sha256(SD1).hexdigest()


@pytest.fixture
def srv():
    s = FileServer().start()
    yield s
    s.stop()


def dl(folder: Path, **kw) -> Downloader:
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_wait", 0.05)
    kw.setdefault("env", {})
    return Downloader(folder, **kw)


def visible(folder: Path) -> list[str]:
    """Files a user or an app would see (anything not hidden)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


# ------------------------------------------------------------------------------ happy paths


def test_fetch_safetensors_verified_and_placed(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1)
    with dl(tmp_path / "emb") as d:
        r = d.fetch(Request(url, trusted=True, sha256=SHA, size=len(SD1)))
    assert r.status == "fetched", r.error
    assert r.path == (tmp_path / "emb" / "thing.safetensors").resolve()
    assert r.path.read_bytes() == SD1
    assert visible(tmp_path / "emb") == ["thing.safetensors"] and hidden(tmp_path / "emb") == []


def test_pickle_converted_on_arrival_and_original_kept_on_request(srv, tmp_path):
    url = srv.add("/f/thing.pt", PT)
    with dl(tmp_path / "a") as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "fetched" and r.converted and r.path.suffix == ".safetensors"
    emb = read_embedding(r.path)
    assert emb.container == "safetensors" and emb.vector_count == 2
    assert r.sha256 == hashlib.sha256(r.path.read_bytes()).hexdigest()
    with dl(tmp_path / "b", convert="original") as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "fetched" and not r.converted and r.path.name == "thing.pt" and r.path.read_bytes() == PT


def test_learned_embeds_named_after_token(srv, tmp_path):
    data = embedding_bytes("diffusers-bin", name="cat-toy")
    url = srv.add("/sd-concepts-library/cat-toy/resolve/main/learned_embeds.bin", data)
    with dl(tmp_path, convert="original") as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "fetched", r.error
    assert r.path.name == "cat-toy.bin"


def test_same_file_is_noop_different_file_refused_force_replaces(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1)
    other = embedding_bytes("safetensors", name="thing", seed=5)
    url2 = srv.add("/g/thing.safetensors", other)
    with dl(tmp_path) as d:
        assert d.fetch(Request(url, trusted=True)).status == "fetched"
        again = d.fetch(Request(url, trusted=True))
        assert again.status == "exists" and again.error is None
        # known sha256 of a file already there: not even downloaded again
        n = len(srv.requests)
        assert d.fetch(Request(url, trusted=True, sha256=SHA)).status == "exists"
        assert len(srv.requests) == n
        clash = d.fetch(Request(url2, trusted=True))
    assert clash.status == "failed" and "--name" in clash.error and "different file" in clash.error
    assert (tmp_path / "thing.safetensors").read_bytes() == SD1
    with dl(tmp_path) as d:
        named = d.fetch(Request(url2, trusted=True, name="thing2"))
    assert named.status == "fetched" and named.path.name == "thing2.safetensors"
    with dl(tmp_path, force=True) as d:
        forced = d.fetch(Request(url2, trusted=True))
    assert forced.status == "fetched" and (tmp_path / "thing.safetensors").read_bytes() == other
    assert hidden(tmp_path) == []


def test_same_trigger_with_other_suffix_is_a_clash(srv, tmp_path):
    (tmp_path / "thing.pt").write_bytes(embedding_bytes("a1111", name="thing", seed=9))
    url = srv.add("/f/thing.safetensors", SD1)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "thing.pt" in r.error


# ------------------------------------------------------------------------------ checks


def test_hash_mismatch_leaves_nothing(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True, sha256="0" * 64))
    assert r.status == "failed" and "sha256" in r.error and "expected" in r.error
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_size_mismatch_leaves_nothing(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True, size=len(SD1) + 1))
    assert r.status == "failed" and "bytes" in r.error
    assert visible(tmp_path) == []


@pytest.mark.parametrize(
    ("body", "ctype", "needle"),
    [
        (b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>login</body></html>", "text/html", "login page"),
        (b'{"error": "Model not found"}', "application/json", "JSON error"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 6256\n", "text/plain", "Git LFS pointer"),
        (b"\x00\x01garbage" * 100, "application/octet-stream", "not an embedding"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", "JPEG"),
    ],
)
def test_refuses_what_is_not_an_embedding(srv, tmp_path, body, ctype, needle):
    url = srv.add("/f/thing.pt", body, content_type=ctype)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed"
    assert needle in r.error, r.error
    assert "\n" not in r.error
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_civitai_login_page_names_the_token(srv, tmp_path):
    url = srv.add("/api/download/models/1", b"<html><head><title>Civitai</title></head><body>Please log in</body></html>", content_type="text/html")
    with dl(tmp_path, host_kinds={f"127.0.0.1:{srv.port}": "civitai"}) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "CIVITAI_TOKEN" in r.error and r.error.startswith("Civitai asked for a login")
    srv.add("/api/download/models/2", b'{"error":"Unauthorized"}', status=401, content_type="application/json")
    with dl(tmp_path, host_kinds={f"127.0.0.1:{srv.port}": "civitai"}) as d:
        r = d.fetch(Request(srv.url("/api/download/models/2"), trusted=True))
    assert r.status == "failed" and "set CIVITAI_TOKEN" in r.error


def test_civitai_token_goes_to_civitai_only(tmp_path):
    with FileServer() as civ, FileServer() as cdn:
        cdn.add("/signed/thing.safetensors", SD1)
        civ.add("/api/download/models/7", redirect=cdn.url("/signed/thing.safetensors"))
        kinds = {f"127.0.0.1:{civ.port}": "civitai"}
        with dl(tmp_path, host_kinds=kinds, env={"CIVITAI_TOKEN": "s3cret"}) as d:
            r = d.fetch(Request(civ.url("/api/download/models/7"), trusted=True, allow_private=True, name="thing"))
        assert r.status == "fetched", r.error
        assert civ.requests_for("/api/download/models/7")[0].get("Authorization") == "Bearer s3cret"
        assert all("Authorization" not in h and "authorization" not in h for h in cdn.requests_for("/signed/thing.safetensors"))


def test_lfs_pointer_on_raw_url_follows_media_and_checks_oid(srv, tmp_path):
    ptr = f"version https://git-lfs.github.com/spec/v1\noid sha256:{SHA}\nsize {len(SD1)}\n".encode()
    srv.add("/grp/repo/-/raw/main/emb/thing.safetensors", ptr, content_type="text/plain")
    srv.add("/grp/repo/-/media/main/emb/thing.safetensors", SD1)
    with dl(tmp_path) as d:
        r = d.fetch(Request(srv.url("/grp/repo/-/raw/main/emb/thing.safetensors"), trusted=True))
    assert r.status == "fetched", r.error and r.path.read_bytes() == SD1
    # a media URL serving other bytes than the pointer's oid is refused
    srv.add("/grp/repo/-/raw/main/emb/other.safetensors", ptr, content_type="text/plain")
    srv.add("/grp/repo/-/media/main/emb/other.safetensors", embedding_bytes(seed=3))
    with dl(tmp_path / "x") as d:
        r = d.fetch(Request(srv.url("/grp/repo/-/raw/main/emb/other.safetensors"), trusted=True))
    assert r.status == "failed" and "sha256" in r.error
    assert visible(tmp_path / "x") == []


# ------------------------------------------------------------------------------ lying servers


def test_wrong_content_length_is_an_error_and_nothing_visible(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, content_length=len(SD1) + 500)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and ("ended the body" in r.error or "broke off" in r.error), r.error
    assert visible(tmp_path) == []


def test_truncated_body_then_resume_with_range(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, truncate_at=3000)
    with dl(tmp_path, retries=1) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "resume" in r.error
    assert visible(tmp_path) == []
    parts = [p for p in hidden(tmp_path) if p.endswith(".part")]
    assert len(parts) == 1 and (tmp_path / parts[0]).stat().st_size == 3000
    srv.files["/f/thing.safetensors"].truncate_at = None
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True, sha256=SHA))
    assert r.status == "fetched", r.error
    assert r.resumed_from == 3000
    last = srv.requests_for("/f/thing.safetensors")[-1]
    assert last.get("Range") == "bytes=3000-" and last.get("If-Range")
    assert r.path.read_bytes() == SD1 and hidden(tmp_path) == []


def test_part_already_complete_is_finished_from_a_416(srv, tmp_path):
    # killed between the last byte and the rename: the server answers the resume range with 416
    url = srv.add("/f/thing.safetensors", SD1, truncate_at=3000)
    with dl(tmp_path, retries=0) as d:
        assert d.fetch(Request(url, trusted=True)).status == "failed"
    (part,) = [p for p in hidden(tmp_path) if p.endswith(".part")]
    (tmp_path / part).write_bytes(SD1)
    srv.files["/f/thing.safetensors"].truncate_at = None
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True, sha256=SHA))
    assert r.status == "fetched", r.error
    assert r.resumed_from == len(SD1) and r.sha256 == SHA and r.path.read_bytes() == SD1
    assert srv.requests_for("/f/thing.safetensors")[-1].get("Range") == f"bytes={len(SD1)}-"


def test_server_ignoring_range_restarts_cleanly(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, truncate_at=2000)
    with dl(tmp_path, retries=0) as d:
        assert d.fetch(Request(url, trusted=True)).status == "failed"
    spec = srv.files["/f/thing.safetensors"]
    spec.truncate_at, spec.ignore_range = None, True
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True, sha256=SHA))
    assert r.status == "fetched" and r.resumed_from == 0 and r.path.read_bytes() == SD1
    assert srv.requests_for("/f/thing.safetensors")[-1].get("Range") == "bytes=2000-"


def test_changed_content_is_never_spliced(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, truncate_at=2000)
    with dl(tmp_path, retries=0) as d:
        assert d.fetch(Request(url, trusted=True)).status == "failed"
    new = embedding_bytes(seed=11)
    srv.add("/f/thing.safetensors", new)  # new ETag: If-Range fails, the server sends it all
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "fetched" and r.resumed_from == 0 and r.path.read_bytes() == new


def test_redirect_loop(srv, tmp_path):
    srv.add("/a", redirect="/b")
    srv.add("/b", redirect="/a")
    with dl(tmp_path) as d:
        r = d.fetch(Request(srv.url("/a"), trusted=True, name="x"))
    assert r.status == "failed" and "loop" in r.error
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_redirect_to_private_address_refused(srv, tmp_path):
    srv.add("/go", redirect="http://10.0.0.7/secret.pt")
    with dl(tmp_path) as d:
        r = d.fetch(Request(srv.url("/go"), trusted=True, name="x"))
    assert r.status == "failed" and "private" in r.error
    srv.add("/go2", redirect=srv.url("/f/thing.safetensors"))
    with dl(tmp_path) as d:
        r = d.fetch(Request(srv.url("/go2"), trusted=True, name="x"))
    assert r.status == "failed" and "127.0.0.1" in r.error
    assert visible(tmp_path) == []


def test_catalogue_url_to_loopback_needs_allow_private(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=False))
        assert r.status == "failed" and "allow_private" in r.error
        assert srv.requests == []
        ok = d.fetch(Request(url, trusted=False, allow_private=True))
    assert ok.status == "fetched", ok.error


def test_slow_drip_past_deadline(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, drip=(64, 0.02))
    with dl(tmp_path, deadline=0.3) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "deadline" in r.error
    assert visible(tmp_path) == []


def test_429_storm_gives_up_with_clear_error(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, fail_times=-1, retry_after="0")
    with dl(tmp_path, retries=3) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "429" in r.error and "4 tries" in r.error
    assert len(srv.requests_for("/f/thing.safetensors")) == 4
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_429_then_success_honours_retry_after(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, fail_times=2, retry_after="0.01")
    with dl(tmp_path, retries=3) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "fetched" and len(srv.requests_for("/f/thing.safetensors")) == 3


def test_huge_retry_after_is_clamped_to_deadline(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, fail_times=-1, retry_after="1000000000")
    with dl(tmp_path, max_wait=600, deadline=5) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "deadline" in r.error


@pytest.mark.parametrize(("status", "needle"), [(404, "404"), (410, "410"), (403, "tihub import"), (500, "500")])
def test_http_errors(srv, tmp_path, status, needle):
    url = srv.add("/f/x.pt", b"nope", status=status, content_type="text/plain")
    with dl(tmp_path, retries=1) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and needle in r.error
    assert visible(tmp_path) == []


def test_connection_refused_is_retried_then_reported(tmp_path):
    s = FileServer().start()
    url = s.url("/x.pt")
    s.stop()
    with dl(tmp_path, retries=1) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "2 tries" in r.error


def test_symlink_planted_at_target_is_not_written_through(srv, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "thing.safetensors").symlink_to(outside)
    url = srv.add("/f/thing.safetensors", SD1)
    with dl(folder) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed"
    assert outside.read_text() == "precious"


# ------------------------------------------------------------------------------ concurrency


def test_many_files_in_parallel(srv, tmp_path):
    reqs = []
    for i in range(12):
        data = embedding_bytes(name=f"e{i}", seed=i)
        reqs.append(Request(srv.add(f"/many/e{i}.safetensors", data), trusted=True, sha256=hashlib.sha256(data).hexdigest()))
    with dl(tmp_path, jobs=6) as d:
        results = d.fetch_all(reqs)
    assert all(r.status == "fetched" for r in results), [r.error for r in results]
    assert visible(tmp_path) == sorted(f"e{i}.safetensors" for i in range(12))


def test_two_threads_same_file_one_result(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, drip=(1024, 0.01))
    with dl(tmp_path, jobs=2) as d:
        results = d.fetch_all([Request(url, trusted=True), Request(url, trusted=True)])
    assert sorted(r.status for r in results) == ["exists", "fetched"]
    assert visible(tmp_path) == ["thing.safetensors"] and hidden(tmp_path) == []


# ------------------------------------------------------------------------------ host knowledge


def test_host_rewrites_and_manual_links():
    assert resolve_url("https://pixeldrain.com/u/abc123", {}).url == "https://pixeldrain.com/api/file/abc123"
    assert resolve_url("https://huggingface.co/sd-concepts-library/cat-toy/blob/main/learned_embeds.bin", {}).url == (
        "https://huggingface.co/sd-concepts-library/cat-toy/resolve/main/learned_embeds.bin"
    )
    assert resolve_url("https://github.com/o/r/blob/main/e/x.pt", {}).url == "https://raw.githubusercontent.com/o/r/main/e/x.pt"
    assert resolve_url("https://gitgud.io/v/e/-/blob/master/x.pt", {}).url == "https://gitgud.io/v/e/-/raw/master/x.pt"
    assert resolve_url("https://civitai.com/api/download/models/1", {"CIVITAI_TOKEN": "t"}).auth_headers == {"Authorization": "Bearer t"}
    assert resolve_url("https://civitai.com/api/download/models/1", {}).auth_headers == {}
    assert resolve_url("https://huggingface.co/x/y/resolve/main/a.bin", {"HF_TOKEN": "h"}).auth_headers == {"Authorization": "Bearer h"}
    assert resolve_url("https://files.catbox.moe/abc.pt", {}).host == "catbox"
    assert lfs_media_url("https://gitlab.com/a/b/-/raw/main/x.pt") == "https://gitlab.com/a/b/-/media/main/x.pt"
    assert lfs_media_url("https://raw.githubusercontent.com/o/r/main/x.pt") == "https://media.githubusercontent.com/media/o/r/main/x.pt"
    with pytest.raises(ManualDownload, match="mega.nz.*tihub import"):
        resolve_url("https://mega.nz/file/abc#key", {})
    with pytest.raises(ManualDownload, match="drive/folders/xyz is a Google Drive folder; open it"):
        resolve_url("https://drive.google.com/drive/folders/xyz", {})


def test_text_sniffing():
    assert looks_textual(b"  <!doctype html>") and looks_textual(b'{"a":1}') and not looks_textual(SD1)
    assert not looks_textual(PT)
    msg = describe_text_answer(b"<html><title>\x1b[31mEvil\x1b[0m</title></html>", "http://h/x", "generic")
    assert "\x1b" not in msg
    assert "Google Drive" in describe_text_answer(b"<html>virus scan warning</html>", "https://drive.google.com/x", "gdrive")


def test_unsafe_scheme_refused(tmp_path):
    with dl(tmp_path) as d:
        r = d.fetch(Request("file:///etc/passwd", trusted=True, name="x"))
    assert r.status == "failed" and "scheme" in r.error
    assert isinstance(UnsafeURL("x"), Exception)


def test_sidecar_records_validator(srv, tmp_path):
    url = srv.add("/f/thing.safetensors", SD1, truncate_at=1000)
    with dl(tmp_path, retries=0) as d:
        d.fetch(Request(url, trusted=True))
    side = [p for p in hidden(tmp_path) if p.endswith(".part.json")]
    assert len(side) == 1
    info = json.loads((tmp_path / side[0]).read_text())
    assert info["etag"] and info["size"] == len(SD1) and info["url"] == url
    assert os.path.getsize(tmp_path / side[0][: -len(".json")]) == 1000


def test_progress_lines_off_a_terminal(srv, tmp_path):
    import io

    from tihub.download import Progress

    out = io.StringIO()
    prog = Progress(enabled=True, stream_=out)
    urls = [srv.add(f"/p/e{i}.safetensors", embedding_bytes(name=f"e{i}", seed=i)) for i in range(3)]
    with dl(tmp_path, progress=prog, jobs=2) as d:
        results = d.fetch_all([Request(u, trusted=True, label=f"e{i}") for i, u in enumerate(urls)])
    assert all(r.ok for r in results)
    text = out.getvalue()
    # off a terminal: the one progress display prints plain lines per tenth, never a redrawn bar
    assert "fetch " in text and "100% (" in text and "KB" in text and "\r" not in text and "\x1b" not in text
    quiet = Progress(enabled=False, stream_=io.StringIO())
    with dl(tmp_path / "q", progress=quiet) as d:
        d.fetch_all([Request(urls[0], trusted=True)])
    assert quiet.stream.getvalue() == ""


def test_not_enough_disk_space_is_refused_before_writing(srv, tmp_path, monkeypatch):
    import tihub.download as D

    url = srv.add("/f/thing.safetensors", SD1)
    monkeypatch.setattr(D, "_free_bytes", lambda folder: 100)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "free" in r.error and "make room" in r.error
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_write_error_mid_body_removes_the_temp_file(srv, tmp_path, monkeypatch):
    import errno

    import tihub.download as D

    url = srv.add("/f/thing.safetensors", SD1)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(D, "_write_all", full)
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "No space left" in r.error
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_gzip_answer_not_asked_for_is_refused_before_decoding(srv, tmp_path):
    import gzip

    bomb = gzip.compress(b"\0" * (80 * 1024 * 1024), 9)
    assert len(bomb) < 200_000
    url = srv.add("/f/bomb.safetensors", bomb, headers={"Content-Encoding": "gzip"})
    with dl(tmp_path) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "Content-Encoding 'gzip'" in r.error
    assert visible(tmp_path) == [] and hidden(tmp_path) == []


def test_symlink_planted_at_the_temp_name_is_not_followed(srv, tmp_path):
    import hashlib as _h

    url = srv.add("/f/thing.safetensors", SD1)
    folder = tmp_path / "emb"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    key = _h.sha256(url.encode()).hexdigest()[:12]
    (folder / f".thing.{key}.part").symlink_to(victim)
    with dl(folder) as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "failed" and "temp file" in r.error
    assert victim.read_text() == "precious"


def test_content_disposition_names_the_file_safely(srv, tmp_path):
    url = srv.add("/api/download/models/5", SD1, headers={"Content-Disposition": 'attachment; filename="../../evil name.safetensors"'})
    with dl(tmp_path / "emb") as d:
        r = d.fetch(Request(url, trusted=True))
    assert r.status == "fetched", r.error
    assert r.path == (tmp_path / "emb" / "evil name.safetensors").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]
