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
    hub = Hub(home)
    app = create_app(hub, read_dirs=[models])
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
        page.click("button.train")
        page.wait_for_selector("#train-job .job-status[data-state=done]", timeout=240_000)
        points = page.locator("svg.loss-plot polyline").get_attribute("points") or ""
        assert len(points.split()) == 8  # the loss curve: one point per step
        shown = page.locator(".fetched-path").inner_text()
        out = tmp_path / "screens"
        out.mkdir()
        page.screenshot(path=str(out / "train.png"), full_page=True)
        if os.environ.get("TIHUB_SCREENSHOTS"):
            shutil.copy(out / "train.png", Path(os.environ["TIHUB_SCREENSHOTS"]) / "train.png")
        browser.close()
    target = server.hub.workspace.embeddings_dir / "webfox.safetensors"
    assert shown == str(target) and target.is_file()
    runs = server.hub.entry("webfox")["training_runs"]
    assert runs and runs[0]["settings"]["steps"] == 8


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
        browser.close()
    got = sorted(p.name for p in (server.hub.workspace.root / "pictures" / "upfox").iterdir())
    assert got == ["fox0.png", "fox1.png"]
