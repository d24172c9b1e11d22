"""An IP-Adapter as a module: its image projection plus the weights it adds to each patched layer.

UNet adapters add one bias-free to_k_ip/to_v_ip pair per cross-attention layer (and, for FaceID,
the file carries a LoRA for the UNet's own attention layers); XLabs' Flux adapters one biased pair
per double-stream block; InstantX's SD3.5 adapter per joint block an adaptive norm of the image
tokens, the pair, and RMS norms of the query, the image stream's keys and the image keys
(JointBlockProjection).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import AdapterWeights, load_adapter_weights
from .errors import IPAdapterError
from .projection import build_image_projection
from .variants import FLUX, LORA_KEY, SD3, AdapterSpec, detect_variant, fingerprint

LoRAPairs = dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]  # processor index -> projection -> (down, up)


class KeyValueProjection(nn.Module):
    """The two projections the adapter adds to one layer (bias-free on UNets, biased on Flux)."""

    def __init__(self, cross_dim: int, inner_dim: int, bias: bool = False):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, inner_dim, bias=bias)
        self.to_v_ip = nn.Linear(cross_dim, inner_dim, bias=bias)


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last axis, statistics in fp32 (as the SD3.5 adapter was trained)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


class AdaptiveNorm(nn.Module):
    """LayerNorm without affine weights, shifted and scaled per sample by a timestep embedding."""

    def __init__(self, embedding_dim: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(embedding_dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(torch.nn.functional.silu(temb)).chunk(2, dim=1)
        normed = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps)
        return normed * (1 + scale[:, None]) + shift[:, None]


class JointBlockProjection(nn.Module):
    """What the SD3.5 adapter adds to one joint block (names as in its checkpoint)."""

    def __init__(self, cross_dim: int, inner_dim: int, timestep_dim: int, head_dim: int):
        super().__init__()
        self.norm_ip = AdaptiveNorm(timestep_dim, cross_dim)
        self.to_k_ip = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, inner_dim, bias=False)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.norm_ip_k = RMSNorm(head_dim)


class IPAdapterModel(nn.Module):
    """Weights of one adapter file. Parameter names mirror the checkpoint so saving round-trips."""

    def __init__(self, spec: AdapterSpec, image_proj: nn.Module, ip_layers: nn.ModuleDict, identity: str, lora: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.spec = spec
        self.identity = identity
        self.image_proj = image_proj
        self.ip_layers = ip_layers
        # Kept out of the module's parameters: the LoRA becomes weight patches of the UNet, which
        # ComfyUI casts to the UNet's device when it merges them; it never runs with the adapter.
        self.lora_weights = dict(lora or {})

    @classmethod
    def from_weights(cls, weights: AdapterWeights, identity: str | None = None) -> "IPAdapterModel":
        """identity defaults to a fingerprint of the weights (give one for shape-only meta weights)."""
        spec = detect_variant(weights)
        lora = {key: value for key, value in weights.ip_adapter.items() if LORA_KEY.match(key)}
        try:
            image_proj = build_image_projection(spec, weights.image_proj)
            with torch.device("meta"):
                ip_layers = nn.ModuleDict({str(n): layer_projection(spec, dim, weights.ip_adapter.get(f"{n}.norm_ip.linear.weight")) for n, dim in spec.layer_dims})
            ip_layers.load_state_dict({k: v for k, v in weights.ip_adapter.items() if k not in lora}, strict=True, assign=True)
        except (RuntimeError, KeyError, IndexError, ZeroDivisionError, ValueError) as error:
            raise IPAdapterError(f"The IP-Adapter's weights do not fit its detected layout ({spec.description}): {error}") from error
        return cls(spec, image_proj, ip_layers.requires_grad_(False), identity or fingerprint(weights), lora)

    @classmethod
    def load(cls, path: str | Path) -> "IPAdapterModel":
        """Every error names the file: users pick it from a list of many."""
        name = Path(path).name
        weights = load_adapter_weights(path)
        try:
            return cls.from_weights(weights)
        except IPAdapterError as error:
            raise IPAdapterError(f"{name}: {error}") from error

    def layer(self, processor_index: int) -> nn.Module:
        return self.ip_layers[str(processor_index)]

    @torch.no_grad()
    def project(self, features: torch.Tensor, clip_features: torch.Tensor | None = None, shortcut_scale: float | None = None) -> torch.Tensor:
        """Image tokens for encoder features; computed in the projection's own dtype and device, returned as fp32.

        features: CLIP features, or face embeddings for FaceID. FaceID plus also reads the CLIP
        hidden states of the face crops (clip_features) and, for plusv2, the shortcut's scale.
        """
        if self.spec.timestep_conditioned:
            raise IPAdapterError(f"The {self.spec.description} projects image features at every sampling step; use project_at(features, timesteps).")
        parameter = next(self.image_proj.parameters())
        features = features.to(parameter.device, parameter.dtype)
        if self.spec.projection != "face_plus":
            return self.image_proj(features).float()
        if clip_features is None:
            raise IPAdapterError(f"The {self.spec.description} needs the CLIP hidden states of the face crops as well as the face embeddings.")
        return self.image_proj(features, clip_features.to(parameter.device, parameter.dtype), shortcut_scale).float()

    @torch.no_grad()
    def project_at(self, features: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, timestep embedding) for a timestep-conditioned projection, one row per feature row,
        computed in the projection's dtype and device (the sampler's), returned as fp32."""
        parameter = next(self.image_proj.parameters())
        tokens, temb = self.image_proj(features.to(parameter.device, parameter.dtype), timesteps.to(parameter.device))
        return tokens.float(), temb.float()

    def lora_pairs(self) -> LoRAPairs:
        """The in-file LoRA as plain (down, up) pairs: delta W = up @ down at strength 1 (no alpha in these files)."""
        pairs: LoRAPairs = {}
        for key in self.lora_weights:
            match = LORA_KEY.match(key)
            if match.group(3) == "down":
                n, projection = int(match.group(1)), match.group(2)
                up = self.lora_weights[f"{n}.to_{projection}_lora.up.weight"]
                pairs.setdefault(n, {})[projection] = (self.lora_weights[key], up)
        return pairs

    def state_dict_official(self) -> dict[str, torch.Tensor]:
        """Flat `image_proj.*` / `ip_adapter.*` keys, the layout `.safetensors` releases use."""
        out = {f"image_proj.{k}": v for k, v in self.image_proj.state_dict().items()}
        out.update({f"ip_adapter.{k}": v for k, v in self.ip_layers.state_dict().items()})
        out.update({f"ip_adapter.{k}": v for k, v in self.lora_weights.items()})
        return out


def layer_projection(spec: AdapterSpec, inner_dim: int, norm_weight: torch.Tensor | None) -> nn.Module:
    if spec.architecture == SD3:
        return JointBlockProjection(spec.cross_attention_dim, inner_dim, norm_weight.shape[1], spec.head_dim)
    return KeyValueProjection(spec.cross_attention_dim, inner_dim, bias=spec.architecture == FLUX)
