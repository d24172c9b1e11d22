"""Every node's public interface, pinned: what /object_info tells the frontend, against a stored snapshot.

Saved workflows refer to node ids, input names and socket types, and the frontend rebuilds each
node's widgets from /object_info (names, order, defaults, ranges, steps, choices, tooltips). The
snapshot `node_schemas.json` was taken from the real server (`/object_info`) before the nodes
moved to the V3 schema; a change to it is a change to the public API and shows in review.
Adding an optional input means adding it to the snapshot by hand (or rewriting the file with
UPDATE_NODE_SCHEMAS=1 and reading the diff).

Two representations mean the same to the frontend and are compared as equal: a combo listed as
`[choices]` (classic nodes) or as `"COMBO"` with `options` (V3 nodes), and the explicit
`multiline: false` / `multiselect: false` V3 adds. Hidden inputs (the prompt and workflow an
output node receives) are not part of a saved workflow and are left out.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

SNAPSHOT = Path(__file__).with_name("node_schemas.json")
# Options V3 writes out that the frontend assumes when absent.
FRONTEND_DEFAULTS = {"multiline": False, "multiselect": False}


def canonical(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of one /object_info entry a saved workflow and the node's widgets depend on."""
    inputs = {}
    for group in ("required", "optional"):
        for name, spec in info.get("input", {}).get(group, {}).items():
            kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
            if isinstance(kind, list):
                kind, options = "COMBO", {**options, "options": kind}
            inputs[name] = {"group": group, "type": kind, **{k: v for k, v in options.items() if FRONTEND_DEFAULTS.get(k, ...) != v}}
    return {
        "display_name": info["display_name"],
        "category": info["category"],
        "description": info["description"],
        "output_node": info["output_node"],
        "input_order": {group: names for group, names in info["input_order"].items() if group != "hidden"},
        "inputs": inputs,
        "outputs": [
            {"type": kind, "name": name, "is_list": is_list, "tooltip": tooltip}
            for kind, name, is_list, tooltip in zip(info["output"], info["output_name"], info["output_is_list"], info.get("output_tooltips") or [None] * len(info["output"]))
        ],
    }


@pytest.fixture
def empty_folders(pack, tmp_path):
    """No adapter files and no saved image prompts: the file choices are empty, as in the snapshot."""
    import folder_paths

    saved = folder_paths.folder_names_and_paths["ipadapter"], folder_paths.get_input_directory()
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(tmp_path / "ipadapter")], saved[0][1])
    folder_paths.set_input_directory(str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    folder_paths.filename_list_cache.pop("ipadapter", None)
    yield
    folder_paths.folder_names_and_paths["ipadapter"] = saved[0]
    folder_paths.set_input_directory(saved[1])
    folder_paths.filename_list_cache.pop("ipadapter", None)


def current_schemas() -> dict[str, dict[str, Any]]:
    from tools.comfy_host import pack_nodes

    # json round trip: tuples become lists, as the server sends them
    return {name: canonical(json.loads(json.dumps(cls.GET_NODE_INFO_V1()))) for name, cls in pack_nodes().items()}


def test_every_node_matches_the_snapshot(empty_folders):
    current = current_schemas()
    if os.environ.get("UPDATE_NODE_SCHEMAS"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    stored = json.loads(SNAPSHOT.read_text())
    assert sorted(current) == sorted(stored)
    for name in stored:
        assert current[name] == stored[name], name


def test_the_host_loads_the_pack_through_its_v3_entry_point(pack):
    """ComfyUI's own loader: the nodes come from comfy_entrypoint, once each, under their ids and display names."""
    import nodes
    from comfy_api.latest import ComfyExtension

    assert not hasattr(pack, "NODE_CLASS_MAPPINGS"), "the host would take NODE_CLASS_MAPPINGS and ignore comfy_entrypoint"
    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    node_list = asyncio.run(extension.get_node_list())
    ids = [cls.GET_SCHEMA().node_id for cls in node_list]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(json.loads(SNAPSHOT.read_text()))

    before = set(nodes.NODE_CLASS_MAPPINGS)
    assert asyncio.run(nodes.load_custom_node(str(Path(pack.__file__).parent), ignore=before, module_parent="custom_nodes"))
    added = set(nodes.NODE_CLASS_MAPPINGS) - before
    assert added == set(ids)
    assert all(nodes.NODE_DISPLAY_NAME_MAPPINGS[i] == json.loads(SNAPSHOT.read_text())[i]["display_name"] for i in ids)


def test_the_nodes_use_the_pinned_api_version():
    """comfy_api.latest changes with ComfyUI releases; the pack imports one numbered version, in nodes/api.py only."""
    repo = SNAPSHOT.parents[1]
    sources = {path: path.read_text() for folder in ("nodes", "ipadapter_core") for path in (repo / folder).glob("*.py")}
    sources[repo / "__init__.py"] = (repo / "__init__.py").read_text()
    importing = sorted(path.relative_to(repo).as_posix() for path, text in sources.items() if "comfy_api" in text)
    assert importing == ["nodes/api.py"]
    assert "from comfy_api.v0_0_2 import" in sources[repo / "nodes" / "api.py"]


def test_every_node_has_a_help_page_naming_its_inputs_and_outputs():
    """web/docs/<node id>.md is what the frontend's node help shows; it must cover the node as it is now."""
    docs = SNAPSHOT.parents[1] / "web" / "docs"
    stored = json.loads(SNAPSHOT.read_text())
    assert sorted(path.stem for path in docs.glob("*.md")) == sorted(stored)
    for name, schema in stored.items():
        page = (docs / f"{name}.md").read_text(encoding="utf-8")
        title = re.sub(r" \(IP-Adapter[^)]*\)$", "", schema["display_name"])  # the pack's suffix, e.g. "(IP-Adapter FaceID)"
        assert page.startswith(f"# {title}\n"), name
        undocumented = [item for item in [*schema["inputs"], *(o["name"] for o in schema["outputs"])] if f"`{item}`" not in page]
        assert not undocumented, f"{name}.md does not mention {undocumented}"
