"""Which checkpoint layer (`{n}.to_k_ip`) belongs to which cross-attention layer of a UNet.

Checkpoints number the j-th cross-attention layer n = 2j + 1, counting in the order of
diffusers' `unet.attn_processors`: down blocks, then up blocks, then the mid block last (the
official trainer numbered every attention processor, attn1 taking the even numbers). Walking an LDM-layout UNet (`input_blocks`, `middle_block`, `output_blocks`, as
ComfyUI and the original Stable Diffusion code build it) in that order derives the map for any
UNet of the family - fine-tunes, merges, SD1.5, SDXL - instead of trusting a hard-coded table.
The same walk names each layer's module path, which places FaceID's in-file LoRA (numbered the
same way, attn1 at 2j and attn2 at 2j + 1) on the UNet's own weights.

Transformer (DiT) adapters number blocks: XLabs' Flux adapters `double_blocks.{i}` of Flux's
double-stream blocks, InstantX's SD3.5 adapter the joint blocks of the MMDiT, in model order.
Their layers are keyed ("double_block", i, 0); ComfyUI patches them as ("double_block", i).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .errors import IPAdapterError
from .variants import ARCHITECTURE_NAMES, FLUX, SD3, UNET, AdapterSpec

LayerKey = tuple[str, int, int]  # (block name, block number, transformer index), ComfyUI's patch key
DIT_BLOCK = "double_block"


LORA_TARGETS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}  # LoRA projection -> Linear in the attention module


@dataclass(frozen=True)
class CrossAttentionLayer:
    key: LayerKey
    processor_index: int  # the `n` of `{n}.to_k_ip.weight`
    inner_dim: int
    context_dim: int
    heads: int
    path: str = ""  # the transformer block's module path inside the UNet, e.g. input_blocks.1.1.transformer_blocks.0

    @property
    def attention_paths(self) -> dict[int, str]:
        """Processor index -> attention module path: the block's attn1 is numbered just before its attn2."""
        return {self.processor_index - 1: f"{self.path}.attn1", self.processor_index: f"{self.path}.attn2"}


def cross_attention_layers(unet: nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of an LDM-layout UNet, in checkpoint (diffusers) order."""
    blocks = [("input", number, block, f"input_blocks.{number}") for number, block in enumerate(unet.input_blocks)]
    blocks += [("output", number, block, f"output_blocks.{number}") for number, block in enumerate(unet.output_blocks)]
    if getattr(unet, "middle_block", None) is not None:
        blocks.append(("middle", 0, unet.middle_block, "middle_block"))
    layers = []
    for block_name, number, block, prefix in blocks:
        for position, module in enumerate(block):
            for index, transformer in enumerate(getattr(module, "transformer_blocks", ())):
                attention = getattr(transformer, "attn2", None)
                if attention is None:
                    continue
                layers.append(
                    CrossAttentionLayer(
                        key=(block_name, number, index),
                        processor_index=checkpoint_index(len(layers)),
                        inner_dim=attention.to_k.weight.shape[0],
                        context_dim=attention.to_k.weight.shape[1],
                        heads=attention.heads,
                        path=f"{prefix}.{position}.transformer_blocks.{index}",
                    )
                )
    return layers


def checkpoint_index(position: int) -> int:
    """The `n` of the position-th (0-based) cross-attention layer in diffusers' processor order."""
    return 2 * position + 1


def lora_weight_pairs(
    unet: nn.Module, layers: list[CrossAttentionLayer], lora: Mapping[int, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A LoRA numbered by attention processor -> {UNet weight key: (down, up)}, keys relative to the UNet.

    Each pair is checked against the shape of the weight it lands on, so a LoRA for another
    architecture is refused instead of being merged into the wrong layer.
    """
    paths = {n: path for layer in layers for n, path in layer.attention_paths.items()}
    out = {}
    for n, projections in sorted(lora.items()):
        if n not in paths:
            raise IPAdapterError(
                f"The adapter's LoRA patches attention layer {n}, which this model does not have; use a FaceID adapter "
                "made for this model's architecture."
            )
        for projection, (down, up) in projections.items():
            key = f"{paths[n]}.{LORA_TARGETS[projection]}.weight"
            weight = unet.get_submodule(key.rsplit(".", 1)[0]).weight
            if (up.shape[0], down.shape[1]) != tuple(weight.shape):
                raise IPAdapterError(
                    f"The adapter's LoRA for {key} is {up.shape[0]}x{down.shape[1]} but the model's weight is "
                    f"{weight.shape[0]}x{weight.shape[1]}; use a FaceID adapter made for this model."
                )
            out[key] = (down, up)
    return out


def model_architecture(diffusion_model: nn.Module) -> str | None:
    """UNET, FLUX or SD3 from the module structure ComfyUI built; None for anything else."""
    if hasattr(diffusion_model, "input_blocks"):
        return UNET
    blocks = getattr(diffusion_model, "double_blocks", None)
    if blocks is not None and len(blocks) and hasattr(blocks[0], "img_attn"):
        return FLUX
    if getattr(diffusion_model, "joint_blocks", None) is not None:
        return SD3
    return None


def transformer_layers(diffusion_model: nn.Module) -> list[CrossAttentionLayer]:
    """The blocks of a Flux or MMDiT model that carry an image branch, in model order.

    Flux: every double-stream block, width and heads of its image-stream attention. MMDiT: every
    joint block, width and heads of its image (x) stream. context_dim is 0: DiT adapters read
    image tokens of their own width, unrelated to the text width.
    """
    architecture = model_architecture(diffusion_model)
    layers = []
    if architecture == FLUX:
        for index, block in enumerate(diffusion_model.double_blocks):
            attention = block.img_attn
            layers.append(CrossAttentionLayer((DIT_BLOCK, index, 0), index, attention.qkv.weight.shape[1], 0, attention.num_heads, f"double_blocks.{index}"))
    elif architecture == SD3:
        for index, block in enumerate(diffusion_model.joint_blocks):
            attention = block.x_block.attn
            layers.append(CrossAttentionLayer((DIT_BLOCK, index, 0), index, attention.qkv.weight.shape[1], 0, attention.num_heads, f"joint_blocks.{index}"))
    return layers


def model_layers(diffusion_model: nn.Module) -> tuple[str | None, list[CrossAttentionLayer]]:
    """(architecture, the layers an adapter of that architecture patches)."""
    architecture = model_architecture(diffusion_model)
    if architecture == UNET:
        return architecture, cross_attention_layers(diffusion_model)
    return architecture, transformer_layers(diffusion_model)


def describe_model(architecture: str | None, layers: list[CrossAttentionLayer]) -> str:
    if architecture == UNET:
        return family_of({layer.context_dim for layer in layers}) if layers else "a UNet without cross-attention"
    if architecture in (FLUX, SD3):
        name = "Flux" if architecture == FLUX else "an SD3-family MMDiT"
        width = layers[0].inner_dim if layers else 0
        return f"{name} ({len(layers)} blocks of width {width})"
    return "a model this pack cannot patch"


def match_model(architecture: str | None, layers: list[CrossAttentionLayer], spec: AdapterSpec) -> list[CrossAttentionLayer]:
    """The model's layers paired with the adapter's, for any architecture; errors name what fits."""
    if architecture == spec.architecture == UNET:
        return match_adapter(layers, spec)
    model = describe_model(architecture, layers)
    if architecture != spec.architecture:
        if architecture is None:
            raise IPAdapterError(f"This model is {model}: IP-Adapters work with SD1.5 and SDXL UNets, Flux.1 and SD3.5 Large.")
        wanted = ARCHITECTURE_NAMES[architecture] if architecture != UNET else model
        raise IPAdapterError(
            f"Wrong IP-Adapter for the model: the model is {model} but this is an {spec.description}. "
            f"Load an IP-Adapter made for {wanted}."
        )
    adapter_dims = dict(spec.layer_dims)
    model_dims = {layer.processor_index: layer.inner_dim for layer in layers}
    if adapter_dims != model_dims:
        widths = sorted(set(adapter_dims.values()))
        raise IPAdapterError(
            f"The {spec.description} has {len(adapter_dims)} blocks of width {'/'.join(map(str, widths))}, but the model is "
            f"{model}. It was trained for {ARCHITECTURE_NAMES[spec.architecture]}; use a model of that architecture "
            "(SD3.5 Medium and Flux.2 are different architectures)."
        )
    return layers


def match_adapter(layers: list[CrossAttentionLayer], spec: AdapterSpec, model_name: str = "this model") -> list[CrossAttentionLayer]:
    """The model's layers paired with the adapter's, or an error that names the right adapter family."""
    if not layers:
        raise IPAdapterError(f"{model_name} has no cross-attention layers; IP-Adapter works with SD1.5 and SDXL UNets.")
    context_dims = {layer.context_dim for layer in layers}
    if context_dims != {spec.cross_attention_dim}:
        model_family = family_of(context_dims)
        raise IPAdapterError(
            f"Wrong IP-Adapter for the model: {model_name} is {model_family} but this is an {spec.description}. "
            f"Load an IP-Adapter made for {model_family}."
        )
    by_index = {layer.processor_index: layer for layer in layers}
    adapter_dims = dict(spec.layer_dims)
    model_dims = {index: layer.inner_dim for index, layer in by_index.items()}
    if adapter_dims != model_dims:
        raise IPAdapterError(
            f"The IP-Adapter's {len(adapter_dims)} layers do not line up with the {len(model_dims)} "
            f"cross-attention layers of {model_name} ({spec.family} adapter on a model with a different "
            "UNet layout). Use an IP-Adapter trained for this model's architecture."
        )
    return layers


def family_of(context_dims: set[int]) -> str:
    names = {768: "SD1.5", 2048: "SDXL", 1024: "SD2.x"}
    return " / ".join(names.get(dim, f"a model with text width {dim}") for dim in sorted(context_dims))
