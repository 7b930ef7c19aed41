"""Every row of the shared corpus MANIFEST: embeddings read with the expected base, vector count
and metadata; everything else is refused with NotAnEmbedding and a sentence naming what it is."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tihub.errors import NotAnEmbedding
from tihub.formats import read_embedding

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"  # as in conftest.py
_EMBEDDING_KIND = re.compile(
    r"A1111 \.pt|original-TI|emb_params|diffusers learned_embeds|safetensors diffusers-style|"
    r"safetensors SDXL|custom SDXL|PNG embedding"
)


def _rows() -> list[dict[str, str]]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with open(manifest, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


ROWS = _rows()
EMBEDDING_ROWS = [r for r in ROWS if _EMBEDDING_KIND.search(r["kind"]) and not r["kind"].startswith("NOT")]
OTHER_ROWS = [r for r in ROWS if r not in EMBEDDING_ROWS]


def _json_after(details: str, key: str) -> Any:
    for part in details.split(" | "):
        if part.startswith(key + "="):
            return json.loads(part[len(key) + 1 :])
    return None


def _expected(row: dict[str, str]) -> dict[str, Any]:
    kind, details = row["kind"], row["details"]
    base = "sdxl" if "SDXL" in kind else "sd2" if "SD2.x" in kind else "sd1"
    counts: list[int] = []
    # torch files: /path=tensor[f32,5x768,cuda:0] (skip the int64 string_to_token tensors)
    for dtype, shape in re.findall(r"=(?:tensor|param)\[(\w+),([\dx]*),", details):
        if dtype == "i64":
            continue
        dims = [int(x) for x in shape.split("x")] if shape else []
        counts.append(dims[0] if len(dims) == 2 else 1)
    keys = _json_after(details, "keys")
    if isinstance(keys, dict):
        for spec in keys.values():
            dims = [int(x) for x in re.findall(r"\d+", spec.split("[", 1)[1])]
            counts.append(dims[0] if len(dims) == 2 else 1)
    meta = _json_after(details, "meta") or _json_after(details, "text_embed") or {}
    for shape in (meta.get("string_to_param_shapes") or {}).values():
        counts.append(shape[0] if len(shape) == 2 else 1)
    dtype = "bf16" if "dtypes=bf16" in details else "f32"
    return {"base": base, "count": counts[0] if counts else None, "meta": meta, "dtype": dtype}


def _id(row: dict[str, str]) -> str:
    return row["relative_path"]


def test_manifest_has_rows_of_both_sorts(corpus: Path) -> None:
    assert len(EMBEDDING_ROWS) >= 40
    assert len(OTHER_ROWS) >= 15


@pytest.mark.parametrize("row", EMBEDDING_ROWS, ids=_id)
def test_corpus_embedding_reads(row: dict[str, str], corpus: Path) -> None:
    path = corpus / row["relative_path"]
    emb = read_embedding(path)
    want = _expected(row)
    assert emb.name == path.stem
    assert emb.base == want["base"]
    assert want["count"] is not None
    assert emb.vector_count == want["count"]
    assert emb.dtype == want["dtype"]
    meta = want["meta"]
    if "name" in meta:
        assert emb.internal_name == meta["name"]
    for key in ("step", "sd_checkpoint", "sd_checkpoint_name"):
        if key in meta:
            assert getattr(emb, key) == meta[key], key
    for arr in emb.vectors.values():
        assert arr.ndim == 2 and arr.flags.writeable and np.isfinite(arr).all()
    if "original-TI" in row["kind"]:
        assert emb.layout == "original-ti"
    if "torch zip" in row["kind"]:
        assert emb.container == "torch-zip"


@pytest.mark.parametrize("row", [r for r in EMBEDDING_ROWS if "pixel_embed=" in r["details"]], ids=_id)
def test_corpus_png_pixel_payload_matches_text_chunk(row: dict[str, str], corpus: Path) -> None:
    """The pixel encoding (runtimes.md 2.7) decodes to the same vectors as the text chunk."""
    import base64
    import io

    from PIL import Image

    from tihub.formats.image import _pixel_payload, decode_json_payload

    data = (corpus / row["relative_path"]).read_bytes()
    im = Image.open(io.BytesIO(data))
    pixels = decode_json_payload(_pixel_payload(im, "x") or b"", "x")
    text = decode_json_payload(base64.b64decode(im.info["sd-ti-embedding"]), "x")
    assert np.array_equal(pixels["string_to_param"]["*"], text["string_to_param"]["*"])
    assert pixels["name"] == text["name"] == _json_after(row["details"], "pixel_embed")["name"]


_KIND_WORDS = [
    ("T5", "t5", "T5"),
    ("JPEG", "jpeg", "JPEG"),
    ("bare tensor", "tensor", "bare tensor"),
    ("PNG with 'parameters'", "image", "generation parameters"),
    ("stealth", "image", "image"),
    ("ComfyUI", "image", "image"),
    ("InvokeAI", "image", "image"),
    ("HTML", "html", "HTML"),
    ("JSON", "json", "JSON"),
    ("json", "json", "JSON"),
    ("Markdown", "text", "text"),
    ("README", "text", "text"),
    (".txt", "text", "text"),
    ("gitattributes", "text", "text"),
]


@pytest.mark.parametrize("row", OTHER_ROWS, ids=_id)
def test_corpus_non_embedding_is_refused(row: dict[str, str], corpus: Path) -> None:
    path = corpus / row["relative_path"]
    with pytest.raises(NotAnEmbedding) as info:
        read_embedding(path)
    message = str(info.value)
    assert path.name in message and message.endswith(".") and "\n" not in message
    for needle, kind, word in _KIND_WORDS:
        if needle in row["kind"]:
            assert info.value.kind == kind, (row["kind"], info.value.kind)
            assert word in message, message
            break
    else:
        pytest.fail(f"no expectation for manifest kind {row['kind']!r}")
