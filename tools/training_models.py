"""Random-weight diffusers models for the trainer's tests and benchmark, written as real model folders.

The trainer loads base models the way users give them (a diffusers folder with unet/, vae/,
text_encoder/, tokenizer/, scheduler/), so tests write such folders. "tiny" models keep the
SD1.5/SDXL structure (cross-attention in down, up and mid blocks; SDXL's two text encoders and
time ids) at widths that train in seconds on a CPU; "sd15"/"sdxl" are the real architectures.
The tokenizer is a byte-level CLIP tokenizer with no merges: real CLIP tokenization code, a
vocabulary small enough to write out here (no download).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from tools.random_models import DIFFUSERS_UNET_CONFIGS, VISION_CONFIGS

TINY_UNETS = {
    "sd15": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ),
    "sdxl": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(4, 8), norm_num_groups=8, transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    ),
}
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16)
TINY_VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=16)
TINY_VISION = dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, num_hidden_layers=3, projection_dim=40, image_size=32, patch_size=8)
FULL_TEXT = {
    "sd15": [dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768)],
    "sdxl": [dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768),
             dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280)],
}


def write_tokenizer(path: Path, max_length: int) -> None:
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length).save_pretrained(str(path))


def write_base_model(path: Path, family: str = "sd15", size: str = "tiny", seed: int = 0) -> Path:
    """A diffusers model folder with random weights: tiny for tests, full for the benchmark."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    torch.manual_seed(seed)
    tiny = size == "tiny"
    unet = UNet2DConditionModel(**(TINY_UNETS if tiny else DIFFUSERS_UNET_CONFIGS)[family])
    vae = AutoencoderKL(**TINY_VAE) if tiny else AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=1024 if family == "sdxl" else 512)
    text_configs = [TINY_TEXT] * (2 if family == "sdxl" else 1) if tiny else FULL_TEXT[family]
    max_length = TINY_TEXT["max_position_embeddings"] if tiny else 77
    components = {"unet": unet, "vae": vae}
    for i, config in enumerate(text_configs):
        suffix = "" if i == 0 else "_2"
        cls = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        components[f"text_encoder{suffix}"] = cls(CLIPTextConfig(**{"max_position_embeddings": 77, "projection_dim": config["hidden_size"], **config}))
        write_tokenizer(path / f"tokenizer{suffix}", max_length)
    if tiny and family == "sdxl":
        # SDXL's UNet reads the concatenated hidden states of both encoders (32 + 32 = 64 wide).
        assert sum(c["hidden_size"] for c in text_configs) == TINY_UNETS["sdxl"]["cross_attention_dim"]
    for name, module in components.items():
        module.save_pretrained(str(path / name))
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  clip_sample=False, steps_offset=1).save_pretrained(str(path / "scheduler"))
    pipeline = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "_diffusers_version": "0.42.1"}))
    return path


def write_image_encoder(path: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A CLIP vision model with projection as one .safetensors file in transformers' layout (what models/clip_vision holds)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = TINY_VISION if size == "tiny" else dict(VISION_CONFIGS[size], image_size=224, patch_size=14)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config, hidden_act="gelu"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def scale_like_linear(module: torch.nn.Module) -> torch.nn.Module:
    """Rescale matrices to N(0, 1/fan_in) so a random model's activations stay O(1)."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 1 / math.sqrt(math.prod(parameter.shape[1:])))
    return module
