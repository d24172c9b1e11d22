"""Converting ComfyUI_IPAdapter_plus workflows: what changes, what stays, and the report.

The fixtures in tests/fixtures/leading are workflows built with that pack's nodes, saved as its
frontend saves them (UI format) and as its frontend queues them (API format). Conversion runs on
the core alone; the last tests check the description of this pack's nodes the converter uses
against the live node definitions.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from helpers import object_info_in_process
from ipadapter_core.convert import convert_workflow
from ipadapter_core.convert.__main__ import main
from ipadapter_core.convert.leading import LEADING_NODES
from ipadapter_core.convert.ours import DISPLAY_NAMES, OUR_NODES
from ipadapter_core.convert.rules import leading_frame_weights
from ipadapter_core.errors import IPAdapterError

FIXTURES = Path(__file__).parent / "fixtures" / "leading"
UI_FIXTURES = ["advanced_unified", "weighted_embeds", "batch_weights", "style_composition_sdxl", "mixed_unconvertible", "faceid_unified"]
# The node ids ComfyUI_IPAdapter_plus registers (its IPAdapterPlus.py NODE_CLASS_MAPPINGS), copied by hand.
LEADING_IDS = {
    "IPAdapter", "IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterFaceID", "IPAdapterFaceIDKolors", "IPAAdapterFaceIDBatch", "IPAdapterTiled",
    "IPAdapterTiledBatch", "IPAdapterEmbeds", "IPAdapterEmbedsBatch", "IPAdapterStyleComposition", "IPAdapterStyleCompositionBatch",
    "IPAdapterMS", "IPAdapterClipVisionEnhancer", "IPAdapterClipVisionEnhancerBatch", "IPAdapterFromParams", "IPAdapterPreciseStyleTransfer",
    "IPAdapterPreciseStyleTransferBatch", "IPAdapterPreciseComposition", "IPAdapterPreciseCompositionBatch", "IPAdapterUnifiedLoader",
    "IPAdapterUnifiedLoaderFaceID", "IPAdapterModelLoader", "IPAdapterInsightFaceLoader", "IPAdapterUnifiedLoaderCommunity", "IPAdapterEncoder",
    "IPAdapterCombineEmbeds", "IPAdapterNoise", "PrepImageForClipVision", "IPAdapterSaveEmbeds", "IPAdapterLoadEmbeds", "IPAdapterWeights",
    "IPAdapterCombineWeights", "IPAdapterWeightsFromStrategy", "IPAdapterPromptScheduleFromWeightsStrategy", "IPAdapterRegionalConditioning",
    "IPAdapterCombineParams",
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def by_id(workflow: dict) -> dict:
    return {node["id"]: node for node in workflow["nodes"]}


def widgets_of(node: dict) -> dict:
    return OUR_NODES[node["type"]].widget_values(node.get("widgets_values"))


def source(workflow: dict, node: dict, name: str) -> tuple | None:
    """(origin node type, origin slot) of a UI node's input, past reroutes."""
    nodes, links = by_id(workflow), {link[0]: link for link in workflow["links"]}
    link_id = next(slot["link"] for slot in node["inputs"] if slot["name"] == name)
    while link_id is not None:
        _, origin, slot, *_ = links[link_id]
        if nodes[origin]["type"] != "Reroute":
            return nodes[origin]["type"], slot
        link_id = nodes[origin]["inputs"][0]["link"]
    return None


def assert_consistent(workflow: dict) -> None:
    """Every link appears on both its ends with the right slot, and its type is what its origin outputs."""
    nodes = by_id(workflow)
    links = {link[0]: link for link in workflow["links"]}
    assert len(links) == len(workflow["links"]) and max(links) <= workflow["last_link_id"]
    assert max(nodes) <= workflow["last_node_id"]
    for link_id, origin, origin_slot, target, target_slot, kind in links.values():
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert kind == nodes[origin]["outputs"][origin_slot]["type"], (link_id, kind)
        target_type = nodes[target]["inputs"][target_slot]["type"]
        assert target_type in ("*", kind) or nodes[target]["type"] in LEADING_NODES, (link_id, kind, target_type)
    for node in nodes.values():
        for slot in node.get("inputs") or []:
            assert slot["link"] is None or links[slot["link"]][3] == node["id"]
        for position, slot in enumerate(node.get("outputs") or []):
            assert all(links[i][1:3] == [node["id"], position] for i in slot.get("links") or [])


@pytest.mark.parametrize("name", UI_FIXTURES)
def test_everything_else_is_kept(name):
    original = load(name)
    converted, report = convert_workflow(original)
    assert original == load(name)  # the input is not modified
    assert_consistent(converted)
    replaced = {entry["id"] for entry in report.converted}
    before, after = by_id(original), by_id(converted)
    untouched = {i for i, n in before.items() if i not in replaced and n["type"] not in ("Reroute",)}
    touching = {l[1] for l in original["links"] if l[3] in replaced} | {l[3] for l in original["links"] if l[1] in replaced}
    for node_id in untouched - touching:
        assert after[node_id] == before[node_id]
    for node_id in untouched & touching:  # only their slots' link ids may change
        strip = lambda n: {k: v for k, v in n.items() if k not in ("inputs", "outputs")}  # noqa: E731
        assert strip(after[node_id]) == strip(before[node_id])
        assert [s["name"] for s in after[node_id].get("inputs", [])] == [s["name"] for s in before[node_id].get("inputs", [])]
    kept = {l[0]: l for l in original["links"] if l[1] not in replaced and l[3] not in replaced}
    assert all(link in converted["links"] for link in kept.values())
    assert converted["groups"] == original["groups"] and converted["extra"] == original["extra"]
    for node_id in replaced:
        assert after[node_id]["pos"] == before[node_id]["pos"] and after[node_id]["type"] in OUR_NODES
    assert not {n["type"] for n in converted["nodes"]} & (set(LEADING_NODES) - {u["type"] for u in report.unconvertible})


@pytest.mark.parametrize("name", ["advanced_unified_api", "batch_weights_api", "faceid_unified_api"])
def test_api_format_keeps_everything_else(name):
    """Every other entry stays as it was; only links from a replaced node point at the node taking its output now."""
    original = load(name)
    converted, report = convert_workflow(original)
    assert original == load(name) and report.format == "api" and report.unconvertible == []
    replaced = {entry["id"] for entry in report.converted}
    for node_id, entry in original.items():
        if node_id in replaced:
            continue
        kept = converted[node_id]
        assert kept["class_type"] == entry["class_type"] and kept.get("_meta") == entry.get("_meta") and set(kept["inputs"]) == set(entry["inputs"])
        for input_name, value in entry["inputs"].items():
            moved = isinstance(value, list) and value[0] in replaced
            assert kept["inputs"][input_name] == value or (moved and converted[kept["inputs"][input_name][0]]["class_type"] in OUR_NODES)
    assert set(converted) >= set(original) and not {e["class_type"] for e in converted.values()} & set(LEADING_NODES)


def test_advanced_workflow_with_a_unified_loader():
    converted, report = convert_workflow(load("advanced_unified"))
    nodes = by_id(converted)
    assert [(c["type"], c["into"]) for c in report.converted] == [
        ("IPAdapterUnifiedLoader", ["ExactLoadIPAdapterPreset"]), ("PrepImageForClipVision", ["ExactPrepareImageForClip"]),
        ("IPAdapterNoise", ["ExactMakeNegativeImage"]), ("IPAdapterAdvanced", ["ExactApplyIPAdapter", "ExactEncodeImagePrompt"]),
    ]
    assert report.unconvertible == []
    assert widgets_of(nodes[11]) == {"preset": "plus", "ipadapter_file": "auto"}
    assert widgets_of(nodes[13]) == {"interpolation": "bicubic", "crop_position": "top", "sharpening": 0.15, "size": 224}
    assert widgets_of(nodes[14]) == {"kind": "noise", "strength": 0.6, "seed": 0}
    apply = nodes[16]
    assert widgets_of(apply) == {"weight": 0.8, "start_at": 0, "end_at": 0.9, "weight_type": "ease in", "embeds_scaling": "V only",
                                 "unfold_batch": False, "composition_weight": 1.0, "layer_weights": "", "lora_strength": 1.0}
    encode = nodes[17]
    assert encode["type"] == "ExactEncodeImagePrompt" and encode["flags"] == {"collapsed": True}
    assert source(converted, apply, "model") == ("ExactLoadIPAdapterPreset", 0)
    assert source(converted, apply, "ipadapter") == ("ExactLoadIPAdapterPreset", 1)  # through the reroute
    assert source(converted, apply, "image_prompt") == ("ExactEncodeImagePrompt", 0)
    assert source(converted, encode, "clip_vision") == ("ExactLoadIPAdapterPreset", 2)  # the pipeline's encoder, now a link
    assert source(converted, encode, "image") == ("ExactPrepareImageForClip", 0)
    assert source(converted, encode, "negative_image") == ("ExactMakeNegativeImage", 0)
    reroute = nodes[15]
    assert reroute["outputs"][0]["type"] == "EXACT_IPADAPTER"
    notes = {(n["type"], n["note"]) for n in report.notes}
    assert ("PrepImageForClipVision", "LANCZOS resampling becomes bicubic") in notes


@pytest.mark.parametrize("preset, ours", [
    ("LIGHT - SD1.5 only (low strength)", "light"), ("STANDARD (medium strength)", "standard"), ("VIT-G (medium strength)", "vit-G"),
    ("PLUS (high strength)", "plus"), ("PLUS FACE (portraits)", "plus face"), ("FULL FACE - SD1.5 only (portraits stronger)", "full face"),
])
def test_unified_loader_presets(preset, ours):
    """Each of that loader's presets (its list, copied by hand) names ours; the file stays 'auto', picked by its weights at run time."""
    converted, report = convert_workflow(edit(load("advanced_unified"), 11, preset=preset))
    assert widgets_of(by_id(converted)[11]) == {"preset": ours, "ipadapter_file": "auto"} and report.unconvertible == []


def test_weighted_embeds_keep_their_pre_projection_form():
    converted, report = convert_workflow(load("weighted_embeds"))
    nodes = by_id(converted)
    assert widgets_of(nodes[16])["weight"] == 0.6 and widgets_of(nodes[17])["weight"] == 1.5
    assert widgets_of(nodes[18]) == {"method": "average"}
    assert source(converted, nodes[18], "embeds_1") == ("ExactEncodeClipEmbeds", 0)
    apply, project = nodes[14], nodes[20]
    assert widgets_of(apply)["embeds_scaling"] == "V only"  # saved before that widget existed: its default
    assert (apply["type"], project["type"]) == ("ExactApplyIPAdapter", "ExactProjectClipEmbeds")
    assert source(converted, project, "embeds") == ("ExactCombineClipEmbeds", 0)
    assert source(converted, project, "negative_embeds") == ("ExactEncodeClipEmbeds", 1)
    assert source(converted, project, "clip_vision") == ("ExactLoadIPAdapterPreset", 2)
    assert widgets_of(nodes[19]) == {"filename_prefix": "IP_embeds"}


def test_loaded_embeds_feed_the_projection():
    """IPAdapter Load Embeds becomes Load CLIP Embeds of the same file (read with weights_only=True: tests/test_leading_nodes.py),
    and what it fed into IPAdapter Embeds is projected by the adapter of that node."""
    prompt = {
        "11": {"inputs": {"preset": "PLUS (high strength)", "model": ["4", 0]}, "class_type": "IPAdapterUnifiedLoader"},
        "12": {"inputs": {"embeds": "reference.ipadpt"}, "class_type": "IPAdapterLoadEmbeds", "_meta": {"title": "my embeds"}},
        "14": {"inputs": {"weight": 0.7, "weight_type": "linear", "start_at": 0, "end_at": 1, "embeds_scaling": "V only", "model": ["11", 0],
                          "ipadapter": ["11", 1], "pos_embed": ["12", 0]}, "class_type": "IPAdapterEmbeds"},
        "3": {"inputs": {"model": ["14", 0]}, "class_type": "KSampler"},
    }
    converted, report = convert_workflow(prompt)
    assert report.unconvertible == []
    assert converted["12"] == {"inputs": {"embeds_file": "reference.ipadpt"}, "class_type": "ExactLoadClipEmbeds", "_meta": {"title": "my embeds"}}
    (project,) = [e for e in converted.values() if e["class_type"] == "ExactProjectClipEmbeds"]
    assert project["inputs"] == {"ipadapter": ["11", 1], "embeds": ["12", 0], "clip_vision": ["11", 2]}
    assert converted["14"]["class_type"] == "ExactApplyIPAdapter" and converted["14"]["inputs"]["weight"] == 0.7


def test_frame_weights_become_a_schedule_with_the_same_values():
    converted, _ = convert_workflow(load("batch_weights"))
    nodes = by_id(converted)
    schedule, apply = nodes[22], nodes[19]
    assert widgets_of(schedule) == {"frames": 4, "start": 1.0, "end": 0.0, "method": "linear", "custom": "1, 0.75, 0.25, 0"}
    assert source(converted, apply, "weight_schedule") == ("ExactIPAdapterWeightSchedule", 0)
    assert widgets_of(apply)["weight"] == 1.0 and widgets_of(apply)["unfold_batch"] is True
    assert widgets_of(apply)["weight_type"] == "style transfer"
    from_primitive = [link for link in converted["links"] if link[1] == 21]  # it still sets the batch size; its frames link is gone
    assert [link[3] for link in from_primitive] == [5] and nodes[21]["outputs"][0]["links"] == [from_primitive[0][0]]


def test_style_composition_and_layer_weights():
    converted, _ = convert_workflow(load("style_composition_sdxl"))
    nodes = by_id(converted)
    style = widgets_of(nodes[14])
    assert (style["weight"], style["weight_type"], style["composition_weight"], style["embeds_scaling"]) == (1.2, "strong style and composition", 0.8, "K+V")
    assert source(converted, nodes[14], "composition_image_prompt") == ("ExactEncodeImagePrompt", 0)
    encoders = [n for n in converted["nodes"] if n["type"] == "ExactEncodeImagePrompt"]
    assert {source(converted, n, "clip_vision") for n in encoders} == {("CLIPVisionLoader", 0)}
    assert [widgets_of(n)["combine"] for n in encoders] == ["average", "average", "concat"]
    mad = widgets_of(nodes[15])
    assert (mad["weight"], mad["weight_type"], mad["layer_weights"]) == (0.6, "linear", "all: 0, 3: 1.0, 6: 0.5")
    assert nodes[10]["type"] == "ExactLoadIPAdapter" and widgets_of(nodes[10]) == {"ipadapter_file": "ip-adapter-plus_sdxl_vit-h.safetensors"}


def test_unconvertible_nodes_stay_and_are_reported():
    original = load("mixed_unconvertible")
    converted, report = convert_workflow(original)
    nodes = by_id(converted)
    assert [(u["id"], u["type"]) for u in report.unconvertible] == [(16, "IPAdapterFaceIDKolors")]
    assert nodes[16] == by_id(original)[16] | {"inputs": nodes[16]["inputs"]}  # in place, only its links renumbered
    assert [(slot["name"], slot["link"] is not None) for slot in nodes[16]["inputs"]] == [
        (slot["name"], slot["link"] is not None) for slot in by_id(original)[16]["inputs"]]
    kolors = report.unconvertible[0]["reason"]
    assert "Kolors has no equivalent here" in kolors and "model, ipadapter, insightface now come from this pack's nodes" in kolors
    assert nodes[15]["type"] == "ExactLoadInsightFace" and widgets_of(nodes[15]) == {"model_name": "buffalo_l", "provider": "CPU"}
    assert nodes[13]["type"] == "ExactIPAdapterTiled" and [o["type"] for o in nodes[13]["outputs"]] == ["MODEL", "IMAGE", "MASK"]
    assert source(converted, nodes[17], "images") == ("ExactIPAdapterTiled", 1)
    simple = widgets_of(nodes[14])
    assert (simple["weight"], simple["end_at"], simple["weight_type"]) == (0.5, 0.8, "ease out")  # "prompt is more important"
    assert source(converted, nodes[3], "model") == ("IPAdapterFaceIDKolors", 0)  # the sampler still takes the node that stayed
    text = "\n".join(report.lines())
    assert "Left unchanged (1)" in text and "IPAdapterFaceIDKolors #16: Kolors" in text


# --- FaceID ------------------------------------------------------------------------------------------


def test_faceid_with_the_unified_loader():
    """Preset, InsightFace and LoRA strength move from the loader to the nodes that use them here."""
    converted, report = convert_workflow(load("faceid_unified"))
    nodes = by_id(converted)
    assert [(c["type"], c["into"]) for c in report.converted] == [
        ("IPAdapterUnifiedLoaderFaceID", ["ExactLoadIPAdapterPreset", "ExactLoadInsightFace"]),
        ("IPAdapterFaceID", ["ExactApplyIPAdapter", "ExactEncodeFaceImagePrompt"]),
    ]
    assert report.unconvertible == []
    insightface = next(n for n in converted["nodes"] if n["type"] == "ExactLoadInsightFace")
    face = next(n for n in converted["nodes"] if n["type"] == "ExactEncodeFaceImagePrompt")
    apply = nodes[16]
    assert widgets_of(nodes[11]) == {"preset": "faceid plusv2", "ipadapter_file": "auto"}
    assert widgets_of(insightface) == {"model_name": "buffalo_l", "provider": "CPU"}
    assert widgets_of(face) == {"faceid_v2": True, "v2_scale": 1.5, "faces": "largest", "combine": "concat", "image_weights": ""}
    assert widgets_of(apply) == {"weight": 0.8, "start_at": 0, "end_at": 1, "weight_type": "linear", "embeds_scaling": "V only",
                                 "unfold_batch": False, "composition_weight": 1.0, "layer_weights": "", "lora_strength": 0.6}
    assert apply["title"] == "FaceID"  # the user's title stays on the node taking its place
    assert source(converted, apply, "model") == ("ExactLoadIPAdapterPreset", 0)
    assert source(converted, apply, "image_prompt") == ("ExactEncodeFaceImagePrompt", 0)
    assert source(converted, face, "ipadapter") == ("ExactLoadIPAdapterPreset", 1)
    assert source(converted, face, "insightface") == ("ExactLoadInsightFace", 0)  # the pipeline's InsightFace, now a link
    assert source(converted, face, "clip_vision") == ("ExactLoadIPAdapterPreset", 2)
    assert source(converted, face, "image") == ("LoadImage", 0)
    assert source(converted, nodes[17], "images") == ("ExactEncodeFaceImagePrompt", 1)  # face_image -> face_crops
    notes = [n["note"] for n in report.notes]
    assert any("LoRA is added by Apply IP-Adapter now" in n for n in notes)
    assert any("'faceid plusv2' and 'faceid plus' adapters have the same weight layout" in n for n in notes)


@pytest.mark.parametrize("preset, ours, faceid_v2, lora_strength", [
    ("FACEID", "faceid", False, 0.6),
    ("FACEID PLUS - SD1.5 only", "faceid plus", False, 0.6),
    ("FACEID PORTRAIT (style transfer)", "faceid portrait", False, 0.0),  # no LoRA for portrait adapters there either
    ("FACEID PORTRAIT UNNORM - SDXL only (strong)", "faceid portrait unnorm", False, 0.0),
])
def test_faceid_presets(preset, ours, faceid_v2, lora_strength):
    converted, report = convert_workflow(edit(load("faceid_unified"), 11, preset=preset))
    face = next(n for n in converted["nodes"] if n["type"] == "ExactEncodeFaceImagePrompt")
    assert widgets_of(by_id(converted)[11])["preset"] == ours
    assert widgets_of(face)["faceid_v2"] is faceid_v2 and widgets_of(by_id(converted)[16])["lora_strength"] == lora_strength


def test_faceid_batch_is_faceid_one_frame_per_image():
    """IPAdapter FaceID Batch (registered as IPAAdapterFaceIDBatch there) converts as IPAdapter FaceID does, with unfold_batch on."""
    workflow = load("faceid_unified")
    by_id(workflow)[16]["type"] = "IPAAdapterFaceIDBatch"  # the same widgets and sockets as IPAdapter FaceID
    single, _ = convert_workflow(load("faceid_unified"))
    converted, report = convert_workflow(workflow)
    assert report.unconvertible == [] and [c["type"] for c in report.converted] == ["IPAdapterUnifiedLoaderFaceID", "IPAAdapterFaceIDBatch"]
    assert widgets_of(by_id(converted)[16]) == widgets_of(by_id(single)[16]) | {"unfold_batch": True}
    face = [n for n in converted["nodes"] if n["type"] == "ExactEncodeFaceImagePrompt"]
    assert [widgets_of(n) for n in face] == [widgets_of(n) for n in single["nodes"] if n["type"] == "ExactEncodeFaceImagePrompt"]


def test_faceid_loader_provider_and_lora_notes():
    workflow = edit(load("faceid_unified"), 11, provider="DirectML")
    by_id(workflow)[3]["inputs"][0]["link"] = 13  # the sampler takes the loader's model (with the LoRA there) directly
    by_id(workflow)[11]["outputs"][0]["links"].append(13)
    workflow["links"] = [link for link in workflow["links"] if link[0] != 17] + [[13, 11, 0, 3, 0, "MODEL"]]
    by_id(workflow)[16]["outputs"][0]["links"] = []
    workflow["links"] = [link if link[0] != 13 else [13, 11, 0, 16, 0, "MODEL"] for link in workflow["links"]]
    converted, report = convert_workflow(api_of(workflow))
    insightface = next(e for e in converted.values() if e["class_type"] == "ExactLoadInsightFace")
    assert insightface["inputs"] == {"model_name": "buffalo_l", "provider": "CPU"}
    notes = [n["note"] for n in report.notes]
    assert any("provider DirectML is not offered here: CPU is used" in n for n in notes)
    assert any("KSampler took this loader's model with the LoRA and now take it without" in n for n in notes)


def api_of(workflow: dict) -> dict:
    """A UI workflow's API form, for the nodes and links the tests below need (no stock-node widgets)."""
    prompt = {}
    links = {link[0]: link for link in workflow["links"]}
    for node in workflow["nodes"]:
        if node["type"] in ("Reroute", "Note"):
            continue
        inputs = {}
        spec = LEADING_NODES.get(node["type"])
        if spec is not None:
            inputs.update(spec.widget_values(node.get("widgets_values")))
        for slot in node.get("inputs") or []:
            link = links.get(slot.get("link"))
            while link is not None and by_id(workflow)[link[1]]["type"] == "Reroute":
                link = links.get(by_id(workflow)[link[1]]["inputs"][0]["link"])
            if link is not None:
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def faceid_prompt(loader: dict, **faceid_inputs) -> dict:
    """A minimal API prompt: checkpoint -> (loader) -> IPAdapter FaceID -> sampler, the face crops previewed."""
    faceid = {"weight": 0.7, "weight_faceidv2": 1.0, "weight_type": "linear", "combine_embeds": "average", "start_at": 0, "end_at": 1,
              "embeds_scaling": "V only", "model": ["4", 0], "ipadapter": ["11", 0], "image": ["12", 0]}
    faceid.update(faceid_inputs)
    return {
        "4": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "class_type": "CheckpointLoaderSimple"},
        "11": loader,
        "12": {"inputs": {"image": "face.png"}, "class_type": "LoadImage"},
        "13": {"inputs": {"provider": "ROCM", "model_name": "antelopev2"}, "class_type": "IPAdapterInsightFaceLoader"},
        "14": {"inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}, "class_type": "CLIPVisionLoader"},
        "16": {"inputs": faceid, "class_type": "IPAdapterFaceID", "_meta": {"title": "IPAdapter FaceID"}},
        "17": {"inputs": {"images": ["16", 1]}, "class_type": "PreviewImage"},
        "3": {"inputs": {"model": ["16", 0]}, "class_type": "KSampler"},
    }


@pytest.mark.parametrize("file, faceid_v2", [("ip-adapter-faceid-plusv2_sd15.bin", True), ("ip-adapter-faceid-plus_sd15.bin", False)])
def test_faceid_with_a_model_loader_and_insightface_loader(file, faceid_v2):
    """As the leading pack does, plusv2 is told from plus by the file name; its FaceID node adds no LoRA."""
    loader = {"inputs": {"ipadapter_file": file}, "class_type": "IPAdapterModelLoader"}
    converted, report = convert_workflow(faceid_prompt(loader, insightface=["13", 0], clip_vision=["14", 0]))
    face = next(e for e in converted.values() if e["class_type"] == "ExactEncodeFaceImagePrompt")
    assert converted["13"] == {"inputs": {"model_name": "antelopev2", "provider": "CPU"}, "class_type": "ExactLoadInsightFace",
                               "_meta": {"title": "Load InsightFace (IP-Adapter FaceID)"}}
    assert face["inputs"] == {"ipadapter": ["11", 0], "insightface": ["13", 0], "image": ["12", 0], "clip_vision": ["14", 0],
                              "faceid_v2": faceid_v2, "v2_scale": 1.0, "faces": "largest", "combine": "average", "image_weights": ""}
    apply = converted["16"]
    assert apply["class_type"] == "ExactApplyIPAdapter" and apply["inputs"]["lora_strength"] == 0.0
    assert apply["inputs"]["model"] == ["4", 0] and converted["17"]["inputs"]["images"] == [next(k for k, e in converted.items() if e is face), 1]
    notes = [n["note"] for n in report.notes]
    assert any("adds no LoRA" in n for n in notes) and any("aligned at 224 pixels" in n for n in notes)
    assert any("provider ROCM is not offered here" in n for n in notes)


def test_faceid_node_with_a_clip_adapter_is_advanced():
    """Without a FaceID adapter the leading pack's FaceID node runs as IPAdapter Advanced."""
    loader = {"inputs": {"preset": "PLUS (high strength)", "model": ["4", 0]}, "class_type": "IPAdapterUnifiedLoader"}
    prompt = faceid_prompt(loader, ipadapter=["11", 1])
    del prompt["17"]
    converted, report = convert_workflow(prompt)
    assert report.unconvertible == [] and converted["16"]["inputs"]["lora_strength"] == 1.0
    assert {e["class_type"] for e in converted.values()} >= {"ExactEncodeImagePrompt", "ExactApplyIPAdapter"}
    assert "ExactEncodeFaceImagePrompt" not in {e["class_type"] for e in converted.values()}
    _, report = convert_workflow(faceid_prompt(loader, ipadapter=["11", 1]))  # its face crops are used: nothing to give them
    assert report.unconvertible[0]["type"] == "IPAdapterFaceID" and "face_image output is empty" in report.unconvertible[0]["reason"]


def test_other_nodes_with_a_faceid_loader():
    """IPAdapter Advanced and Mad Scientist do FaceID with that loader's adapter (plusv2 at twice the weight where the
    node has no weight_faceidv2); nodes with no FaceID form stay."""
    workflow = edit(load("faceid_unified"), 11, preset="FACEID PLUS V2")
    prompt = api_of(workflow)
    prompt["16"] = {"inputs": {**{k: v for k, v in prompt["16"]["inputs"].items() if k != "weight_faceidv2"}, "weight": 1.2},
                    "class_type": "IPAdapterAdvanced", "_meta": {"title": "IPAdapter Advanced"}}
    del prompt["17"]
    converted, _ = convert_workflow(prompt)
    face = next(e for e in converted.values() if e["class_type"] == "ExactEncodeFaceImagePrompt")
    assert face["inputs"]["v2_scale"] == 2.4 and converted["16"]["inputs"]["lora_strength"] == 0.6
    prompt["16"] = {"inputs": {**prompt["16"]["inputs"], "weight_faceidv2": 0.5, "layer_weights": "3: 1, 6: 0.5"}, "class_type": "IPAdapterMS"}
    converted, _ = convert_workflow(prompt)
    face = next(e for e in converted.values() if e["class_type"] == "ExactEncodeFaceImagePrompt")
    assert face["inputs"]["v2_scale"] == 0.5 and converted["16"]["inputs"]["layer_weights"] == "all: 0, 3: 1.0, 6: 0.5"
    prompt["16"] = {"inputs": {**prompt["16"]["inputs"], "sharpening": 0.0}, "class_type": "IPAdapterTiled"}
    _, report = convert_workflow(prompt)
    assert report.unconvertible[0]["type"] == "IPAdapterTiled" and "FaceID has no tiled form here" in report.unconvertible[0]["reason"]


def test_faceid_insightface_sources():
    """A FaceID node's own insightface link wins (kept as it is when another pack's node gives it); without one, the
    InsightFace that IPAdapter Unified Loader FaceID carried becomes a Load InsightFace node."""
    loader = {"inputs": {"ipadapter_file": "ip-adapter-faceid_sd15.bin"}, "class_type": "IPAdapterModelLoader"}
    prompt = faceid_prompt(loader, insightface=["18", 0])
    prompt["18"] = {"inputs": {}, "class_type": "SomeoneElsesInsightFaceLoader"}
    converted, report = convert_workflow(prompt)
    face = next(e for e in converted.values() if e["class_type"] == "ExactEncodeFaceImagePrompt")
    assert face["inputs"]["insightface"] == ["18", 0] and report.unconvertible == []  # a link of another pack is kept as it is
    prompt = faceid_prompt({"inputs": {"preset": "FACEID", "lora_strength": 0.5, "provider": "CPU", "model": ["4", 0]},
                            "class_type": "IPAdapterUnifiedLoaderFaceID"}, ipadapter=["11", 1], model=["11", 0])
    converted, report = convert_workflow(prompt)
    face = next(e for e in converted.values() if e["class_type"] == "ExactEncodeFaceImagePrompt")
    insightface = next(k for k, e in converted.items() if e["class_type"] == "ExactLoadInsightFace" and k != "13")
    assert face["inputs"]["insightface"] == [insightface, 0] and converted["16"]["inputs"]["lora_strength"] == 0.5


def edit(workflow: dict, node_id: int, **widgets) -> dict:
    workflow = copy.deepcopy(workflow)
    node = by_id(workflow)[node_id]
    values = LEADING_NODES[node["type"]].widget_values(node["widgets_values"])
    values.update(widgets)
    node["widgets_values"] = [values[w.name] for w in LEADING_NODES[node["type"]].widgets()]
    return workflow


def test_a_node_that_cannot_convert_does_not_stop_the_rest():
    workflow = edit(load("advanced_unified"), 16, weight_type="style transfer precise")
    converted, report = convert_workflow(workflow)
    assert [(u["id"], u["type"]) for u in report.unconvertible] == [(16, "IPAdapterAdvanced")]
    assert "'style transfer precise' has no equivalent" in report.unconvertible[0]["reason"]
    assert by_id(converted)[11]["type"] == "ExactLoadIPAdapterPreset" and by_id(converted)[16]["type"] == "IPAdapterAdvanced"
    assert_consistent(converted)


def test_without_a_clip_vision_source_the_apply_node_stays():
    workflow = load("advanced_unified")
    loader = by_id(workflow)[11]
    loader["type"] = "IPAdapterUnifiedLoaderCommunity"  # a loader that does not convert: no CLIP vision to take
    loader["widgets_values"] = ["Composition"]
    converted, report = convert_workflow(workflow)
    reasons = {u["type"]: u["reason"] for u in report.unconvertible}
    assert "needs a CLIP vision model" in reasons["IPAdapterAdvanced"]
    assert by_id(converted)[13]["type"] == "ExactPrepareImageForClip"


def test_weights_feeding_a_node_that_uses_one_value_stay():
    workflow = load("batch_weights")
    by_id(workflow)[19]["type"] = "IPAdapterAdvanced"
    by_id(workflow)[19]["widgets_values"] = [1, "linear", "concat", 0, 1, "V only"]
    _, report = convert_workflow(workflow)
    assert {u["type"] for u in report.unconvertible} == {"IPAdapterAdvanced", "IPAdapterWeights"}


@pytest.mark.parametrize("widgets, reason", [
    ({"blur": 3}, "blur has no equivalent"),
])
def test_noise_that_has_no_equivalent(widgets, reason):
    _, report = convert_workflow(edit(load("advanced_unified"), 14, **widgets))
    assert report.unconvertible[0]["type"] == "IPAdapterNoise" and reason in report.unconvertible[0]["reason"]


@pytest.mark.parametrize("timing, curve", [
    ("linear", lambda t: t),
    ("ease_in_out", lambda t: (1 - math.cos(math.pi * t)) / 2),
    ("ease_in", lambda t: math.sin(math.pi * t / 2)),
    ("ease_out", lambda t: 1 - math.cos(math.pi * t / 2)),
])
def test_frame_weights_are_the_leading_packs_curves(timing, curve):
    """IPAdapter Weights: from the first to the last value over end_frame - start_frame frames, held outside."""
    values = leading_frame_weights("0.2, 0.5, 1.0", timing, frames=8, start_frame=2, end_frame=6)
    expected = [0.2, 0.2] + [0.2 + 0.8 * curve(i / 3) for i in range(4)] + [1.0, 1.0]
    assert values == pytest.approx(expected, abs=1e-12) and values[5] == 1.0
    assert leading_frame_weights("1, 0.5\n0.25", "custom", 0, 0, 9999) == [1.0, 0.5, 0.25]
    assert leading_frame_weights("", "linear", 0, 0, 9999) == [0.0, 1.0]  # at least 2 frames, from 0 to 1


def test_api_format_converts_like_the_ui_format(pack, object_info):
    """Converting the queued prompt gives what queueing the converted workflow gives."""
    from tools.workflow_api import ui_to_api

    for name in ("advanced_unified", "batch_weights", "faceid_unified"):
        converted_api, report = convert_workflow(json.loads((FIXTURES / f"{name}_api.json").read_text()))
        converted_ui, _ = convert_workflow(load(name))
        assert report.format == "api" and report.unconvertible == []
        assert converted_api == ui_to_api(converted_ui, object_info)


def test_converting_twice_changes_nothing():
    converted, _ = convert_workflow(load("weighted_embeds"))
    again, report = convert_workflow(converted)
    assert again == converted and report.converted == [] and report.lines()[0].startswith("Converted 0 node(s)")


def test_not_a_workflow():
    with pytest.raises(IPAdapterError, match="not a ComfyUI workflow"):
        convert_workflow({"something": 1})


def test_command_line(tmp_path, caplog):
    caplog.set_level("INFO", logger="ipadapter_core.convert")
    out, report = tmp_path / "out.json", tmp_path / "report.json"
    assert main([str(FIXTURES / "mixed_unconvertible.json"), str(out), "--report", str(report)]) == 0
    assert json.loads(out.read_text()) == convert_workflow(load("mixed_unconvertible"))[0]
    assert {u["type"] for u in json.loads(report.read_text())["unconvertible"]} == {"IPAdapterFaceIDKolors"}
    assert "  IPAdapterTiled #13 -> ExactIPAdapterTiled" in caplog.messages
    (tmp_path / "bad.json").write_text("{\"nodes\": 3}")
    assert main([str(tmp_path / "bad.json"), str(out)]) == 2


def test_the_leading_table_lists_every_node_of_that_pack():
    assert set(LEADING_NODES) == LEADING_IDS


# --- the description of this pack's nodes, against the nodes -----------------------------------------


@pytest.fixture(scope="module")
def object_info(pack) -> dict:
    return object_info_in_process()


@pytest.mark.parametrize("node_type", sorted(OUR_NODES))
def test_our_node_description_matches_the_node(object_info, node_type):
    from tools.workflow_api import NOT_SENT, ordered_inputs, widgets

    spec, live = OUR_NODES[node_type], object_info[node_type]
    saved = [(name, default) for name, default in widgets(live)]
    described = []
    for widget in spec.widgets():
        described.append((widget.name, widget.initial))
        if widget.control:
            described.append((NOT_SENT, None))
    assert [(n, d) for n, d in saved if n is not NOT_SENT] == [(n, d) for n, d in described if n is not NOT_SENT]
    assert len(saved) == len(described)
    optional = set(live["input"].get("optional", {}))
    links = [(name, kind, name in optional) for name, (kind, options) in ordered_inputs(live) if not isinstance(kind, list) and kind not in
             ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
    assert links == [(i.name, i.type, i.optional) for i in spec.links()]
    assert list(zip(live["output_name"], live["output"])) == list(spec.outputs)
    assert live["display_name"] == DISPLAY_NAMES[node_type]
    for widget in spec.widgets():
        kind = dict(ordered_inputs(live))[widget.name][0]
        if widget.choices and isinstance(kind, list):
            assert set(widget.choices) <= set(kind), widget.name
