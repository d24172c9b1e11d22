"""Combine Image Prompts: several IMAGE_PROMPTs of one adapter -> one."""

from __future__ import annotations

from ..ipadapter_core.image_prompt import PROMPT_COMBINE_METHODS, combine_prompts
from .socket_types import IMAGE_PROMPT


class CombineImagePrompts:
    DESCRIPTION = "Merges image prompts made by the same adapter: concatenate their references, or average, add or subtract their tokens."
    CATEGORY = "ipadapter"
    RETURN_TYPES = (IMAGE_PROMPT,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("One image prompt for Apply IP-Adapter, tied to the same adapter.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        prompt = (IMAGE_PROMPT, {"tooltip": "From Encode Image Prompt (all from the same adapter)."})
        return {
            "required": {
                "image_prompt_1": prompt,
                "image_prompt_2": prompt,
                "method": (list(PROMPT_COMBINE_METHODS), {"default": "concat", "tooltip": "subtract: the first minus the mean of the others."}),
            },
            "optional": {"image_prompt_3": prompt, "image_prompt_4": prompt},
        }

    def combine(self, image_prompt_1, image_prompt_2, method, image_prompt_3=None, image_prompt_4=None) -> tuple:
        prompts = [p for p in (image_prompt_1, image_prompt_2, image_prompt_3, image_prompt_4) if p is not None]
        return (combine_prompts(prompts, method),)
