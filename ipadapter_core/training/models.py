"""The frozen parts of training: the base model (diffusers folder or single file) and its text encoding.

Loading uses diffusers' and transformers' own loaders, so any model they read works here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import IPAdapterError

FAMILIES = ("sd15", "sdxl")


@dataclass
class BaseModel:
    """UNet, VAE, text encoder(s) with tokenizers, and the noise schedule of one base model."""

    family: str
    unet: nn.Module
    vae: nn.Module
    text_encoders: list[nn.Module]
    tokenizers: list
    noise_scheduler: object
    frozen: list[nn.Module] = field(default_factory=list)

    def freeze(self) -> None:
        self.frozen = [self.unet, self.vae, *self.text_encoders]
        for module in self.frozen:
            module.requires_grad_(False).eval()


def load_base_model(path: str, family: str = "", config_folder: str = "") -> BaseModel:
    """A diffusers folder (model_index.json) or a single .safetensors/.ckpt checkpoint.

    family: "sd15" or "sdxl"; read from the folder when empty. A single file needs the family,
    and offline also a diffusers config folder (config_folder) for its components' configs.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    source = Path(path)
    if source.is_dir():
        if not (source / "unet").is_dir():
            raise IPAdapterError(f"{source} is not a diffusers model folder (no unet/ subfolder); give a diffusers folder or a single checkpoint file.")
        family = family or ("sdxl" if (source / "text_encoder_2").is_dir() else "sd15")
        check_family(family)
        encoders = [CLIPTextModel.from_pretrained(str(source), subfolder="text_encoder")]
        tokenizers = [CLIPTokenizer.from_pretrained(str(source), subfolder="tokenizer")]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection.from_pretrained(str(source), subfolder="text_encoder_2"))
            tokenizers.append(CLIPTokenizer.from_pretrained(str(source), subfolder="tokenizer_2"))
        model = BaseModel(
            family=family,
            unet=UNet2DConditionModel.from_pretrained(str(source), subfolder="unet"),
            vae=AutoencoderKL.from_pretrained(str(source), subfolder="vae"),
            text_encoders=encoders,
            tokenizers=tokenizers,
            noise_scheduler=DDPMScheduler.from_pretrained(str(source), subfolder="scheduler"),
        )
    elif source.is_file():
        check_family(family, f"base_model {source.name} is a single file; set family (sd15 or sdxl) in the config")
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        kwargs = {"config": config_folder} if config_folder else {}
        pipeline = pipeline_class.from_single_file(str(source), **kwargs)
        encoders = [pipeline.text_encoder] + ([pipeline.text_encoder_2] if family == "sdxl" else [])
        tokenizers = [pipeline.tokenizer] + ([pipeline.tokenizer_2] if family == "sdxl" else [])
        model = BaseModel(family, pipeline.unet, pipeline.vae, encoders, tokenizers, DDPMScheduler.from_config(pipeline.scheduler.config))
    else:
        raise IPAdapterError(f"base_model {source} does not exist; give a diffusers folder or a .safetensors checkpoint.")
    model.freeze()
    return model


def check_family(family: str, hint: str = "set family to sd15 or sdxl") -> None:
    if family not in FAMILIES:
        raise IPAdapterError(f"Unknown model family {family!r}: {hint}.")


@torch.no_grad()
def encode_text(model: BaseModel, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeddings, pooled embedding or None) the way the reference pipelines condition the UNet.

    SD1.5: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states
    side by side, and the second encoder's projected pooled output.
    """
    embeddings, pooled = [], None
    for i, (encoder, tokenizer) in enumerate(zip(model.text_encoders, model.tokenizers)):
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids.to(device)
        if model.family == "sd15":
            embeddings.append(encoder(ids)[0])
            continue
        output = encoder(ids, output_hidden_states=True)
        embeddings.append(output.hidden_states[-2])
        if i == 1:
            pooled = output[0]
    return torch.cat(embeddings, dim=-1), pooled


def time_ids(original_sizes: torch.Tensor, crops: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDXL's micro-conditioning per sample: original (h, w), crop top-left, target (h, w)."""
    target = original_sizes.new_tensor([resolution, resolution]).expand(original_sizes.shape[0], 2)
    return torch.cat([original_sizes, crops, target], dim=1)
