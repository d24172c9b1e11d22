"""A trainable IP-Adapter for a diffusers UNet: built as the paper initialises it, wired in with the inference attention.

The adapter is the pack's own `IPAdapterModel` (projection + one `to_k_ip`/`to_v_ip` pair per
cross-attention layer, keyed by checkpoint index), so what is trained is exactly what
`state_dict_official` exports and the nodes load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapter import IPAdapterModel, KeyValueProjection
from ..checkpoint import AdapterWeights, load_adapter_weights
from ..errors import IPAdapterError
from ..layer_map import checkpoint_index
from ..projection import ImageProjModel, Resampler
from ..variants import detect_variant
from .attention_processor import DecoupledAttnProcessor

ADAPTER_KINDS = ("base", "plus")


@dataclass(frozen=True)
class CrossAttentionSite:
    processor_name: str  # key in unet.attn_processors
    index: int  # checkpoint index n
    inner_dim: int
    context_dim: int


def cross_attention_sites(unet: nn.Module) -> list[CrossAttentionSite]:
    """The UNet's cross-attention layers in diffusers' processor order, with their checkpoint indices.

    The checkpoint index is the processor's position when attn1/attn2 alternate; a UNet where they
    do not would silently get a layout no loader reads, so it is refused.
    """
    modules = dict(unet.named_modules())
    names = list(unet.attn_processors)
    sites = []
    for position, name in enumerate(names):
        if not name.endswith("attn2.processor"):
            continue
        index = checkpoint_index(len(sites))
        if position != index:
            raise IPAdapterError(f"{name} is processor {position} of the UNet, but IP-Adapter files number it {index}; this UNet layout is not supported.")
        attention = modules[name[: -len(".processor")]]
        sites.append(CrossAttentionSite(name, index, attention.to_k.weight.shape[0], attention.to_k.weight.shape[1]))
    if not sites:
        raise IPAdapterError("The UNet has no cross-attention layers (attn2); IP-Adapter needs an SD1.5/SDXL-style UNet.")
    return sites


def build_adapter(
    unet: nn.Module,
    kind: str,
    encoder_width: int,
    num_tokens: int,
    resampler_dim: int = 0,
    resampler_heads: int = 0,
    resampler_depth: int = 4,
) -> IPAdapterModel:
    """A fresh fp32 adapter: random projection, `to_k_ip`/`to_v_ip` copied from each layer's `to_k`/`to_v`."""
    sites = cross_attention_sites(unet)
    cross_dim = sites[0].context_dim
    if kind == "base":
        image_proj: nn.Module = ImageProjModel(encoder_width, cross_dim, num_tokens)
    elif kind == "plus":
        dim = resampler_dim or min(cross_dim, 1280)
        heads = resampler_heads or dim // 64
        image_proj = Resampler(dim=dim, depth=resampler_depth, heads=heads, num_queries=num_tokens, embedding_dim=encoder_width, output_dim=cross_dim)
    else:
        raise IPAdapterError(f"Unknown adapter kind {kind!r}; choose one of {', '.join(ADAPTER_KINDS)}.")
    modules = dict(unet.named_modules())
    ip_layers = nn.ModuleDict()
    for site in sites:
        attention = modules[site.processor_name[: -len(".processor")]]
        layer = KeyValueProjection(site.context_dim, site.inner_dim)
        with torch.no_grad():
            layer.to_k_ip.weight.copy_(attention.to_k.weight)
            layer.to_v_ip.weight.copy_(attention.to_v.weight)
        ip_layers[str(site.index)] = layer
    return trainable(image_proj, ip_layers)


def load_adapter_for_training(path: str, unet: nn.Module) -> IPAdapterModel:
    """Start from an existing adapter file (fine-tuning), checked against the UNet's layers."""
    adapter = IPAdapterModel.from_weights(load_adapter_weights(path))
    expected = {(site.index, site.inner_dim) for site in cross_attention_sites(unet)}
    if set(adapter.spec.layer_dims) != expected:
        raise IPAdapterError(f"{path} is an {adapter.spec.description} whose layers do not match this UNet; start from a fresh adapter instead.")
    return trainable(adapter.image_proj, adapter.ip_layers)


def trainable(image_proj: nn.Module, ip_layers: nn.ModuleDict) -> IPAdapterModel:
    image_proj, ip_layers = image_proj.float().train().requires_grad_(True), ip_layers.float().train().requires_grad_(True)
    spec = detect_variant(AdapterWeights(dict(image_proj.state_dict()), dict(ip_layers.state_dict())))
    return IPAdapterModel(spec, image_proj, ip_layers, identity="training")


def install_processors(unet: nn.Module, adapter: IPAdapterModel, scale: float = 1.0) -> None:
    """Route every cross-attention layer through the decoupled attention with this adapter's weights."""
    processors = dict(unet.attn_processors)
    for site in cross_attention_sites(unet):
        processors[site.processor_name] = DecoupledAttnProcessor(adapter.layer(site.index), scale)
    unet.set_attn_processor(processors)


def set_adapter_scale(unet: nn.Module, scale: float) -> None:
    for processor in unet.attn_processors.values():
        if isinstance(processor, DecoupledAttnProcessor):
            processor.scale = scale


class AdapterTrainingModel(nn.Module):
    """The frozen UNet plus the trainable adapter as one module: what the optimizer, DDP and DeepSpeed wrap."""

    def __init__(self, unet: nn.Module, adapter: IPAdapterModel):
        super().__init__()
        self.unet = unet
        self.adapter = adapter

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor,
        image_features: torch.Tensor | None,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Noise prediction; image_features None runs the base model alone (adapter off)."""
        context: torch.Tensor | tuple = text_embeds
        if image_features is not None:
            context = (text_embeds, self.adapter.image_proj(image_features.to(next(self.adapter.image_proj.parameters()).dtype)))
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context, added_cond_kwargs=added_cond_kwargs).sample
