"""Encode Image Prompt: reference image(s) + CLIP vision -> IMAGE_PROMPT tokens for one adapter."""

from __future__ import annotations

from dataclasses import replace

import comfy.model_management
import comfy.utils
import torch

from ..ipadapter_core.encoding import COMBINE_METHODS, CROP_MODES, Progress, encode_image_prompt, parse_weights
from ..ipadapter_core.image_prompt import ImagePrompt
from .api import CATEGORY, io
from .clip_vision import comfy_encoder, load_models, preprocessing
from .load_ipadapter import LoadedIPAdapter
from .socket_types import ImagePromptSocket, IPAdapterSocket


def clip_vision_input() -> io.Input:
    return io.ClipVision.Input("clip_vision", tooltip="From Load CLIP Vision: the encoder the adapter was trained with (ViT-H/14 for most, ViT-L/14 for Flux, SigLIP so400m/14-384 for SD3.5).")


def image_input() -> io.Input:
    return io.Image.Input(
        "image", tooltip="Reference image(s). RGBA and grayscale are converted; non-square images are centre-cropped (see crop, or Prepare Image For CLIP)."
    )


def encode_prompt(
    ipadapter: LoadedIPAdapter,
    clip_vision,
    image: torch.Tensor,
    negative_image: torch.Tensor | None = None,
    combine: str = "concat",
    image_weights: str = "",
    crop: str = "center",
    encode_batch_size: int = 0,
) -> ImagePrompt:
    encoder = comfy_encoder(clip_vision, ipadapter.model.spec)
    weights = parse_weights(image_weights, image.shape[0] if image.ndim == 4 else 1)
    load_models(ipadapter.patcher, clip_vision.patcher)
    prompt = encode_image_prompt(
        ipadapter.model,
        image,
        encoder,
        negative_images=negative_image,
        **preprocessing(clip_vision),
        combine=combine,
        weights=weights,
        crop=crop,
        batch_size=encode_batch_size,
        on_progress=progress_and_stop(),
    )
    # Name the file in the prompt: adapters of one variant share a description.
    return replace(prompt, adapter_description=f"{ipadapter.name}, {prompt.adapter_description}")


def progress_and_stop() -> Progress:
    """After each batch of references: stop if the user pressed Stop (ComfyUI's interrupt), else
    move the node's progress bar."""
    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar = bar or comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return report


class EncodeImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactEncodeImagePrompt",
            display_name="Encode Image Prompt (IP-Adapter)",
            category=CATEGORY,
            description=(
                "Turns reference images into image-prompt tokens with the adapter's projection. Several images in "
                "one batch are combined by concatenating their tokens unless another combine method is chosen."
            ),
            inputs=[
                IPAdapterSocket.Input("ipadapter", tooltip="From Load IP-Adapter; the same one must go to Apply IP-Adapter."),
                clip_vision_input(),
                image_input(),
                io.Image.Input("negative_image", optional=True, tooltip="Replaces the neutral unconditional image tokens (one image, or one per reference). Flux only uses them with cfg > 1."),
                io.Combo.Input(
                    "combine", options=list(COMBINE_METHODS), default="concat", optional=True,
                    tooltip="How several references become one prompt: concat keeps all their tokens; the others merge the CLIP embeddings first.",
                ),
                io.String.Input("image_weights", default="", optional=True, tooltip="One weight per reference image, e.g. '1, 0.5' (empty: all 1)."),
                io.Combo.Input(
                    "crop", options=list(CROP_MODES), default="center", optional=True,
                    tooltip="center: square centre crop (the reference for CLIP encoders). squash: resize the whole image (SD3.5's SigLIP reference does this). tiles: square tiles covering wide or tall images.",
                ),
                io.Int.Input(
                    "encode_batch_size", default=0, min=0, max=4096, optional=True,
                    tooltip="References encoded at a time. 0: all at once. A small number bounds memory on long animations "
                    "and shows progress (and lets Stop act) between batches.",
                ),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt", tooltip="Conditional and unconditional image tokens, tied to the adapter that made them.")],
        )

    @classmethod
    def execute(cls, ipadapter, clip_vision, image, negative_image=None, combine="concat", image_weights="", crop="center", encode_batch_size=0) -> io.NodeOutput:
        return io.NodeOutput(encode_prompt(ipadapter, clip_vision, image, negative_image, combine, image_weights, crop, encode_batch_size))
