"""Text-to-image generation with A1111 prompt semantics and embeddings from the workspace.

`Engine` is the long-lived object (one model + the embeddings folder as vocabulary); it sees
embedding files added, replaced or removed on its next prompt; the CLI, the grid and the
trainer's previews call `Engine.generate`. `generate(...)` is the one-call library entry point
(builds an Engine from a model, a pipeline or an existing engine, then calls it).

One image batch (`Engine.run`) goes through these stages:
1-2. conditioning (conditioning.BatchConds, A1111's rules): each prompt is split at AND, each
   part and negative gets its `[from:to:when]`/`[a|b]` schedule over the model calls, and the
   texts of one schedule are encoded as one batch, embeddings spliced in;
3. noise: one CPU generator per image seeded with its seed, so an image does not depend on the
   batch it is in, and the same seed + settings give the same image on the same device;
4. denoising: one diffusers pipeline call for the whole batch; each UNet call is answered by
   conditioning.GuidedUNet (the schedule entry for that call, AND parts, rows of equal length in
   one forward, never padded across images); on CPU the math is batch-invariant (invariant.py);
5. output: PIL images; `generate` saves them as `00000-SEED.png` with A1111 infotext.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tihub import __version__
from tihub.engine.conditioning import BatchConds, GuidedUNet, PromptEncoder
from tihub.engine.invariant import batch_invariant
from tihub.engine.models import LoadedModel, from_pipeline, load_model
from tihub.engine.samplers import DEFAULT, calls_per_step, canonical, canonical_schedule, check_schedule_type, infotext_schedule, make_scheduler
from tihub.engine.vocabulary import Vocabulary
from tihub.errors import ConfigError
from tihub.formats.model import Embedding
from tihub.infotext import build_infotext, pnginfo_chunk, ti_hashes_value

MAX_SEED = 2**32 - 1


@dataclass
class Settings:
    steps: int = 20
    sampler: str = DEFAULT
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    clip_skip: int = 1
    schedule_type: str = "Automatic"  # A1111's "Schedule type": Karras, Exponential, SGM Uniform, Beta, ...
    pad_conds: bool = False  # A1111's "Pad conds": pad prompt and negative to one chunk count

    def check(self) -> None:
        if self.width % 8 or self.height % 8 or self.width < 8 or self.height < 8:
            raise ConfigError(f"Size {self.width}x{self.height} is not a multiple of 8; use e.g. {max(8, self.width // 8 * 8)}x{max(8, self.height // 8 * 8)}.")
        if self.steps < 1 or self.steps > 1000:
            raise ConfigError(f"Steps {self.steps} is out of range; use 1 to 1000.")
        if self.clip_skip < 1 or self.clip_skip > 12:
            raise ConfigError(f"Clip skip {self.clip_skip} is out of range; use 1 to 12.")
        self.sampler = canonical(self.sampler)
        self.schedule_type = canonical_schedule(self.schedule_type)
        check_schedule_type(self.sampler, self.schedule_type)


@dataclass
class Result:
    images: list[Any]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # embedding names used (prompt + negative)

    @property
    def path(self) -> Path | None:
        return self.paths[0] if self.paths else None


def parse_size(size: str | int | None, default: int = 512) -> tuple[int, int]:
    """`WxH` or `N` (square) -> (width, height)."""
    if size is None or size == "":
        return default, default
    text = str(size).strip().lower()
    m = re.fullmatch(r"(\d+)(?:\s*[x×]\s*(\d+))?", text)
    if not m:
        raise ConfigError(f"Size '{size}' is not WxH or N; use e.g. 512x768 or 512.")
    w = int(m.group(1))
    return w, int(m.group(2) or w)


def resolve_seed(seed: int | None) -> int:
    if seed is None or int(seed) < 0:
        return random.randrange(0, MAX_SEED)
    return int(seed) & MAX_SEED


class Engine:
    """A model plus the embeddings vocabulary; reuse it for many generations."""

    def __init__(
        self,
        model: LoadedModel | Any,
        embeddings_dir: str | os.PathLike[str] | None = None,
        extra: dict[str, Embedding] | None = None,
    ) -> None:
        self.model = model if isinstance(model, LoadedModel) else from_pipeline(model)
        self.vocabulary = Vocabulary(Path(embeddings_dir) if embeddings_dir else None, dict(extra or {}))
        self._encoders: dict[int, PromptEncoder] = {}
        self._base_scheduler = dict(self.model.pipe.scheduler.config)

    @classmethod
    def load(cls, model: str | os.PathLike[str], embeddings_dir: Any = None, device: Any = None, dtype: Any = None, hash_cache: Any = None, config: Any = None) -> Engine:
        return cls(load_model(model, device=device, dtype=dtype, hash_cache=hash_cache, config=config), embeddings_dir)

    def encoder(self, clip_skip: int = 1) -> PromptEncoder:
        if clip_skip not in self._encoders:
            self._encoders[clip_skip] = PromptEncoder(self.model.pipe, self.model.family, self.vocabulary, clip_skip)
        return self._encoders[clip_skip]

    def explain(self, prompt: str, steps: int = 20) -> dict[str, Any]:
        return explain_prompt(prompt, steps, self.encoder().tokenizer, self.vocabulary)

    # -- one batched pipeline call -----------------------------------------------------------

    def run(self, prompts: list[str], negatives: list[str], seeds: list[int], settings: Settings) -> tuple[list[Any], list[list[str]]]:
        """Images for parallel lists of prompts/negatives/seeds, in one pipeline call."""
        import torch

        settings.check()
        pipe = self.model.pipe
        family = self.model.family
        enc = self.encoder(settings.clip_skip)
        n = len(prompts)
        scheduler = make_scheduler(settings.sampler, self._base_scheduler, settings.schedule_type)
        # A1111 schedules prompt editing over model calls: twice the steps for second-order samplers
        steps = settings.steps * calls_per_step(scheduler)

        # 1-2. conditioning as A1111 (conditioning.BatchConds): AND parts, editing schedules
        #    over model calls, each schedule encoded as one batch; images never padded together
        conds = BatchConds.build(enc, prompts, negatives, steps, pad_conds=settings.pad_conds)
        used = conds.used
        device, dtype = self.model.device, self.model.dtype

        # 3. noise: one CPU generator per image
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        shape = (pipe.unet.config.in_channels, settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
        latents = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens]).to(device=device, dtype=dtype)

        # 4. denoise in one call; the pipeline gets placeholder embeds and GuidedUNet answers
        #    each UNet call from `conds`. The pipeline's own scheduler is put back afterwards
        #    (the trainer shares its pipeline with previews).
        own_scheduler = pipe.scheduler
        pipe.scheduler = scheduler
        first = conds.images[0].uncond[0].cond
        holder = torch.zeros((n, 77, first.hidden.shape[-1]), device=device, dtype=dtype)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=holder,
            negative_prompt_embeds=holder,
            num_inference_steps=settings.steps,
            guidance_scale=settings.cfg_scale,
            width=settings.width,
            height=settings.height,
            generator=gens,
            latents=latents,
            output_type="pil",
        )
        if family == "sdxl":
            pool = torch.zeros((n, first.pooled.shape[-1]), device=device, dtype=dtype)
            kwargs.update(pooled_prompt_embeds=pool, negative_pooled_prompt_embeds=pool)
        try:
            # batch_invariant: on CPU an image is the same alone or in a grid, to the pixel
            with torch.inference_mode(), GuidedUNet(pipe, conds), batch_invariant(pipe.unet, pipe.vae, device=device):
                images = pipe(**kwargs).images
        finally:
            pipe.scheduler = own_scheduler
        return images, used

    # -- infotext ---------------------------------------------------------------------------

    def infotext(self, prompt: str, negative: str, seed: int, settings: Settings, used: list[str], extra: dict[str, Any] | None = None) -> str:
        hashes = {}
        for name in used:
            sha = self.vocabulary.sha256(name)
            if sha:
                hashes[name] = sha
        params: dict[str, Any] = {
            "Steps": settings.steps,
            "Sampler": settings.sampler,
            "Schedule type": infotext_schedule(settings.sampler, settings.schedule_type),
            "CFG scale": f"{settings.cfg_scale:g}",
            "Seed": seed,
            "Size": f"{settings.width}x{settings.height}",
            "Model hash": self.model.hash,
            "Model": self.model.name,
            "Clip skip": settings.clip_skip if settings.clip_skip > 1 else None,
            "RNG": "CPU",
            "TI hashes": ti_hashes_value(hashes),
            "Pad conds": True if settings.pad_conds else None,
            "Version": f"tihub {__version__}",
        }
        params.update(extra or {})
        return build_infotext(prompt, negative, params)

    # -- the whole command ------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int = 20,
        sampler: str | None = None,
        cfg_scale: float = 7.0,
        seed: int | None = -1,
        width: int | None = None,
        height: int | None = None,
        size: str | int | None = None,
        batch_size: int = 1,
        batch_count: int = 1,
        clip_skip: int = 1,
        out: str | os.PathLike[str] | None = None,
        schedule_type: str | None = None,
        pad_conds: bool = False,
    ) -> Result:
        if batch_size < 1 or batch_count < 1:
            raise ConfigError("--batch-size and --batch-count must be at least 1.")
        native = self.model.native_size
        w, h = parse_size(size, native) if size is not None else (width or native, height or width or native)
        settings = Settings(steps=steps, sampler=sampler or DEFAULT, cfg_scale=cfg_scale, width=w, height=h, clip_skip=clip_skip, schedule_type=schedule_type or "Automatic", pad_conds=pad_conds)
        settings.check()
        first = resolve_seed(seed)
        result = Result([], [], [])
        for batch in range(batch_count):
            seeds = [(first + batch * batch_size + i) & MAX_SEED for i in range(batch_size)]
            images, used = self.run([prompt] * batch_size, [negative_prompt] * batch_size, seeds, settings)
            for img, s, u in zip(images, seeds, used, strict=True):
                result.images.append(img)
                result.seeds.append(s)
                result.infotexts.append(self.infotext(prompt, negative_prompt, s, settings, u))
                for name in u:
                    if name not in result.used:
                        result.used.append(name)
        result.warnings = self.vocabulary.take_warnings()
        if out is not None:
            result.paths = save_images(result.images, result.seeds, result.infotexts, Path(out))
        return result


def next_index(folder: Path) -> int:
    """A1111-style numbering: one more than the highest leading number in the folder."""
    best = -1
    if folder.is_dir():
        for p in folder.iterdir():
            m = re.match(r"(\d+)-", p.name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


def save_images(images: list[Any], seeds: list[int], infotexts: list[str], out: Path) -> list[Path]:
    """Save as `out/NNNNN-SEED.png` (or exactly `out` when it names one .png file)."""
    if out.suffix.lower() == ".png" and len(images) == 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(out, pnginfo=pnginfo_chunk(infotexts[0]))
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    index = next_index(out)
    paths = []
    for img, seed, text in zip(images, seeds, infotexts, strict=True):
        path = out / f"{index:05d}-{seed}.png"
        img.save(path, pnginfo=pnginfo_chunk(text))
        paths.append(path)
        index += 1
    return paths


def explain_prompt(prompt: str, steps: int, tokenizer: Any, vocabulary: Vocabulary | None) -> dict[str, Any]:
    """What `tihub prompt --json` prints: schedule, attention, tokens, chunks, embeddings."""
    from tihub.engine.prompts import explain

    parsed = explain(prompt, steps)
    texts = []
    for _, text in parsed["schedule"]:
        tok = tokenizer.tokenize(text)
        texts.append({"text": text, "tokens": tok.token_count, "chunks": len(tok.chunks), "embeddings": tok.used})
    final = parsed["schedule"][-1][1]
    tok = tokenizer.tokenize(final)
    used = []
    for name in dict.fromkeys(n for t in texts for n in t["embeddings"]):
        emb = vocabulary.load(name) if vocabulary is not None else None
        path = vocabulary.path_of(name) if vocabulary is not None else None
        used.append({"name": name, "file": str(path) if path else None, "vectors": emb.vector_count if emb else None, "widths": emb.widths if emb else None})
    return {
        "prompt": prompt,
        "steps": steps,
        **parsed,  # schedule, attention
        "tokens": tok.token_count,
        "chunks": len(tok.chunks),
        "chunk_tokens": [c.length for c in tok.chunks],
        "per_text": texts,
        "embeddings": used,
        "warnings": vocabulary.take_warnings() if vocabulary is not None else [],
    }


def generate(
    prompt: str,
    negative_prompt: str = "",
    *,
    model: Any = None,
    pipe: Any = None,
    engine: Engine | None = None,
    embeddings: dict[str, Embedding] | None = None,
    embeddings_dir: str | os.PathLike[str] | None = None,
    steps: int = 20,
    sampler: str | None = None,
    cfg_scale: float = 7.0,
    seed: int | None = -1,
    width: int | None = None,
    height: int | None = None,
    size: str | int | None = None,
    batch_size: int = 1,
    batch_count: int = 1,
    clip_skip: int = 1,
    out: str | os.PathLike[str] | None = None,
    device: Any = None,
    dtype: Any = None,
    schedule_type: str | None = None,
    pad_conds: bool = False,
) -> Result:
    """Generate images in one call.

    Give one of `engine` (reused), `pipe` (an in-memory diffusers pipeline) or `model` (a path,
    repo id or LoadedModel). `embeddings` adds in-memory embeddings by name (they win over files
    in `embeddings_dir`). With `out` the images are saved with infotext.
    """
    if engine is None:
        if pipe is not None:
            loaded = from_pipeline(pipe)
        elif isinstance(model, LoadedModel):
            loaded = model
        elif model is not None:
            loaded = load_model(model, device=device, dtype=dtype)
        else:
            raise ConfigError("generate() needs a model, a pipe or an engine.")
        engine = Engine(loaded, embeddings_dir, embeddings)
    elif embeddings:
        engine.vocabulary.extra.update(embeddings)
    return engine.generate(
        prompt,
        negative_prompt,
        steps=steps,
        sampler=sampler,
        cfg_scale=cfg_scale,
        seed=seed,
        width=width,
        height=height,
        size=size,
        batch_size=batch_size,
        batch_count=batch_count,
        clip_skip=clip_skip,
        out=out,
        schedule_type=schedule_type,
        pad_conds=pad_conds,
    )
