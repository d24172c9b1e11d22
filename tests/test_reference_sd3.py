"""ComfyUI + these nodes == diffusers' SD3.5 IP-Adapter (InstantX layout), on a small random MMDiT;
and ComfyUI's SigLIP encoder == transformers' on the same weights.

A random diffusers SD3Transformer2DModel with SD3.5 Large's block structure (RMS QK-norm, head
width 64) is loaded into ComfyUI's SD3 model, which ComfyUI detects from the converted weights. A
random adapter in InstantX's released layout (ip-adapter.bin) is loaded by diffusers'
SD3IPAdapterMixin and by this pack's Load IP-Adapter node. One evaluation with CFG through
ComfyUI's real sampler must match diffusers to a relative error below 1e-4 in both halves; the
projection depends on the timestep, so two different sigmas are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import node, predict_noise, relative_error
from tools import random_models

CONFIG = random_models.DIFFUSERS_SD3_CONFIG
LATENT = (1, 16, 8, 12)
TEXT_TOKENS = 7
SIGLIP_TOKENS = 729
RESAMPLER = dict(dim=128, heads=2)


@pytest.fixture(scope="module")
def sd3(comfy):
    reference = random_models.diffusers_dit("sd3", seed=0)
    model = random_models.comfy_dit("sd3", reference)
    assert type(model.model).__name__ == "SD3"
    return reference, model


@pytest.fixture(scope="module")
def adapter_file(pack, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("sd3-ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    hidden = CONFIG["attention_head_dim"] * CONFIG["num_attention_heads"]
    state = random_models.sd3_adapter_state_dict(blocks=CONFIG["num_layers"], hidden=hidden, seed=30, **RESAMPLER)
    torch.save(state, folder / "ip-adapter.bin")
    return folder, "ip-adapter.bin"


def diffusers_velocity(reference, folder, name, x, timestep, contexts, pooled, features):
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
    context = torch.randn(1, TEXT_TOKENS, CONFIG["joint_attention_dim"], generator=generator)
    return [[context, {"pooled_output": torch.randn(1, CONFIG["pooled_projection_dim"], generator=generator)}]]


@pytest.mark.parametrize("sigma", [0.9, 0.35])
def test_matches_diffusers(comfy, pack, sd3, adapter_file, sigma):
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    reference, model = sd3
    folder, name = adapter_file
    (adapter,) = node("ExactLoadIPAdapter").load(name)
    spec = adapter.model.spec
    assert (spec.family, spec.num_tokens, spec.encoder_width) == ("SD3.5 Large", 64, 1152)
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, SIGLIP_TOKENS, 1152, generator=generator)  # SigLIP hidden states for the cond and uncond halves
    prompt = ImagePrompt(features[:1], features[1:], adapter.model.identity, "")
    (patched,) = node("ExactApplyIPAdapter").apply(model, adapter, prompt, 1.0, 0.0, 1.0)

    positive, negative = sd3_conditioning(1), sd3_conditioning(2)
    noise = torch.randn(*LATENT, generator=torch.Generator().manual_seed(3))
    x, v_cond, v_uncond, sigma_used = predict_noise(comfy, patched, noise, sigma, positive, negative, cfg=3.0)
    timestep = model.get_model_object("model_sampling").timestep(sigma_used)
    expected = diffusers_velocity(reference, folder, name, x, timestep, [positive[0][0], negative[0][0]],
                                  [positive[0][1]["pooled_output"], negative[0][1]["pooled_output"]], features)

    assert relative_error(v_cond, expected[:1]) < 1e-4
    assert relative_error(v_uncond, expected[1:]) < 1e-4
    _, bare_cond, _, _ = predict_noise(comfy, model, noise, sigma, positive, negative, cfg=3.0)
    assert relative_error(bare_cond, v_cond) > 1e-2


def test_projection_runs_once_per_step_not_per_block(comfy, pack, sd3, adapter_file, monkeypatch):
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    _, model = sd3
    (adapter,) = node("ExactLoadIPAdapter").load(adapter_file[1])
    features = torch.randn(2, 20, 1152, generator=torch.Generator().manual_seed(6))
    (patched,) = node("ExactApplyIPAdapter").apply(model, adapter, ImagePrompt(features[:1], features[1:], adapter.model.identity, ""), 1.0, 0.0, 1.0)
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

    reference = random_models.siglip_vision_model(seed=4, num_layers=3)
    stock = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_siglip_384.json").read_text())
    path = tmp_path / "siglip.json"
    path.write_text(json.dumps({**stock, "num_hidden_layers": 3}))  # ComfyUI's SigLIP 384 config, 3 layers
    ours = comfy.clip_vision.ClipVisionModel(str(path))
    missing, unexpected = ours.load_sd(random_models.siglip_state_dict(reference))
    assert not missing and unexpected and all(key.startswith("vision_model.head.") for key in unexpected)  # ComfyUI has no pooling head
    pixels = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        actual = ours.model(pixel_values=pixels, intermediate_output=-2)[1]
    assert actual.shape == (2, SIGLIP_TOKENS, 1152)
    assert relative_error(actual, expected) < 1e-5
