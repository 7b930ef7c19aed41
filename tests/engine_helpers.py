"""Shared helpers for the engine tests (tiny widths the real readers refuse on purpose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tihub.formats.model import Embedding


def write_emb(path: Path, *arrays: np.ndarray) -> Path:
    """One array: {"emb_params"}; two: SDXL {"clip_l", "clip_g"}."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if len(arrays) == 1:
        save_file({"emb_params": np.asarray(arrays[0], dtype=np.float32)}, str(path))
    else:
        save_file({"clip_l": np.asarray(arrays[0], dtype=np.float32), "clip_g": np.asarray(arrays[1], dtype=np.float32)}, str(path))
    return path


def tiny_reader(path: Path) -> Embedding:
    """Reads the files `write_emb` writes (32-wide vectors, which tihub.formats refuses)."""
    from safetensors.numpy import load_file

    from tihub.errors import FormatError

    try:
        d = load_file(str(path))
    except Exception as exc:
        raise FormatError(f"{path} is not a readable safetensors file") from exc
    if "clip_g" in d:
        return Embedding(path.stem, {"clip_l": d["clip_l"], "clip_g": d["clip_g"]})
    return Embedding(path.stem, {"clip_l": d["emb_params"]})


def vec(n: int, width: int = 32, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * scale).astype(np.float32)


def capture_encoder_inputs(text_encoder):
    """Record the hidden states entering the transformer (token + position embeddings)."""
    seen = []

    def pre(_m, args, kwargs):
        seen.append((kwargs.get("inputs_embeds") if "inputs_embeds" in kwargs else args[0]).detach().clone())

    enc = getattr(text_encoder, "encoder", None) or text_encoder.text_model.encoder
    return seen, enc.register_forward_pre_hook(pre, with_kwargs=True)


def token_rows(text_encoder, hidden, start, n):
    """Subtract position embeddings: what the token-embedding table (or our splice) gave."""
    emb = getattr(text_encoder, "embeddings", None) or text_encoder.text_model.embeddings
    pos = emb.position_embedding.weight[start:start + n]
    return (hidden[start:start + n] - pos).detach().numpy()
