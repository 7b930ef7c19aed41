"""`tihub demo`: an offline tour of every part of tihub on real files.

It builds a workspace (the `--home` folder), indexes the real embeddings of the shared corpus
when it is there (else a few made here), and runs the commands a user would: sync, search, show,
inspect, hash, compat, prompt, generate (on a tiny random-weight model), png-info and train.
Each step prints the command first, as a user would type it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from tihub.cli._common import Context, pass_ctx

# Real files published by others, beside the repository checkout (see README).
_CORPUS_CANDIDATES = (
    Path.cwd().parent / "shared" / "corpus",
    Path(__file__).resolve().parents[3] / "shared" / "corpus",
)


def _corpus() -> Path | None:
    for path in _CORPUS_CANDIDATES:
        if (path / "MANIFEST.tsv").exists():
            return path
    return None


def _run(ctx: Context, args: list[str]) -> bool:
    """Run one tihub command in this process, printing it first; never stop the tour."""
    from tihub.cli import cli

    click.secho(f"\n$ tihub {shlex.join(args)}", fg="cyan", bold=True)
    argv = ["--home", str(ctx.workspace.root), *args]
    try:
        cli.main(args=argv, prog_name="tihub", standalone_mode=False)
    except SystemExit as exc:
        return exc.code in (0, None)
    except click.ClickException as exc:
        exc.show()
        return False
    except Exception as exc:  # the tour goes on; the failure is shown
        click.echo(f"Error: {exc}", err=True)
        return False
    return True


def _sample_embeddings(target: Path) -> None:
    """Write two small embeddings (SD1 and SDXL shaped) so the tour has something to show."""
    import numpy as np

    from tihub.formats import Embedding, write_embedding

    rng = np.random.default_rng(0)
    sd1 = Embedding(
        name="demo-style",
        vectors={"clip_l": rng.standard_normal((2, 768)).astype(np.float32) * 0.02},
        internal_name="demo-style",
        step=500,
        sd_checkpoint="7460a6fa",
        sd_checkpoint_name="sd-v1-4",
    )
    xl = Embedding(
        name="demo-xl",
        vectors={
            "clip_l": rng.standard_normal((1, 768)).astype(np.float32) * 0.02,
            "clip_g": rng.standard_normal((1, 1280)).astype(np.float32) * 0.02,
        },
    )
    write_embedding(sd1, target / "demo-style.safetensors", "safetensors")
    write_embedding(xl, target / "demo-xl.safetensors", "safetensors")


def _sample_pictures(folder: Path, n: int = 4) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        pixels = (rng.random((64, 64, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"pic{i}.png")
        (folder / f"pic{i}.txt").write_text("a colourful pattern", encoding="utf-8")


@click.command("demo")
@click.option("--no-engine", is_flag=True, help="Skip the torch steps (generate, train).")
@pass_ctx
def demo_cmd(ctx: Context, no_engine: bool) -> None:
    """Run an offline tour of tihub in the workspace (use --home to choose where).

    \b
    Example:
      tihub --home demo-home demo
      tihub --home demo-home demo --no-engine
    """
    ws = ctx.workspace.ensure()
    corpus = _corpus()
    lines = ["sources:", "  - name: local", "    kind: local", "    path: embeddings"]
    if corpus is not None:
        lines += ["  - name: corpus", "    kind: local", f"    path: {corpus}"]
    ws.sources_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo(f"Workspace: {ws.root}")
    click.echo(f"Real embeddings from: {corpus}" if corpus else "No shared corpus here: using embeddings made by the demo.")

    if not any(ws.embeddings_dir.iterdir()):
        _sample_embeddings(ws.embeddings_dir)
    results: list[bool] = []
    if corpus is not None:
        real = corpus / "lazealia__Stable_Diff_WebUI_with_Ext" / "embeddings" / "bad-hands-5.pt"
        if real.exists() and not (ws.embeddings_dir / "bad-hands-5.safetensors").exists():
            results.append(_run(ctx, ["import", str(real)]))

    results.append(_run(ctx, ["sources"]))
    results.append(_run(ctx, ["sync"]))
    results.append(_run(ctx, ["search", "negative", "--limit", "5"]))
    results.append(_run(ctx, ["search", "", "--base", "sdxl", "--limit", "5"]))
    results.append(_run(ctx, ["show", "demo-style"]))
    results.append(_run(ctx, ["inspect", str(ws.embeddings_dir)]))
    results.append(_run(ctx, ["list"]))
    results.append(_run(ctx, ["compat", "--model-hash", "7460a6fa"]))
    results.append(_run(ctx, ["prompt", "a (demo-style:1.2) castle, [oil:watercolor:0.5] BREAK night", "--steps", "20"]))

    if not no_engine:
        from tihub.engine.tiny import build_tiny_sd1

        model = ws.root / "models" / "tiny-sd1"
        if not (model / "model_index.json").exists():
            # Random weights, but a 768-wide text encoder: real SD1 embeddings load on it.
            click.echo("\nBuilding a tiny random-weight SD1-shaped model (offline) ...")
            build_tiny_sd1(model, text_width=768)
        results.append(_run(ctx, ["hash", str(model)]))
        # Train a 2-vector embedding on four pictures, then use it in a prompt with a real one.
        pictures = ws.root / "pictures"
        _sample_pictures(pictures)
        results.append(
            _run(ctx, ["train", "demo-trained", "--images", str(pictures), "--model", str(model),
                       "--steps", "10", "--vectors", "2", "--size", "64", "--overwrite"])
        )
        results.append(_run(ctx, ["show", "demo-trained"]))
        out = ws.root / "outputs"
        # A real negative embedding from the corpus when it is here, else one the demo made.
        negative = "bad-hands-5" if any(ws.embeddings_dir.glob("bad-hands-5.*")) else "demo-style"
        results.append(
            _run(ctx, ["generate", "a (demo-trained:1.1) castle", "--negative", f"{negative}, blurry", "--model", str(model),
                       "--steps", "8", "--size", "64", "--seed", "42", "--out", str(out)])
        )
        pngs = sorted(out.glob("*.png"))
        if pngs:
            results.append(_run(ctx, ["png-info", str(pngs[-1])]))

    passed = sum(results)
    click.secho(f"\nDemo finished: {passed} of {len(results)} steps succeeded.", bold=True)
    click.echo(f"See it in your browser: tihub --home {shlex.quote(str(ws.root))} serve   (then open http://127.0.0.1:7861/)")
    if passed != len(results):
        raise SystemExit(1)
