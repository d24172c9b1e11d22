"""Prepare Image For CLIP: choose what part of a reference the encoder sees, and preview it."""

from __future__ import annotations

from ..ipadapter_core.reference_prep import CROP_POSITIONS, INTERPOLATIONS, prepare_reference
from .api import CATEGORY, io


class PrepareImageForClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactPrepareImageForClip",
            display_name="Prepare Image For CLIP (IP-Adapter)",
            category=CATEGORY,
            description=(
                "Crops (or letterboxes) reference images to the square the CLIP encoder sees, at its resolution. "
                "Connect the result to Encode Image Prompt, and to a Preview Image node to check the crop."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Reference image(s). RGBA and grayscale are converted to RGB."),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="bicubic", tooltip="Resampling filter. bicubic matches CLIP's own preprocessing."),
                io.Combo.Input(
                    "crop_position", options=list(CROP_POSITIONS), default="center",
                    tooltip="Which square to keep: top/bottom for tall images, left/right for wide ones. pad keeps the whole image on mid-grey bars.",
                ),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05, tooltip="Unsharp-mask strength, restoring detail lost by downscaling. 0: none."),
                io.Int.Input("size", default=224, min=16, max=2048, step=1, tooltip="Output side in pixels: 224 for the CLIP models IP-Adapters use."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="Square RGB images of side `size`; encoding them adds no further crop.")],
        )

    @classmethod
    def execute(cls, image, interpolation="bicubic", crop_position="center", sharpening=0.0, size=224) -> io.NodeOutput:
        return io.NodeOutput(prepare_reference(image, size=size, interpolation=interpolation, crop_position=crop_position, sharpening=sharpening))
