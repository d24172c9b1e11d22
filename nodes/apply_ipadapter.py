"""Apply IP-Adapter: MODEL + IPADAPTER + IMAGE_PROMPT -> a patched clone of MODEL."""

from __future__ import annotations

import logging

import torch
from comfy.model_patcher import ModelPatcher

from ..ipadapter_core.branches import FRACTION_RANGE, LORA_STRENGTH_RANGE, WEIGHT_RANGE, build_branches, check_range
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.image_branch import SCALING_MODES, V_ONLY
from ..ipadapter_core.image_prompt import ImagePrompt
from ..ipadapter_core.layer_map import CrossAttentionLayer, lora_weight_pairs, match_model, model_layers
from ..ipadapter_core.layer_weights import WEIGHT_TYPES
from ..ipadapter_core.variants import UNET
from .api import CATEGORY, io
from .attention_patch import install_branch
from .dit_patch import install_dit_branch
from .load_ipadapter import LoadedIPAdapter
from .socket_types import ImagePromptSocket, IPAdapterSocket, WeightScheduleSocket

ADDITIONAL_MODELS_KEY = "ipadapter"
UNET_PREFIX = "diffusion_model."  # where the UNet's weights sit in the model's state dict


def model_input() -> io.Input:
    return io.Model.Input("model", tooltip="An SD1.5, SDXL, Flux.1 or SD3.5 Large model matching the adapter.")


def weight_input() -> io.Input:
    return io.Float.Input("weight", default=1.0, min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1], step=0.05, tooltip="Strength of the image prompt (λ). 0 leaves the model unchanged.")


def start_at_input() -> io.Input:
    return io.Float.Input("start_at", default=0.0, min=FRACTION_RANGE[0], max=FRACTION_RANGE[1], step=0.001, tooltip="Fraction of the sampling schedule where the image prompt starts acting.")


def end_at_input() -> io.Input:
    return io.Float.Input("end_at", default=1.0, min=FRACTION_RANGE[0], max=FRACTION_RANGE[1], step=0.001, tooltip="Fraction of the sampling schedule where it stops.")


def weight_type_input(optional: bool) -> io.Input:
    return io.Combo.Input(
        "weight_type", options=list(WEIGHT_TYPES), default="linear", optional=optional,
        tooltip=(
            "How the weight is spread over the UNet's layers, as the same names do in ComfyUI_IPAdapter_plus. linear: the same "
            "everywhere. style transfer / composition: only the InstantStyle layers. Flux/SD3.5: linear and the ease curves only "
            "(over the blocks, first to last); the others are an error."
        ),
    )


def patched_model_output(tooltip: str) -> io.Output:
    return io.Model.Output(display_name="model", tooltip=tooltip)


class ApplyIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactApplyIPAdapter",
            display_name="Apply IP-Adapter",
            category=CATEGORY,
            description=(
                "Adds the image prompt to the model's cross-attention layers (decoupled cross-attention), or to the "
                "double/joint blocks of Flux.1 and SD3.5 Large. Chain several to combine adapters; ControlNet and LoRA "
                "nodes compose with it."
            ),
            inputs=[
                model_input(),
                IPAdapterSocket.Input("ipadapter", tooltip="From Load IP-Adapter."),
                ImagePromptSocket.Input("image_prompt", tooltip="From Encode Image Prompt, made with the same adapter."),
                weight_input(),
                start_at_input(),
                end_at_input(),
                weight_type_input(optional=True),
                io.Combo.Input("embeds_scaling", options=list(SCALING_MODES), default=V_ONLY, optional=True, tooltip="Where the weight enters the attention. V only is the paper's formula. SD3.5: V only (its image keys are RMS-normed)."),
                io.Mask.Input("attn_mask", optional=True, tooltip="The image prompt acts only where the mask is 1 (resized to every layer). One mask, or one per latent."),
                io.Boolean.Input("unfold_batch", default=False, optional=True, tooltip="Reference i goes to latent i (the last repeats) instead of all references to every latent."),
                WeightScheduleSocket.Input("weight_schedule", optional=True, tooltip="Per-latent factors on the weight (animation), the last repeating."),
                ImagePromptSocket.Input("composition_image_prompt", optional=True, tooltip="With weight_type '(strong) style and composition': the prompt for the composition layers (default: image_prompt)."),
                io.Float.Input("composition_weight", default=1.0, min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1], step=0.05, optional=True, tooltip="With '(strong) style and composition': the weight of the composition layers."),
                io.String.Input("layer_weights", default="", optional=True, tooltip="Power users: per-layer factors applied after weight_type, e.g. 'all:0, style:1, output 4:0.5, 6:1' (a number is an attention block in execution order). Flux/SD3.5: 'all' and blocks by number, e.g. 'all:0, block 3:1'."),
                io.Float.Input(
                    "lora_strength", default=1.0, min=LORA_STRENGTH_RANGE[0], max=LORA_STRENGTH_RANGE[1], step=0.05, optional=True,
                    tooltip="FaceID adapters with a LoRA inside (faceid, plus, plusv2): its strength on the UNet, 1 as trained; 0 leaves the UNet's weights alone. Added once per model, like a LoRA node; other adapters ignore it.",
                ),
            ],
            outputs=[patched_model_output("A copy of the model with the image branch added; the input model is unchanged.")],
        )

    @classmethod
    def execute(
        cls,
        model: ModelPatcher,
        ipadapter: LoadedIPAdapter,
        image_prompt: ImagePrompt,
        weight: float,
        start_at: float,
        end_at: float,
        weight_type: str = "linear",
        embeds_scaling: str = V_ONLY,
        attn_mask: torch.Tensor | None = None,
        unfold_batch: bool = False,
        weight_schedule: tuple[float, ...] | None = None,
        composition_image_prompt: ImagePrompt | None = None,
        composition_weight: float = 1.0,
        layer_weights: str = "",
        lora_strength: float = 1.0,
    ) -> io.NodeOutput:
        return io.NodeOutput(apply_prompt(
            model, ipadapter, image_prompt, weight, start_at, end_at, lora_strength=lora_strength, weight_type=weight_type,
            embeds_scaling=embeds_scaling, attn_mask=attn_mask, unfold_batch=unfold_batch, weight_schedule=weight_schedule,
            composition_image_prompt=composition_image_prompt, composition_weight=composition_weight, layer_weights=layer_weights,
        ))


def apply_prompt(
    model: ModelPatcher,
    ipadapter: LoadedIPAdapter,
    image_prompt: ImagePrompt,
    weight: float,
    start_at: float,
    end_at: float,
    lora_strength: float = 1.0,
    **options,
) -> ModelPatcher:
    """A clone of `model` with the branches of ipadapter_core.branches.build_branches installed (options
    are its optional inputs: weight_type, embeds_scaling, attn_mask...), and a FaceID adapter's
    in-file LoRA as weight patches."""
    architecture, layers = model_layers(model.get_model_object("diffusion_model"))
    layers = match_model(architecture, layers, ipadapter.model.spec)
    percent_to_sigma = model.get_model_object("model_sampling").percent_to_sigma
    branches = build_branches(ipadapter.model, layers, image_prompt, weight, start_at, end_at, percent_to_sigma, **options)
    lora_strength = check_range("lora_strength", lora_strength, *LORA_STRENGTH_RANGE)
    patched = model.clone()
    for branch in branches:
        if architecture == UNET:
            install_branch(patched, layers, branch)
        else:
            install_dit_branch(patched, layers, branch, architecture)
    register_adapter(patched, ipadapter)
    add_adapter_lora(patched, layers, ipadapter, lora_strength)
    return patched


def register_adapter(patched: ModelPatcher, ipadapter: LoadedIPAdapter) -> None:
    """Hand the adapter weights to ComfyUI's model management: loaded and offloaded with the UNet."""
    adapters = patched.get_additional_models_with_key(ADDITIONAL_MODELS_KEY)
    if not any(m.model is ipadapter.patcher.model for m in adapters):
        patched.set_additional_models(ADDITIONAL_MODELS_KEY, adapters + [ipadapter.patcher])


def add_adapter_lora(patched: ModelPatcher, layers: list[CrossAttentionLayer], ipadapter: LoadedIPAdapter, strength: float) -> None:
    """The FaceID file's LoRA as ordinary weight patches of the clone, like a LoRA loader's.

    ComfyUI merges them when it loads the model (and unmerges them for other clones), so they
    compose with LoRA nodes, weight offloading and low-VRAM modes. Applying the same adapter twice
    to one model (two regions, two faces) adds its LoRA once.
    """
    pairs = ipadapter.model.lora_pairs()
    if not pairs or strength == 0.0:
        return
    from comfy.weight_adapter.lora import LoRAAdapter  # imported here: ComfyUI builds without it still load the pack

    weights = lora_weight_pairs(patched.get_model_object("diffusion_model"), layers, pairs)
    first_key, (_, first_up) = next(iter(weights.items()))
    if any(isinstance(p[1], LoRAAdapter) and p[1].weights[0] is first_up for p in patched.patches.get(UNET_PREFIX + first_key, [])):
        logging.info("IP-Adapter %s: its LoRA is already on this model; not adding it twice", ipadapter.name)
        return
    patches = {UNET_PREFIX + key: LoRAAdapter(set(), (up, down, None, None, None, None)) for key, (down, up) in weights.items()}
    added = patched.add_patches(patches, strength)
    if len(added) != len(patches):
        missing = sorted(set(patches) - set(added))[:3]
        raise IPAdapterError(f"The model has no weights {', '.join(missing)}...; the FaceID adapter's LoRA does not fit it. Use a FaceID adapter made for this model.")

