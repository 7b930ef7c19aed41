"""`tihub serve`'s HTTP API over real HTTP: shapes, errors, token, Origin, Host, path escapes,
two fetches of one file, and the command line's own rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from web_helpers import LiveServer, free_port, sha256_of, start_server, synced_workspace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with synced_workspace(tmp_path_factory.mktemp("api") / "home") as (home, _hub):
        yield home


@pytest.fixture(scope="module")
def server(ws: Path) -> Iterator[LiveServer]:
    s = start_server(ws)
    yield s
    s.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def wait_job(c: httpx.Client, job_id: str) -> dict:
    for _ in range(400):
        j = c.get(f"/api/jobs/{job_id}").json()
        if j["state"] in ("done", "failed"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_search_shapes_filters_and_paging(client: httpx.Client) -> None:
    rows = client.get("/api/search").json()
    assert [r["name"] for r in rows] == ["big-one", "cat-toy", "watercolor-style"]  # by name, NSFW hidden
    r = rows[1]
    assert r["ok"] is True and r["triggers"] == ["cat-toy"] and r["trained_on"] is None and r["path"] is None
    assert r["base"] == "sd1" and r["kind"] == "object" and r["source"] == "hf" and r["preview_id"]
    assert [x["name"] for x in client.get("/api/search", params={"q": "watercolor"}).json()] == ["watercolor-style"]
    assert [x["name"] for x in client.get("/api/search", params={"kind": "style"}).json()] == ["watercolor-style"]
    assert [x["name"] for x in client.get("/api/search", params={"base": "sd1", "limit": 1, "offset": 1}).json()] == ["watercolor-style"]
    nsfw = client.get("/api/search", params={"nsfw": "true"}).json()
    spicy = next(x for x in nsfw if x["name"] == "spicy-thing")
    assert spicy["nsfw"] and spicy["preview_nsfw"]
    fits = client.get("/api/search", params={"model_hash": "sd1"}).json()
    assert {x["name"]: x["fit"] for x in fits}["cat-toy"] == "same-family"
    by_source = client.get("/api/search", params={"sort": "source", "q": "o"}).json()
    assert all(x["source"] == "hf" for x in by_source)


def test_entry_local_compat_and_thumbnail(client: httpx.Client, ws: Path) -> None:
    e = client.get("/api/entries/cat-toy").json()
    assert e["ok"] and e["name"] == "cat-toy" and "<cat-toy>" in e["triggers"]
    assert e["pictures"] and e["pictures"][0]["kind"] == "concept_image"
    assert e["files"][0]["widths"] == {"clip_l": 768} and "trained_on" in e["files"][0]
    assert client.get(f"/api/entries/{e['id']}").json()["name"] == "cat-toy"
    thumb = client.get(f"/thumbs/{e['pictures'][0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp" and thumb.content[8:12] == b"WEBP"
    assert list((ws / ".tihub-cache" / "thumbs").glob("*.webp"))  # thumbnailed once into the workspace cache
    assert client.get("/api/local").json() == [] or all("ok" in r for r in client.get("/api/local").json())
    c = client.get("/api/compat", params={"model_hash": "sd1"})
    assert c.status_code == 200 and isinstance(c.json(), list)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/entries/no-such-thing", 404),
        ("GET", "/api/jobs/999", 404),
        ("GET", "/api/search?limit=lots", 422),
        ("GET", "/api/search?base=sd9", 422),
        ("GET", "/api/compat", 422),
        ("GET", "/api/compat?model_hash=zz", 422),
        ("GET", "/api/nothing-here", 404),
        ("POST", "/api/fetch", 422),
    ("POST", "/api/remove", 422),
        ("GET", "/thumbs/424242", 404),
    ],
)
def test_errors_are_one_json_sentence(client: httpx.Client, method: str, path: str, status: int) -> None:
    r = client.request(method, path)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False and body["error"].endswith((".", ")")) and "\n" not in body["error"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/thumbs/..%2f..%2fcatalog.db", "/api/entries/..%2F..%2Fcatalog.db", "/entries/%2e%2e%2fcatalog.db",
    "/static/app.js/../../hub.py", "/jobs/..%2f..%2fcatalog.db", "/jobs/1/previews/..%2f..%2fcatalog.db",
    "/jobs/1/previews/-1", "/api/jobs/..%2F..%2Fcatalog.db",
])
def test_no_path_escapes_the_served_folders(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert b"root:" not in r.content and b"SQLite format" not in r.content and b"import" not in r.content


def test_origin_and_host_rules(client: httpx.Client, server: LiveServer) -> None:
    body = {"target": "watercolor-style"}
    r = client.post("/api/fetch", json=body, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["ok"] is False
    r = client.post("/api/fetch", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = client.get("/api/search", headers={"Host": "attacker.example:7861"})  # DNS rebinding
    assert r.status_code == 403
    r = client.post("/api/fetch", json=body, headers={"Origin": server.url})
    assert r.status_code == 202
    assert wait_job(client, r.json()["id"])["state"] == "done"


def test_token_rules(ws: Path) -> None:
    s = start_server(ws, token="s3cret")
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.get("/api/search").status_code == 401
            assert c.get("/api/search").json()["ok"] is False
            assert c.get("/").status_code == 401
            assert c.get("/api/search", headers={"Authorization": "Bearer wrong"}).status_code == 401
            for path, body in (("/api/export", {"name": "cat-toy", "app": "a1111", "to": "."}),
                               ("/api/grid", {"name": "cat-toy", "model": "."}), ("/api/verify", {"name": "cat-toy", "model": "."})):
                r = c.post(path, json=body)
                assert r.status_code == 401 and r.json()["ok"] is False, path
            assert c.get("/jobs").status_code == 401 and c.get("/api/jobs").status_code == 401
            assert c.get("/api/search", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.get("/api/search", headers={"X-Tihub-Token": "s3cret"}).status_code == 200
            first = c.get("/?token=s3cret&q=cat")  # the first visit sets the cookie and drops the token from the URL ...
            assert first.status_code == 303 and first.headers["location"] == "/?q=cat"
            assert "tihub_token" in first.headers.get("set-cookie", "") and "httponly" in first.headers["set-cookie"].lower()
            assert c.get(first.headers["location"]).status_code == 200
            assert c.get("/api/local").status_code == 200  # ... which later requests carry
    finally:
        s.stop()


def test_two_fetches_of_one_file_end_with_one_correct_file(client: httpx.Client, ws: Path) -> None:
    # two tabs at once: the same job, or the second waits and finds the file
    results: list[httpx.Response] = []

    def go() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c2:
            results.append(c2.post("/api/fetch", json={"target": "big-one"}))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202, 202]
    jobs = [wait_job(client, r.json()["id"]) for r in results]
    assert all(j["state"] == "done" for j in jobs)
    assert jobs[-1]["done"] == jobs[-1]["total"]
    files = sorted(p.name for p in (ws / "embeddings").iterdir() if p.name.startswith("big-one") and not p.name.endswith(".json")
                   and ".preview." not in p.name)
    assert files == ["big-one.safetensors"]
    path = ws / "embeddings" / "big-one.safetensors"
    assert {j["result"]["sha256"] for j in jobs} == {sha256_of(path)}
    # a third request, later, finds it there
    again = wait_job(client, client.post("/api/fetch", json={"target": "big-one"}).json()["id"])
    assert again["result"]["status"] == "exists"


def test_manual_download_and_unknown_target_fail_in_one_sentence(client: httpx.Client) -> None:
    r = client.post("/api/fetch", json={"target": "no-such-entry"})
    assert r.status_code == 404 and "no-such-entry" in r.json()["error"]


def test_openapi_describes_the_api(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for p in ("/api/search", "/api/entries/{entry}", "/api/local", "/api/fetch", "/api/jobs/{job_id}", "/api/compat"):
        assert p in spec["paths"], p
    assert "ErrorOut" in json.dumps(spec["paths"]["/api/search"]["get"]["responses"]["422"])
    for p in ("/api/export", "/api/grid", "/api/verify"):
        assert "JobOut" in json.dumps(spec["paths"][p]["post"]["responses"]["202"]), p
    # the response shapes are the library's dataclasses (one definition), less `trigger` for search
    import dataclasses

    from tihub.hub import SearchHit
    from tihub.web.jobs import Job

    schemas = spec["components"]["schemas"]
    assert set(schemas["HitOut"]["properties"]) == {f.name for f in dataclasses.fields(SearchHit)} - {"trigger"}
    assert set(schemas["JobOut"]["properties"]) == {f.name for f in dataclasses.fields(Job)}


def test_serve_command_refuses_a_public_host_without_token(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "tihub", "--home", str(tmp_path), "serve", "--host", "0.0.0.0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "--token" in r.stderr


def test_serve_command_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tihub", "--home", str(tmp_path), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(200):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/search", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("tihub serve did not answer")
        assert r.status_code == 200 and r.json() == []
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in err


def test_search_commands_do_not_import_the_web_stack(tmp_path: Path) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from tihub.cli import cli; "
        f"r = CliRunner().invoke(cli, ['--home', {str(tmp_path)!r}, 'search', 'x']); "
        "bad = [m for m in ('fastapi', 'starlette', 'uvicorn', 'jinja2', 'torch') if m in sys.modules]; "
        "print(bad); assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_picture_gone_from_disk_is_a_404_sentence(client: httpx.Client, server: LiveServer, tmp_path: Path) -> None:
    from sqlalchemy import text

    from tihub.catalog.db import write

    with write(server.hub.catalog.engine) as conn:
        conn.execute(text("INSERT INTO previews (entry_id, path, kind, created_at) VALUES (1, :p, 'local', '2026-01-01')"),
                     {"p": str(tmp_path / "gone.png")})
        pid = conn.execute(text("SELECT MAX(id) FROM previews")).scalar()
    r = client.get(f"/thumbs/{pid}")
    assert r.status_code == 404 and "gone from disk" in r.json()["error"]


def test_remove_stays_inside_embeddings(client: httpx.Client, ws: Path) -> None:
    outside = ws / "catalog-copy.safetensors"
    outside.write_bytes(b"x")
    for name in ("../catalog-copy.safetensors", "/etc/passwd", str(outside), "..", "no-such-file"):
        r = client.post("/api/remove", json={"name": name})
        assert r.status_code == 404 and r.json()["ok"] is False, (name, r.text)
    assert outside.exists() and (ws / "catalog.db").exists()
    r = client.post("/api/remove", json={"name": "x"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_sync_is_a_job_with_one_report_per_source(client: httpx.Client) -> None:
    r = client.post("/api/sync", json={})
    assert r.status_code == 202 and r.json()["kind"] == "sync"
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    (report,) = job["result"]["reports"]
    assert report["ok"] and report["name"] == "hf" and report["summary"].startswith("hf:")
    bad = client.post("/api/sync", json={"sources": ["nope"]})
    assert bad.status_code == 404 and "'nope'" in bad.json()["error"] and "hf" in bad.json()["error"]


def test_recorded_loss_plots_and_grids_only_from_inside_the_workspace(client: httpx.Client, server: LiveServer,
                                                                       ws: Path, tmp_path: Path) -> None:
    from web_helpers import picture

    inside = ws / "train" / "run1" / "loss.png"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(picture((10, 10, 10)))
    outside = tmp_path / "loss.png"
    outside.write_bytes(picture((10, 10, 10)))
    cat = server.hub.catalog
    eid = server.hub.entry("cat-toy")["id"]
    good = cat.add_training_run(entry_id=eid, settings={"steps": 10}, pictures=3, loss_png=str(inside))
    bad = cat.add_training_run(entry_id=eid, settings={"steps": 10}, pictures=3, loss_png=str(outside))
    sneaky = cat.add_verification(entry_id=eid, result="ok", grid_path=str(ws / ".." / outside.name))
    r = client.get(f"/records/loss/{good}")
    assert r.status_code == 200 and r.content[8:12] == b"WEBP"
    for path in (f"/records/loss/{bad}", f"/records/grid/{sneaky}", "/records/loss/99999", f"/records/passwd/{good}"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["ok"] is False, path
    assert "outside the workspace" in client.get(f"/records/loss/{bad}").json()["error"]
    page = client.get(f"/entries/{eid}").text
    assert f'src="/records/loss/{good}"' in page


def test_jobs_survive_a_restart_and_a_dead_servers_job_shows_failed(ws: Path) -> None:
    first = start_server(ws)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as c:
            job = wait_job(c, c.post("/api/fetch", json={"target": "cat-toy"}).json()["id"])
            assert job["state"] == "done", job
    finally:
        first.stop()
    folder = ws / ".tihub-cache" / "jobs"
    saved = json.loads((folder / f"{job['id']}.json").read_text())
    assert saved["state"] == "done" and saved["result"]["path"] == job["result"]["path"]
    # a job its server left running (the server was killed under it)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    dead = dict(saved, id="9000", kind="train", target="fox", state="running", result=None, finished=None,
                points=[[1, 0.5], [2, 0.4]], pid=int(gone))
    (folder / "9000.json").write_text(json.dumps(dead))
    # a job another live server on this workspace runs stays running
    (folder / "8999.json").write_text(json.dumps(dict(dead, id="8999", pid=os.getppid())))
    (folder / "9001.json").write_text("{not json")  # a damaged file is skipped, not fatal
    second = start_server(ws)
    try:
        with httpx.Client(base_url=second.url, timeout=30) as c:
            listed = {j["id"]: j for j in c.get("/api/jobs").json()}
            again = listed[job["id"]]
            assert again["state"] == "done" and again["result"] == job["result"] and again["started"] == job["started"]
            stopped = c.get("/api/jobs/9000").json()
            assert stopped["state"] == "failed" and stopped["ok"] is False and stopped["points"] == [[1, 0.5], [2, 0.4]]
            assert stopped["error"] == "The server stopped while this job ran; start it again."
            assert "9001" not in listed
            assert [j["id"] for j in c.get("/api/jobs", params={"active": "true"}).json()] == ["8999"]
            new = c.post("/api/sync", json={}).json()
            assert int(new["id"]) > 9001  # new ids never reuse an old job's
            wait_job(c, new["id"])
            page = c.get("/jobs").text
            assert f'href="/jobs/{job["id"]}"' in page and "The server stopped while this job ran" in page
            assert job["result"]["path"] in c.get(f"/jobs/{job['id']}").text
            assert c.get("/jobs/424242").status_code == 404
    finally:
        second.stop()
    assert json.loads((folder / "9000.json").read_text())["state"] == "failed"  # written back


def test_facets_are_served_at_once_and_refreshed_behind() -> None:
    from tihub.web.app import FacetCache

    gate = threading.Event()

    class SlowHub:
        calls = 0

        def facets(self, max_age: float = 30.0) -> int:
            SlowHub.calls += 1
            if SlowHub.calls > 1:
                assert gate.wait(10)
            return SlowHub.calls

    cache = FacetCache(SlowHub(), max_age=0.0)  # type: ignore[arg-type]
    assert cache.get() == 1  # the first list is waited for
    time.sleep(0.01)
    assert cache.get() == 1  # old: served as it is while a new one is made ...
    assert cache.get() == 1 and SlowHub.calls == 2  # ... by one thread only
    gate.set()
    for _ in range(200):  # the new list replaces the old one when it is made
        if cache.get() > 1:
            break
        time.sleep(0.01)
    assert cache.get() > 1


def test_a_missing_entry_page_offers_to_search_for_it(client: httpx.Client) -> None:
    r = client.get("/entries/no-such-thing")
    assert r.status_code == 404 and 'href="/?q=no-such-thing"' in r.text and "Traceback" not in r.text
    empty = client.get("/", params={"q": "zzzz-nothing-matches"})
    assert "No matching entries" in empty.text and 'class="pages"' not in empty.text  # no lone "page 1"


@pytest.mark.parametrize("method, path, body, words", [
    ("GET", "/api/search?base=sd9", None, "use sd1, sd2, sdxl or unknown"),
    ("POST", "/api/grid", {"name": "cat-toy", "model": "models", "size": "abc"}, "WIDTHxHEIGHT"),
    ("POST", "/api/train", {"name": "my cat", "images": "pictures", "model": "models"}, "no spaces"),
    ("PUT", "/api/pictures/fox/notes.txt", b"hello", ".png, .jpg or .webp"),
])
def test_a_value_of_the_wrong_form_is_told_in_words_not_as_a_pattern(client: httpx.Client, method: str, path: str,
                                                                     body: object, words: str) -> None:
    kw = {"json": body} if isinstance(body, dict) else {"content": body} if body is not None else {}
    r = client.request(method, path, **kw)
    error = r.json()["error"]
    assert r.status_code == 422 and words in error and error.endswith(".")
    assert not any(mark in error for mark in ("^", "\\d", "[A-Z", "String should match")), error


def test_a_job_that_breaks_says_one_line_and_logs_the_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import time

    from tihub.errors import NotFound
    from tihub.web.jobs import Jobs

    jobs = Jobs(tmp_path / "jobs")

    def broken(job: object) -> dict:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\n  at some C++ frame\n")

    def refused(job: object) -> dict:
        raise NotFound("No embedding is named 'x'; fetch it first.")

    with caplog.at_level("ERROR", logger="tihub.web"):
        a, b = jobs.start("grid", "cat", broken), jobs.start("verify", "x", refused)
        for _ in range(100):
            if a.state == b.state == "failed":
                break
            time.sleep(0.05)
    assert a.error == ("The grid of cat failed (RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)); "
                       "see the server's log.")
    assert b.error == "No embedding is named 'x'; fetch it first."
    assert "Traceback" in caplog.text and "C++ frame" in caplog.text  # the whole story is in the server's log
