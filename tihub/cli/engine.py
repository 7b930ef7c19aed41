"""`tihub prompt | generate | png-info | grid | verify`: the generation engine's commands.

torch/diffusers are imported inside the commands only (png-info never imports them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from tihub.cli._common import Context, check_device, check_model_arg, echo_json, exit_status, fail, item, pass_ctx, say
from tihub.errors import ConfigError, NetworkError, NotFound, TihubError

MODEL_HELP = "Model: a diffusers folder, a .safetensors/.ckpt checkpoint, or a Hub repo id (downloaded once, then read from the Hugging Face cache). Default: $TIHUB_MODEL."


def _model(model: str | None) -> str:
    model = model or os.environ.get("TIHUB_MODEL")
    if not model:
        raise ConfigError("No model given; pass --model PATH (a diffusers folder or checkpoint) or set TIHUB_MODEL.")
    check_model_arg(model)
    return model


def _hash_cache(ctx: Context) -> Any:
    try:
        from tihub.hashing import HashCache

        return HashCache(ctx.engine())
    except Exception:  # the cache only saves time
        return None


def _engine(ctx: Context, model: str | None, device: str | None = None, dtype: str | None = None, config: str | None = None) -> Any:
    from tihub.engine.generate import Engine

    check_device(device)
    _loading(_model(model))
    return Engine.load(_model(model), ctx.workspace.embeddings_dir, device=device, dtype=dtype, hash_cache=_hash_cache(ctx), config=config)


config_option = click.option("--config", "config", type=click.Path(file_okay=False), default=None,
                             help="Diffusers config folder for a single-file checkpoint [default: tihub's SD1/SD2/SDXL configs].")


def sampling_options(f: Any) -> Any:
    """A1111's sampling settings (`--rng`, `--ensd`, `--eta`, sigma churn/tmin/tmax/noise, variation
    seeds, hires fix), passed on as the keyword arguments of Engine.generate / Settings."""
    options = [
        click.option("--rng", "rng", type=click.Choice(["gpu", "cpu", "nv"], case_sensitive=False), default="gpu", show_default=True,
                     help="Noise source as A1111's setting: gpu (torch on an NVIDIA GPU; without one, tihub's emulation of it), cpu (torch CPU generator), nv (A1111's NV emulation)."),
        click.option("--ensd", "ensd", type=int, default=0, show_default=True, help="Eta noise seed delta (A1111's ENSD, e.g. 31337): ancestral noise uses seed + ENSD."),
        click.option("--eta", "eta", type=float, default=None, help="Eta of ancestral/SDE samplers and DDIM [default: A1111's, 1 (0 for DDIM)]."),
        click.option("--s-churn", "s_churn", type=float, default=0.0, show_default=True, help="Sigma churn (Euler, Heun, DPM2)."),
        click.option("--s-tmin", "s_tmin", type=float, default=0.0, show_default=True, help="Sigma tmin (Euler, Heun, DPM2)."),
        click.option("--s-tmax", "s_tmax", type=float, default=0.0, show_default=True, help="Sigma tmax; 0 = no bound (Euler, Heun, DPM2)."),
        click.option("--s-noise", "s_noise", type=float, default=1.0, show_default=True, help="Sigma noise (Euler, Heun, DPM2 and the ancestral/SDE DPM samplers)."),
        click.option("--subseed", "subseed", type=int, default=None, help="Variation seed (A1111's); -1 picks one at random [default: -1]."),
        click.option("--subseed-strength", "subseed_strength", type=float, default=0.0, show_default=True,
                     help="Variation seed strength, 0 (off) to 1: the starting noise is slerped this far towards the variation seed's."),
        click.option("--seed-resize-from", "seed_resize_from", type=int, nargs=2, default=None, metavar="W H",
                     help="A1111's 'Resize seed from width/height': draw the starting noise as for a W x H picture and centre it."),
        click.option("--sigma-min", "sigma_min", type=float, default=0.0, show_default=True, help="A1111's 'sigma min': the schedule type's lowest sigma; 0 = the model's (not for Automatic without a type of its own, DDIM, PLMS, UniPC, DPM fast/adaptive)."),
        click.option("--sigma-max", "sigma_max", type=float, default=0.0, show_default=True, help="A1111's 'sigma max': the schedule type's highest sigma; 0 = the model's."),
        click.option("--rho", "rho", type=float, default=0.0, show_default=True, help="A1111's 'rho' of Karras and Polyexponential; 0 = theirs (7, 1)."),
        click.option("--uni-pc-variant", "uni_pc_variant", default="bh1", show_default=True, help="UniPC variant (A1111's setting): bh1, bh2 or vary_coeff."),
        click.option("--uni-pc-skip-type", "uni_pc_skip_type", default="time_uniform", show_default=True, help="UniPC skip type, its time grid: time_uniform, time_quadratic or logSNR."),
        click.option("--uni-pc-order", "uni_pc_order", type=click.IntRange(1, 50), default=3, show_default=True, help="UniPC order; needs at least as many steps."),
        click.option("--uni-pc-lower-order-final/--no-uni-pc-lower-order-final", "uni_pc_lower_order_final", default=True, show_default=True, help="UniPC: lower the order on the last steps."),
        click.option("--ngms", "s_min_uncond", type=float, default=0.0, show_default=True, help="A1111's NGMS (negative guidance minimum sigma): skip the negative on every other step below this sigma (the timestep for DDIM, PLMS, UniPC); 0 = off."),
        click.option("--ngms-all-steps", "s_min_uncond_all", is_flag=True, help="NGMS on every step, not every other one."),
        click.option("--skip-early-cfg", "skip_early_cond", type=float, default=0.0, show_default=True, help="A1111's 'Skip Early CFG': no negative for this fraction (0-1) of the first steps; 0 = off."),
        click.option("--hires-scale", "hires_scale", type=float, default=None, help="Hires. fix: upscale by this factor and run a second pass (e.g. 2); any --hires-*/--denoising option turns it on [default: 2]."),
        click.option("--hires-steps", "hires_steps", type=int, default=None, help="Hires. fix: steps of the second pass [default: 0, the first pass's]."),
        click.option("--denoising", "denoising", type=float, default=None, help="Hires. fix: denoising strength of the second pass [default: 0.7]."),
        click.option("--hires-upscaler", "hires_upscaler", default=None,
                     help="Hires. fix: Latent, Latent (antialiased), Latent (bicubic), Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact), Lanczos, Nearest, None, or an ESRGAN-family model file [default: Latent]."),
        click.option("--hires-sampler", "hires_sampler", default=None, help="Hires. fix: the second pass's sampler [default: the first pass's]."),
        click.option("--hires-schedule-type", "hires_schedule_type", default=None, help="Hires. fix: the second pass's schedule type [default: the first pass's]."),
        click.option("--hires-cfg", "hires_cfg_scale", type=float, default=None, help="Hires. fix: the second pass's CFG scale (Forge's 'Hires CFG Scale') [default: --cfg]."),
        click.option("--hires-prompt", "hires_prompt", default=None, help="Hires. fix: the second pass's prompt [default: PROMPT]."),
        click.option("--hires-negative", "hires_negative_prompt", default=None, help="Hires. fix: the second pass's negative prompt [default: the negative prompt]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _sampling_kwargs(sampling: dict[str, Any]) -> dict[str, Any]:
    """The options of `sampling_options` as Engine.generate / Settings keywords (hires folded;
    A1111's other sampler settings only where they are not their defaults)."""
    from tihub.engine.reproduce import _generate_params
    from tihub.engine.sampling import SAMPLER_SETTINGS, Randomness

    defaults = Randomness()
    out = {k: v for k, v in sampling.items() if k not in SAMPLER_SETTINGS or v != getattr(defaults, k)}
    missing = [k for k in out if k in SAMPLER_SETTINGS and k not in _generate_params()]
    if missing:
        raise ConfigError(f"This tihub's engine does not take {missing[0]} yet; drop that option.")
    scale, steps, denoising, upscaler = (out.pop(k) for k in ("hires_scale", "hires_steps", "denoising", "hires_upscaler"))
    extra = {k: out.pop(k, None) for k in ("hires_sampler", "hires_schedule_type", "hires_cfg_scale", "hires_prompt", "hires_negative_prompt")}
    if any(v is not None for v in (scale, steps, denoising, upscaler, *extra.values())):
        from tihub.engine.sampling.hires import Hires

        out["hires"] = Hires(scale=2.0 if scale is None else scale, steps=steps or 0, denoising=0.7 if denoising is None else denoising, upscaler=upscaler or "Latent",
                             sampler=extra["hires_sampler"], schedule_type=extra["hires_schedule_type"], cfg_scale=extra["hires_cfg_scale"],
                             prompt=extra["hires_prompt"] or "", negative_prompt=extra["hires_negative_prompt"] or "")
    return out


def _loading(model: str) -> None:
    """On a terminal, say what the seconds before the first step are spent on."""
    import sys

    if sys.stderr.isatty():
        from tihub.tables import safe_text

        click.echo(safe_text(f"Loading model {model} ..."), err=True)


def step_progress(engine: Any, label: str, _batches: int | None) -> Any:
    """The one progress display over the engine's sampling steps (tihub.progress)."""
    from tihub.progress import sampling_steps

    return sampling_steps(engine, label)


def _warn(messages: list[str]) -> None:
    from tihub.tables import safe_text

    for m in messages:
        click.echo(f"Warning: {safe_text(m)}", err=True)


# ---------------------------------------------------------------------------------------------


@click.command("prompt")
@click.argument("prompt")
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True, help="Sampling steps the schedule is computed for.")
@click.option("--model", "model", default=None, help="Check embeddings against this model's text encoder (optional).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def prompt_cmd(ctx: Context, prompt: str, steps: int, model: str | None, as_json: bool) -> None:
    """Explain PROMPT as A1111 reads it, without generating anything.

    Shows the prompt-editing schedule ([from:to:when], [a|b]), the attention weights ((x), [x],
    (x:1.3), BREAK), the token count and 75-token chunks, and the embeddings it uses from the
    workspace's embeddings/ folder.

    \b
    Example:
      tihub prompt "a photo of (mycat:1.2), [oil:watercolor:0.5] painting" --steps 20
      tihub prompt "easynegative, lowres" --json
    """
    from tihub.engine.generate import explain_prompt

    if model:
        info = _engine(ctx, model).explain(prompt, steps)
    else:
        from tihub.clip_vocab import clip_tokenizer
        from tihub.engine.conditioning import PromptTokenizer
        from tihub.engine.vocabulary import Vocabulary

        vocab = Vocabulary(ctx.workspace.embeddings_dir)
        info = explain_prompt(prompt, steps, PromptTokenizer(clip_tokenizer(), vocab), vocab)
    if as_json:
        embeddings = [{("path" if k == "file" else k): v for k, v in e.items()} for e in info["embeddings"]]
        echo_json(item(True, **{**info, "embeddings": embeddings}))
        return
    _warn(info["warnings"])
    click.echo("Schedule:")
    for end, text in info["schedule"]:
        say(f"  until step {end:>3}: {text}")
    click.echo("Attention:")
    for text, weight in info["attention"]:
        click.echo("  BREAK" if weight == -1 and text == "BREAK" else f"  {weight:<8.4g} {text!r}")
    click.echo(f"Tokens: {info['tokens']} in {info['chunks']} chunk(s) of 75 ({', '.join(map(str, info['chunk_tokens']))})")
    if info["embeddings"]:
        click.echo("Embeddings:")
        for e in info["embeddings"]:
            say(f"  {e['name']}: {e['vectors']} vector(s), {e['file'] or 'in memory'}")
    else:
        click.echo("Embeddings: none")


# ---------------------------------------------------------------------------------------------


def _from_image(path: str) -> dict[str, Any]:
    """Settings to re-run an image's infotext; `notes` names each one that cannot be followed."""
    from tihub.engine.reproduce import read_rerun
    from tihub.infotext import NoInfotext

    try:
        rep = read_rerun(path)
    except NoInfotext as exc:
        raise ConfigError(f"--from-image: {exc}") from exc
    return {"prompt": rep.prompt, "negative": rep.negative_prompt, "settings": dict(rep.settings), "warnings": rep.notes, "model_hash": rep.model_hash}


@click.command("generate")
@click.argument("prompt", required=False)
@click.option("-n", "--negative", default=None, help="Negative prompt.")
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Sampling steps [default: 20].")
@click.option("--sampler", default=None, help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M', 'DPM++ 2M SDE', 'DDIM' (old names such as 'DPM++ 2M Karras' too) [default: Euler a].")
@click.option("--schedule-type", default=None, help="A1111 schedule type: Automatic (the sampler's own, e.g. Karras for DPM++ 2M), Uniform, Karras, Exponential, Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal, DDIM or Beta [default: Automatic].")
@click.option("--cfg", type=float, default=None, help="CFG scale [default: 7].")
@click.option("--seed", type=int, default=None, help="Seed; -1 picks one at random (recorded in the PNG) [default: -1].")
@click.option("--size", default=None, help="WxH or N (square) [default: the model's native size].")
@click.option("--batch-size", type=click.IntRange(1, 64), default=1, show_default=True, help="Images per pipeline call.")
@click.option("--batch-count", type=click.IntRange(1, 10000), default=1, show_default=True, help="Number of batches.")
@click.option("--clip-skip", type=click.IntRange(1, 12), default=None, help="CLIP skip (1 = last layer) [default: 1].")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Output folder [default: WORKSPACE/outputs].")
@click.option("--from-image", "from_image", type=click.Path(dir_okay=False), default=None, help="Re-run the settings in an image's infotext (options given here win); each setting that cannot be followed is named.")
@click.option("--pad-conds", "pad_conds", is_flag=True, help="A1111's 'Pad conds': pad prompt and negative to the same chunk count (written to the infotext).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps [default: best available].")
@click.option("--dtype", default=None, type=click.Choice(["auto", "fp32", "fp16", "bf16"]), help="Compute precision [default: auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the saved files and settings as JSON, with the plan of each batch (sampler, schedule, sigmas, RNG, seeds).")
@config_option
@sampling_options
@pass_ctx
def generate_cmd(ctx: Context, prompt: str | None, negative: str | None, model: str | None, steps: int | None, sampler: str | None, schedule_type: str | None, cfg: float | None, seed: int | None, size: str | None, batch_size: int, batch_count: int, clip_skip: int | None, out: str | None, from_image: str | None, pad_conds: bool, device: str | None, dtype: str | None, as_json: bool, config: str | None, **sampling: Any) -> None:
    """Generate images for PROMPT; each PNG carries A1111 infotext (PNG Info reads it).

    Embeddings in the workspace's embeddings/ folder are used by their file name, as in A1111.

    \b
    Example:
      tihub generate "a photo of mycat" -n easynegative --model ./sd15 --steps 25 --seed 42
      tihub generate --from-image outputs/00003-42.png --model ./sd15
    """
    base: dict[str, Any] = _from_image(from_image) if from_image else {}
    prompt = prompt if prompt is not None else base.get("prompt")
    if prompt is None:
        raise ConfigError("No prompt given; pass PROMPT or --from-image FILE.")
    _warn(base.get("warnings", []))
    # settings from the image that have no option here (RNG, ENSD, hires, ...) pass through
    given: dict[str, Any] = dict(base.get("settings", {}))
    source = click.get_current_context().get_parameter_source
    for key in list(sampling):  # a sampling option wins only when it was typed
        if key in given and source(key) is click.core.ParameterSource.DEFAULT:
            sampling[key] = given.pop(key)
        given.pop(key, None)
    if pad_conds:
        given["pad_conds"] = True
    base_sampler, base_schedule = given.pop("sampler", None), given.pop("schedule_type", None)
    steps = steps if steps is not None else given.get("steps", 20)
    # an explicit --sampler starts from its own schedule unless --schedule-type is given too
    schedule_type = schedule_type or (None if sampler else base_schedule)
    sampler = sampler or base_sampler
    size = size or given.get("size")
    cfg = cfg if cfg is not None else given.get("cfg_scale", 7.0)
    clip_skip = clip_skip if clip_skip is not None else given.get("clip_skip", 1)
    _check_settings(steps, sampler, schedule_type, size, clip_skip, cfg, _sampling_kwargs(sampling))  # before the model loads
    engine = _engine(ctx, model, device, dtype, config)
    if base.get("model_hash") and engine.model.hash and base["model_hash"].lower() not in (engine.model.hash, (engine.model.sha256 or "")[:8]):
        _warn([f"--from-image was made with model hash {base['model_hash']}, this model is {engine.model.hash}; images will differ."])
    outdir = Path(out) if out else ctx.workspace.root / "outputs"
    from tihub.engine.reproduce import engine_kwargs

    with step_progress(engine, "generate", batch_count):
        result = engine.generate(
            prompt,
            negative if negative is not None else base.get("negative", ""),
            **{
                **engine_kwargs(given),
                "steps": steps,
                "sampler": sampler,
                "schedule_type": schedule_type,
                "cfg_scale": cfg,
                "seed": seed if seed is not None else given.get("seed", -1),
                "size": size,
                "batch_size": batch_size,
                "batch_count": batch_count,
                "clip_skip": clip_skip,
                "out": outdir,
                **_sampling_kwargs(sampling),
            },
        )
    _warn(result.warnings)
    if as_json:
        # one object per picture; `plan` is what its batch ran (sampler, schedule, sigmas, RNG, seeds)
        plans = [p.to_json() for p in result.plans]
        echo_json([item(True, path=str(p), seed=s, infotext=t, embeddings=result.used,
                        plan=plans[i // batch_size] if i // batch_size < len(plans) else None)
                   for i, (p, s, t) in enumerate(zip(result.paths, result.seeds, result.infotexts, strict=False))])
        return
    for p in result.paths:
        click.echo(str(p))


def _check_settings(steps: int, sampler: str | None, schedule_type: str | None, size: str | None, clip_skip: int, cfg: float,
                    sampling: dict[str, Any] | None = None) -> None:
    """Refuse bad sampling settings in a fraction of a second, before a model is loaded."""
    import math

    from tihub.engine.generate import Settings, parse_size

    if not math.isfinite(cfg) or abs(cfg) > 100:
        raise ConfigError(f"--cfg {cfg} is out of range; use a number from 0 to 100 (7 is usual).")
    w, h = parse_size(size, 512)
    if max(w, h) > 8192:
        raise ConfigError(f"Size {w}x{h} is too large; use at most 8192 pixels a side.")
    from tihub.engine.samplers import DEFAULT

    Settings(steps=steps, sampler=sampler or DEFAULT, cfg_scale=cfg, width=w, height=h, clip_skip=clip_skip,
             schedule_type=schedule_type or "Automatic", **(sampling or {})).check()


# ---------------------------------------------------------------------------------------------


@click.command("png-info")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per file.")
def png_info_cmd(files: tuple[str, ...], as_json: bool) -> None:
    """Print the A1111 generation parameters stored in images (PNG, JPEG, WEBP).

    Reads the PNG 'parameters' text chunk (tEXt/iTXt/zTXt), EXIF UserComment, and A1111 stealth
    pnginfo. Images from ComfyUI, InvokeAI, NovelAI or Fooocus are named as such.

    \b
    Example:
      tihub png-info outputs/00000-42.png
      tihub png-info *.png --json
    """
    from tihub.infotext import build_infotext, png_info
    from tihub.tables import safe_text

    def safe_text_lines(text: str) -> str:
        return "\n".join(safe_text(line) for line in text.split("\n"))

    records = [png_info(f) for f in files]
    failed = any("error" in r for r in records)
    if as_json:
        echo_json([item("error" not in r, r.get("error"), path=r["file"], **{k: v for k, v in r.items() if k not in ("file", "error")})
                   for r in records])
    else:
        for r in records:
            if len(records) > 1:
                click.echo(f"== {safe_text(r['file'])}")
            if "error" in r:
                fail(r["error"])
                continue
            click.echo(safe_text_lines(build_infotext(r["prompt"], r["negative_prompt"], r["parameters"])))
    exit_status(failed)


# ---------------------------------------------------------------------------------------------


def _resolve_embedding(ctx: Context, name: str) -> tuple[Path | None, int | None, int | None, str | None]:
    """(local file, entry id, file id, kind) for a catalogue entry name or an embeddings/ stem."""
    from tihub.catalog.store import Catalog

    catalog = Catalog(ctx.engine(), ctx.workspace)
    entry = None
    try:
        entry = catalog.entry(name)
    except NotFound:
        entry = None
    path = None
    file_id = None
    if entry is not None:
        for f in entry.get("files", []):
            if f.get("local_path") and Path(f["local_path"]).is_file():
                path, file_id = Path(f["local_path"]), f["id"]
                break
    if path is None:
        # the same name -> file lookup prompts use (skips checkpoints, previews, partial files)
        from tihub.engine.vocabulary import Vocabulary

        vocabulary = Vocabulary(ctx.workspace.embeddings_dir)
        vocabulary.refresh()
        path = vocabulary.path_of(name)
    if path is None:
        if entry is not None:
            raise NotFound(f"Embedding '{name}' is in the catalogue but not downloaded; run `tihub fetch {name}` first.")
        raise NotFound(f"No embedding named '{name}' in the catalogue or in {ctx.workspace.embeddings_dir}; check `tihub list` or import it.")
    if file_id is None:
        try:
            from tihub.formats import read_embedding
            from tihub.hashing import sha256_file

            file_id = catalog.upsert_local_file(path, read_embedding(path), sha256_file(path))
            entry = catalog.entry(name)
        except TihubError:
            pass
    return path, (entry or {}).get("id"), file_id, (entry or {}).get("kind")


@click.command("grid")
@click.argument("name", required=False)
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option("--x", "x", default=None, metavar="AXIS:VALUES", help="X axis, e.g. steps:10,20,30 or prompt:cat,dog.")
@click.option("--y", "y", default=None, metavar="AXIS:VALUES", help="Y axis.")
@click.option("--z", "z", default=None, metavar="AXIS:VALUES", help="Z axis (one grid per value, side by side).")
@click.option("-p", "--prompt", "prompt", default=None, help="Base prompt; `{emb}` marks where embedding/checkpoint names go.")
@click.option("-n", "--negative", default="", help="Negative prompt.")
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--sampler", default="Euler a", show_default=True)
@click.option("--schedule-type", default=None, help="A1111 schedule type (see tihub generate --help) [default: Automatic].")
@click.option("--cfg", type=float, default=7.0, show_default=True)
@click.option("--seed", type=int, default=-1, show_default=True, help="Seed of every cell (unless an axis sets it).")
@click.option("--size", default=None, help="WxH or N [default: the model's native size].")
@click.option("--batch", type=click.IntRange(1, 64), default=8, show_default=True, help="Most images per pipeline call.")
@click.option("--pad-conds", "pad_conds", is_flag=True, help="A1111's 'Pad conds': pad prompt and negative to the same chunk count.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Output folder [default: WORKSPACE/grids].")
@click.option("--device", default=None)
@click.option("--dtype", default=None, type=click.Choice(["auto", "fp32", "fp16", "bf16"]))
@click.option("--json", "as_json", is_flag=True)
@config_option
@sampling_options
@pass_ctx
def grid_cmd(ctx: Context, name: str | None, model: str | None, x: str | None, y: str | None, z: str | None, prompt: str | None, negative: str, steps: int, sampler: str, schedule_type: str | None, cfg: float, seed: int, size: str | None, batch: int, pad_conds: bool, out: str | None, device: str | None, dtype: str | None, as_json: bool, config: str | None, **sampling: Any) -> None:
    """Make an A1111-style X/Y/Z grid, or the standard preview of embedding NAME.

    With NAME and no axes: the standard preview (fixed prompts chosen by the entry's kind:
    object, style or negative; fixed seeds), attached to the catalogue entry. With axes: a grid
    over prompt S/R, seed, steps, cfg, sampler, size, clip-skip, embedding, checkpoint, model.

    \b
    Example:
      tihub grid mycat --model ./sd15
      tihub grid --model ./sd15 -p "a photo of {emb}" --x embedding:cat1,cat2 --y seed:1-3
      tihub grid --model ./sd15 -p "a photo of mycat" --x checkpoint:mycat --y cfg:5,7,9
      tihub grid mycat --model ./sd15 --x checkpoints --y seed:1-3
    """
    from tihub.engine.generate import Engine, Settings, parse_size
    from tihub.engine.grid import make_grid, parse_axis, standard_preview
    from tihub.engine.models import load_model

    axes = [parse_axis(a, name) if a else None for a in (x, y, z)]
    while axes and axes[-1] is None:
        axes.pop()
    # every refusal before a model loads: settings, axis values, device, model
    _check_settings(steps, sampler, schedule_type, size, 1, cfg, _sampling_kwargs(sampling))
    for axis in axes:
        if axis is not None:
            _check_axis(ctx, axis)
    check_device(device)
    _model(model)
    outdir = Path(out) if out else ctx.workspace.root / "grids"
    engines: dict[str | None, Engine] = {}
    cache = _hash_cache(ctx)

    def engine_for(m: str | None) -> Engine:
        key = m or None
        if key not in engines:
            _loading(_model(key or model))
            engines[key] = Engine(load_model(_model(key or model), device=device, dtype=dtype, hash_cache=cache, config=config), ctx.workspace.embeddings_dir)
        return engines[key]

    if not axes:
        if not name:
            raise ConfigError("Give an embedding NAME (standard preview) or at least one axis (--x AXIS:VALUES).")
        path, entry_id, file_id, kind = _resolve_embedding(ctx, name)
        engine = engine_for(None)
        with step_progress(engine, "preview", None):
            result = standard_preview(engine, name, kind, steps=steps, size=size, out=outdir, batch=batch)
        from tihub.catalog.store import Catalog

        Catalog(ctx.engine(), ctx.workspace).add_preview(entry_id=entry_id, file_id=file_id, path=str(result.path), model_hash=engine.model.hash, params={"model": engine.model.name, "steps": steps, "kind": kind, "infotext": result.infotext})
    else:
        if prompt is None:
            prompt = "{emb}" if any(a is not None and a.kind in ("embedding", "checkpoint") for a in axes) else (name or "")
        native = engine_for(None).model.native_size if size is None else 512
        w, h = parse_size(size, native)
        settings = Settings(steps=steps, sampler=sampler, cfg_scale=cfg, width=w, height=h, schedule_type=schedule_type or "Automatic", pad_conds=pad_conds, **_sampling_kwargs(sampling))
        folders = [ctx.workspace.embeddings_dir, ctx.workspace.train_dir]
        with step_progress(engine_for(None), "grid", None):
            result = make_grid(engine_for, prompt, negative, axes, settings, seed, outdir, batch, folders)
    for e in engines.values():
        result.warnings += e.vocabulary.take_warnings()
    _warn(result.warnings)
    if as_json:
        echo_json([item(True, name=name, path=str(result.path), cells=[str(p) for p in result.cell_paths], pipeline_calls=result.calls)])
        return
    click.echo(str(result.path))


def _reproduce(ctx: Context, engine: Any, v: Any, name: str, path: Path | None, entry_id: int | None) -> None:
    """`verify --reproduce`: the entry's preview records, fetched with its source's URL policy."""
    from tihub.catalog.store import Catalog
    from tihub.engine.verify import reproduce_published
    import httpx

    from tihub.net import URLPolicy, make_client, stream

    previews: list[dict[str, Any]] = []
    allow_private = False
    if entry_id is not None:
        entry = Catalog(ctx.engine(), ctx.workspace).entry(entry_id)
        previews = entry.get("previews", [])
        spec = next((s for s in ctx.workspace.sources() if s.name == entry.get("source")), None)
        allow_private = bool(spec and spec.allow_private)
    cap = 32 * 1024 * 1024
    client = make_client(timeout=30.0)

    def fetch(url: str) -> bytes:
        with stream(client, "GET", url, policy=URLPolicy(allow_private=allow_private)) as resp:
            if resp.status_code != 200:
                raise NetworkError(f"The preview {url} answered HTTP {resp.status_code}; it is skipped.")
            data = bytearray()
            try:
                for part in resp.iter_bytes():
                    data += part
                    if len(data) > cap:
                        raise NetworkError(f"The preview {url} is larger than {cap // (1024 * 1024)} MiB; it is skipped.")
            except httpx.HTTPError as exc:
                raise NetworkError(f"Reading the preview {url} failed: {exc}.") from None
            return bytes(data)

    emb = None
    if path is not None and engine.vocabulary.path_of(name) is None:
        from tihub.formats import read_embedding

        try:
            emb = read_embedding(path)
        except TihubError:
            emb = None
    try:
        reproduce_published(engine, v, previews, fetch, out=ctx.workspace.root / "outputs" / "reproduce", embedding=emb)
    finally:
        client.close()


def _check_axis(ctx: Context, axis: Any) -> None:
    """Refuse an axis value the grid could not use (numbers, sizes, embedding names) up front."""
    from tihub.engine.generate import parse_size

    for value in axis.values:
        try:
            if axis.kind in ("seed", "steps", "clip-skip"):
                int(value)
            elif axis.kind == "cfg":
                float(value)
            elif axis.kind == "size":
                parse_size(value)
        except ValueError:
            raise ConfigError(f"Axis {axis.title} value {value!r} is not a number; e.g. --x {axis.kind}:10,20,30.") from None
    if axis.kind == "embedding":
        from tihub.engine.vocabulary import Vocabulary

        vocabulary = Vocabulary(ctx.workspace.embeddings_dir)
        vocabulary.refresh()
        missing = [v for v in axis.values if vocabulary.path_of(v) is None]
        if missing:
            raise ConfigError(f"Axis Embedding: {', '.join(repr(v) for v in missing)} is not an embedding in {ctx.workspace.embeddings_dir}; check `tihub list` or fetch it first.")


@click.command("verify")
@click.argument("name")
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True, help="Steps of the preview grid.")
@click.option("--size", default=None, help="Preview size, WxH or N [default: native].")
@click.option("--no-grid", is_flag=True, help="Only check the numbers; no preview grid.")
@click.option("--reproduce", is_flag=True, help="Also regenerate the entry's published previews made on this model and record how alike each is (SSIM).")
@click.option("--device", default=None)
@click.option("--dtype", default=None, type=click.Choice(["auto", "fp32", "fp16", "bf16"]))
@click.option("--json", "as_json", is_flag=True)
@config_option
@pass_ctx
def verify_cmd(ctx: Context, name: str, model: str | None, steps: int, size: str | None, no_grid: bool, reproduce: bool, device: str | None, dtype: str | None, as_json: bool, config: str | None) -> None:
    """Verify embedding NAME on a model and record the result in the catalogue.

    Checks that it loads (width), that its numbers are finite, and its vector norms against
    the model's own token embeddings (flags over-trained embeddings); renders the standard
    preview grid. With --reproduce, the entry's published previews whose Model hash is this
    model's are drawn again from their settings and compared with the published pictures
    (SSIM at 128 px, 1 = identical); the numbers are recorded with the verification.

    \b
    Example:
      tihub verify mycat --model ./sd15
      tihub verify easynegative --model ./sd15 --json
      tihub verify easynegative --model ./sd15 --reproduce
    """
    from tihub.catalog.store import Catalog
    from tihub.engine.verify import record, verify

    check_device(device)
    _model(model)
    try:
        path, entry_id, file_id, kind = _resolve_embedding(ctx, name)
    except NotFound as exc:
        if not as_json:
            raise
        fail(str(exc))
        echo_json([item(False, str(exc), name=name, path=None)])
        raise SystemExit(1) from None
    _check_settings(steps, None, None, size, 1, 7.0)
    engine = _engine(ctx, model, device, dtype, config)
    with step_progress(engine, "verify", None):
        v = verify(engine, name, path=path, grid=not no_grid, steps=steps, size=size, out=ctx.workspace.root / "grids", kind=kind)
        if reproduce:
            _reproduce(ctx, engine, v, name, path, entry_id)
    record(Catalog(ctx.engine(), ctx.workspace), v, entry_id, file_id)
    if as_json:
        d = v.to_dict()
        d["path"] = d.pop("file", None)
        failed_checks = "; ".join(f"{c['check']}: {c['detail']}" for c in v.checks if c["status"] == "failed")
        echo_json([item(v.result != "failed", f"{name} failed verification on {v.model}: {failed_checks}.", **d)])
    else:
        from tihub.tables import render, safe_text

        _warn(v.warnings)
        click.echo(safe_text(f"{name} on {v.model} ({v.model_hash or 'no hash'}): {v.result}"))
        click.echo(render(["RESULT", "CHECK", "DETAIL"], [(c["status"], c["check"], _detail(c["detail"])) for c in v.checks]))
        if v.grid:
            click.echo(f"grid: {safe_text(v.grid)}")
        for r in v.reproduced:
            what = f"SSIM {r['ssim']:.3f}, mean abs diff {r['mad']:.1f}/255" if r["ok"] else r.get("error", "")
            click.echo(safe_text(f"preview {r['url']}: {what}"))
    exit_status(v.result == "failed")


def _detail(detail: Any) -> str:
    """A check's detail as words (numbers and dicts written out, never a Python repr)."""
    if isinstance(detail, dict):
        return ", ".join(f"{k} {_detail(v)}" for k, v in detail.items())
    if isinstance(detail, list | tuple):
        return ", ".join(_detail(v) for v in detail)
    if isinstance(detail, float):
        return f"{detail:.4g}"
    return str(detail)
