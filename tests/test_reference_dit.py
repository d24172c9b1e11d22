"""ComfyUI + these nodes == diffusers' IP-Adapters for Flux.1 (XLabs) and SD3.5 Large (InstantX), on
small random transformers; and ComfyUI's SigLIP == transformers' on the same weights.

Flux: a random diffusers FluxTransformer2DModel (the real block structure, 2 heads) is loaded into
ComfyUI's Flux model with ComfyUI's own key conversion; a random adapter is written in XLabs'
file layout and loaded by diffusers' FluxIPAdapterMixin and by this pack's Load IP-Adapter node.
SD3.5: a random SD3Transformer2DModel with SD3.5 Large's block structure (RMS QK-norm, head width
64), which ComfyUI detects from the converted weights, and a random adapter in InstantX's released
layout (ip-adapter.bin) loaded by diffusers' SD3IPAdapterMixin and by the node. One evaluation
with CFG through ComfyUI's real sampler must match diffusers to a relative error below 1e-4 in
both halves: for Flux with the 4-token (v1) and 16-token (v2) projection and two references, for
SD3.5 at two sigmas (its projection follows the timestep).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import node, predict_noise, relative_error
from tools import random_models

FLUX_SIGMA = 0.7
GUIDANCE = 3.5
LATENT = (1, 16, 8, 12)  # non-square: the patch order and the position ids must agree
FLUX_TEXT_TOKENS = 6


@pytest.fixture(scope="module")
def flux(comfy):
    reference = random_models.diffusers_dit("flux", seed=0)
    return reference, random_models.comfy_dit("flux", reference)


@pytest.fixture(scope="module")
def adapter_folder(pack, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("dit-ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return folder


def write_adapter(folder, tokens: int, seed: int):
    from safetensors.torch import save_file

    config = random_models.DIFFUSERS_FLUX_CONFIG
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    state = random_models.flux_adapter_state_dict(blocks=config["num_layers"], hidden=hidden, width=config["joint_attention_dim"], tokens=tokens, seed=seed)
    name = f"flux-ip-adapter-{tokens}-tokens.safetensors"
    save_file(state, str(folder / name))
    return name


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4), the 2x2 patch order of diffusers' Flux pipeline."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, shape) -> torch.Tensor:
    b, c, h, w = shape
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def flux_velocity(reference, folder, name, x, sigma, contexts, pooled, image_embeds):
    from diffusers.loaders import FluxIPAdapterMixin

    stub = type("Pipeline", (FluxIPAdapterMixin,), {})()
    stub.transformer = reference
    stub.load_ip_adapter(str(folder), weight_name=name, image_encoder_pretrained_model_name_or_path=None)
    stub.set_ip_adapter_scale(1.0)
    try:
        b, _, h, w = x.shape
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
        with torch.no_grad():
            out = reference(
                hidden_states=pack_latents(x).repeat(2, 1, 1), timestep=sigma.repeat(2), guidance=torch.full((2,), GUIDANCE),
                pooled_projections=torch.cat(pooled), encoder_hidden_states=torch.cat(contexts),
                txt_ids=torch.zeros(FLUX_TEXT_TOKENS, 3), img_ids=img_ids, joint_attention_kwargs={"ip_adapter_image_embeds": [image_embeds]},
            ).sample
        return unpack_latents(out, (2, *x.shape[1:]))
    finally:
        stub.unload_ip_adapter()


def flux_conditioning(seed: int):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, FLUX_TEXT_TOKENS, random_models.DIFFUSERS_FLUX_CONFIG["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, 768, generator=generator)
    return [[context, {"pooled_output": pooled, "guidance": GUIDANCE}]]


@pytest.mark.parametrize("tokens, images", [(4, 1), (16, 1), (16, 2)])
def test_flux_matches_diffusers(comfy, pack, flux, adapter_folder, tokens, images):
    """images=2: two references in one prompt, their tokens side by side (diffusers' num_images axis)."""
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    reference, model = flux
    name = write_adapter(adapter_folder, tokens, seed=20 + tokens)
    (adapter,) = node("ExactLoadIPAdapter")(name)
    assert adapter.model.spec.num_tokens == tokens and adapter.model.spec.family == "Flux.1"
    generator = torch.Generator().manual_seed(tokens + images)
    cond_features, uncond_features = torch.randn(images, 768, generator=generator), torch.randn(images, 768, generator=generator)
    prompt = ImagePrompt(adapter.model.project(cond_features), adapter.model.project(uncond_features), adapter.model.identity, "")
    (patched,) = node("ExactApplyIPAdapter")(model, adapter, prompt, 1.0, 0.0, 1.0)

    positive, negative = flux_conditioning(1), flux_conditioning(2)
    noise = torch.randn(*LATENT, generator=torch.Generator().manual_seed(3))
    x, v_cond, v_uncond, sigma = predict_noise(comfy, patched, noise, FLUX_SIGMA, positive, negative, cfg=2.0)
    embeds = torch.stack([cond_features, uncond_features])  # (batch, images, 768)
    expected = flux_velocity(reference, adapter_folder, name, x, sigma, [positive[0][0], negative[0][0]],
                                  [positive[0][1]["pooled_output"], negative[0][1]["pooled_output"]], embeds)

    assert relative_error(v_cond, expected[:1]) < 1e-4
    assert relative_error(v_uncond, expected[1:]) < 1e-4
    # The comparison means something only if the image branch moves the prediction.
    _, bare_cond, _, _ = predict_noise(comfy, model, noise, FLUX_SIGMA, positive, negative, cfg=2.0)
    assert relative_error(bare_cond, v_cond) > 1e-2


CONFIG = random_models.DIFFUSERS_SD3_CONFIG
SD3_TEXT_TOKENS = 7
SIGLIP_TOKENS = 729
RESAMPLER = dict(dim=128, heads=2)


@pytest.fixture(scope="module")
def sd3(comfy):
    reference = random_models.diffusers_dit("sd3", seed=0)
    model = random_models.comfy_dit("sd3", reference)
    assert type(model.model).__name__ == "SD3"
    return reference, model


@pytest.fixture(scope="module")
def adapter_file(adapter_folder):
    folder = adapter_folder
    hidden = CONFIG["attention_head_dim"] * CONFIG["num_attention_heads"]
    state = random_models.sd3_adapter_state_dict(blocks=CONFIG["num_layers"], hidden=hidden, seed=30, **RESAMPLER)
    torch.save(state, folder / "ip-adapter.bin")
    return folder, "ip-adapter.bin"


def sd3_velocity(reference, folder, name, x, timestep, contexts, pooled, features):
    from diffusers.loaders import SD3IPAdapterMixin

    stub = type("Pipeline", (SD3IPAdapterMixin,), {})()
    stub.transformer = reference
    stub.load_ip_adapter(str(folder), weight_name=name, image_encoder_folder=None)
    stub.set_ip_adapter_scale(1.0)
    try:
        with torch.no_grad():
            return reference(
                hidden_states=x.repeat(2, 1, 1, 1), timestep=timestep.repeat(2), encoder_hidden_states=torch.cat(contexts),
                pooled_projections=torch.cat(pooled), joint_attention_kwargs={"ip_adapter_image_embeds": features},
            ).sample
    finally:
        stub.unload_ip_adapter()


def sd3_conditioning(seed: int):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, SD3_TEXT_TOKENS, CONFIG["joint_attention_dim"], generator=generator)
    return [[context, {"pooled_output": torch.randn(1, CONFIG["pooled_projection_dim"], generator=generator)}]]


@pytest.mark.parametrize("sigma", [0.9, 0.35])
def test_sd3_matches_diffusers(comfy, pack, sd3, adapter_file, sigma):
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    reference, model = sd3
    folder, name = adapter_file
    (adapter,) = node("ExactLoadIPAdapter")(name)
    spec = adapter.model.spec
    assert (spec.family, spec.num_tokens, spec.encoder_width) == ("SD3.5 Large", 64, 1152)
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, SIGLIP_TOKENS, 1152, generator=generator)  # SigLIP hidden states for the cond and uncond halves
    prompt = ImagePrompt(features[:1], features[1:], adapter.model.identity, "")
    (patched,) = node("ExactApplyIPAdapter")(model, adapter, prompt, 1.0, 0.0, 1.0)

    positive, negative = sd3_conditioning(1), sd3_conditioning(2)
    noise = torch.randn(*LATENT, generator=torch.Generator().manual_seed(3))
    x, v_cond, v_uncond, sigma_used = predict_noise(comfy, patched, noise, sigma, positive, negative, cfg=3.0)
    timestep = model.get_model_object("model_sampling").timestep(sigma_used)
    expected = sd3_velocity(reference, folder, name, x, timestep, [positive[0][0], negative[0][0]],
                                  [positive[0][1]["pooled_output"], negative[0][1]["pooled_output"]], features)

    assert relative_error(v_cond, expected[:1]) < 1e-4
    assert relative_error(v_uncond, expected[1:]) < 1e-4
    _, bare_cond, _, _ = predict_noise(comfy, model, noise, sigma, positive, negative, cfg=3.0)
    assert relative_error(bare_cond, v_cond) > 1e-2


def test_projection_runs_once_per_step_not_per_block(comfy, pack, sd3, adapter_file, monkeypatch):
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    _, model = sd3
    (adapter,) = node("ExactLoadIPAdapter")(adapter_file[1])
    features = torch.randn(2, 20, 1152, generator=torch.Generator().manual_seed(6))
    (patched,) = node("ExactApplyIPAdapter")(model, adapter, ImagePrompt(features[:1], features[1:], adapter.model.identity, ""), 1.0, 0.0, 1.0)
    calls = []
    original = IPAdapterModel.project_at
    monkeypatch.setattr(IPAdapterModel, "project_at", lambda self, *args: calls.append(args[1].clone()) or original(self, *args))
    noise = torch.randn(*LATENT, generator=torch.Generator().manual_seed(3))
    latent = {"samples": torch.zeros_like(noise)}
    import comfy.samplers
    import nodes as stock

    stock.common_ksampler(patched, 0, 3, 3.0, "euler", "simple", sd3_conditioning(1), sd3_conditioning(2), latent, denoise=1.0)
    # 3 steps, cond and uncond in one batch: one projection per step (of both rows), whatever the block count,
    # each at the timestep the model receives at that step.
    assert len(calls) == 3 and CONFIG["num_layers"] > 1
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", 3)[:3]
    for timesteps, sigma in zip(calls, sigmas):
        assert torch.allclose(timesteps, sampling.timestep(sigma).float().repeat(2))


def test_siglip_penultimate_matches_transformers(comfy, tmp_path):
    """ComfyUI's penultimate SigLIP layer (what the SD3.5 adapter reads) == transformers' hidden_states[-2]."""
    import comfy.clip_vision

    reference = random_models.siglip_vision_model(seed=4, num_layers=2)
    stock = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_siglip_384.json").read_text())
    path = tmp_path / "siglip.json"
    path.write_text(json.dumps({**stock, "num_hidden_layers": 2}))  # ComfyUI's SigLIP 384 config, 2 layers
    ours = comfy.clip_vision.ClipVisionModel(str(path))
    missing, unexpected = ours.load_sd(random_models.siglip_state_dict(reference))
    assert not missing and unexpected and all(key.startswith("vision_model.head.") for key in unexpected)  # ComfyUI has no pooling head
    pixels = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        actual = ours.model(pixel_values=pixels, intermediate_output=-2)[1]
    assert actual.shape == (2, SIGLIP_TOKENS, 1152)
    assert relative_error(actual, expected) < 1e-5
