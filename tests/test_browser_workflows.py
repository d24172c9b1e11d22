"""The shipped workflows, used as people use them: dropped on the real ComfyUI page, queued from it.

A real server (main.py --cpu on loopback) runs with the pack installed as ComfyUI Manager installs
it and the embedded default models; headless Chromium opens the real frontend. Each workflow file
is dropped on the page and must load without a missing-node or error dialog, with every node of
ours showing all its widgets and every link intact, and must convert to the same prompt the
headless tools send. Queued from the page, it must produce images of the right size that differ
from the same graph with the IP-Adapter weights at 0. Bad graphs must show their error in the page
and leave the server serving. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.browser import ComfyPage, chromium
from tools.comfy_server import PACK_FOLDER, ComfyServer, PromptFailed
from tools.embedded_models import build_embedded_models
from tools.workflow_api import NOT_SENT, shrink_for_cpu, ui_to_api, widgets

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / "workflows"
ARTIFACTS = REPO / "tests" / "artifacts"
PACK_MODULE = f"custom_nodes.{PACK_FOLDER}"
RUN_TIMEOUT = 600
# What each workflow's Save Image node writes: (width, height, number of images).
OUTPUTS = {
    "image_variation": (256, 256, 1),
    "image_and_text": (256, 256, 1),
    "controlnet": (256, 256, 1),
    "lora": (256, 256, 1),
    "img2img": (256, 256, 1),
    "inpainting": (256, 256, 1),
    "two_regions": (256, 256, 1),
    "style_composition_sdxl": (256, 256, 1),
    "two_references": (256, 256, 1),
    "negative_image": (256, 256, 1),
    "prepare_reference": (256, 256, 1),
    "weight_schedule": (256, 256, 4),
    "load_image_prompt": (256, 256, 1),
    "layer_weights": (256, 256, 1),
    "wide_reference": (256, 256, 1),
    "unfold_batch": (256, 256, 2),
    "face_identity": (256, 256, 1),
    "flux_ipadapter": (256, 256, 1),
    "sd35_ipadapter": (256, 256, 1),
}
SAVE_PROMPT = "save_image_prompt"  # writes an .imageprompt file, no image
WEIGHT_WIDGETS = {"ExactApplyIPAdapter": ("weight", "composition_weight"), "ExactIPAdapter": ("weight",)}


def workflow_path(name: str) -> Path:
    return WORKFLOWS_DIR / f"{name}.json"


# Flux's text encoder cannot be embedded small: every Flux loader builds T5-XXL from a fixed 4.7B-parameter
# config (tools.embedded_models). Run from the page, the Flux workflow therefore loads CLIP-L alone (the
# embedded Flux reads 768-wide text tokens); every other node runs as shipped. Loading it in the page
# checks the file exactly as shipped.
TEXT_ENCODER_SWAPS = {"flux_ipadapter": ("DualCLIPLoader", "CLIPLoader", ["clip_l.safetensors", "stable_diffusion", "default"])}


def load(name: str, object_info: dict) -> dict:
    """The workflow as shipped, with image size and steps capped for a CPU (tools.workflow_api.CPU_LIMITS)."""
    return shrink_for_cpu(json.loads(workflow_path(name).read_text()), object_info)


def runnable(name: str, object_info: dict) -> dict:
    """What the run tests drop: the shipped workflow, with TEXT_ENCODER_SWAPS applied."""
    workflow = load(name, object_info)
    if name in TEXT_ENCODER_SWAPS:
        shipped, embedded, values = TEXT_ENCODER_SWAPS[name]
        (loader,) = [n for n in workflow["nodes"] if n["type"] == shipped]
        loader.update(type=embedded, widgets_values=values, properties={**loader["properties"], "Node name for S&R": embedded})
    return workflow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ComfyServer]:
    """One server for the module. Nobody copies the workflows' images into its input folder: the pack
    does when the server loads it. A saved image prompt is put there as a user would."""
    models = build_embedded_models()
    base = tmp_path_factory.mktemp("comfyui-browser")
    with ComfyServer(base, models, install="copy") as running:
        provide_saved_image_prompt(running, base)
        yield running


def provide_saved_image_prompt(server: ComfyServer, base: Path) -> None:
    """What a user does before load_image_prompt.json: run save_image_prompt.json, move its file to input/.

    Done before the page opens, because the frontend lists the input files when it loads.
    """
    object_info = server.object_info()
    history = server.wait(server.queue(ui_to_api(load(SAVE_PROMPT, object_info), object_info)), timeout=RUN_TIMEOUT)
    (saved,) = [ref for node in history["outputs"].values() for ref in node.get("image_prompts", [])]
    loader = next(n for n in load("load_image_prompt", object_info)["nodes"] if n["type"] == "ExactLoadImagePrompt")
    shutil.copy2(base / "output" / saved["subfolder"] / saved["filename"], base / "input" / loader["widgets_values"][0])


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.object_info()


@pytest.fixture(scope="module")
def comfy_page(server) -> Iterator[ComfyPage]:
    with chromium() as context:
        page = ComfyPage(context.new_page(), server.url)
        page.open()
        yield page


@pytest.fixture
def ui(comfy_page) -> ComfyPage:
    """The page with no dialog left open by an earlier test."""
    comfy_page.close_dialogs()
    comfy_page.page_errors.clear()
    return comfy_page


def drop(page: ComfyPage, name: str, object_info: dict, to_run: bool = False) -> dict:
    workflow = runnable(name, object_info) if to_run else load(name, object_info)
    page.drop_workflow(json.dumps(workflow), workflow_path(name).name)
    return page.graph_state()


def test_every_workflow_file_is_covered():
    assert {p.stem for p in WORKFLOWS_DIR.glob("*.json")} == {*OUTPUTS, SAVE_PROMPT}


@pytest.mark.parametrize("name", [*OUTPUTS, SAVE_PROMPT])
def test_workflow_loads_in_the_page(name, ui, object_info):
    workflow = load(name, object_info)
    state = drop(ui, name, object_info)
    ui.screenshot(ARTIFACTS / f"{name}.png")

    assert ui.visible_dialogs() == [] and ui.page_errors == []
    nodes = {node["id"]: node for node in state["nodes"]}
    assert {n["id"]: n["type"] for n in workflow["nodes"]} == {i: n["type"] for i, n in nodes.items()}
    assert_links_intact(workflow, state)
    ours = [node for node in workflow["nodes"] if object_info.get(node["type"], {}).get("python_module") == PACK_MODULE]
    assert ours, f"{name} uses no node of the pack"
    for saved in ours:
        assert_shows_all_widgets(saved, nodes[saved["id"]], object_info[saved["type"]])
    assert_no_overlaps(state)
    assert_described(ui.node_definitions(), {n["type"] for n in ours})
    # The frontend's own conversion and the headless one (tools.workflow_api) send the same prompt.
    assert ui.graph_to_prompt() == ui_to_api(workflow, object_info)


def assert_links_intact(workflow: dict, state: dict) -> None:
    assert sorted(map(tuple, workflow["links"])) == sorted(map(tuple, state["links"]))
    for saved in workflow["nodes"]:
        live = next(n for n in state["nodes"] if n["id"] == saved["id"])
        saved_inputs = {slot["name"]: slot.get("link") for slot in saved.get("inputs", [])}
        live_inputs = {slot["name"]: slot["link"] for slot in live["inputs"]}
        assert {k: v for k, v in live_inputs.items() if v is not None} == {k: v for k, v in saved_inputs.items() if v is not None}


def assert_shows_all_widgets(saved: dict, live: dict, definition: dict) -> None:
    """Every widget object_info implies, with the saved value, and a node big enough to draw them.

    Widgets of inputs added to a node after the file was saved show their defaults, as in any
    older workflow a user loads.
    """
    expected = widgets(definition)
    names = [name for name, _ in live["widgets"]]
    assert len(names) == len(expected) and all(e is NOT_SENT or e == n for (e, _), n in zip(expected, names)), (saved["type"], names, expected)
    values = [value for _, value in live["widgets"]]
    stored = saved.get("widgets_values", [])
    assert values[:len(stored)] == stored, saved["type"]
    assert values[len(stored):] == [default for _, default in expected[len(stored):]], saved["type"]
    assert live["size"][0] >= live["min_size"][0] and live["size"][1] >= live["min_size"][1], (saved["type"], live["size"], live["min_size"])


def assert_no_overlaps(state: dict) -> None:
    """No node hides part of another (title bars included)."""
    title = state["title_height"]
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in state["nodes"]]
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"


def assert_described(definitions: dict, types: set[str]) -> None:
    """What the page shows on hover: a description per node and a tooltip per input."""
    for node_type in types:
        definition = definitions[node_type]
        assert definition["description"], node_type
        untipped = [name for name, spec in definition["inputs"].items() if not spec.get("tooltip")]
        assert not untipped, f"{node_type}: inputs without tooltip: {untipped}"


@pytest.mark.parametrize("name", OUTPUTS)
def test_workflow_runs_from_the_page(name, ui, server, object_info):
    state = drop(ui, name, object_info, to_run=True)
    images = run_from_page(ui, server)
    width, height, count = OUTPUTS[name]
    assert [(image.format, image.size) for image in images] == [("PNG", (width, height))] * count
    ui.screenshot(ARTIFACTS / f"{name}-result.png")

    zeroed = 0
    for node in state["nodes"]:
        for widget in WEIGHT_WIDGETS.get(node["type"], ()):
            if any(w == widget for w, _ in node["widgets"]):
                ui.set_widget(node["id"], widget, 0.0)
                zeroed += 1
    assert zeroed, f"{name} has no IP-Adapter weight to set to 0"
    without = run_from_page(ui, server)
    assert [image.size for image in without] == [(width, height)] * count
    difference = np.mean([np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(images, without)])
    assert difference > 1.0, f"{name}: weight 0 gives nearly the same images (mean difference {difference:.3f} / 255)"


def run_from_page(ui: ComfyPage, server: ComfyServer) -> list[Image.Image]:
    """Queue from the page, wait through the server's /history, fetch the saved images from /view."""
    status, answer = ui.queue()
    assert status == 200 and not answer.get("node_errors"), answer
    history = server.wait(answer["prompt_id"], timeout=RUN_TIMEOUT)
    saved = [ref for ref in server.output_images(history) if ref["type"] == "output"]
    assert saved, "the workflow saved no image"
    return [Image.open(io.BytesIO(server.fetch(ref))) for ref in saved]


def test_save_image_prompt_from_the_page(ui, server, object_info):
    drop(ui, SAVE_PROMPT, object_info)
    status, answer = ui.queue()
    assert status == 200, answer
    history = server.wait(answer["prompt_id"], timeout=RUN_TIMEOUT)
    (saved,) = [ref for node in history["outputs"].values() for ref in node.get("image_prompts", [])]
    assert saved["filename"].endswith(".imageprompt") and saved["subfolder"] == "image_prompts"
    assert len(server.fetch(saved)) > 1000  # served by /view like an image


def test_missing_model_file_shows_the_validation_error(ui, server, object_info):
    drop(ui, "image_variation", object_info)
    ui.set_widget(2, "ipadapter_file", "ip-adapter_sd15_light.safetensors")  # node 2: Load IP-Adapter; not installed
    status, answer = ui.queue()
    assert status == 400 and "2" in answer["node_errors"]
    message = ui.wait_for_dialog("ip-adapter_sd15_light.safetensors")
    assert "Value not in list" in message
    assert ui.page.evaluate("Object.keys(app.lastNodeErrors ?? {})") == ["2"]  # the node is outlined in red
    ui.screenshot(ARTIFACTS / "error-missing-model.png", fit=False)


def test_wrong_adapter_shows_the_execution_error_and_the_server_serves_on(ui, server, object_info):
    drop(ui, "image_variation", object_info)
    ui.set_widget(2, "ipadapter_file", "ip-adapter-plus_sdxl_vit-h.safetensors")  # an SDXL adapter on the SD1.5 model
    status, answer = ui.queue()
    assert status == 200, answer
    with pytest.raises(PromptFailed) as failed:
        server.wait(answer["prompt_id"], timeout=RUN_TIMEOUT)
    exception = failed.value.details["exception_message"]
    assert "SDXL" in exception
    ui.wait_for_dialog(exception.strip().splitlines()[0][:60])
    assert ui.page.evaluate("app.lastExecutionError?.node_id") == "8"  # Apply IP-Adapter, marked on the canvas
    ui.screenshot(ARTIFACTS / "error-wrong-adapter.png", fit=False)

    ui.close_dialogs()
    drop(ui, "image_variation", object_info)
    (image,) = run_from_page(ui, server)
    assert image.size == (256, 256)


TEMPLATE_CARD_IMAGE_JS = """
(name) => {
  const image = document.querySelector(`[data-testid="template-workflow-${name}"] img`);
  return image && image.complete ? [image.getAttribute('src'), image.naturalWidth] : null;
}
"""


def test_the_template_browser_shows_every_workflow_with_its_thumbnail(ui, object_info):
    """Templates → Extensions → the pack's folder (read from workflows/): a card per workflow with its
    picture, and a click opens the workflow with its example images already in the input folder."""
    shipped = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
    page = ui.page
    page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(PACK_FOLDER, exact=True).first.click()
    cards = page.locator('[data-testid^="template-workflow-"]')
    cards.first.wait_for(timeout=ui.timeout_ms)
    ui.screenshot(ARTIFACTS / "template-browser.png", fit=False)
    names = sorted(card.get_attribute("data-testid").removeprefix("template-workflow-") for card in cards.all())
    assert names == shipped
    for name in shipped:  # the cards load their pictures when scrolled into view
        page.locator(f'[data-testid="template-workflow-{name}"]').scroll_into_view_if_needed()
        page.wait_for_function(f"({TEMPLATE_CARD_IMAGE_JS})({json.dumps(name)})?.[1] > 0", timeout=ui.timeout_ms)
        source, width = page.evaluate(TEMPLATE_CARD_IMAGE_JS, name)
        assert "default-template" not in source and width == 512, (name, source, width)

    before = ui.active_workflow()
    page.locator('[data-testid="template-workflow-two_regions"]').click()
    page.wait_for_function(
        f"window.app.extensionManager.workflow.activeWorkflow?.key !== {json.dumps(before)} && !window.app.configuringGraph",
        timeout=ui.timeout_ms,
    )
    page.wait_for_function(
        "app.graph.nodes.filter(n => n.type === 'LoadImage' || n.type === 'LoadImageMask').every(n => n.imgs?.[0]?.complete && n.imgs[0].naturalWidth > 0)",
        timeout=ui.timeout_ms,
    )
    ui.screenshot(ARTIFACTS / "template-two_regions.png")
    assert ui.visible_dialogs() == [] and ui.page_errors == []
    workflow = load("two_regions", object_info)
    assert sorted(n["type"] for n in ui.graph_state()["nodes"]) == sorted(n["type"] for n in workflow["nodes"])
