"""Installing the pack the way ComfyUI Manager does, then asking the server what it offers.

Manager clones the repository into custom_nodes/, installs its requirements.txt with the
interpreter that runs ComfyUI (and runs install.py if there is one), then restarts ComfyUI. The
Comfy Registry reads pyproject.toml. What users then see of the pack is what the server tells
the frontend: node names, categories, descriptions, inputs and their tooltips (/object_info),
each node's help page, and the workflow templates with their thumbnails and input images. A pack
that only works from a developer's checkout (an ignored file it needs, a dependency missing from
requirements.txt, an import error swallowed at start-up) fails here.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tools.comfy_host import pack_nodes
from tools.comfy_server import PACK_FOLDER, ComfyServer

REPO = Path(__file__).resolve().parents[1]
PACK_MODULE = f"custom_nodes.{PACK_FOLDER}"
CATEGORY = "ipadapter"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[ComfyServer]:
    """A server started after a Manager-style install into a fresh base directory (no models needed)."""
    server = ComfyServer(tmp_path_factory.mktemp("comfyui-manager"), install="copy")
    server.prepare_base_dir()  # the clone
    pack = server.base_dir / "custom_nodes" / PACK_FOLDER
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r", str(pack / "requirements.txt")],
                   check=True, capture_output=True)
    if (pack / "install.py").is_file():
        subprocess.run([sys.executable, "install.py"], cwd=pack, check=True, capture_output=True)
    with server:  # the restart
        yield server


def test_pyproject_has_what_the_registry_reads():
    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = metadata["project"]
    assert project["name"] == PACK_FOLDER  # the folder name custom_nodes/ gets, which workflows do not depend on but logs do
    assert all(project.get(key) for key in ("version", "description", "license"))
    assert {"PublisherId", "DisplayName", "Icon"} <= set(metadata["tool"]["comfy"])
    assert metadata["tool"]["comfy"]["PublisherId"] and metadata["tool"]["comfy"]["DisplayName"]
    assert (REPO / "requirements.txt").is_file()


@pytest.mark.slow
def test_the_server_imports_the_installed_copy(installed):
    """ComfyUI lists each custom node folder with its import time, marked IMPORT FAILED when it raised."""
    ours = [line for line in installed.log_path.read_text(errors="replace").splitlines() if f"custom_nodes/{PACK_FOLDER}" in line]
    assert ours and not any("IMPORT FAILED" in line or "Cannot import" in line for line in ours), installed.log_tail()


@pytest.mark.slow
def test_every_node_is_listed_with_its_inputs_and_help(installed, pack):
    info = installed.object_info()
    for name, cls in pack_nodes().items():
        assert name in info, f"{name} is missing from /object_info"
        listed = info[name]
        assert listed["python_module"] == PACK_MODULE
        assert listed["category"] == CATEGORY == cls.CATEGORY
        assert listed["display_name"] == cls.GET_SCHEMA().display_name
        assert listed["description"] and listed["description"] == cls.DESCRIPTION
        assert listed["output"] == list(cls.RETURN_TYPES)
        assert listed["output_name"] == list(cls.RETURN_NAMES)
        assert_inputs_listed(name, cls.INPUT_TYPES(include_hidden=False), listed)


def assert_inputs_listed(name: str, declared: dict, listed: dict) -> None:
    """Every declared input, in order, with its type and a tooltip (the frontend's hover help)."""
    for group in ("required", "optional"):
        specs = declared.get(group, {})
        assert listed["input_order"].get(group, []) == list(specs), (name, group)
        for input_name, spec in specs.items():
            kind, options = listed["input"][group][input_name][0], listed["input"][group][input_name][1]
            assert kind == spec[0] or (isinstance(spec[0], (list, tuple)) and isinstance(kind, list)), (name, input_name, kind)
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"


@pytest.mark.slow
def test_each_node_help_page_is_served_where_the_frontend_looks(installed):
    """The frontend asks /extensions/<pack folder>/docs/<node id>.md, the folder taken from python_module."""
    ours = {name: node for name, node in installed.object_info().items() if node["python_module"] == PACK_MODULE}
    assert ours
    for name, node in ours.items():
        folder = node["python_module"].split(".")[1].split("@")[0]  # as the frontend reads it
        page = installed.request(f"/extensions/{urllib.parse.quote(folder)}/docs/{name}.md").decode()
        assert page == (REPO / "web" / "docs" / f"{name}.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_workflow_is_a_template_with_a_thumbnail(installed):
    """The template browser lists /workflow_templates and loads <name>.json and the card picture <name>.jpg."""
    listed = json.loads(installed.request("/workflow_templates"))
    shipped = sorted(path.stem for path in (REPO / "workflows").glob("*.json"))
    assert sorted(listed[PACK_FOLDER]) == shipped
    for name in shipped:
        served = json.loads(installed.request(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json"))
        assert served == json.loads((REPO / "workflows" / f"{name}.json").read_text())
        thumbnail = Image.open(io.BytesIO(installed.request(f"/api/workflow_templates/{PACK_FOLDER}/{name}.jpg")))
        assert thumbnail.format == "JPEG" and thumbnail.size[0] == thumbnail.size[1] >= 256, name


@pytest.mark.slow
def test_the_templates_input_images_are_in_the_input_folder(installed, pack):
    """Load Image lists ComfyUI's input folder: the images the workflows load are put there at start-up."""
    from comfyui_ipadapter.nodes.example_inputs import images_used

    needed = images_used(REPO / "workflows")
    assert {path.name for path in needed} >= {"reference.png", "reference_2.png", "regions_mask.png"}
    for image in needed:
        assert (installed.base_dir / "input" / image.name).read_bytes() == image.read_bytes()


def test_example_images_never_replace_a_users_file(pack, tmp_path, caplog):
    from comfyui_ipadapter.nodes.example_inputs import images_used, provide_example_inputs

    needed = images_used(REPO / "workflows")
    (tmp_path / "reference.png").write_bytes(b"the user's own image")
    copied = provide_example_inputs(tmp_path, REPO / "workflows")
    assert sorted(path.name for path in copied) == sorted(path.name for path in needed if path.name != "reference.png")
    assert (tmp_path / "reference.png").read_bytes() == b"the user's own image"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in needed)  # no staging files left
    assert provide_example_inputs(tmp_path, REPO / "workflows") == []

    not_a_folder = tmp_path / "reference.png"
    assert provide_example_inputs(not_a_folder, REPO / "workflows") == []
    assert "could not copy the example workflows' images" in caplog.text
