"""Combine CLIP Embeds: several embeds -> one, before the adapter's projection."""

from __future__ import annotations

from ..ipadapter_core.clip_embeds import EMBEDS_COMBINE_METHODS, combine_clip_embeds
from .api import CATEGORY, io
from .socket_types import ClipEmbedsSocket

EMBEDS_TOOLTIP = "From Encode CLIP Embeds or Load CLIP Embeds (all of one encoder output)."


class CombineClipEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactCombineClipEmbeds",
            display_name="Combine CLIP Embeds (IP-Adapter)",
            category=CATEGORY,
            description="Merges CLIP embeds before projection: concat keeps every reference; the other methods merge them into one.",
            inputs=[
                ClipEmbedsSocket.Input("embeds_1", tooltip=EMBEDS_TOOLTIP),
                io.Combo.Input("method", options=list(EMBEDS_COMBINE_METHODS), default="concat", tooltip=(
                    "concat: all rows; add / average; subtract: the first minus the mean of the others; "
                    "norm average: each scaled to unit length, then averaged; max / min: element-wise.")),
                *(ClipEmbedsSocket.Input(f"embeds_{i}", optional=True, tooltip=EMBEDS_TOOLTIP) for i in range(2, 6)),
            ],
            outputs=[ClipEmbedsSocket.Output(display_name="embeds", tooltip="The combined embeds, for Project CLIP Embeds or Save CLIP Embeds.")],
        )

    @classmethod
    def execute(cls, embeds_1, method, embeds_2=None, embeds_3=None, embeds_4=None, embeds_5=None) -> io.NodeOutput:
        given = [e for e in (embeds_1, embeds_2, embeds_3, embeds_4, embeds_5) if e is not None]
        return io.NodeOutput(combine_clip_embeds(given, method))
