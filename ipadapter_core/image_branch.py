"""One adapter applied with one image prompt, and what it contributes to each cross-attention layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .adapter import IPAdapterModel
from .image_prompt import ImagePrompt
from .layer_map import CrossAttentionLayer, LayerKey


@dataclass(eq=False)
class ImageBranch:
    """Immutable once built; shared by every layer it patches and by every clone of the model.

    sigma_range: the branch is active while sigma_end <= sigma <= sigma_start; None means always.
    layer_weights: an extra factor per layer (absent layers get 1.0).
    """

    adapter: IPAdapterModel
    prompt: ImagePrompt
    weight: float
    sigma_range: tuple[float, float] | None = None
    layer_weights: Mapping[LayerKey, float] = field(default_factory=dict)
    gate_cache: list = field(default_factory=lambda: [None, None], repr=False)

    def keys_values(
        self, layer: CrossAttentionLayer, layout: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image keys and (weighted) values, one row per entry of `layout`.

        layout entries are (kind, latent index): kind 0 for a conditional pass, 1 for an
        unconditional one. Computed in fp32 from the adapter's stored weights, then cast once
        to the model's compute dtype.
        """
        projection = self.adapter.layer(layer.processor_index)
        tokens = torch.cat([self.prompt.cond, self.prompt.uncond]).to(device, torch.float32)
        keys = tokens @ projection.to_k_ip.weight.to(device, torch.float32).T
        scale = self.weight * self.layer_weights.get(layer.key, 1.0)
        values = (tokens @ projection.to_v_ip.weight.to(device, torch.float32).T) * scale
        rows = self.prompt.rows
        index = torch.tensor([kind * rows + min(i, rows - 1) for kind, i in layout], device=device)
        return keys[index].to(dtype), values[index].to(dtype)

    @property
    def per_latent(self) -> bool:
        """Whether latents of one pass see different tokens (one prompt row per latent)."""
        return self.prompt.rows > 1

    def gate(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Per sample: 1 where this step's sigma lies in the active range, else 0; no host sync.

        Cached per sigmas tensor: ComfyUI passes the same tensor to every layer of one step,
        so the comparison runs once per step, not once per layer.
        """
        if self.gate_cache[0] is not sigmas:
            if self.sigma_range is None:
                gate = torch.ones_like(sigmas, dtype=torch.float32)
            else:
                start, end = self.sigma_range
                gate = ((sigmas <= start) & (sigmas >= end)).float()
            self.gate_cache[:] = [sigmas, gate]
        return self.gate_cache[1]

    @property
    def gated(self) -> bool:
        return self.sigma_range is not None
