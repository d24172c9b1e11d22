"""Combine Image Prompts: several IMAGE_PROMPTs of one adapter -> one."""

from __future__ import annotations

from ..ipadapter_core.image_prompt import PROMPT_COMBINE_METHODS, combine_prompts
from .api import CATEGORY, io
from .socket_types import ImagePromptSocket


def prompt_input(name: str, optional: bool) -> io.Input:
    return ImagePromptSocket.Input(name, optional=optional, tooltip="From Encode Image Prompt (all from the same adapter).")


class CombineImagePrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactCombineImagePrompts",
            display_name="Combine Image Prompts (IP-Adapter)",
            category=CATEGORY,
            description="Merges image prompts made by the same adapter: concatenate their references, or average, add or subtract their tokens.",
            inputs=[
                prompt_input("image_prompt_1", optional=False),
                prompt_input("image_prompt_2", optional=False),
                io.Combo.Input("method", options=list(PROMPT_COMBINE_METHODS), default="concat", tooltip="subtract: the first minus the mean of the others."),
                prompt_input("image_prompt_3", optional=True),
                prompt_input("image_prompt_4", optional=True),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt", tooltip="One image prompt for Apply IP-Adapter, tied to the same adapter.")],
        )

    @classmethod
    def execute(cls, image_prompt_1, image_prompt_2, method, image_prompt_3=None, image_prompt_4=None) -> io.NodeOutput:
        prompts = [p for p in (image_prompt_1, image_prompt_2, image_prompt_3, image_prompt_4) if p is not None]
        return io.NodeOutput(combine_prompts(prompts, method))
