"""Adopting the pack beside ComfyUI_IPAdapter_plus, in a real ComfyUI server and its web page.

One server (to load the models once) with this pack, installed as ComfyUI Manager installs it,
and a stand-in registering the leading pack's node ids, socket types and model folder
(tests/leading_standin.py). Both packs' nodes must stay registered with their own types, our
workflows must run, and so must converted ones: an API-format prompt converted by the core, and
a UI workflow dropped on the page and converted in place by the Edit menu's "Convert
ComfyUI_IPAdapter_plus nodes", then queued from the page.
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
from pathlib import Path

import pytest
from PIL import Image

from ipadapter_core.convert import convert_workflow
from ipadapter_core.convert.leading import LEADING_NODES, SOCKET_TYPES
from leading_standin import FOLDER as STANDIN_FOLDER
from leading_standin import write_standin
from tools.browser import ComfyPage, chromium
from tools.comfy_server import PACK_FOLDER, ComfyServer
from tools.embedded_models import build_embedded_models
from tools.workflow_api import shrink_for_cpu, ui_to_api

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "leading"
ARTIFACTS = REPO / "tests" / "artifacts"
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def beside(tmp_path_factory):
    models = build_embedded_models()
    base = tmp_path_factory.mktemp("beside-leading")
    (base / "input").mkdir()
    for image in (REPO / "workflows").glob("*.png"):
        shutil.copy2(image, base / "input" / image.name)
    write_standin(base / "custom_nodes")
    with ComfyServer(base, models, install="copy") as server:
        yield server


def run(server: ComfyServer, prompt: dict) -> list[Image.Image]:
    history = server.wait(server.queue(prompt), timeout=RUN_TIMEOUT)
    return [Image.open(io.BytesIO(server.fetch(ref))) for ref in server.output_images(history) if ref["type"] == "output"]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_both_packs_keep_every_node_and_type(beside, pack):
    from tools.comfy_host import pack_nodes

    info = beside.object_info()
    leading = {name for name, entry in info.items() if entry["python_module"] == f"custom_nodes.{STANDIN_FOLDER}"}
    ours = {name for name, entry in info.items() if entry["python_module"] == f"custom_nodes.{PACK_FOLDER}"}
    assert leading == set(LEADING_NODES) and ours == set(pack_nodes())
    for name, spec in LEADING_NODES.items():
        assert info[name]["output"] == [kind for _, kind in spec.outputs], name
    our_types = {kind for name in ours for kind in info[name]["output"]}
    our_types |= {spec[0] for name in ours for group in info[name]["input"].values() for spec in group.values() if isinstance(spec[0], str)}
    assert not our_types & set(SOCKET_TYPES)
    assert "EXACT_IPADAPTER" in our_types and "IPADAPTER" not in our_types
    log = beside.log_path.read_text()
    assert "IMPORT FAILED" not in "".join(line for line in log.splitlines() if STANDIN_FOLDER in line or PACK_FOLDER in line)
    # One models/ipadapter folder serves both packs, whichever registered it last.
    assert "ip-adapter_sd15.safetensors" in info["IPAdapterModelLoader"]["input"]["required"]["ipadapter_file"][0]
    assert "ip-adapter_sd15.safetensors" in info["ExactLoadIPAdapter"]["input"]["required"]["ipadapter_file"][1]["options"]


def test_our_workflow_runs_beside_it(beside):
    info = beside.object_info()
    workflow = json.loads((REPO / "workflows" / "image_variation.json").read_text())
    (image,) = run(beside, ui_to_api(shrink_for_cpu(workflow, info), info))
    assert image.size == (256, 256)


def test_converted_faceid_workflow_runs(beside):
    """The API format, FaceID through IPAdapter Unified Loader FaceID: its preset is resolved from the weights of the
    files in models/ipadapter (the plusv2 file among CLIP adapters), its InsightFace and LoRA move to our nodes."""
    pytest.importorskip("insightface")  # requirements-faceid.txt, installed in CI
    converted, report = convert_workflow(fixture("faceid_unified_api"))
    assert report.unconvertible == [] and not {entry["class_type"] for entry in converted.values()} & set(LEADING_NODES)
    for entry in converted.values():  # what shrink_for_cpu does to the UI format
        if entry["class_type"] == "EmptyLatentImage":
            entry["inputs"].update(width=256, height=256)
        if entry["class_type"] == "KSampler":
            entry["inputs"]["steps"] = 4
    prompt_id = beside.queue(converted)
    history = beside.wait(prompt_id, timeout=RUN_TIMEOUT)
    images = {ref["type"]: Image.open(io.BytesIO(beside.fetch(ref))).size for ref in beside.output_images(history)}
    assert images == {"output": (256, 256), "temp": (224, 224)}  # the image, and the aligned face crop previewed


def test_route_refuses_what_is_not_a_workflow(beside):
    with pytest.raises(urllib.error.HTTPError) as refused:
        beside.request("/exact_ipadapter/convert", {"workflow": {"nodes": 3}})
    assert refused.value.code == 400 and "not a ComfyUI workflow" in json.loads(refused.value.read())["error"]
    answer = json.loads(beside.request("/exact_ipadapter/convert", {"workflow": fixture("mixed_unconvertible")}))
    assert answer["workflow"] == convert_workflow(fixture("mixed_unconvertible"))[0]
    assert [u["type"] for u in answer["report"]["unconvertible"]] == ["IPAdapterFaceIDKolors"]


# --- the web page ------------------------------------------------------------------------------------


def test_convert_from_the_menu_then_queue(beside):
    info = beside.object_info()
    workflow = shrink_for_cpu(fixture("advanced_unified"), info)
    with chromium() as context:
        page = ComfyPage(context.new_page(), beside.url)
        page.open()
        page.drop_workflow(json.dumps(workflow), "advanced_unified.json")
        page.page.wait_for_function("app.graph.nodes.some(n => n.type === 'IPAdapterAdvanced')", timeout=page.timeout_ms)
        page.close_dialogs()
        page.page.click(".comfy-menu-button-wrapper")
        page.page.get_by_role("menuitem", name="Edit").hover()
        page.page.get_by_role("menuitem", name="Convert ComfyUI_IPAdapter_plus nodes").click()
        page.page.wait_for_function("app.graph.nodes.some(n => n.type === 'ExactApplyIPAdapter')", timeout=page.timeout_ms)
        toast = page.page.locator(".p-toast-message").filter(has_text="IP-Adapter: converted 4 node(s)")
        toast.wait_for(timeout=page.timeout_ms)
        page.screenshot(ARTIFACTS / "leading-converted.png")

        expected, _ = convert_workflow(workflow)
        assert page.graph_to_prompt() == ui_to_api(expected, info)  # the page holds exactly the converted graph
        assert page.page.evaluate("app.extensionManager.workflow.activeWorkflow.isModified") is True
        assert page.active_workflow().endswith("advanced_unified.json")  # converted in place, in the same tab
        status, answer = page.queue()
        assert status == 200 and not answer.get("node_errors"), answer
        history = beside.wait(answer["prompt_id"], timeout=RUN_TIMEOUT)
        (saved,) = [ref for ref in beside.output_images(history) if ref["type"] == "output"]
        assert Image.open(io.BytesIO(beside.fetch(saved))).size == (256, 256)
        assert page.page_errors == []
