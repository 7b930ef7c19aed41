"""`tihub train`: a folder of pictures in, a new embedding out (torch is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tihub.cli._common import Context, echo_json, pass_ctx

TEMPLATE_HELP = "subject | style | subject_filewords | style_filewords | a text file (one prompt per line with [name] and [filewords])"


@click.command("train")
@click.argument("name")
@click.option("--images", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder of PNG/JPEG/WEBP pictures; captions in same-name .txt files (else the file name).")
@click.option("--model", required=True, metavar="PATH", help="The model to train on (a diffusers folder or a model file).")
@click.option("--vectors", default=1, show_default=True, type=int, help="Vectors per token (1-75).")
@click.option("--init-text", default="*", show_default=True, help="Words the vectors start from (spread over the vectors; empty = zeros), or an embedding file.")
@click.option("--steps", default=1000, show_default=True, type=int, help="Optimizer steps.")
@click.option("--lr", default="0.005", show_default=True, help='Learning rate or A1111 schedule, e.g. "0.005:100, 1e-3:1000, 1e-5".')
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--grad-accum", default=1, show_default=True, type=int, help="Micro-batches per optimizer step.")
@click.option("--size", default="auto", show_default=True, help="Training size: N, WxH, auto (the model's native size) or none (keep sizes; batches never mix sizes).")
@click.option("--template", default="style_filewords", show_default=True, help=TEMPLATE_HELP)
@click.option("--shuffle-tags", is_flag=True, help="Shuffle the comma-separated tags of each caption.")
@click.option("--tag-dropout", default=0.0, show_default=True, type=float, help="Drop each caption tag with this probability.")
@click.option("--flip", is_flag=True, help="Also train on mirror images of every picture.")
@click.option("--clip-grad", default=None, metavar="value:V|norm:V", help="Gradient clipping (V may be a schedule).")
@click.option("--latent-sampling", default="once", show_default=True, type=click.Choice(["once", "deterministic", "random"]))
@click.option("--alpha-as-loss-weight", is_flag=True, help="Weight the loss by the pictures' transparency.")
@click.option("--save-every", default=500, show_default=True, type=int, help="Checkpoint every N steps (0 = only at the end).")
@click.option("--preview-every", default=0, show_default=True, type=int, help="Preview picture every N steps (0 = none).")
@click.option("--preview-prompt", default=None, help="Prompt for previews ([name] = the embedding); default: the template's first line.")
@click.option("--preview-steps", default=20, show_default=True, type=int)
@click.option("--preview-seed", default=None, type=int, help="Preview seed (default: --seed).")
@click.option("--preview-negative", default="", help="Negative prompt for previews.")
@click.option("--preview-sampler", default=None, help="Sampler for previews (the generation engine's names).")
@click.option("--preview-cfg", default=7.0, show_default=True, type=float, help="CFG scale for previews.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint (same step count, schedule and randomness).")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "fp16", "bf16"]), help="auto: bf16 on GPUs that compute it natively (Ampere and newer), else fp16 with loss scaling; fp32 on the CPU.")
@click.option("--gradient-checkpointing", is_flag=True, help="Less GPU memory (about half), slower steps (about 40% on an H200).")
@click.option("--compile", "compile", is_flag=True, help="torch.compile the UNet for the steps (experimental; GPU: minutes of compiling first).")
@click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None, help="Replay each step from a captured CUDA graph, with no per-step launch overhead. Default: wherever one can run (CUDA in any precision, fp16 loss scaling included, without --gradient-checkpointing or --compile); --cuda-graphs adds a note where it cannot.")
@click.option("--overwrite", is_flag=True, help="Replace an existing embedding (and run folder) of this name.")
@click.option("--also-pt", is_flag=True, help="Also write an A1111 .pt next to the .safetensors.")
@click.option("--png-card", is_flag=True, help="Also write an A1111 PNG embedding card in the run folder.")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False, path_type=Path), help="Run folder (default WORKSPACE/train/NAME).")
@click.option("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def train_cmd(ctx: Context, name: str, images: Path, model: str, size: str, run_dir: Path | None, as_json: bool, **opts: Any) -> None:
    """Train a new embedding NAME on a folder of pictures.

    Only the new vectors learn (for SDXL: clip_l and clip_g); latents are computed once; the
    result goes to embeddings/NAME.safetensors with the model's hash, checkpoints and the loss
    log to the run folder, and the catalogue records the run (`tihub show NAME`).

    \b
    Example:
      tihub train mycat --images ./cat-photos --model ./sd15 --vectors 4 \\
          --template subject --steps 2000 --lr "0.005:200, 0.001" --flip
      tihub train mycat --images ./cat-photos --model ./sd15 --steps 4000 --resume
    """
    from tihub.progress import Bar

    with Bar(f"train {name}", "step") as bar:
        result = ctx.hub.train(name, images, model, size=size, run_dir=run_dir, progress=bar, **opts)
    if as_json:
        echo_json([result.as_dict()])
        return
    loss = "-" if result.final_loss is None else f"{result.final_loss:.4f}"
    graph = " (replayed from a CUDA graph)" if result.steps_from == "cuda graph" else ""
    click.echo(f"Trained {result.name} on {result.pictures}: {result.steps} steps{graph} in {result.seconds:.1f} s, last loss {loss}.")
    for p in [result.path, *result.extra_paths]:
        click.echo(f"  wrote {p}")
    click.echo(f"  model hash {result.trained_on or 'unknown'}; {len(result.checkpoints)} checkpoints, loss log {result.loss_csv}")
    if result.loss_png:
        click.echo(f"  loss plot {result.loss_png}")
