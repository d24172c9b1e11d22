"""Prepare Image For CLIP: choose what part of a reference the encoder sees, and preview it."""

from __future__ import annotations

from ..ipadapter_core.reference_prep import CROP_POSITIONS, INTERPOLATIONS, prepare_reference


class PrepareImageForClip:
    DESCRIPTION = (
        "Crops (or letterboxes) reference images to the square the CLIP encoder sees, at its resolution. "
        "Connect the result to Encode Image Prompt, and to a Preview Image node to check the crop."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Square RGB images of side `size`; encoding them adds no further crop.",)
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Reference image(s). RGBA and grayscale are converted to RGB."}),
                "interpolation": (list(INTERPOLATIONS), {"default": "bicubic", "tooltip": "Resampling filter. bicubic matches CLIP's own preprocessing."}),
                "crop_position": (list(CROP_POSITIONS), {"default": "center", "tooltip": "Which square to keep: top/bottom for tall images, left/right for wide ones. pad keeps the whole image on mid-grey bars."}),
                "sharpening": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Unsharp-mask strength, restoring detail lost by downscaling. 0: none."}),
                "size": ("INT", {"default": 224, "min": 16, "max": 2048, "step": 1, "tooltip": "Output side in pixels: 224 for the CLIP models IP-Adapters use."}),
            }
        }

    def prepare(self, image, interpolation="bicubic", crop_position="center", sharpening=0.0, size=224) -> tuple:
        return (prepare_reference(image, size=size, interpolation=interpolation, crop_position=crop_position, sharpening=sharpening),)
