"""Encode Image Prompt: reference image(s) + CLIP vision -> IMAGE_PROMPT tokens for one adapter."""

from __future__ import annotations

from dataclasses import replace

import comfy.model_management

from ..ipadapter_core.encoding import COMBINE_METHODS, CROP_MODES, encode_image_prompt, parse_weights
from .clip_vision import comfy_encoder
from .socket_types import IMAGE_PROMPT, IPADAPTER


class EncodeImagePrompt:
    DESCRIPTION = (
        "Turns reference images into image-prompt tokens with the adapter's projection. Several images in "
        "one batch are combined by concatenating their tokens unless another combine method is chosen."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = (IMAGE_PROMPT,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("Conditional and unconditional image tokens, tied to the adapter that made them.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "ipadapter": (IPADAPTER, {"tooltip": "From Load IP-Adapter; the same one must go to Apply IP-Adapter."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "From Load CLIP Vision: the encoder the adapter was trained with (ViT-H/14 for most)."}),
                "image": ("IMAGE", {"tooltip": "Reference image(s). RGBA and grayscale are converted; non-square images are centre-cropped (see crop, or Prepare Image For CLIP)."}),
            },
            "optional": {
                "negative_image": ("IMAGE", {"tooltip": "Replaces the neutral unconditional image tokens (one image, or one per reference)."}),
                "combine": (list(COMBINE_METHODS), {"default": "concat", "tooltip": "How several references become one prompt: concat keeps all their tokens; the others merge the CLIP embeddings first."}),
                "image_weights": ("STRING", {"default": "", "tooltip": "One weight per reference image, e.g. '1, 0.5' (empty: all 1)."}),
                "crop": (list(CROP_MODES), {"default": "center", "tooltip": "center: square centre crop (the reference). squash: resize the whole image. tiles: square tiles covering wide or tall images."}),
            },
        }

    def encode(self, ipadapter, clip_vision, image, negative_image=None, combine="concat", image_weights="", crop="center") -> tuple:
        encoder = comfy_encoder(clip_vision, ipadapter.model.spec)
        comfy.model_management.load_model_gpu(ipadapter.patcher)
        weights = parse_weights(image_weights, image.shape[0] if image.ndim == 4 else 1)
        prompt = encode_image_prompt(
            ipadapter.model,
            image,
            encoder,
            negative_images=negative_image,
            size=clip_vision.image_size,
            mean=tuple(clip_vision.image_mean),
            std=tuple(clip_vision.image_std),
            combine=combine,
            weights=weights,
            crop=crop,
        )
        # Name the file in the prompt: adapters of one variant share a description.
        return (replace(prompt, adapter_description=f"{ipadapter.name}, {prompt.adapter_description}"),)

