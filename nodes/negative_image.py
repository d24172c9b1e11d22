"""Make Negative Image: a degraded copy of a reference for Encode Image Prompt's negative_image."""

from __future__ import annotations

from ..ipadapter_core.negatives import NEGATIVE_KINDS, negative_image
from .api import CATEGORY, io


class MakeNegativeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactMakeNegativeImage",
            display_name="Make Negative Image (IP-Adapter)",
            category=CATEGORY,
            description=(
                "Makes an image for Encode Image Prompt's negative_image: the reference blended toward noise, a blur, "
                "its shuffled pixels or flat grey. The sampler then steers away from that instead of from a black image."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The reference image(s); sets the size and batch, and is what blur and shuffle start from."),
                io.Combo.Input(
                    "kind", options=list(NEGATIVE_KINDS), default="noise",
                    tooltip=(
                        "noise: random pixels. blur: heavy Gaussian blur. shuffle: the image's pixels in random order. gray: flat 0.5. "
                        "dissolve: a strength share of the values replaced by random ones. gaussian: Gaussian noise of deviation strength added."
                    ),
                ),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="How far to blend from the image toward the chosen kind. 0 returns the image."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                    tooltip="Seed for the random kinds; the same seed gives the same image.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="RGB images of the input's size and batch.")],
        )

    @classmethod
    def execute(cls, image, kind="noise", strength=1.0, seed=0) -> io.NodeOutput:
        return io.NodeOutput(negative_image(image, kind=kind, strength=strength, seed=seed))
