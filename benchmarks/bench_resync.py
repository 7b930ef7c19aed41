"""Re-sync of unchanged remote sources: requests at the loopback servers vs the listing alone.

For each remote kind (huggingface, civitai, git, links) a fresh workspace is synced twice with
`tihub.sync.sync` against loopback servers that speak the real APIs. The second sync must cost
exactly the listing requests (HF listing pages, Civitai listing pages, one `git ls-remote`, one
conditional page GET). Rounds are interleaved across kinds; medians are printed with the ratio
second-sync requests / listing requests (target 1.00) and, for scale, the first sync's count.

    .venv/bin/python benchmarks/bench_resync.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers.civitai import CivitaiAPI  # noqa: E402
from servers.gitforge import GitForge, make_repo  # noqa: E402
from servers.hf import HFHub, concept_repo  # noqa: E402
from servers.pages import PageServer  # noqa: E402

from tihub.config import Workspace  # noqa: E402
from tihub.sync import sync  # noqa: E402


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"hf": 40, "hf_page": 10, "civitai": 250, "git": 30, "links": 60}
    return {"hf": 1040, "hf_page": 100, "civitai": 1000, "git": 300, "links": 1500}


def build(tmp: Path, n: dict[str, int]) -> tuple[dict[str, object], dict[str, str]]:
    """Start the servers; return them and the sources.yaml entries."""
    hub = HFHub([concept_repo("sd-concepts-library", f"c{i:04d}", f"<c{i}>", "style", b"emb%d" % i) for i in range(n["hf"])], page_size=n["hf_page"])
    civ = CivitaiAPI(n_models=n["civitai"])
    make_repo(tmp / "forge", "viper1/embeds", {
        "README.md": b"# Embeddings\n" + b"".join(b"## Thing %d\nModel: NAI, %d steps\n" % (i, i * 100) for i in range(n["git"])),
        **{f"embeddings/thing-{i}-{i * 100 + 1000}.pt": b"PK" + bytes([i % 256]) * 3000 for i in range(n["git"])},
    })
    forge = GitForge(tmp / "forge")
    pages = PageServer()
    rows = "".join(f"| Item {i} | Waifu Diffusion v1.3 | [x](https://desuarchive.org/g/{i}) | [catbox](https://files.catbox.moe/{i:06d}.pt) |\n" for i in range(n["links"]))
    servers = {"huggingface": hub, "civitai": civ, "git": forge, "links": pages}
    for s in servers.values():
        s.__enter__()  # type: ignore[attr-defined]
    page_url = pages.set("/embeddings/raw", "# list\n\n| Name | Model | Details | Download |\n|-|-|-|-|\n" + rows, "text/markdown")
    yaml = {
        "huggingface": f"  - name: hf\n    kind: huggingface\n    author: sd-concepts-library\n    endpoint: {hub.url}\n    allow_private: true\n",
        "civitai": f"  - name: civitai\n    kind: civitai\n    url: {civ.api}\n    allow_private: true\n",
        "git": f"  - name: git\n    kind: git\n    url: {forge.repo_url('viper1/embeds')}\n    allow_private: true\n",
        "links": f"  - name: links\n    kind: links\n    url: {page_url}\n    allow_private: true\n",
    }
    return servers, yaml


def listing_requests(kind: str, server: object) -> int:
    """What listing the source costs on its own (measured, not assumed)."""
    srv = server.server  # type: ignore[attr-defined]
    srv.reset()
    if kind == "git":
        subprocess.run(["git", "ls-remote", "--", server.repo_url("viper1/embeds"), "HEAD"], check=True, capture_output=True)  # type: ignore[attr-defined]
        n = srv.count()
    elif kind == "huggingface":
        n = -1  # counted from the first sync below: its /api/models requests
    elif kind == "civitai":
        n = -1
    else:
        n = 1
    srv.reset()
    return n


def one_round(kind: str, server: object, yaml: str, tmp: Path, r: int) -> dict[str, float]:
    home = tmp / f"ws-{kind}-{r}"
    home.mkdir()
    (home / "sources.yaml").write_text("sources:\n" + yaml)
    ws = Workspace.locate(home)
    ws.ensure()
    srv = server.server  # type: ignore[attr-defined]
    listing = listing_requests(kind, server)
    t0 = time.perf_counter()
    (rep1,) = sync(ws, [kind if kind != "huggingface" else "hf"])
    t1 = time.perf_counter()
    first = srv.count()
    if listing < 0:
        prefix = "/api/models" if kind == "huggingface" else "/api/v1/models"
        listing = sum(1 for p in srv.paths() if p == prefix)
    srv.reset()
    t2 = time.perf_counter()
    (rep2,) = sync(ws, [kind if kind != "huggingface" else "hf"])
    t3 = time.perf_counter()
    second = srv.count()
    srv.reset()
    if rep1.failed or rep2.failed:
        raise SystemExit(f"{kind}: sync failed: {rep1.error or rep2.error}")
    return {"first": first, "second": second, "listing": listing, "entries": rep2.total or rep1.total,
            "t_first": t1 - t0, "t_second": t3 - t2, "status2": rep2.status == "unchanged"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sources")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = sizes(args.quick)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        servers, yaml = build(tmp, n)
        results: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
        try:
            for r in range(args.rounds):  # interleaved: every kind once per round
                for kind, server in servers.items():
                    results[kind].append(one_round(kind, server, yaml[kind], tmp, r))
        finally:
            for s in servers.values():
                s.__exit__(None, None, None)  # type: ignore[attr-defined]
    print(f"re-sync of unchanged sources ({'quick' if args.quick else 'full'}, {args.rounds} rounds, medians)")
    print(f"{'kind':<12}{'entries':>8}{'1st reqs':>10}{'2nd reqs':>10}{'listing':>9}{'2nd/listing':>13}{'1st s':>8}{'2nd s':>8}  unchanged")
    ok = True
    for kind, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in ("first", "second", "listing", "entries", "t_first", "t_second")}
        ratio = med["second"] / med["listing"] if med["listing"] else float("nan")
        unchanged = all(row["status2"] for row in rows)
        ok &= all(row["second"] == row["listing"] for row in rows) and unchanged
        print(f"{kind:<12}{med['entries']:>8.0f}{med['first']:>10.0f}{med['second']:>10.0f}{med['listing']:>9.0f}{ratio:>13.2f}"
              f"{med['t_first']:>8.2f}{med['t_second']:>8.2f}  {unchanged}")
    print("target: 2nd reqs == listing for every kind:", "MET" if ok else "NOT MET")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
