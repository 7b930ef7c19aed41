"""Index a link page: HTML or markdown (rentry pages, their `/raw` form, READMEs, static sites).

Every link to an embedding file (by suffix, or a download form on a known host) becomes a
Candidate whose description is the surrounding table row or list item and whose declared base is
the row's *Model* column or an SD1.5/NAI/Anything/WD/SD2/SDXL/Pony mention. Hosting pages tihub
cannot download by itself (mega, Drive folders, pixeldrain lists, Civitai model pages) become
manual entries (status "manual", the link as page_url). Hostile links (javascript:, data:,
file:, credentials, private/loopback hosts unless `allow_private`) are dropped.

Incremental: the page's ETag / Last-Modified go back as If-None-Match / If-Modified-Since, and
its sha256 is kept, so an unchanged page costs one request and raises SourceUnchanged.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from tihub.errors import SourceError
from tihub.sources._http import PAGE_CAP, SourceUnchanged, clean_link, fetcher_for
from tihub.sources.base import EMBED_SUFFIXES, Candidate, CandidateFile

log = logging.getLogger("tihub.sources")

GENERIC_STEMS = {"learned_embeds", "download", "file", "model", "embedding", "embeddings", "uc", "view", "raw", "index"}
GENERIC_TEXT = re.compile(r"^(download|link|here|click here|mirror|file|dl|get it|\W*|[\w.-]+\.(com|moe|nz|io|org|net|co|la|gg|app))$", re.I)
VIDEO_TEXT = re.compile(r"click to play|\bvideo\b|\bwatch\b|youtube", re.I)
MANUAL_HOSTS = ("mega.nz", "mega.co.nz", "mega.io", "ufile.io", "mediafire.com", "anonfiles.com", "workupload.com")
MAX_DEPTH = 256
CELL_SEP = " | "

# (pattern, family) for declared bases; the matched text is kept as the label.
BASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bSD\s?XL\b|\bSDXL\b", re.I), "sdxl"),
    (re.compile(r"\bPony(?:\s?Diffusion)?(?:\s?V\d+(?:\.\d+)?)?\b", re.I), "sdxl"),
    (re.compile(r"\b(?:Illustrious|NoobAI)\b", re.I), "sdxl"),
    (re.compile(r"\bWaifu\s?Diffusion\s?v?1\.[45]\b|\bWD\s?v?1\.[45]\b", re.I), "sd2"),
    (re.compile(r"\b(?:SD|Stable\s?Diffusion)\s?v?2(?:\.[01])?\b|\bv2-1_(?:512|768)\b", re.I), "sd2"),
    (re.compile(r"\bWaifu\s?Diffusion(?:\s?v?1\.[0-3](?:\s?beta)?)?\b|\bWD\s?v?1\.[0-3]\b", re.I), "sd1"),
    (re.compile(r"\bNAI\b|\bnovel\s?ai\b|\banimefull\b", re.I), "sd1"),
    (re.compile(r"\bAnything(?:\s?v?[345](?:\.\d)?)?\b", re.I), "sd1"),
    (re.compile(r"\bYiffy(?:\s?e\d+)?\b", re.I), "sd1"),
    (re.compile(r"\b(?:SD|Stable\s?Diffusion)\s?v?1\.[45]\b|\bSD\s?1\.x\b", re.I), "sd1"),
]


def detect_base(text: str) -> tuple[str, str] | None:
    """(label as written, family sd1|sd2|sdxl) of the first model mentioned in `text`."""
    best: tuple[int, str, str] | None = None
    for pattern, family in BASES:
        m = pattern.search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), m.group(0).strip(), family)
    return (best[1], best[2]) if best else None


def _clean(text: str, limit: int = 1000) -> str:
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?", "", text)  # ANSI / OSC-8
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]", " ", text)
    return re.sub(r"\s+", " ", text).strip()[:limit]


@dataclass
class Link:
    url: str
    text: str = ""
    attr: bool = False  # found in an attribute other than href (e.g. onclick="downloadAs('...')")
    image: bool = False  # a picture shown in the block (<img src>, markdown ![..](..)): a preview


@dataclass
class Block:
    """A table row, list item or paragraph with the links inside it."""

    kind: str  # "row" | "item" | "para"
    text: str = ""
    links: list[Link] = field(default_factory=list)
    cells: list[str] | None = None
    header: list[str] | None = None
    heading: str | None = None


# -- markdown -------------------------------------------------------------------------------

_MD_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\]){0,500})\]\(\s*<?([^()\s<>]{1,4096}(?:\([^()\s]{0,200}\)[^()\s<>]{0,200})?)>?(?:\s+\"[^\"]{0,300}\")?\s*\)")
_MD_REF = re.compile(r"(!?)\[([^\[\]]{1,500})\]\[([^\[\]]{0,200})\]")
_MD_DEF = re.compile(r"^\s{0,3}\[([^\]]{1,200})\]:\s*<?(\S{1,4096}?)>?(?:\s+[\"'(].*)?$")
_AUTOLINK = re.compile(r"<((?:https?|ftp|file|javascript|data):[^\s<>]{1,4096})>", re.I)
_BARE = re.compile(r"(?<![(\[<\"'=])\bhttps?://[^\s<>()\[\]\"'|`]{1,4096}", re.I)
_LIST = re.compile(r"^\s{0,12}(?:[-*+]|\d{1,9}[.)])\s+")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")


def _md_links(text: str, defs: dict[str, str]) -> tuple[str, list[Link]]:
    """Links in one markdown block, and the block's text with link markup reduced to link text."""
    links: list[Link] = []

    def inline(m: re.Match[str]) -> str:
        if m.group(1):  # image
            links.append(Link(m.group(3), _clean(m.group(2), 200), image=True))
            return m.group(2)
        for img in re.finditer(r"!\[([^\]]*)\]\(\s*<?([^()\s<>]{1,4096})>?[^)]*\)", m.group(2)):  # [![pic](..)](link)
            links.append(Link(img.group(2), _clean(img.group(1), 200), image=True))
        label = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))
        links.append(Link(m.group(3), _clean(label, 200)))
        return label

    def ref(m: re.Match[str]) -> str:
        key = (m.group(3) or m.group(2)).strip().lower()
        if not m.group(1) and key in defs:
            links.append(Link(defs[key], _clean(m.group(2), 200)))
        return m.group(2)

    out = _MD_LINK.sub(inline, text)
    out = _MD_REF.sub(ref, out)

    def auto(m: re.Match[str]) -> str:
        links.append(Link(m.group(1), ""))
        return m.group(1)

    out = _AUTOLINK.sub(auto, out)
    known = {link.url for link in links}
    for m in _BARE.finditer(out):
        u = m.group(0).rstrip(".,;:!?*_~")
        if u not in known:
            links.append(Link(u, ""))
            known.add(u)
    out = re.sub(r"^\s*->\s*|\s*<-\s*$", "", out, flags=re.M)  # rentry centring
    out = re.sub(r"[*_`~]{1,3}", "", out)
    return out, links


def _split_row(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells, depth, cur = [], 0, []
    for ch in s:  # a `|` inside [...] or (...) of a link does not split
        if ch in "[(":
            depth += 1
        elif ch in "])" and depth:
            depth -= 1
        if ch == "|" and depth == 0:
            cells.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    cells.append("".join(cur))
    return [c.strip() for c in cells]


def parse_markdown(text: str) -> list[Block]:
    lines = text.splitlines()
    defs: dict[str, str] = {}
    for line in lines:
        m = _MD_DEF.match(line)
        if m:
            defs[m.group(1).strip().lower()] = m.group(2)
    blocks: list[Block] = []
    heading: str | None = None
    header: list[str] | None = None
    para: list[str] = []
    item: list[str] | None = None
    in_code = False

    def flush() -> None:
        nonlocal para, item
        for kind, chunk in (("para", para), ("item", item)):
            if chunk:
                body, links = _md_links("\n".join(chunk), defs)
                if links:
                    blocks.append(Block(kind, _clean(body), links, heading=heading))
        para, item = [], None

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            flush()
            in_code = not in_code
            i += 1
            continue
        if in_code or _MD_DEF.match(line):
            i += 1
            continue
        h = _HEADING.match(line)
        if h:
            flush()
            heading = _clean(_md_links(h.group(2), defs)[0], 200)
            header = None
            i += 1
            continue
        if "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]) and "-" in lines[i + 1]:
            flush()
            header = [_clean(_md_links(c, defs)[0], 100) for c in _split_row(line)]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                cells_raw = _split_row(lines[i])
                cells, links = [], []
                for c in cells_raw:
                    body, ls = _md_links(c, defs)
                    cells.append(_clean(body, 300))
                    links.extend(ls)
                if links:
                    blocks.append(Block("row", CELL_SEP.join(c for c in cells if c), links, cells, header, heading))
                i += 1
            header = None
            continue
        if not line.strip():
            flush()
        elif _LIST.match(line):
            flush()
            item = [_LIST.sub("", line, count=1)]
        elif item is not None and (line.startswith((" ", "\t"))):
            item.append(line.strip())
        elif item is not None:
            flush()
            para.append(line)
        else:
            para.append(line)
        i += 1
    flush()
    return blocks


# -- HTML -----------------------------------------------------------------------------------

_BLOCKS = {"tr", "li", "p", "div", "dd", "dt", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
           "pre", "section", "article", "ul", "ol", "table", "thead", "tbody", "details", "summary", "figure", "body"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_ATTR_URL = re.compile(r"""https?://[^\s'"<>()\\]{1,4096}""", re.I)


class _Node:
    __slots__ = ("tag", "text", "links", "cells", "header", "heading")

    def __init__(self, tag: str, heading: str | None) -> None:
        self.tag = tag
        self.text: list[str] = []
        self.links: list[Link] = []
        self.cells: list[str] | None = [] if tag == "tr" else None
        self.header: list[str] | None = None
        self.heading = heading

    def joined(self, limit: int = 4000) -> str:
        out, size = [], 0
        for t in self.text:  # only the first few KB of a block matter; never join megabytes
            out.append(t)
            size += len(t) + 1
            if size > 4 * limit:
                break
        return _clean(" ".join(out)[: 4 * limit], limit)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[_Node] = [_Node("body", None)]
        self.blocks: list[Block] = []
        self.base: str | None = None
        self.heading: str | None = None
        self.link: Link | None = None
        self.skip = 0  # inside <script>/<style>
        self.tables: list[list[str] | None] = []  # header of each open table

    # stack helpers
    def _pop_to(self, tag: str, stop: set[str]) -> None:
        for k in range(len(self.stack) - 1, 0, -1):
            t = self.stack[k].tag
            if t == tag:
                while len(self.stack) > k:
                    self._close()
                return
            if t in stop:
                return

    def _close(self) -> None:
        node = self.stack.pop()
        parent = self.stack[-1] if self.stack else None
        text = node.joined()
        if node.tag in _HEADINGS:
            self.heading = text[:200] or self.heading
        if node.tag in ("td", "th") and parent is not None:
            row = next((n for n in reversed(self.stack) if n.tag == "tr"), None)
            if row is not None and row.cells is not None:
                row.cells.append(text[:300])
        if node.tag == "tr" and self.tables and self.tables[-1] is None and node.cells and all(k.image for k in node.links):
            self.tables[-1] = node.cells  # the first row without links names the columns
        if node.tag == "table" and self.tables:
            self.tables.pop()
        if node.links:
            kind = "row" if node.tag == "tr" else "item" if node.tag == "li" else "para"
            header = node.header if node.tag == "tr" else None
            self.blocks.append(Block(kind, text if node.tag != "tr" else CELL_SEP.join(c for c in node.cells or [] if c),
                                     node.links, node.cells, header, node.heading))
        if parent is not None:
            parent.text.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "template", "noscript"):
            self.skip += 1
            return
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"].strip()
        if tag in _BLOCKS:
            if tag == "li":
                self._pop_to("li", {"ul", "ol"})
            elif tag == "tr":
                self._pop_to("tr", {"table"})
            elif tag in ("td", "th"):
                self._pop_to("td", {"tr"})
                self._pop_to("th", {"tr"})
            elif tag in ("dt", "dd"):
                self._pop_to("dt", {"dl"})
                self._pop_to("dd", {"dl"})
            if self.stack[-1].tag == "p" and tag not in ("td", "th"):
                self._close()
            if len(self.stack) < MAX_DEPTH:
                node = _Node(tag, self.heading)
                if tag == "tr" and self.tables:
                    node.header = self.tables[-1]
                if tag == "table":
                    self.tables.append(None)
                self.stack.append(node)
        if tag == "br":
            self.stack[-1].text.append(" ")
        target = self._owner()
        if tag == "img" and a.get("src"):
            target.links.append(Link(a["src"].strip(), _clean(a.get("alt", ""), 200), image=True))
        if tag == "a" and a.get("href"):
            self.link = Link(a["href"].strip())
            target.links.append(self.link)
        for key, value in a.items():
            if key in ("href", "src") or not value or "://" not in value:
                continue
            names = re.findall(r"""['"]([^'"/\\]{1,200}\.(?:pt|bin|safetensors))['"]""", value) if key == "onclick" else []
            for m in _ATTR_URL.finditer(value):
                u = m.group(0)
                if _path_of(u).lower().endswith(EMBED_SUFFIXES):
                    # downloadAs('https://.../learned_embeds.bin', 'name.pt'): the second string names the file
                    target.links.append(Link(u, _clean(names[0], 200) if names else "", attr=True))

    def _owner(self) -> _Node:
        for node in reversed(self.stack):
            if node.tag in ("tr", "li"):
                return node
        for node in reversed(self.stack):
            if node.tag not in ("td", "th", "ul", "ol", "table", "thead", "tbody"):
                return node
        return self.stack[0]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "template", "noscript"):
            self.skip = max(0, self.skip - 1)
            return
        if tag == "a":
            self.link = None
            return
        if tag in _BLOCKS and tag != "body":
            if any(n.tag == tag for n in self.stack[1:]):
                self._pop_to(tag, set())

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self.stack[-1].text.append(data)
        if self.link is not None and len(self.link.text) < 200:
            self.link.text = _clean(self.link.text + " " + data, 200)

    def finish(self) -> list[Block]:
        self.close()
        while len(self.stack) > 1:
            self._close()
        node = self.stack[0]
        if node.links:
            self.blocks.append(Block("para", node.joined(), node.links, heading=node.heading))
        return self.blocks


def parse_html(text: str) -> tuple[list[Block], str | None]:
    p = _PageParser()
    try:
        p.feed(text)
        return p.finish(), p.base
    except (AssertionError, ValueError) as exc:  # pragma: no cover - HTMLParser is lenient
        raise SourceError(f"The page could not be parsed as HTML: {exc}.") from None


# -- links -> candidates ----------------------------------------------------------------------


@dataclass
class Target:
    url: str | None  # direct download URL, None for manual
    link: str  # the URL as linked (page to open)
    file_name: str
    manual: bool
    host: str


def classify(url: str, allow_private: bool) -> Target | None:
    """What an (absolute) link is: a direct download, a manual-download page, or None (skip)."""
    safe = clean_link(url, allow_private)
    if safe is None:
        return None
    parts = urlsplit(safe)
    host = (parts.hostname or "").lower()
    path = parts.path
    low = unquote(path).lower()
    base = posixpath.basename(unquote(path))

    def bare(h: str) -> bool:
        return host == h or host.endswith("." + h)

    nofrag = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    if any(bare(h) for h in MANUAL_HOSTS):
        return Target(None, safe, base if low.endswith(EMBED_SUFFIXES) else "", True, host)
    if bare("drive.google.com") or bare("docs.google.com"):
        m = re.search(r"/file/d/([\w-]{10,200})", path) or re.search(r"(?:^|&)id=([\w-]{10,200})", parts.query)
        if m and "/folders/" not in path:
            return Target(f"https://drive.google.com/uc?export=download&id={m.group(1)}", safe, "", False, host)
        return Target(None, safe, "", True, host)
    if bare("pixeldrain.com"):
        m = re.match(r"^/(?:u|api/file)/([\w-]{4,64})", path)
        if m:
            return Target(f"https://pixeldrain.com/api/file/{m.group(1)}", safe, "", False, host)
        return Target(None, safe, "", True, host) if path.startswith("/l/") else None
    if bare("civitai.com"):
        if re.match(r"^/api/download/models/\d+", path):
            return Target(nofrag, safe, "", False, host)
        if re.match(r"^/models/\d+", path):
            return Target(None, safe, "", True, host)
        return None
    if not low.endswith(EMBED_SUFFIXES):
        return None
    if host == "github.com":
        m = re.match(r"^/([^/]+)/([^/]+)/(?:blob|raw)/(.+)$", path)
        if m:
            return Target(f"https://raw.githubusercontent.com/{m.group(1)}/{m.group(2)}/{m.group(3)}", safe, base, False, host)
        return None
    if bare("huggingface.co") and "/blob/" in path:
        return Target(nofrag.replace("/blob/", "/resolve/", 1), safe, base, False, host)
    if "/-/blob/" in path:
        return Target(nofrag.replace("/-/blob/", "/-/raw/", 1), safe, base, False, host)
    return Target(nofrag, safe, base, False, host)


def _name_from(block: Block, link: Link, target: Target) -> str:
    if block.cells and block.header:
        hdr = [h.lower() for h in block.header]
        for key in ("name", "embedding", "title", "trigger", "concept", ""):
            if key in hdr:
                idx = hdr.index(key)
                if idx < len(block.cells) and block.cells[idx]:
                    return block.cells[idx]
    if block.cells:
        first = next((c for c in block.cells if c), "")
        if first and not GENERIC_TEXT.match(first):
            return first
    if link.text and not GENERIC_TEXT.match(link.text) and not link.text.lower().startswith(("http://", "https://")):
        text = re.sub(r"^download\s+", "", link.text, flags=re.I)
        return re.sub(r"\.(pt|bin|safetensors)$", "", text, flags=re.I) or text
    stem = posixpath.splitext(target.file_name)[0]
    lead = re.split(r"\s[-–—:|]\s|https?://|\(|\[", block.text, maxsplit=1)[0].strip(" -:*")
    if stem and stem.lower() not in GENERIC_STEMS and not re.fullmatch(r"[a-z0-9]{6}", stem):
        return stem
    if lead and len(lead) <= 80 and not GENERIC_TEXT.match(lead):
        return lead
    if block.heading:
        return block.heading
    return stem or target.host


def _base_from(block: Block) -> tuple[str | None, str | None]:
    if block.cells and block.header:
        hdr = [h.lower() for h in block.header]
        for key in ("model", "base", "base model", "trained on", "checkpoint"):
            if key in hdr:
                idx = hdr.index(key)
                cell = block.cells[idx] if idx < len(block.cells) else ""
                if cell:
                    found = detect_base(cell)
                    return cell, found[1] if found else None
                return None, None
    found = detect_base(block.text) or (detect_base(block.heading) if block.heading else None)
    return (found[0], found[1]) if found else (None, None)


def _join(base: str, raw: str) -> str | None:
    """`raw` made absolute against `base`, or None for a malformed link (e.g. `http://[x`)."""
    try:
        return urljoin(base, raw)
    except ValueError:
        return None


def _path_of(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def candidates_from(blocks: list[Block], page_url: str, allow_private: bool, base_href: str | None = None) -> tuple[list[Candidate], int]:
    """Candidates from parsed blocks, and how many links were dropped as unsafe."""
    base = page_url
    if base_href:
        joined = _join(page_url, base_href)
        if joined and clean_link(joined, allow_private):
            base = joined
    out: dict[str, Candidate] = {}
    dropped = 0
    for block in blocks:
        targets: list[tuple[Link, Target]] = []
        pages: list[str] = []
        images: list[dict[str, Any]] = []
        for link in block.links:
            raw = link.url.strip()
            if raw.startswith("#") or not raw:
                continue
            absolute = _join(base, raw)
            if absolute is None or clean_link(absolute, allow_private) is None:
                dropped += 1
                continue
            if link.image:
                if len(images) < 8 and all(i["url"] != absolute for i in images):
                    images.append({"url": absolute, "kind": "link_page", "alt": link.text or None})
                continue
            t = classify(absolute, allow_private)
            if t is None:
                pages.append(absolute)
                continue
            if t.manual and (VIDEO_TEXT.search(link.text) or VIDEO_TEXT.search(block.text[:200])):
                continue
            targets.append((link, t))
        has_direct = any(not t.manual for _, t in targets)
        for link, t in targets:
            if t.manual and has_direct:
                pages.append(t.link)  # a mirror page next to a direct file: keep as a page
                continue
            name = _clean(_name_from(block, link, t), 120) or t.host
            remote_id = t.link if t.manual else t.url or t.link
            if remote_id in out:
                continue
            base_model, family = _base_from(block)
            page = next((p for p in pages if p != t.link), None) or (t.link if t.manual else None)
            desc = block.text if not block.heading else f"{block.heading}: {block.text}"
            file = CandidateFile(
                file_name=t.file_name or "",
                url=None if t.manual else t.url,
                format=posixpath.splitext(t.file_name)[1].lstrip(".").lower() or None if t.file_name else None,
                manual=t.manual,
                extra={"link": t.link, "host": t.host},
            )
            out[remote_id] = Candidate(
                remote_id=remote_id,
                name=name,
                title=name,
                description=_clean(desc, 1000),
                base_model=_clean(base_model, 100) if base_model else None,
                page_url=page,
                status="manual" if t.manual else "ok",
                files=[file],
                previews=[dict(i) for i in images],
                extra={"declared_family": family, "section": block.heading, "link_text": link.text or None,
                       "pages": pages[:5], "block": block.kind},
            )
    return list(out.values()), dropped


def looks_like_html(body: str, content_type: str) -> bool:
    ct = content_type.lower()
    if "html" in ct:
        return True
    if "markdown" in ct or "text/plain" in ct:
        return False
    head = body[:4096].lower()
    return "<html" in head or "<!doctype html" in head or "<body" in head or ("<a " in head and "](" not in head)


def parse_page(body: str, content_type: str, url: str, allow_private: bool) -> tuple[list[Candidate], int]:
    if "json" in content_type.lower():  # rentry's /api/raw answer: {"status": ..., "content": "..."}
        import json

        try:
            data = json.loads(body)
        except ValueError:
            raise SourceError(f"{url} answered with malformed JSON; give the page's HTML or /raw address instead.") from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise SourceError(f"{url} answered with JSON that holds no page `content`.")
        return candidates_from(parse_markdown(data["content"]), url, allow_private)
    if looks_like_html(body, content_type):
        blocks, base_href = parse_html(body)
        return candidates_from(blocks, url, allow_private, base_href)
    return candidates_from(parse_markdown(body), url, allow_private)


def index(spec: Any, ctx: Any) -> Iterator[Candidate]:
    """Yield one Candidate per embedding link on the page."""
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise SourceError(f"Source {spec.name!r} needs a `url` for its link page.")
    state = ctx.state or {}
    headers = {"Accept": "text/html, text/markdown;q=0.9, text/plain;q=0.8, */*;q=0.1"}
    same = state.get("url") == url
    if same and state.get("etag"):
        headers["If-None-Match"] = state["etag"]
    if same and state.get("last_modified"):
        headers["If-Modified-Since"] = state["last_modified"]
    with fetcher_for(spec, ctx) as fetch:
        reply = fetch.get(url, headers=headers, cap=PAGE_CAP)
    if reply.status == 304 and same:
        raise SourceUnchanged(spec.name)
    if not reply.ok:
        raise SourceError(f"Source {spec.name!r}: {url} answered status {reply.status}; check the page address.")
    digest = hashlib.sha256(reply.body).hexdigest()
    ctx.set_state("url", url)
    ctx.set_state("etag", reply.headers.get("etag"))
    ctx.set_state("last_modified", reply.headers.get("last-modified"))
    if same and state.get("sha256") == digest:
        raise SourceUnchanged(spec.name)
    body = reply.text()
    cands, dropped = parse_page(body, reply.headers.get("content-type", ""), reply.url, bool(spec.allow_private))
    if dropped:
        log.info("Source %r: dropped %d unsafe links on %s.", spec.name, dropped, url)
    ctx.set_state("sha256", digest)
    ctx.set_state("dropped", dropped)
    deep = getattr(ctx, "deep", None)
    if deep is not None:
        ctx.set_state("deep", deep_read_links(spec, ctx, deep, cands, state.get("deep") if same else None))
    yield from cands


def deep_read_links(spec: Any, ctx: Any, deep: Any, cands: list[Candidate], prev: dict[str, str] | None) -> dict[str, str]:
    """Read the small files the page links to (deep sync). A URL read at an earlier sync whose
    sha256 the catalogue has measured is not read again (the page changed, not that file).
    Returns {url: sha256} for the next sync."""
    prev = prev if isinstance(prev, dict) else {}
    seen: dict[str, str] = {}
    with fetcher_for(spec, ctx) as fetch:
        for c in cands:
            for cf in c.files:
                if cf.manual or not cf.url:
                    continue
                old = prev.get(cf.url)
                if isinstance(old, str) and old in deep.known:
                    cf.sha256 = old
                    deep.stats.known += 1
                    seen[cf.url] = old
                    continue
                if not deep.wants(cf, size=0) or deep.cap() <= 0:
                    continue
                try:
                    reply = fetch.get(cf.url, cap=deep.cap())
                except SourceError as exc:  # bigger than the cap, or unreachable: left for fetch
                    deep.count(0)
                    log.info("Source %r: deep read of %s skipped: %s", spec.name, cf.url, exc)
                    continue
                if not reply.ok:
                    deep.count(len(reply.body))
                    continue
                if deep.measure(cf, reply.body) and cf.sha256:
                    seen[cf.url] = cf.sha256
    return seen
