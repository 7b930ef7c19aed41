"""`tihub explain`: what an embedding "means" on a model, as nearest vocabulary tokens.

For each vector of the embedding, the tokens of the model's own token-embedding table with the
highest cosine similarity are listed (the Embedding Inspector extension does the same inside
A1111), with the vector's length next to the table's average token length. The table is read
from the model file with the safe readers, without torch: a single-file `.safetensors` checkpoint
(SD1, SD2, SDXL key layouts) or a diffusers folder (`text_encoder/`, `text_encoder_2/`). Token
ids map to strings through tihub's copy of the CLIP BPE vocabulary (SD1, SD2 and SDXL share it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tihub.errors import FormatError, NotFound

# encoder -> checkpoint keys (first found wins), for single-file checkpoints
CHECKPOINT_KEYS: dict[str, tuple[str, ...]] = {
    "clip_l": (
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.embeddings.token_embedding.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
    "clip_h": ("cond_stage_model.model.token_embedding.weight",),
    "clip_g": ("conditioner.embedders.1.model.token_embedding.weight",),
}
DIFFUSERS_KEY = "text_model.embeddings.token_embedding.weight"
MAX_TABLE_BYTES = 1024 * 1024 * 1024
_NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def _read_tensor(path: Path, key: str) -> np.ndarray:
    """One tensor of a safetensors file, read by its header's byte range (validated first)."""
    from tihub.formats import read_safetensors_header

    h = read_safetensors_header(path)
    dtype, shape, begin, end = h.tensors[key]
    if end - begin > MAX_TABLE_BYTES:
        raise FormatError(f"The token table {key!r} in {path} is larger than tihub reads ({end - begin:,} bytes).")
    with open(path, "rb") as fh:
        fh.seek(h.data_offset + begin)
        raw = fh.read(end - begin)
    if dtype == "BF16":
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in _NP:
        arr = np.frombuffer(raw, dtype=_NP[dtype]).astype(np.float32)
    else:
        raise FormatError(f"The token table {key!r} in {path} is stored as {dtype}, not a float type.")
    return arr.reshape(shape)


def token_tables(model: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """{encoder: [vocab, width] float32} of a model file or diffusers folder."""
    from tihub.formats import read_safetensors_header

    p = Path(model).expanduser()
    if p.is_dir():
        out = {}
        for sub in ("text_encoder", "text_encoder_2"):
            for fname in ("model.safetensors", "model.fp16.safetensors"):
                f = p / sub / fname
                if f.is_file():
                    keys = read_safetensors_header(f).tensors
                    if DIFFUSERS_KEY in keys:
                        table = _read_tensor(f, DIFFUSERS_KEY)
                        enc = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}.get(table.shape[1], f"width{table.shape[1]}")
                        out[enc] = table
                    break
        if not out:
            raise NotFound(f"{p} has no text_encoder*/model.safetensors with a token table; give a diffusers folder or a .safetensors checkpoint.")
        return out
    if not p.is_file():
        raise NotFound(f"{p} is not a model file or folder; give a .safetensors checkpoint or a diffusers folder.")
    if p.suffix.lower() != ".safetensors":
        raise FormatError(f"{p} is not a .safetensors file; `tihub explain` reads token tables from .safetensors checkpoints or diffusers folders (convert the model first).")
    keys = read_safetensors_header(p).tensors
    out = {}
    for enc, candidates in CHECKPOINT_KEYS.items():
        key = next((k for k in candidates if k in keys), None)
        if key is not None:
            out[enc] = _read_tensor(p, key)
    if not out:
        raise NotFound(f"{p} holds no CLIP token-embedding table tihub knows; is it a Stable Diffusion checkpoint?")
    # an SDXL checkpoint names clip_l under embedders.0: the SD1 key list finds it too
    return out


def token_strings() -> list[str]:
    from tihub.clip_vocab import vocab_and_merges

    vocab, _ = vocab_and_merges()
    out = [""] * len(vocab)
    for tok, i in vocab.items():
        out[i] = tok
    return out


def explain(vectors: dict[str, Any], tables: dict[str, np.ndarray], top: int = 5) -> list[dict[str, Any]]:
    """Per encoder and vector: the `top` nearest tokens (token, id, cosine) and the norms."""
    words = token_strings()
    out = []
    for enc, arr in vectors.items():
        table = tables.get(enc)
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim == 1:
            a = a[None, :]
        if table is None or table.shape[1] != a.shape[1]:
            have = ", ".join(f"{k} {v.shape[1]}" for k, v in tables.items())
            out.append({"ok": False, "encoder": enc, "error": f"The model has no {enc} token table of width {a.shape[1]} (it has {have or 'none'})."})
            continue
        tnorm = np.linalg.norm(table, axis=1)
        unit = table / np.maximum(tnorm, 1e-12)[:, None]
        for i, v in enumerate(a):
            n = float(np.linalg.norm(v))
            sims = unit @ (v / max(n, 1e-12))
            best = np.argpartition(-sims, min(top, len(sims) - 1))[:top]
            best = best[np.argsort(-sims[best])]
            tokens = [{"token": (words[j] if j < len(words) else f"<{j}>").replace("</w>", ""), "id": int(j),
                       "score": round(float(sims[j]), 4)} for j in best]
            out.append({"ok": True, "encoder": enc, "index": i, "norm": round(n, 4),
                        "model_token_norm": round(float(tnorm.mean()), 4), "tokens": tokens})
    return out
