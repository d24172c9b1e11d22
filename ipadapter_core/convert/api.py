"""API-format prompts (what POST /prompt takes): {id: {class_type, inputs: {name: value or [id, slot]}, _meta}}.

The first node of a plan keeps the leading node's id; further nodes get the next free numbers.
Nodes without a plan keep their entries, with links from a replaced node pointed at its successor.
"""

from __future__ import annotations

import copy
from typing import Any

from .graph import Graph, Source, origin_of, split_target
from .leading import LEADING_NODES
from .ours import DISPLAY_NAMES, OUR_NODES
from .plan import Plan, Upstream


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class APIGraph(Graph):
    def __init__(self, prompt: dict):
        self.workflow = copy.deepcopy(prompt)

    def ids(self) -> list:
        return list(self.workflow)

    def type(self, node_id) -> str:
        return self.workflow[node_id].get("class_type", "")

    def saved_widgets(self, node_id) -> dict:
        return {name: value for name, value in self.workflow[node_id].get("inputs", {}).items() if not is_link(value)}

    def source(self, node_id, name: str) -> Source | None:
        value = self.workflow[node_id].get("inputs", {}).get(name)
        if not is_link(value) or value[0] not in self.workflow:
            return None
        return value[0], self.type(value[0]), value[1]

    def consumers(self, node_id, slot: int) -> list[tuple[Any, str, str]]:
        return [(other, self.type(other), name) for other, entry in self.workflow.items()
                for name, value in entry.get("inputs", {}).items() if is_link(value) and value == [node_id, slot]]

    def apply(self, plans: dict[Any, Plan], resolved: dict[Any, dict]) -> None:
        numbers = [int(node_id) for node_id in self.workflow if str(node_id).isdigit()]
        next_id = max(numbers, default=0) + 1
        target_ids: dict[Any, list] = {}
        for node_id, plan in plans.items():
            target_ids[node_id] = [node_id] + [str(next_id + i) for i in range(len(plan.targets) - 1)]
            next_id += len(plan.targets) - 1

        def new_origin(value: list):
            plan = plans.get(value[0])
            if plan is None:
                return value
            if value[1] not in plan.outputs:
                return None
            index, slot = plan.outputs[value[1]]
            return [target_ids[value[0]][index], slot]

        originals = {node_id: copy.deepcopy(self.workflow[node_id]) for node_id in plans}
        for node_id, entry in self.workflow.items():
            if node_id in plans:
                continue
            for name, value in list(entry.get("inputs", {}).items()):
                if is_link(value) and value[0] in plans:
                    mapped = new_origin(value)
                    if mapped is None:
                        del entry["inputs"][name]
                    else:
                        entry["inputs"][name] = mapped
        for node_id, plan in plans.items():
            original = originals[node_id]
            given = original.get("inputs", {})
            saved = LEADING_NODES[original["class_type"]].widget_values({k: v for k, v in given.items() if not is_link(v)})
            for index, target in enumerate(plan.targets):
                values, links = split_target(target)
                inputs = {w.name: values.get(w.name, w.initial) for w in OUR_NODES[target.type].widgets()}
                for name, ref in links.items():
                    if isinstance(ref, Upstream):
                        value = given.get(ref.name)
                        mapped = new_origin(value) if is_link(value) else None
                        if mapped is not None:
                            inputs[name] = mapped
                        elif name in inputs:
                            inputs[name] = saved.get(ref.name, inputs[name])
                        continue
                    origin = origin_of(ref, node_id, target_ids, resolved, index, name)
                    if origin is not None:
                        inputs[name] = list(origin)
                entry = {"inputs": {k: v for k, v in inputs.items() if v is not None}, "class_type": target.type}
                title = original.get("_meta", {}).get("title")
                if index > 0 or title in (None, LEADING_NODES[original["class_type"]].display_name):
                    title = DISPLAY_NAMES[target.type]  # not renamed by the user: the frontend's title for our node
                entry["_meta"] = {**original.get("_meta", {}), "title": title} if index == 0 else {"title": title}
                self.workflow[target_ids[node_id][index]] = entry
