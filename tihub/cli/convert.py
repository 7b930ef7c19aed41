"""`tihub convert`: rewrite an embedding in another format, values bit-exact."""

from __future__ import annotations

from pathlib import Path

import click

from tihub.errors import FormatError, NotFound

_FORMATS = ("safetensors", "a1111", "diffusers-bin", "diffusers-safetensors", "png")  # = writer.FORMATS, not imported (numpy) for --help


def default_out(src: Path, fmt: str) -> Path:
    """The naming rule for a converted file (README "Files tihub writes"): FILE's stem with the
    format's suffix; the diffusers formats add `.diffusers`, so `--to diffusers-safetensors` never
    takes the name `--to safetensors` gives; a name equal to FILE adds the format name."""
    from tihub.formats.writer import SUFFIX

    tag = ".diffusers" if fmt.startswith("diffusers-") else ""
    out = src.with_name(f"{src.stem}{tag}{SUFFIX[fmt]}")
    if out == src:
        out = src.with_name(f"{src.stem}.{fmt}{SUFFIX[fmt]}")
    return out


@click.command("convert")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "fmt", type=click.Choice(_FORMATS), default="safetensors", show_default=True, help="Output format.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), help="Output file (default: FILE with the new suffix).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with the written file.")
def convert_cmd(file: Path, fmt: str, out: Path | None, force: bool, as_json: bool) -> None:
    """Convert embedding FILE to another format (values stay bit-exact).

    The trigger word stays the file stem; metadata (name, step, sd_checkpoint,
    sd_checkpoint_name) is carried over where the format holds it. The default output name is
    FILE's stem with the format's suffix (diffusers formats: STEM.diffusers.SUFFIX); an existing
    file is never replaced without --force.

    \b
    Example:
      tihub convert embeddings/bad-hands-5.pt --to safetensors
      tihub convert easynegative.safetensors --to a1111 -o easynegative.pt --force
    """
    from tihub.cli._common import echo_json, fail, item
    from tihub.errors import TihubError
    from tihub.formats import read_embedding, write_embedding

    target = out if out is not None else default_out(file, fmt)
    try:
        if not file.exists():
            raise NotFound(f"'{file}' does not exist; check the path.")
        emb = read_embedding(file)
        if target.exists() and not force:
            raise FormatError(f"'{target}' already exists; pass --force to overwrite it or -o to choose another name.")
        emb.name = target.stem if out is not None else emb.name
        write_embedding(emb, target, fmt)
    except TihubError as exc:
        if not as_json:
            raise
        fail(str(exc))
        echo_json([item(False, str(exc), input=str(file), path=None, format=fmt, base=None, vectors=None, dtype=None)])
        raise SystemExit(1) from None
    if as_json:
        echo_json([item(True, input=str(file), path=str(target), format=fmt, base=emb.base, vectors=emb.vector_count, dtype=emb.dtype)])
        return
    click.echo(f"{target}  ({fmt}, {emb.base}, {emb.vector_count} vectors, {emb.dtype})")
