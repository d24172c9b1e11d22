"""What both workflow formats share: reading a node for the rules, and the plan's wiring in graph terms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .leading import LEADING_NODES
from .ours import OUR_NODES
from .plan import (
    CLIP_VISION,
    INSIGHTFACE,
    Carried,
    Internal,
    Plan,
    Unconvertible,
    Upstream,
)

PRIMITIVE = "PrimitiveNode"  # the frontend's widget-value node: its value is saved in its targets' widgets
Source = tuple[Any, str, int]  # (node id, node type, output slot)


class Graph(ABC):
    """A workflow in one format; `apply` rewrites the nodes that have plans, and nothing else."""

    workflow: dict

    @abstractmethod
    def ids(self) -> list: ...

    @abstractmethod
    def type(self, node_id) -> str: ...

    @abstractmethod
    def saved_widgets(self, node_id) -> list | dict | None: ...

    @abstractmethod
    def source(self, node_id, name: str) -> Source | None:
        """The node (past any reroute) that feeds input `name`."""

    @abstractmethod
    def consumers(self, node_id, slot: int) -> list[tuple[Any, str, str]]:
        """(node id, type, input name) fed by output `slot`, past any reroute."""

    @abstractmethod
    def apply(self, plans: dict[Any, Plan], resolved: dict[Any, dict]) -> None: ...

    def view(self, node_id) -> LeadingView:
        return LeadingView(self, node_id)


class LeadingView:
    """A leading-pack node as a rule reads it (the NodeView protocol of plan.py)."""

    def __init__(self, graph: Graph, node_id):
        self.graph = graph
        self.node_id = node_id
        self.spec = LEADING_NODES[graph.type(node_id)]
        self.widgets = self.spec.widget_values(graph.saved_widgets(node_id))

    def source(self, name: str) -> tuple[Any, str] | None:
        found = self.graph.source(self.node_id, name)
        return None if found is None or found[1] == PRIMITIVE else found[:2]

    def source_view(self, name: str) -> LeadingView | None:
        found = self.source(name)
        return LeadingView(self.graph, found[0]) if found is not None and found[1] in LEADING_NODES else None

    def linked(self, name: str) -> bool:
        return self.source(name) is not None

    def static(self, name: str) -> Any:
        if self.linked(name):
            raise Unconvertible(f"its {name} is computed by another node at run time")
        return self.widgets[name]

    def value(self, name: str) -> Any:
        return Upstream(name) if self.linked(name) else self.widgets[name]

    def consumers(self, slot: int) -> list[tuple[Any, str, str]]:
        return self.graph.consumers(self.node_id, slot)


def resolve_plans(graph: Graph, plans: dict[Any, Plan]) -> tuple[dict[Any, dict], dict[Any, str]]:
    """Settle what plans need from each other, dropping plans that cannot be satisfied.

    Returns (resolved, dropped): resolved[node][(target index, input)] = (loader id, target index,
    slot) for what a converted loader's pipeline carried (a CLIP vision model, InsightFace);
    dropped[node] = reason.
    """
    dropped: dict[Any, str] = {}
    while True:
        resolved: dict[Any, dict] = {}
        failed = {}
        for node_id, plan in plans.items():
            missing = [other for other in plan.needs_converted if other not in plans]
            if missing:
                failed[node_id] = f"it is wired to node(s) {', '.join(map(str, missing))}, which cannot be converted"
                continue
            resolved[node_id] = {}
            for index, target in enumerate(plan.targets):
                for name, ref in target.inputs.items():
                    if not isinstance(ref, Carried):
                        continue
                    found = graph.source(node_id, ref.name)
                    loader = plans.get(found[0]) if found is not None else None
                    if loader is not None and ref.what in loader.carries:
                        resolved[node_id][(index, name)] = (found[0], *loader.carries[ref.what])
                    elif ref.required:
                        failed[node_id] = MISSING[ref.what]
        if not failed:
            return resolved, dropped
        for node_id, reason in failed.items():
            del plans[node_id]
            dropped[node_id] = reason


MISSING = {  # why a plan that needs what a pipeline carried cannot convert without it
    CLIP_VISION: "it needs a CLIP vision model: connect its clip_vision input (its ipadapter does not come from IPAdapter Unified Loader)",
    INSIGHTFACE: "it needs InsightFace: connect its insightface input (its ipadapter does not come from IPAdapter Unified Loader FaceID)",
}


def target_inputs(target_type: str, target_inputs: dict) -> list[tuple[str, str, bool, bool]]:
    """(name, type, optional, is widget) of the input slots a UI node of `target_type` shows, in order:
    every link input, then the widgets whose socket carries a link."""
    spec = OUR_NODES[target_type]
    slots = [(i.name, i.type, i.optional, False) for i in spec.links()]
    slots += [(w.name, w.type, w.optional, True) for w in spec.widgets() if isinstance(target_inputs.get(w.name), Upstream)]
    return slots


def split_target(target) -> tuple[dict, dict]:
    """(widget values, link refs): widgets set to a ref keep their link on the widget's socket."""
    spec = OUR_NODES[target.type]
    widget_names = {w.name for w in spec.widgets()}
    links = dict(target.inputs)
    values = {}
    for name, value in target.widgets.items():
        if name not in widget_names:
            raise KeyError(f"{target.type} has no widget {name!r}")
        if isinstance(value, Upstream):
            links[name] = value
        else:
            values[name] = value
    return values, links


def origin_of(ref, node_id, target_ids: dict, resolved: dict, index: int, name: str):
    """(origin node id, origin slot) of an Internal or resolved Carried ref; None for Upstream."""
    if isinstance(ref, Internal):
        return target_ids[node_id][ref.index], ref.slot
    if isinstance(ref, Carried):
        found = resolved.get(node_id, {}).get((index, name))
        if found is None:
            return None
        loader, loader_index, slot = found
        return target_ids[loader][loader_index], slot
    return None
