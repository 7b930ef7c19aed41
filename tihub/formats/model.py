"""The one normalized shape every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Text-encoder key by vector width. SDXL files carry clip_l (768) and clip_g (1280) together.
ENCODER_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}


@dataclass
class Embedding:
    """A textual-inversion embedding, independent of the file layout it came from.

    `vectors` maps a text-encoder key to a float array of shape [n_vectors, width]:
    - SD1.x:  {"clip_l": [n, 768]}
    - SD2.x:  {"clip_h": [n, 1024]}
    - SDXL:   {"clip_l": [n, 768], "clip_g": [n, 1280]}
    Arrays keep the file's dtype (float32, float16, or bfloat16 widened to float32 with
    `dtype == "bf16"` recorded). They never alias the caller's bytes, another file's arrays or each
    other (they may be views into a private buffer the reader allocated for this one call).
    """

    name: str  # trigger word: the file stem
    vectors: dict[str, np.ndarray]
    dtype: str = "f32"  # "f32" | "f16" | "bf16" | "f64" as stored in the file
    internal_name: str | None = None  # the name stored inside the file (A1111 `name`, diffusers token)
    step: int | None = None
    sd_checkpoint: str | None = None  # hash of the model it was trained on (8 or 10 hex)
    sd_checkpoint_name: str | None = None
    layout: str = "unknown"  # "a1111" | "original-ti" | "diffusers" | "emb_params" | "sdxl" | "xl-inversion" | ...
    container: str = "unknown"  # "torch-zip" | "torch-legacy" | "safetensors" | "png" | "webp"
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the file said

    @property
    def vector_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0]) if self.vectors else 0

    @property
    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.vectors.items()}

    @property
    def width(self) -> int:
        """Total width: 768 (SD1), 1024 (SD2), 2048 (SDXL clip_l + clip_g)."""
        return sum(self.widths.values())

    @property
    def base(self) -> str:
        """`sd1`, `sd2`, `sdxl` or `unknown`, from the widths."""
        w = self.widths
        if set(w) == {"clip_l", "clip_g"}:
            return "sdxl"
        if set(w) == {"clip_l"}:
            return "sd1"
        if set(w) == {"clip_h"}:
            return "sd2"
        return "unknown"
