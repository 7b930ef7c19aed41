"""Coverage-guided fuzzing of one reader with atheris (libFuzzer):

    python fuzz/run.py TARGET [libFuzzer options, e.g. -max_total_time=60 -rss_limit_mb=1024]
    python fuzz/run.py --list

Seeds come from fuzz/seeds.py (written into a temp corpus folder each run). A finding is an
exception other than TihubError, or a read whose peak memory passes the per-file budget (see
fuzz/targets.py); libFuzzer then writes the input as crash-* in the current folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["tihub"]):
    import tihub.config  # noqa: F401
    import tihub.formats.containers  # noqa: F401
    import tihub.formats.image  # noqa: F401
    import tihub.formats.pickle_vm  # noqa: F401
    import tihub.formats.reader  # noqa: F401
    import tihub.infotext  # noqa: F401
    import tihub.sources.links  # noqa: F401

from fuzz.seeds import seeds  # noqa: E402
from fuzz.targets import TARGETS, run_one  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("--list", "-h", "--help"):
        print("targets:", " ".join(TARGETS))
        return
    name = sys.argv[1]
    target = TARGETS[name]
    corpus = tempfile.mkdtemp(prefix=f"tihub-fuzz-{name}-")
    for i, seed in enumerate(seeds(name)):
        Path(corpus, f"seed-{i}").write_bytes(seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tracemalloc.start()  # once for the whole run: run_one resets the peak per input

    def one(data: bytes) -> None:
        run_one(target, data)

    atheris.Setup([sys.argv[0], *sys.argv[2:], corpus], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
