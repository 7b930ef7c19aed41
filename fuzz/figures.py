"""The figures in the README's security section: every hostile file of the test suite read once
in this process under tracemalloc: how many, how many were refused, whether any payload ran (a
canary file), and the peak memory of the worst one.

    python fuzz/figures.py
"""

from __future__ import annotations

import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hostile_files  # noqa: E402
from PIL import Image  # noqa: E402,F401 - imported before measuring

from tihub.errors import FormatError  # noqa: E402
from tihub.formats import read_embedding  # noqa: E402
from tihub.formats.budget import EMBEDDING_BUDGET  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        canary = Path(tmp) / "CANARY"
        files = hostile_files.build_all(Path(tmp) / "files", canary)
        refused = 0
        worst = (0, "", 0)
        tracemalloc.start()
        for name, path in sorted(files.items()):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                read_embedding(path)
            except FormatError:
                refused += 1
            peak = tracemalloc.get_traced_memory()[1] - base
            if peak > worst[0]:
                worst = (peak, name, path.stat().st_size)
        tracemalloc.stop()
        ran = canary.exists()
    mib = 1024 * 1024
    print(f"hostile files: {len(files)}, refused: {refused}, payloads run: {int(ran)}")
    print(f"worst peak: {worst[0] / mib:.1f} MiB ({worst[1]}, a {worst[2] / mib:.1f} MiB file); budget {EMBEDDING_BUDGET // mib} MiB")


if __name__ == "__main__":
    main()
