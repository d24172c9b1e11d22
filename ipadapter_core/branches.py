"""From Apply IP-Adapter's inputs to image branches: every check and choice made before patching.

Plain values in, ImageBranch objects out, so each rule (ranges, masks, the schedule window, which
layers get which prompt and weight) is tested without ComfyUI. The node reads the model's layers
and noise schedule, calls `build_branches`, and installs what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .adapter import IPAdapterModel
from .errors import IPAdapterError
from .image_branch import V_ONLY, ImageBranch, check_scaling
from .image_prompt import ImagePrompt
from .layer_map import CrossAttentionLayer, LayerKey
from .layer_weights import TWO_PROMPT_TYPES, apply_layer_spec, layer_factors, two_prompt_factors
from .timestep_branch import TimestepImageBranch

WEIGHT_RANGE = (-1.0, 5.0)  # weight and composition_weight
FRACTION_RANGE = (0.0, 1.0)  # start_at and end_at, fractions of the sampling schedule
LORA_STRENGTH_RANGE = (-1.0, 3.0)  # a FaceID adapter's in-file LoRA


def check_range(name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise IPAdapterError(f"{name} is {value}; it must be between {low} and {high}.")
    return float(value)


def check_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A MASK (height, width) or a batch of them -> (masks, height, width) float32 on the CPU, values in [0, 1]."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or min(mask.shape) == 0:
        raise IPAdapterError(f"attn_mask must be a MASK (height, width) or a batch of them; got shape {tuple(mask.shape)}.")
    mask = mask.float().cpu()
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise IPAdapterError("attn_mask values must lie between 0 and 1; convert the image to a mask with a stock mask node first.")
    return mask


def sigma_range(start_at: float, end_at: float, percent_to_sigma: Callable[[float], float]) -> tuple[float, float] | None:
    """start_at/end_at as sigmas, like ComfyUI's ControlNet range; None when the whole schedule is covered.

    percent_to_sigma: the model's own mapping (ComfyUI's model_sampling.percent_to_sigma).
    """
    check_range("start_at", start_at, *FRACTION_RANGE)
    check_range("end_at", end_at, *FRACTION_RANGE)
    if start_at > end_at:
        raise IPAdapterError(f"start_at ({start_at}) is after end_at ({end_at}); set start_at <= end_at.")
    if start_at == 0.0 and end_at == 1.0:
        return None
    return (percent_to_sigma(start_at), percent_to_sigma(end_at))


def make_branch(adapter: IPAdapterModel, prompt: ImagePrompt, weight: float, factors: dict[LayerKey, float] | None, unfold: bool, **options) -> ImageBranch:
    """One image branch of `adapter` for `prompt`; options are ImageBranch's (sigma_range, latent_weights, mask, scaling)."""
    prompt.check_made_by(adapter)
    check_scaling(options["scaling"])
    if adapter.spec.timestep_conditioned:
        return timestep_branch(adapter, prompt, weight, factors, unfold, **options)
    cond, uncond, token_scale = prompt.layout(unfold)
    return ImageBranch(adapter=adapter, cond=cond, uncond=uncond, weight=weight, token_scale=token_scale, layer_weights=factors, **options)


def timestep_branch(adapter: IPAdapterModel, prompt: ImagePrompt, weight: float, factors: dict[LayerKey, float] | None, unfold: bool, **options) -> TimestepImageBranch:
    """SD3.5: the prompt holds one row of encoder features per reference, projected at every step;
    without unfold all references form one row whose tokens are concatenated."""
    if options["scaling"] != V_ONLY:
        raise IPAdapterError(
            f"embeds_scaling {options['scaling']!r} is not defined for the {adapter.spec.description}: its image keys are "
            f"RMS-normalised in every block, so scaling them has no fixed meaning. Use '{V_ONLY}'."
        )
    references = prompt.references
    token_scale = None
    if prompt.reference_weights is not None:
        token_scale = torch.tensor(prompt.reference_weights, dtype=torch.float32)[:, None].expand(references, adapter.spec.num_tokens)
        token_scale = token_scale if unfold else token_scale.reshape(1, -1)
    return TimestepImageBranch(
        adapter=adapter, cond=prompt.cond, uncond=prompt.uncond, weight=weight, token_scale=token_scale,
        layer_weights=factors, features_per_row=1 if unfold else references, **options,
    )


def build_branches(
    adapter: IPAdapterModel,
    layers: Sequence[CrossAttentionLayer],
    image_prompt: ImagePrompt,
    weight: float,
    start_at: float,
    end_at: float,
    percent_to_sigma: Callable[[float], float],
    weight_type: str = "linear",
    embeds_scaling: str = V_ONLY,
    attn_mask: torch.Tensor | None = None,
    unfold_batch: bool = False,
    weight_schedule: Sequence[float] | None = None,
    composition_image_prompt: ImagePrompt | None = None,
    composition_weight: float = 1.0,
    layer_weights: str = "",
) -> list[ImageBranch]:
    """The branches Apply IP-Adapter installs on `layers` (the adapter's layers of the model):
    one, or two with the '... style and composition' types (the second for the composition blocks;
    layer_weights then set factors on both, each layer belonging to one of them)."""
    if composition_image_prompt is not None and weight_type not in TWO_PROMPT_TYPES:
        raise IPAdapterError(
            "composition_image_prompt is used only with weight_type 'style and composition' or 'strong style and composition'; "
            "pick one of those or disconnect it."
        )
    factors = composition = None
    if weight_type in TWO_PROMPT_TYPES:  # layer_weights reach both halves
        factors, composition = two_prompt_factors(layers, weight_type, layer_weights)
    elif weight_type != "linear" or layer_weights.strip():
        factors = apply_layer_spec(layer_factors(layers, weight_type), layers, layer_weights)
    common = dict(
        sigma_range=sigma_range(start_at, end_at, percent_to_sigma),
        latent_weights=tuple(weight_schedule) if weight_schedule is not None else None,
        mask=check_mask(attn_mask),
        scaling=embeds_scaling,
        unfold=unfold_batch,
    )
    branches = [make_branch(adapter, image_prompt, check_range("weight", weight, *WEIGHT_RANGE), factors, **common)]
    if weight_type in TWO_PROMPT_TYPES:
        prompt = composition_image_prompt if composition_image_prompt is not None else image_prompt
        weight_c = check_range("composition_weight", composition_weight, *WEIGHT_RANGE)
        branches.append(make_branch(adapter, prompt, weight_c, composition, **common))
    return branches
