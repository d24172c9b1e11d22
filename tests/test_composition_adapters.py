"""The community composition adapters (ostris/ip-composition-adapter) load and apply as plus adapters.

ip_plus_composition_sd15.safetensors and ip_plus_composition_sdxl.safetensors are trained in the
official plus layout (Resampler over CLIP ViT-H/14 hidden states, 16 tokens), stored as flat
`image_proj.` / `ip_adapter.` safetensors. Random files in that layout must be detected from
their weights, paired with ViT-H/14, line up with every cross-attention layer of the real SD1.5
and SDXL UNets (checked on meta-device models), and move a real model's prediction.
"""

from __future__ import annotations

import pytest
import torch

from helpers import conditioning, node, predict_noise, relative_error
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict, meta_model, save_adapter, sdxl_layer_dims

LAYOUTS = {  # file -> (UNet, cross-attention layers, text width, Resampler heads)
    "ip_plus_composition_sd15.safetensors": ("sd15", SD15_LAYER_DIMS, 768, 12),
    "ip_plus_composition_sdxl.safetensors": ("sdxl", sdxl_layer_dims(), 2048, 20),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_detected_and_patched_on_every_layer_of_the_real_unet(pack, name):
    """Shapes only (meta device): the SDXL file is 700 MB of fp16 weights."""
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt
    from comfyui_ipadapter.nodes.attention_patch import attn2_patches
    from comfyui_ipadapter.nodes.load_ipadapter import LoadedIPAdapter

    architecture, layer_dims, width, heads = LAYOUTS[name]
    state = adapter_state_dict("plus", layer_dims, cross_dim=width, resampler_heads=heads, device="meta")
    flat = {f"image_proj.{k}": v for k, v in state["image_proj"].items()} | {f"ip_adapter.{k}": v for k, v in state["ip_adapter"].items()}
    model = IPAdapterModel.from_weights(split_adapter_weights(flat, name), identity=name)
    spec = model.spec
    assert (spec.projection, spec.encoder_name, spec.num_tokens, spec.resampler_heads) == ("resampler", "CLIP ViT-H/14", 16, heads)
    assert spec.family == ("SD1.5" if architecture == "sd15" else "SDXL")
    _, unet, _ = meta_model(architecture)
    adapter = LoadedIPAdapter(model=model, patcher=unet.clone(), name=name)  # the patcher only carries the weights to the device
    prompt = ImagePrompt(torch.zeros(1, 16, width), torch.zeros(1, 16, width), model.identity, name)
    (patched,) = node("ExactApplyIPAdapter")(unet, adapter, prompt, 1.0, 0.0, 1.0)
    assert len(attn2_patches(patched)) == len(layer_dims)
    (composition,) = node("ExactApplyIPAdapter")(unet, adapter, prompt, 1.0, 0.0, 1.0, weight_type="composition")
    # the composition blocks as ComfyUI_IPAdapter_plus defines them: SD1.5 input 7 (0.25) and 8, SDXL input 8
    expected = {("input", 7), ("input", 8)} if architecture == "sd15" else {("input", 8)}
    assert {key[:2] for key in attn2_patches(composition)} == expected


def test_moves_the_prediction_of_a_real_model(comfy, tiny_model, tiny_layer_dims, tmp_path):
    """The same layout at the tiny SD1.5 UNet's layers, from a file through Load and Apply."""
    import folder_paths
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    folder_paths.add_model_folder_path("ipadapter", str(tmp_path))
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=62), tmp_path / "ip_plus_composition_tiny.safetensors")
    (adapter,) = node("ExactLoadIPAdapter")("ip_plus_composition_tiny.safetensors")
    hidden = torch.randn(2, 257, 1280, generator=torch.Generator().manual_seed(0))  # ViT-H hidden states
    prompt = ImagePrompt(adapter.model.project(hidden[:1]), adapter.model.project(hidden[1:]), adapter.model.identity, "")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    bare = predict_noise(comfy, tiny_model, noise, 4.0, conditioning(1), conditioning(2))[1]
    for weight, moved in ((1.0, True), (0.0, False)):
        (patched,) = node("ExactApplyIPAdapter")(tiny_model, adapter, prompt, weight, 0.0, 1.0)
        cond = predict_noise(comfy, patched, noise, 4.0, conditioning(1), conditioning(2))[1]
        assert (relative_error(cond, bare) > 1e-2) if moved else torch.equal(cond, bare)
