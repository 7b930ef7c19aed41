"""The real CLIP tokenizer vocabulary, built offline from the BPE file shipped in tihub/data.

`write_clip_tokenizer_files(dir)` writes `vocab.json` + `merges.txt` (identical to the files in
SD 1.x/2.x/XL tokenizer folders); `clip_tokenizer()` returns a transformers CLIPTokenizer built
from them (engine side only: it imports transformers).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-to-printable-unicode table, in vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    raw = resources.files("tihub.data").joinpath("clip", BPE_FILE).read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    base = _bytes_to_unicode()
    tokens = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(out_dir: str | Path) -> Path:
    """Write vocab.json and merges.txt into `out_dir` (its tokenizer_config.json, if any, is the caller's)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out


def clip_tokenizer(pad_token: str = "<|endoftext|>"):  # type: ignore[no-untyped-def]
    """A transformers CLIPTokenizer with the real vocabulary (SDXL's tokenizer_2 uses pad "!")."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split()) for m in merges],
        model_max_length=77,
        pad_token=pad_token,
    )
