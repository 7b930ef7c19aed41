"""Text-to-image generation with A1111 prompt semantics and embeddings from the workspace.

`Engine` is the long-lived object (one model + the embeddings folder as vocabulary); it sees
embedding files added, replaced or removed on its next prompt; the CLI, the grid and the
trainer's previews call `Engine.generate`. `generate(...)` is the one-call library entry point
(builds an Engine from a model, a pipeline or an existing engine, then calls it).

One image batch (`Engine.run`) goes through these stages:
1. prompt schedules: `[from:to:when]` and `[a|b]` become per-step texts (A1111's rules);
2. conditioning: every distinct text is encoded once, embeddings spliced in (conditioning.py);
3. noise: one generator per image seeded with its seed (A1111's gpu/cpu/nv sources, ENSD), so an
   image does not depend on the batch it is in (tihub.engine.sampling.rng);
4. denoising: A1111's sampler over the model's own sigmas and A1111's schedule type, through
   the UNet with classifier-free guidance; the conditioning in force is looked up per model call
   (tihub.engine.sampling: the plan, the samplers, the denoiser);
5. hires fix (when asked): upscale, then A1111's img2img pass (tihub.engine.sampling.hires);
6. output: each latent decoded alone and turned into 8-bit pixels as A1111 does (truncating);
   `generate` saves them as `00000-SEED.png` with A1111 infotext.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tihub import __version__
from tihub.engine.conditioning import BatchConds, PromptEncoder
from tihub.engine.invariant import batch_invariant
from tihub.engine.models import LoadedModel, from_pipeline, load_model
from tihub.engine.samplers import DEFAULT, SAMPLERS, check_schedule_type, resolve
from tihub.engine.sampling import Plan, Randomness
from tihub.engine.sampling.hires import Hires
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
    # A1111's randomness settings (tihub.engine.sampling.Randomness)
    rng: str = "gpu"  # gpu | cpu | nv
    ensd: int = 0  # eta noise seed delta
    eta: float | None = None  # None: the sampler's default
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: no upper bound
    s_noise: float = 1.0
    hires: Hires | None = None  # A1111's "Hires. fix": a second pass at a larger size
    pad_conds: bool = False  # A1111's "Pad conds": pad prompt and negative to one chunk count
    # A1111's variation seeds (tihub.engine.sampling.rng): the variation seed (-1: random, drawn
    # once), its strength (0: off) and "Seed resize from" (width, height) in pixels
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | str | None = None
    # A1111's other sampler settings (tihub.engine.sampling.SAMPLER_SETTINGS): sigma min/max/rho, UniPC, NGMS, Skip Early CFG
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0

    def randomness(self) -> Randomness:
        from tihub.engine.sampling import SAMPLER_SETTINGS

        return Randomness(rng=self.rng, ensd=self.ensd, eta=self.eta, s_churn=self.s_churn, s_tmin=self.s_tmin, s_tmax=self.s_tmax, s_noise=self.s_noise,
                          **{k: getattr(self, k) for k in SAMPLER_SETTINGS})

    def randomness_for(self, sampler: str) -> Randomness:
        """The randomness settings a (hires) sampler takes; A1111 passes a sampler only its own
        options, so the others go back to their defaults."""
        r = self.randomness()
        spec = SAMPLERS[sampler]
        if spec.eta is None:
            r.eta = None
        for key, default in (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", 0.0), ("s_noise", 1.0)):
            if key not in spec.extra:
                setattr(r, key, default)
        return r

    def check(self) -> None:
        if self.width % 8 or self.height % 8 or self.width < 8 or self.height < 8:
            raise ConfigError(f"Size {self.width}x{self.height} is not a multiple of 8; use e.g. {max(8, self.width // 8 * 8)}x{max(8, self.height // 8 * 8)}.")
        if self.steps < 1 or self.steps > 1000:
            raise ConfigError(f"Steps {self.steps} is out of range; use 1 to 1000.")
        if self.clip_skip < 1 or self.clip_skip > 12:
            raise ConfigError(f"Clip skip {self.clip_skip} is out of range; use 1 to 12.")
        self.sampler, self.schedule_type = resolve(self.sampler, self.schedule_type)
        check_schedule_type(self.sampler, self.schedule_type)
        r = self.randomness()
        r.check(self.sampler)
        self.rng = r.rng
        self.subseed_strength = float(self.subseed_strength or 0.0)
        if not 0.0 <= self.subseed_strength <= 1.0:
            raise ConfigError(f"Variation seed strength {self.subseed_strength:g} is out of range; use 0 (off) to 1.")
        if self.subseed_strength and (self.subseed is None or int(self.subseed) < 0):
            self.subseed = resolve_seed(-1)  # drawn once, so every image of a grid shares it
        self.subseed = -1 if self.subseed is None else int(self.subseed)
        self.seed_resize_from = parse_seed_resize(self.seed_resize_from)
        if self.hires is not None:
            self.hires.check()
            self.hires.target(self.width, self.height)
            sampler2, kind2, _ = self.hires.pass_settings(self.sampler, self.schedule_type, self.cfg_scale)
            check_schedule_type(sampler2, kind2)


@dataclass
class Result:
    images: list[Any]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # embedding names used (prompt + negative)
    plans: list[Plan] = field(default_factory=list)  # what each batch ran (sampler, sigmas, seeds, ...)

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


def parse_seed_resize(value: tuple[int, int] | list[int] | str | None) -> tuple[int, int] | None:
    """A1111's "Seed resize from" as (width, height) in pixels; None when off (0 or absent)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+)\s*[x×]\s*(-?\d+)\s*", value)
        if not m:
            raise ConfigError(f"Seed resize size '{value}' is not WxH; use e.g. 512x768.")
        value = (int(m.group(1)), int(m.group(2)))
    w, h = (int(v) for v in value)
    if w < 0 or h < 0 or w > 8192 or h > 8192:
        raise ConfigError(f"Seed resize size {w}x{h} is out of range; use 8 to 8192 pixels a side (0 0 turns it off).")
    if w == 0 or h == 0:
        return None
    if w < 8 or h < 8:
        raise ConfigError(f"Seed resize size {w}x{h} is smaller than one latent cell; use at least 8x8.")
    return w, h


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
        self._schedule: Any = None
        self._upscalers: dict[str, Any] = {}  # model upscaler files, loaded once
        self.plan: Plan | None = None  # the plan of the last `run`
        # told (done, total) as each sampling pass's steps run (tihub.progress.sampling_steps)
        self.on_step: Callable[[int, int], None] | None = None

    @classmethod
    def load(cls, model: str | os.PathLike[str], embeddings_dir: Any = None, device: Any = None, dtype: Any = None, hash_cache: Any = None, config: Any = None) -> Engine:
        return cls(load_model(model, device=device, dtype=dtype, hash_cache=hash_cache, config=config), embeddings_dir)

    def encoder(self, clip_skip: int = 1) -> PromptEncoder:
        if clip_skip not in self._encoders:
            self._encoders[clip_skip] = PromptEncoder(self.model.pipe, self.model.family, self.vocabulary, clip_skip)
        return self._encoders[clip_skip]

    def explain(self, prompt: str, steps: int = 20) -> dict[str, Any]:
        return explain_prompt(prompt, steps, self.encoder().tokenizer, self.vocabulary)

    # -- one batch -----------------------------------------------------------------------------

    def model_schedule(self) -> Any:
        """The model's noise levels (from its scheduler config's betas; the same for every source)."""
        if self._schedule is None:
            from tihub.engine.sampling.schedule import ModelSchedule

            self._schedule = ModelSchedule.from_config(dict(self.model.pipe.scheduler.config))
        return self._schedule

    def make_plan(self, seeds: list[int], settings: Settings) -> Plan:
        """What a batch with these seeds and settings will run (nothing is computed on the UNet)."""
        from tihub.engine.sampling import make_plan

        settings.check()
        return make_plan(settings.sampler, settings.schedule_type, settings.steps, self.model_schedule(), self.model.family, seeds, settings.randomness())

    def run(self, prompts: list[str], negatives: list[str], seeds: list[int], settings: Settings, subseeds: list[int] | None = None,
            a1111_batch: bool = False) -> tuple[list[Any], list[list[str]]]:
        """Images for parallel lists of prompts/negatives/seeds, computed as one batch.

        `subseeds`: each image's variation seed (default: `settings.subseed` for every image).
        `a1111_batch`: the images are one A1111 batch (generate's --batch-size), which shares one
        thing in A1111: the VAE posterior draws of an image-space hires upscaler; otherwise each
        image is drawn as A1111 draws it alone (grid cells)."""
        latents, used = self.sample(prompts, negatives, seeds, settings, subseeds, a1111_batch)
        return self.decode(latents), used

    def sample(self, prompts: list[str], negatives: list[str], seeds: list[int], settings: Settings, subseeds: list[int] | None = None,
               a1111_batch: bool = False) -> tuple[Any, list[list[str]]]:
        """Final latents (float32) for parallel lists of prompts/negatives/seeds; `self.plan` says
        what ran."""
        import torch

        from tihub.engine.sampling import run as run_plan
        from tihub.engine.sampling.denoiser import Denoiser
        from tihub.engine.sampling.rng import ImageNoise

        plan = self.make_plan(seeds, settings)
        pipe = self.model.pipe
        family = self.model.family
        enc = self.encoder(settings.clip_skip)
        n = len(prompts)
        # A1111 schedules prompt editing over model calls: twice the steps for second-order samplers
        steps = settings.steps * plan.calls_per_step

        # 1-2. conditioning as A1111 (conditioning.BatchConds): AND parts, editing schedules
        #    over model calls, each schedule encoded as one batch; images never padded together
        conds = BatchConds.build(enc, prompts, negatives, steps, pad_conds=settings.pad_conds)
        used = conds.used
        plan.chunks = conds.plan()  # the chunk layout, per image (generate --json)
        conds_at = conds.conds_at

        # 3. noise: per-image generators (A1111's gpu / cpu / nv sources), variation seeds
        device = self.model.device
        shape = (pipe.unet.config.in_channels, settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
        if subseeds is None:
            subseeds = [settings.subseed] * n

        def image_noise(latent_shape: tuple[int, ...]) -> ImageNoise:
            return ImageNoise(settings.rng, seeds, latent_shape, device, settings.ensd, subseeds=subseeds,
                              subseed_strength=settings.subseed_strength, seed_resize=settings.seed_resize_from)

        noise = image_noise(shape)
        if settings.subseed_strength or settings.seed_resize_from:
            plan.variation = {"subseeds": list(subseeds), "subseed_strength": settings.subseed_strength, "seed_resize_from": settings.seed_resize_from}

        # 4. denoise: the planned sampler through the guided UNet
        from tihub.engine.sampling import model_schedule

        def denoiser_for(p: Plan, conds: Any, width: int, height: int, cfg_scale: float = settings.cfg_scale) -> Denoiser:
            time_ids = None
            if family == "sdxl":  # SDXL's size conditioning: original size, crop (0, 0), target size
                time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
            lcm = SAMPLERS[p.sampler].algorithm == "lcm"
            return Denoiser(pipe.unet, model_schedule(p.sampler, self.model_schedule()), self.model.prediction, conds, cfg_scale, time_ids, lcm=lcm)

        # batch_invariant: on CPU an image is the same alone or in a grid, to the pixel
        with torch.inference_mode(), batch_invariant(pipe.unet, device=device):
            latents = run_plan(plan, denoiser_for(plan, conds_at, settings.width, settings.height), noise, on_step=self.on_step)

        # 5. hires fix: upscale, then A1111's img2img pass with its own sampler, schedule type,
        #    CFG scale and prompts where given, and the prompts' editing schedules over this pass
        hires = settings.hires
        if hires is not None:
            from tihub.engine.sampling import make_plan
            from tihub.engine.sampling.hires import LATENT_MODES, upscale_latents

            width, height = hires.target(settings.width, settings.height)
            if hires.upscaler in LATENT_MODES:
                init = upscale_latents(latents, hires.upscaler, width, height)
            else:
                # A1111 samples the VAE posterior from torch's global CPU generator, which its
                # gpu/cpu sources left seeded with the batch's last seed (see `encode`)
                draws = None
                if settings.rng in ("gpu", "cpu"):
                    draws = [(seeds[-1], i) for i in range(n)] if a1111_batch else [(s, 0) for s in seeds]
                init = self.encode([self._upscale_image(img, hires, width, height) for img in self.decode(latents)], draws)
            sampler2, kind2, cfg2 = hires.pass_settings(settings.sampler, settings.schedule_type, settings.cfg_scale)
            second = make_plan(sampler2, kind2, hires.steps or settings.steps, self.model_schedule(), family, seeds,
                               settings.randomness_for(sampler2), denoising=hires.denoising)
            # A1111: the hires prompts' schedules run over this pass's model calls, counted on
            # from the first pass's (prompts.prompt_schedule)
            conds2 = BatchConds.build(enc, [hires.prompt or p for p in prompts], [hires.negative_prompt or q for q in negatives],
                                      (hires.steps or settings.steps) * second.calls_per_step, pad_conds=settings.pad_conds, first_pass=steps)
            second.chunks = conds2.plan()
            used = [list(dict.fromkeys(a + b)) for a, b in zip(used, conds2.used, strict=True)]  # hires-only embeddings too
            noise2 = image_noise((shape[0], height // pipe.vae_scale_factor, width // pipe.vae_scale_factor))
            with torch.inference_mode(), batch_invariant(pipe.unet, device=device):
                latents = run_plan(second, denoiser_for(second, conds2.conds_at, width, height, cfg2), noise2,
                                   init=init.to(device=device, dtype=torch.float32), on_step=self.on_step)
            plan.hires = {**hires.to_json(settings.width, settings.height), "plan": second.to_json()}
        self.plan = plan
        return latents, used

    def _upscale_image(self, image: Any, hires: Hires, width: int, height: int) -> Any:
        from tihub.engine.sampling.hires import is_model_file, load_model_upscaler, upscale_image

        model = None
        if is_model_file(hires.upscaler):
            if hires.upscaler not in self._upscalers:
                self._upscalers[hires.upscaler] = load_model_upscaler(hires.upscaler, self.model.device)
            model = self._upscalers[hires.upscaler]
        return upscale_image(image, hires.upscaler, width, height, model)

    def encode(self, images: list[Any], draws: list[tuple[int, int]] | None = None) -> Any:
        """Latents of PIL images, each encoded alone.

        `draws`: per image (seed, k): the VAE posterior is sampled as A1111 samples it, mean + std
        * the k-th [1, C, h, w] draw of torch's CPU generator seeded with `seed` (A1111 draws it
        from torch's global CPU generator, which ImageRNG leaves seeded with the batch's last seed
        under its GPU and CPU sources); None: the posterior mean (the NV source, under which
        A1111's global generator is in whatever state the process left it)."""
        import numpy as np
        import torch

        vae = self.model.pipe.vae
        out = []
        generators: dict[int, tuple[Any, int]] = {}
        with torch.inference_mode():
            for i, image in enumerate(images):
                x = torch.from_numpy(np.moveaxis(np.asarray(image, dtype=np.float32) / 255.0, 2, 0))[None] * 2 - 1
                posterior = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist
                z = posterior.mean.float()
                if draws is not None:
                    seed, k = draws[i]
                    g, done = generators.get(seed, (None, 0))
                    if g is None or done > k:
                        g, done = torch.Generator("cpu").manual_seed(int(seed)), 0
                    for _ in range(k - done):  # the draws of the images before this one
                        torch.randn(tuple(z.shape), generator=g)
                    eps = torch.randn(tuple(z.shape), generator=g)
                    generators[seed] = (g, k + 1)
                    z = z + posterior.std.float() * eps.to(z.device)
                out.append(z[0] * vae.config.scaling_factor)
        return torch.stack(out)

    def decode(self, latents: Any) -> list[Any]:
        """PIL images: each latent decoded alone, pixels as A1111 makes them (clamp, x255, truncate)."""
        import numpy as np
        import torch
        from PIL import Image

        vae = self.model.pipe.vae
        dtype = vae.dtype
        upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        images = []
        with torch.inference_mode():
            for latent in latents:
                z = latent[None] / vae.config.scaling_factor
                if upcast:
                    x = vae.to(torch.float32).decode(z.float(), return_dict=False)[0]
                    vae.to(dtype)
                else:
                    x = vae.decode(z.to(device=vae.device, dtype=dtype), return_dict=False)[0]
                pixels = torch.clamp((x[0].float() + 1.0) / 2.0, 0.0, 1.0)
                array = (255.0 * np.moveaxis(pixels.cpu().numpy(), 0, 2)).astype(np.uint8)
                images.append(Image.fromarray(array))
        return images

    # -- infotext ---------------------------------------------------------------------------

    def infotext(self, prompt: str, negative: str, seed: int, settings: Settings, used: list[str], extra: dict[str, Any] | None = None,
                 subseed: int | None = None) -> str:
        hashes = {}
        for name in used:
            sha = self.vocabulary.sha256(name)
            if sha:
                hashes[name] = sha
        from tihub.engine.sampling import make_plan

        settings.check()  # names as A1111 writes them (an old "X Karras" is X with Karras)
        plan = make_plan(settings.sampler, settings.schedule_type, settings.steps, self.model_schedule(), self.model.family, [seed], settings.randomness())
        params: dict[str, Any] = {
            "Steps": settings.steps,
            "Sampler": settings.sampler,
            "CFG scale": f"{settings.cfg_scale:g}",
            "Seed": seed,
            "Size": f"{settings.width}x{settings.height}",
            "Model hash": self.model.hash,
            "Model": self.model.name,
            # A1111's variation keys: the image's variation seed and the strength while it is on
            "Variation seed": (settings.subseed if subseed is None else subseed) if settings.subseed_strength else None,
            "Variation seed strength": str(float(settings.subseed_strength)) if settings.subseed_strength else None,
            "Seed resize from": "{}x{}".format(*settings.seed_resize_from) if settings.seed_resize_from else None,
            "Clip skip": settings.clip_skip if settings.clip_skip > 1 else None,
            **plan.infotext(),  # Schedule type, Eta, Sigma churn ..., ENSD, RNG as A1111 writes them
            **(settings.hires.infotext(settings.sampler, settings.schedule_type, settings.cfg_scale, prompt, negative) if settings.hires else {}),
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
        rng: str = "gpu",
        ensd: int = 0,
        eta: float | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = 0.0,
        s_noise: float = 1.0,
        hires: Hires | None = None,
        pad_conds: bool = False,
        subseed: int | None = -1,
        subseed_strength: float = 0.0,
        seed_resize_from: tuple[int, int] | str | None = None,
        sigma_min: float = 0.0,
        sigma_max: float = 0.0,
        rho: float = 0.0,
        uni_pc_variant: str = "bh1",
        uni_pc_skip_type: str = "time_uniform",
        uni_pc_order: int = 3,
        uni_pc_lower_order_final: bool = True,
        s_min_uncond: float = 0.0,
        s_min_uncond_all: bool = False,
        skip_early_cond: float = 0.0,
    ) -> Result:
        if batch_size < 1 or batch_count < 1:
            raise ConfigError("--batch-size and --batch-count must be at least 1.")
        native = self.model.native_size
        w, h = parse_size(size, native) if size is not None else (width or native, height or width or native)
        settings = Settings(
            steps=steps, sampler=sampler or DEFAULT, cfg_scale=cfg_scale, width=w, height=h, clip_skip=clip_skip, schedule_type=schedule_type or "Automatic",
            rng=rng, ensd=ensd, eta=eta, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, hires=hires, pad_conds=pad_conds,
            subseed=-1 if subseed is None else subseed, subseed_strength=subseed_strength, seed_resize_from=seed_resize_from,
            sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, uni_pc_variant=uni_pc_variant, uni_pc_skip_type=uni_pc_skip_type, uni_pc_order=uni_pc_order,
            uni_pc_lower_order_final=uni_pc_lower_order_final, s_min_uncond=s_min_uncond, s_min_uncond_all=s_min_uncond_all, skip_early_cond=skip_early_cond,
        )
        settings.check()
        first = resolve_seed(seed)
        # A1111: image x of the job has seed + x, or, with a variation strength, the seed itself
        # and variation seed + x
        step = 0 if settings.subseed_strength else 1
        result = Result([], [], [])
        for batch in range(batch_count):
            index = [batch * batch_size + i for i in range(batch_size)]
            seeds = [(first + x * step) & MAX_SEED for x in index]
            subseeds = [(settings.subseed + x) & MAX_SEED for x in index]
            images, used = self.run([prompt] * batch_size, [negative_prompt] * batch_size, seeds, settings, subseeds, a1111_batch=True)
            if self.plan is not None:
                result.plans.append(self.plan)
            for img, s, sub, u in zip(images, seeds, subseeds, used, strict=True):
                result.images.append(img)
                result.seeds.append(s)
                result.infotexts.append(self.infotext(prompt, negative_prompt, s, settings, u, subseed=sub))
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
    device: Any = None,
    dtype: Any = None,
    **settings: Any,
) -> Result:
    """Generate images in one call.

    Give one of `engine` (reused), `pipe` (an in-memory diffusers pipeline) or `model` (a path,
    repo id or LoadedModel). `embeddings` adds in-memory embeddings by name (they win over files
    in `embeddings_dir`). Every other keyword is `Engine.generate`'s (steps, sampler, seed, size,
    out, the sampling and hires. fix settings); with `out` the images are saved with infotext.
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
    return engine.generate(prompt, negative_prompt, **settings)
