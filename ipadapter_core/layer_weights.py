"""Per-layer weighting, defined on the derived layer map so each type means the same on every UNet.

Layers are taken in execution order (input blocks, middle, output blocks) and split into
regions by the UNet's own structure: the deepest stage is the run of blocks around the middle
block that share its width; above it lie the input and output regions. InstantStyle's block
choice falls out of the same structure: composition is the last block of the encoder's deepest
stage, style the second block of the decoder's deepest stage (on SDXL: input 8 and output 1,
its down_blocks.2.attentions.1 and up_blocks.0.attentions.1; on SD1.5: input 8 and output 4).

Transformer models (Flux, SD3.5) are one stack of blocks without stages: the curves over the
layer order apply to them as they are (first block to last); the region and InstantStyle types
have no meaning there and are refused with an error that lists the ones that work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import IPAdapterError
from .layer_map import DIT_BLOCK, CrossAttentionLayer, LayerKey

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak middle",
    "weak output", "strong middle", "style transfer", "composition", "style and composition",
)
WEAK = 0.2
FLOOR = 0.05  # ease curves never switch a layer fully off
BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2, DIT_BLOCK: 0}
POSITION_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out")  # the ones defined on transformer stacks


def is_transformer_stack(layers: Sequence[CrossAttentionLayer]) -> bool:
    return any(layer.key[0] == DIT_BLOCK for layer in layers)


def execution_order(layers: Sequence[CrossAttentionLayer]) -> list[CrossAttentionLayer]:
    return sorted(layers, key=lambda layer: (BLOCK_ORDER[layer.key[0]], layer.key[1], layer.key[2]))


def regions(layers: Sequence[CrossAttentionLayer]) -> dict[LayerKey, str]:
    """'input', 'middle' (the deepest stage) or 'output' for every layer."""
    ordered = execution_order(layers)
    middle = [i for i, layer in enumerate(ordered) if layer.key[0] == "middle"]
    if not middle:
        raise IPAdapterError("This UNet has no cross-attention in its middle block; per-layer weight types need one.")
    width = ordered[middle[0]].inner_dim
    first, last = middle[0], middle[-1]
    while first > 0 and ordered[first - 1].inner_dim == width:
        first -= 1
    while last < len(ordered) - 1 and ordered[last + 1].inner_dim == width:
        last += 1
    return {layer.key: "input" if i < first else "output" if i > last else "middle" for i, layer in enumerate(ordered)}


def style_and_composition_blocks(layers: Sequence[CrossAttentionLayer]) -> tuple[tuple[str, int], tuple[str, int]]:
    """(style block, composition block) as (block name, number)."""
    region = regions(layers)
    deep_in = sorted({layer.key[1] for layer in layers if layer.key[0] == "input" and region[layer.key] == "middle"})
    deep_out = sorted({layer.key[1] for layer in layers if layer.key[0] == "output" and region[layer.key] == "middle"})
    if not deep_in or len(deep_out) < 2:
        raise IPAdapterError("This UNet's structure has no InstantStyle style/composition blocks; use another weight type.")
    return ("output", deep_out[1]), ("input", deep_in[-1])


def layer_factors(layers: Sequence[CrossAttentionLayer], weight_type: str) -> dict[LayerKey, float]:
    """Factor per layer for a weight type; 'style and composition' gives the style half (see composition_factors)."""
    if weight_type not in WEIGHT_TYPES:
        raise IPAdapterError(f"Unknown weight_type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)}.")
    if is_transformer_stack(layers) and weight_type not in POSITION_TYPES:
        raise IPAdapterError(
            f"weight_type {weight_type!r} is defined on UNets (their input, middle and output stages, InstantStyle's blocks); "
            f"this transformer model is one stack of blocks. Use one of {', '.join(POSITION_TYPES)}, or layer_weights with 'block N'."
        )
    ordered = execution_order(layers)
    last = max(len(ordered) - 1, 1)
    region = {} if is_transformer_stack(layers) else regions(layers)
    factors = {}
    for i, layer in enumerate(ordered):
        p = i / last  # 0 at the first input layer, 1 at the last output layer
        factors[layer.key] = {
            "linear": 1.0,
            "ease in": FLOOR + (1 - FLOOR) * p * p,
            "ease out": FLOOR + (1 - FLOOR) * (1 - p) ** 2,
            "ease in-out": FLOOR + (1 - FLOOR) * (1 - abs(2 * p - 1)) ** 2,
            "reverse in-out": FLOOR + (1 - FLOOR) * abs(2 * p - 1) ** 2,
            "weak input": WEAK if region.get(layer.key) == "input" else 1.0,
            "weak middle": WEAK if region.get(layer.key) == "middle" else 1.0,
            "weak output": WEAK if region.get(layer.key) == "output" else 1.0,
            "strong middle": 1.0 if region.get(layer.key) == "middle" else WEAK,
        }.get(weight_type, 0.0)
    if weight_type in ("style transfer", "style and composition", "composition"):
        style, composition = style_and_composition_blocks(layers)
        target = composition if weight_type == "composition" else style
        for layer in layers:
            factors[layer.key] = 1.0 if layer.key[:2] == target else 0.0
    return factors


def composition_factors(layers: Sequence[CrossAttentionLayer]) -> dict[LayerKey, float]:
    return layer_factors(layers, "composition")


SELECTOR = re.compile(r"^(?:(all|input|middle|output|style|composition)|(in|input|out|output|mid|middle|block)\s*(\d+)(?:\.(\d+))?)$")
SHORT_NAMES = {"in": "input", "out": "output", "mid": "middle", "block": DIT_BLOCK}


def apply_layer_spec(factors: dict[LayerKey, float], layers: Sequence[CrossAttentionLayer], spec: str) -> dict[LayerKey, float]:
    """Free-form overrides for power users, applied in order: 'all:0, style:1, output 4.0:0.5'.

    Selectors: all; input / middle / output (the regions above); style / composition;
    a block ('input 8', 'out 1', 'mid 0'); one transformer of a block ('output 1.3').
    """
    factors = dict(factors)
    stack = is_transformer_stack(layers)
    region = {} if stack else regions(layers)
    for item in re.split(r"[,\n;]", spec):
        if not item.strip():
            continue
        selector, _, value = item.rpartition(":")
        selector = " ".join(selector.strip().lower().split())
        match = SELECTOR.match(selector)
        try:
            factor = float(value)
        except ValueError:
            match = None
        if match is None:
            raise IPAdapterError(
                f"Cannot read layer weight {item.strip()!r}. Write 'selector: value' items separated by commas, "
                "selectors being all, input, middle, output, style, composition, a block like 'input 8' or "
                "'output 1', or one transformer like 'output 1.3' (on Flux and SD3.5: all, or a block like 'block 3')."
            )
        if stack and (match.group(1) not in (None, "all") or (match.group(2) is not None and SHORT_NAMES.get(match.group(2)) != DIT_BLOCK)):
            raise IPAdapterError(
                f"Layer weight {item.strip()!r}: this transformer model has no UNet stages or InstantStyle blocks; "
                "select 'all' or blocks by number, like 'block 3'."
            )
        chosen = select(match, layers, region)
        if not chosen:
            names = {DIT_BLOCK: "block"}
            blocks = ", ".join(f"{names.get(k[0], k[0])} {k[1]}" for k in sorted({k[:2] for k in factors}, key=lambda k: (BLOCK_ORDER[k[0]], k[1])))
            raise IPAdapterError(f"Layer weight {item.strip()!r} selects no cross-attention layer of this model; its blocks are: {blocks}.")
        for key in chosen:
            factors[key] = factor
    return factors


def select(match: re.Match, layers: Sequence[CrossAttentionLayer], region: dict[LayerKey, str]) -> list[LayerKey]:
    word, name, number, index = match.groups()
    keys = [layer.key for layer in layers]
    if word == "all":
        return keys
    if word in ("input", "middle", "output"):
        return [key for key in keys if region[key] == word]
    if word in ("style", "composition"):
        style, composition = style_and_composition_blocks(layers)
        block = style if word == "style" else composition
        return [key for key in keys if key[:2] == block]
    name = SHORT_NAMES.get(name, name)
    return [key for key in keys if key[:2] == (name, int(number)) and (index is None or key[2] == int(index))]
