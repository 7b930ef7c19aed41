"""`tihub serve` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The server is the real app under uvicorn on a loopback port, over a workspace synced from the
loopback Hugging Face Hub (tests/web_helpers.py). Screenshots of the main pages are saved in
the test's temp folder (and copied to $TIHUB_SCREENSHOTS when set) for review.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from web_helpers import LiveServer, sha256_of, start_server, synced_workspace

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); `apt-get install chromium` runs these tests",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements/ci.txt) is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    root = tmp_path_factory.mktemp("web")
    with synced_workspace(root / "home") as (home, _hub):
        server = start_server(home)
        try:
            yield server, home
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser, site):  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def snap(pg, shots: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    out = shots / f"{name}.png"
    pg.screenshot(path=str(out), full_page=True)
    if os.environ.get("TIHUB_SCREENSHOTS"):
        Path(os.environ["TIHUB_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(os.environ["TIHUB_SCREENSHOTS"]) / out.name)
    return out


def card_names(pg) -> list[str]:  # type: ignore[no-untyped-def]
    return pg.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.name)")


def wait_pictures(pg) -> list[int]:  # type: ignore[no-untyped-def]
    """The naturalWidth of every card picture once all have loaded (or failed)."""
    pg.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete)", timeout=20_000)
    return pg.locator(".card img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")


def test_browse_page_shows_cards_with_loaded_thumbnails(page, site, shots) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    page.goto(server.url + "/")
    assert sorted(card_names(page)) == ["big-one", "cat-toy", "watercolor-style"]  # NSFW hidden by default
    widths = wait_pictures(page)
    assert len(widths) == 3 and all(w > 0 for w in widths), widths  # WEBP thumbnails actually decoded
    src = page.locator(".card img").first.get_attribute("src")
    assert src.startswith("/thumbs/")  # served by tihub, never hot-linked from the source
    card = page.locator(".card[data-name='watercolor-style']")
    assert card.locator(".tag.base").inner_text() == "sd1"
    assert card.locator(".tag.kind").inner_text() == "style"
    assert card.locator(".tag.source").inner_text() == "hf"
    assert card.locator(".trigger code").inner_text() == "watercolor-style"  # the A1111 trigger
    snap(page, shots, "browse")


def test_search_and_facets(page, site) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    page.goto(server.url + "/")
    page.fill("input[name=q]", "watercolor")
    page.click("form#search button[type=submit]")
    page.wait_for_url("**/?q=watercolor*")
    assert card_names(page) == ["watercolor-style"]
    # a facet: kind=object, with an empty query
    page.fill("input[name=q]", "")
    page.select_option("select[name=kind]", "object")
    page.click("form#search button[type=submit]")
    page.wait_for_url("**kind=object*")
    assert sorted(card_names(page)) == ["big-one", "cat-toy"]
    page.select_option("select[name=sort]", "name")
    page.select_option("select[name=local]", "yes")
    page.click("form#search button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("#empty").is_visible()  # nothing fetched yet


def test_nsfw_pictures_are_blurred_until_asked(page, site, shots) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    page.goto(server.url + "/")
    page.check("input[name=nsfw]")
    page.click("form#search button[type=submit]")
    page.wait_for_url("**nsfw=1*")
    assert "spicy-thing" in card_names(page)
    wait_pictures(page)
    img = page.locator(".card[data-name='spicy-thing'] img")
    assert "blur" in img.evaluate("i => getComputedStyle(i).filter")
    other = page.locator(".card[data-name='cat-toy'] img")
    assert other.evaluate("i => getComputedStyle(i).filter") == "none"
    snap(page, shots, "nsfw-blurred")
    page.click(".card[data-name='spicy-thing'] button.reveal")
    assert img.evaluate("i => getComputedStyle(i).filter") == "none"


def test_compat_badge_for_the_chosen_model_is_remembered(page, site) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    page.goto(server.url + "/")
    page.fill("input[name=model_hash]", "sd1")
    page.click("form#model button[type=submit]")
    page.wait_for_url("**model_hash=sd1*")
    assert page.locator(".card[data-name='cat-toy'] .badge").inner_text() == "same-family"
    page.goto(server.url + "/?q=cat")  # the cookie remembers the model
    assert page.locator(".card[data-name='cat-toy'] .badge").inner_text() == "same-family"
    page.goto(server.url + "/?model_hash=nothing-known")
    assert "nothing-known" in page.locator(".warning").inner_text()
    page.goto(server.url + "/?model_hash=")  # cleared
    assert page.locator(".badge").count() == 0


def test_entry_page_and_fetch_with_progress(page, site, shots) -> None:  # type: ignore[no-untyped-def]
    server, home = site
    page.goto(server.url + "/")
    page.click(".card[data-name='big-one'] h3 a")
    page.wait_for_url("**/entries/*")
    assert page.locator("h1").inner_text().startswith("big-one")
    page.wait_for_function("[...document.querySelectorAll('.pictures img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".triggers").inner_text().count("copy") >= 2  # one trigger per app with a copy button
    assert "sha256" in page.locator(".file").inner_text()
    page.click("button.fetch")
    page.wait_for_selector(".job-status[data-state=done]", timeout=30_000)
    shown = page.locator(".fetched-path").inner_text()
    target = home / "embeddings" / "big-one.safetensors"
    assert Path(shown) == target and target.is_file()
    assert page.locator("progress.bar").evaluate("b => b.value === b.max")
    # the job's last progress was the whole file, and the entry now says where it is on disk
    hub = server.hub  # the file is recorded in the catalogue, with the sha256 of its bytes
    assert hub.entry("big-one")["path"] == str(target)
    (row,) = [r for r in hub.local() if r.name == "big-one"]
    assert row.ok and row.sha256 == sha256_of(target) and row.widths == {"clip_l": 768}
    page.reload()
    assert page.locator("#disk-path").inner_text() == str(target)
    snap(page, shots, "entry")


def test_local_collection_page(page, site, shots) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    server.hub.fetch("cat-toy")
    page.goto(server.url + "/local")
    text = page.locator("#local").inner_text()
    assert "cat-toy" in text and "sd1" in text
    snap(page, shots, "local")
    # remove, after confirming: the row goes, and so does the file
    path = Path(server.hub.entry("cat-toy")["path"])
    assert path.is_file()
    page.once("dialog", lambda d: d.accept())
    page.click("button.remove[data-name='cat-toy.safetensors']")
    page.wait_for_function("!document.querySelector(\"button.remove[data-name='cat-toy.safetensors']\")")
    assert not path.exists() and not server.hub.entry("cat-toy")["local"]
    assert page.locator("#file-count").inner_text() == str(page.locator("#local button.remove").count())  # the count follows


def test_every_page_fits_a_phone_screen(browser, site, shots) -> None:  # type: ignore[no-untyped-def]
    """At 390 px nothing is wider than the screen: two card columns, tables as one block per row,
    inputs that shrink; the long paths wrap."""
    server, _ = site
    server.hub.fetch("cat-toy")
    server.app.state.jobs.start("fetch", "cat-toy", lambda j: server.hub.fetch("cat-toy").as_dict())
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    pg = ctx.new_page()
    try:
        for name, path in (("index", "/"), ("entry", "/entries/cat-toy"), ("local", "/local"), ("train", "/train"),
                           ("jobs", "/jobs")):
            pg.goto(server.url + path)
            wide = pg.evaluate("document.documentElement.scrollWidth")
            snap(pg, shots, f"phone-{name}")
            assert wide <= 390, f"{path} is {wide} px wide on a 390 px screen"
        pg.goto(server.url + "/train")  # the loss plot shrinks with the screen; its letters stay readable
        assert pg.locator("svg.loss-plot > text").first.evaluate("t => t.getBoundingClientRect().height") >= 12
        pg.goto(server.url + "/")
        tops = pg.locator(".card").evaluate_all("cards => cards.slice(0, 2).map(c => c.getBoundingClientRect().top)")
        assert len(tops) == 2 and tops[0] == tops[1]  # two cards side by side
    finally:
        ctx.close()


def test_feedback_for_a_missing_folder_and_a_file_with_nothing_to_download(page, site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    server.hub.fetch("cat-toy")
    page.goto(server.url + "/entries/cat-toy")
    page.fill("#export input[name=to]", "")
    page.click("button.export")  # an empty folder: told at once, nothing sent
    assert "install folder" in page.locator("#export .job-status").inner_text()
    page.fill("#export input[name=to]", "no/such/folder")
    page.click("button.export")
    page.wait_for_selector("#export .job-status[data-state=failed]")
    status = page.locator("#export .job-status").inner_text()
    assert status.startswith("failed: ") and "no/such/folder" in status and "Traceback" not in status
    assert page.locator("#export progress").is_hidden()  # no empty bar beside a failure
    # an entry of a local folder source: its file is on disk and there is nothing to fetch
    from fileserver import embedding_bytes

    from tihub.hub import Hub

    folder, own = tmp_path / "mine", tmp_path / "home"
    folder.mkdir()
    own.mkdir()
    (folder / "handmade.safetensors").write_bytes(embedding_bytes(name="handmade"))
    (own / "sources.yaml").write_text(f"sources:\n  - {{name: mine, kind: local, path: '{folder}'}}\n", encoding="utf-8")
    [report] = Hub(own).sync(deep_budget=0)
    assert report.ok
    other = start_server(own)
    try:
        page.goto(other.url + "/entries/handmade")
        assert page.locator("button.fetch").count() == 0
        assert "nothing to download" in page.locator("#no-download").inner_text()
    finally:
        other.stop()


def test_reopening_a_page_shows_its_running_job(page, site) -> None:  # type: ignore[no-untyped-def]
    """A job outlives the page that started it; the entry page picks up its live progress."""
    import threading

    server, _ = site
    eid = str(server.hub.entry("watercolor-style")["id"])
    release = threading.Event()

    def slow(job) -> dict:  # type: ignore[no-untyped-def]
        job.done, job.total, job.message = 50, 100, "downloading"
        assert release.wait(30)
        return {"ok": True, "status": "fetched", "path": "/somewhere/watercolor-style.safetensors", "sha256": "ab" * 32}

    server.app.state.jobs.start("fetch", eid, slow)
    page.goto(f"{server.url}/entries/{eid}")
    page.wait_for_function("document.querySelector('progress.bar').value === 50")
    assert page.locator("button.fetch").is_disabled()
    assert "downloading 50%" in page.locator(".job-status").inner_text()
    release.set()
    page.wait_for_selector(".job-status[data-state=done]")
    assert page.locator(".fetched-path").inner_text() == "/somewhere/watercolor-style.safetensors"


def test_sync_button_shows_progress_then_the_summary(page, site) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    page.goto(server.url + "/")
    page.click("button.sync")
    page.wait_for_selector("#sync .job-status[data-state=done]", timeout=60_000)
    assert page.locator("#sync .job-status").inner_text().startswith("hf: ")


def test_entry_page_shows_a_training_runs_loss_plot(page, site, shots) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image, ImageDraw

    server, home = site
    plot = home / "train" / "watercolor-style" / "loss.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (480, 240), "white")
    ImageDraw.Draw(im).line([(x, 200 - int(150 / (1 + x / 40))) for x in range(10, 470, 10)], fill=(59, 91, 219), width=3)
    im.save(plot)
    e = server.hub.entry("watercolor-style")
    server.hub.catalog.add_training_run(entry_id=e["id"], settings={"steps": 500, "final_loss": 0.1234}, pictures=12,
                                        loss_png=str(plot), checkpoints=[{"step": 250, "path": str(plot.parent / "s250.pt")}])
    page.goto(f"{server.url}/entries/{e['id']}")
    img = page.locator("img.loss")
    img.scroll_into_view_if_needed()
    page.wait_for_function("document.querySelector('img.loss').complete && document.querySelector('img.loss').naturalWidth > 0")
    assert img.evaluate("i => i.naturalWidth") == 480
    text = page.locator(".records").inner_text()
    assert "500 steps, 12 pictures, final loss 0.1234, 1 checkpoint(s)" in text
    snap(page, shots, "entry-training")


def test_with_a_token_the_first_visit_is_enough(browser, site) -> None:  # type: ignore[no-untyped-def]
    _, home = site
    server = start_server(home, token="t0ken")
    try:
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(server.url + "/")
        assert "needs its token" in page.content()
        page.goto(server.url + "/?token=t0ken")
        assert page.url == server.url + "/"  # the token left the address bar
        assert len(card_names(page)) == 3
        assert all(w > 0 for w in wait_pictures(page))  # pictures and scripts carry the cookie too
        page.goto(server.url + "/local")
        assert page.locator("#local").is_visible()
        ctx.close()
    finally:
        server.stop()


def test_jobs_page_lists_past_jobs_and_opens_one(page, site, shots) -> None:  # type: ignore[no-untyped-def]
    server, _ = site
    job = server.app.state.jobs.start("fetch", "cat-toy", lambda j: server.hub.fetch("cat-toy").as_dict())
    for _ in range(200):
        if server.app.state.jobs.get(job.id).state in ("done", "failed"):
            break
        import time

        time.sleep(0.05)
    page.goto(server.url + "/jobs")
    row = page.locator(f"tr.job-row[data-id='{job.id}']")
    assert row.get_attribute("data-state") == "done"
    assert "cat-toy.safetensors" in row.locator(".outcome").inner_text()
    snap(page, shots, "jobs")
    row.locator("a").click()
    page.wait_for_url(f"**/jobs/{job.id}")
    page.wait_for_selector("#job .job-status[data-state=done]")
    assert "cat-toy.safetensors" in page.locator("#job .fetched-path").inner_text()
    result = page.locator("table.result").inner_text()  # for people: no Python spellings, no row ids
    assert "converted\tno" in result and "True" not in result and "False" not in result and "file_id" not in result
    snap(page, shots, "job")
