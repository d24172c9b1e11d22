"""IP-Adapter Weight Schedule: one weight factor per latent, for Apply IP-Adapter's weight_schedule."""

from __future__ import annotations

from ..ipadapter_core.schedules import SCHEDULE_METHODS, format_schedule, parse_schedule, weight_schedule
from .api import CATEGORY, io
from .socket_types import WeightScheduleSocket


class IPAdapterWeightSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactIPAdapterWeightSchedule",
            display_name="IP-Adapter Weight Schedule",
            category=CATEGORY,
            description=(
                "Per-latent factors on Apply IP-Adapter's weight, so the image prompt fades in or out across the "
                "frames of a batch (animation). Latents past the end of the schedule use its last value."
            ),
            inputs=[
                io.Int.Input("frames", default=16, min=1, max=4096, tooltip="Number of values: usually the latent batch size."),
                io.Float.Input("start", default=1.0, min=-1.0, max=5.0, step=0.01, tooltip="Factor for the first latent."),
                io.Float.Input("end", default=0.0, min=-1.0, max=5.0, step=0.01, tooltip="Factor for the last latent."),
                io.Combo.Input(
                    "method", options=list(SCHEDULE_METHODS), default="linear",
                    tooltip="Curve from start to end. ease in: slow at first; ease out: slow at the end; ease in-out: slow at both.",
                ),
                io.String.Input(
                    "custom", default="", optional=True,
                    tooltip="Values separated by commas, e.g. '1, 0.8, 0.5'. When set, frames, start, end and method are ignored.",
                ),
            ],
            outputs=[
                WeightScheduleSocket.Output(display_name="weight_schedule", tooltip="Connect to Apply IP-Adapter's weight_schedule."),
                io.String.Output(display_name="values", tooltip="The values as text, to display or to paste into custom and edit."),
            ],
        )

    @classmethod
    def execute(cls, frames, start, end, method, custom="") -> io.NodeOutput:
        values = parse_schedule(custom) if custom.strip() else weight_schedule(frames, start, end, method)
        return io.NodeOutput(values, format_schedule(values))
