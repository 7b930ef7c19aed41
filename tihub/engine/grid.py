"""A1111-style X/Y/Z grids, generated in batches, and the standard preview of an embedding.

Axes (`KIND:V1,V2,...`, values as CSV so a value may be quoted to hold a comma):

    prompt      search/replace: the first value is searched in the prompt, each value replaces it
    negative    search/replace in the negative prompt
    seed        seeds (`1-4` is a range)             steps     step counts (`10-30` ranges too)
    cfg         CFG scales                           sampler   A1111 sampler names
    size        WxH or N                             clip-skip clip skip values
    embedding   embedding names; each cell puts the name where the prompt says `{emb}` (or at
                its end when it does not)
    checkpoint  an embedding's training checkpoints: `checkpoint:NAME` expands to NAME-500,
                NAME-1000, ... found beside it (and NAME itself, last); `{emb}` as above; a
                bare `checkpoints` means those of the grid's embedding NAME
    model       model paths; each model is loaded once

Cells that share the model and every setting (steps, sampler, schedule type, CFG, size, clip skip,
RNG, ...) are generated together: one sampling run per group (split at `batch` images), different
prompts and seeds in one batch; every image has its own noise generators, as A1111.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tihub.engine.generate import Engine, Settings, parse_size, resolve_seed, save_images
from tihub.errors import ConfigError
from tihub.infotext import build_infotext, parse_infotext, pnginfo_chunk

AXIS_KINDS = {
    "prompt": "Prompt S/R",
    "negative": "Negative S/R",
    "seed": "Seed",
    "steps": "Steps",
    "cfg": "CFG Scale",
    "sampler": "Sampler",
    "size": "Size",
    "clip-skip": "Clip skip",
    "embedding": "Embedding",
    "checkpoint": "Checkpoint",
    "model": "Model",
}
ALIASES = {"prompt-sr": "prompt", "s/r": "prompt", "cfg-scale": "cfg", "clip_skip": "clip-skip", "clipskip": "clip-skip", "emb": "embedding", "embeddings": "embedding", "checkpoints": "checkpoint", "models": "model", "seeds": "seed"}
EMB = "{emb}"


@dataclass
class Axis:
    kind: str
    values: list[str]

    @property
    def title(self) -> str:
        return AXIS_KINDS[self.kind]


@dataclass
class Cell:
    x: int
    y: int
    z: int
    prompt: str
    negative: str
    seed: int
    settings: Settings
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # in-memory embeddings for this cell
    image: Any = None
    infotext: str = ""


@dataclass
class GridResult:
    image: Any
    cells: list[Cell]
    path: Path | None = None
    cell_paths: list[Path] = field(default_factory=list)
    calls: int = 0  # pipeline calls made
    infotext: str = ""
    warnings: list[str] = field(default_factory=list)


def _expand_range(value: str, kind: str) -> list[str]:
    m = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*(?:\(\s*\+?\s*(\d+)\s*\))?\s*", value)
    if kind in ("seed", "steps", "clip-skip") and m:
        a, b, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if b < a or (b - a) // step > 1000:
            raise ConfigError(f"Range '{value}' is empty or too long; write e.g. 10-30 (+10).")
        return [str(v) for v in range(a, b + 1, step)]
    return [value.strip()]


def parse_axis(text: str, name: str | None = None) -> Axis:
    """`KIND:V1,V2` -> Axis. Unknown kinds list the valid ones. A bare `checkpoint(s)` stands for
    `checkpoint:NAME`, the checkpoints of the embedding the grid is about."""
    kind, sep, rest = text.partition(":")
    kind = ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if not sep and kind == "checkpoint":
        if not name:
            raise ConfigError(f"Axis '{text}' needs the embedding whose checkpoints it compares: give its NAME (tihub grid NAME --x checkpoints) or write checkpoint:NAME.")
        sep, rest = ":", name
    if not sep or kind not in AXIS_KINDS:
        raise ConfigError(f"Axis '{text}' is not KIND:VALUES with KIND one of {', '.join(AXIS_KINDS)}; e.g. --x steps:10,20,30.")
    row = next(csv.reader(io.StringIO(rest), skipinitialspace=True), [])
    values = [v for part in row for v in _expand_range(part, kind) if v != "" or kind in ("prompt", "negative")]
    if not values:
        raise ConfigError(f"Axis '{text}' has no values; e.g. --x steps:10,20,30.")
    if kind == "sampler":
        from tihub.engine.samplers import resolve

        # A1111's names; an old-style "DPM++ 2M Karras" keeps its schedule type
        values = [" ".join(part for part in resolve(v) if part != "Automatic") for v in values]
    return Axis(kind, values)


def _place(prompt: str, name: str) -> str:
    if EMB in prompt:
        return prompt.replace(EMB, name)
    return f"{prompt}, {name}" if prompt else name


def checkpoint_files(name: str, folders: list[Path]) -> list[tuple[str, Path]]:
    """(label, path) of NAME-<step> files in the folders (recursively), by step, NAME last."""
    found: dict[int, Path] = {}
    final: Path | None = None
    pat = re.compile(re.escape(name) + r"-(\d+)$")
    from tihub.formats import EMBEDDING_SUFFIXES

    for folder in folders:
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or not p.name.lower().endswith(EMBEDDING_SUFFIXES) or ".optim." in p.name or ".preview." in p.name:
                continue
            stem = p.name.rsplit(".", 1)[0]
            m = pat.fullmatch(stem)
            if m:
                found.setdefault(int(m.group(1)), p)
            elif stem == name and final is None:
                final = p
    out = [(f"{name}-{step}", path) for step, path in sorted(found.items())]
    if final is not None:
        out.append((name, final))
    if not out:
        raise ConfigError(f"No training checkpoints named {name}-<step> were found in {', '.join(map(str, folders))}; train with --save-every or check the name.")
    return out


def build_cells(
    prompt: str,
    negative: str,
    base: Settings,
    seed: int,
    axes: list[Axis | None],
    model: str | None = None,
    checkpoint_folders: list[Path] | None = None,
    reader: Callable[[Path], Any] | None = None,
) -> tuple[list[Cell], list[list[str]]]:
    """All cells of the grid (x fastest) and the label lists per axis [x, y, z]."""
    axes = list(axes) + [None] * (3 - len(axes))
    labels: list[list[str]] = []
    expanded: list[list[tuple[str, Any]]] = []
    for axis in axes:
        if axis is None:
            expanded.append([("", None)])
            labels.append([])
            continue
        if axis.kind == "checkpoint":
            pairs = []
            for name in axis.values:
                for label, path in checkpoint_files(name, checkpoint_folders or []):
                    pairs.append((label, (name, label, path)))
        else:
            pairs = [(v, v) for v in axis.values]
        expanded.append(pairs)
        labels.append([lbl for lbl, _ in pairs])
    first_seed = resolve_seed(seed)
    if base.subseed_strength and (base.subseed is None or base.subseed < 0):
        base = replace(base, subseed=resolve_seed(-1))  # one random variation seed for the grid
    cells = []
    read = reader
    if read is None:
        from tihub.formats import read_embedding as read
    loaded: dict[Path, Any] = {}
    for zi, (_, zv) in enumerate(expanded[2]):
        for yi, (_, yv) in enumerate(expanded[1]):
            for xi, (_, xv) in enumerate(expanded[0]):
                cell = Cell(xi, yi, zi, prompt, negative, first_seed, Settings(**vars(base)), model)
                for axis, value in ((axes[0], xv), (axes[1], yv), (axes[2], zv)):
                    if axis is not None:
                        _apply(cell, axis, value, loaded, read)
                cells.append(cell)
    return cells, labels


def _apply(cell: Cell, axis: Axis, value: Any, loaded: dict[Path, Any], read: Callable[[Path], Any]) -> None:
    k = axis.kind
    if k == "prompt":
        cell.prompt = cell.prompt.replace(axis.values[0], value)
    elif k == "negative":
        cell.negative = cell.negative.replace(axis.values[0], value)
    elif k == "seed":
        cell.seed = resolve_seed(int(value))
    elif k == "steps":
        cell.settings.steps = int(value)
    elif k == "cfg":
        cell.settings.cfg_scale = float(value)
    elif k == "sampler":
        cell.settings.sampler = value
    elif k == "size":
        cell.settings.width, cell.settings.height = parse_size(value)
    elif k == "clip-skip":
        cell.settings.clip_skip = int(value)
    elif k == "embedding":
        cell.prompt = _place(cell.prompt, value)
    elif k == "checkpoint":
        name, label, path = value
        if path not in loaded:
            emb = read(path)
            emb.name = label
            loaded[path] = emb
        cell.extra[label] = loaded[path]
        cell.prompt = _place(cell.prompt, label) if EMB in cell.prompt or name not in cell.prompt else re.sub(rf"\b{re.escape(name)}\b", label, cell.prompt)
    elif k == "model":
        cell.model = value
    try:
        if k in ("steps", "cfg", "size", "clip-skip"):
            cell.settings.check()
    except ConfigError as exc:
        raise ConfigError(f"Axis {axis.title} value '{value if not isinstance(value, tuple) else value[1]}': {exc}") from exc


def render_cells(cells: list[Cell], engine_for: Callable[[str | None], Engine], batch: int = 16) -> int:
    """Generate every cell image; returns how many sampling runs it took."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        s = c.settings
        groups.setdefault((c.model, tuple((k, repr(v)) for k, v in sorted(vars(s).items()))), []).append(c)
    calls = 0
    for key, members in groups.items():
        engine = engine_for(key[0])
        for start in range(0, len(members), batch):
            part = members[start:start + batch]
            for c in part:
                engine.vocabulary.extra.update(c.extra)
            try:
                images, used = engine.run([c.prompt for c in part], [c.negative for c in part], [c.seed for c in part], part[0].settings)
            finally:
                for c in part:
                    for name in c.extra:
                        engine.vocabulary.extra.pop(name, None)
            calls += 1
            for c, img, u in zip(part, images, used, strict=True):
                c.image = img
                c.infotext = engine.infotext(c.prompt, c.negative, c.seed, c.settings, u)
    return calls


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        trial = f"{line} {w}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = w
    if line:
        lines.append(line)
    return lines or [""]


def _fitting(draw: Any, line: str, size: int, width: int) -> Any:
    """The font for one label line: a word wider than its cell is drawn smaller until it fits
    (as A1111's grid labels), down to 6 px."""
    font = _font(size)
    while size > 6 and draw.textlength(line, font=font) > width:
        size -= 1
        font = _font(size)
    return font


def draw_grid(images: list[list[Any]], xlabels: list[str], ylabels: list[str], title: str = "") -> Any:
    """One labelled grid: images[row][col], column labels on top, row labels on the left."""
    from PIL import Image, ImageDraw

    rows, cols = len(images), len(images[0])
    w, h = images[0][0].size
    fsize = max(12, min(w, h) // 10)
    font = _font(fsize)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = fsize + 4
    top_lines = max([len(_wrap(probe, t, font, w - 8)) for t in xlabels] or [0])
    top = (top_lines * line_h + 8 if xlabels else 0) + (line_h + 8 if title else 0)
    left = (max(w // 2, min(3 * w // 2, int(max(probe.textlength(t, font=font) for t in ylabels)) + 16)) if ylabels else 0)
    canvas = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + (cols * w) // 2, 4), title, fill="black", font=font, anchor="ma")
    title_h = line_h + 8 if title else 0
    for ci, label in enumerate(xlabels):
        for li, line in enumerate(_wrap(draw, label, font, w - 8)):
            draw.text((left + ci * w + w // 2, title_h + 4 + li * line_h), line, fill="black", font=_fitting(draw, line, fsize, w - 8), anchor="ma")
    for ri, label in enumerate(ylabels):
        lines = _wrap(draw, label, font, left - 8)
        y0 = top + ri * h + h // 2 - len(lines) * line_h // 2
        for li, line in enumerate(lines):
            draw.text((left - 8, y0 + li * line_h), line, fill="black", font=_fitting(draw, line, fsize, left - 8), anchor="ra")
    for ri, row in enumerate(images):
        for ci, img in enumerate(row):
            canvas.paste(img, (left + ci * w, top + ri * h))
    return canvas


def assemble(cells: list[Cell], labels: list[list[str]], axes: list[Axis | None]) -> Any:
    """The grid image: one labelled sub-grid per Z value, side by side."""
    from PIL import Image

    nx, ny, nz = (max(1, len(labels[i])) for i in range(3))
    at = {(c.x, c.y, c.z): c.image for c in cells}
    subs = []
    for z in range(nz):
        images = [[at[(x, y, z)] for x in range(nx)] for y in range(ny)]
        title = f"{axes[2].title}: {labels[2][z]}" if len(axes) > 2 and axes[2] is not None else ""
        subs.append(draw_grid(images, [_label(axes[0], v) for v in labels[0]], [_label(axes[1], v) for v in labels[1]] if len(axes) > 1 else [], title))
    if len(subs) == 1:
        return subs[0]
    gap = 16
    out = Image.new("RGB", (sum(s.width for s in subs) + gap * (len(subs) - 1), max(s.height for s in subs)), "white")
    x = 0
    for s in subs:
        out.paste(s, (x, 0))
        x += s.width + gap
    return out


def _label(axis: Axis | None, value: str) -> str:
    if axis is None:
        return value
    if axis.kind in ("prompt", "negative", "embedding", "checkpoint", "model"):
        return Path(value).name if axis.kind == "model" else value
    return f"{axis.title}: {value}"


def make_grid(
    engine_for: Callable[[str | None], Engine],
    prompt: str,
    negative: str = "",
    axes: list[Axis | None] | None = None,
    settings: Settings | None = None,
    seed: int = -1,
    out: Path | None = None,
    batch: int = 16,
    checkpoint_folders: list[Path] | None = None,
    reader: Callable[[Path], Any] | None = None,
    save_cells: bool = True,
) -> GridResult:
    """Build, render and (with `out`) save a grid; the grid PNG carries the first cell's infotext."""
    axes = list(axes or [])
    settings = settings or Settings()
    settings.check()
    cells, labels = build_cells(prompt, negative, settings, seed, axes, None, checkpoint_folders, reader)
    calls = render_cells(cells, engine_for, batch)
    image = assemble(cells, labels, axes + [None] * (3 - len(axes)))
    extra = {}
    for name, axis in zip(("X", "Y", "Z"), axes, strict=False):
        if axis is not None:
            extra[f"{name} Type"] = axis.title
            extra[f"{name} Values"] = ", ".join(labels["XYZ".index(name)])
    first = cells[0]
    text = build_infotext(first.prompt, first.negative, {**parse_infotext(first.infotext).parameters, "Script": "X/Y/Z plot", **extra})
    result = GridResult(image, cells, calls=calls, infotext=text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if save_cells:
            result.cell_paths = save_images([c.image for c in cells], [c.seed for c in cells], [c.infotext for c in cells], out)
        taken = [int(m.group(1)) for p in out.glob("grid-*.png") if (m := re.match(r"grid-(\d+)\.png$", p.name))]
        path = out / f"grid-{max(taken, default=-1) + 1:05d}.png"
        image.save(path, pnginfo=pnginfo_chunk(text))
        result.path = path
    return result


# ---------------------------------------------------------------------------------------------
# Standard previews

PREVIEW_PROMPTS = {
    "object": ["a photo of {emb}", "{emb}, oil painting", "{emb} on a beach, detailed"],
    "style": ["a mountain landscape, {emb}", "a portrait of a woman, {emb}", "a city street at night, {emb}"],
    "negative": ["a portrait of a woman, detailed", "a cat sitting on a sofa"],
}
PREVIEW_SEEDS = ["1", "2"]


def preview_kind(kind: str | None, name: str = "") -> str:
    k = (kind or "").lower()
    if "neg" in k or re.search(r"neg|bad|easynegative|unaesthetic|deformed", name.lower()):
        return "negative"
    if "style" in k or "artist" in k:
        return "style"
    return "object"


def standard_preview(engine: Engine, name: str, kind: str | None = None, steps: int = 20, size: str | int | None = None, out: Path | None = None, batch: int = 16) -> GridResult:
    """The fixed preview of one embedding: prompts by kind (x) across fixed seeds (y).

    For a negative embedding the columns are each prompt without and with it in the negative.
    """
    k = preview_kind(kind, name)
    native = engine.model.native_size
    w, h = parse_size(size, native) if size is not None else (native, native)
    settings = Settings(steps=steps, sampler="Euler a", cfg_scale=7.0, width=w, height=h)
    engine.vocabulary.require([name])
    if k == "negative":
        cells_x = []
        for p in PREVIEW_PROMPTS["negative"]:
            cells_x += [(p, ""), (p, name)]
        cells: list[Cell] = []
        for yi, seed in enumerate(PREVIEW_SEEDS):
            for xi, (p, neg) in enumerate(cells_x):
                cells.append(Cell(xi, yi, 0, p, neg, int(seed), Settings(**vars(settings))))
        calls = render_cells(cells, lambda _m: engine, batch)
        xlabels = [f"{'with' if neg else 'without'} {name}: {p}" for p, neg in cells_x]
        image = draw_grid([[c.image for c in cells if c.y == y] for y in range(len(PREVIEW_SEEDS))], xlabels, [f"Seed: {s}" for s in PREVIEW_SEEDS])
        result = GridResult(image, cells, calls=calls, infotext=cells[1].infotext + ", Script: tihub preview")
    else:
        axes: list[Axis | None] = [Axis("prompt", [p.replace(EMB, name) for p in PREVIEW_PROMPTS[k]]), Axis("seed", PREVIEW_SEEDS)]
        # the prompt axis here is a plain list of prompts: S/R of the first one by each
        result = make_grid(lambda _m: engine, axes[0].values[0], "", axes, settings, seed=1, out=None, batch=batch)  # type: ignore[arg-type]
    result.warnings = engine.vocabulary.take_warnings()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.preview-grid.png"
        result.image.save(path, pnginfo=pnginfo_chunk(result.infotext))
        result.path = path
    return result
