"""One fuzz target per reader of untrusted bytes. Each takes the fuzzer's bytes, feeds them to
the reader, and lets only tihub's own errors (TihubError) pass: any other exception escaping,
or a read whose peak memory passes the per-file budget, is a finding.

Used by `fuzz/run.py` (atheris, coverage-guided, `make fuzz`) and by
`tests/test_fuzz_smoke.py` (hypothesis, a few seconds in `make test`).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

from tihub.errors import TihubError
from tihub.formats.budget import EMBEDDING_BUDGET

SLACK = 4 * 1024 * 1024  # Python objects around a read: names, messages, a few small arrays
WHAT = "'fuzz.bin'"


class OverBudget(AssertionError):
    """A read took more memory than the per-file budget allows."""


def limit_for(data: bytes) -> int:
    """The peak one read of `data` may reach: the budget, the input and the copies the target
    and the reader make of it (a signature prepended, the reader's private buffer), and slack."""
    return EMBEDDING_BUDGET + 3 * len(data) + SLACK


# -- the readers ----------------------------------------------------------------------------------


def pickle_vm(data: bytes) -> None:
    from tihub.formats import pickle_vm as vm
    from tihub.formats.pickle_vm import ITEMSIZE

    def load(ref):  # type: ignore[no-untyped-def]
        return bytearray(ref.numel * ITEMSIZE[ref.dtype])  # declared sizes are capped first

    vm.interpret(data, load_storage=load, what=WHAT, max_storage_bytes=1 << 20)


def zip_container(data: bytes) -> None:
    from tihub.formats.reader import read_embedding

    read_embedding("fuzz.pt", b"PK\x03\x04" + data if data[:4] != b"PK\x03\x04" else data)


def torch_zip(data: bytes) -> None:
    from tihub.formats.budget import MemoryBudget
    from tihub.formats.containers import read_torch_zip

    read_torch_zip(bytearray(data), WHAT, budget=MemoryBudget(EMBEDDING_BUDGET, WHAT))


def safetensors_header(data: bytes) -> None:
    from tihub.formats.containers import MAX_EMBEDDING_HEADER, parse_safetensors_header, read_safetensors

    parse_safetensors_header(data, len(data), WHAT, MAX_EMBEDDING_HEADER)
    read_safetensors(bytearray(data), WHAT)


def png_chunks(data: bytes) -> None:
    from tihub.formats.reader import read_embedding

    sig = b"\x89PNG\r\n\x1a\n"
    read_embedding("fuzz.png", data if data[:8] == sig else sig + data)


def png_pixels(data: bytes) -> None:
    """The A1111 pixel decoder on an image whose pixels are the fuzzer's bytes."""
    from PIL import Image

    from tihub.formats.budget import MemoryBudget
    from tihub.formats.image import _pixel_payload, decode_json_payload

    if len(data) < 4:
        return
    w = 1 + data[0] % 96
    h = 1 + data[1] % 96
    body = (data[2:] * (1 + (w * h * 3) // max(1, len(data) - 2)))[: w * h * 3]
    im = Image.frombytes("RGB", (w, h), body)
    payload = _pixel_payload(im, WHAT)
    if payload is not None:
        decode_json_payload(payload, WHAT, MemoryBudget(EMBEDDING_BUDGET, WHAT))


def infotext(data: bytes) -> None:
    from tihub.infotext import parse_infotext, png_text_chunks

    parse_infotext(data.decode("utf-8", "replace"))
    png_text_chunks(b"\x89PNG\r\n\x1a\n" + data)


def sources_yaml(data: bytes) -> None:
    from tihub.config import parse_sources

    parse_sources(data.decode("utf-8", "replace"), "sources.yaml")


def links_page(data: bytes) -> None:
    from tihub.sources.links import parse_page

    body = data.decode("utf-8", "replace")
    kind = ("text/html", "text/markdown", "application/json")[len(data) % 3]
    parse_page(body, kind, "https://example.com/page", False)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "pickle_vm": pickle_vm,
    "zip_container": zip_container,
    "torch_zip": torch_zip,
    "safetensors_header": safetensors_header,
    "png_chunks": png_chunks,
    "png_pixels": png_pixels,
    "infotext": infotext,
    "sources_yaml": sources_yaml,
    "links_page": links_page,
}


def run_one(target: Callable[[bytes], None], data: bytes, measure: bool = True) -> int:
    """Run `target` on `data`; TihubError is the expected refusal. Returns the peak bytes
    traced (0 when not measured); raises OverBudget past `limit_for(data)`. Tracing is started
    for the call and stopped after it, unless the caller already traces (fuzz/run.py does)."""
    started = False
    if measure:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            started = True
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    try:
        try:
            target(data)
        except TihubError:
            pass
        if not measure:
            return 0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    if peak > limit_for(data):
        raise OverBudget(f"{target.__name__}: a {len(data)}-byte input peaked at {peak} bytes (limit {limit_for(data)})")
    return peak
