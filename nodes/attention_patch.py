"""The attn2 replacement ComfyUI calls for every cross-attention layer an IP-Adapter patches.

Which image tokens and latents each chunk of a call stands for is read per call, never from
positions inside it (ipadapter_core/passes.py): a CALC_COND_BATCH wrapper tells the patches which
of the call's conditioning lists are negative, and context windows name their latents.
"""

from __future__ import annotations

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.model_patcher import ModelPatcher
from comfy.patcher_extension import CallbacksMP, WrappersMP

from ..ipadapter_core.attention import ImageKeysValues
from ..ipadapter_core.image_branch import ImageBranch
from ..ipadapter_core.layer_map import CrossAttentionLayer
from ..ipadapter_core.passes import PASS_KINDS, conditioning_kind, mark_prompt_types, pass_kinds, row_gate, row_layout, window_latents

PATCHER_KEY = "ipadapter_core"
OVERRIDE_KEY = "optimized_attention_override"  # transformer_options entry: the host calls this kernel instead of its own


class ImagePromptAttention:
    """Text attention (or whatever patch held this layer before) plus every image branch on the layer.

    Instances are immutable and shared between clones of a model (ModelPatcher.clone deep-copies
    model options; copying adapter state there would duplicate memory for nothing). Applying
    another adapter builds a new instance with one more branch, so several adapters on one layer
    share the query and run in one pass. Caches are keyed by everything they depend on and are
    dropped when sampling ends.
    """

    def __init__(self, layer: CrossAttentionLayer, branches: tuple[ImageBranch, ...], previous=None):
        self.layer = layer
        self.branches = branches
        self.previous = previous
        self.gated = any(branch.gated for branch in branches)
        self.masked = any(branch.mask is not None for branch in branches)
        self.per_latent = any(branch.per_latent for branch in branches)  # one key/value row per latent
        self.latent_masks = any(branch.mask is not None and branch.mask.shape[0] > 1 for branch in branches)
        self.cache: dict[tuple, ImageKeysValues] = {}
        self.mask_cache: dict[tuple, list] = {}

    def __deepcopy__(self, memo):
        return self

    def with_branch(self, branch: ImageBranch) -> "ImagePromptAttention":
        return ImagePromptAttention(self.layer, self.branches + (branch,), self.previous)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.previous is not None:
            return self.add_image(self.previous(q, k, v, extra_options), q, extra_options)
        out = host_attention(extra_options)(q, k, v, extra_options["n_heads"])
        # The host's own kernel returns a fresh tensor: the image half may accumulate into it. An
        # attention override (another pack's kernel) might keep what it returns, so not then.
        return self.add_image(out, q, extra_options, overwrite=OVERRIDE_KEY not in extra_options)

    def add_image(self, out: torch.Tensor, q: torch.Tensor, extra_options: dict, overwrite: bool = False) -> torch.Tensor:
        """out + every branch's image attention for queries q (B, L, heads*dim); Flux blocks use it too.

        extra_options: ComfyUI's transformer options with cond_or_uncond, sigmas and, with masks,
        original_shape (the latent's). overwrite: `out` is a fresh tensor only this call reads,
        which may be updated in place (see ImageKeysValues.add_to).
        """
        kinds = pass_kinds(extra_options)
        chunk = q.shape[0] // len(kinds)
        windowed = window_latents(extra_options, chunk) if self.per_latent or self.latent_masks else None
        latents = windowed or tuple(range(chunk))
        key = (q.device, q.dtype, kinds, chunk, windowed)
        image_kv = self.cache.get(key)
        if image_kv is None:
            image_kv = self.cache[key] = self.build(kinds, latents, q.device, q.dtype)
        scale = None
        if self.gated:  # one gate per key/value row (ipadapter_core/passes.py)
            sigmas = extra_options["sigmas"]
            gates = [row_gate(branch.gate(sigmas, q.dtype), len(kinds), chunk, self.per_latent) for branch in self.branches]
            scale = gates[0].unsqueeze(1) if len(gates) == 1 else torch.stack(gates, dim=1)
        masks = self.masks(q, kinds, latents, extra_options) if self.masked else None
        return image_kv.add_to(out, q, value_scale=scale, masks=masks, overwrite_text=overwrite)

    def build(self, kinds: tuple[int, ...], latents: tuple[int, ...], device, dtype) -> ImageKeysValues:
        """Keys/values per pass, or per latent (indices into the whole batch) when some input differs across latents."""
        layout = row_layout(kinds, latents, self.per_latent)
        pairs = [branch.keys_values(self.layer, layout, device, dtype) for branch in self.branches]
        return ImageKeysValues([k for k, _ in pairs], [v for _, v in pairs], self.layer.heads)

    def masks(self, q, kinds, latents, extra_options) -> list:
        latent_size = tuple(extra_options["original_shape"][-2:])
        key = (q.shape[1], latent_size, len(kinds), latents, q.device, q.dtype)
        if key not in self.mask_cache:
            self.mask_cache[key] = [branch.query_mask(q.shape[1], latent_size, len(kinds), latents, q.device, q.dtype) for branch in self.branches]
        return self.mask_cache[key]

    def release(self) -> None:
        self.cache.clear()
        self.mask_cache.clear()
        for branch in self.branches:
            branch.release()


def host_attention(extra_options: dict):
    """The attention kernel ComfyUI picked, with the layer's precision setting, as an AttentionFn."""
    precision = extra_options.get("attn_precision")

    def attention(q, k, v, heads):
        return optimized_attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)

    return attention


def attn2_patches(patcher: ModelPatcher) -> dict:
    return patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def install_branch(patcher: ModelPatcher, layers: list[CrossAttentionLayer], branch: ImageBranch) -> None:
    """Add `branch` to the layers it weights in `patcher` (a clone), composing with patches already there."""
    replace = attn2_patches(patcher)
    for layer in layers:
        if not branch.patches(layer):
            continue
        existing = replace.get(layer.key, replace.get(layer.key[:2]))
        if isinstance(existing, ImagePromptAttention):
            patch = existing.with_branch(branch)
        else:
            patch = ImagePromptAttention(layer, (branch,), existing)
        patcher.set_model_attn2_replace(patch, *layer.key)
    if not patcher.get_callbacks(CallbacksMP.ON_CLEANUP, PATCHER_KEY):
        patcher.add_callback_with_key(CallbacksMP.ON_CLEANUP, PATCHER_KEY, release_caches)
        patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, PATCHER_KEY, check_batch_before_sampling)
        add_pass_marks(patcher, PATCHER_KEY)


def branches_of(patcher: ModelPatcher) -> set[ImageBranch]:
    return {b for patch in attn2_patches(patcher).values() if isinstance(patch, ImagePromptAttention) for b in patch.branches}


def release_caches(patcher: ModelPatcher) -> None:
    """After sampling, drop cached image keys/values so nothing stays on the device between prompts."""
    for patch in attn2_patches(patcher).values():
        if isinstance(patch, ImagePromptAttention):
            patch.release()


def check_batch_before_sampling(executor, noise, *args, **kwargs):
    """Per-latent inputs (unfolded references, masks) are checked against the latent batch before step one."""
    for branch in branches_of(executor.class_obj.model_patcher):
        branch.check_batch(noise.shape[0])
    return executor(noise, *args, **kwargs)


def add_pass_marks(patcher: ModelPatcher, key: str) -> None:
    """The two wrappers through which the patches learn each call's conditioning kinds (ipadapter_core/passes.py)."""
    patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, key, mark_conditionings)
    patcher.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, key, mark_passes)


def mark_conditionings(executor, *args, **kwargs):
    """Before sampling: every conditioning of the guider (its copies for this run) carries a prompt_type."""
    mark_prompt_types(getattr(executor.class_obj, "conds", None) or {})
    return executor(*args, **kwargs)


def mark_passes(executor, model, conds, x_in, timestep, model_options):
    """Per calc_cond_batch call: COND or UNCOND for each of its conditioning lists, in the transformer options."""
    kinds = tuple(conditioning_kind(conditioning) for conditioning in conds)
    options = {**model_options, "transformer_options": {**model_options.get("transformer_options", {}), PASS_KINDS: kinds}}
    return executor(model, conds, x_in, timestep, options)
