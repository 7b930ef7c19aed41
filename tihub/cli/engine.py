"""`tihub prompt | generate | png-info | grid | verify`: the generation engine's commands.

torch/diffusers are imported inside the commands only (png-info never imports them).
"""

from __future__ import annotations

from typing import Any

import click

from tihub.cli._common import Context, echo_json, exit_status, fail, item, pass_ctx, say
from tihub.errors import NotFound

MODEL_HELP = "Model: a diffusers folder, a .safetensors/.ckpt checkpoint, or a Hub repo id (downloaded once, then read from the Hugging Face cache). Default: $TIHUB_MODEL."


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


def _bar(label: str) -> Any:
    """The one progress display for a run's sampling steps (each pass starts it over)."""
    from tihub.progress import Bar

    return Bar(label, "step")


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
    info = ctx.hub.prompt(prompt, steps, model)
    if as_json:
        echo_json(info.as_dict())
        return
    _warn(info.warnings)
    click.echo("Schedule:")
    for end, text in info.schedule:
        say(f"  until step {end:>3}: {text}")
    click.echo("Attention:")
    for text, weight in info.attention:
        click.echo("  BREAK" if weight == -1 and text == "BREAK" else f"  {weight:<8.4g} {text!r}")
    click.echo(f"Tokens: {info.tokens} in {info.chunks} chunk(s) of 75 ({', '.join(map(str, info.chunk_tokens))})")
    if info.embeddings:
        click.echo("Embeddings:")
        for e in info.embeddings:
            say(f"  {e.name}: {e.vectors} vector(s), {e.path or 'in memory'}")
    else:
        click.echo("Embeddings: none")


# ---------------------------------------------------------------------------------------------


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
    if from_image:  # the image's settings hold unless an option was typed
        source = click.get_current_context().get_parameter_source
        sampling = {k: v for k, v in sampling.items() if source(k) is not click.core.ParameterSource.DEFAULT}
    with _bar("generate") as bar:
        result = ctx.hub.generate(prompt, negative=negative, model=model, steps=steps, sampler=sampler,
                                  schedule_type=schedule_type, cfg=cfg, seed=seed, size=size, batch_size=batch_size,
                                  batch_count=batch_count, clip_skip=clip_skip, pad_conds=pad_conds, from_image=from_image,
                                  out=out, device=device, dtype=dtype, config=config, progress=bar, **sampling)
    _warn(result.warnings)
    if as_json:
        # one object per picture; `plan` is what its batch ran (sampler, schedule, sigmas, RNG, seeds)
        echo_json(result.items())
        return
    for p in result.pictures:
        click.echo(p.path)


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
    with _bar("grid") as bar:
        result = ctx.hub.grid(name, model=model, x=x, y=y, z=z, prompt=prompt, negative=negative, steps=steps, sampler=sampler,
                              schedule_type=schedule_type, cfg=cfg, seed=seed, size=size, batch=batch, pad_conds=pad_conds,
                              out=out, device=device, dtype=dtype, config=config, progress=bar, **sampling)
    _warn(result.warnings)
    if as_json:
        echo_json([result.as_dict()])
        return
    click.echo(result.path)


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
    try:
        with _bar("verify") as bar:
            v = ctx.hub.verify(name, model, steps=steps, size=size, grid=not no_grid, reproduce=reproduce, device=device,
                               dtype=dtype, config=config, progress=bar)
    except NotFound as exc:
        if not as_json:
            raise
        fail(str(exc))
        echo_json([item(False, str(exc), name=name, path=None)])
        raise SystemExit(1) from None
    if as_json:
        echo_json([v.as_dict()])
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
    exit_status(not v.ok)


def _detail(detail: Any) -> str:
    """A check's detail as words (numbers and dicts written out, never a Python repr)."""
    if isinstance(detail, dict):
        return ", ".join(f"{k} {_detail(v)}" for k, v in detail.items())
    if isinstance(detail, list | tuple):
        return ", ".join(_detail(v) for v in detail)
    if isinstance(detail, float):
        return f"{detail:.4g}"
    return str(detail)
