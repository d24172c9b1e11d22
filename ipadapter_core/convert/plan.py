"""What replaces one leading-pack node: a few of this pack's nodes and how they are wired.

A rule (rules.py) reads one leading node through a NodeView and returns a Plan. The graph
writers (ui.py, api.py) apply plans to either workflow format, so the rules never deal with
link ids, slot numbers or positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .specs import NodeSpec


class Unconvertible(Exception):
    """Raised by a rule: the node stays as it is, listed in the report with this reason."""


@dataclass(frozen=True)
class Upstream:
    """Whatever fed the leading node's input `name` (a link, or for a widget its link if converted to a socket)."""

    name: str


@dataclass(frozen=True)
class Internal:
    """Output `slot` of target `index` of the same plan."""

    index: int
    slot: int


CLIP_VISION, INSIGHTFACE = "clip_vision", "insightface"  # what the leading pack's IPADAPTER pipeline carries besides the adapter


@dataclass(frozen=True)
class Carried:
    """What the loader feeding input `name` carried in the leading pack's pipeline (`what`: CLIP_VISION
    or INSIGHTFACE), now an output of that loader's plan."""

    name: str
    what: str = CLIP_VISION
    required: bool = True


Ref = Upstream | Internal | Carried


@dataclass
class Target:
    """One node of ours: widget values by name (a Ref where a widget's socket keeps its link) and link inputs."""

    type: str
    widgets: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Ref] = field(default_factory=dict)


@dataclass
class Plan:
    """targets[0] takes the leading node's place (id, position, title); outputs maps its output slots
    to (target index, slot); carries names the target outputs that give what a loader's pipeline
    carried ({CLIP_VISION: (target index, slot)}, ...)."""

    targets: list[Target]
    outputs: dict[int, tuple[int, int]]
    notes: list[str] = field(default_factory=list)
    carries: dict[str, tuple[int, int]] = field(default_factory=dict)
    needs_converted: set = field(default_factory=set)  # node ids that must convert too, or this one cannot


class NodeView(Protocol):
    """One leading node of a workflow, as rules see it."""

    spec: NodeSpec

    def linked(self, name: str) -> bool:
        """Whether input `name` has a real source (a PrimitiveNode's value counts as a widget value)."""

    def static(self, name: str) -> Any:
        """A widget's value; Unconvertible if a node computes it at run time."""

    def value(self, name: str) -> Any:
        """A widget's value, or Upstream(name) when a node computes it (the link moves to our widget)."""

    def source(self, name: str) -> tuple[Any, str] | None:
        """(node id, node type) of the real node feeding input `name`, through reroutes."""

    def source_view(self, name: str) -> NodeView | None:
        """The leading-pack node feeding input `name`, read like this one; None for any other source."""

    def consumers(self, slot: int) -> list[tuple[Any, str, str]]:
        """(node id, node type, input name) of every node fed by output `slot`, through reroutes."""


Rule = Callable[[NodeView], Plan]
