"""How an engine run is set up (generate, grid, verify, train): which model, which device, which
embedding file a name means, and the settings refused before any model loads.

Shared by `tihub.hub.Hub` and the CLI, so both faces refuse the same inputs with the same
sentence. Importing this module imports neither torch nor the catalogue; each check imports
what it needs (torch only for a GPU device check).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tihub.errors import ConfigError, NetworkError, NotFound, TihubError

# the hires. fix options of `tihub generate/grid` that become the engine's one `hires` object
HIRES_KEYS = ("hires_scale", "hires_steps", "denoising", "hires_upscaler", "hires_sampler", "hires_schedule_type",
              "hires_cfg_scale", "hires_prompt", "hires_negative_prompt")
PREVIEW_CAP = 32 * 1024 * 1024  # a published preview picture read by `verify --reproduce`


def model_arg(model: str | os.PathLike[str] | None) -> str:
    """The model a run uses: `model`, else $TIHUB_MODEL; an embedding file is refused."""
    chosen = str(model) if model else os.environ.get("TIHUB_MODEL")
    if not chosen:
        raise ConfigError("No model given; pass --model PATH (a diffusers folder or checkpoint) or set TIHUB_MODEL.")
    check_model_arg(chosen)
    return chosen


def check_model_arg(model: str) -> None:
    """Refuse a --model that is an embedding file (a common mix-up), naming what it is."""
    if not os.path.isfile(model) or os.path.getsize(model) > 64 * 1024 * 1024:
        return  # models are folders, Hub ids or big files; the loader explains the rest
    from tihub.formats import read_embedding

    try:
        emb = read_embedding(model)
    except TihubError:
        return
    raise ConfigError(
        f"--model {model} is an embedding ({emb.base}, {emb.vector_count} vectors), not a model; put it in embeddings/ "
        f"and use its name in the prompt, and pass a checkpoint or diffusers folder with --model."
    )


def check_device(device: str | None) -> None:
    """Refuse a --device this torch cannot use, before any model is loaded (one sentence)."""
    if device is None or device.strip().lower() in ("", "auto"):
        return
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d{1,3}))?", device.strip().lower())
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps.")
    kind = m.group(1)
    if kind == "cpu":
        return
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {device}: {why}; use --device cpu, or install a CUDA build of torch.")
        n = int(m.group(2) or 0)
        if n >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there is no such GPU (this machine has cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    elif not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: Apple's MPS is not available here; use --device cpu.")


def check_init_text(text: str) -> None:
    """A training --init-text that names a file (a path, or an embedding suffix) must be one that exists."""
    from tihub.formats import EMBEDDING_SUFFIXES

    looks_like_file = os.sep in text or text.lower().endswith(EMBEDDING_SUFFIXES)
    if looks_like_file and not os.path.exists(os.path.expanduser(text)):
        raise ConfigError(f"--init-text {text!r} looks like an embedding file but there is none; give an existing file, or words to start from.")
    if looks_like_file and os.path.isdir(os.path.expanduser(text)):
        raise ConfigError(f"--init-text {text!r} is a folder; give an embedding file, or words to start from.")


def fold_sampling(options: dict[str, Any]) -> dict[str, Any]:
    """Sampling options (`rng`, `eta`, `subseed`, ..., and the hires. fix options `hires_scale`,
    `hires_steps`, `denoising`, `hires_upscaler`, `hires_sampler`, `hires_schedule_type`,
    `hires_cfg_scale`, `hires_prompt`, `hires_negative_prompt`) as Engine.generate / Settings
    keywords: any hires option given turns hires. fix on, with A1111's defaults for the others
    (the first pass's sampler, schedule, CFG and prompts); A1111's other sampler settings are
    passed only where they differ from its defaults. Options already folded (`hires=`) pass
    through."""
    from tihub.engine.sampling import SAMPLER_SETTINGS, Randomness

    # A1111's other sampler settings (sigma min/max, rho, UniPC, NGMS, ...) only where they are
    # not their defaults
    defaults = Randomness()
    out = {k: v for k, v in options.items() if k not in SAMPLER_SETTINGS or v != getattr(defaults, k)}
    hires = {k: out.pop(k, None) for k in HIRES_KEYS}
    if any(v is not None for v in hires.values()):
        from tihub.engine.sampling.hires import Hires

        out["hires"] = Hires(
            scale=2.0 if hires["hires_scale"] is None else hires["hires_scale"], steps=hires["hires_steps"] or 0,
            denoising=0.7 if hires["denoising"] is None else hires["denoising"], upscaler=hires["hires_upscaler"] or "Latent",
            sampler=hires["hires_sampler"], schedule_type=hires["hires_schedule_type"], cfg_scale=hires["hires_cfg_scale"],
            prompt=hires["hires_prompt"] or "", negative_prompt=hires["hires_negative_prompt"] or "",
        )
    return out


def check_settings(steps: int, sampler: str | None, schedule_type: str | None, size: str | int | None, clip_skip: int,
                   cfg: float, sampling: dict[str, Any] | None = None) -> None:
    """Refuse bad sampling settings in a fraction of a second, before a model is loaded."""
    import math

    from tihub.engine.generate import Settings, parse_size
    from tihub.engine.samplers import DEFAULT

    if not math.isfinite(cfg) or abs(cfg) > 100:
        raise ConfigError(f"--cfg {cfg} is out of range; use a number from 0 to 100 (7 is usual).")
    w, h = parse_size(size, 512)
    if max(w, h) > 8192:
        raise ConfigError(f"Size {w}x{h} is too large; use at most 8192 pixels a side.")
    Settings(steps=steps, sampler=sampler or DEFAULT, cfg_scale=cfg, width=w, height=h, clip_skip=clip_skip,
             schedule_type=schedule_type or "Automatic", **(sampling or {})).check()


def check_axis(embeddings_dir: Path, axis: Any) -> None:
    """Refuse a grid axis value the grid could not use (numbers, sizes, embedding names) up front."""
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

        vocabulary = Vocabulary(embeddings_dir)
        vocabulary.refresh()
        missing = [v for v in axis.values if vocabulary.path_of(v) is None]
        if missing:
            raise ConfigError(f"Axis Embedding: {', '.join(repr(v) for v in missing)} is not an embedding in {embeddings_dir}; check `tihub list` or fetch it first.")


@dataclass
class ResolvedEmbedding:
    """The file an embedding name means for an engine run, and its catalogue records."""

    path: Path
    entry_id: int | None
    file_id: int | None
    kind: str | None  # object | style | negative | None (unknown)


def resolve_embedding(catalog: Any, embeddings_dir: Path, name: str) -> ResolvedEmbedding:
    """The local file of a catalogue entry name, else the embeddings/ file prompts would use;
    an unrecorded file is recorded so a verification or preview can be attached. Raises NotFound."""
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

        vocabulary = Vocabulary(embeddings_dir)
        vocabulary.refresh()
        path = vocabulary.path_of(name)
    if path is None:
        if entry is not None:
            raise NotFound(f"Embedding '{name}' is in the catalogue but not downloaded; run `tihub fetch {name}` first.")
        raise NotFound(f"No embedding named '{name}' in the catalogue or in {embeddings_dir}; check `tihub list` or import it.")
    if file_id is None:
        try:
            from tihub.formats import read_embedding
            from tihub.hashing import sha256_file

            file_id = catalog.upsert_local_file(path, read_embedding(path), sha256_file(path))
            entry = catalog.entry(name)
        except TihubError:
            pass
    return ResolvedEmbedding(Path(path), (entry or {}).get("id"), file_id, (entry or {}).get("kind"))


@contextmanager
def preview_fetcher(allow_private: bool = False) -> Iterator[Any]:
    """`fetch(url) -> bytes` for published preview pictures (`verify --reproduce`): through tihub's
    URL checks (private addresses only where the entry's source allows them), capped in size."""
    import httpx

    from tihub.net import URLPolicy, make_client, stream

    client = make_client(timeout=30.0)

    def fetch(url: str) -> bytes:
        with stream(client, "GET", url, policy=URLPolicy(allow_private=allow_private)) as resp:
            if resp.status_code != 200:
                raise NetworkError(f"The preview {url} answered HTTP {resp.status_code}; it is skipped.")
            data = bytearray()
            try:
                for part in resp.iter_bytes():
                    data += part
                    if len(data) > PREVIEW_CAP:
                        raise NetworkError(f"The preview {url} is larger than {PREVIEW_CAP // (1024 * 1024)} MiB; it is skipped.")
            except httpx.HTTPError as exc:
                raise NetworkError(f"Reading the preview {url} failed: {exc}.") from None
            return bytes(data)

    try:
        yield fetch
    finally:
        client.close()


def from_image(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings to re-run an image's infotext: `prompt`, `negative`, `settings`, `model_hash`, and
    `warnings` naming each setting that cannot be followed."""
    from tihub.engine.reproduce import read_rerun
    from tihub.infotext import NoInfotext

    try:
        rep = read_rerun(str(path))
    except NoInfotext as exc:
        raise ConfigError(f"--from-image: {exc}") from exc
    return {"prompt": rep.prompt, "negative": rep.negative_prompt, "settings": dict(rep.settings), "warnings": rep.notes,
            "model_hash": rep.model_hash}
