"""What an entry is for (`object`, `style`, `negative`) when its source does not say.

Sources such as Civitai and the HF concepts library label the kind; local files, git repos and
link pages do not. A negative embedding is recognisable from its name and trigger words (the
community names them `EasyNegative`, `ng_deepnegative_v1_75t`, `bad-hands-5`, `badhandv4`,
`SDXL-HandsNeg`, `Pony-ScoresNeg`) or from a description that says to put it in the negative
prompt. Only `negative` is inferred; anything else stays unknown (None).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KINDS = ("object", "style", "negative")

# camelCase and digit boundaries split into words: "SDXL-HandsNeg" -> sdxl hands neg
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
# whole names the community uses for negative embeddings that carry no "neg" word
_NEGATIVE_NAME = re.compile(
    r"negative|^bad[-_ ]?(hands?|hand ?v\d|image|picture|prompt|artist|quality|anatomy|dream|pic)"
    r"|^badhand|unaesthetic|^(very)?bad(image|prompt|dream)|^fastnegative|^(easy|deep)neg",
    re.IGNORECASE,
)
_NEGATIVE_WORDS = {"neg", "negative", "negatives", "negembed"}
_NEGATIVE_TEXT = re.compile(
    r"\bnegative (prompt|embedding|embed|ti|textual inversion)s?\b|\bin (the |your )?negatives?\b"
    r"|\bas (a )?negative\b|\bnegative[- ]only\b",
    re.IGNORECASE,
)


def name_words(name: str) -> list[str]:
    """Lower-case words of a name, split at separators, camelCase and digits."""
    return [w.lower() for w in _WORDS.findall(name or "")]


def infer_kind(
    name: str | None,
    triggers: Iterable[str] = (),
    description: str | None = None,
    tags: Iterable[str] = (),
) -> str | None:
    """`negative` when the name, a trigger word, a tag or the description marks a negative
    embedding; otherwise None (not known)."""
    for label in [name or "", *triggers]:
        if _NEGATIVE_NAME.search(label) or _NEGATIVE_WORDS.intersection(name_words(label)):
            return "negative"
    if any("negative" in (t or "").lower() for t in tags):
        return "negative"
    if description and _NEGATIVE_TEXT.search(description):
        return "negative"
    return None
