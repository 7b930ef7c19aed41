"""Family rules shared by search, show and compat: which embedding base fits which model family.

Families are `sd1`, `sd2`, `sdxl` or `unknown`. An embedding's base comes from its measured
widths when known (768 = SD1 CLIP-L, 1024 = SD2 OpenCLIP-H, 768 + 1280 = SDXL), else from the
base model its source declares ("SD 1.5", "Pony", "Waifu Diffusion v1.3", ...).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

FAMILIES = ("sd1", "sd2", "sdxl")

# Verdicts, strongest first.
TRAINED_ON = "trained-on"  # its sd_checkpoint hash names this very model
SAME_FAMILY = "same-family"  # loads; may look different from the author's pictures
PARTIAL = "partial"  # loads into part of the model only (an SD1 embedding on SDXL: CLIP-L only)
WONT_LOAD = "wont-load"  # width mismatch
UNKNOWN = "unknown"

_SDXL_WORDS = ("sdxl", "sd xl", "pony", "illustrious", "noobai", "noob ai", "animagine xl", "playground")
_SD2_RE = re.compile(r"\b(sd|stable diffusion)[ _-]?v?2(\.\d)?\b|\bsd2\b|\bwd[ _-]?1\.4\b|waifu diffusion v?1\.4")
_SD1_RE = re.compile(r"\b(sd|stable diffusion)[ _-]?v?1(\.\d)?\b|\bsd1\b|\bsd15\b|\bsd14\b")
# SD1.x fine-tunes that link pages and Civitai name instead of a version.
_SD1_WORDS = (
    "waifu diffusion",
    "wd 1.2",
    "wd1.2",
    "wd 1.3",
    "wd1.3",
    "nai",
    "novelai",
    "anything",
    "yiffy",
    "f222",
    "hassan",
    "dreamlike",
    "protogen",
    "deliberate",
    "realistic vision",
    "counterfeit",
    "abyssorange",
    "orangemix",
)


@functools.lru_cache(maxsize=4096)
def normalize_base(declared: str | None) -> str:
    """Map a declared base-model text to sd1 | sd2 | sdxl | unknown."""
    if not declared:
        return "unknown"
    t = declared.strip().lower()
    if t in FAMILIES:
        return t
    if any(w in t for w in _SDXL_WORDS) or re.search(r"\bxl\b", t):
        return "sdxl"
    if _SD2_RE.search(t):
        return "sd2"
    if _SD1_RE.search(t):
        return "sd1"
    if any(re.search(rf"(^|\W){re.escape(w)}($|\W)", t) for w in _SD1_WORDS):
        return "sd1"
    return "unknown"


def base_from_widths(widths: Mapping[str, int] | None) -> str:
    """sd1 | sd2 | sdxl | unknown from a {"clip_l": 768, ...} map."""
    if not widths:
        return "unknown"
    keys = set(widths)
    if keys == {"clip_l", "clip_g"}:
        return "sdxl"
    if keys == {"clip_l"}:
        return "sd1"
    if keys == {"clip_h"}:
        return "sd2"
    return "unknown"


def _norm_hash(h: str | None) -> str:
    return (h or "").strip().lower().removeprefix("0x")


def fits(
    entry_base: str | None,
    model_family: str | None,
    sd_checkpoint: str | None = None,
    model_hashes: Iterable[str | None] = (),
) -> str:
    """How an embedding of `entry_base` fits a model of `model_family`.

    Returns trained-on / same-family / partial / wont-load / unknown. `trained-on` needs the
    embedding's `sd_checkpoint` (8-hex old hash or 10-hex AutoV2) and the model's hashes (full
    sha256, AutoV2, old hash): it matches when one equals the checkpoint or the sha256 starts
    with it.
    """
    ck = _norm_hash(sd_checkpoint)
    base = (entry_base or "unknown").lower()
    family = (model_family or "unknown").lower()
    if ck and len(ck) >= 8 and (base == family or base == "unknown" or family == "unknown"):
        for h in model_hashes:
            mh = _norm_hash(h)
            if mh and (mh == ck or (len(mh) == 64 and mh.startswith(ck) and len(ck) == 10)):
                return TRAINED_ON
    if base not in FAMILIES or family not in FAMILIES:
        return UNKNOWN
    if base == family:
        return SAME_FAMILY
    if base == "sd1" and family == "sdxl":
        return PARTIAL
    return WONT_LOAD


def loads(verdict: str) -> bool:
    """Whether a verdict means the embedding loads fully."""
    return verdict in (TRAINED_ON, SAME_FAMILY)
