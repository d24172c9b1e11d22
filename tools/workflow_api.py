"""UI-format workflows (what users save and share) to the API format POST /prompt takes.

Only the browser frontend knows how to turn a saved workflow into a prompt (app.graphToPrompt),
yet the shipped workflows must be run headless, in tests and the demo. This module redoes that
conversion for the frontend shipped with ComfyUI 0.3.75 (comfyui-frontend-package 1.32):

- widgets_values holds one value per widget, in the order the node's widgets are created from
  object_info: required then optional inputs whose type is a widget type (not link-only types
  such as MODEL or IMAGE, nor inputs marked forceInput). Widgets past the end of a workflow saved
  before the node gained them send their default values. Two kinds of widgets are saved there
  but never sent: the "control after generate" combo the frontend adds after INT inputs with
  `control_after_generate` (or, when the option is absent, named seed/noise_seed), and the
  upload button it adds to a node with an image or video upload combo (after the inputs listed
  in object_info's input_order).
- An input connected by a link takes `[origin node id as a string, origin slot]`, replacing the
  widget value of a widget turned into a socket.
- Frontend-only (virtual) nodes - types absent from object_info such as Note, MarkdownNote,
  Reroute and PrimitiveNode - are not sent. A link through a Reroute resolves to what feeds the
  Reroute; a PrimitiveNode's value is already in its targets' widgets_values.
- Muted nodes (mode 2) are not sent, and links from them are dropped. Bypassed nodes (mode 4) are
  not sent; a link from one resolves to its input of the requested type.

Not modelled: subgraphs and group nodes, the dynamic-prompt syntax of multiline STRING widgets
({a|b} choices and comments are sent as written), and widgets added by frontend extensions
other than the image upload button.
"""

from __future__ import annotations

import copy
from typing import Any

MUTED, BYPASSED = 2, 4
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR", "TEXTAREA", "IMAGECOMPARE", "CHART", "GALLERIA"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")
NOT_SENT = None  # placeholder name of a widget whose value stays in the UI
UPLOAD_BUTTON = "IMAGEUPLOAD"

ApiPrompt = dict[str, dict[str, Any]]


def ui_to_api(ui_workflow: dict, object_info: dict) -> ApiPrompt:
    """The prompt the frontend would queue for `ui_workflow`, given the server's /object_info."""
    nodes = {node["id"]: node for node in ui_workflow["nodes"]}
    links = {fields[0]: fields[1:] for fields in map(link_fields, ui_workflow.get("links", []))}
    prompt: ApiPrompt = {}
    for node in ui_workflow["nodes"]:
        definition = object_info.get(node["type"])
        if definition is None or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        inputs = widget_inputs(node, definition)
        for slot in node.get("inputs") or []:
            source = resolve(slot.get("link"), slot["type"], nodes, links, object_info)
            if source is not None:
                inputs[slot["name"]] = source
        title = node.get("title") or definition.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    for entry in prompt.values():  # links from muted nodes lead nowhere: drop them, as the frontend does
        for name, value in list(entry["inputs"].items()):
            if is_link(value) and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


def widgets(definition: dict) -> list[tuple[str | None, Any]]:
    """(name, default) of the node's widgets in creation order; the name is NOT_SENT for a control or upload widget."""
    found: list[tuple[str | None, Any]] = []
    for name, (kind, options) in ordered_inputs(definition):
        is_combo = isinstance(kind, list) or kind == "COMBO"
        if kind == UPLOAD_BUTTON:
            found.append((NOT_SENT, None))
        elif not options.get("forceInput") and (is_combo or options.get("widgetType", kind) in WIDGET_TYPES):
            found.append((name, default_value(kind, options)))
            control = options.get("control_after_generate")
            if kind == "INT" and (control if control is not None else name in SEED_NAMES):
                found.append((NOT_SENT, None))
            elif is_combo and control:  # the control mode and its filter list
                found += [(NOT_SENT, None), (NOT_SENT, None)]
    return found


def default_value(kind: Any, options: dict) -> Any:
    """The value a new widget starts with, which a workflow saved before the input existed keeps."""
    default = options.get("default")
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        return default or (choices[0] if choices else None)
    return default if default is not None else {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(kind)


def ordered_inputs(definition: dict) -> list[tuple[str, tuple[Any, dict]]]:
    """(name, (type, options)) in the frontend's order: input_order's required, then optional, then
    inputs missing from input_order - among them the upload button added to the required inputs."""
    def normalize(spec: list, optional: bool) -> tuple[Any, dict]:
        options = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if optional and options.get("defaultInput"):  # the frontend's migration of a deprecated option
            options["forceInput"] = True
        return spec[0], options

    given = definition.get("input", {})
    required = {name: normalize(spec, False) for name, spec in given.get("required", {}).items()}
    optional = {name: normalize(spec, True) for name, spec in given.get("optional", {}).items()}
    if any(has_upload_button(*spec) for spec in required.values()):
        required["upload"] = (UPLOAD_BUTTON, {})
    order = definition.get("input_order", {})
    names = [name for name in order.get("required", []) if name in required]
    names += [name for name in order.get("optional", []) if name in optional]
    names += [name for name in [*required, *optional] if name not in names]
    return [(name, required.get(name) or optional[name]) for name in names]


def has_upload_button(kind: Any, options: dict) -> bool:
    is_combo = isinstance(kind, list) or kind == "COMBO"
    return is_combo and any(options.get(flag) is True for flag in UPLOAD_OPTIONS)


def widget_inputs(node: dict, definition: dict) -> dict[str, Any]:
    """Saved widget values by input name; widgets the workflow has no value for (inputs added to the
    node after it was saved) send their defaults, as they do once the frontend loads it."""
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # some extensions save widgets by name
        pairs = list(values.items())
    else:
        pairs = []
        for index, (name, default) in enumerate(widgets(definition)):
            if name is NOT_SENT:
                continue
            if index < len(values):
                pairs.append((name, values[index]))
            elif default is not None:  # no default: the frontend's undefined, left out of the JSON
                pairs.append((name, default))
    # A list value would read as a link, so the frontend wraps it.
    return {name: {"__value__": value} if isinstance(value, list) else value for name, value in pairs}


def resolve(link_id: int | None, wanted_type: str, nodes: dict, links: dict, object_info: dict) -> list | None:
    """[origin id, slot] of the real node feeding a link, following Reroutes and bypassed nodes."""
    seen = set()
    while link_id is not None and link_id in links:
        if link_id in seen:
            raise ValueError(f"Link {link_id} is part of a cycle of reroutes or bypassed nodes")
        seen.add(link_id)
        origin_id, origin_slot = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None:
            return None
        inputs = origin.get("inputs") or []
        if origin.get("mode", 0) == BYPASSED:
            slot = bypass_input(origin, origin_slot, wanted_type)
        elif origin["type"] not in object_info:
            slot = origin_slot if origin_slot < len(inputs) else None
        else:
            return [str(origin_id), origin_slot]
        link_id = inputs[slot].get("link") if slot is not None else None
    return None


def bypass_input(node: dict, output_slot: int, wanted_type: str) -> int | None:
    """The input a bypassed node passes to `output_slot`: the same index if its type fits, else the first of the wanted type."""
    inputs = node.get("inputs") or []
    if wanted_type in ("*", ""):
        return output_slot if output_slot < len(inputs) else (0 if inputs else None)
    output_type = node["outputs"][output_slot]["type"]
    fits = [compatible(slot["type"], output_type) and compatible(slot["type"], wanted_type) for slot in inputs]
    if output_slot < len(inputs) and fits[output_slot]:
        return output_slot
    same_type = next((i for i, slot in enumerate(inputs) if slot["type"] == wanted_type), None)
    return same_type if same_type is not None else next((i for i, fit in enumerate(fits) if fit), None)


def compatible(a: str, b: str) -> bool:
    """LiteGraph.isValidConnection: equal, a wildcard, or overlapping comma-separated unions."""
    if not a or not b or a == b or "*" in (a, b):
        return True
    return bool(set(a.lower().split(",")) & set(b.lower().split(",")))


def link_fields(link: list | dict) -> tuple[int, int, int]:
    """(id, origin id, origin slot) of a link, saved as a list (schema 0.4) or an object (schema 1)."""
    if isinstance(link, dict):
        return link["id"], link["origin_id"], link["origin_slot"]
    return link[0], link[1], link[2]


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


# Shipped workflows carry the sizes and step counts real checkpoints want; on a CPU with the
# embedded models, tests and the demo run the same graphs smaller and shorter.
CPU_LIMITS = {"EmptyLatentImage": {"width": 256, "height": 256}, "EmptySD3LatentImage": {"width": 256, "height": 256}, "KSampler": {"steps": 4}}


def shrink_for_cpu(ui_workflow: dict, object_info: dict, limits: dict = CPU_LIMITS) -> dict:
    """A copy of the UI workflow with the widgets in `limits` capped (image size, steps)."""
    shrunk = copy.deepcopy(ui_workflow)
    for node in shrunk["nodes"]:
        caps = limits.get(node["type"])
        values = node.get("widgets_values")
        if not caps or not isinstance(values, list):
            continue
        for index, (name, _) in enumerate(widgets(object_info[node["type"]])):
            if name in caps and index < len(values):
                values[index] = min(values[index], caps[name])
    return shrunk
