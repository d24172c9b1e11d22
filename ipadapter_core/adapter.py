"""An IP-Adapter as a module: its image projection plus one to_k_ip/to_v_ip pair per cross-attention layer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import AdapterWeights, load_adapter_weights
from .errors import IPAdapterError
from .projection import build_image_projection
from .variants import AdapterSpec, detect_variant, fingerprint


class KeyValueProjection(nn.Module):
    """The two bias-free projections the adapter adds to one cross-attention layer."""

    def __init__(self, cross_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, inner_dim, bias=False)


class IPAdapterModel(nn.Module):
    """Weights of one adapter file. Parameter names mirror the checkpoint so saving round-trips."""

    def __init__(self, spec: AdapterSpec, image_proj: nn.Module, ip_layers: nn.ModuleDict, identity: str):
        super().__init__()
        self.spec = spec
        self.identity = identity
        self.image_proj = image_proj
        self.ip_layers = ip_layers

    @classmethod
    def from_weights(cls, weights: AdapterWeights, identity: str | None = None) -> "IPAdapterModel":
        """identity defaults to a fingerprint of the weights (give one for shape-only meta weights)."""
        spec = detect_variant(weights)
        try:
            image_proj = build_image_projection(spec, weights.image_proj)
            with torch.device("meta"):
                ip_layers = nn.ModuleDict({str(n): KeyValueProjection(spec.cross_attention_dim, dim) for n, dim in spec.layer_dims})
            ip_layers.load_state_dict(weights.ip_adapter, strict=True, assign=True)
        except RuntimeError as error:
            raise IPAdapterError(f"The IP-Adapter's weights do not fit its detected layout ({spec.description}): {error}") from error
        return cls(spec, image_proj, ip_layers.requires_grad_(False), identity or fingerprint(weights))

    @classmethod
    def load(cls, path: str | Path) -> "IPAdapterModel":
        return cls.from_weights(load_adapter_weights(path))

    def layer(self, processor_index: int) -> KeyValueProjection:
        return self.ip_layers[str(processor_index)]

    @torch.no_grad()
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Image tokens for CLIP features; computed in the projection's own dtype and device, returned as fp32."""
        parameter = next(self.image_proj.parameters())
        return self.image_proj(features.to(parameter.device, parameter.dtype)).float()

    def state_dict_official(self) -> dict[str, torch.Tensor]:
        """Flat `image_proj.*` / `ip_adapter.*` keys, the layout `.safetensors` releases use."""
        out = {f"image_proj.{k}": v for k, v in self.image_proj.state_dict().items()}
        out.update({f"ip_adapter.{k}": v for k, v in self.ip_layers.state_dict().items()})
        return out
