"""Workflows built with the leading IP-Adapter pack (cubiq/ComfyUI_IPAdapter_plus), converted to this pack's nodes.

One implementation behind both entry points: `python -m ipadapter_core.convert IN.json OUT.json`
from the pack's folder (no ComfyUI needed) and the web UI's menu command, which posts the open
graph to the server route in nodes/convert_route.py. Both formats are handled: the UI format
users save and share, and the API format POST /prompt takes. Every node that is not the leading
pack's, every link between such nodes, positions and groups are kept as they are; a leading node
without an equivalent stays in place and is listed in the report, and the rest still converts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import IPAdapterError
from .api import APIGraph
from .graph import Graph, resolve_plans
from .leading import LEADING_NODES
from .plan import Unconvertible
from .rules import REASONS, RULES
from .ui import UIGraph

NO_EQUIVALENT = "it has no equivalent in this pack"


@dataclass
class Report:
    """What happened to each leading-pack node of a workflow."""

    format: str  # "ui" or "api"
    converted: list[dict] = field(default_factory=list)  # {id, type, into: [types]}
    unconvertible: list[dict] = field(default_factory=list)  # {id, type, reason}
    notes: list[dict] = field(default_factory=list)  # {id, type, note}: where the effect differs slightly

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as text, one line per node (what the CLI prints and the web UI shows)."""
        text = [f"Converted {len(self.converted)} node(s) of ComfyUI_IPAdapter_plus ({self.format} format)."]
        text += [f"  {c['type']} #{c['id']} -> {' + '.join(c['into'])}" for c in self.converted]
        if self.unconvertible:
            text.append(f"Left unchanged ({len(self.unconvertible)}): they still need ComfyUI_IPAdapter_plus, or replacing by hand.")
            text += [f"  {u['type']} #{u['id']}: {u['reason']}" for u in self.unconvertible]
        if self.notes:
            text.append("Notes:")
            text += [f"  {n['type']} #{n['id']}: {n['note']}" for n in self.notes]
        return text


def workflow_format(workflow: Any) -> str:
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        return "ui"
    if isinstance(workflow, dict) and workflow and all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
        return "api"
    raise IPAdapterError(
        "This is not a ComfyUI workflow: expected the UI format (a 'nodes' list, as saved from the web UI) or the API "
        "format (node ids mapping to entries with a 'class_type', as POST /prompt takes)."
    )


def convert_workflow(workflow: dict) -> tuple[dict, Report]:
    """(converted copy of `workflow`, report); the input is not modified."""
    kind = workflow_format(workflow)
    graph: Graph = UIGraph(workflow) if kind == "ui" else APIGraph(workflow)
    report = Report(kind)
    plans, types = {}, {}
    for node_id in graph.ids():
        node_type = graph.type(node_id)
        if node_type not in LEADING_NODES:
            continue
        types[node_id] = node_type
        rule = RULES.get(node_type)
        if rule is None:
            report.unconvertible.append({"id": node_id, "type": node_type, "reason": REASONS.get(node_type, NO_EQUIVALENT)})
            continue
        try:
            plans[node_id] = rule(graph.view(node_id))
        except Unconvertible as error:
            report.unconvertible.append({"id": node_id, "type": node_type, "reason": str(error)})
    resolved, dropped = resolve_plans(graph, plans)
    report.unconvertible += [{"id": node_id, "type": types[node_id], "reason": reason} for node_id, reason in dropped.items()]
    for entry in report.unconvertible:
        spec = LEADING_NODES[entry["type"]]
        fed = [i.name for i in spec.links() if (found := graph.source(entry["id"], i.name)) is not None and found[0] in plans]
        if fed:
            entry["reason"] += f"; its input(s) {', '.join(fed)} now come from this pack's nodes, so reconnect or replace it"
    for node_id, plan in plans.items():
        report.converted.append({"id": node_id, "type": types[node_id], "into": [t.type for t in plan.targets]})
        report.notes += [{"id": node_id, "type": types[node_id], "note": note} for note in plan.notes]
    graph.apply(plans, resolved)
    return graph.workflow, report


__all__ = ["Report", "convert_workflow", "workflow_format"]
