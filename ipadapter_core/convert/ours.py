"""This pack's nodes that conversions produce, as saved workflows see them (a frozen public API).

The node classes live in nodes/, which needs ComfyUI; the converter runs without it, so the
interface is described here. tests/test_convert.py checks every entry against the live node
definitions (widget order, defaults, link inputs, outputs and their socket types).
"""

from __future__ import annotations

from ..clip_embeds import EMBEDS_COMBINE_METHODS
from ..encoding import COMBINE_METHODS, CROP_MODES
from ..face_analysis import FACE_SELECTIONS, MODEL_PACKS, PROVIDERS
from ..image_branch import SCALING_MODES
from ..layer_weights import WEIGHT_TYPES
from ..negatives import NEGATIVE_KINDS
from ..presets import AUTO, PRESETS
from ..reference_prep import CROP_POSITIONS, INTERPOLATIONS
from ..schedules import SCHEDULE_METHODS
from .specs import NodeSpec, boolean, combo, link, number, text

IPADAPTER, IMAGE_PROMPT, WEIGHT_SCHEDULE, CLIP_EMBEDS = "EXACT_IPADAPTER", "EXACT_IMAGE_PROMPT", "EXACT_IPADAPTER_WEIGHTS", "EXACT_CLIP_EMBEDS"
INSIGHTFACE = "EXACT_INSIGHTFACE"

OUR_NODES: dict[str, NodeSpec] = {
    "ExactLoadIPAdapter": NodeSpec((combo("ipadapter_file"),), (("ipadapter", IPADAPTER),)),
    "ExactLoadIPAdapterPreset": NodeSpec(
        (link("model", "MODEL"), combo("preset", tuple(PRESETS), default="standard"), combo("ipadapter_file", (AUTO,), default=AUTO, optional=True)),
        (("model", "MODEL"), ("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION")),
    ),
    "ExactEncodeImagePrompt": NodeSpec(
        (link("ipadapter", IPADAPTER), link("clip_vision", "CLIP_VISION"), link("image", "IMAGE"), link("negative_image", "IMAGE", optional=True),
         combo("combine", COMBINE_METHODS, default="concat", optional=True), text("image_weights", "", optional=True),
         combo("crop", CROP_MODES, default="center", optional=True), number("encode_batch_size", "INT", 0, optional=True)),
        (("image_prompt", IMAGE_PROMPT),),
    ),
    "ExactLoadInsightFace": NodeSpec(
        (combo("model_name", tuple(MODEL_PACKS), default="buffalo_l"), combo("provider", tuple(PROVIDERS), default="CPU")),
        (("insightface", INSIGHTFACE),),
    ),
    "ExactEncodeFaceImagePrompt": NodeSpec(
        (link("ipadapter", IPADAPTER), link("insightface", INSIGHTFACE), link("image", "IMAGE"), link("clip_vision", "CLIP_VISION", optional=True),
         boolean("faceid_v2", True, optional=True), number("v2_scale", "FLOAT", 1.0, optional=True),
         combo("faces", FACE_SELECTIONS, default="largest", optional=True), combo("combine", COMBINE_METHODS, default="concat", optional=True),
         text("image_weights", "", optional=True)),
        (("image_prompt", IMAGE_PROMPT), ("face_crops", "IMAGE")),
    ),
    "ExactApplyIPAdapter": NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("image_prompt", IMAGE_PROMPT), number("weight", "FLOAT", 1.0),
         number("start_at", "FLOAT", 0.0), number("end_at", "FLOAT", 1.0),
         combo("weight_type", WEIGHT_TYPES, default="linear", optional=True), combo("embeds_scaling", SCALING_MODES, default="V only", optional=True),
         link("attn_mask", "MASK", optional=True), boolean("unfold_batch", False, optional=True), link("weight_schedule", WEIGHT_SCHEDULE, optional=True),
         link("composition_image_prompt", IMAGE_PROMPT, optional=True), number("composition_weight", "FLOAT", 1.0, optional=True),
         text("layer_weights", "", optional=True), number("lora_strength", "FLOAT", 1.0, optional=True)),
        (("model", "MODEL"),),
    ),
    "ExactPrepareImageForClip": NodeSpec(
        (link("image", "IMAGE"), combo("interpolation", INTERPOLATIONS, default="bicubic"), combo("crop_position", CROP_POSITIONS, default="center"),
         number("sharpening", "FLOAT", 0.0), number("size", "INT", 224)),
        (("image", "IMAGE"),),
    ),
    "ExactMakeNegativeImage": NodeSpec(
        (link("image", "IMAGE"), combo("kind", NEGATIVE_KINDS, default="noise"), number("strength", "FLOAT", 1.0), number("seed", "INT", 0, control=True)),
        (("image", "IMAGE"),),
    ),
    "ExactIPAdapterWeightSchedule": NodeSpec(
        (number("frames", "INT", 16), number("start", "FLOAT", 1.0), number("end", "FLOAT", 0.0), combo("method", SCHEDULE_METHODS, default="linear"),
         text("custom", "", optional=True)),
        (("weight_schedule", WEIGHT_SCHEDULE), ("values", "STRING")),
    ),
    "ExactEncodeClipEmbeds": NodeSpec(
        (link("ipadapter", IPADAPTER), link("clip_vision", "CLIP_VISION"), link("image", "IMAGE"), number("weight", "FLOAT", 1.0),
         link("mask", "MASK", optional=True)),
        (("embeds", CLIP_EMBEDS), ("negative_embeds", CLIP_EMBEDS)),
    ),
    "ExactCombineClipEmbeds": NodeSpec(
        (link("embeds_1", CLIP_EMBEDS), combo("method", EMBEDS_COMBINE_METHODS, default="concat"),
         *(link(f"embeds_{i}", CLIP_EMBEDS, optional=True) for i in range(2, 6))),
        (("embeds", CLIP_EMBEDS),),
    ),
    "ExactProjectClipEmbeds": NodeSpec(
        (link("ipadapter", IPADAPTER), link("embeds", CLIP_EMBEDS), link("negative_embeds", CLIP_EMBEDS, optional=True),
         link("clip_vision", "CLIP_VISION", optional=True)),
        (("image_prompt", IMAGE_PROMPT),),
    ),
    "ExactSaveClipEmbeds": NodeSpec((link("embeds", CLIP_EMBEDS), text("filename_prefix", "ipadapter_embeds/embeds")), (), output_node=True),
    "ExactLoadClipEmbeds": NodeSpec((combo("embeds_file"),), (("embeds", CLIP_EMBEDS),)),
    "ExactIPAdapterTiled": NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("clip_vision", "CLIP_VISION"), link("image", "IMAGE"),
         number("weight", "FLOAT", 1.0), combo("weight_type", WEIGHT_TYPES, default="linear"), combo("combine", COMBINE_METHODS, default="concat"),
         number("start_at", "FLOAT", 0.0), number("end_at", "FLOAT", 1.0), number("sharpening", "FLOAT", 0.0),
         combo("embeds_scaling", SCALING_MODES, default="V only"), link("negative_image", "IMAGE", optional=True),
         link("attn_mask", "MASK", optional=True), boolean("unfold_batch", False, optional=True)),
        (("model", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK")),
    ),
}

# The titles the frontend shows (and puts in a queued prompt's _meta) for nodes without a custom title.
DISPLAY_NAMES = {
    "ExactLoadIPAdapter": "Load IP-Adapter",
    "ExactLoadIPAdapterPreset": "Load IP-Adapter Preset",
    "ExactEncodeImagePrompt": "Encode Image Prompt (IP-Adapter)",
    "ExactApplyIPAdapter": "Apply IP-Adapter",
    "ExactLoadInsightFace": "Load InsightFace (IP-Adapter FaceID)",
    "ExactEncodeFaceImagePrompt": "Encode Face Image Prompt (IP-Adapter FaceID)",
    "ExactPrepareImageForClip": "Prepare Image For CLIP (IP-Adapter)",
    "ExactMakeNegativeImage": "Make Negative Image (IP-Adapter)",
    "ExactIPAdapterWeightSchedule": "IP-Adapter Weight Schedule",
    "ExactEncodeClipEmbeds": "Encode CLIP Embeds (IP-Adapter)",
    "ExactCombineClipEmbeds": "Combine CLIP Embeds (IP-Adapter)",
    "ExactProjectClipEmbeds": "Project CLIP Embeds (IP-Adapter)",
    "ExactSaveClipEmbeds": "Save CLIP Embeds (IP-Adapter)",
    "ExactLoadClipEmbeds": "Load CLIP Embeds (IP-Adapter)",
    "ExactIPAdapterTiled": "IP-Adapter Tiled",
}
