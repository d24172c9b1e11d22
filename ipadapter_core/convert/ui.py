"""UI-format workflows (what the frontend saves and users share): nodes with slots, and a link table.

Only the nodes being replaced and the links touching them change: every other node, link,
group, reroute and setting is left as it was. The first node of a plan takes the leading node's
id, position, title, colours and mode; further nodes (the Encode Image Prompt an apply node
needs, for instance) get new ids and sit collapsed just below it. Links keep their ids where a
link still exists; a reroute passing a retyped link takes the new type.
"""

from __future__ import annotations

import copy
from typing import Any

from .graph import Graph, Source, origin_of, split_target, target_inputs
from .ours import OUR_NODES
from .plan import Plan, Upstream

REROUTE = "Reroute"
COLLAPSED_GAP = 36  # vertical distance between collapsed helper nodes


class UIGraph(Graph):
    def __init__(self, workflow: dict):
        self.workflow = copy.deepcopy(workflow)
        self.nodes = {node["id"]: node for node in self.workflow.get("nodes", [])}
        self.dict_links = bool(self.workflow.get("links")) and isinstance(self.workflow["links"][0], dict)
        self.links = {}  # id -> [id, origin, origin slot, target, target slot, type]
        for entry in self.workflow.get("links", []):
            fields = [entry[k] for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")] if self.dict_links else list(entry)
            self.links[fields[0]] = fields

    def ids(self) -> list:
        return list(self.nodes)

    def type(self, node_id) -> str:
        return self.nodes[node_id]["type"]

    def saved_widgets(self, node_id):
        return self.nodes[node_id].get("widgets_values")

    def input_link(self, node_id, name: str):
        for slot in self.nodes[node_id].get("inputs") or []:
            if slot.get("name") == name:
                return slot.get("link")
        return None

    def source(self, node_id, name: str) -> Source | None:
        link_id, seen = self.input_link(node_id, name), set()
        while link_id is not None and link_id in self.links and link_id not in seen:
            seen.add(link_id)
            _, origin, slot, *_ = self.links[link_id]
            node = self.nodes.get(origin)
            if node is None:
                return None
            if node["type"] != REROUTE:
                return origin, node["type"], slot
            inputs = node.get("inputs") or []
            link_id = inputs[0].get("link") if inputs else None
        return None

    def consumers(self, node_id, slot: int) -> list[tuple[Any, str, str]]:
        found, pending, seen = [], [(node_id, slot)], set()
        while pending:
            origin, origin_slot = pending.pop()
            for _, o, s, target, target_slot, _ in list(self.links.values()):
                if (o, s) != (origin, origin_slot) or target not in self.nodes or (target, target_slot) in seen:
                    continue
                seen.add((target, target_slot))
                node = self.nodes[target]
                if node["type"] == REROUTE:
                    pending.append((target, 0))
                else:
                    inputs = node.get("inputs") or []
                    name = inputs[target_slot].get("name") if target_slot < len(inputs) else None
                    found.append((target, node["type"], name))
        return found

    # --- rewriting -----------------------------------------------------------------------------

    def apply(self, plans: dict[Any, Plan], resolved: dict[Any, dict]) -> None:
        next_node = max([self.last_id("node"), *self.nodes]) + 1 if self.nodes else 1
        original_inputs = {node_id: [slot.get("name") for slot in self.nodes[node_id].get("inputs") or []] for node_id in plans}
        leading_widgets = {node_id: self.view(node_id).widgets for node_id in plans}
        target_ids: dict[Any, list] = {}
        for node_id, plan in plans.items():
            target_ids[node_id] = [node_id] + list(range(next_node, next_node + len(plan.targets) - 1))
            next_node += len(plan.targets) - 1
        built = {}  # new node id -> (node dict, slot names)
        for node_id, plan in plans.items():
            for index, target in enumerate(plan.targets):
                built[target_ids[node_id][index]] = self.build_node(node_id, plan, index, target_ids[node_id][index], leading_widgets[node_id])
        touched = set(built)

        def new_origin(origin, slot):
            plan = plans.get(origin)
            if plan is None:
                return origin, slot
            if slot not in plan.outputs:
                return None
            index, new_slot = plan.outputs[slot]
            return target_ids[origin][index], new_slot

        next_link = max([self.last_id("link"), *self.links]) + 1 if self.links else 1
        for link_id, (_, origin, slot, target, target_slot, kind) in list(self.links.items()):
            if origin not in plans and target not in plans:
                continue
            touched.update((origin, target))
            mapped = new_origin(origin, slot)
            uses = []
            if target in plans:
                names = original_inputs[target]
                name = names[target_slot] if target_slot < len(names) else None
                uses = [(target_ids[target][i], input_name) for i, t in enumerate(plans[target].targets)
                        for input_name, ref in split_target(t)[1].items() if ref == Upstream(name)]
            else:
                uses = [(target, target_slot)]
            if mapped is None or not uses:
                del self.links[link_id]
                continue
            for number, (new_target, input_ref) in enumerate(uses):
                new_slot = input_ref if isinstance(input_ref, int) else built[new_target][1].index(input_ref)
                new_id = link_id if number == 0 else next_link
                next_link += number > 0
                self.links[new_id] = [new_id, *mapped, new_target, new_slot, self.output_type(built, *mapped, kind)]
                touched.update((mapped[0], new_target))
        for node_id, plan in plans.items():
            for index, target in enumerate(plan.targets):
                new_id = target_ids[node_id][index]
                for name, ref in split_target(target)[1].items():
                    origin = origin_of(ref, node_id, target_ids, resolved, index, name)
                    if origin is None:
                        continue
                    self.links[next_link] = [next_link, *origin, new_id, built[new_id][1].index(name), self.output_type(built, *origin, None)]
                    touched.add(origin[0])
                    next_link += 1
        self.workflow["nodes"] += [node for new_id, (node, _) in built.items() if new_id not in self.nodes]
        self.nodes.update({new_id: node for new_id, (node, _) in built.items()})
        self.retype_reroutes(touched)
        self.rewire(touched)
        self.set_last_id("node", next_node - 1)
        self.set_last_id("link", next_link - 1)
        self.workflow["links"] = [self.link_entry(fields) for fields in sorted(self.links.values(), key=lambda f: f[0])]

    def build_node(self, node_id, plan: Plan, index: int, new_id, saved: dict) -> tuple[dict, list[str]]:
        """The UI node for target `index`: the leading node itself for the first, a collapsed helper below it for the others."""
        original = self.nodes[node_id]
        target = plan.targets[index]
        spec = OUR_NODES[target.type]
        values, links = split_target(target)
        for name, ref in links.items():  # a widget whose socket keeps its link still saves a value
            if name in {w.name for w in spec.widgets()} and isinstance(ref, Upstream):
                values[name] = saved.get(ref.name)
        slots = target_inputs(target.type, links)
        inputs = []
        for name, kind, optional, is_widget in slots:
            slot = {"name": name, "type": kind, "link": None}
            if optional and not is_widget:
                slot["shape"] = 7
            if is_widget:
                slot["widget"] = {"name": name}
            inputs.append(slot)
        outputs = [{"name": name, "type": kind, "links": []} for name, kind in spec.outputs]
        widgets = spec.widget_list(values)
        height = 30 + 22 * max(len([s for s in slots if not s[3]]), len(outputs)) + 26 * len(spec.widgets())
        x, y = original.get("pos", [0, 0])[:2] if isinstance(original.get("pos"), list) else (0, 0)
        width = max(315, size_of(original)[0])
        if index == 0:
            node = original
            node.update(type=target.type, inputs=inputs, outputs=outputs, size=[width, max(height, size_of(original)[1])])
            node.setdefault("properties", {})["Node name for S&R"] = target.type
            if spec.widgets():
                node["widgets_values"] = widgets
            else:
                node.pop("widgets_values", None)
        else:
            below = y + size_of(original)[1] + 16 + COLLAPSED_GAP * (index - 1)
            node = {"id": new_id, "type": target.type, "pos": [x, below], "size": [width, height], "flags": {"collapsed": True},
                    "order": original.get("order", 0), "mode": original.get("mode", 0), "inputs": inputs, "outputs": outputs,
                    "properties": {"Node name for S&R": target.type}}
            if spec.widgets():
                node["widgets_values"] = widgets
        return node, [slot["name"] for slot in inputs]

    def output_type(self, built: dict, origin, slot, fallback):
        node = built[origin][0] if origin in built else self.nodes.get(origin)
        outputs = (node or {}).get("outputs") or []
        if node is not None and node.get("type") == REROUTE:
            return fallback
        return outputs[slot]["type"] if slot < len(outputs) else fallback

    def retype_reroutes(self, touched: set) -> None:
        """A reroute takes the type of the link it passes on, as the frontend sets it when connecting."""
        changed = True
        while changed:
            changed = False
            for node_id, node in self.nodes.items():
                if node["type"] != REROUTE or node_id not in touched:
                    continue
                incoming = [f for f in self.links.values() if f[3] == node_id and f[4] == 0]
                if not incoming:
                    continue
                kind = incoming[0][5]
                for fields in self.links.values():
                    if fields[1] == node_id and fields[5] != kind:
                        fields[5] = kind
                        touched.update((node_id, fields[3]))
                        changed = True
                for output in node.get("outputs") or []:
                    if output.get("type") != kind:
                        output["type"] = kind
                        touched.add(node_id)

    def rewire(self, touched: set) -> None:
        """Slot link fields of the touched nodes, rebuilt from the link table."""
        for node_id in touched:
            node = self.nodes.get(node_id)
            if node is None:
                continue
            for position, slot in enumerate(node.get("inputs") or []):
                slot["link"] = next((f[0] for f in self.links.values() if f[3] == node_id and f[4] == position), None)
            for position, slot in enumerate(node.get("outputs") or []):
                ids = sorted(f[0] for f in self.links.values() if f[1] == node_id and f[2] == position)
                if ids or slot.get("links") is not None:  # a saved null stays null
                    slot["links"] = ids
                if ids:
                    slot["slot_index"] = position

    def link_entry(self, fields: list):
        if not self.dict_links:
            return fields
        keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
        return dict(zip(keys, fields))

    def last_id(self, kind: str) -> int:
        state = self.workflow.get("state") or {}
        value = self.workflow.get(f"last_{kind}_id", state.get(f"last{kind.title()}Id", 0))
        return value if isinstance(value, int) else 0

    def set_last_id(self, kind: str, value: int) -> None:
        value = max(value, self.last_id(kind))
        if "state" in self.workflow and f"last{kind.title()}Id" in self.workflow["state"]:
            self.workflow["state"][f"last{kind.title()}Id"] = value
        else:
            self.workflow[f"last_{kind}_id"] = value


def size_of(node: dict) -> tuple[float, float]:
    """A node's saved size, stored as [w, h] or, by older frontends, as {"0": w, "1": h}."""
    size = node.get("size")
    if isinstance(size, dict):
        return float(size.get("0", 315)), float(size.get("1", 60))
    if isinstance(size, list) and len(size) == 2:
        return float(size[0]), float(size[1])
    return 315.0, 60.0

