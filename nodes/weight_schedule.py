"""IP-Adapter Weight Schedule: one weight factor per latent, for Apply IP-Adapter's weight_schedule."""

from __future__ import annotations

from ..ipadapter_core.schedules import SCHEDULE_METHODS, format_schedule, parse_schedule, weight_schedule
from .socket_types import WEIGHT_SCHEDULE


class IPAdapterWeightSchedule:
    DESCRIPTION = (
        "Per-latent factors on Apply IP-Adapter's weight, so the image prompt fades in or out across the "
        "frames of a batch (animation). Latents past the end of the schedule use its last value."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = (WEIGHT_SCHEDULE, "STRING")
    RETURN_NAMES = ("weight_schedule", "values")
    OUTPUT_TOOLTIPS = (
        "Connect to Apply IP-Adapter's weight_schedule.",
        "The values as text, to display or to paste into custom and edit.",
    )
    FUNCTION = "schedule"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "frames": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Number of values: usually the latent batch size."}),
                "start": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.01, "tooltip": "Factor for the first latent."}),
                "end": ("FLOAT", {"default": 0.0, "min": -1.0, "max": 5.0, "step": 0.01, "tooltip": "Factor for the last latent."}),
                "method": (list(SCHEDULE_METHODS), {"default": "linear", "tooltip": "Curve from start to end. ease in: slow at first; ease out: slow at the end; ease in-out: slow at both."}),
            },
            "optional": {
                "custom": ("STRING", {"default": "", "tooltip": "Values separated by commas, e.g. '1, 0.8, 0.5'. When set, frames, start, end and method are ignored."}),
            },
        }

    def schedule(self, frames, start, end, method, custom="") -> tuple:
        values = parse_schedule(custom) if custom.strip() else weight_schedule(frames, start, end, method)
        return (values, format_schedule(values))
