"""How a node's interface appears in saved workflows: its inputs in order, its widgets, its outputs.

A UI-format workflow stores a node's widget values as a list in widget order, and its links by
input and output slot; an API-format prompt stores inputs by name. Reading and writing either
needs each node's interface, described here for the leading pack's nodes (leading.py) and for
this pack's nodes that conversions produce (ours.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class Input:
    name: str
    type: str  # a socket type for links, or one of WIDGET_TYPES
    default: Any = None  # None for combos: the first choice, as the frontend does
    choices: tuple = ()  # combo values; empty for lists filled at run time (files)
    optional: bool = False
    control: bool = False  # followed by a "control after generate" widget that is saved but not sent

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    @property
    def initial(self) -> Any:
        """The value a widget starts with, which workflows saved before it existed get."""
        if self.default is not None or self.type != "COMBO":
            return self.default
        return self.choices[0] if self.choices else None


@dataclass(frozen=True)
class NodeSpec:
    inputs: tuple[Input, ...]
    outputs: tuple[tuple[str, str], ...] = ()  # (name, type)
    output_node: bool = False
    category: str = ""
    display_name: str = ""
    extra: dict = field(default_factory=dict)

    def input(self, name: str) -> Input:
        return next(i for i in self.inputs if i.name == name)

    def widgets(self) -> list[Input]:
        return [i for i in self.inputs if i.is_widget]

    def links(self) -> list[Input]:
        return [i for i in self.inputs if not i.is_widget]

    def widget_values(self, saved: list | dict | None) -> dict[str, Any]:
        """Saved widget values (a UI list in widget order, or a name -> value dict) by name; missing ones get their defaults."""
        if isinstance(saved, dict):
            return {w.name: saved.get(w.name, w.initial) for w in self.widgets()}
        values, position = {}, 0
        saved = saved or []
        for widget in self.widgets():
            values[widget.name] = saved[position] if position < len(saved) else widget.initial
            position += 2 if widget.control else 1
        return values

    def widget_list(self, values: dict[str, Any]) -> list:
        """Widget values in the order a UI workflow saves them (a control widget saved as 'fixed')."""
        saved = []
        for widget in self.widgets():
            saved.append(values.get(widget.name, widget.initial))
            if widget.control:
                saved.append("fixed")
        return saved


def link(name: str, kind: str, optional: bool = False) -> Input:
    return Input(name, kind, optional=optional)


def number(name: str, kind: str, default: float | int, optional: bool = False, control: bool = False) -> Input:
    return Input(name, kind, default=default, optional=optional, control=control)


def text(name: str, default: str, optional: bool = False) -> Input:
    return Input(name, "STRING", default=default, optional=optional)


def boolean(name: str, default: bool, optional: bool = False) -> Input:
    return Input(name, "BOOLEAN", default=default, optional=optional)


def combo(name: str, choices: tuple = (), default: str | None = None, optional: bool = False) -> Input:
    return Input(name, "COMBO", default=default, choices=tuple(choices), optional=optional)
