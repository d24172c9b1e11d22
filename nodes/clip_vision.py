"""Running ComfyUI's CLIP_VISION model for the encoder output an adapter reads."""

from __future__ import annotations

import comfy.clip_vision
import comfy.model_management
import torch
from comfy.model_patcher import ModelPatcher

from ..ipadapter_core.encoders import IMAGE_EMBEDS, PENULTIMATE, PENULTIMATE_LAYER
from ..ipadapter_core.encoding import Encoder, check_encoder
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.variants import AdapterSpec

# Index of each output in the tuple ComfyUI's CLIPVisionModelProjection returns.
OUTPUT_INDEX = {IMAGE_EMBEDS: 2, PENULTIMATE: 1}


def comfy_encoder(clip_vision, spec: AdapterSpec) -> Encoder:
    """An encoder callable for `encode_image_prompt`, after checking the model can feed `spec`.

    Calls the vision model directly (not `encode_image`) because the unconditional tokens of
    hidden-state adapters need the encoder's answer to an all-zero pixel tensor, which no image
    in [0, 1] preprocesses to. The caller loads the model first (load_models).
    """
    projection = getattr(clip_vision.model, "visual_projection", None)
    vision = getattr(clip_vision.model, "vision_model", None)
    if projection is None or vision is None:
        raise IPAdapterError(
            f"This image encoder is not a CLIP or SigLIP vision model; the {spec.description} needs {spec.encoder_name}. "
            f"Load {spec.encoder_file} with the Load CLIP Vision node."
        )
    # SigLIP has no projection to image_embeds (ComfyUI puts an identity there): width 0.
    embeds_width = projection.weight.shape[0] if isinstance(projection, torch.nn.Module) else 0
    check_encoder(spec, embeds_width, vision.post_layernorm.weight.shape[0])

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output=PENULTIMATE_LAYER)
        return out[OUTPUT_INDEX[spec.encoder_output]].float()

    return encode


def preprocessing(clip_vision) -> dict:
    """The encoder's input size and normalisation, and the host's CLIP preprocessing, as
    encode_image_prompt's keyword arguments."""
    return dict(size=clip_vision.image_size, mean=tuple(clip_vision.image_mean), std=tuple(clip_vision.image_std),
                normalise=comfy.clip_vision.clip_preprocess)


def load_models(*patchers: ModelPatcher | None) -> None:
    """Put the adapter and the encoder on the device in one load_models_gpu call: model management
    then makes room for both at once, instead of possibly evicting the first to load the second."""
    comfy.model_management.load_models_gpu([patcher for patcher in patchers if patcher is not None])
