"""ComfyUI + these nodes == diffusers' Flux IP-Adapter (XLabs layout), on a small random Flux.

A random diffusers FluxTransformer2DModel (the real block structure, 2 heads) is loaded into
ComfyUI's Flux model with ComfyUI's own key conversion; a random adapter is written in XLabs'
file layout and loaded by diffusers' FluxIPAdapterMixin and by this pack's Load IP-Adapter node.
One evaluation runs through ComfyUI's real sampler with CFG (both halves batched, as ComfyUI
does with cfg > 1); both velocity predictions must match diffusers' to a relative error below
1e-4, for the 4-token (v1) and the 16-token (v2) projection.
"""

from __future__ import annotations

import pytest
import torch

from helpers import node, predict_noise, relative_error
from tools import random_models

SIGMA = 0.7
GUIDANCE = 3.5
LATENT = (1, 16, 8, 12)  # non-square: the patch order and the position ids must agree
TEXT_TOKENS = 6


@pytest.fixture(scope="module")
def flux(comfy):
    reference = random_models.diffusers_dit("flux", seed=0)
    return reference, random_models.comfy_dit("flux", reference)


@pytest.fixture(scope="module")
def adapter_folder(pack, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("flux-ipadapter")
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


def diffusers_velocity(reference, folder, name, x, sigma, contexts, pooled, image_embeds):
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
                txt_ids=torch.zeros(TEXT_TOKENS, 3), img_ids=img_ids, joint_attention_kwargs={"ip_adapter_image_embeds": [image_embeds]},
            ).sample
        return unpack_latents(out, (2, *x.shape[1:]))
    finally:
        stub.unload_ip_adapter()


def flux_conditioning(seed: int):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TEXT_TOKENS, random_models.DIFFUSERS_FLUX_CONFIG["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, 768, generator=generator)
    return [[context, {"pooled_output": pooled, "guidance": GUIDANCE}]]


@pytest.mark.parametrize("tokens, images", [(4, 1), (16, 1), (16, 2)])
def test_matches_diffusers(comfy, pack, flux, adapter_folder, tokens, images):
    """images=2: two references in one prompt, their tokens side by side (diffusers' num_images axis)."""
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    reference, model = flux
    name = write_adapter(adapter_folder, tokens, seed=20 + tokens)
    (adapter,) = node("ExactLoadIPAdapter").load(name)
    assert adapter.model.spec.num_tokens == tokens and adapter.model.spec.family == "Flux.1"
    generator = torch.Generator().manual_seed(tokens + images)
    cond_features, uncond_features = torch.randn(images, 768, generator=generator), torch.randn(images, 768, generator=generator)
    prompt = ImagePrompt(adapter.model.project(cond_features), adapter.model.project(uncond_features), adapter.model.identity, "")
    (patched,) = node("ExactApplyIPAdapter").apply(model, adapter, prompt, 1.0, 0.0, 1.0)

    positive, negative = flux_conditioning(1), flux_conditioning(2)
    noise = torch.randn(*LATENT, generator=torch.Generator().manual_seed(3))
    x, v_cond, v_uncond, sigma = predict_noise(comfy, patched, noise, SIGMA, positive, negative, cfg=2.0)
    embeds = torch.stack([cond_features, uncond_features])  # (batch, images, 768)
    expected = diffusers_velocity(reference, adapter_folder, name, x, sigma, [positive[0][0], negative[0][0]],
                                  [positive[0][1]["pooled_output"], negative[0][1]["pooled_output"]], embeds)

    assert relative_error(v_cond, expected[:1]) < 1e-4
    assert relative_error(v_uncond, expected[1:]) < 1e-4
    # The comparison means something only if the image branch moves the prediction.
    _, bare_cond, _, _ = predict_noise(comfy, model, noise, SIGMA, positive, negative, cfg=2.0)
    assert relative_error(bare_cond, v_cond) > 1e-2
