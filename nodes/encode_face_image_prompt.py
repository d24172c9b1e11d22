"""Encode Face Image Prompt: reference photo(s) + InsightFace (+ CLIP vision for plus) -> IMAGE_PROMPT for a FaceID adapter."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..ipadapter_core.encoding import COMBINE_METHODS, parse_weights
from ..ipadapter_core.face_analysis import FACE_SELECTIONS, FaceAnalyzer
from ..ipadapter_core.face_encoding import check_face_encoder, encode_face_image_prompt
from ..ipadapter_core.image_prompt import ImagePrompt
from .api import CATEGORY, io
from .clip_vision import comfy_encoder, load_models, preprocessing
from .load_ipadapter import LoadedIPAdapter
from .socket_types import ImagePromptSocket, InsightFaceSocket, IPAdapterSocket


def encode_faces(
    ipadapter: LoadedIPAdapter,
    insightface: FaceAnalyzer,
    image: torch.Tensor,
    clip_vision=None,
    faceid_v2: bool = True,
    v2_scale: float = 1.0,
    faces: str = "largest",
    combine: str = "concat",
    image_weights: str = "",
) -> tuple[ImagePrompt, torch.Tensor]:
    """The prompt and the aligned face crops; the adapter and clip_vision are checked before any face is analysed."""
    spec = ipadapter.model.spec
    check_face_encoder(ipadapter.model, clip_vision is not None)
    encoder, clip_options, clip_patcher = None, {}, None
    if spec.needs_clip:
        encoder = comfy_encoder(clip_vision, spec)
        clip_options, clip_patcher = preprocessing(clip_vision), clip_vision.patcher
    weights = parse_weights(image_weights, image.shape[0] if image.ndim == 4 else 1)
    found = insightface.reference_faces(image, faces)
    load_models(ipadapter.patcher, clip_patcher)
    prompt = encode_face_image_prompt(
        ipadapter.model,
        found,
        encoder,
        combine=combine,
        weights=None if weights is None else [weights[face.image_index] for face in found],
        shortcut_scale=float(v2_scale) if faceid_v2 else None,
        **clip_options,
    )
    # Name the file in the prompt: adapters of one variant share a description.
    prompt = replace(prompt, adapter_description=f"{ipadapter.name}, {prompt.adapter_description}")
    return prompt, torch.stack([face.crop for face in found])


class EncodeFaceImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactEncodeFaceImagePrompt",
            display_name="Encode Face Image Prompt (IP-Adapter FaceID)",
            category=CATEGORY,
            description=(
                "Turns the face in each reference photo into image-prompt tokens for a FaceID adapter: InsightFace finds "
                "and embeds the face; plus adapters also show CLIP the aligned face crop. Apply the result with Apply "
                "IP-Adapter, like any image prompt (masks, weights, start/end, schedules all work)."
            ),
            inputs=[
                IPAdapterSocket.Input("ipadapter", tooltip="A FaceID adapter from Load IP-Adapter; the same one must go to Apply IP-Adapter."),
                InsightFaceSocket.Input("insightface", tooltip="From Load InsightFace."),
                io.Image.Input("image", tooltip="Photo(s) of the person; each must show a face. Portrait adapters work best with several."),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="FaceID plus / plusv2 only: ViT-H/14, which also sees the aligned face crop."),
                io.Boolean.Input(
                    "faceid_v2", default=True, optional=True,
                    tooltip="FaceID plus only: on for ip-adapter-faceid-plusv2 files (face tokens + v2_scale x refined tokens), off for the v1 plus file. Both files have identical weights, so this cannot be read from them.",
                ),
                io.Float.Input("v2_scale", default=1.0, min=0.0, max=5.0, step=0.05, optional=True, tooltip="FaceID plusv2: weight of the CLIP-refined tokens added to the face tokens (the reference's s_scale)."),
                io.Combo.Input("faces", options=list(FACE_SELECTIONS), default="largest", optional=True, tooltip="When a photo shows several faces: use the largest, or all of them (each becomes a reference)."),
                io.Combo.Input(
                    "combine", options=list(COMBINE_METHODS), default="concat", optional=True,
                    tooltip="How several faces become one prompt: concat keeps all their tokens (as portrait adapters expect); the others merge the face embeddings first.",
                ),
                io.String.Input("image_weights", default="", optional=True, tooltip="One weight per reference image, e.g. '1, 0.5' (empty: all 1); all faces of an image share its weight."),
            ],
            outputs=[
                ImagePromptSocket.Output(display_name="image_prompt", tooltip="Conditional and unconditional tokens, tied to the FaceID adapter that made them."),
                io.Image.Output(display_name="face_crops", tooltip="The aligned face crops (224x224) that were used, one per face, to check what was found."),
            ],
        )

    @classmethod
    def execute(cls, ipadapter, insightface, image, clip_vision=None, faceid_v2=True, v2_scale=1.0, faces="largest", combine="concat", image_weights="") -> io.NodeOutput:
        return io.NodeOutput(*encode_faces(ipadapter, insightface, image, clip_vision, faceid_v2, v2_scale, faces, combine, image_weights))
