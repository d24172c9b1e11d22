"""Per-layer weighting: how a weight type spreads the weight over the UNet's cross-attention layers.

The weight types carry the names the leading ComfyUI IP-Adapter pack (cubiq/ComfyUI_IPAdapter_plus)
gave them, and on SD1.5 and SDXL they select the same layers with the same factors, so a workflow
moved from that pack behaves the same. Both are defined on *attention blocks*: the blocks of
ComfyUI's UNet (input n, middle, output n) that hold cross-attention, numbered 0, 1, ... in
execution order (16 on SD1.5, 11 on SDXL); every transformer of a block gets its block's factor.

- ease in / ease out / ease in-out / reverse in-out: 0.05 + 0.95 * a ramp over the block index t
  of L blocks (ease in: 1 - t/L, strongest at the first input block; ease out: t/L; in-out:
  1 - |t - L/2| / (L/2); reverse: |t - L/2| / (L/2)).
- weak input / weak middle / weak output: 0.2 on the input / middle / output blocks;
  strong middle: 0.2 on the input and output blocks.
- The InstantStyle family (style transfer, composition, strong style transfer, style and
  composition, strong style and composition) follows the leading pack's block tables on SD1.5
  and SDXL (SD_TABLES below). On any other UNet layout (distilled SDXL variants, tiny test
  UNets) the blocks are derived from the structure instead: composition is the last block of the
  encoder's deepest stage, style the second block of the decoder's deepest stage (the deepest
  stage being the run of blocks around the middle block that share its width). On SDXL that
  derivation gives the table's own blocks (input 8, output 1); on SD1.5 the table uses wider sets.

Transformer models (Flux, SD3.5) are one stack of blocks without stages: the ramps apply to them
over their blocks, first to last, with the same formulas; the stage and InstantStyle types have
no meaning there and are refused with an error that lists the ones that work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import IPAdapterError
from .layer_map import DIT_BLOCK, CrossAttentionLayer, LayerKey

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak middle",
    "weak output", "strong middle", "style transfer", "composition", "style and composition",
    "strong style transfer", "strong style and composition",
)
# Weight types with a second half for the composition blocks (its own prompt and weight).
TWO_PROMPT_TYPES = ("style and composition", "strong style and composition")
WEAK = 0.2
FLOOR = 0.05  # ease curves never switch a block fully off
BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2, DIT_BLOCK: 0}
POSITION_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out")  # the ones defined on transformer stacks
Block = tuple[str, int]

SD15_BLOCKS: tuple[Block, ...] = (
    ("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0),
    *(("output", n) for n in range(3, 12)),
)
SDXL_BLOCKS: tuple[Block, ...] = (("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0), *(("output", n) for n in range(6)))


def ones(*indices: int) -> dict[int, float]:
    return {i: 1.0 for i in indices}


# (style half, composition half) per InstantStyle type, as factors per attention block index.
SD_TABLES: dict[tuple[Block, ...], dict[str, tuple[dict[int, float], dict[int, float]]]] = {
    SD15_BLOCKS: {
        "style transfer": (ones(0, 1, 2, 3, *range(9, 16)), {}),
        "composition": ({4: 0.25, 5: 1.0}, {}),
        "strong style transfer": (ones(0, 1, 2, 3, *range(6, 16)), {}),
        "style and composition": (ones(0, 1, 2, 3, *range(9, 16)), {4: 0.25, 5: 1.0}),
        "strong style and composition": (ones(0, 1, 2, 3, *range(6, 16)), ones(4, 5)),
    },
    SDXL_BLOCKS: {
        "style transfer": (ones(6), {}),
        "composition": (ones(3), {}),
        "strong style transfer": (ones(0, 1, 2, *range(4, 11)), {}),
        "style and composition": (ones(6), ones(3)),
        "strong style and composition": (ones(0, 1, 2, *range(4, 11)), ones(3)),
    },
}
INSTANTSTYLE_TYPES = tuple(SD_TABLES[SD15_BLOCKS])


def is_transformer_stack(layers: Sequence[CrossAttentionLayer]) -> bool:
    return any(layer.key[0] == DIT_BLOCK for layer in layers)


def execution_order(layers: Sequence[CrossAttentionLayer]) -> list[CrossAttentionLayer]:
    return sorted(layers, key=lambda layer: (BLOCK_ORDER[layer.key[0]], layer.key[1], layer.key[2]))


def attention_blocks(layers: Sequence[CrossAttentionLayer]) -> list[Block]:
    """The blocks holding cross-attention, in execution order: index i is the leading pack's block number."""
    blocks: list[Block] = []
    for layer in execution_order(layers):
        if layer.key[:2] not in blocks:
            blocks.append(layer.key[:2])
    return blocks


def regions(layers: Sequence[CrossAttentionLayer]) -> dict[LayerKey, str]:
    """'input', 'deepest' (the stage around the middle block that shares its width) or 'output'
    for every layer: the structure the InstantStyle blocks of an unknown layout are derived from."""
    ordered = execution_order(layers)
    middle = [i for i, layer in enumerate(ordered) if layer.key[0] == "middle"]
    if not middle:
        raise IPAdapterError("This UNet has no cross-attention in its middle block; the style/composition weight types need one.")
    width = ordered[middle[0]].inner_dim
    first, last = middle[0], middle[-1]
    while first > 0 and ordered[first - 1].inner_dim == width:
        first -= 1
    while last < len(ordered) - 1 and ordered[last + 1].inner_dim == width:
        last += 1
    return {layer.key: "input" if i < first else "output" if i > last else "deepest" for i, layer in enumerate(ordered)}


def style_and_composition_blocks(layers: Sequence[CrossAttentionLayer]) -> tuple[Block, Block]:
    """(style block, composition block) derived from the structure, for layouts without a table."""
    region = regions(layers)
    deep_in = sorted({layer.key[1] for layer in layers if layer.key[0] == "input" and region[layer.key] == "deepest"})
    deep_out = sorted({layer.key[1] for layer in layers if layer.key[0] == "output" and region[layer.key] == "deepest"})
    if not deep_in or len(deep_out) < 2:
        raise IPAdapterError("This UNet's structure has no InstantStyle style/composition blocks; use another weight type.")
    return ("output", deep_out[1]), ("input", deep_in[-1])


def instantstyle_halves(layers: Sequence[CrossAttentionLayer], weight_type: str) -> tuple[dict[int, float], dict[int, float]]:
    """(style half, composition half) of an InstantStyle weight type, by attention block index."""
    blocks = attention_blocks(layers)
    table = SD_TABLES.get(tuple(blocks))
    if table is not None:
        return table[weight_type]
    style, composition = (blocks.index(block) for block in style_and_composition_blocks(layers))
    everything_but_composition = {i: 1.0 for i in range(len(blocks)) if i != composition}
    return {
        "style transfer": ({style: 1.0}, {}),
        "composition": ({composition: 1.0}, {}),
        "strong style transfer": (everything_but_composition, {}),
        "style and composition": ({style: 1.0}, {composition: 1.0}),
        "strong style and composition": (everything_but_composition, {composition: 1.0}),
    }[weight_type]


def per_layer(layers: Sequence[CrossAttentionLayer], by_block: dict[int, float]) -> dict[LayerKey, float]:
    index = {block: i for i, block in enumerate(attention_blocks(layers))}
    return {layer.key: by_block.get(index[layer.key[:2]], 0.0) for layer in layers}


def layer_factors(layers: Sequence[CrossAttentionLayer], weight_type: str) -> dict[LayerKey, float]:
    """Factor per layer for a weight type; for the two-prompt types, the style half (see two_prompt_factors)."""
    if weight_type not in WEIGHT_TYPES:
        raise IPAdapterError(f"Unknown weight_type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)}.")
    if is_transformer_stack(layers) and weight_type not in POSITION_TYPES:
        raise IPAdapterError(
            f"weight_type {weight_type!r} is defined on UNets (their input, middle and output blocks, InstantStyle's blocks); "
            f"this transformer model is one stack of blocks. Use one of {', '.join(POSITION_TYPES)}, or layer_weights with 'block N'."
        )
    if weight_type in INSTANTSTYLE_TYPES:
        return per_layer(layers, instantstyle_halves(layers, weight_type)[0])
    count = len(attention_blocks(layers))
    half = count / 2
    ramps = {
        "linear": lambda t: 1.0,
        "ease in": lambda t: FLOOR + (1 - FLOOR) * (1 - t / count),
        "ease out": lambda t: FLOOR + (1 - FLOOR) * (t / count),
        "ease in-out": lambda t: FLOOR + (1 - FLOOR) * (1 - abs(t - half) / half),
        "reverse in-out": lambda t: FLOOR + (1 - FLOOR) * (abs(t - half) / half),
    }
    weakened = {"weak input": ("input",), "weak middle": ("middle",), "weak output": ("output",), "strong middle": ("input", "output")}
    if weight_type in ramps:
        return per_layer(layers, {t: ramps[weight_type](t) for t in range(count)})
    return {layer.key: WEAK if layer.key[0] in weakened[weight_type] else 1.0 for layer in layers}


def composition_factors(layers: Sequence[CrossAttentionLayer], weight_type: str = "style and composition") -> dict[LayerKey, float]:
    """The composition half of a two-prompt weight type."""
    if weight_type not in TWO_PROMPT_TYPES:
        raise IPAdapterError(f"{weight_type!r} has no composition half; use one of {', '.join(TWO_PROMPT_TYPES)}.")
    return per_layer(layers, instantstyle_halves(layers, weight_type)[1])


def two_prompt_factors(layers: Sequence[CrossAttentionLayer], weight_type: str, spec: str = "") -> tuple[dict[LayerKey, float], dict[LayerKey, float]]:
    """(image_prompt's factors, composition_image_prompt's factors) for a two-prompt weight type.

    Each layer belongs to one half: the composition blocks to the composition prompt, every other
    layer to image_prompt. layer_weights (`spec`) sets factors on layers of both halves, so
    'composition: 0.5' weakens the composition half and 'all: 0.3' spreads image_prompt.
    """
    style, composition = layer_factors(layers, weight_type), composition_factors(layers, weight_type)
    owned = {key for key, value in composition.items() if value}
    both = apply_layer_spec({key: composition[key] if key in owned else style[key] for key in style}, layers, spec)
    return ({key: 0.0 if key in owned else value for key, value in both.items()},
            {key: value if key in owned else 0.0 for key, value in both.items()})


SELECTOR = re.compile(r"^(?:(all|input|middle|output|style|composition)|(\d+)|(in|input|out|output|mid|middle|block)\s*(\d+)(?:\.(\d+))?)$")
SHORT_NAMES = {"in": "input", "out": "output", "mid": "middle", "block": DIT_BLOCK}


def apply_layer_spec(factors: dict[LayerKey, float], layers: Sequence[CrossAttentionLayer], spec: str) -> dict[LayerKey, float]:
    """Free-form overrides for power users, applied in order: 'all:0, style:1, output 4.0:0.5'.

    Selectors: all; input / middle / output (ComfyUI's blocks of that name); style /
    composition (the blocks the 'style transfer' / 'composition' weight types use); an attention
    block by its number in execution order ('6', the leading pack's layer_weights numbering);
    a block by name ('input 8', 'out 1', 'mid 0'); one transformer of a block ('output 1.3').
    On Flux and SD3.5: all, and blocks by number ('block 3', or '3').
    """
    factors = dict(factors)
    stack = is_transformer_stack(layers)
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
                "selectors being all, input, middle, output, style, composition, an attention block number like '6', "
                "a block like 'input 8' or 'output 1', or one transformer like 'output 1.3' (on Flux and SD3.5: all, or a block like 'block 3')."
            )
        word, _, name = match.group(1, 2, 3)
        if stack and (word not in (None, "all") or (name is not None and SHORT_NAMES.get(name) != DIT_BLOCK)):
            raise IPAdapterError(
                f"Layer weight {item.strip()!r}: this transformer model has no UNet stages or InstantStyle blocks; "
                "select 'all' or blocks by number, like 'block 3'."
            )
        chosen = select(match, layers)
        if not chosen:
            numbered = enumerate(attention_blocks(layers))
            blocks = ", ".join(f"block {number}" if stack else f"{i} = {kind} {number}" for i, (kind, number) in numbered)
            raise IPAdapterError(f"Layer weight {item.strip()!r} selects no cross-attention layer of this model; its blocks are: {blocks}.")
        for key in chosen:
            factors[key] = factor
    return factors


def select(match: re.Match, layers: Sequence[CrossAttentionLayer]) -> list[LayerKey]:
    word, block_number, name, number, index = match.groups()
    keys = [layer.key for layer in layers]
    if word == "all":
        return keys
    if word in ("input", "middle", "output"):
        return [key for key in keys if key[0] == word]
    if word in ("style", "composition"):
        by_block = instantstyle_halves(layers, "style transfer" if word == "style" else "composition")[0]
        return [key for key, factor in per_layer(layers, by_block).items() if factor != 0.0]
    blocks = attention_blocks(layers)
    if block_number is not None:
        return [key for key in keys if int(block_number) < len(blocks) and key[:2] == blocks[int(block_number)]]
    name = SHORT_NAMES.get(name, name)
    return [key for key in keys if key[:2] == (name, int(number)) and (index is None or key[2] == int(index))]
