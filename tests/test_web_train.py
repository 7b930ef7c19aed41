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
            assert r.status_code == 400 and "outside the workspace" in r.json()["error"], r.text
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
