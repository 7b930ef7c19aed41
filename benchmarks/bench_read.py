"""Read 2,000 mixed embedding files: tihub's safe reader vs torch.load(weights_only=True).

Files: A1111 .pt, diffusers .bin, emb_params .pt (written by tihub's writers, 1-75 vectors, SD1/SD2,
f32/f16), copies of the corpus torch files, and safetensors (SD1 emb_params, SDXL). The peer reads
torch files with `torch.load(path, weights_only=True)` and safetensors with
`safetensors.torch.load_file` (what diffusers/A1111 do). Each side runs in its own fresh
subprocess (so imports count), rounds interleaved; medians of the read loop and of the whole
process (import + read) are printed, with the ratio.

    .venv/bin/python benchmarks/bench_read.py            # 2,000 files, 5 rounds
    .venv/bin/python benchmarks/bench_read.py --quick    # 200 files, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"

TIHUB = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from tihub.formats.reader import read_embedding
t1, c1 = time.perf_counter(), time.process_time()
paths = open(sys.argv[1]).read().split("\n")
n = 0
for p in paths:
    emb = read_embedding(p)
    n += emb.vector_count
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import": t1 - t0, "read": t2 - t1, "cpu_import": c1 - c0, "cpu_read": c2 - c1, "items": n}))
"""

PEER = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import torch
from safetensors.torch import load_file
torch.set_num_threads(1)
t1, c1 = time.perf_counter(), time.process_time()
paths = open(sys.argv[1]).read().split("\n")
n = 0
for p in paths:
    obj = load_file(p) if p.endswith(".safetensors") else torch.load(p, weights_only=True, map_location="cpu")
    n += len(obj)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import": t1 - t0, "read": t2 - t1, "cpu_import": c1 - c0, "cpu_read": c2 - c1, "items": n}))
"""


def make_files(directory: Path, count: int) -> list[Path]:
    from tihub.formats import Embedding, read_embedding, write_embedding

    rng = np.random.default_rng(0)
    corpus_files: list[Path] = []
    if (CORPUS / "MANIFEST.tsv").exists():
        for line in (CORPUS / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            rel, kind = line.split("\t")[0], line.split("\t")[6]
            if ("A1111 .pt" in kind or "diffusers learned_embeds" in kind or "emb_params" in kind or "safetensors" in kind) and "t5xxl" not in kind:
                path = CORPUS / rel
                if path.suffix in (".pt", ".bin", ".safetensors") and path.stat().st_size < 1_000_000:
                    try:
                        read_embedding(path)
                    except Exception:
                        continue
                    corpus_files.append(path)
    out: list[Path] = []
    kinds = ["a1111", "diffusers-bin", "emb-pt", "safetensors", "sdxl", "corpus"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "corpus" and corpus_files:
            src = corpus_files[(i // len(kinds)) % len(corpus_files)]
            dst = directory / f"c{i}{src.suffix}"
            shutil.copyfile(src, dst)
            out.append(dst)
            continue
        n = int(rng.choice([1, 2, 4, 8, 16, 75]))
        width = 1024 if i % 7 == 0 else 768
        dtype = np.float16 if i % 5 == 0 else np.float32
        key = {768: "clip_l", 1024: "clip_h"}[width]
        if kind == "sdxl":
            emb = Embedding(f"e{i}", {"clip_l": rng.standard_normal((n, 768)).astype(np.float32), "clip_g": rng.standard_normal((n, 1280)).astype(np.float32)})
            fmt, suffix = "safetensors", ".safetensors"
        else:
            emb = Embedding(f"e{i}", {key: rng.standard_normal((n, width)).astype(dtype)}, "f16" if dtype == np.float16 else "f32", step=i)
            fmt, suffix = {"a1111": ("a1111", ".pt"), "diffusers-bin": ("diffusers-bin", ".bin"), "emb-pt": ("a1111", ".pt"), "safetensors": ("safetensors", ".safetensors")}.get(kind, ("a1111", ".pt"))
        path = directory / f"e{i}{suffix}"
        write_embedding(emb, path, fmt)
        out.append(path)
    return out


def run(script: str, listing: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", script, str(listing)], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="200 files, 3 rounds")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    count = args.files or (200 if args.quick else 2000)
    rounds = args.rounds or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), count)
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(str(p) for p in files))
        size = sum(p.stat().st_size for p in files)
        print(f"{len(files)} files, {size / 1e6:.1f} MB; {rounds} interleaved rounds, each side in a fresh subprocess")
        results: dict[str, list[dict[str, float]]] = {"tihub": [], "torch": []}
        for r in range(rounds):
            order = [("tihub", TIHUB), ("torch", PEER)] if r % 2 == 0 else [("torch", PEER), ("tihub", TIHUB)]
            for name, script in order:
                results[name].append(run(script, listing))
        keys = ("import", "read", "cpu_import", "cpu_read")
        med = {name: {k: statistics.median(x[k] for x in rs) for k in keys} for name, rs in results.items()}
        for name in ("tihub", "torch"):
            m = med[name]
            print(
                f"{name:6s} read loop median {m['read']:.3f} s wall / {m['cpu_read']:.3f} s CPU "
                f"({m['cpu_read'] / len(files) * 1e6:.0f} us CPU/file); import {m['import']:.3f} s; "
                f"whole process {m['read'] + m['import']:.3f} s"
            )
        t, p = med["tihub"], med["torch"]
        print(
            f"ratio (torch / tihub): read loop {p['read'] / t['read']:.2f}x wall, {p['cpu_read'] / t['cpu_read']:.2f}x CPU; "
            f"whole process (import + read) {(p['read'] + p['import']) / (t['read'] + t['import']):.2f}x wall"
        )


if __name__ == "__main__":
    main()
