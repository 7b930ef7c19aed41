"""Textual-inversion training: `train(cfg)` turns a folder of pictures into a new embedding.

The fast recipe (research/feasibility.md 4.2, performance.md 1):
- the only trainable tensors are the new vectors, one `nn.Parameter[n, width]` per text encoder
  (SDXL: clip_l and clip_g), spliced in front of the frozen token-embedding table, so the
  optimizer state is 2 x n x width numbers and no row of the table ever changes;
- the UNet, VAE and text encoders are frozen (`requires_grad=False`), cast to the compute dtype
  (bf16 on GPUs that have it, fp16 + loss scaling otherwise, fp32 on CPU);
- every picture (and its mirror image) goes through the VAE once; steps never touch the VAE;
- every random draw is derived from `(seed, micro-batch number)`, so `--resume` from a checkpoint
  gives exactly the same result as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tihub.engine.lr_schedule import Schedule, parse_schedule
from tihub.engine.train_data import (
    BatchPlan,
    LatentCache,
    PictureSet,
    derive_seed,
    encode_latents,
    image_files,
    load_pictures,
    load_template,
    prompts_for,
)
from tihub.engine.train_step import MicroBatch, make_step
from tihub.errors import ConfigError, EngineError
from tihub.formats import write_embedding
from tihub.formats.model import Embedding

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # kept for callers; names are checked by valid_name


def valid_name(name: str | None) -> bool:
    """A name import and fetch would keep as it is (one safe file stem, any script), one word."""
    from tihub.naming import safe_stem

    return bool(name) and len(name or "") <= 64 and not any(c.isspace() for c in name or "") and safe_stem(name) == name
MAX_VECTORS = 75
LATENT_MODES = ("once", "deterministic", "random")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PLACEHOLDER = "[name]"
OPTIM_SUFFIX = ".optim.safetensors"
# steps between loss readbacks (each one syncs the device): every step on the CPU, where it is free
LOSS_READBACK_EVERY = {"cpu": 1}
# settings that must match for --resume to continue a run exactly
RESUME_KEYS = ("model", "vectors", "init_text", "batch_size", "grad_accum", "size", "template", "shuffle_tags", "tag_dropout", "flip", "latent_sampling", "alpha_as_loss_weight", "seed", "images")


@dataclass
class TrainConfig:
    """Everything `tihub train` can be told. `size`: (w, h), "auto" (the model's native size) or None (no resize)."""

    name: str
    images: Path
    model: str
    embeddings_dir: Path
    run_dir: Path
    vectors: int = 1
    init_text: str = "*"
    steps: int = 1000
    lr: str = "0.005"
    batch_size: int = 1
    grad_accum: int = 1
    size: tuple[int, int] | str | None = "auto"
    template: str = "style_filewords"
    shuffle_tags: bool = False
    tag_dropout: float = 0.0
    flip: bool = False
    clip_grad: str | None = None  # "value:V" | "norm:V" (V may be a schedule)
    latent_sampling: str = "once"
    alpha_as_loss_weight: bool = False
    save_every: int = 500
    preview_every: int = 0
    preview_prompt: str | None = None
    preview_negative: str = ""
    preview_steps: int = 20
    preview_cfg: float = 7.0
    preview_sampler: str | None = None
    preview_seed: int | None = None
    seed: int = 0
    resume: bool = False
    precision: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the UNet for the training steps (slow start, faster steps)
    cuda_graphs: str = "auto"  # auto/on: replay each step from a captured CUDA graph where one can run (on: a note where not); off; emulate: its data flow without CUDA (tests)
    overwrite: bool = False
    also_pt: bool = False
    png_card: bool = False
    device: str | None = None
    catalog: Any = None  # a tihub Catalog to register the result in (None: not registered)
    model_hash: str | None = None  # AutoV2 of the model, when the caller knows it already

    def settings(self) -> dict[str, Any]:
        """The JSON-able settings recorded with the run (and compared on --resume)."""
        skip = ("catalog", "embeddings_dir", "run_dir", "model_hash", "device")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["images"] = str(Path(self.images).resolve())
        d["model"] = str(Path(self.model).resolve()) if Path(self.model).exists() else self.model
        d["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        return d


@dataclass
class TrainResult:
    name: str
    output: Path
    extra_outputs: list[Path]
    run_dir: Path
    steps: int
    pictures: str
    final_loss: float | None
    checkpoints: list[Path]
    previews: list[Path]
    loss_csv: Path
    loss_png: Path | None
    sd_checkpoint: str | None
    seconds: float
    file_id: int | None = None
    notes: list[str] = field(default_factory=list)
    steps_from: str = "eager"  # or "cuda graph": how the micro-batches ran (replayed where they could)


Log = Callable[[str], None]
Progress = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------
# Stage 0: checks that need nothing loaded (every refusal happens before any work)


def parse_size(text: str | None) -> tuple[int, int] | str | None:
    """`512` -> (512, 512); `768x512` -> (768, 512) (width x height); `none` -> None; `auto`."""
    if text is None or str(text).strip().lower() == "auto":
        return "auto"
    t = str(text).strip().lower()
    if t in ("none", "no", "off"):
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", t)
    if not m:
        raise ConfigError(f"--size {text!r} is not a size; write N (square), WxH, auto or none (keep each picture's size).")
    w = int(m.group(1))
    h = int(m.group(2) or w)
    if not (64 <= w <= 4096 and 64 <= h <= 4096) or w % 8 or h % 8:
        raise ConfigError(f"--size {text!r} is out of range; both sides must be multiples of 8 between 64 and 4096.")
    return (w, h)


def parse_clip_grad(text: str | None, steps: int) -> tuple[str, Schedule] | None:
    """`value:0.1`, `norm:1.0` or `norm:1.0:100, 0.5` (the value follows the schedule syntax)."""
    if not text or str(text).strip().lower() in ("none", "off", "disabled"):
        return None
    mode, _, rest = str(text).partition(":")
    mode = mode.strip().lower()
    if mode not in ("value", "norm") or not rest.strip():
        raise ConfigError(f"--clip-grad {text!r} is not understood; write value:V or norm:V (for example norm:1.0).")
    return mode, parse_schedule(rest, steps, what="--clip-grad")


def existing_outputs(embeddings_dir: Path, name: str) -> list[Path]:
    from tihub.formats import EMBEDDING_SUFFIXES

    if not embeddings_dir.is_dir():
        return []
    return sorted(p for p in embeddings_dir.iterdir() if p.stem == name and p.suffix.lower() in EMBEDDING_SUFFIXES)


def check_config(cfg: TrainConfig) -> None:
    """Refuse bad options before anything is loaded (each refusal is one sentence)."""
    if not valid_name(cfg.name):
        raise ConfigError(f"The name {cfg.name!r} cannot be used as a prompt word and file name; use one word of up to 64 characters without spaces, slashes or <>:\"|?* (any script: 猫 works).")
    if not 1 <= cfg.vectors <= MAX_VECTORS:
        raise ConfigError(f"--vectors {cfg.vectors} is out of range; use 1 to {MAX_VECTORS} vectors per token.")
    if cfg.steps < 1:
        raise ConfigError(f"--steps {cfg.steps} must be at least 1.")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} and --grad-accum {cfg.grad_accum} must both be at least 1.")
    if not 0.0 <= cfg.tag_dropout < 1.0:
        raise ConfigError(f"--tag-dropout {cfg.tag_dropout} must be at least 0 and below 1.")
    if cfg.latent_sampling not in LATENT_MODES:
        raise ConfigError(f"--latent-sampling {cfg.latent_sampling!r} is not one of {', '.join(LATENT_MODES)}.")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"--precision {cfg.precision!r} is not one of {', '.join(PRECISIONS)}.")
    if cfg.cuda_graphs not in ("auto", "on", "off", "emulate"):
        raise ConfigError(f"cuda_graphs {cfg.cuda_graphs!r} is not one of auto, on, off, emulate.")
    if cfg.save_every < 0 or cfg.preview_every < 0:
        raise ConfigError("--save-every and --preview-every must be 0 (off) or a positive number of steps.")
    parse_schedule(cfg.lr, cfg.steps)
    parse_clip_grad(cfg.clip_grad, cfg.steps)
    load_template(cfg.template)
    images = Path(cfg.images)
    if not images.is_dir():
        raise ConfigError(f"--images {images} is not a folder; point it at a folder of PNG, JPEG or WEBP pictures.")
    if not image_files(images):
        raise ConfigError(f"--images {images} holds no PNG, JPEG or WEBP pictures; add some (captions go in same-name .txt files).")
    if not Path(cfg.model).exists():
        raise ConfigError(f"--model {cfg.model} does not exist; give a diffusers folder or a model file.")
    taken = existing_outputs(Path(cfg.embeddings_dir), cfg.name)
    if taken and not cfg.overwrite and not cfg.resume:
        raise ConfigError(f"An embedding named {cfg.name!r} already exists ({taken[0]}); choose another name, or pass --overwrite to replace it.")
    run_dir = Path(cfg.run_dir)
    old = list(run_dir.glob(f"{cfg.name}-*{OPTIM_SUFFIX}")) if run_dir.is_dir() else []
    if cfg.resume and not old:
        raise ConfigError(f"--resume found no checkpoint of {cfg.name!r} in {run_dir}; start without --resume.")
    if old and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"The run folder {run_dir} holds checkpoints of an earlier run of {cfg.name!r}; pass --resume to continue it or --overwrite to start over.")
    if cfg.resume:
        saved = run_dir / "settings.json"
        if saved.is_file():
            before = json.loads(saved.read_text("utf-8"))
            now_ = cfg.settings()
            for key in RESUME_KEYS:
                if key in before and before[key] != now_[key]:
                    raise ConfigError(f"--resume needs the settings of the run it continues, but {key} was {before[key]!r} and is now {now_[key]!r}; use the same value.")


# --------------------------------------------------------------------------------------------
# Model loading (swap for tihub.engine.models when it grows a loader)


def load_pipeline(model: str, device: Any, dtype: Any) -> Any:
    """A diffusers pipeline for `model` (a diffusers folder or a single-file checkpoint)."""
    from tihub.engine.models import load_pipeline as load

    return load(model, device=device, dtype=dtype)


def model_autov2(model: str, cache: Any = None) -> str | None:
    """AutoV2 of the model exactly as `tihub hash` reports it (folders included); `cache` is a
    tihub.hashing.HashCache, so an unchanged model is not read again."""
    try:
        from tihub.hashing import model_hashes

        return model_hashes(model, cache).autov2
    except Exception:  # noqa: BLE001 - a missing hash is recorded as unknown, never fatal
        return None


# --------------------------------------------------------------------------------------------
# The spliced embedding: new vectors in front of a frozen token table


def _splice_class() -> type:
    import torch
    from torch import nn

    class SplicedEmbedding(nn.Module):
        """Token ids below the table size read the frozen table; ids from `first_new` on read the
        trainable vectors. Gradients reach only the vectors."""

        def __init__(self, base: nn.Embedding, vectors: nn.Parameter) -> None:
            super().__init__()
            self.base = base
            self.vectors = vectors
            self.first_new = base.num_embeddings

        @property
        def weight(self) -> Any:  # some callers read the table's dtype/device through it
            return self.base.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            is_new = ids >= self.first_new
            out = self.base(ids.clamp(max=self.first_new - 1))
            new_rows = self.vectors.to(out.dtype)[(ids - self.first_new).clamp(min=0, max=self.vectors.shape[0] - 1)]
            return torch.where(is_new[..., None], new_rows, out)

    return SplicedEmbedding


@dataclass
class Encoder:
    key: str  # clip_l | clip_h | clip_g
    tokenizer: Any
    model: Any
    vectors: Any  # nn.Parameter [n, width] (fp32)
    first_new: int
    ids_cache: dict[str, list[int]] = field(default_factory=dict)

    def ids(self, prompt: str, n: int) -> list[int]:
        """Token ids of a prompt whose `[name]` stands for the n new vectors (77 long, padded)."""
        got = self.ids_cache.get(prompt)
        if got is not None:
            return got
        tok = self.tokenizer
        body: list[int] = []
        for i, piece in enumerate(prompt.split(PLACEHOLDER)):
            if i:
                body += list(range(self.first_new, self.first_new + n))
            if piece.strip():
                body += tok(piece, add_special_tokens=False).input_ids
        length = tok.model_max_length if tok.model_max_length < 10_000 else 77
        body = body[: length - 2]
        ids = [tok.bos_token_id, *body, tok.eos_token_id]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids += [pad] * (length - len(ids))
        self.ids_cache[prompt] = ids
        return ids


def _encoder_key(width: int, xl_index: int | None) -> str:
    if xl_index is not None:
        return ("clip_l", "clip_g")[xl_index]
    return "clip_h" if width == 1024 else "clip_l"


def _initial_vectors(cfg: TrainConfig, tokenizer: Any, table: Any, key: str, n: int, init_emb: Embedding | None) -> np.ndarray:
    """The starting vectors: an existing embedding's, the init text's token rows spread over the
    vectors as A1111 does (vector i = row i * tokens // n), or zeros for an empty init text."""
    width = int(table.shape[1])
    if init_emb is not None:
        src = init_emb.vectors.get(key)
        if src is None or src.shape[1] != width:
            have = ", ".join(f"{k} {v.shape[1]}" for k, v in init_emb.vectors.items())
            raise ConfigError(f"--init-text {cfg.init_text} has vectors of width {have}, but the model's {key} encoder is {width} wide; start from an embedding made for this model family, or from words.")
        src = np.asarray(src, np.float32)
        return np.stack([src[i * len(src) // n] for i in range(n)]) if len(src) != n else src.copy()
    if not cfg.init_text.strip():
        return np.zeros((n, width), np.float32)
    ids = tokenizer(cfg.init_text, add_special_tokens=False).input_ids
    if not ids:
        return np.zeros((n, width), np.float32)
    rows = table[ids].detach().float().cpu().numpy()
    return np.stack([rows[i * len(ids) // n] for i in range(n)])


def _load_init_embedding(cfg: TrainConfig) -> Embedding | None:
    """`--init-text` may name an embedding file: its vectors are the starting point."""
    from tihub.formats import EMBEDDING_SUFFIXES, read_embedding

    text = cfg.init_text.strip()
    if not text.lower().endswith(EMBEDDING_SUFFIXES):
        return None
    path = Path(text)
    if not path.is_file():
        path = Path(cfg.embeddings_dir) / text
    if not path.is_file():
        return None
    return read_embedding(path)


# --------------------------------------------------------------------------------------------
# Writing embeddings, checkpoints, loss logs


def make_embedding(cfg: TrainConfig, encoders: list[Encoder], step: int, sd_checkpoint: str | None) -> Embedding:
    vectors = {e.key: e.vectors.detach().float().cpu().numpy().copy() for e in encoders}
    xl = set(vectors) == {"clip_l", "clip_g"}
    return Embedding(
        name=cfg.name,
        vectors=vectors,
        dtype="f32",
        internal_name=cfg.name,
        step=step,
        sd_checkpoint=sd_checkpoint,
        sd_checkpoint_name=Path(cfg.model).stem if Path(cfg.model).is_file() else Path(cfg.model).name,
        layout="sdxl" if xl else "a1111",
        container="safetensors",
    )


def save_checkpoint(run_dir: Path, cfg: TrainConfig, emb: Embedding, encoders: list[Encoder], optimizer: Any, scaler: Any, step: int) -> Path:
    """`NAME-STEP.safetensors` (a loadable embedding) + `NAME-STEP.optim.safetensors` (exact
    vectors, optimizer and loss-scaler state) so --resume continues bit for bit."""
    import torch
    from safetensors.torch import save_file

    out = write_embedding(emb, run_dir / f"{cfg.name}-{step}.safetensors", "safetensors")
    tensors: dict[str, Any] = {}
    for e in encoders:
        tensors[f"vectors.{e.key}"] = e.vectors.detach().float().cpu().contiguous()
    state = optimizer.state_dict()
    for pid, st in state["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = t.detach().cpu().contiguous()
    meta = {"step": str(step), "seed": str(cfg.seed), "keys": json.dumps([e.key for e in encoders])}
    if scaler is not None:
        meta["scaler"] = json.dumps({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in scaler.state_dict().items()})
    tmp = run_dir / f".{cfg.name}-{step}{OPTIM_SUFFIX}.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, run_dir / f"{cfg.name}-{step}{OPTIM_SUFFIX}")
    return out


def latest_checkpoint(run_dir: Path, name: str) -> tuple[int, Path] | None:
    best: tuple[int, Path] | None = None
    for p in run_dir.glob(f"{name}-*{OPTIM_SUFFIX}"):
        m = re.fullmatch(re.escape(name) + r"-(\d+)" + re.escape(OPTIM_SUFFIX), p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best


def load_checkpoint(path: Path, encoders: list[Encoder], optimizer: Any, scaler: Any) -> int:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    keys = json.loads(meta.get("keys", "[]"))
    if keys != [e.key for e in encoders]:
        raise ConfigError(f"The checkpoint {path} holds vectors for {keys}, not for this model's encoders; resume with the model it was trained on.")
    with torch.no_grad():
        for e in encoders:
            src = tensors[f"vectors.{e.key}"]
            if tuple(src.shape) != tuple(e.vectors.shape):
                raise ConfigError(f"The checkpoint {path} has {tuple(src.shape)} vectors but this run wants {tuple(e.vectors.shape)}; resume with the same --vectors and model.")
            e.vectors.copy_(src.to(e.vectors.device))
    state = optimizer.state_dict()
    new_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            new_state.setdefault(int(pid), {})[name] = v
    state["state"] = new_state
    optimizer.load_state_dict(state)
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(json.loads(meta["scaler"]))
    return int(meta["step"])


def write_loss_csv(path: Path, rows: list[tuple[int, int, int, float, float]], keep_until: int | None = None) -> None:
    """A1111's columns: step, epoch, epoch_step, loss, learn_rate (appends; trims rows past a resume point)."""
    old: list[list[str]] = []
    if keep_until is not None and path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            old = [r for r in list(csv.reader(fh))[1:] if r and int(r[0]) <= keep_until]
    mode = "w" if keep_until is not None or not path.exists() else "a"
    with open(path, mode, newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if mode == "w":
            w.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])
            w.writerows(old)
        w.writerows([(s, e, j, f"{loss:.6f}", f"{lr:.6g}") for s, e, j, loss, lr in rows])


def read_loss_csv(path: Path) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> tuple[list[float], float]:
    """Round tick values inside [lo, hi]: multiples of 1, 2 or 5 times a power of ten
    (0.05, 0.1, 0.15 ... not 0.0734, 0.0981 ...); and the step between them."""
    span = max(hi - lo, 1e-12)
    raw = span / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks or [lo], step


def plot_loss(points: list[tuple[int, float]], path: Path, title: str = "") -> Path | None:
    """A small loss plot (raw loss in grey, moving average in blue), drawn with PIL."""
    from PIL import Image, ImageDraw

    pts = [(s, v) for s, v in points if math.isfinite(v)]
    if len(pts) < 2:
        return None
    W, H, L, R, T, B = 640, 360, 60, 16, 28, 36
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    s0, s1 = pts[0][0], pts[-1][0]
    vals = [v for _, v in pts]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    sx = lambda s: L + (s - s0) / max(1, s1 - s0) * (W - L - R)  # noqa: E731
    sy = lambda v: T + (hi - v) / (hi - lo) * (H - T - B)  # noqa: E731
    d.rectangle([L, T, W - R, H - B], outline="black")
    yticks, ystep = nice_ticks(lo, hi)
    decimals = max(0, -math.floor(math.log10(ystep)) + (1 if f"{ystep:.1e}".startswith("2.5") else 0))
    for v in yticks:
        d.line([L - 4, sy(v), L, sy(v)], fill="black")
        d.text((4, sy(v) - 6), f"{v:.{decimals}f}", fill="black")
    xticks, _ = nice_ticks(s0, s1, integer=True)
    for s in xticks:
        d.line([sx(s), H - B, sx(s), H - B + 4], fill="black")
        d.text((sx(s) - 10, H - B + 6), f"{int(s)}", fill="black")
    d.line([(sx(s), sy(v)) for s, v in pts], fill=(170, 170, 170))
    win = max(1, len(pts) // 20)
    avg = np.convolve(vals, np.ones(win) / win, mode="valid")
    d.line([(sx(pts[i + win - 1][0]), sy(float(a))) for i, a in enumerate(avg)], fill=(30, 90, 200), width=2)
    d.text((L, 8), f"{title} loss (step {s0}-{s1}, moving average of {win})", fill="black")
    tmp = path.with_name(f".{path.name}.tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# Previews (drawn by the generation engine)


def make_preview(cfg: TrainConfig, pipe: Any, emb: Embedding, prompt: str, out: Path, size: tuple[int, int], model_hash: str | None) -> Path:
    """One preview picture with A1111 infotext, drawn by the generation engine."""
    from tihub.engine.generate import Engine
    from tihub.engine.models import from_pipeline

    model_name = Path(cfg.model).stem if Path(cfg.model).is_file() else Path(cfg.model).name
    engine = Engine(from_pipeline(pipe, name=model_name, model_hash=model_hash), None, {cfg.name: emb})
    result = engine.generate(
        prompt,
        cfg.preview_negative,
        steps=cfg.preview_steps,
        sampler=cfg.preview_sampler,
        cfg_scale=cfg.preview_cfg,
        seed=cfg.preview_seed if cfg.preview_seed is not None else cfg.seed,
        width=size[0],
        height=size[1],
        out=out,
    )
    return result.paths[0]


# --------------------------------------------------------------------------------------------
# The training run


def _pick_device_and_dtype(cfg: TrainConfig) -> tuple[Any, Any, bool]:
    """(device, compute dtype, use loss scaling)."""
    import torch

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # shapes repeat every step: pick the fastest convs once
        if cfg.precision == "auto":
            from tihub.engine.models import native_bf16

            bf16 = native_bf16(device)  # where bf16 is only emulated, fp16 with loss scaling
            return device, (torch.bfloat16 if bf16 else torch.float16), not bf16
    elif cfg.precision == "fp16":
        raise ConfigError(f"--precision fp16 needs a GPU, and this run is on {device.type}; use fp32 or bf16.")
    table = {"auto": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = table[cfg.precision]
    return device, dtype, dtype == torch.float16


class Session:
    """A pipeline prepared for textual inversion: frozen, with trainable vectors spliced in.

    `loss(...)` is the whole differentiable path (text encoders -> UNet -> MSE); `restore()`
    puts the pipeline back exactly as it was (its own embedding modules, no new rows).
    """

    def __init__(self, pipe: Any, n_vectors: int, device: Any, dtype: Any, init: Callable[[Any, Any, str], np.ndarray]) -> None:
        import torch

        self.pipe, self.device, self.dtype, self.n = pipe, device, dtype, n_vectors
        self.unet, self.vae = pipe.unet, pipe.vae
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
        self.xl = getattr(pipe, "text_encoder_2", None) is not None
        if self.xl:
            pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        self._saved: list[tuple[Any, Any, Any, list[Any], int]] = []
        # everything frozen: no parameter of the model receives a gradient
        for module in [self.unet, self.vae, *(te for _, te in pairs)]:
            module.requires_grad_(False)
            module.eval()
        Spliced = _splice_class()
        self.encoders: list[Encoder] = []
        for i, (tok, te) in enumerate(pairs):
            base = te.get_input_embeddings()
            key = _encoder_key(int(base.weight.shape[1]), i if self.xl else None)
            start = init(tok, base.weight, key)
            vec = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(start, np.float32)).to(device))
            # pooled output from the end-of-text token even on configs with the legacy eos id 2
            eos_fixed = [m for m in te.modules() if getattr(m, "eos_token_id", None) == 2]
            self._saved.append((te, base, Spliced(base, vec), eos_fixed, tok.eos_token_id))
            self.encoders.append(Encoder(key, tok, te, vec, base.num_embeddings))
        self.splice()
        self.params = [e.vectors for e in self.encoders]
        self._device_cache: dict[Any, Any] = {}
        # autocast only where some frozen weights are not already in the compute dtype (a
        # pipeline loaded in bf16 needs none: inputs are cast explicitly, and autocast's per-op
        # checks cost CPU time that a launch-bound step does not have). The new vectors are fp32
        # by design and sit inside the text encoders now, so they do not count.
        frozen = [self.unet, *(e.model for e in self.encoders)]
        self.autocast = dtype != torch.float32 and any(p.dtype != dtype for m in frozen for p in m.parameters() if p.is_floating_point() and not p.requires_grad)
        self.step_unet = self.unet
        self.enabled_checkpointing = False
        # the noise schedule of the model (epsilon or v-prediction)
        from diffusers import DDPMScheduler

        sched_cfg = pipe.scheduler.config
        self.prediction = sched_cfg.get("prediction_type", "epsilon")
        ddpm = DDPMScheduler.from_config(sched_cfg)
        self.alphas = ddpm.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.n_train_t = int(ddpm.config.num_train_timesteps)
        self.add_time = getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    def token_ids(self, prompts: list[str]) -> list[Any]:
        """Per text encoder, the [batch, 77] token ids of prompts whose `[name]` stands for the new vectors."""
        import torch

        return [torch.stack([self._to_device(("ids", e.key, p), lambda e=e, p=p: e.ids(p, self.n), torch.long) for p in prompts]) for e in self.encoders]

    def time_tensor(self, batch: int, time_ids: list[list[int]] | None = None) -> Any:
        """SDXL's size-and-crop conditioning as a [batch, 6] tensor (None for other models)."""
        import torch

        if not self.add_time:
            return None
        rows = time_ids or [[64, 64, 0, 0, 64, 64]] * batch
        return torch.stack([self._to_device(("time", tuple(row)), lambda row=row: row, self.dtype) for row in rows])

    def condition(self, ids: list[Any], times: Any = None) -> tuple[Any, dict[str, Any] | None]:
        """Text-encoder outputs (and SDXL's added conditioning) for token ids from `token_ids`."""
        import torch

        hidden, pooled = [], None
        for e, batch_ids in zip(self.encoders, ids, strict=True):
            if self.xl:
                out = e.model(batch_ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                if e.key == "clip_g":
                    pooled = out[0]
            else:
                hidden.append(e.model(batch_ids)[0])
        ehs = torch.cat(hidden, dim=-1)
        if not self.add_time:
            return ehs, None
        return ehs, {"text_embeds": pooled, "time_ids": times.to(ehs.dtype)}

    def _to_device(self, key: Any, make: Callable[[], list[int]], dtype: Any) -> Any:
        """Small constant tensors (token ids, SDXL time ids), copied to the device once: a copy
        from ordinary host memory would wait for the GPU and stall the step pipeline."""
        got = self._device_cache.get(key)
        if got is None:
            import torch

            t = torch.tensor(make(), dtype=dtype)
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            got = self._device_cache[key] = t.to(self.device)
        return got

    def loss(self, latents: Any, noise: Any, t: Any, prompts: list[str], time_ids: list[list[int]] | None = None, weight: Any = None) -> Any:
        """Noise-prediction MSE (fp32) of one batch of prompts."""
        return self.loss_from(latents, noise, t, self.token_ids(prompts), self.time_tensor(len(prompts), time_ids), weight)

    def loss_from(self, latents: Any, noise: Any, t: Any, ids: list[Any], times: Any = None, weight: Any = None) -> Any:
        """The same loss from tensors only (no Python-side inputs), so a CUDA graph can capture it."""
        import torch

        a = self.alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = noise if self.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            ehs, added = self.condition(ids, times)
            pred = self.step_unet(noisy.to(self.dtype), t, encoder_hidden_states=ehs, added_cond_kwargs=added).sample
        err = (pred.float() - target) ** 2
        return (err * weight).mean() if weight is not None else err.mean()

    def splice(self) -> None:
        """Put the trainable vectors in front of each token table."""
        for te, _base, spliced, eos_fixed, eos in self._saved:
            te.set_input_embeddings(spliced)
            for m in eos_fixed:
                m.eos_token_id = eos

    def restore(self) -> None:
        """Give the pipeline back exactly as it was (for previews, and at the end)."""
        for te, base, _spliced, eos_fixed, _eos in self._saved:
            te.set_input_embeddings(base)
            for m in eos_fixed:
                m.eos_token_id = 2

    def close(self) -> None:
        """The end of training: the pipeline given back, gradient checkpointing undone."""
        self.restore()
        if self.enabled_checkpointing:
            self.unet.disable_gradient_checkpointing()
            self.enabled_checkpointing = False


def train(cfg: TrainConfig, log: Log = print, progress: Progress | None = None, pipe: Any = None) -> TrainResult:
    """Run one training (or continue one with cfg.resume) and return what it produced.

    `pipe`: an already loaded pipeline to train against (it is left exactly as it was)."""
    started = time.perf_counter()
    notes: list[str] = []

    # Stage 1: refuse bad options (nothing heavy loaded yet).
    check_config(cfg)
    run_dir = Path(cfg.run_dir)
    lines = load_template(cfg.template)
    lr_schedule = parse_schedule(cfg.lr, cfg.steps)
    total = lr_schedule.last_step
    clip = parse_clip_grad(cfg.clip_grad, cfg.steps)
    init_emb = _load_init_embedding(cfg)

    import torch

    device, dtype, use_scaler = _pick_device_and_dtype(cfg)

    # Stage 2: load the model in the compute dtype; read the pictures at its training size.
    own_pipe = pipe is None
    if own_pipe:
        pipe = load_pipeline(cfg.model, device, dtype)
    size = cfg.size
    if size == "auto":
        side = int(pipe.unet.config.sample_size) * (2 ** (len(pipe.vae.config.block_out_channels) - 1))
        size = (side, side)
    pics: PictureSet = load_pictures(Path(cfg.images), size, flip=cfg.flip)  # type: ignore[arg-type]

    # Stage 3: the new vectors spliced into each text encoder; everything else frozen.
    def init(tok: Any, table: Any, key: str) -> np.ndarray:
        return _initial_vectors(cfg, tok, table, key, cfg.vectors, init_emb)

    session = Session(pipe, cfg.vectors, device, dtype, init)
    # on cuda:N the run's streams, generators and graph belong to that GPU, not the current one
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with on_device:
            return _run(cfg, session, pics, lines, lr_schedule, total, clip, device, dtype, use_scaler, own_pipe, run_dir, notes, started, log, progress)
    finally:
        session.close()


def _run(cfg: TrainConfig, session: Session, pics: PictureSet, lines: list[str], lr_schedule: Schedule, total: int, clip: Any, device: Any, dtype: Any, use_scaler: bool, own_pipe: bool, run_dir: Path, notes: list[str], started: float, log: Log, progress: Progress | None) -> TrainResult:
    import torch

    # Stage 4: the run folder (cleared with --overwrite), the latents of every picture, once.
    if cfg.overwrite and not cfg.resume and run_dir.is_dir():
        for old in run_dir.glob(f"{cfg.name}-*"):
            old.unlink()
        for old_name in ("loss.csv", "loss.png", "settings.json"):
            (run_dir / old_name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for line in pics.skipped:
        log(line)
    log(f"Training {cfg.name!r} on {pics.describe()} for {total} steps ({device.type}, {str(dtype).replace('torch.', '')}); run folder {run_dir}")
    vae = session.vae
    vae_dtype = next(vae.parameters()).dtype
    if vae_dtype != torch.float32:
        vae.to(dtype=torch.float32)  # one pass per picture: fp32 avoids fp16 VAE overflow
    cache: LatentCache = encode_latents(vae, pics.pictures, cfg.latent_sampling, cfg.seed, device, torch.float32, cfg.alpha_as_loss_weight)
    if vae_dtype != torch.float32:
        vae.to(dtype=vae_dtype)

    # Stage 5: optimizer over the new vectors only; resume restores vectors, optimizer and step.
    if cfg.gradient_checkpointing and not session.unet.is_gradient_checkpointing:
        session.unet.enable_gradient_checkpointing()
        session.enabled_checkpointing = True
    if cfg.compile:
        session.step_unet = torch.compile(session.unet)
    params = session.params
    optimizer = torch.optim.AdamW(params, lr=lr_schedule(0), weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda") if use_scaler and device.type == "cuda" else None
    def note(message: str) -> None:
        """Something the user should know about this run: logged now, kept in the result."""
        notes.append(message)
        log(message)

    # one micro-batch's forward and backward: eager, or replayed from a captured CUDA graph
    run_micro = make_step(cfg.cuda_graphs, session, 1.0 / cfg.grad_accum, cfg.batch_size, device, scaler, cfg.gradient_checkpointing, cfg.compile, note)
    start_step = 0
    loss_csv = run_dir / "loss.csv"
    if cfg.resume:
        found = latest_checkpoint(run_dir, cfg.name)
        assert found is not None  # check_config made sure
        start_step = load_checkpoint(found[1], session.encoders, optimizer, scaler)
        write_loss_csv(loss_csv, [], keep_until=start_step)
        log(f"Resuming {cfg.name!r} at step {start_step} from {found[1].name}")
    else:
        write_loss_csv(loss_csv, [], keep_until=-1)
    (run_dir / "settings.json").write_text(json.dumps(cfg.settings(), indent=2), "utf-8")
    sd_checkpoint = cfg.model_hash or model_autov2(cfg.model)
    plan = BatchPlan([p.size for p in pics.pictures], cfg.batch_size, cfg.seed)

    def time_ids(idx: list[int]) -> list[list[int]]:
        out = []
        for i in idx:
            p = pics.pictures[i]
            w, h = p.size
            out.append([*p.original_size, *p.crop_top_left, h, w])
        return out

    # Stage 6: the loop. Each step: set the lr, run grad_accum micro-batches, clip, step.
    pending: list[tuple[int, int, int, Any, float]] = []
    previews: list[Path] = []
    last_loss: float | None = None
    flush_every = LOSS_READBACK_EVERY.get(device.type, 20)
    t0 = time.perf_counter()
    preview_prompt = cfg.preview_prompt or lines[0].replace("[filewords]", pics.pictures[0].caption)

    def flush() -> None:
        nonlocal last_loss
        if not pending:
            return
        values = torch.stack([p[3] for p in pending]).float().cpu().tolist()
        rows = [(s, e, j, v, lr) for (s, e, j, _, lr), v in zip(pending, values, strict=True)]
        write_loss_csv(loss_csv, rows)
        last_loss = values[-1]
        pending.clear()
        # checked at every readback (not only in the loop), so no checkpoint or final embedding
        # is written from vectors that went NaN in steps not yet read back
        bad = next((row[0] for row in rows if not math.isfinite(row[3])), None)
        if bad is not None:
            raise EngineError(f"Training of {cfg.name!r} diverged at step {bad} (the loss is not a number); lower --lr or use --precision fp32.")

    for step in range(start_step, total):
        lr = lr_schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        grads: list[Any] | None = None
        for k in range(cfg.grad_accum):
            # every random draw of a micro-batch comes from (seed, micro-batch number)
            micro = step * cfg.grad_accum + k
            epoch, epoch_step, idx = plan.batch(micro)
            # drawn on the training device itself: no host-to-device copy stalls the GPU
            g = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "noise", micro))
            latents = cache.draw(idx, g)
            noise = torch.randn(latents.shape, generator=g, device=device)
            t = torch.randint(0, session.n_train_t, (len(idx),), generator=g, device=device)
            prompts = prompts_for(pics.pictures, idx, lines, cfg.seed, micro, cfg.shuffle_tags, cfg.tag_dropout)
            mb = MicroBatch(latents, noise, t, session.token_ids(prompts), session.time_tensor(len(idx), time_ids(idx)), cache.weight(idx))
            loss, micro_grads = run_micro(mb)
            # the step's gradient is the sum over micro-batches (each loss is already / grad_accum);
            # a graph's outputs are overwritten by its next replay, so they are copied or used now
            if grads is None:
                grads = [g_.clone() for g_ in micro_grads] if cfg.grad_accum > 1 else list(micro_grads)
            else:
                for acc, g_ in zip(grads, micro_grads, strict=True):
                    acc.add_(g_)
            step_loss += loss
        assert grads is not None
        for p, g_ in zip(params, grads, strict=True):
            p.grad = g_
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip is not None:
            limit = clip[1](step)
            if clip[0] == "value":
                torch.nn.utils.clip_grad_value_(params, limit)
            else:
                torch.nn.utils.clip_grad_norm_(params, limit)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        done = step + 1
        pending.append((done, epoch, epoch_step, step_loss, lr))
        # Reading a loss back syncs the device: on a GPU, losses are read 20 steps at a time (the
        # progress bar then shows a loss at most 20 steps old); on the CPU every step is free.
        if len(pending) >= flush_every or done == start_step + 1:
            flush()
        if progress is not None:
            elapsed = time.perf_counter() - t0
            rate = (done - start_step) / elapsed if elapsed > 0 else 0.0
            progress({"step": done, "total": total, "loss": last_loss, "lr": lr, "it_s": rate, "eta_s": (total - done) / rate if rate else None})
        if cfg.save_every and done % cfg.save_every == 0 and done != total:
            flush()
            save_checkpoint(run_dir, cfg, make_embedding(cfg, session.encoders, done, sd_checkpoint), session.encoders, optimizer, scaler, done)
        if cfg.preview_every and done % cfg.preview_every == 0:
            emb = make_embedding(cfg, session.encoders, done, sd_checkpoint)
            session.restore()
            try:
                previews.append(make_preview(cfg, session.pipe, emb, preview_prompt.replace(PLACEHOLDER, cfg.name), run_dir / f"{cfg.name}-{done}.preview.png", pics.pictures[0].size, sd_checkpoint))
            finally:
                session.splice()
    flush()

    # Stage 7: outputs: the embedding (+ A1111 .pt, + PNG card), a last checkpoint, the loss plot.
    emb = make_embedding(cfg, session.encoders, total, sd_checkpoint)
    out_dir = Path(cfg.embeddings_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in existing_outputs(out_dir, cfg.name):
        old.unlink()
    output = write_embedding(emb, out_dir / f"{cfg.name}.safetensors", "safetensors")
    extra: list[Path] = []
    if cfg.also_pt and session.xl:
        note("No .pt written: A1111 .pt files hold one text encoder; SDXL embeddings are .safetensors (clip_l + clip_g).")
    elif cfg.also_pt:
        extra.append(write_embedding(emb, out_dir / f"{cfg.name}.pt", "a1111"))
    save_checkpoint(run_dir, cfg, emb, session.encoders, optimizer, scaler, total)
    if cfg.png_card:
        try:
            extra.append(write_embedding(emb, run_dir / f"{cfg.name}.png", "png"))
        except Exception as exc:  # noqa: BLE001 - the card is optional
            note(f"PNG card not written: {exc}")
    points = read_loss_csv(loss_csv)
    loss_png = plot_loss(points, run_dir / "loss.png", cfg.name)
    ckpts = [p for p in run_dir.glob(f"{cfg.name}-*.safetensors") if not p.name.endswith(OPTIM_SUFFIX)]
    ckpts.sort(key=lambda p: _step_of(p, cfg.name) or 0)
    result = TrainResult(
        name=cfg.name,
        output=output,
        extra_outputs=extra,
        run_dir=run_dir,
        steps=total,
        pictures=pics.describe(),
        final_loss=last_loss,
        checkpoints=ckpts,
        previews=sorted(set(previews) | set(run_dir.glob(f"{cfg.name}-*.preview.png"))),
        loss_csv=loss_csv,
        loss_png=loss_png,
        sd_checkpoint=sd_checkpoint,
        seconds=time.perf_counter() - started,
        notes=notes,
        steps_from="cuda graph" if run_micro.replaying else "eager",
    )

    # Stage 8: the catalogue: a local entry with its training story.
    if cfg.catalog is not None:
        result.file_id = register(cfg, result, emb, len(pics.pictures), pics.originals, points)
    return result


def register(cfg: TrainConfig, result: TrainResult, emb: Embedding, count: int, originals: int, points: list[tuple[int, float]]) -> int | None:
    """Record the new file, its training run and its previews in the catalogue."""
    from tihub.hashing import sha256_file

    cat = cfg.catalog
    sha = sha256_file(result.output)
    file_id = cat.upsert_local_file(result.output, emb, sha)
    entry_id = None
    try:
        entry_id = cat.entry(cfg.name).get("id")
    except Exception:  # noqa: BLE001 - the run is still recorded against the file
        entry_id = None
    settings = cfg.settings()
    settings.update(sd_checkpoint=result.sd_checkpoint, steps_from=result.steps_from, pictures_with_flips=count, seconds=round(result.seconds, 1), final_loss=result.final_loss)
    step_every = max(1, len(points) // 200)
    cat.add_training_run(
        entry_id=entry_id,
        file_id=file_id,
        settings={**settings, "loss_curve": points[::step_every]},
        pictures=originals,
        loss_csv=str(result.loss_csv),
        loss_png=str(result.loss_png) if result.loss_png else None,
        checkpoints=[{"path": str(p), "step": _step_of(p, cfg.name)} for p in result.checkpoints],
    )
    for p in result.previews:
        cat.add_preview(entry_id=entry_id, file_id=file_id, path=str(p), model_hash=result.sd_checkpoint, params={"step": _step_of(p, cfg.name), "prompt": cfg.preview_prompt})
    for p in result.extra_outputs:
        if p.suffix == ".pt" and p.parent == Path(cfg.embeddings_dir):
            cat.upsert_local_file(p, emb, sha256_file(p), entry_id=entry_id)
    return file_id


def _step_of(path: Path, name: str) -> int | None:
    m = re.match(re.escape(name) + r"-(\d+)", path.name)
    return int(m.group(1)) if m else None


__all__ = ["TrainConfig", "TrainResult", "train", "check_config", "parse_size", "parse_clip_grad", "plot_loss"]
