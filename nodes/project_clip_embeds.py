"""Project CLIP Embeds: CLIP features -> an image prompt, with the adapter's projection."""

from __future__ import annotations

from dataclasses import replace

import comfy.model_management
import torch

from ..ipadapter_core.clip_embeds import project_clip_embeds
from .api import CATEGORY, io
from .clip_vision import comfy_encoder
from .socket_types import ClipEmbedsSocket, ImagePromptSocket, IPAdapterSocket


class ProjectClipEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactProjectClipEmbeds",
            display_name="Project CLIP Embeds (IP-Adapter)",
            category=CATEGORY,
            description=(
                "Turns CLIP embeds (encoded, combined or loaded from a .ipadpt file) into an image prompt for Apply IP-Adapter, "
                "with the adapter's projection. Every row is one reference."
            ),
            inputs=[
                IPAdapterSocket.Input("ipadapter", tooltip="The adapter that applies the prompt; the same must go to Apply IP-Adapter."),
                ClipEmbedsSocket.Input("embeds", tooltip="The references' embeds, of the encoder output this adapter reads."),
                ClipEmbedsSocket.Input("negative_embeds", optional=True, tooltip=(
                    "Unconditional embeds (default: zeros, or for plus and full-face the encoder's answer to zero pixels).")),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="Only for plus and full-face adapters without negative_embeds: computes their default."),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt", tooltip="Conditional and unconditional image tokens, tied to this adapter.")],
        )

    @classmethod
    def execute(cls, ipadapter, embeds, negative_embeds=None, clip_vision=None) -> io.NodeOutput:
        encode_zeros = None
        if clip_vision is not None:
            encoder = comfy_encoder(clip_vision, ipadapter.model.spec)
            size = clip_vision.image_size
            encode_zeros = lambda: encoder(torch.zeros(1, 3, size, size))  # noqa: E731
        comfy.model_management.load_model_gpu(ipadapter.patcher)
        prompt = project_clip_embeds(ipadapter.model, embeds, negative_embeds, encode_zeros)
        # Name the file in the prompt, as Encode Image Prompt does.
        return io.NodeOutput(replace(prompt, adapter_description=f"{ipadapter.name}, {prompt.adapter_description}"))
