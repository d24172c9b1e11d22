"""One rule per leading-pack node: which of this pack's nodes replace it, with the same effect.

RULES maps a leading node id to a function of its NodeView returning a Plan; a node without a
rule, or whose rule raises Unconvertible, stays in place and is reported. Adding a node is one
entry in RULES plus, if needed, a rule built from the helpers below.

Values are mapped to the same behaviour, not just the same names: the leading pack's weight
types select the same layers here (ipadapter_core/layer_weights.py), its layer_weights numbers
are the same attention blocks, its presets become a preset resolved from the files' weights,
and its per-frame weight lists become a weight schedule with the values it would have computed.
Where this pack computes something slightly differently, the plan carries a note for the report.

FaceID: the leading pack decides at run time, from the adapter's weights, whether an apply node
does FaceID (its IPAdapter FaceID node with a CLIP adapter acts like IPAdapter Advanced, and its
other apply nodes do FaceID with an adapter from IPAdapter Unified Loader FaceID). The converter
cannot read weights, so it decides from where the adapter comes: that loader means FaceID, the
plain unified loader means CLIP, and a file loaded by name means FaceID where the node is given
InsightFace. FaceID becomes Encode Face Image Prompt + Apply IP-Adapter, whose lora_strength adds
the LoRA that loader added to the model (from the adapter file itself here).
"""

from __future__ import annotations

import math
import re

from ..face_analysis import PROVIDERS
from ..presets import AUTO
from .plan import (
    CLIP_VISION,
    INSIGHTFACE,
    Carried,
    Internal,
    NodeView,
    Plan,
    Ref,
    Target,
    Unconvertible,
    Upstream,
)

SAME_WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle", "strong middle",
    "style transfer", "composition", "strong style transfer", "style and composition",
)
PRESETS = (  # the leading preset's first words -> ours (that pack matches them the same way)
    ("light", "light"), ("standard", "standard"), ("vit-g", "vit-G"), ("plus face", "plus face"), ("plus", "plus"), ("full face", "full face"),
)
FACEID_PRESETS = (  # the same for IPAdapter Unified Loader FaceID's presets, longest prefix first
    ("faceid plus v2", "faceid plusv2"), ("faceid plus -", "faceid plus"), ("faceid portrait unnorm", "faceid portrait unnorm"),
    ("faceid portrait", "faceid portrait"), ("faceid", "faceid"),
)
LORA_PRESETS = ("faceid", "faceid plus", "faceid plusv2")  # the presets for which that loader adds a LoRA to the model
SAME_LAYOUT = {"light": "standard", "standard": "light", "plus": "plus face", "plus face": "plus", "faceid plus": "faceid plusv2",
               "faceid plusv2": "faceid plus"}
FACEID_LOADER, CLIP_LOADERS = "IPAdapterUnifiedLoaderFaceID", ("IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderCommunity")
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
NOISE_KINDS = {"fade": "noise", "dissolve": "dissolve", "gaussian": "gaussian", "shuffle": "shuffle"}
INTERPOLATIONS = {"LANCZOS": "bicubic", "BICUBIC": "bicubic", "HAMMING": "bilinear", "BILINEAR": "bilinear", "BOX": "area", "NEAREST": "nearest"}
# Nodes whose `weight` input takes the per-frame list of IPAdapter Weights (the others use its first value only).
FRAME_WEIGHT_CONSUMERS = {("IPAdapterBatch", "weight"), ("IPAdapterEmbedsBatch", "weight")}

REASONS = {
    "IPAdapterFaceIDKolors": "Kolors has no equivalent here: this pack patches SD1.5, SDXL, Flux.1 and SD3.5 models, not Kolors' UNet",
    "IPAdapterUnifiedLoaderCommunity": "the community presets (Composition, Kolors) have no equivalent here",
    "IPAdapterClipVisionEnhancer": "the ClipVision enhancer has no equivalent here", "IPAdapterClipVisionEnhancerBatch": "the ClipVision enhancer has no equivalent here",
    "IPAdapterPreciseStyleTransfer": "the 'precise' weight types have no equivalent here",
    "IPAdapterPreciseStyleTransferBatch": "the 'precise' weight types have no equivalent here",
    "IPAdapterPreciseComposition": "the 'precise' weight types have no equivalent here",
    "IPAdapterPreciseCompositionBatch": "the 'precise' weight types have no equivalent here",
    "IPAdapterFromParams": "IPADAPTER_PARAMS have no equivalent; use attn_mask on Apply IP-Adapter for regions",
    "IPAdapterRegionalConditioning": "IPADAPTER_PARAMS have no equivalent; use attn_mask on Apply IP-Adapter for regions",
    "IPAdapterCombineParams": "IPADAPTER_PARAMS have no equivalent; use attn_mask on Apply IP-Adapter for regions",
    "IPAdapterWeightsFromStrategy": "weight strategies have no equivalent; use IP-Adapter Weight Schedule",
    "IPAdapterPromptScheduleFromWeightsStrategy": "weight strategies have no equivalent; use IP-Adapter Weight Schedule",
    "IPAdapterCombineWeights": "weight lists have no equivalent; use IP-Adapter Weight Schedule's custom values",
}


# --- helpers ---------------------------------------------------------------------------------------


def weight_type(view: NodeView, name: str = "weight_type") -> str:
    value = view.static(name)
    if value not in SAME_WEIGHT_TYPES:
        raise Unconvertible(f"weight_type {value!r} has no equivalent here")
    return value


def carried(view: NodeView, what: str, required: bool = True) -> Ref:
    """The node's own link of that name (clip_vision, insightface), else what the pipeline of its ipadapter carried."""
    if what in (i.name for i in view.spec.inputs) and view.linked(what):
        return Upstream(what)
    return Carried("ipadapter", what, required)


def clip_vision(view: NodeView, required: bool = True) -> Ref:
    return carried(view, CLIP_VISION, required)


def adapter_loader(view: NodeView) -> str | None:
    found = view.source("ipadapter")
    return found[1] if found is not None else None


def is_faceid(view: NodeView) -> bool:
    """Whether the leading pack would run this apply node as FaceID (see the module's docstring)."""
    loader = adapter_loader(view)
    if loader == FACEID_LOADER:
        return True
    if loader in CLIP_LOADERS:
        return False
    return "insightface" in (i.name for i in view.spec.inputs) and view.linked("insightface")


def not_faceid(view: NodeView, what: str) -> None:
    if adapter_loader(view) == FACEID_LOADER:
        raise Unconvertible(f"its adapter comes from IPAdapter Unified Loader FaceID; FaceID has no {what} here")


def linked_inputs(view: NodeView, names: dict[str, str]) -> dict[str, Ref]:
    """{ours: Upstream(theirs)} for the optional inputs that are connected."""
    return {ours: Upstream(theirs) for theirs, ours in names.items() if view.linked(theirs)}


def combine_method(view: NodeView, name: str, notes: list[str]) -> str:
    method = view.static(name)
    if method == "norm average":
        notes.append("norm average scales each reference's embedding to unit length; the leading pack normalised across references instead")
    return method


def encode(view: NodeView, image: str, combine: str) -> Target:
    inputs = {"ipadapter": Upstream("ipadapter"), "clip_vision": clip_vision(view), "image": Upstream(image)}
    inputs.update(linked_inputs(view, {"image_negative": "negative_image"}))
    batch = view.value("encode_batch_size") if "encode_batch_size" in (w.name for w in view.spec.widgets()) else 0
    return Target("ExactEncodeImagePrompt", {"combine": combine, "image_weights": "", "crop": "center", "encode_batch_size": batch}, inputs)


def weight_input(view: NodeView, name: str, unfold: bool, plan_needs: set) -> tuple[dict, dict]:
    """(widgets, inputs) for a weight: a number, a linked number, or the frame list of IPAdapter Weights."""
    source = view.source(name)
    if source is not None and source[1] == "IPAdapterWeights":
        if not unfold:
            raise Unconvertible(f"its {name} comes from IPAdapter Weights, of which this node uses only the first value")
        plan_needs.add(source[0])
        return {"weight": 1.0}, {"weight_schedule": Upstream(name)}
    return {"weight": view.value(name)}, {}


def apply(view: NodeView, prompt: Ref, weight_type_value: str, unfold: bool, needs: set, weight_name: str = "weight", **widgets) -> Target:
    weight_widgets, weight_links = weight_input(view, weight_name, unfold, needs)
    values = {
        **weight_widgets, "start_at": view.value("start_at"), "end_at": view.value("end_at"), "weight_type": weight_type_value,
        "embeds_scaling": view.value("embeds_scaling") if "embeds_scaling" in (w.name for w in view.spec.widgets()) else "V only",
        "unfold_batch": unfold, "composition_weight": 1.0, "layer_weights": "", "lora_strength": 1.0, **widgets,
    }
    inputs = {"model": Upstream("model"), "ipadapter": Upstream("ipadapter"), "image_prompt": prompt, **weight_links}
    inputs.update(linked_inputs(view, {"attn_mask": "attn_mask"}))
    return Target("ExactApplyIPAdapter", values, inputs)


def encode_and_apply(view: NodeView, unfold: bool, weight_type_value: str, combine: str, notes: list[str], **widgets) -> Plan:
    if len(view.spec.outputs) > 1 and view.consumers(1):
        raise Unconvertible(f"its {view.spec.outputs[1][0]} output is empty without a FaceID adapter, yet it is connected")
    needs: set = set()
    targets = [apply(view, Internal(1, 0), weight_type_value, unfold, needs, **widgets), encode(view, "image", combine)]
    return Plan(targets, {0: (0, 0)}, notes, needs_converted=needs)


def faceid_preset(given: str) -> str:
    preset = next((ours for prefix, ours in FACEID_PRESETS if given.lower().startswith(prefix)), None)
    if preset is None:
        raise Unconvertible(f"preset {given!r} has no equivalent here")
    return preset


def face_encode_and_apply(view: NodeView, unfold: bool, weight_type_value: str, combine: str, notes: list[str], v2_scale, **widgets) -> Plan:
    """FaceID: Encode Face Image Prompt + Apply IP-Adapter. v2_scale: the plusv2 shortcut weight, or a
    function of whether the adapter is plusv2 giving it (the nodes without weight_faceidv2 derive it)."""
    loader = view.source_view("ipadapter")
    if adapter_loader(view) == FACEID_LOADER:
        preset = faceid_preset(str(loader.static("preset")))
        faceid_v2, plus = preset == "faceid plusv2", preset in ("faceid plus", "faceid plusv2")
        lora_strength = float(loader.static("lora_strength")) if preset in LORA_PRESETS else 0.0
    elif adapter_loader(view) == "IPAdapterModelLoader":
        name = str(loader.static("ipadapter_file")).lower()
        faceid_v2, plus = "plusv2" in name, "plus" in name  # the leading pack tells plusv2 from plus by the file name
        lora_strength = 0.0
        notes.append("with an adapter loaded by file name the leading pack adds no LoRA (a LoRA loader in the workflow stays): lora_strength is 0")
    else:
        raise Unconvertible("its ipadapter does not come from an IPAdapter loader, so which FaceID adapter it is cannot be told")
    if callable(v2_scale):
        v2_scale = v2_scale(faceid_v2)
    if isinstance(v2_scale, (int, float)) and v2_scale < 0:
        raise Unconvertible(f"a negative plusv2 weight ({v2_scale}) has no equivalent here")
    if view.linked("image_negative"):
        notes.append("image_negative is not used: the unconditional tokens are the reference's (a zero face embedding, and for plus CLIP's view of zero pixels)")
    notes.append("with several faces in one photo the largest is used (the leading pack takes the detector's first)")
    if plus:
        notes.append("plus adapters see the face crop aligned at 224 pixels, as the reference does (the leading pack aligns it at 256 on SDXL)")
    needs: set = set()
    target = apply(view, Internal(1, 0), weight_type_value, unfold, needs, lora_strength=lora_strength, **widgets)
    encode_inputs = {"ipadapter": Upstream("ipadapter"), "insightface": carried(view, INSIGHTFACE), "image": Upstream("image"),
                     "clip_vision": clip_vision(view, required=False)}
    encode_widgets = {"faceid_v2": faceid_v2, "v2_scale": v2_scale, "faces": "largest", "combine": combine, "image_weights": ""}
    outputs = {0: (0, 0), 1: (1, 1)} if len(view.spec.outputs) > 1 else {0: (0, 0)}
    return Plan([target, Target("ExactEncodeFaceImagePrompt", encode_widgets, encode_inputs)], outputs, notes, needs_converted=needs)


def derived_v2_scale(view: NodeView):
    """Apply nodes without weight_faceidv2 give plusv2 twice their weight (the leading pack's ipadapter_execute)."""
    def scale(faceid_v2: bool) -> float:
        if not faceid_v2:
            return 1.0
        weight = view.value("weight")
        if isinstance(weight, Upstream):
            raise Unconvertible("its weight is computed at run time, and the plusv2 weight the leading pack derives from it cannot be")
        return 2 * weight

    return scale


# --- rules -----------------------------------------------------------------------------------------


def loader_notes(view: NodeView, preset: str) -> list[str]:
    """What a Unified Loader's conversion tells the user, for any preset."""
    notes = []
    if preset in SAME_LAYOUT:
        notes.append(f"'{preset}' and '{SAME_LAYOUT[preset]}' adapters have the same weight layout; if models/ipadapter holds both, "
                     "choose the file in ipadapter_file")
    if view.linked("ipadapter"):
        notes.append("its ipadapter input only shared models already loaded by another loader; not needed here")
    return notes


def unified_loader(view: NodeView) -> Plan:
    given = str(view.static("preset")).lower()
    preset = next((ours for prefix, ours in PRESETS if given.startswith(prefix)), None)
    if preset is None:
        raise Unconvertible(f"preset {given!r} has no equivalent here")
    notes = loader_notes(view, preset)
    target = Target("ExactLoadIPAdapterPreset", {"preset": preset, "ipadapter_file": AUTO}, {"model": Upstream("model")})
    return Plan([target], {0: (0, 0), 1: (0, 1)}, notes, carries={CLIP_VISION: (0, 2)})


def provider(view: NodeView, notes: list[str]) -> str:
    given = view.static("provider")
    if given in PROVIDERS:
        return given
    notes.append(f"onnxruntime provider {given} is not offered here: CPU is used (CUDA is the other choice)")
    return "CPU"


FACEID_APPLY_NODES = ("IPAdapter", "IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterFaceID", "IPAAdapterFaceIDBatch", "IPAdapterMS")


def unified_faceid_loader(view: NodeView) -> Plan:
    preset = faceid_preset(str(view.static("preset")))
    notes = loader_notes(view, preset)
    if preset in LORA_PRESETS and view.static("lora_strength"):
        notes.append("its LoRA is added by Apply IP-Adapter now (lora_strength), from the adapter file itself: no file in models/loras is needed")
        direct = sorted({kind for _, kind, _ in view.consumers(0) if kind not in FACEID_APPLY_NODES})
        if direct:
            notes.append(f"{', '.join(direct)} took this loader's model with the LoRA and now take it without")
    targets = [
        Target("ExactLoadIPAdapterPreset", {"preset": preset, "ipadapter_file": AUTO}, {"model": Upstream("model")}),
        Target("ExactLoadInsightFace", {"model_name": "buffalo_l", "provider": provider(view, notes)}),  # the pack that loader loads
    ]
    return Plan(targets, {0: (0, 0), 1: (0, 1)}, notes, carries={CLIP_VISION: (0, 2), INSIGHTFACE: (1, 0)})


def insightface_loader(view: NodeView) -> Plan:
    notes: list[str] = []
    widgets = {"model_name": view.static("model_name"), "provider": provider(view, notes)}
    return Plan([Target("ExactLoadInsightFace", widgets)], {0: (0, 0)}, notes)


def model_loader(view: NodeView) -> Plan:
    return Plan([Target("ExactLoadIPAdapter", {"ipadapter_file": view.static("ipadapter_file")})], {0: (0, 0)})


def simple(view: NodeView) -> Plan:
    value = view.static("weight_type")
    if value not in SIMPLE_WEIGHT_TYPES:
        raise Unconvertible(f"weight_type {value!r} has no equivalent here")
    if is_faceid(view):
        return face_encode_and_apply(view, False, SIMPLE_WEIGHT_TYPES[value], "concat", [], derived_v2_scale(view))
    return encode_and_apply(view, False, SIMPLE_WEIGHT_TYPES[value], "concat", [])


def advanced(unfold: bool):
    """IPAdapter Advanced / Batch, and IPAdapter FaceID / FaceID Batch (which take weight_faceidv2 and InsightFace)."""
    def rule(view: NodeView) -> Plan:
        notes: list[str] = []
        combine = combine_method(view, "combine_embeds", notes) if not unfold else "concat"
        if is_faceid(view):
            has_v2 = "weight_faceidv2" in (w.name for w in view.spec.widgets())
            v2_scale = view.value("weight_faceidv2") if has_v2 else derived_v2_scale(view)
            return face_encode_and_apply(view, unfold, weight_type(view), combine, notes, v2_scale)
        if adapter_loader(view) not in CLIP_LOADERS and "insightface" in (i.name for i in view.spec.inputs):
            notes.append("without InsightFace the leading pack runs it as IPAdapter Advanced (a FaceID adapter would stop it): so does this")
        return encode_and_apply(view, unfold, weight_type(view), combine, notes)

    return rule


LAYER_WEIGHT = re.compile(r"^\s*(\d+)\s*:\s*([-+0-9.eE]+)\s*$")


def mad_scientist(view: NodeView) -> Plan:
    notes: list[str] = []
    chosen_type = weight_type(view)
    spec = str(view.static("layer_weights")).strip()
    extra = {}
    if spec:
        pairs = []
        for item in filter(str.strip, spec.split(",")):
            match = LAYER_WEIGHT.match(item)
            try:
                pairs.append((int(match.group(1)), float(match.group(2))))
            except (AttributeError, ValueError):
                raise Unconvertible(f"layer_weights {spec!r} is not a list of 'block: value' pairs") from None
        chosen_type = "linear"  # as the leading pack does when layer_weights is set; unlisted blocks get 0
        extra["layer_weights"] = "all: 0, " + ", ".join(f"{block}: {value!r}" for block, value in pairs)
    combine = combine_method(view, "combine_embeds", notes)
    if is_faceid(view):
        return face_encode_and_apply(view, False, chosen_type, combine, notes, view.value("weight_faceidv2"), **extra)
    return encode_and_apply(view, False, chosen_type, combine, notes, **extra)


def style_composition(unfold: bool):
    def rule(view: NodeView) -> Plan:
        not_faceid(view, "style and composition form")
        notes: list[str] = []
        combine = combine_method(view, "combine_embeds", notes) if not unfold else "concat"
        kind = "strong style and composition" if view.static("expand_style") else "style and composition"
        needs: set = set()
        target = apply(view, Internal(1, 0), kind, unfold, needs, weight_name="weight_style",
                       composition_weight=view.value("weight_composition"))
        target.inputs["composition_image_prompt"] = Internal(2, 0)
        return Plan([target, encode(view, "image_style", combine), encode(view, "image_composition", combine)], {0: (0, 0)}, notes,
                    needs_converted=needs)

    return rule


def embeds(unfold: bool):
    def rule(view: NodeView) -> Plan:
        not_faceid(view, "embeds form")
        needs: set = set()
        project_inputs = {"ipadapter": Upstream("ipadapter"), "embeds": Upstream("pos_embed"), "clip_vision": clip_vision(view, required=False)}
        project_inputs.update(linked_inputs(view, {"neg_embed": "negative_embeds"}))
        targets = [apply(view, Internal(1, 0), weight_type(view), unfold, needs), Target("ExactProjectClipEmbeds", {}, project_inputs)]
        return Plan(targets, {0: (0, 0)}, needs_converted=needs)

    return rule


def tiled(unfold: bool):
    def rule(view: NodeView) -> Plan:
        not_faceid(view, "tiled form")
        notes = ["tiles are resampled with antialiased bicubic (Lanczos there), so their pixels differ slightly"]
        if view.static("sharpening"):
            notes.append("sharpening uses this pack's unsharp mask instead of contrast-adaptive sharpening")
        combine = combine_method(view, "combine_embeds", notes) if not unfold else "concat"
        widgets = {
            "weight": view.value("weight"), "weight_type": weight_type(view), "combine": combine, "start_at": view.value("start_at"),
            "end_at": view.value("end_at"), "sharpening": view.value("sharpening"), "embeds_scaling": view.value("embeds_scaling"),
            "unfold_batch": unfold,
        }
        inputs = {"model": Upstream("model"), "ipadapter": Upstream("ipadapter"), "clip_vision": clip_vision(view), "image": Upstream("image")}
        inputs.update(linked_inputs(view, {"image_negative": "negative_image", "attn_mask": "attn_mask"}))
        return Plan([Target("ExactIPAdapterTiled", widgets, inputs)], {0: (0, 0), 1: (0, 1), 2: (0, 2)}, notes)

    return rule


def encoder(view: NodeView) -> Plan:
    not_faceid(view, "embeds form")
    inputs = {"ipadapter": Upstream("ipadapter"), "clip_vision": clip_vision(view), "image": Upstream("image")}
    inputs.update(linked_inputs(view, {"mask": "mask"}))
    return Plan([Target("ExactEncodeClipEmbeds", {"weight": view.value("weight")}, inputs)], {0: (0, 0), 1: (0, 1)})


def combine_embeds(view: NodeView) -> Plan:
    notes: list[str] = []
    method = combine_method(view, "method", notes)
    inputs = {"embeds_1": Upstream("embed1"), **linked_inputs(view, {f"embed{i}": f"embeds_{i}" for i in range(2, 6)})}
    return Plan([Target("ExactCombineClipEmbeds", {"method": method}, inputs)], {0: (0, 0)}, notes)


def save_embeds(view: NodeView) -> Plan:
    return Plan([Target("ExactSaveClipEmbeds", {"filename_prefix": view.value("filename_prefix")}, {"embeds": Upstream("embeds")})], {})


def load_embeds(view: NodeView) -> Plan:
    return Plan([Target("ExactLoadClipEmbeds", {"embeds_file": view.static("embeds")})], {0: (0, 0)})


def noise(view: NodeView) -> Plan:
    if not view.linked("image_optional"):
        raise Unconvertible("without image_optional it draws noise on a black 224x224 image; connect the reference to it first")
    if view.static("blur"):
        raise Unconvertible("its blur has no equivalent here; set blur to 0 first")
    kind = NOISE_KINDS[view.static("type")]
    notes = ["the random values differ (the leading pack seeds with the image's pixel sum, here with seed 0)"]
    if kind == "shuffle":
        notes.append("shuffle moves the image's pixels at random instead of an elastic warp with flips")
    widgets = {"kind": kind, "strength": view.value("strength"), "seed": 0}
    return Plan([Target("ExactMakeNegativeImage", widgets, {"image": Upstream("image_optional")})], {0: (0, 0)}, notes)


def prep_image(view: NodeView) -> Plan:
    notes = []
    interpolation = view.static("interpolation")
    if interpolation in ("LANCZOS", "HAMMING"):
        notes.append(f"{interpolation} resampling becomes {INTERPOLATIONS[interpolation]}")
    if view.static("crop_position") == "pad":
        notes.append("pad letterboxes with mid-grey bars (black there)")
    if view.static("sharpening"):
        notes.append("sharpening uses this pack's unsharp mask instead of contrast-adaptive sharpening")
    widgets = {"interpolation": INTERPOLATIONS[interpolation], "crop_position": view.static("crop_position"),
               "sharpening": view.value("sharpening"), "size": 224}
    return Plan([Target("ExactPrepareImageForClip", widgets, {"image": Upstream("image")})], {0: (0, 0)}, notes)


def frame_weights(view: NodeView) -> Plan:
    for slot, (name, _) in enumerate(view.spec.outputs):
        if slot and view.consumers(slot):
            raise Unconvertible(f"its {name} output has no equivalent here")
    if view.linked("image"):
        raise Unconvertible("with an image it also builds cross-fade image batches, which have no equivalent here")
    consumers = view.consumers(0)
    for _, kind, name in consumers:
        if (kind, name) not in FRAME_WEIGHT_CONSUMERS:
            raise Unconvertible(f"its weights go to {kind}.{name}; only the Batch nodes' weight input takes a schedule here")
    values = leading_frame_weights(
        str(view.static("weights")), view.static("timing"), int(view.static("frames")), int(view.static("start_frame")), int(view.static("end_frame"))
    )
    widgets = {"frames": len(values), "start": values[0], "end": values[-1], "method": "linear", "custom": ", ".join(f"{v:.10g}" for v in values)}
    return Plan([Target("ExactIPAdapterWeightSchedule", widgets)], {0: (0, 0)}, needs_converted={node for node, _, _ in consumers})


TIMINGS = {
    "linear": lambda t: t,
    "ease_in_out": lambda t: (1 - math.cos(t * math.pi)) / 2,
    "ease_in": lambda t: math.sin(t * math.pi / 2),
    "ease_out": lambda t: 1 - math.cos(t * math.pi / 2),
}


def leading_frame_weights(text: str, timing: str, frames: int, start_frame: int, end_frame: int) -> list[float]:
    """The per-frame values IPAdapter Weights computes (without an image): its curve from the first
    to the last value given, held before start_frame and after end_frame; or the values as given."""
    try:
        given = [float(part) for part in text.replace("\n", ",").split(",") if part.strip()]
    except ValueError as error:
        raise Unconvertible(f"weights {text!r} are not numbers") from error
    if timing == "custom":
        return given or [0.0]
    if timing not in TIMINGS:
        raise Unconvertible(f"timing {timing!r} gives different values on every run")
    frames = max(frames, 2)
    start, end = (given[0], given[-1]) if given else (0.0, 1.0)
    end_frame = min(end_frame, frames)
    duration = end_frame - start_frame
    if duration < 2:
        raise Unconvertible(f"start_frame {start_frame} and end_frame {end_frame} leave fewer than 2 frames for the curve")
    curve = TIMINGS[timing]
    values = [start] * start_frame + [start + (end - start) * curve(i / (duration - 1)) for i in range(duration)]
    values[-1] = end
    return values + [end] * (frames - end_frame)


RULES = {
    "IPAdapterUnifiedLoader": unified_loader,
    "IPAdapterUnifiedLoaderFaceID": unified_faceid_loader,
    "IPAdapterModelLoader": model_loader,
    "IPAdapterInsightFaceLoader": insightface_loader,
    "IPAdapter": simple,
    "IPAdapterAdvanced": advanced(unfold=False),
    "IPAdapterBatch": advanced(unfold=True),
    "IPAdapterFaceID": advanced(unfold=False),
    "IPAAdapterFaceIDBatch": advanced(unfold=True),
    "IPAdapterMS": mad_scientist,
    "IPAdapterStyleComposition": style_composition(unfold=False),
    "IPAdapterStyleCompositionBatch": style_composition(unfold=True),
    "IPAdapterEmbeds": embeds(unfold=False),
    "IPAdapterEmbedsBatch": embeds(unfold=True),
    "IPAdapterTiled": tiled(unfold=False),
    "IPAdapterTiledBatch": tiled(unfold=True),
    "IPAdapterEncoder": encoder,
    "IPAdapterCombineEmbeds": combine_embeds,
    "IPAdapterSaveEmbeds": save_embeds,
    "IPAdapterLoadEmbeds": load_embeds,
    "IPAdapterNoise": noise,
    "PrepImageForClipVision": prep_image,
    "IPAdapterWeights": frame_weights,
}
