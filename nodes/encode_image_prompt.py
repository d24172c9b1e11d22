"""Encode Image Prompt: reference image(s) + CLIP vision -> IMAGE_PROMPT tokens for one adapter."""

from __future__ import annotations

import comfy.model_management

from ..ipadapter_core.encoding import encode_image_prompt
from .clip_vision import comfy_encoder


class EncodeImagePrompt:
    DESCRIPTION = (
        "Turns reference images into image-prompt tokens with the adapter's projection. Several images in "
        "one batch are combined by concatenating their tokens."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("Conditional and unconditional image tokens, tied to the adapter that made them.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter": ("IPADAPTER", {"tooltip": "From Load IP-Adapter; the same one must go to Apply IP-Adapter."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "From Load CLIP Vision: the encoder the adapter was trained with (ViT-H/14 for most)."}),
                "image": ("IMAGE", {"tooltip": "Reference image(s). RGBA and grayscale are converted; non-square images are centre-cropped."}),
            },
            "optional": {
                "negative_image": ("IMAGE", {"tooltip": "Replaces the neutral unconditional image tokens (one image, or one per reference)."}),
            },
        }

    def encode(self, ipadapter, clip_vision, image, negative_image=None):
        encoder = comfy_encoder(clip_vision, ipadapter.model.spec)
        comfy.model_management.load_model_gpu(ipadapter.patcher)
        prompt = encode_image_prompt(
            ipadapter.model,
            image,
            encoder,
            negative_images=negative_image,
            size=clip_vision.image_size,
            mean=tuple(clip_vision.image_mean),
            std=tuple(clip_vision.image_std),
        )
        return (prompt,)
