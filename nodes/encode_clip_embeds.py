"""Encode CLIP Embeds: reference images -> the CLIP features an adapter reads, before its projection."""

from __future__ import annotations

from ..ipadapter_core.clip_embeds import encode_clip_embeds
from .api import CATEGORY, io
from .clip_vision import comfy_encoder
from .encode_image_prompt import clip_vision_input
from .socket_types import ClipEmbedsSocket, IPAdapterSocket


class EncodeClipEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactEncodeClipEmbeds",
            display_name="Encode CLIP Embeds (IP-Adapter)",
            category=CATEGORY,
            description=(
                "Encodes reference images to the CLIP features the adapter reads (before its projection), to combine, save or "
                "project later; the form ComfyUI_IPAdapter_plus's EMBEDS have. For plain use, Encode Image Prompt is simpler."
            ),
            inputs=[
                IPAdapterSocket.Input("ipadapter", tooltip="The adapter that will apply the embeds: it decides which encoder output is kept."),
                clip_vision_input(),
                io.Image.Input("image", tooltip="Reference image(s), centre-cropped to a square."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.01, tooltip="Multiplies the embeds (matters when they are combined)."),
                io.Mask.Input("mask", optional=True, tooltip="Multiplies the encoder's input pixels: only the masked part of the reference is seen."),
            ],
            outputs=[
                ClipEmbedsSocket.Output(display_name="embeds", tooltip="One row per image, times weight."),
                ClipEmbedsSocket.Output(display_name="negative_embeds", tooltip=(
                    "What the adapter's unconditional pass uses: zeros for base adapters, the encoder's answer to zero pixels for plus and full-face.")),
            ],
        )

    @classmethod
    def execute(cls, ipadapter, clip_vision, image, weight=1.0, mask=None) -> io.NodeOutput:
        spec = ipadapter.model.spec
        return io.NodeOutput(*encode_clip_embeds(
            spec, image, comfy_encoder(clip_vision, spec), weight=weight, mask=mask, size=clip_vision.image_size,
            mean=tuple(clip_vision.image_mean), std=tuple(clip_vision.image_std),
        ))
