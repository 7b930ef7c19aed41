"""Random-weight Stable Diffusion pipelines, for tests, benchmarks and the offline demo.

`build_tiny_sd1(dir)` and `build_tiny_sdxl(dir)` save small pipelines (hidden size 32, real CLIP
vocabulary of 49,408 tokens) as diffusers folders that load like any user model. `sd15_arch_pipeline()`
gives the full SD1.5 architecture with random weights, for GPU benchmarks that need the real
compute. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tihub.clip_vocab import clip_tokenizer


def _text_config(hidden: int = 32, layers: int = 2, heads: int = 4, act: str = "quick_gelu", inter: int = 37):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _tiny_vae():  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    # 4 blocks -> vae_scale_factor 8, as in real SD: 64x64 image <-> 8x8 latent
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=8,
        sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )


def _scheduler(prediction_type: str = "epsilon"):  # type: ignore[no-untyped-def]
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_sd1_pipeline(seed: int = 0, prediction_type: str = "epsilon", text_width: int = 32) -> Any:
    """An SD1-shaped StableDiffusionPipeline with random weights (in memory)."""
    return _one_encoder_pipeline(seed, prediction_type, text_width, pad_token="<|endoftext|>", attention_head_dim=8)


def tiny_sd2_pipeline(seed: int = 0, prediction_type: str = "v_prediction") -> Any:
    """An SD2-shaped StableDiffusionPipeline with random weights: a 1024-wide OpenCLIP-H-shaped
    text encoder (GELU, pad token "!"), linear-projection attention, v-prediction by default."""
    text = {"layers": 1, "heads": 8, "act": "gelu", "inter": 16}
    return _one_encoder_pipeline(seed, prediction_type, 1024, pad_token="!", text=text, attention_head_dim=(2, 4), use_linear_projection=True)


def _one_encoder_pipeline(seed: int, prediction_type: str, text_width: int, pad_token: str, text: dict[str, Any] | None = None, **unet_options: Any) -> Any:
    """A StableDiffusionPipeline (one text encoder, SD1/SD2 layout) with random weights."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    te = CLIPTextModel(_text_config(hidden=text_width, **(text or {})))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_width,
        **unet_options,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=te,
        tokenizer=clip_tokenizer(pad_token=pad_token),
        unet=unet,
        scheduler=_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0, g_width: int = 32, l_width: int = 32) -> Any:
    """An SDXL-shaped StableDiffusionXLPipeline with random weights (two text encoders).

    `g_width` sets the second (OpenCLIP-G-shaped) encoder's width; real SDXL has 768 and 1280, and
    diffusers' single-file loader tells the encoders apart by width, so give it a different one
    (e.g. 48) when the pipeline is to be saved as a single checkpoint. `l_width=768, g_width=1280`
    gives encoders as wide as SDXL's, so real SDXL embeddings load.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te = CLIPTextModel(_text_config(hidden=l_width))
    te2 = CLIPTextModelWithProjection(_text_config(hidden=g_width, act="gelu"))
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + g_width,
        cross_attention_dim=l_width + g_width,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=te,
        text_encoder_2=te2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=_scheduler(),
    )


def build_tiny_sd1(
    out_dir: str | Path, seed: int = 0, prediction_type: str = "epsilon", text_width: int = 32
) -> Path:
    """Save a tiny SD1-shaped pipeline as a diffusers folder and return its path.

    `text_width=768` gives a text encoder as wide as SD1's CLIP-L, so real SD1 embeddings load.
    """
    out = Path(out_dir)
    tiny_sd1_pipeline(seed, prediction_type, text_width).save_pretrained(out)
    return out


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0, g_width: int = 32) -> Path:
    """Save a tiny SDXL-shaped pipeline as a diffusers folder and return its path."""
    out = Path(out_dir)
    tiny_sdxl_pipeline(seed, g_width).save_pretrained(out)
    return out


def sd15_arch_pipeline(seed: int = 0, dtype: Any = None) -> Any:
    """The real SD1.5 architecture (860M UNet, CLIP-L text encoder, KL VAE) with random weights."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    te = CLIPTextModel(_text_config(hidden=768, layers=12, heads=12, inter=3072))
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    return pipe


def sdxl_arch_pipeline(seed: int = 0, dtype: Any = None) -> Any:
    """The real SDXL base architecture (2.6B UNet, CLIP-L and OpenCLIP-bigG text encoders, KL VAE)
    with random weights: the compute of SDXL 1.0 base, meaningless pictures (GPU benchmarks)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te = CLIPTextModel(_text_config(hidden=768, layers=12, heads=12, inter=3072))
    te2 = CLIPTextModelWithProjection(_text_config(hidden=1280, layers=32, heads=20, act="gelu", inter=5120))
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=1024,
        scaling_factor=0.13025,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te,
        text_encoder_2=te2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=_scheduler(),
    )
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    return pipe
