"""Running ComfyUI's CLIP_VISION model for the encoder output an adapter reads."""

from __future__ import annotations

import torch
import comfy.model_management

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
    in [0, 1] preprocesses to.
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
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output=PENULTIMATE_LAYER)
        return out[OUTPUT_INDEX[spec.encoder_output]].float()

    return encode
