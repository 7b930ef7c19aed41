"""Deep sync of N small Hugging Face concept repos: requests and bytes against the minimum.

A loopback Hub holds N sd-concepts-library-style repos, each with a real ~4 KB
`learned_embeds.bin` (written by tihub's writer: a diffusers pickle of one 768-wide vector),
concept images and a README. Measured at the server:

1. a sync with `--deep-budget 0` (listing only) and a sync with the default budget, each into a
   fresh workspace: the deep sync's extra requests and bytes against the minimum (each file read
   once: one `resolve` request plus the Hub's redirect to its CDN, and exactly the file's bytes);
2. a re-sync after 10% of the repos got a new commit that left the file alone (nothing read),
   and after 10% changed the file (only those read);
3. `tihub fetch` of 50 deep-synced entries: requests to the CDN (0: served from the blob cache).

    .venv/bin/python benchmarks/bench_deep_sync.py [--quick] [--n N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from servers.hf import HFFile, HFHub, HFRepo  # noqa: E402

from tihub.config import Workspace  # noqa: E402
from tihub.formats import Embedding, write_embedding  # noqa: E402
from tihub.sync import sync  # noqa: E402

ORG = "sd-concepts-library"


def embed(tmp: Path, i: int, salt: int = 0) -> bytes:
    p = tmp / f"e{i}-{salt}.bin"
    v = np.random.default_rng(i * 1000 + salt).standard_normal((1, 768)).astype(np.float32)
    write_embedding(Embedding(name=f"<c{i}>", vectors={"clip_l": v}), p, "diffusers-bin")
    data = p.read_bytes()
    p.unlink()
    return data


def repo(i: int, data: bytes) -> HFRepo:
    r = HFRepo(id=f"{ORG}/c{i:04d}", files={
        ".gitattributes": HFFile(b"*.bin filter=lfs diff=lfs merge=lfs -text\n"),
        "README.md": HFFile(f"---\nlicense: mit\n---\n# c{i}\n![](concept_images/0.jpeg)\n".encode()),
        "learned_embeds.bin": HFFile(data, lfs=True),
        "token_identifier.txt": HFFile(f"<c{i}>".encode()),
        "type_of_concept.txt": HFFile(b"style"),
        "concept_images/0.jpeg": HFFile(b"\xff\xd8\xff\xe0jpeg", lfs=True),
    }, card_data={"license": "mit"})
    r.touch(i)
    return r


def count(paths: list[str]) -> dict[str, int]:
    out = {"listing": 0, "tree": 0, "txt": 0, "readme": 0, "resolve": 0, "cdn": 0, "pictures": 0}
    for p in paths:
        if p == "/api/models":
            out["listing"] += 1
        elif "/tree/" in p:
            out["tree"] += 1
        elif p.endswith(".txt"):
            out["txt"] += 1
        elif p.endswith("README.md"):
            out["readme"] += 1
        elif p.startswith("/cdn/") and p.endswith("learned_embeds.bin"):
            out["cdn"] += 1
        elif p.startswith("/cdn/"):
            out["pictures"] += 1
        elif p.endswith("learned_embeds.bin"):
            out["resolve"] += 1
    return out


def workspace(tmp: Path, name: str, url: str) -> Workspace:
    home = tmp / name
    home.mkdir()
    (home / "sources.yaml").write_text(
        f"sources:\n  - {{name: hf, kind: huggingface, author: {ORG}, endpoint: '{url}', allow_private: true}}\n")
    ws = Workspace.locate(home)
    ws.ensure()
    return ws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 repos")
    ap.add_argument("--n", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 1000)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        datas = [embed(tmp, i) for i in range(n)]
        size = sum(len(x) for x in datas)
        hub = HFHub([repo(i, datas[i]) for i in range(n)], page_size=100)
        with hub:
            srv = hub.server
            # 1. listing-only sync vs deep sync, fresh workspaces
            srv.reset()
            t0 = time.perf_counter()
            (plain,) = sync(workspace(tmp, "plain", hub.url), deep_budget=0)
            t1 = time.perf_counter()
            base = count(srv.paths())
            base_total = len(srv.paths())
            srv.reset()
            ws = workspace(tmp, "deep", hub.url)
            t2 = time.perf_counter()
            (deep,) = sync(ws)
            t3 = time.perf_counter()
            got = count(srv.paths())
            total = len(srv.paths())
            assert not plain.failed and not deep.failed, (plain.error, deep.error)
            extra = total - base_total
            print(f"deep sync of {n:,} HF concept repos (files {size / n / 1024:.1f} KB each, {size:,} bytes in all)")
            print(f"  listing-only sync: {base_total:,} requests ({base}), {t1 - t0:.1f} s")
            print(f"  deep sync:         {total:,} requests ({got}), {t3 - t2:.1f} s")
            print(f"  deep reads: {extra:,} extra requests vs minimum {2 * n:,} (one resolve + its CDN hop per file): "
                  f"{extra / (2 * n):.2f}x; bytes read {deep.deep['bytes']:,} vs minimum {size:,}: {deep.deep['bytes'] / size:.2f}x; "
                  f"{deep.deep['measured']:,} files measured")
            # 2. re-syncs
            step = 10  # every tenth repo
            for i in range(0, n, step):
                hub.repos[f"model:{ORG}/c{i:04d}"].touch(10_000 + i)  # new commit, same file
            srv.reset()
            (r2,) = sync(ws)
            c2 = count(srv.paths())
            changed = 0
            for i in range(1, n, step):
                r = hub.repos[f"model:{ORG}/c{i:04d}"]
                r.files["learned_embeds.bin"] = HFFile(embed(tmp, i, 1), lfs=True)
                r.touch(20_000 + i)
                changed += 1
            srv.reset()
            (r3,) = sync(ws)
            c3 = count(srv.paths())
            print(f"  re-sync, {len(range(0, n, step))} new commits with the same file: {c2['resolve'] + c2['cdn']} file requests, "
                  f"{r2.deep['bytes']} bytes read, {r2.deep['known']} known")
            print(f"  re-sync, {changed} changed files: {c3['resolve'] + c3['cdn']} file requests (minimum {2 * changed}), "
                  f"{r3.deep['bytes']:,} bytes read, {r3.deep['measured']} measured")
            # 3. fetch from the cache
            from click.testing import CliRunner

            from tihub.cli import cli

            names = [f"c{i:04d}" for i in range(2, min(n, 102), 2)][:50]
            srv.reset()
            t4 = time.perf_counter()
            res = CliRunner().invoke(cli, ["--home", str(ws.root), "fetch", *names, "--json"])
            t5 = time.perf_counter()
            fc = count(srv.paths())
            cdn = fc["cdn"] + fc["resolve"]
            print(f"  fetch of {len(names)} deep-synced entries: {cdn} requests for the files, {len(srv.paths())} in all "
                  f"(the concept pictures for NAME.preview.png), {t5 - t4:.1f} s, exit {res.exit_code}")
            ok = extra == 2 * n and deep.deep["bytes"] == size and c2["cdn"] == 0 and c3["cdn"] == changed and cdn == 0
            print("target: requests and bytes = minimum, re-syncs read only changes, fetch from cache:", "MET" if ok else "NOT MET")


if __name__ == "__main__":
    main()
