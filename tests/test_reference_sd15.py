"""ComfyUI + these nodes == diffusers' own IP-Adapter, on a full-size SD1.5 UNet with random weights.

The same diffusers UNet2DConditionModel state dict is loaded into ComfyUI; the same random
adapter (official layout) is loaded by diffusers' IP-Adapter loader and by this pack. One
evaluation runs through ComfyUI's real sampler with CFG; the conditional and unconditional
noise predictions must match diffusers' to a relative error below 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from helpers import conditioning, diffusers_noise, full_sd15, node, predict_noise, relative_error
from tools import random_models

pytestmark = pytest.mark.slow

SIGMA = 4.0
VARIANTS = {
    "ip-adapter_sd15": dict(kind="base", clip_dim=1024, seed=11),
    "ip-adapter_sd15_light": dict(kind="base", clip_dim=1024, seed=12),
    "ip-adapter_sd15_vit-G": dict(kind="base", clip_dim=1280, seed=13),
    "ip-adapter-plus_sd15": dict(kind="plus", clip_dim=1280, seed=14),
    "ip-adapter-plus-face_sd15": dict(kind="plus", clip_dim=1280, seed=15),
    "ip-adapter-full-face_sd15": dict(kind="full", clip_dim=1280, seed=16),
}


@pytest.fixture(scope="module")
def sd15(comfy):
    return full_sd15(comfy)


def features(kind: str, clip_dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if kind == "base":  # pooled image_embeds; the unconditional input is zeros (reference section 4)
        cond = torch.randn(1, clip_dim, generator=generator)
        return cond, torch.zeros_like(cond)
    # hidden states; the unconditional input stands for the encoder's answer to a zero pixel tensor
    return torch.randn(1, 257, clip_dim, generator=generator), torch.randn(1, 257, clip_dim, generator=generator)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_diffusers(comfy, pack, sd15, tmp_path, name):
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    unet, model = sd15
    variant = VARIANTS[name]
    state_dict = random_models.adapter_state_dict(variant["kind"], random_models.SD15_LAYER_DIMS, clip_dim=variant["clip_dim"], seed=variant["seed"])
    path = random_models.save_adapter(state_dict, tmp_path / f"{name}.safetensors")
    adapter = wrap_adapter(IPAdapterModel.load(path), path.name)
    cond_features, uncond_features = features(variant["kind"], variant["clip_dim"], variant["seed"])
    prompt = ImagePrompt(adapter.model.project(cond_features), adapter.model.project(uncond_features), adapter.model.identity, "")
    (patched,) = node("ExactApplyIPAdapter")(model, adapter, prompt, 1.0, 0.0, 1.0)

    positive, negative = conditioning(1), conditioning(2)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    x, eps_cond, eps_uncond, sigma = predict_noise(comfy, patched, noise, SIGMA, positive, negative)
    timestep = model.get_model_object("model_sampling").timestep(sigma)
    embeds = torch.stack([cond_features, uncond_features]).reshape(2, 1, *cond_features.shape[1:])
    expected = diffusers_noise(unet, state_dict, x, SIGMA, timestep, [positive[0][0], negative[0][0]], embeds)

    assert relative_error(eps_cond, expected[:1]) < 1e-4
    assert relative_error(eps_uncond, expected[1:]) < 1e-4
    # The comparison is only meaningful if the image branch moves the prediction.
    _, bare_cond, _, _ = predict_noise(comfy, model, noise, SIGMA, positive, negative)
    assert relative_error(bare_cond, eps_cond) > 1e-2
