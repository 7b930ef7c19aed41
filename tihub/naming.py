"""Safe file names for embeddings: the file stem is the prompt word, and names come from strangers.

A name taken from a catalogue entry, a URL, a Content-Disposition header or a diffusers token is
reduced to ONE harmless path component:

- Unicode NFC; control and format characters (NUL, CR, ANSI escapes, RTL overrides, zero-width
  joiners) removed;
- every path separator, including look-alikes (fullwidth `／` `＼`, division and fraction slashes),
  splits the name and only the last meaningful part is kept (`../../x` -> `x`, `C:\\x` -> `x`,
  `\\\\server\\share\\x` -> `x`);
- characters Windows forbids (`<>:"|?*`) become `_`; leading/trailing dots and spaces are stripped
  (no hidden files, no `.`/`..`, no Windows trailing-dot aliasing);
- a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9, also with a suffix like `nul.pt`)
  gets a `_` prefix;
- the UTF-8 length is capped (the `.part` temp name and the suffix must still fit in 255 bytes).

`inside(folder, name)` is the last line of defence: the joined path must resolve inside `folder`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from tihub.errors import UnsafeFile

MAX_STEM_BYTES = 150
FALLBACK = "embedding"

# Characters that act as (or look like) path separators.
_SEPARATORS = "/\\\uff0f\uff3c\u2215\u2044\u29f8\u29f9\u2216\ufe68\u2571\u2572"
_SEP_RE = re.compile("[" + re.escape(_SEPARATORS) + "]")
_FORBIDDEN_RE = re.compile(r'[<>:"|?*]')
_DEVICE_RE = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)$", re.IGNORECASE)
_DIFFUSERS_STEMS = {"learned_embeds", "learned_embeds-steps", "pytorch_model", "model", "embeddings"}


def _strip_controls(text: str) -> str:
    # Cc: C0/C1 controls incl. NUL, ESC; Cf: bidi overrides, zero-width chars; Cs/Co/Cn: junk.
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" and ch not in "\u2028\u2029")


def safe_stem(name: str | None, *, fallback: str = FALLBACK, max_bytes: int = MAX_STEM_BYTES) -> str:
    """Reduce `name` to one safe file stem (no suffix handling; see `safe_filename`)."""
    text = unicodedata.normalize("NFC", str(name or ""))
    text = _strip_controls(text)
    parts = [p for p in _SEP_RE.split(text)]
    # The last part that is more than dots/spaces; `C:` drive prefixes die with the separators.
    chosen = ""
    for part in reversed(parts):
        if part.strip(" .\t"):
            chosen = part
            break
    chosen = _FORBIDDEN_RE.sub("_", chosen)
    chosen = chosen.strip(" .\t")
    chosen = re.sub(r"\s+", " ", chosen)
    if not chosen:
        chosen = fallback
    if _DEVICE_RE.match(chosen.split(".", 1)[0].strip()):
        chosen = "_" + chosen
    return _cap(chosen, max_bytes).strip(" .") or fallback


def _cap(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def safe_filename(name: str | None, suffix: str, *, fallback: str = FALLBACK) -> str:
    """`safe_stem(name) + suffix`; a suffix already at the end of `name` is not doubled."""
    suffix = suffix.lower()
    raw = str(name or "")
    if suffix and raw.lower().endswith(suffix):
        raw = raw[: -len(suffix)]
    stem = safe_stem(raw, fallback=fallback)
    return stem + suffix


def is_generic_stem(stem: str) -> bool:
    """True for stems that say nothing about the embedding (`learned_embeds`, `model`, ...)."""
    return stem.lower() in _DIFFUSERS_STEMS


def token_stem(token: str | None) -> str | None:
    """A diffusers token like `<cat-toy>` as a file stem (`cat-toy`), or None when empty."""
    if not token:
        return None
    t = token.strip().strip("<>").strip()
    return t or None


def inside(folder: str | os.PathLike[str], filename: str) -> Path:
    """`folder / filename`, refusing anything that would resolve outside `folder`."""
    base = Path(folder).resolve()
    if filename in ("", ".", "..") or _SEP_RE.search(filename) or "\x00" in filename:
        raise UnsafeFile(f"The file name {filename!r} is not a single safe name; pass --name with a plain name.")
    target = (base / filename).resolve()
    if target.parent != base:
        raise UnsafeFile(f"The file name {filename!r} would leave the folder {base}; pass --name with a plain name.")
    return target
