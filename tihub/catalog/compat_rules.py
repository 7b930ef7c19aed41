"""Family rules shared by search, show and compat: which embedding base fits which model family.

Embedding bases are `sd1`, `sd2`, `sdxl` or `unknown`; models can also be `sdxl-refiner`, `sd3`
or `flux` (see `ENCODERS`). An embedding's base comes from its measured
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
    if base in FAMILIES and family in ("sdxl-refiner", "sd3", "flux"):
        return family_fit(ENCODERS[base], family)
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


# --------------------------------------------------------------------------------------------
# Model families beyond SD1/SD2/SDXL, and the text encoders each one has

# The SDXL refiner has only the OpenCLIP-G encoder; SD3/3.5 has CLIP-L, OpenCLIP-G and T5-XXL;
# Flux has CLIP-L and T5-XXL (T5-XXL is 4096 wide).
MODEL_FAMILIES = (*FAMILIES, "sdxl-refiner", "sd3", "flux")
ENCODERS: dict[str, frozenset[str]] = {
    "sd1": frozenset({"clip_l"}),
    "sd2": frozenset({"clip_h"}),
    "sdxl": frozenset({"clip_l", "clip_g"}),
    "sdxl-refiner": frozenset({"clip_g"}),
    "sd3": frozenset({"clip_l", "clip_g", "t5xxl"}),
    "flux": frozenset({"clip_l", "t5xxl"}),
}
ENCODER_LABELS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "clip_h": "OpenCLIP-H", "t5xxl": "T5-XXL"}
FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner",
                 "sd3": "SD3", "flux": "Flux"}


def encoders_of(widths: Mapping[str, int] | None) -> frozenset[str]:
    """The text encoders an embedding of these widths targets (`t5`/`t5xxl` both name T5-XXL)."""
    return frozenset("t5xxl" if k in ("t5", "t5xxl") else k for k in (widths or {}))


def family_fit(embedding: frozenset[str], family: str) -> str:
    """The verdict by encoders alone: the same encoders -> same-family; some shared -> partial
    (an SDXL embedding's clip_g on the refiner, a T5 embedding on Flux); none -> wont-load.
    `fits` keeps the older rule for sd1/sd2/sdxl models (an SDXL embedding on SD1 wont-load)."""
    have = ENCODERS.get(family)
    if not embedding or have is None:
        return UNKNOWN
    if embedding == have:
        return SAME_FAMILY
    if embedding & have:
        return PARTIAL
    return WONT_LOAD


# --------------------------------------------------------------------------------------------
# Fine-tune lines: same architecture, trained for a different look

# Pony Diffusion, Illustrious and NoobAI are SDXL fine-tunes: their embeddings load on any SDXL
# model, but were made for that line's look and prompt style (Pony's score_9 tags, booru tags).
LINES = ("pony", "illustrious", "noobai")
_LINE_RES = {
    "noobai": re.compile(r"noob[ _-]?ai|\bnoob\b", re.IGNORECASE),  # before illustrious: NoobAI is built on it
    "illustrious": re.compile(r"illustrious|\bilxl\b", re.IGNORECASE),
    "pony": re.compile(r"pony", re.IGNORECASE),
}


def model_family(declared: str | None) -> str:
    """A model's family from a declared base-model text (Civitai `baseModel`, a name): also
    `flux`, `sd3` and `sdxl-refiner`, else as `normalize_base`."""
    t = (declared or "").strip().lower()
    if re.search(r"\bflux", t):
        return "flux"
    if re.search(r"\b(sd|stable diffusion)[ _-]?3(\.5)?\b|\bsd3", t):
        return "sd3"
    if "refiner" in t and ("xl" in t or "sdxl" in t):
        return "sdxl-refiner"
    return normalize_base(declared)


def line_of(*texts: str | None) -> str | None:
    """The SDXL fine-tune line (pony | illustrious | noobai) a base-model text, model name or
    file name names, first match wins; None for base SDXL or anything else."""
    for t in texts:
        if not t:
            continue
        for line, rx in _LINE_RES.items():
            if rx.search(t):
                return line
    return None


LINE_LABELS = {"pony": "Pony", "illustrious": "Illustrious", "noobai": "NoobAI"}


# --------------------------------------------------------------------------------------------
# Per-app verdicts

APPS = ("a1111", "forge", "comfyui", "invokeai", "diffusers")
APP_LABELS = {"a1111": "A1111", "forge": "Forge", "comfyui": "ComfyUI", "invokeai": "InvokeAI", "diffusers": "diffusers"}

# Which model families each app runs at all (embeddings aside).
#   A1111: sd_models_config / sd_models_xl: SD1, SD2, SDXL base and refiner, SD3 (v1.10); no Flux.
#   Forge (lllyasviel/stable-diffusion-webui-forge, backend/loader.py): SD1, SD2, SDXL, SD3, Flux.
#   ComfyUI (comfy/supported_models.py): all of them.
#   InvokeAI (backend/model_manager/taxonomy.py BaseModelType): sd-1, sd-2, sdxl, sdxl-refiner, sd-3, flux.
#   diffusers: a pipeline per family.
_RUNS = {
    "a1111": {"sd1", "sd2", "sdxl", "sdxl-refiner", "sd3"},
    "forge": {"sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux"},
    "comfyui": set(MODEL_FAMILIES),
    "invokeai": set(MODEL_FAMILIES),
    "diffusers": set(MODEL_FAMILIES),
}


def app_fits(embedding: frozenset[str], family: str | None, fit: str, reason: str | None = None) -> dict[str, dict[str, str | None]]:
    """Each app's verdict, `{app: {"fit", "reason"}}`: the family-level `fit` (with its `reason`)
    unless the app does something else with the file (`app_verdict`: A1111 lists an SD1
    embedding on SDXL as skipped, ComfyUI applies it to CLIP-L only, ...). SD3 and Flux are
    judged per app even when the family verdict is unknown."""
    out: dict[str, dict[str, str | None]] = {}
    for app in APPS:
        special = app_verdict(app, embedding, family) if fit != UNKNOWN or family in ("sd3", "flux") else None
        out[app] = {"fit": special[0], "reason": special[1]} if special else {"fit": fit, "reason": reason}
    return out


def app_verdict(app: str, embedding: frozenset[str], family: str | None) -> tuple[str, str] | None:
    """(fit, what the app does) for an embedding targeting `embedding` encoders on a model of
    `family`, or None when the family-level verdict already says it (it loads fully in every
    app, or nothing is known). Each rule cites the code it follows."""
    if not embedding or family not in ENCODERS:
        return None
    label = APP_LABELS[app]
    fam = FAMILY_LABELS[family]
    if family not in _RUNS[app]:
        return WONT_LOAD, f"{label} does not run {fam} models"
    generic = family_fit(embedding, family)
    have = ENCODERS[family]
    shared = embedding & have
    if app in ("a1111", "forge"):
        # A1111 modules/textual_inversion/textual_inversion.py, EmbeddingDatabase.load_from_file:
        # an embedding whose shape (SDXL: clip_l + clip_g widths summed) differs from the model's
        # expected_shape goes to `skipped_embeddings` ("Textual inversion embeddings skipped").
        # Forge keeps that database (modules/textual_inversion/textual_inversion.py) per engine.
        if family in ("sd3", "flux"):
            # Not checked against their SD3/Flux text processing: say so rather than guess.
            return UNKNOWN, f"tihub has not checked how {label} applies embeddings to {fam} models"
        if generic == SAME_FAMILY:
            return None
        return WONT_LOAD, f"{label} lists it as skipped (its widths do not fit the {fam} model)"
    if app == "comfyui":
        # comfy/sd1_clip.py load_embed + SDTokenizer(embedding_key=...): each encoder takes the
        # file's tensor of its own key (clip_l, clip_g, t5xxl; SD2 clip_h) or else the first
        # tensor, and an embedding whose width differs is dropped with a "shape mismatch"
        # warning (comfy/sd1_clip.py, _try_get_embedding); sdxl_clip.py / sd3_clip.py / flux.py
        # give each encoder its own tokenizer, so the fitting part is used.
        if generic == SAME_FAMILY:
            return None
        if shared:
            used = " and ".join(ENCODER_LABELS[k] for k in sorted(shared))
            return PARTIAL, f"ComfyUI applies it to {used} only and warns of a shape mismatch for the other encoder"
        return WONT_LOAD, "ComfyUI warns of a shape mismatch and leaves it out of the prompt"
    if app == "invokeai":
        # invokeai/backend/model_manager/configs/textual_inversion.py: the base of a TI file is
        # read from its width (768 sd-1, 1024 sd-2, 1280/2048 sdxl); backend/textual_inversion.py
        # and the TI loader only apply an embedding whose base equals the main model's base.
        # There is no textual inversion for the refiner, SD3 or Flux bases.
        if family in ("sdxl-refiner", "sd3", "flux"):
            return WONT_LOAD, f"InvokeAI has no textual inversion for {fam} models, so it refuses it"
        if generic == SAME_FAMILY:
            return None
        return WONT_LOAD, f"InvokeAI refuses it (the embedding's base is not the {fam} model's base)"
    if app == "diffusers":
        # diffusers/loaders/textual_inversion.py load_textual_inversion: loads into
        # `text_encoder` unless told otherwise and raises ValueError when the width differs from
        # that encoder's; a file with two tensors (clip_l + clip_g) must be split by hand.
        # StableDiffusion3Pipeline has no TextualInversionLoaderMixin; the SDXL refiner
        # pipeline has no `text_encoder` (only text_encoder_2).
        if family == "sd3":
            return WONT_LOAD, "diffusers' SD3 pipeline has no load_textual_inversion"
        if generic == SAME_FAMILY:
            return None
        if family == "sdxl" and embedding == {"clip_l"}:
            return PARTIAL, ("diffusers loads it into text_encoder (CLIP-L) only; text_encoder_2 reads the "
                             "trigger as plain words")
        if family == "flux" and embedding == {"clip_l"}:
            return PARTIAL, "diffusers loads it into the Flux pipeline's CLIP-L text_encoder only"
        if shared and len(embedding) > 1:
            used = " and ".join(ENCODER_LABELS[k] for k in sorted(shared))
            return PARTIAL, f"diffusers loads only a tensor passed by hand (for {used}); load_textual_inversion refuses the two-tensor file as it is"
        return WONT_LOAD, "diffusers' load_textual_inversion raises a ValueError (width mismatch)"
    return None
