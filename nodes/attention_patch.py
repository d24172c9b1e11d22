"""The attn2 replacement ComfyUI calls for every cross-attention layer an IP-Adapter patches."""

from __future__ import annotations

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.model_patcher import ModelPatcher
from comfy.patcher_extension import CallbacksMP

from ..ipadapter_core.attention import ImageKeysValues
from ..ipadapter_core.image_branch import ImageBranch
from ..ipadapter_core.layer_map import CrossAttentionLayer

CLEANUP_KEY = "ipadapter_core"


class ImagePromptAttention:
    """Text attention (or whatever patch held this layer before) plus every image branch on the layer.

    Instances are immutable and shared between clones of a model (ModelPatcher.clone deep-copies
    model options; copying adapter state there would duplicate memory for nothing). Applying
    another adapter builds a new instance with one more branch, so several adapters on one layer
    share the query and run in one pass. The keys/values cache is keyed by everything it depends
    on and is dropped when sampling ends.
    """

    def __init__(self, layer: CrossAttentionLayer, branches: tuple[ImageBranch, ...], previous=None):
        self.layer = layer
        self.branches = branches
        self.previous = previous
        self.gated = any(branch.gated for branch in branches)
        self.cache: dict[tuple, ImageKeysValues] = {}

    def __deepcopy__(self, memo):
        return self

    def with_branch(self, branch: ImageBranch) -> "ImagePromptAttention":
        return ImagePromptAttention(self.layer, self.branches + (branch,), self.previous)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")

        def attention(q_, k_, v_, heads_):
            return optimized_attention(q_, k_, v_, heads_, attn_precision=precision, transformer_options=extra_options)

        out = self.previous(q, k, v, extra_options) if self.previous is not None else attention(q, k, v, heads)
        kinds = tuple(extra_options.get("cond_or_uncond") or (0,))
        chunk = q.shape[0] // len(kinds)
        key = (q.device, q.dtype, kinds, chunk)
        image_kv = self.cache.get(key)
        if image_kv is None:
            image_kv = self.cache[key] = self.build(kinds, chunk, q.device, q.dtype)
        scale = None
        if self.gated:  # one row per key/value row: the first sample of each group it serves
            step = q.shape[0] // image_kv.rows
            scale = torch.stack([branch.gate(extra_options["sigmas"])[::step] for branch in self.branches], dim=1)
        return image_kv.add_to(out, q, attention=attention, value_scale=scale)

    def build(self, kinds, chunk, device, dtype) -> ImageKeysValues:
        """Keys/values per pass (cond/uncond), or per latent when some prompt differs across latents."""
        if any(branch.per_latent for branch in self.branches):
            layout = [(kind, i) for kind in kinds for i in range(chunk)]
        else:
            layout = [(kind, 0) for kind in kinds]
        pairs = [branch.keys_values(self.layer, layout, device, dtype) for branch in self.branches]
        return ImageKeysValues([k for k, _ in pairs], [v for _, v in pairs], self.layer.heads)

    def release(self) -> None:
        self.cache.clear()
        for branch in self.branches:
            branch.gate_cache[:] = [None, None]


def install_branch(patcher: ModelPatcher, layers: list[CrossAttentionLayer], branch: ImageBranch) -> None:
    """Add `branch` to every layer of `patcher` (a clone), composing with patches already there."""
    replace = patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        existing = replace.get(layer.key, replace.get(layer.key[:2]))
        if isinstance(existing, ImagePromptAttention):
            patch = existing.with_branch(branch)
        else:
            patch = ImagePromptAttention(layer, (branch,), existing)
        patcher.set_model_attn2_replace(patch, *layer.key)
    if not patcher.get_callbacks(CallbacksMP.ON_CLEANUP, CLEANUP_KEY):
        patcher.add_callback_with_key(CallbacksMP.ON_CLEANUP, CLEANUP_KEY, release_caches)


def release_caches(patcher: ModelPatcher) -> None:
    """After sampling, drop cached image keys/values so nothing stays on the device between prompts."""
    for patch in patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {}).values():
        if isinstance(patch, ImagePromptAttention):
            patch.release()
