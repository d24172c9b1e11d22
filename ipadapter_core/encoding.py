"""Reference images -> ImagePrompt, with the unconditional tokens the reference uses for CFG."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .adapter import IPAdapterModel
from .errors import IPAdapterError
from .image_prompt import ImagePrompt
from .preprocess import CLIP_MEAN, CLIP_STD, clip_pixels
from .variants import ENCODERS, IMAGE_EMBEDS, AdapterSpec

# pixels (B, 3, S, S), normalised -> the encoder output the adapter reads (B, width) or (B, tokens, width)
Encoder = Callable[[torch.Tensor], torch.Tensor]


def check_encoder(spec: AdapterSpec, embeds_width: int, hidden_width: int) -> None:
    """Fail before encoding when the CLIP vision model cannot feed this adapter, naming the one that can."""
    width = embeds_width if spec.encoder_output == IMAGE_EMBEDS else hidden_width
    if width == spec.encoder_width:
        return
    given = ENCODERS.get((IMAGE_EMBEDS, embeds_width), f"a CLIP vision model with embedding width {embeds_width}")
    raise IPAdapterError(
        f"Wrong CLIP vision model for this IP-Adapter: the {spec.description} needs {spec.encoder_name} "
        f"({spec.encoder_output} width {spec.encoder_width}), but {given} gives width {width}. "
        f"Load {spec.encoder_file} from models/clip_vision with the Load CLIP Vision node."
    )


def encode_image_prompt(
    adapter: IPAdapterModel,
    images: torch.Tensor,
    encode: Encoder,
    negative_images: torch.Tensor | None = None,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> ImagePrompt:
    """Project every reference image and concatenate their tokens into one prompt (as diffusers does).

    Unconditional tokens: the projection of zero embeddings for pooled-embedding adapters, the
    projection of the encoder's output for an all-zero pixel tensor for hidden-state adapters,
    or the projection of the user's negative image.
    """
    spec = adapter.spec
    features = encode(clip_pixels(images, size, mean, std))
    check_feature_width(spec, features)
    count = features.shape[0]
    if negative_images is not None:
        negative = encode(clip_pixels(negative_images, size, mean, std))
        if negative.shape[0] not in (1, count):
            raise IPAdapterError(
                f"negative_image has {negative.shape[0]} images but image has {count}; give one negative image "
                "or exactly one per reference image."
            )
        negative = negative.expand(count, *negative.shape[1:])
    elif spec.encoder_output == IMAGE_EMBEDS:
        negative = torch.zeros_like(features)
    else:
        zero_pixels = torch.zeros(1, 3, size, size, device=features.device)
        negative = encode(zero_pixels).expand(count, *features.shape[1:])
    cond = adapter.project(features).cpu()
    uncond = adapter.project(negative).cpu()
    return ImagePrompt(
        cond=cond.reshape(1, -1, cond.shape[-1]),
        uncond=uncond.reshape(1, -1, uncond.shape[-1]),
        adapter_identity=adapter.identity,
        adapter_description=spec.description,
    )


def check_feature_width(spec: AdapterSpec, features: torch.Tensor) -> None:
    if features.shape[-1] != spec.encoder_width:
        raise IPAdapterError(
            f"The image encoder produced features of width {features.shape[-1]}, but the {spec.description} "
            f"needs {spec.encoder_name} (width {spec.encoder_width}). Load {spec.encoder_file}."
        )
