"""The leading pack's node interface: cubiq/ComfyUI_IPAdapter_plus, as its last release registers it.

Node ids, input names and order, widget defaults and choices, outputs and socket types, read from
its IPAdapterPlus.py (NODE_CLASS_MAPPINGS and each class's INPUT_TYPES / RETURN_TYPES). Saved
workflows refer to these, so the converter reads widget values by this order; workflows saved
before a widget existed lack its value and get the default here, as that pack's frontend gives them.
"""

from __future__ import annotations

from .specs import NodeSpec, boolean, combo, link, number, text

# Socket types the leading pack registers (besides ComfyUI's own).
IPADAPTER, EMBEDS, INSIGHTFACE = "IPADAPTER", "EMBEDS", "INSIGHTFACE"
IPADAPTER_PARAMS, WEIGHTS_STRATEGY = "IPADAPTER_PARAMS", "WEIGHTS_STRATEGY"
SOCKET_TYPES = (IPADAPTER, EMBEDS, INSIGHTFACE, IPADAPTER_PARAMS, WEIGHTS_STRATEGY)

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
)
COMBINE = ("concat", "add", "subtract", "average", "norm average")
SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
PRESETS = (
    "LIGHT - SD1.5 only (low strength)", "STANDARD (medium strength)", "VIT-G (medium strength)", "PLUS (high strength)",
    "PLUS FACE (portraits)", "FULL FACE - SD1.5 only (portraits stronger)",
)
FACEID_PRESETS = ("FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2", "FACEID PORTRAIT (style transfer)", "FACEID PORTRAIT UNNORM - SDXL only (strong)")

MODEL_OUT = (("MODEL", "MODEL"),)


def weight():
    """The weight widget; nodes differ only in its range, which saved workflows do not store."""
    return number("weight", "FLOAT", 1.0)


def start_end():
    return (number("start_at", "FLOAT", 0.0), number("end_at", "FLOAT", 1.0))


def optional_images(insightface: bool = False, attn_mask: bool = True):
    inputs = [link("image_negative", "IMAGE", optional=True)]
    if attn_mask:
        inputs.append(link("attn_mask", "MASK", optional=True))
    inputs.append(link("clip_vision", "CLIP_VISION", optional=True))
    if insightface:
        inputs.append(link("insightface", INSIGHTFACE, optional=True))
    return tuple(inputs)


def apply_node(*middle, insightface=False, outputs=MODEL_OUT, category="ipadapter", display_name=""):
    """model, ipadapter, image, the node's widgets, then the optional image inputs every apply node has."""
    return NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("image", "IMAGE"), *middle, *optional_images(insightface)),
        outputs, category=category, display_name=display_name,
    )


WEIGHT_TYPE = combo("weight_type", WEIGHT_TYPES)
COMBINE_EMBEDS = combo("combine_embeds", COMBINE)
EMBEDS_SCALING = combo("embeds_scaling", SCALING)
ENCODE_BATCH = number("encode_batch_size", "INT", 0)
FACE_OUT = (("MODEL", "MODEL"), ("face_image", "IMAGE"))
TILED_OUT = (("MODEL", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK"))
WEIGHTS_OUT = (("weights", "FLOAT"), ("weights_invert", "FLOAT"), ("total_frames", "INT"), ("image_1", "IMAGE"), ("image_2", "IMAGE"),
               ("weights_strategy", WEIGHTS_STRATEGY))


def style_composition(combine: bool, display_name: str) -> NodeSpec:
    widgets = [number("weight_style", "FLOAT", 1.0), number("weight_composition", "FLOAT", 1.0), boolean("expand_style", False)]
    if combine:
        widgets.append(combo("combine_embeds", COMBINE, default="average"))
    return NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("image_style", "IMAGE"), link("image_composition", "IMAGE"),
         *widgets, *start_end(), EMBEDS_SCALING, *optional_images()),
        MODEL_OUT, category="ipadapter/style_composition", display_name=display_name,
    )


def embeds_node(display_name: str) -> NodeSpec:
    return NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("pos_embed", EMBEDS), weight(), WEIGHT_TYPE, *start_end(), EMBEDS_SCALING,
         link("neg_embed", EMBEDS, optional=True), link("attn_mask", "MASK", optional=True), link("clip_vision", "CLIP_VISION", optional=True)),
        MODEL_OUT, category="ipadapter/embeds", display_name=display_name,
    )


def unified_loader(presets, *extra, outputs=(("model", "MODEL"), ("ipadapter", IPADAPTER)), display_name=""):
    return NodeSpec((link("model", "MODEL"), combo("preset", presets), *extra, link("ipadapter", IPADAPTER, optional=True)), outputs,
                    category="ipadapter", display_name=display_name)


LEADING_NODES: dict[str, NodeSpec] = {
    # apply nodes
    "IPAdapter": NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("image", "IMAGE"), weight(), *start_end(),
         combo("weight_type", ("standard", "prompt is more important", "style transfer")), link("attn_mask", "MASK", optional=True)),
        MODEL_OUT, category="ipadapter", display_name="IPAdapter"),
    "IPAdapterAdvanced": apply_node(weight(), WEIGHT_TYPE, COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING, display_name="IPAdapter Advanced"),
    "IPAdapterBatch": apply_node(weight(), WEIGHT_TYPE, *start_end(), EMBEDS_SCALING, ENCODE_BATCH, display_name="IPAdapter Batch (Adv.)"),
    "IPAdapterFaceID": apply_node(weight(), number("weight_faceidv2", "FLOAT", 1.0), WEIGHT_TYPE, COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING,
                                  insightface=True, outputs=FACE_OUT, category="ipadapter/faceid", display_name="IPAdapter FaceID"),
    "IPAdapterFaceIDKolors": apply_node(weight(), number("weight_faceidv2", "FLOAT", 1.0), number("weight_kolors", "FLOAT", 1.0), WEIGHT_TYPE,
                                        COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING, insightface=True, outputs=FACE_OUT,
                                        category="ipadapter/faceid", display_name="IPAdapter FaceID Kolors"),
    "IPAAdapterFaceIDBatch": apply_node(weight(), number("weight_faceidv2", "FLOAT", 1.0), WEIGHT_TYPE, COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING,
                                        insightface=True, outputs=FACE_OUT, category="ipadapter/faceid", display_name="IPAdapter FaceID Batch"),
    "IPAdapterTiled": apply_node(weight(), WEIGHT_TYPE, COMBINE_EMBEDS, *start_end(), number("sharpening", "FLOAT", 0.0), EMBEDS_SCALING,
                                 outputs=TILED_OUT, category="ipadapter/tiled", display_name="IPAdapter Tiled"),
    "IPAdapterTiledBatch": apply_node(weight(), WEIGHT_TYPE, *start_end(), number("sharpening", "FLOAT", 0.0), EMBEDS_SCALING, ENCODE_BATCH,
                                      outputs=TILED_OUT, category="ipadapter/tiled", display_name="IPAdapter Tiled Batch"),
    "IPAdapterEmbeds": embeds_node("IPAdapter Embeds"),
    "IPAdapterEmbedsBatch": embeds_node("IPAdapter Embeds Batch"),
    "IPAdapterStyleComposition": style_composition(True, "IPAdapter Style & Composition SDXL"),
    "IPAdapterStyleCompositionBatch": style_composition(False, "IPAdapter Style & Composition Batch SDXL"),
    "IPAdapterMS": apply_node(weight(), number("weight_faceidv2", "FLOAT", 1.0), WEIGHT_TYPE, COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING,
                              text("layer_weights", ""), insightface=True, category="ipadapter/dev", display_name="IPAdapter Mad Scientist"),
    "IPAdapterClipVisionEnhancer": apply_node(weight(), WEIGHT_TYPE, COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING, number("enhance_tiles", "INT", 2),
                                              number("enhance_ratio", "FLOAT", 1.0), category="ipadapter/dev",
                                              display_name="IPAdapter ClipVision Enhancer"),
    "IPAdapterClipVisionEnhancerBatch": apply_node(weight(), WEIGHT_TYPE, *start_end(), EMBEDS_SCALING, number("enhance_tiles", "INT", 2),
                                                   number("enhance_ratio", "FLOAT", 0.5), ENCODE_BATCH, category="ipadapter/dev",
                                                   display_name="IPAdapter ClipVision Enhancer Batch"),
    "IPAdapterFromParams": NodeSpec(
        (link("model", "MODEL"), link("ipadapter", IPADAPTER), link("ipadapter_params", IPADAPTER_PARAMS), COMBINE_EMBEDS, EMBEDS_SCALING,
         link("image_negative", "IMAGE", optional=True), link("clip_vision", "CLIP_VISION", optional=True)),
        MODEL_OUT, category="ipadapter/params", display_name="IPAdapter from Params"),
    "IPAdapterPreciseStyleTransfer": apply_node(weight(), number("style_boost", "FLOAT", 1.0), COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING,
                                                display_name="IPAdapter Precise Style Transfer"),
    "IPAdapterPreciseStyleTransferBatch": apply_node(weight(), number("style_boost", "FLOAT", 1.0), COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING,
                                                     display_name="IPAdapter Precise Style Transfer Batch"),
    "IPAdapterPreciseComposition": apply_node(weight(), number("composition_boost", "FLOAT", 0.0), COMBINE_EMBEDS, *start_end(), EMBEDS_SCALING,
                                              display_name="IPAdapter Precise Composition"),
    "IPAdapterPreciseCompositionBatch": apply_node(weight(), number("composition_boost", "FLOAT", 0.0), COMBINE_EMBEDS, *start_end(),
                                                   EMBEDS_SCALING, display_name="IPAdapter Precise Composition Batch"),
    # loaders
    "IPAdapterUnifiedLoader": unified_loader(PRESETS, display_name="IPAdapter Unified Loader"),
    "IPAdapterUnifiedLoaderFaceID": unified_loader(
        FACEID_PRESETS, number("lora_strength", "FLOAT", 0.6), combo("provider", ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML")),
        outputs=(("MODEL", "MODEL"), ("ipadapter", IPADAPTER)), display_name="IPAdapter Unified Loader FaceID"),
    "IPAdapterModelLoader": NodeSpec((combo("ipadapter_file"),), (("IPADAPTER", IPADAPTER),), category="ipadapter/loaders",
                                     display_name="IPAdapter Model Loader"),
    "IPAdapterInsightFaceLoader": NodeSpec((combo("provider", ("CPU", "CUDA", "ROCM")), combo("model_name", ("buffalo_l", "antelopev2"))),
                                           (("INSIGHTFACE", INSIGHTFACE),), category="ipadapter/loaders",
                                           display_name="IPAdapter InsightFace Loader"),
    "IPAdapterUnifiedLoaderCommunity": unified_loader(("Composition", "Kolors"), display_name="IPAdapter Unified Loader Community"),
    # helpers
    "IPAdapterEncoder": NodeSpec(
        (link("ipadapter", IPADAPTER), link("image", "IMAGE"), number("weight", "FLOAT", 1.0), link("mask", "MASK", optional=True),
         link("clip_vision", "CLIP_VISION", optional=True)),
        (("pos_embed", EMBEDS), ("neg_embed", EMBEDS)), category="ipadapter/embeds", display_name="IPAdapter Encoder"),
    "IPAdapterCombineEmbeds": NodeSpec(
        (link("embed1", EMBEDS), combo("method", (*COMBINE, "max", "min")), *(link(f"embed{i}", EMBEDS, optional=True) for i in range(2, 6))),
        (("EMBEDS", EMBEDS),), category="ipadapter/embeds", display_name="IPAdapter Combine Embeds"),
    "IPAdapterNoise": NodeSpec(
        (combo("type", ("fade", "dissolve", "gaussian", "shuffle")), number("strength", "FLOAT", 1.0), number("blur", "INT", 0),
         link("image_optional", "IMAGE", optional=True)),
        (("IMAGE", "IMAGE"),), category="ipadapter/utils", display_name="IPAdapter Noise"),
    "PrepImageForClipVision": NodeSpec(
        (link("image", "IMAGE"), combo("interpolation", ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")),
         combo("crop_position", ("top", "bottom", "left", "right", "center", "pad")), number("sharpening", "FLOAT", 0.0)),
        (("IMAGE", "IMAGE"),), category="ipadapter/utils", display_name="Prep Image For ClipVision"),
    "IPAdapterSaveEmbeds": NodeSpec((link("embeds", EMBEDS), text("filename_prefix", "IP_embeds")), (), output_node=True,
                                    category="ipadapter/embeds", display_name="IPAdapter Save Embeds"),
    "IPAdapterLoadEmbeds": NodeSpec((combo("embeds"),), (("EMBEDS", EMBEDS),), category="ipadapter/embeds", display_name="IPAdapter Load Embeds"),
    "IPAdapterWeights": NodeSpec(
        (text("weights", "1.0, 0.0"), combo("timing", ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random"), default="linear"),
         number("frames", "INT", 0), number("start_frame", "INT", 0), number("end_frame", "INT", 9999), number("add_starting_frames", "INT", 0),
         number("add_ending_frames", "INT", 0), combo("method", ("full batch", "shift batches", "alternate batches"), default="full batch"),
         link("image", "IMAGE", optional=True)),
        WEIGHTS_OUT, category="ipadapter/weights", display_name="IPAdapter Weights"),
    "IPAdapterWeightsFromStrategy": NodeSpec((link("weights_strategy", WEIGHTS_STRATEGY), link("image", "IMAGE", optional=True)), WEIGHTS_OUT,
                                             category="ipadapter/weights", display_name="IPAdapter Weights From Strategy"),
    "IPAdapterPromptScheduleFromWeightsStrategy": NodeSpec(
        (link("weights_strategy", WEIGHTS_STRATEGY), text("prompt", "")), (("prompt_schedule", "STRING"),),
        category="ipadapter/weights", display_name="Prompt Schedule From Weights Strategy"),
    "IPAdapterCombineWeights": NodeSpec((number("weights_1", "FLOAT", 0.0), number("weights_2", "FLOAT", 0.0)),
                                        (("weights", "FLOAT"), ("count", "INT")), category="ipadapter/utils",
                                        display_name="IPAdapter Combine Weights"),
    "IPAdapterRegionalConditioning": NodeSpec(
        (link("image", "IMAGE"), number("image_weight", "FLOAT", 1.0), number("prompt_weight", "FLOAT", 1.0), WEIGHT_TYPE, *start_end(),
         link("mask", "MASK", optional=True), link("positive", "CONDITIONING", optional=True), link("negative", "CONDITIONING", optional=True)),
        (("IPADAPTER_PARAMS", IPADAPTER_PARAMS), ("POSITIVE", "CONDITIONING"), ("NEGATIVE", "CONDITIONING")),
        category="ipadapter/params", display_name="IPAdapter Regional Conditioning"),
    "IPAdapterCombineParams": NodeSpec(
        (link("params_1", IPADAPTER_PARAMS), link("params_2", IPADAPTER_PARAMS), *(link(f"params_{i}", IPADAPTER_PARAMS, optional=True) for i in (3, 4, 5))),
        (("IPADAPTER_PARAMS", IPADAPTER_PARAMS),), category="ipadapter/params", display_name="IPAdapter Combine Params"),
}
