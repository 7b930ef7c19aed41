"""Training from the web app on the tiny random-weight SD1 model: the form, the live loss plot,
the file on disk, and the rule that pictures and models come only from allowed folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from web_helpers import LiveServer, free_port

pytest.importorskip("torch", reason="training needs torch")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pictures(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (40 * i, 120, 200 - 40 * i)).save(folder / f"fox{i}.png")
    return folder


@pytest.fixture
def served(tmp_path: Path, tiny_sd1_dir: Path) -> Iterator[tuple[LiveServer, Path]]:
    import threading
    import time

    import uvicorn

    from tihub.hub import Hub
    from tihub.web.app import create_app

    home = tmp_path / "home"
    (home / "embeddings").mkdir(parents=True)
    pictures(home / "pictures" / "fox")
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1_dir, models / "tiny")
    (tmp_path / "ComfyUI").mkdir()
    hub = Hub(home)
    app = create_app(hub, read_dirs=[models], app_dirs=[tmp_path / "ComfyUI"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    live = LiveServer(f"http://127.0.0.1:{port}", hub, app, server, thread)
    yield live, models
    live.stop()


def test_train_refuses_folders_outside_the_allowed_ones(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, models = served
    elsewhere = pictures(tmp_path / "elsewhere")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for body in (
            {"name": "fox", "images": str(elsewhere), "model": str(models / "tiny")},
            {"name": "fox", "images": "pictures/fox", "model": "/etc"},
            {"name": "fox", "images": "../elsewhere", "model": str(models / "tiny")},
        ):
            r = c.post("/api/train", json=body)
            assert r.status_code == 403 and "outside the workspace" in r.json()["error"], r.text
        r = c.post("/api/train", json={"name": "../evil", "images": "pictures/fox", "model": str(models / "tiny")})
        assert r.status_code == 422
        r = c.post("/api/train", json={"name": "fox", "images": "pictures/none", "model": str(models / "tiny")})
        assert r.status_code == 404 and "does not exist" in r.json()["error"]


@pytest.mark.slow
def test_train_page_shows_a_live_loss_plot_and_writes_the_embedding(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    server, models = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server.url + "/train")
        page.fill("input[name=name]", "webfox")
        page.fill("input[name=images]", "pictures/fox")
        page.fill("input[name=model]", str(models / "tiny"))
        page.fill("input[name=steps]", "8")
        page.fill("input[name=size]", "64")
        page.fill("input[name=preview_every]", "4")
        # the Model input stays inside its column (a long path once pushed it out of the card)
        field, label = page.locator("input[name=model]").bounding_box(), page.locator("label:has(input[name=model])").bounding_box()
        assert field["x"] + field["width"] <= label["x"] + label["width"] + 1, (field, label)
        page.click("button.train")
        # preview pictures appear while it trains (step 4 of 8), before the job ends
        page.wait_for_selector("#previews img", timeout=240_000)
        page.wait_for_selector("#train-job .job-status[data-state=done]", timeout=240_000)
        points = page.locator("svg.loss-plot polyline").get_attribute("points") or ""
        assert len(points.split()) == 8  # the loss curve: one point per step
        steps = page.locator("svg.loss-plot text.xtick").all_text_contents()
        losses = page.locator("svg.loss-plot text.ytick").all_text_contents()
        assert len(steps) >= 2 and all(t.isdigit() and 1 <= int(t) <= 8 for t in steps), steps  # step ticks
        assert len(losses) >= 2 and all(float(t) > 0 for t in losses), losses  # loss ticks
        page.wait_for_function("[...document.querySelectorAll('#previews img')].length === 2 && "
                               "[...document.querySelectorAll('#previews img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#previews figcaption").all_inner_texts() == ["step 4", "step 8"]
        shown = page.locator(".fetched-path").inner_text()
        job_url = page.locator("#train-job a.job-link").get_attribute("href")
        out = tmp_path / "screens"
        out.mkdir()
        page.screenshot(path=str(out / "train.png"), full_page=True)
        # the job's own page (as /jobs links it, also after a restart): the curve and the previews
        page.goto(server.url + job_url)
        page.wait_for_selector("#job .job-status[data-state=done]")
        assert len((page.locator("svg.loss-plot polyline").get_attribute("points") or "").split()) == 8
        page.wait_for_function("[...document.querySelectorAll('#previews img')].length === 2")
        page.screenshot(path=str(out / "train-job.png"), full_page=True)
        if os.environ.get("TIHUB_SCREENSHOTS"):
            for name in ("train.png", "train-job.png"):
                shutil.copy(out / name, Path(os.environ["TIHUB_SCREENSHOTS"]) / name)
        browser.close()
    target = server.hub.workspace.embeddings_dir / "webfox.safetensors"
    assert shown == str(target) and target.is_file()
    runs = server.hub.entry("webfox")["training_runs"]
    assert runs and runs[0]["settings"]["steps"] == 8
    (job,) = [j for j in server.app.state.jobs.all() if j.kind == "train"]
    assert [Path(p).name for p in job.previews] == ["webfox-4.preview.png", "webfox-8.preview.png"]


def test_uploaded_pictures_are_checked_capped_and_confined(served) -> None:  # type: ignore[no-untyped-def]
    import io

    server, _ = served
    home = server.hub.workspace.root
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "PNG")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.put("/api/pictures/fox2/a.png", content=buf.getvalue())
        assert r.status_code == 200 and r.json()["folder"] == "pictures/fox2", r.text
        assert (home / "pictures" / "fox2" / "a.png").read_bytes() == buf.getvalue()
        r = c.put("/api/pictures/fox2/b.png", content=b"<html>not a picture</html>")
        assert r.status_code == 400 and "not a PNG" in r.json()["error"]
        assert not (home / "pictures" / "fox2" / "b.png").exists()
        r = c.put("/api/pictures/fox2/c.png", content=b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 1024 * 1024))
        assert r.status_code == 413 and r.json()["ok"] is False
        for bad in ("/api/pictures/..%2F..%2Fetc/x.png", "/api/pictures/fox2/..png", "/api/pictures/fox2/.hidden.png",
                    "/api/pictures/fox2/a.exe"):
            r = c.put(bad, content=buf.getvalue())
            assert r.status_code in (400, 404, 422), (bad, r.status_code)
        r = c.put("/api/pictures/fox2/d.png", content=buf.getvalue(), headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
    assert sorted(p.name for p in (home / "pictures" / "fox2").iterdir()) == ["a.png"]


def test_train_page_uploads_pictures(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    server, _ = served
    files = pictures(tmp_path / "mine", n=2)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page()
        page.goto(server.url + "/train")
        page.fill("input[name=name]", "upfox")
        page.set_input_files("input[name=upload]", [str(f) for f in sorted(files.iterdir())])
        page.wait_for_selector(".upload-status[data-state=done]")
        assert page.input_value("input[name=images]") == "pictures/upfox"
        # a file that is not a picture is told, in words, and does not stop the pictures after it
        (files / "notes.txt").write_text("hello", encoding="utf-8")
        (files / "zfox.png").write_bytes((files / "fox0.png").read_bytes())
        page.set_input_files("input[name=upload]", [str(files / "notes.txt"), str(files / "zfox.png")])
        page.wait_for_selector(".upload-status[data-state=failed]")
        status = page.locator(".upload-status").inner_text()
        assert status.startswith("uploaded 1 of 2 picture(s) to pictures/upfox; notes.txt: ") and ".png, .jpg or .webp" in status
        assert page.locator(".upload-status").evaluate("e => getComputedStyle(e).color") == "rgb(201, 42, 42)"  # red
        browser.close()
    got = sorted(p.name for p in (server.hub.workspace.root / "pictures" / "upfox").iterdir())
    assert got == ["fox0.png", "fox1.png", "zfox.png"]


def trained(server: LiveServer, models: Path, name: str = "webcat") -> dict:
    """A tiny embedding trained on the tiny model (so it loads there), recorded as an entry."""
    server.hub.train(name, server.hub.workspace.root / "pictures" / "fox", models / "tiny", steps=2, size="64", device="cpu")
    return server.hub.entry(name)


def test_export_grid_and_verify_refuse_paths_outside_and_unknown_names(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, models = served
    trained(server, models)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir()
    (comfy / "models" / "embeddings").symlink_to(outside)  # a link inside the app folder leading out of it
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for to in (str(outside), "/etc", "../elsewhere", str(comfy / ".." / "elsewhere")):
            r = c.post("/api/export", json={"name": "webcat", "app": "a1111", "to": to})
            assert r.status_code == 403 and "outside the workspace and the --app-folder" in r.json()["error"], (to, r.text)
        r = c.post("/api/export", json={"name": "webcat", "app": "comfyui", "to": str(comfy)})
        assert r.status_code == 403 and "leads outside" in r.json()["error"], r.text
        assert not list(outside.iterdir())
        r = c.post("/api/export", json={"name": "nosuch", "app": "a1111", "to": str(comfy)})
        assert r.status_code == 404 and "nosuch" in r.json()["error"]
        r = c.post("/api/export", json={"name": "webcat", "app": "paint", "to": str(comfy)})
        assert r.status_code == 422 and r.json()["ok"] is False
        r = c.post("/api/export", json={"name": "webcat", "app": "a1111", "to": str(comfy)}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and not (comfy / "embeddings").exists()
        for op in ("grid", "verify"):
            r = c.post(f"/api/{op}", json={"name": "webcat", "model": "/etc"})
            assert r.status_code == 403 and "outside the workspace" in r.json()["error"]
            r = c.post(f"/api/{op}", json={"name": "nosuch", "model": str(models / "tiny")})
            assert r.status_code == 404 and "nosuch" in r.json()["error"]
            r = c.post(f"/api/{op}", json={"name": "webcat", "model": str(models / "none")})
            assert r.status_code == 404 and "does not exist" in r.json()["error"]
            r = c.post(f"/api/{op}", json={"name": "webcat", "model": str(models / "tiny"), "size": "../x"})
            assert r.status_code == 422
            r = c.post(f"/api/{op}", json={"name": "webcat", "model": str(models / "tiny")}, headers={"Sec-Fetch-Site": "cross-site"})
            assert r.status_code == 403
        r = c.get("/jobs/1/previews/0")
        assert r.status_code == 404 and r.json()["ok"] is False


def wide_one(server: LiveServer) -> dict:
    """A 768-wide (SD1) embedding in embeddings/, recorded as an entry."""
    import numpy as np
    from safetensors.numpy import save_file

    from tihub.runs import resolve_embedding

    path = server.hub.workspace.embeddings_dir / "wideone.safetensors"
    save_file({"emb_params": np.full((2, 768), 0.01, dtype=np.float32)}, str(path))
    resolve_embedding(server.hub.catalog, server.hub.workspace.embeddings_dir, "wideone")
    return server.hub.entry("wideone")


def ended(page, box: str, timeout: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until the job in `box` ends; it must have ended well."""
    page.wait_for_selector(f"{box} .job-status[data-state]", timeout=timeout)
    status = page.locator(f"{box} .job-status")
    assert status.get_attribute("data-state") == "done", status.inner_text()


@pytest.mark.slow
def test_entry_page_exports_draws_a_grid_and_verifies(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    server, models = served
    e = trained(server, models)
    wide = wide_one(server)
    comfy = tmp_path / "ComfyUI"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # export a usual (768-wide) embedding into the --app-folder folder, for ComfyUI
        page.goto(f"{server.url}/entries/{wide['id']}")
        assert page.input_value("#export input[name=to]") == str(comfy)
        page.select_option("#export select[name=app]", "comfyui")
        page.click("button.export")
        ended(page, "#export", 60_000)
        assert page.locator("#export .exported-path").inner_text() == str(comfy / "models" / "embeddings" / "wideone.safetensors")
        assert page.locator("#export .prompt").inner_text() == "embedding:wideone"
        page.goto(f"{server.url}/entries/{e['id']}")
        # a preview grid on the tiny model, shown when done
        page.fill("#try-model", str(models / "tiny"))
        page.fill("#try-steps", "2")
        page.fill("#try-size", "64")
        page.click("button.grid")
        ended(page, "#grid", 240_000)
        page.wait_for_function("(() => { const i = document.querySelector('#grid .job-picture img'); return i && i.complete && i.naturalWidth > 0; })()")
        page.reload()  # the model is remembered in this browser
        assert page.input_value("#try-model") == str(models / "tiny")
        page.fill("#try-steps", "2")
        page.fill("#try-size", "64")
        # verify on the tiny model: the verdict, and the record in the page's Verifications
        page.click("button.verify")
        page.wait_for_selector("#verify .job-status[data-state]", timeout=240_000)
        verdict = page.locator("#verify .job-status").inner_text()
        page.wait_for_selector("#verifications li.verification")
        record = page.locator("#verifications li.verification").first.inner_text()
        out = tmp_path / "screens"
        out.mkdir()
        page.screenshot(path=str(out / "entry-actions.png"), full_page=True)
        if os.environ.get("TIHUB_SCREENSHOTS"):
            shutil.copy(out / "entry-actions.png", Path(os.environ["TIHUB_SCREENSHOTS"]) / "entry-actions.png")
        browser.close()
    assert not errors, errors
    assert (comfy / "models" / "embeddings" / "wideone.safetensors").is_file()
    v = server.hub.entry("webcat")["verifications"][0]
    assert v["result"] in verdict and v["result"] in record, (verdict, record)
    kinds = [j.kind for j in server.app.state.jobs.all()]
    assert {"export", "grid", "verify"} <= set(kinds)
    grid_job = next(j for j in server.app.state.jobs.all() if j.kind == "grid")
    assert Path(grid_job.result["path"]).is_file() and grid_job.previews == [grid_job.result["path"]]
