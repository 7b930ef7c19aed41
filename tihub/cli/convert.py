"""`tihub convert`: rewrite an embedding in another format, values bit-exact."""

from __future__ import annotations

from pathlib import Path

import click

from tihub.errors import FormatError, NotFound

_FORMATS = ("safetensors", "a1111", "diffusers-bin", "diffusers-safetensors", "png")  # = writer.FORMATS, not imported (numpy) for --help


def _default_out(src: Path, fmt: str) -> Path:
    from tihub.formats.writer import SUFFIX

    out = src.with_suffix(SUFFIX[fmt])
    if out == src:
        out = src.with_name(f"{src.stem}.{fmt}{SUFFIX[fmt]}")
    return out


@click.command("convert")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "fmt", type=click.Choice(_FORMATS), default="safetensors", show_default=True, help="Output format.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), help="Output file (default: FILE with the new suffix).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def convert_cmd(file: Path, fmt: str, out: Path | None, force: bool) -> None:
    """Convert embedding FILE to another format (values stay bit-exact).

    The trigger word stays the file stem; metadata (name, step, sd_checkpoint,
    sd_checkpoint_name) is carried over where the format holds it.

    \b
    Example:
      tihub convert embeddings/bad-hands-5.pt --to safetensors
      tihub convert easynegative.safetensors --to a1111 -o easynegative.pt --force
    """
    from tihub.formats import read_embedding, write_embedding

    if not file.exists():
        raise NotFound(f"'{file}' does not exist; check the path.")
    emb = read_embedding(file)
    target = out if out is not None else _default_out(file, fmt)
    if target.exists() and not force:
        raise FormatError(f"'{target}' already exists; pass --force to overwrite it or -o to choose another name.")
    emb.name = target.stem if out is not None else emb.name
    write_embedding(emb, target, fmt)
    click.echo(f"{target}  ({fmt}, {emb.base}, {emb.vector_count} vectors, {emb.dtype})")
