"""Shared helpers for the engine tests (tiny widths the real readers refuse on purpose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tihub.formats.model import Embedding


def write_emb(path: Path, *arrays: np.ndarray) -> Path:
    """One array: {"emb_params"}; two: SDXL {"clip_l", "clip_g"}."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if len(arrays) == 1:
        save_file({"emb_params": np.asarray(arrays[0], dtype=np.float32)}, str(path))
    else:
        save_file({"clip_l": np.asarray(arrays[0], dtype=np.float32), "clip_g": np.asarray(arrays[1], dtype=np.float32)}, str(path))
    return path


def tiny_reader(path: Path) -> Embedding:
    """Reads the files `write_emb` writes (32-wide vectors, which tihub.formats refuses)."""
    from safetensors.numpy import load_file

    from tihub.errors import FormatError

    try:
        d = load_file(str(path))
    except Exception as exc:
        raise FormatError(f"{path} is not a readable safetensors file") from exc
    if "clip_g" in d:
        return Embedding(path.stem, {"clip_l": d["clip_l"], "clip_g": d["clip_g"]})
    return Embedding(path.stem, {"clip_l": d["emb_params"]})


def engine_on(model, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An Engine on a loaded tiny model with an empty embeddings folder, reading 32-wide files."""
    from tihub.engine.generate import Engine

    folder = tmp_path / "embeddings"
    folder.mkdir(exist_ok=True)
    eng = Engine(model, folder)
    eng.vocabulary.reader = tiny_reader
    return eng


def vec(n: int, width: int = 32, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * scale).astype(np.float32)


def capture_encoder_inputs(text_encoder):
    """Record the hidden states entering the transformer (token + position embeddings)."""
    seen = []

    def pre(_m, args, kwargs):
        seen.append((kwargs.get("inputs_embeds") if "inputs_embeds" in kwargs else args[0]).detach().clone())

    enc = getattr(text_encoder, "encoder", None) or text_encoder.text_model.encoder
    return seen, enc.register_forward_pre_hook(pre, with_kwargs=True)


def token_rows(text_encoder, hidden, start, n):
    """Subtract position embeddings: what the token-embedding table (or our splice) gave."""
    emb = getattr(text_encoder, "embeddings", None) or text_encoder.text_model.embeddings
    pos = emb.position_embedding.weight[start:start + n]
    return (hidden[start:start + n] - pos).detach().numpy()


def to_ldm(pipe) -> dict:
    """A diffusers SD1 or SDXL pipeline as an original (LDM/SGM) single-file state dict (numpy arrays)."""
    out = {}
    unet_cfg = pipe.unet.config
    L = unet_cfg.layers_per_block
    n = len(unet_cfg.block_out_channels)

    def res(prefix_d, prefix_l, sd, kind="unet"):
        names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
        if kind == "vae":
            names = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
        for k, v in sd.items():
            if k.startswith(prefix_d + "."):
                rest = k[len(prefix_d) + 1:]
                head, _, tail = rest.partition(".")
                out_key = f"{prefix_l}.{names[head]}.{tail}"
                yield out_key, v

    u = {k: v.detach().float().numpy() for k, v in pipe.unet.state_dict().items()}
    P = "model.diffusion_model."
    mapping = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for k, v in u.items():
        for d, l in mapping.items():
            if k.startswith(d + "."):
                out[P + l + k[len(d):]] = v
    for i in range(n):
        for j in range(L):
            idx = 1 + i * (L + 1) + j
            out.update({P + k: v for k, v in res(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", u)})
            for k, v in u.items():
                if k.startswith(f"down_blocks.{i}.attentions.{j}."):
                    out[P + f"input_blocks.{idx}.1." + k.split(f"attentions.{j}.", 1)[1]] = v
        for k, v in u.items():
            if k.startswith(f"down_blocks.{i}.downsamplers.0.conv."):
                out[P + f"input_blocks.{(i + 1) * (L + 1)}.0.op." + k.rsplit(".", 1)[1]] = v
        for j in range(L + 1):
            idx = i * (L + 1) + j
            out.update({P + k: v for k, v in res(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", u)})
            has_attn = False
            for k, v in u.items():
                if k.startswith(f"up_blocks.{i}.attentions.{j}."):
                    has_attn = True
                    out[P + f"output_blocks.{idx}.1." + k.split(f"attentions.{j}.", 1)[1]] = v
            if j == L:
                for k, v in u.items():
                    if k.startswith(f"up_blocks.{i}.upsamplers.0.conv."):
                        out[P + f"output_blocks.{idx}.{2 if has_attn else 1}.conv." + k.rsplit(".", 1)[1]] = v
    out.update({P + k: v for k, v in res("mid_block.resnets.0", "middle_block.0", u)})
    out.update({P + k: v for k, v in res("mid_block.resnets.1", "middle_block.2", u)})
    for k, v in u.items():
        if k.startswith("mid_block.attentions.0."):
            out[P + "middle_block.1." + k[len("mid_block.attentions.0."):]] = v
    # VAE
    vs = {k: v.detach().float().numpy() for k, v in pipe.vae.state_dict().items()}
    V = "first_stage_model."
    nv = len(pipe.vae.config.block_out_channels)
    for part in ("encoder", "decoder"):
        for k, v in vs.items():
            for name in ("conv_in", "conv_out"):
                if k.startswith(f"{part}.{name}."):
                    out[V + k] = v
            if k.startswith(f"{part}.conv_norm_out."):
                out[V + f"{part}.norm_out." + k.rsplit(".", 1)[1]] = v
        for r, ldm in ((0, "block_1"), (1, "block_2")):
            out.update({V + k: v for k, v in res(f"{part}.mid_block.resnets.{r}", f"{part}.mid.{ldm}", vs, "vae")})
        attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        for k, v in vs.items():
            pre = f"{part}.mid_block.attentions.0."
            if k.startswith(pre):
                head, leaf = k[len(pre):].rsplit(".", 1)
                arr = v.reshape(*v.shape, 1, 1) if leaf == "weight" and v.ndim == 2 else v
                out[V + f"{part}.mid.attn_1.{attn[head]}.{leaf}"] = arr
        for i in range(nv):
            blocks = "down_blocks" if part == "encoder" else "up_blocks"
            li = i if part == "encoder" else nv - 1 - i
            ldm = "down" if part == "encoder" else "up"
            for j in range(pipe.vae.config.layers_per_block + (0 if part == "encoder" else 1)):
                out.update({V + k: v for k, v in res(f"{part}.{blocks}.{i}.resnets.{j}", f"{part}.{ldm}.{li}.block.{j}", vs, "vae")})
            sampler = "downsamplers" if part == "encoder" else "upsamplers"
            for k, v in vs.items():
                if k.startswith(f"{part}.{blocks}.{i}.{sampler}.0.conv."):
                    out[V + f"{part}.{ldm}.{li}.{'downsample' if part == 'encoder' else 'upsample'}.conv." + k.rsplit(".", 1)[1]] = v
    for k, v in vs.items():
        if k.startswith(("quant_conv.", "post_quant_conv.")):
            out[V + k] = v
    # text encoders: SD1 CLIP-L under cond_stage_model; SDXL CLIP-L and OpenCLIP-G under conditioner
    te_prefix = "conditioner.embedders.0.transformer." if getattr(pipe, "text_encoder_2", None) is not None else "cond_stage_model.transformer."
    for k, v in pipe.text_encoder.state_dict().items():
        key = k if k.startswith("text_model.") else "text_model." + k  # transformers 5 flattened keys
        out[te_prefix + key] = v.detach().float().numpy()
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _open_clip(te, prefix: str) -> dict:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's key layout (fused q/k/v)."""
    sd = {k: v.detach().float().numpy() for k, v in te.state_dict().items()}
    sd = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}
    out = {
        prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        prefix + "text_projection": sd["text_projection.weight"].T,
    }
    names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(te.config.num_hidden_layers):
        d = f"text_model.encoder.layers.{i}."
        o = f"{prefix}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[o + f"attn.in_proj_{leaf}"] = np.concatenate([sd[d + f"self_attn.{q}_proj.{leaf}"] for q in "qkv"])
            for dn, on in names.items():
                out[o + f"{on}.{leaf}"] = sd[d + f"{dn}.{leaf}"]
    return out


def train_pictures(folder: Path, n: int = 3, size: int = 64) -> Path:
    """n random pictures whose names are their captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}-red fox, snow.png")
    return folder


def train_cfg(tmp: Path, model: Path, **kw):  # type: ignore[no-untyped-def]
    """A short CPU training run of the token 'foxtok' under tmp (keywords override)."""
    from tihub.engine.train import TrainConfig

    base = dict(
        name="foxtok",
        images=train_pictures(tmp / "pics"),
        model=str(model),
        embeddings_dir=tmp / "home" / "embeddings",
        run_dir=tmp / "home" / "train" / "foxtok",
        vectors=2,
        steps=6,
        lr="0.05",
        save_every=0,
        template="subject_filewords",
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def quiet(_line: str) -> None:
    pass
