"""The double-block replacement ComfyUI calls for every Flux / MMDiT block an IP-Adapter patches.

ComfyUI offers one patch point on these models: `patches_replace["dit"][("double_block", i)]`,
called with the block's inputs and `original_block`. The image branch needs a tensor from
inside the block: the image stream's query after QK-norm and before RoPE (Flux), or its raw
q, k, v and the attention output before the output projection (SD3.5). Recomputing them would
repeat the block's largest projection; copying the block's code would break on every host
update. So, for the duration of the call only, forward hooks on the block's own submodules
hand over what the host computes anyway:
- Flux: a hook on `img_attn.norm` (the QK-norm; its output is the query the branch reads). The
  branch output joins the image stream after the block, as in diffusers' FluxIPAdapterMixin.
- SD3.5: a hook on `x_block.attn.qkv` (the raw projections) and a pre-hook on
  `x_block.attn.proj` that adds the branch to its input, as in diffusers' SD3 processor.
Hooks are removed in `finally`, so nothing outlives the call. Another pack's patch on the same
block is called in place of the original (its own call of the original block fires the hooks).
"""

from __future__ import annotations

import weakref

import torch
from comfy.model_patcher import ModelPatcher
from comfy.patcher_extension import CallbacksMP, WrappersMP

from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.image_branch import ImageBranch
from ..ipadapter_core.layer_map import CrossAttentionLayer
from ..ipadapter_core.timestep_branch import TimestepImageBranch, joint_image_attention
from ..ipadapter_core.variants import FLUX, SD3
from ..ipadapter_core.passes import call_latents, pass_kinds, row_gate, row_layout
from .attention_patch import ImagePromptAttention, add_pass_marks, host_attention

PATCHER_KEY = "ipadapter_core_dit"
STEP_KEY = "ipadapter_step"  # transformer_options entry: what one model evaluation's blocks share


class ImagePromptBlock:
    """One block with every adapter applied to it; immutable and shared between clones, like
    ImagePromptAttention (whose caches and math the Flux branch reuses)."""

    def __init__(self, layer: CrossAttentionLayer, architecture: str, block: torch.nn.Module, branches: tuple[ImageBranch, ...], previous=None):
        self.layer = layer
        self.architecture = architecture
        self.block = weakref.ref(block)  # the model owns its blocks; the patch must not keep them alive
        self.branches = branches
        self.previous = previous
        self.image = ImagePromptAttention(layer, branches) if architecture == FLUX else None
        self.cache: dict[tuple, list] = {}

    def __deepcopy__(self, memo):
        return self

    def with_branch(self, branch: ImageBranch) -> "ImagePromptBlock":
        return ImagePromptBlock(self.layer, self.architecture, self.block(), self.branches + (branch,), self.previous)

    def __call__(self, args: dict, extra: dict) -> dict:
        run = (lambda a: self.previous(a, extra)) if self.previous is not None else extra["original_block"]
        block = self.block()
        options = args["transformer_options"]
        captured: dict[str, torch.Tensor] = {}
        if self.architecture == FLUX:
            hooks = [block.img_attn.norm.register_forward_hook(lambda module, inputs, output: captured.__setitem__("q", output[0]))]
        else:
            attention = block.x_block.attn

            def add_branches(module, inputs):
                if "qkv" not in captured:
                    return None
                captured["added"] = True
                return (self.add_joint(inputs[0], captured.pop("qkv"), options),)

            hooks = [
                attention.qkv.register_forward_hook(lambda module, inputs, output: captured.__setitem__("qkv", output)),
                attention.proj.register_forward_pre_hook(add_branches),
            ]
        try:
            out = run(args)
        finally:
            for hook in hooks:
                hook.remove()
        if "q" not in captured and "added" not in captured:
            raise IPAdapterError(
                f"Block {self.layer.processor_index} was replaced by another node's patch that does not run the block's "
                "attention, so the IP-Adapter cannot reach it. Apply the IP-Adapter without that node."
            )
        if self.architecture == FLUX:
            q = captured["q"]  # (B, heads, L, dim) after QK-norm, before RoPE
            out = dict(out)
            out["img"] = self.image.add_image(out["img"], q.transpose(1, 2).flatten(2), step_options(options, out["img"]))
        return out

    def add_joint(self, attn_out: torch.Tensor, qkv: torch.Tensor, options: dict) -> torch.Tensor:
        """SD3.5: the block's attention output (before its projection) plus every branch."""
        step = options.get(STEP_KEY)
        if step is None:
            raise IPAdapterError("The SD3.5 IP-Adapter ran without its per-step inputs; apply it with Apply IP-Adapter, not by copying its patch.")
        heads = self.layer.heads
        q, k, v = qkv.unflatten(-1, (3, -1)).unbind(-2)  # the host's split: (B, L, 3*width) in q, k, v order
        kinds = pass_kinds(options)
        chunk = q.shape[0] // len(kinds)
        latents = call_latents(options, chunk)
        attention = host_attention(options)
        out = attn_out
        for index, branch in enumerate(self.branches):
            layout = row_layout(kinds, latents, branch.rows > 1)
            tokens, temb = branch.step_tokens(layout, step["timesteps"], q.device)
            static, token_scale, mask = self.per_run(index, branch, layout, kinds, latents, q, step)
            result = joint_image_attention(q, k, v, branch.adapter.layer(self.layer.processor_index), tokens, temb, heads, attention, token_scale)
            scale = static
            if branch.gated:  # one gate per sample: the host's sigmas hold one per latent of a pass
                scale = scale * row_gate(branch.gate(options["sigmas"]), len(kinds), chunk, per_latent=True).to(q.dtype)[:, None, None]
            if mask is not None:
                scale = scale * mask
            out = torch.addcmul(out, result, scale)
        return out

    def per_run(self, index, branch, layout, kinds, latents, q, step) -> list:
        """(per-sample weight (B, 1, 1), token scale per layout row, mask (B, L, 1)) built once per
        run and batch layout: Python numbers become device tensors once, not per step.
        latents: the batch indices of the call's latents (a context window's, or 0..chunk-1)."""
        key = (index, tuple(layout), kinds, latents, q.shape[1], q.device, q.dtype, tuple(step["latent_size"]))
        if key not in self.cache:
            weights = branch.latent_weights or (1.0,)
            factor = branch.factor(self.layer)
            static = torch.tensor([factor * weights[min(i, len(weights) - 1)] for _ in kinds for i in latents], dtype=q.dtype)
            token_scale = None
            if branch.token_scale is not None:
                rows = branch.token_scale.shape[0]
                token_scale = torch.cat([branch.token_scale[min(i, rows - 1)][None] for _, i in layout]).to(q.device)
            mask = branch.query_mask(q.shape[1], step["latent_size"], len(kinds), latents, q.device, q.dtype)
            self.cache[key] = [static.to(q.device)[:, None, None], token_scale, mask]
        return self.cache[key]

    def release(self) -> None:
        self.cache.clear()
        if self.image is not None:
            self.image.release()
        for branch in self.branches:
            branch.release()


def step_options(options: dict, img: torch.Tensor) -> dict:
    """The transformer options as the shared branch code reads them: the latent's shape for masks."""
    step = options.get(STEP_KEY)
    if step is None:
        return options
    return {**options, "original_shape": [img.shape[0], 0, *step["latent_size"]]}


def dit_patches(patcher: ModelPatcher) -> dict:
    return patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})


def install_dit_branch(patcher: ModelPatcher, layers: list[CrossAttentionLayer], branch: ImageBranch, architecture: str) -> None:
    """Add `branch` to the blocks it weights in `patcher` (a clone), composing with patches already there."""
    if architecture == SD3 and not isinstance(branch, TimestepImageBranch):
        raise IPAdapterError("SD3.5 adapters need a timestep-conditioned image branch.")
    diffusion_model = patcher.get_model_object("diffusion_model")
    blocks = diffusion_model.double_blocks if architecture == FLUX else diffusion_model.joint_blocks
    replace = dit_patches(patcher)
    for layer in layers:
        if not branch.patches(layer):
            continue
        key = layer.key[:2]
        existing = replace.get(key)
        if isinstance(existing, ImagePromptBlock):
            patch = existing.with_branch(branch)
        else:
            patch = ImagePromptBlock(layer, architecture, blocks[layer.processor_index], (branch,), existing)
        patcher.set_model_patch_replace(patch, "dit", *key)
    if not patcher.get_callbacks(CallbacksMP.ON_CLEANUP, PATCHER_KEY):
        patcher.add_callback_with_key(CallbacksMP.ON_CLEANUP, PATCHER_KEY, release_caches)
        patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, PATCHER_KEY, check_batch_before_sampling)
        patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, PATCHER_KEY, record_step_inputs)
        add_pass_marks(patcher, PATCHER_KEY)


def block_patches(patcher: ModelPatcher) -> list[ImagePromptBlock]:
    return [patch for patch in dit_patches(patcher).values() if isinstance(patch, ImagePromptBlock)]


def release_caches(patcher: ModelPatcher) -> None:
    """After sampling, drop cached tokens, keys/values and masks so nothing stays on the device."""
    for patch in block_patches(patcher):
        patch.release()


def check_batch_before_sampling(executor, noise, *args, **kwargs):
    for branch in {b for patch in block_patches(executor.class_obj.model_patcher) for b in patch.branches}:
        branch.check_batch(noise.shape[0])
    return executor(noise, *args, **kwargs)


def record_step_inputs(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
    """Per model evaluation: the timesteps the diffusion model receives (the SD3.5 projection's
    input, computed here exactly as the host's apply_model does) and the latent size (masks)."""
    timesteps = executor.class_obj.model_sampling.timestep(t).float()
    transformer_options[STEP_KEY] = {"timesteps": timesteps, "latent_size": tuple(x.shape[-2:])}
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
