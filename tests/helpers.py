"""Shared test helpers: one model evaluation through ComfyUI's real sampler and what it predicted, inputs,
node instances, and the full-size SD1.5 UNet run by both ComfyUI and diffusers for reference comparisons."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def predict_noise(comfy, model, noise: torch.Tensor, sigma: float, positive, negative, cfg: float = 7.5):
    """One evaluation of `model` through comfy.sample.sample_custom, as a real sampler makes it.

    Returns the model input x, the conditional and unconditional noise predictions (epsilon)
    and the sigma the sampler used, captured by a post-CFG hook.
    """
    import comfy.samplers

    captured = {}

    def post_cfg(args):
        captured.update(x=args["input"], cond=args["cond_denoised"], uncond=args["uncond_denoised"], sigma=args["sigma"])
        return args["denoised"]

    probe = model.clone()
    probe.set_model_sampler_post_cfg_function(post_cfg)

    def one_evaluation(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        return model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)

    sigmas = torch.tensor([sigma, 0.0])
    latent = torch.zeros_like(noise)
    comfy.sample.sample_custom(probe, noise, cfg, comfy.samplers.KSAMPLER(one_evaluation), sigmas, positive, negative, latent, seed=0, disable_pbar=True)
    x, s = captured["x"], captured["sigma"].view(-1, 1, 1, 1)
    return x, (x - captured["cond"]) / s, (x - captured["uncond"]) / s, captured["sigma"]


def conditioning(seed: int, batch: int = 1, tokens: int = 77, width: int = 768):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, width, generator=generator), {}]]


def node(name: str):
    """One of the pack's nodes by id, run as ComfyUI runs it: `node("ExactLoadIPAdapter")("file.safetensors")`
    returns the outputs as a tuple (tools.comfy_host.NodeRunner)."""
    from tools.comfy_host import NodeRunner, pack_nodes

    return NodeRunner(pack_nodes()[name])


def encode(adapter, clip_vision, image, **options):
    """Encode Image Prompt's image prompt."""
    return node("ExactEncodeImagePrompt")(adapter, clip_vision, image, **options)[0]


def apply(model, adapter, prompt, weight=1.0, start_at=0.0, end_at=1.0, **options):
    """Apply IP-Adapter's patched model."""
    return node("ExactApplyIPAdapter")(model, adapter, prompt, weight, start_at, end_at, **options)[0]


def object_info_in_process() -> dict:
    """What /object_info says about the stock nodes and this pack, built in-process from the node classes."""
    import json

    import nodes

    from tools.comfy_host import pack_nodes

    info = {
        name: {"input": cls.INPUT_TYPES(), "input_order": {group: list(specs) for group, specs in cls.INPUT_TYPES().items()},
               "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}
        for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
    }
    info.update({name: cls.GET_NODE_INFO_V1() for name, cls in pack_nodes().items()})  # what the server sends for V3 nodes
    return json.loads(json.dumps(info))  # tuples become lists, as they arrive from the server


def full_sd15(comfy):
    """A random full-size SD1.5 UNet in diffusers, and ComfyUI's model loaded from the same weights."""
    from diffusers import UNet2DConditionModel

    from tools import random_models

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**random_models.DIFFUSERS_UNET_CONFIGS["sd15"]).eval()
    model = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in unet.state_dict().items()})
    assert type(model.model).__name__ == "BaseModel" and model.model.model_config.__class__.__name__ == "SD15"
    return unet, model


def diffusers_pipeline(unet):
    """Just enough of a pipeline for diffusers' own IP-Adapter loader (load_ip_adapter) and, for FaceID's
    in-file LoRA, its LoRA loader (load_lora_weights through PEFT) to load into a UNet."""
    from diffusers.loaders import IPAdapterMixin, StableDiffusionLoraLoaderMixin

    class Pipeline(IPAdapterMixin, StableDiffusionLoraLoaderMixin):
        def __init__(self):
            self.unet, self.text_encoder, self.hf_device_map, self.components = unet, None, None, {"unet": unet}

    return Pipeline()


def diffusers_noise(unet, adapter_state_dict, x, sigma, timestep, contexts, image_embeds, configure: Callable | None = None):
    """diffusers' noise prediction for the CFG batch [cond, uncond] with the adapter loaded by diffusers itself.

    configure(projection) sets what diffusers' projection reads from attributes (FaceID plus: CLIP
    hidden states and the v2 shortcut). The UNet is restored afterwards, LoRA layers included.
    """
    pipeline = diffusers_pipeline(unet)
    pipeline.load_ip_adapter(adapter_state_dict, subfolder="", weight_name="adapter.bin")
    pipeline.set_ip_adapter_scale(1.0)
    try:
        if configure is not None:
            configure(unet.encoder_hid_proj.image_projection_layers[0])
        with torch.no_grad():
            x_in = (x / math.sqrt(sigma**2 + 1)).repeat(2, 1, 1, 1)
            return unet(x_in, timestep, encoder_hidden_states=torch.cat(contexts), added_cond_kwargs={"image_embeds": [image_embeds]}).sample
    finally:
        pipeline.unload_ip_adapter()
        if getattr(unet, "peft_config", None):
            pipeline.unload_lora_weights()
