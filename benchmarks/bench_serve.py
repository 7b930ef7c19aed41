"""`tihub serve` under load: the search API over HTTP vs the same search in-process, many clients
at once, and the first load of the search page (HTML + 24 thumbnails) in Chromium.

    .venv/bin/python benchmarks/bench_serve.py            # 1,000,000 entries
    .venv/bin/python benchmarks/bench_serve.py --quick    # 100,000 entries

The catalogue is bench_search.py's (built once in /tmp; copied from bench_search's file when that
exists, so its file is never changed). 24 entries get a preview picture (a PNG on disk) for the
page-load figure. Server time is the app's own `Server-Timing` header; round trip is the client's.
Targets (issue 15): search API p95 server time <= 2x in-process `Hub.search` and <= 50 ms;
50 concurrent clients without an error.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from bench_search import build, pct, queries  # noqa: E402
from tihub.hub import Hub  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def catalogue(n: int) -> Path:
    path = Path(f"/tmp/tihub_bench_serve_v5_{n}.db")
    theirs = Path(f"/tmp/tihub_bench_search_v5_{n}.db")  # bench_search.py's file (same build, same version)
    if not path.exists() and theirs.exists() and theirs.with_suffix(".json").exists():
        shutil.copy(theirs, path)
        shutil.copy(theirs.with_suffix(".json"), path.with_suffix(".json"))
    build(path, n)
    return path


def add_pictures(hub: Hub, folder: Path) -> None:
    """A preview picture for each of the first 24 entries the search page shows."""
    from PIL import Image
    from sqlalchemy import text

    from tihub.catalog.db import write

    ids = [h.id for h in hub.search("", limit=24)]
    with write(hub.catalog.engine) as conn:
        for i, eid in enumerate(ids):
            png = folder / f"p{eid}.png"
            if not png.exists():
                buf = io.BytesIO()
                Image.new("RGB", (768, 768), (40 + 8 * i, 90, 200 - 6 * i)).save(buf, "PNG")
                png.write_bytes(buf.getvalue())
            if conn.execute(text("SELECT 1 FROM previews WHERE entry_id = :e"), {"e": eid}).first():
                continue
            conn.execute(text("INSERT INTO previews (entry_id, path, kind, created_at) VALUES (:e, :p, 'local', '2026-01-01')"),
                         {"e": eid, "p": str(png)})


def serve(work: Path, db: Path):  # type: ignore[no-untyped-def]
    """`tihub serve` in its own process (so the client's threads do not share its GIL)."""
    import os
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "tihub", "--home", str(work), "--db", f"sqlite:///{db}", "serve",
                             "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(url + "/api/jobs", timeout=5)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("tihub serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 entries, fewer queries")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--clients", type=int, default=50)
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    count = args.queries or (100 if args.quick else 400)
    db = catalogue(n)
    work = Path(tempfile.mkdtemp(prefix="tihub-bench-serve-"))
    hub = Hub(work, db_url=f"sqlite:///{db}")
    pictures = Path(f"/tmp/tihub_bench_serve_{n}_pictures")
    pictures.mkdir(exist_ok=True)
    add_pictures(hub, pictures)
    vocab, by_freq = build(db, n)
    qs = queries(vocab, by_freq, count)
    server, url = serve(work, db)
    client = httpx.Client(base_url=url, timeout=60)
    for q in qs[:20]:  # warm both
        hub.search(q, limit=20)
        client.get("/api/search", params={"q": q, "limit": 20})

    # 1. one client: HTTP (server time and round trip) vs in-process, interleaved
    t_inproc, t_server, t_http = [], [], []
    for q in qs:
        t0 = time.perf_counter()
        hub.search(q, limit=20)
        t_inproc.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        r = client.get("/api/search", params={"q": q, "limit": 20})
        t_http.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        t_server.append(float(r.headers["server-timing"].split("dur=")[1]))
    print(f"entries: {n:,}; queries: {len(qs)}")
    print(f"in-process Hub.search      : p50 {statistics.median(t_inproc):6.2f} ms  p95 {pct(t_inproc, 95):6.2f} ms")
    print(f"GET /api/search server time: p50 {statistics.median(t_server):6.2f} ms  p95 {pct(t_server, 95):6.2f} ms")
    print(f"GET /api/search round trip : p50 {statistics.median(t_http):6.2f} ms  p95 {pct(t_http, 95):6.2f} ms")
    ratio = pct(t_server, 95) / pct(t_inproc, 95)
    ok = ratio <= 2 and pct(t_server, 95) <= 50
    print(f"p95 server/in-process: {ratio:.2f}x  (targets <= 2x and <= 50 ms: {'met' if ok else 'NOT met'})")

    # 2. many clients at once
    errors: list[str] = []
    lat: list[float] = []
    lock = threading.Lock()

    def one_client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for q in qs[k % len(qs):][:5]:
                t0 = time.perf_counter()
                try:
                    r = c.get("/api/search", params={"q": q, "limit": 20})
                    bad = None if r.status_code == 200 else f"status {r.status_code}"
                except httpx.HTTPError as exc:
                    bad = type(exc).__name__
                with lock:
                    lat.append((time.perf_counter() - t0) * 1000)
                    if bad:
                        errors.append(bad)

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    print(f"{args.clients} concurrent clients x 5 searches: {len(lat)} requests in {wall:.2f} s "
          f"({len(lat) / wall:.0f}/s), p50 {statistics.median(lat):.1f} ms, p95 {pct(lat, 95):.1f} ms, errors {len(errors)}")

    # 3. the search page's first load in Chromium: HTML + 24 thumbnails (made on first request)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment]
    if sync_playwright is None or not CHROMIUM.exists():
        print("page load: skipped (needs playwright and /usr/bin/chromium)")
    else:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            for label in ("cold thumbnail cache", "warm thumbnail cache"):
                page = b.new_context().new_page()
                t0 = time.perf_counter()
                page.goto(url + "/")
                page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete)", timeout=120_000)
                ms = (time.perf_counter() - t0) * 1000
                loaded = page.locator(".card img").evaluate_all("imgs => imgs.filter(i => i.naturalWidth > 0).length")
                print(f"search page first load, {label}: {ms:.0f} ms (HTML + {loaded} thumbnails)")
                page.context.close()
            b.close()
    server.terminate()
    server.wait(30)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
