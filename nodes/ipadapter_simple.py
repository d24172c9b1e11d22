"""IP-Adapter: encode and apply in one node, for simple graphs (same code as the two separate nodes)."""

from __future__ import annotations

from ..ipadapter_core.layer_weights import WEIGHT_TYPES
from .apply_ipadapter import ApplyIPAdapter
from .encode_image_prompt import EncodeImagePrompt


class IPAdapter:
    DESCRIPTION = "Encode Image Prompt + Apply IP-Adapter in one node."
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model with the image prompt applied; the input model is unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        encode = EncodeImagePrompt.INPUT_TYPES()["required"]
        apply = ApplyIPAdapter.INPUT_TYPES()
        return {
            "required": {
                "model": apply["required"]["model"],
                "ipadapter": apply["required"]["ipadapter"],
                "clip_vision": encode["clip_vision"],
                "image": encode["image"],
                "weight": apply["required"]["weight"],
                "weight_type": apply["optional"]["weight_type"],
                "start_at": apply["required"]["start_at"],
                "end_at": apply["required"]["end_at"],
            }
        }

    def apply(self, model, ipadapter, clip_vision, image, weight, weight_type, start_at, end_at) -> tuple:
        (prompt,) = EncodeImagePrompt().encode(ipadapter, clip_vision, image)
        return ApplyIPAdapter().apply(model, ipadapter, prompt, weight, start_at, end_at, weight_type=weight_type)
