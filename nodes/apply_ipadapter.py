"""Apply IP-Adapter: MODEL + IPADAPTER + IMAGE_PROMPT -> a patched clone of MODEL."""

from __future__ import annotations

from comfy.model_patcher import ModelPatcher

from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.image_branch import ImageBranch
from ..ipadapter_core.layer_map import cross_attention_layers, match_adapter
from .attention_patch import install_branch

ADDITIONAL_MODELS_KEY = "ipadapter"


class ApplyIPAdapter:
    DESCRIPTION = (
        "Adds the image prompt to every cross-attention layer of the model (decoupled cross-attention). "
        "Chain several to combine adapters; ControlNet and LoRA nodes compose with it."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model with the image branch added; the input model is unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 or SDXL model matching the adapter."}),
                "ipadapter": ("IPADAPTER", {"tooltip": "From Load IP-Adapter."}),
                "image_prompt": ("IMAGE_PROMPT", {"tooltip": "From Encode Image Prompt, made with the same adapter."}),
                "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05, "tooltip": "Strength of the image prompt (λ). 0 leaves the model unchanged."}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Fraction of the sampling schedule where the image prompt starts acting."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Fraction of the sampling schedule where it stops."}),
            }
        }

    def apply(self, model: ModelPatcher, ipadapter, image_prompt, weight: float, start_at: float, end_at: float):
        branch = ImageBranch(
            adapter=ipadapter.model,
            prompt=image_prompt,
            weight=check_range("weight", weight, -1.0, 5.0),
            sigma_range=sigma_range(model, start_at, end_at),
        )
        return (patch_model(model, ipadapter, branch),)


def patch_model(model: ModelPatcher, ipadapter, branch: ImageBranch) -> ModelPatcher:
    """A clone of `model` with `branch` on every cross-attention layer; all checks happen here, before sampling."""
    branch.prompt.check_made_by(ipadapter.model)
    layers = match_adapter(cross_attention_layers(model.get_model_object("diffusion_model")), ipadapter.model.spec)
    patched = model.clone()
    install_branch(patched, layers, branch)
    adapters = patched.get_additional_models_with_key(ADDITIONAL_MODELS_KEY)
    if not any(m.model is ipadapter.patcher.model for m in adapters):
        patched.set_additional_models(ADDITIONAL_MODELS_KEY, adapters + [ipadapter.patcher])
    return patched


def sigma_range(model: ModelPatcher, start_at: float, end_at: float) -> tuple[float, float] | None:
    """start_at/end_at as sigmas, like ComfyUI's ControlNet range; None when the whole schedule is covered."""
    check_range("start_at", start_at, 0.0, 1.0)
    check_range("end_at", end_at, 0.0, 1.0)
    if start_at > end_at:
        raise IPAdapterError(f"start_at ({start_at}) is after end_at ({end_at}); set start_at <= end_at.")
    if start_at == 0.0 and end_at == 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return (sampling.percent_to_sigma(start_at), sampling.percent_to_sigma(end_at))


def check_range(name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise IPAdapterError(f"{name} is {value}; it must be between {low} and {high}.")
    return float(value)
