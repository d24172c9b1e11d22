"""One adapter applied with one image prompt, and what it contributes to each cross-attention layer."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .adapter import IPAdapterModel
from .errors import IPAdapterError
from .layer_map import CrossAttentionLayer, LayerKey

V_ONLY = "V only"
SCALING_MODES = (V_ONLY, "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
PENALTY_WIDTH = 1280  # "C penalty": the weight is scaled by inner_dim / 1280, gentler on narrow layers


@dataclass(eq=False)
class ImageBranch:
    """Its inputs never change once built; it is shared by every layer it patches and by every
    clone of the model. The two caches hold per-run state and are released after sampling.

    cond / uncond: (rows, tokens, width) image tokens; one row serves every latent, several
    rows map row i to latent i (the last row repeats). token_scale: (rows, tokens) factors on
    the values (per-reference weights), or None.
    sigma_range: the branch is active while sigma_end <= sigma <= sigma_start; None means always.
    layer_weights: factor per layer; layers absent from it are not patched at all.
    latent_weights: an extra factor per latent (animation schedules), the last repeating.
    mask: (masks, height, width) in [0, 1] over the image; where it is 0 the branch does nothing.
    scaling: how the weight enters the attention (SCALING_MODES).
    """

    adapter: IPAdapterModel
    cond: torch.Tensor
    uncond: torch.Tensor
    weight: float
    token_scale: torch.Tensor | None = None
    sigma_range: tuple[float, float] | None = None
    layer_weights: Mapping[LayerKey, float] | None = None
    latent_weights: Sequence[float] | None = None
    mask: torch.Tensor | None = None
    scaling: str = V_ONLY
    gate_cache: list = field(default_factory=lambda: [None, None], repr=False)
    device_cache: dict = field(default_factory=dict, repr=False)

    def on_device(self, name: str, make: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """Build and upload a prompt tensor once per sampling run and device, not once per layer."""
        key = (name, device)
        if key not in self.device_cache:
            self.device_cache[key] = make().to(device)
        return self.device_cache[key]

    def release(self) -> None:
        """Drop what sampling cached (device copies, the last step's gate)."""
        self.device_cache.clear()
        self.gate_cache[:] = [None, None]

    def factor(self, layer: CrossAttentionLayer) -> float:
        return self.weight * (1.0 if self.layer_weights is None else self.layer_weights.get(layer.key, 0.0))

    def patches(self, layer: CrossAttentionLayer) -> bool:
        """Layers a weight type switches off are left unpatched: no cost there at all."""
        return self.layer_weights is None or self.layer_weights.get(layer.key, 0.0) != 0.0

    def keys_values(
        self, layer: CrossAttentionLayer, layout: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image keys and (weighted) values, one row per entry of `layout`.

        layout entries are (kind, latent index): kind 0 for a pass that gets the conditional
        tokens, 1 for one that gets the unconditional tokens; the latent index counts in the
        whole latent batch. Computed in fp32 from the adapter's stored weights, then cast once
        to the model's compute dtype.
        """
        projection = self.adapter.layer(layer.processor_index)
        tokens = self.on_device("tokens", lambda: torch.cat([self.cond, self.uncond]).float(), device)
        keys = linear_fp32(tokens, projection.to_k_ip, device)
        values = linear_fp32(tokens, projection.to_v_ip, device)
        if self.token_scale is not None:
            values = values * self.on_device("token_scale", lambda: torch.cat([self.token_scale, self.token_scale])[..., None], device)
        keys, values = scale_keys_values(keys, values, self.factor(layer), self.scaling, layer.inner_dim)
        # Rows picked by slicing, and per-latent weights applied as Python numbers: an index or
        # weight tensor would be a host-to-device copy, which waits for the GPU queue.
        rows = self.cond.shape[0]
        picks = [kind * rows + min(i, rows - 1) for kind, i in layout]
        keys = torch.cat([keys[r : r + 1] for r in picks])
        values = torch.cat([values[r : r + 1] for r in picks])
        if self.latent_weights is not None:
            last = len(self.latent_weights) - 1
            values = torch.cat([values[j : j + 1] * self.latent_weights[min(i, last)] for j, (_, i) in enumerate(layout)])
        return keys.to(dtype), values.to(dtype)

    @property
    def rows(self) -> int:
        """Distinct prompts: 1, or one per latent with unfold_batch."""
        return self.cond.shape[0]

    @property
    def per_latent(self) -> bool:
        """Whether latents of one pass see different tokens or weights (one key/value row per latent)."""
        return self.rows > 1 or self.latent_weights is not None

    def query_mask(self, length: int, latent_size: Sequence[int], passes: int, latents: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """The mask at this layer's token grid, (batch, length, 1) in the sampler's batch order.

        latents: for each latent of one pass, its index in the whole batch (mask i for latent i,
        the last repeating); the batch holds `passes` such runs of latents.
        """
        if self.mask is None:
            return None
        height, width = latent_size
        for factor in (1, 2, 4, 8, 16, 32, 64):
            grid = (math.ceil(height / factor), math.ceil(width / factor))
            if grid[0] * grid[1] == length:
                break
        else:
            raise IPAdapterError(f"Cannot place the attention mask on a layer of {length} tokens for a {height}x{width} latent.")
        mask = self.on_device("mask", lambda: self.mask[:, None].float(), device)
        resized = F.interpolate(mask, size=grid, mode="bilinear", align_corners=False).reshape(-1, length)
        per_latent = torch.cat([resized[min(i, resized.shape[0] - 1)][None] for i in latents])
        return per_latent.repeat(passes, 1)[..., None].to(dtype)

    def check_batch(self, latents: int) -> None:
        """Raised before the first step: per-latent inputs must fit the latent batch."""
        rows = self.rows
        if rows > latents:
            raise IPAdapterError(
                f"unfold_batch maps reference i to latent i, but there are {rows} references for {latents} latents. "
                "Use a latent batch at least as large as the number of references, or turn unfold_batch off."
            )
        if self.mask is not None and self.mask.shape[0] not in (1, latents):
            raise IPAdapterError(
                f"attn_mask has {self.mask.shape[0]} masks for a batch of {latents} latents; give one mask, or one per latent."
            )

    def gate(self, sigmas: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per sample: 1 where this step's sigma lies in the active range, else 0; no host sync.

        Cached per sigmas tensor and dtype: ComfyUI passes the same tensor to every layer of one
        step, so the comparison (and the cast to the model's dtype) runs once per step, not once
        per layer.
        """
        cached = self.gate_cache[0]
        if cached is None or cached[0] is not sigmas or cached[1] != dtype:
            if self.sigma_range is None:
                gate = torch.ones_like(sigmas, dtype=dtype)
            else:
                start, end = self.sigma_range
                gate = ((sigmas <= start) & (sigmas >= end)).to(dtype)
            self.gate_cache[:] = [(sigmas, dtype), gate]
        return self.gate_cache[1]

    @property
    def gated(self) -> bool:
        return self.sigma_range is not None


def linear_fp32(x: torch.Tensor, layer: torch.nn.Linear, device: torch.device) -> torch.Tensor:
    """A projection in fp32 from the stored weights (and bias: Flux adapters have one)."""
    bias = None if layer.bias is None else layer.bias.to(device, torch.float32)
    return F.linear(x, layer.weight.to(device, torch.float32), bias)


def scale_keys_values(keys: torch.Tensor, values: torch.Tensor, weight: float, mode: str, inner_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the weight enters: V only is the paper's λ; the others also sharpen or flatten the
    image attention (K) and, with the C penalty, scale the weight by the layer's width / 1280."""
    check_scaling(mode)
    if mode == V_ONLY:
        return keys, values * weight
    if mode.endswith("w/ C penalty"):
        weight = weight * inner_dim / PENALTY_WIDTH
    if mode in ("K+V", "K+V w/ C penalty"):
        return keys * weight, values * weight
    mean = values.mean(dim=1, keepdim=True)  # K+mean(V) w/ C penalty
    return keys * weight, values - mean + mean * weight


def check_scaling(mode: str) -> str:
    """embeds_scaling must be one of SCALING_MODES; checked when a branch is built, before sampling."""
    if mode not in SCALING_MODES:
        raise IPAdapterError(f"Unknown embeds_scaling {mode!r}; choose one of {', '.join(SCALING_MODES)}.")
    return mode
