"""The shipped workflow, run the way users run it: a real ComfyUI server with the pack in custom_nodes/.

The server gets the embedded default models (random weights under the real file names) and the
pack as ComfyUI Manager installs it (a copy of the repository's files), and is driven over its
HTTP API with workflows/image_variation.json converted by tools.workflow_api. The conversion
itself is unit-tested against node definitions built in-process from the same node classes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import object_info_in_process
from tools.comfy_server import ComfyServer, PromptFailed, PromptRejected
from tools.embedded_models import CHECKPOINT, CLIP_VISION, IPADAPTER, build_embedded_models, files_used_by
from tools.workflow_api import shrink_for_cpu, ui_to_api

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "image_variation.json"
APPLY_NODE = 8  # ids in image_variation.json
SAMPLER_NODE = 10


def load_workflow() -> dict:
    return json.loads(WORKFLOW.read_text())


def node(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def add_link(workflow: dict, origin: int, origin_slot: int, target: int, target_slot: int, kind: str) -> None:
    link_id = workflow["last_link_id"] = workflow["last_link_id"] + 1
    workflow["links"].append([link_id, origin, origin_slot, target, target_slot, kind])
    node(workflow, target)["inputs"][target_slot]["link"] = link_id


@pytest.fixture(scope="module")
def object_info(pack) -> dict:
    return object_info_in_process()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = build_embedded_models()
    base = tmp_path_factory.mktemp("comfyui-base")  # the pack puts reference.png into its input folder
    with ComfyServer(base, models, install="copy") as running:
        yield running


def run(server: ComfyServer, workflow: dict) -> bytes:
    object_info = server.object_info()
    history = server.wait(server.queue(ui_to_api(shrink_for_cpu(workflow, object_info), object_info)), timeout=900)
    images = server.output_images(history)
    assert len(images) == 1 and images[0]["filename"].startswith("ipadapter_image_variation")
    return server.fetch(images[0])


def test_shipped_workflow_converts_to_the_expected_prompt(object_info):
    prompt = ui_to_api(load_workflow(), object_info)

    assert {k: v["class_type"] for k, v in prompt.items()} == {
        "1": "CheckpointLoaderSimple", "2": "ExactLoadIPAdapter", "3": "CLIPVisionLoader", "4": "LoadImage",
        "5": "CLIPTextEncode", "6": "CLIPTextEncode", "7": "ExactEncodeImagePrompt", "8": "ExactApplyIPAdapter",
        "9": "EmptyLatentImage", "10": "KSampler", "11": "VAEDecode", "12": "SaveImage",
    }  # the Note (13) is frontend-only
    assert prompt["10"]["inputs"] == {
        "seed": 1234, "steps": 25, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["8", 0], "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["9", 0],
    }  # "fixed" (control after generate) is not sent
    apply_inputs = {name: prompt["8"]["inputs"][name] for name in ("weight", "start_at", "end_at", "model", "ipadapter", "image_prompt")}
    assert apply_inputs == {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, "model": ["1", 0], "ipadapter": ["2", 0], "image_prompt": ["7", 0]}
    encode_links = {name: value for name, value in prompt["7"]["inputs"].items() if isinstance(value, list)}
    assert encode_links == {"ipadapter": ["2", 0], "clip_vision": ["3", 0], "image": ["4", 0]}  # negative_image unconnected
    assert prompt["4"]["inputs"] == {"image": "reference.png"}  # the upload button's "image" is not sent
    assert prompt["2"]["inputs"] == {"ipadapter_file": "ip-adapter_sd15.safetensors"}
    assert prompt["9"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    assert prompt["5"]["_meta"] == {"title": "Positive prompt"} and prompt["8"]["_meta"] == {"title": "Apply IP-Adapter"}


def test_the_demo_builds_only_the_models_its_workflow_names():
    """make demo builds these three files, not the SDXL checkpoint or the ControlNet other workflows use."""
    assert files_used_by(load_workflow()) == [CHECKPOINT, CLIP_VISION, IPADAPTER]


def test_shrink_for_cpu_caps_size_and_steps(object_info):
    prompt = ui_to_api(shrink_for_cpu(load_workflow(), object_info), object_info)
    assert prompt["9"]["inputs"] == {"width": 256, "height": 256, "batch_size": 1}
    assert prompt["10"]["inputs"]["steps"] == 4 and prompt["10"]["inputs"]["cfg"] == 7.5
    assert load_workflow() == json.loads(WORKFLOW.read_text())  # the shipped file is untouched


def test_widgets_missing_from_an_older_workflow_send_their_defaults(object_info):
    workflow = load_workflow()
    node(workflow, SAMPLER_NODE)["widgets_values"] = [7, "fixed", 3]  # saved before cfg, sampler_name... existed
    inputs = ui_to_api(workflow, object_info)["10"]["inputs"]
    samplers, schedulers = (object_info["KSampler"]["input"]["required"][name][0] for name in ("sampler_name", "scheduler"))
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["denoise"]) == (7, 3, 8.0, 1.0)
    assert (inputs["sampler_name"], inputs["scheduler"]) == (samplers[0], schedulers[0])


def test_bypassed_muted_and_reroute_nodes(object_info):
    workflow = load_workflow()
    node(workflow, APPLY_NODE)["mode"] = 4  # bypassed: KSampler gets the checkpoint's MODEL
    prompt = ui_to_api(workflow, object_info)
    assert "8" not in prompt and prompt["10"]["inputs"]["model"] == ["1", 0]

    workflow = load_workflow()
    node(workflow, 7)["mode"] = 4  # a bypassed EncodeImagePrompt has no IMAGE_PROMPT input to pass on
    prompt = ui_to_api(workflow, object_info)
    assert "7" not in prompt and "image_prompt" not in prompt["8"]["inputs"] and prompt["8"]["inputs"]["model"] == ["1", 0]

    workflow = load_workflow()
    reroute = {"id": 20, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": None}],
               "outputs": [{"name": "", "type": "LATENT", "links": []}], "properties": {}}
    workflow["nodes"].append(reroute)
    add_link(workflow, 9, 0, 20, 0, "LATENT")
    add_link(workflow, 20, 0, SAMPLER_NODE, 3, "LATENT")
    node(workflow, 11)["mode"] = 2  # muted VAEDecode: neither it nor SaveImage's link to it is sent
    prompt = ui_to_api(workflow, object_info)
    assert "20" not in prompt and prompt["10"]["inputs"]["latent_image"] == ["9", 0]
    assert "11" not in prompt and "images" not in prompt["12"]["inputs"]


def test_widgets_turned_into_sockets(object_info):
    # PrimitiveInt is a comfy_extras node, which the in-process object_info lacks; this is its definition.
    info = {**object_info, "PrimitiveInt": {"input": {"required": {"value": ["INT", {"control_after_generate": True}]}}, "display_name": "Int"}}
    workflow = load_workflow()
    sampler = node(workflow, SAMPLER_NODE)
    sampler["inputs"] += [{"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None},
                          {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": None}]
    workflow["nodes"] += [
        {"id": 21, "type": "PrimitiveInt", "mode": 0, "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": []}],
         "widgets_values": [99, "fixed"]},
        # The frontend's own PrimitiveNode writes its value into the target widget, which is saved there.
        {"id": 22, "type": "PrimitiveNode", "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [], "widget": {"name": "steps"}}], "widgets_values": [25, "fixed"]},
    ]
    add_link(workflow, 21, 0, SAMPLER_NODE, 4, "INT")
    add_link(workflow, 22, 0, SAMPLER_NODE, 5, "INT")
    prompt = ui_to_api(workflow, info)
    assert prompt["10"]["inputs"]["seed"] == ["21", 0] and prompt["10"]["inputs"]["steps"] == 25
    assert prompt["21"] == {"inputs": {"value": 99}, "class_type": "PrimitiveInt", "_meta": {"title": "Int"}}
    assert "22" not in prompt


@pytest.mark.slow
def test_server_lists_the_pack_nodes(server):
    info = server.object_info()
    assert info["ExactApplyIPAdapter"]["python_module"] == "custom_nodes.comfyui-ipadapter"  # the installed copy
    assert "ip-adapter_sd15.safetensors" in info["ExactLoadIPAdapter"]["input"]["required"]["ipadapter_file"][1]["options"]
    assert info["ExactLoadIPAdapter"]["output"] == ["EXACT_IPADAPTER"]
    assert info["ExactEncodeImagePrompt"]["input_order"]["required"] == ["ipadapter", "clip_vision", "image"]
    assert "negative_image" in info["ExactEncodeImagePrompt"]["input_order"]["optional"]
    assert info["ExactEncodeImagePrompt"]["output"] == ["EXACT_IMAGE_PROMPT"]
    assert info["ExactApplyIPAdapter"]["input_order"]["required"] == ["model", "ipadapter", "image_prompt", "weight", "start_at", "end_at"]
    assert info["ExactApplyIPAdapter"]["output"] == ["MODEL"]
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0]
    assert b"<div id=\"vue-app\"" in server.request("/")  # the frontend is served, for checks in a browser


@pytest.mark.slow
def test_image_variation_runs_and_the_weight_matters(server):
    with_adapter = Image.open(io.BytesIO(run(server, load_workflow())))
    assert with_adapter.format == "PNG" and with_adapter.size == (256, 256)

    without = load_workflow()
    node(without, APPLY_NODE)["widgets_values"][0] = 0.0
    without_adapter = Image.open(io.BytesIO(run(server, without)))
    assert without_adapter.size == (256, 256)
    difference = np.abs(np.asarray(with_adapter, dtype=float) - np.asarray(without_adapter, dtype=float)).mean()
    assert difference > 1.0, f"weight 0 and weight 1 give nearly the same image (mean difference {difference:.3f} / 255)"


@pytest.mark.slow
def test_server_reports_validation_and_execution_errors(server):
    missing = load_workflow()
    node(missing, 2)["widgets_values"] = ["missing.safetensors"]
    with pytest.raises(PromptRejected) as rejected:
        server.queue(ui_to_api(missing, server.object_info()))
    assert "2" in rejected.value.node_errors

    reversed_range = load_workflow()
    node(reversed_range, APPLY_NODE)["widgets_values"] = [1.0, 0.8, 0.2]
    with pytest.raises(PromptFailed, match="start_at"):
        server.wait(server.queue(ui_to_api(reversed_range, server.object_info())), timeout=900)
