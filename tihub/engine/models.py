"""Loading Stable Diffusion models: diffusers folders, single files, and Hub repos.

`load_model(spec)` returns a `LoadedModel`: the diffusers pipeline on the chosen device and
dtype, its family (sd1 | sd2 | sdxl), the name infotext shows (`Model`), and its AutoV2 hash
(`Model hash`, from the hash cache when one is given).

- a diffusers folder (model_index.json) loads with `from_pretrained`, offline;
- a `.safetensors` checkpoint loads with `from_single_file(config=...)`, the config folder taken
  from `tihub/data/configs/<family>` or the `config` argument (never fetched from the Hub);
- a `.ckpt`/`.pt` checkpoint is read by tihub's safe pickle reader (never `torch.load`),
  written as a temporary safetensors file and loaded as above;
- anything else that looks like `owner/name` is a Hub repo id: downloaded when online (the
  files the pipeline needs, into the Hugging Face cache), from that cache when offline.

Device: CUDA (bf16 where supported, else fp16), Apple MPS (fp16), else CPU (fp32); `device=` and
`dtype=` override. Attention runs on PyTorch SDPA (diffusers' default processor on torch 2).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tihub.errors import ConfigError, EngineError, FormatError, NotFound

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass
class LoadedModel:
    pipe: Any
    family: str  # sd1 | sd2 | sdxl
    name: str  # file stem / folder name, as infotext `Model`
    path: str
    hash: str | None = None  # AutoV2 (10 hex), infotext `Model hash`
    sha256: str | None = None
    prediction: str = "epsilon"

    @property
    def device(self) -> Any:
        return self.pipe.unet.device

    @property
    def dtype(self) -> Any:
        return self.pipe.unet.dtype

    @property
    def native_size(self) -> int:
        """The side the model was trained at: SDXL 1024, SD2 v-prediction 768, else 512."""
        if self.family == "sdxl":
            return 1024
        return 768 if self.family == "sd2" and self.prediction == "v_prediction" else 512

    @property
    def widths(self) -> dict[str, int]:
        te = self.pipe.text_encoder.get_input_embeddings().weight.shape[1]
        if self.family == "sdxl":
            return {"clip_l": int(te), "clip_g": int(self.pipe.text_encoder_2.get_input_embeddings().weight.shape[1])}
        return {("clip_h" if self.family == "sd2" else "clip_l"): int(te)}


def pick_device(device: str | Any | None = None) -> Any:
    import torch

    if device is not None and str(device) != "auto":
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"Unknown device '{device}'; use cpu, cuda, cuda:N or mps.") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device: Any) -> bool:
    """Whether a CUDA device computes bf16 natively (Ampere and newer, or ROCm). Older cards (T4,
    V100) only emulate it, far slower than fp16, though torch.cuda.is_bf16_supported() says yes."""
    import torch

    if torch.version.hip:
        return True
    return int(torch.cuda.get_device_properties(device).major) >= 8


def pick_dtype(device: Any, dtype: str | Any | None = None) -> Any:
    import torch

    if dtype is not None and not isinstance(dtype, str):
        return dtype
    if dtype and dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype '{dtype}'; use fp32, fp16 or bf16.")
        return getattr(torch, DTYPES[dtype])
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def family_of(pipe: Any) -> str:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    return "sd2" if width == 1024 else "sd1"


def config_folder(family: str, prediction: str | None = None) -> Path | None:
    """A complete diffusers config folder for a family: the JSON shipped in tihub/data/configs
    plus the CLIP tokenizer files (written once per process into a temp folder)."""
    import shutil

    from tihub import __version__
    from tihub.clip_vocab import write_clip_tokenizer_files

    name = {"sd1": "sd1", "sd2": "sd2-v" if prediction == "v" else "sd2", "sdxl": "sdxl"}.get(family)
    if name is None:
        return None
    src = Path(str(resources.files("tihub.data").joinpath("configs", name)))
    if not (src / "model_index.json").is_file():
        return None
    dst = Path(tempfile.gettempdir()) / f"tihub-configs-{__version__}-{os.getuid() if hasattr(os, 'getuid') else 0}" / name
    if not (dst / "tokenizer" / "merges.txt").is_file():
        tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for sub in ("tokenizer", "tokenizer_2"):
            if (tmp / sub).is_dir():
                write_clip_tokenizer_files(tmp / sub)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return dst


def quiet() -> None:
    """No progress bars or info chatter from diffusers/transformers while loading."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    quiet()

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _from_folder(path: Path, dtype: Any) -> Any:
    index = path / "model_index.json"
    try:
        cls_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError) as exc:
        raise FormatError(f"{index} is not valid JSON ({exc}); re-download or re-save the model.") from exc
    cls = _pipeline_class("sdxl" if "XL" in cls_name else "sd1")
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if cls.__name__ == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return cls.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # diffusers raises many kinds; one sentence for the user
        raise FormatError(f"The diffusers folder {path} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); is it complete?") from exc


def _from_single_file(path: Path, dtype: Any, config: str | Path | None) -> Any:
    from tihub.checkpoints import inspect_model

    if config:
        # the caller's config folder decides the architecture
        folder = Path(config)
        index = folder / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"--config {folder} is not a diffusers folder (no model_index.json).")
        family = "sdxl" if "XL" in json.loads(index.read_text(encoding="utf-8")).get("_class_name", "") else "sd1"
    else:
        info = inspect_model(path)
        if info.family not in ("sd1", "sd2", "sdxl"):
            raise FormatError(f"{path} is not a Stable Diffusion 1/2/XL checkpoint ({info.reason or info.family}); pass an SD model.")
        family = info.family
        found = config_folder(info.family, info.prediction)
        if found is None:
            raise EngineError(f"No diffusers config for {info.family} ships with tihub; pass --config a diffusers folder of the same family (or convert {path.name} to a diffusers folder).")
        folder = found
    cls = _pipeline_class(family)
    kwargs: dict[str, Any] = {"config": str(folder), "dtype": dtype, "local_files_only": True}
    if cls.__name__ == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as exc:
        raise FormatError(f"{path} could not be loaded as a {family} checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).") from exc


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a Hub diffusers repo: downloaded when online, cached otherwise."""
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    try:
        return Path(DiffusionPipeline.download(repo_id, local_files_only=offline))
    except Exception as exc:
        if offline:
            raise NotFound(f"Model '{repo_id}' does not exist as a local path and is not in the Hugging Face cache (HF_HUB_OFFLINE is set); pass a local model or go online.") from exc
        raise NotFound(f"Model '{repo_id}' does not exist as a local path and the Hugging Face repo of that name could not be downloaded ({type(exc).__name__}); check the id and your connection.") from exc


def _ckpt_to_safetensors(path: Path, tmp: Path) -> Path:
    """Read a torch pickle checkpoint safely (no code runs) and write its tensors as safetensors."""
    import numpy as np
    from safetensors.numpy import save_file

    from tihub.formats.containers import is_legacy_torch, read_legacy_torch, read_torch_zip

    data = path.read_bytes()
    cap = len(data) * 2 + (1 << 20)
    obj = read_legacy_torch(data, str(path), cap) if is_legacy_torch(data) else read_torch_zip(data, str(path), cap)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FormatError(f"{path} holds no state dict; it is not a model checkpoint.")
    tensors = {}
    for k, v in obj.items():
        arr = getattr(v, "array", v)
        if isinstance(arr, np.ndarray):
            tensors[str(k)] = np.ascontiguousarray(arr)
    out = tmp / (path.stem + ".safetensors")
    save_file(tensors, str(out))
    return out


def load_pipeline(model: str | os.PathLike[str], device: Any = None, dtype: Any = None, config: str | None = None) -> Any:
    """Just the pipeline (used by the trainer)."""
    return load_model(model, device=device, dtype=dtype, config=config, compute_hash=False).pipe


def load_model(
    model: str | os.PathLike[str],
    device: Any = None,
    dtype: Any = None,
    config: str | os.PathLike[str] | None = None,
    hash_cache: Any = None,
    compute_hash: bool = True,
) -> LoadedModel:
    """Load `model` (folder, .safetensors, .ckpt or Hub repo id) ready for generation."""
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    spec = os.fspath(model)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FormatError(f"{path} is a folder without model_index.json, so it is not a diffusers model; pass a diffusers folder or a checkpoint file.")
        pipe = _from_folder(path, dt)
        name = path.name
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            pipe = _from_single_file(path, dt, config)
        elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
            with tempfile.TemporaryDirectory(prefix="tihub-ckpt-") as tmp:
                pipe = _from_single_file(_ckpt_to_safetensors(path, Path(tmp)), dt, config)
        else:
            raise FormatError(f"{path} is not a model file (.safetensors, .ckpt) or diffusers folder.")
        name = path.stem
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        # a Hub repo id: download (or find in the cache) the files the pipeline needs, then load
        # that snapshot folder like any other, so family, hash and errors follow the folder rules
        path = _hub_snapshot(spec)
        pipe = _from_folder(path, dt)
        name = spec.split("/")[-1]
    else:
        raise NotFound(f"Model '{spec}' does not exist; pass a diffusers folder, a .safetensors/.ckpt file, or a Hugging Face repo id (online).")
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    if dev.type == "cuda":
        pipe.unet.to(memory_format=__import__("torch").channels_last)
    family = family_of(pipe)
    prediction = getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    loaded = LoadedModel(pipe=pipe, family=family, name=name, path=str(path), prediction=prediction)
    if compute_hash and (path.is_dir() or path.is_file()):
        from tihub.hashing import model_hashes

        try:
            h = model_hashes(path, hash_cache)
            loaded.hash, loaded.sha256 = h.autov2, h.sha256
        except Exception:  # a hash is informative only; generation goes on without it
            loaded.hash = None
    return loaded


def from_pipeline(pipe: Any, name: str = "model", model_hash: str | None = None) -> LoadedModel:
    """Wrap an in-memory pipeline (tests, the trainer's previews)."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    prediction = getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    return LoadedModel(pipe=pipe, family=family_of(pipe), name=name, path="", hash=model_hash, prediction=prediction)
