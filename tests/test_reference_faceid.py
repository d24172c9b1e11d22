"""ComfyUI + these nodes == diffusers' own FaceID loading, on a full-size SD1.5 UNet with random weights.

The same random FaceID adapter (official layout, LoRA rank 128 on every attention layer for faceid
and plusv2) is loaded by diffusers (IPAdapterFaceIDImageProjection / IPAdapterFaceIDPlusImageProjection,
the LoRA through PEFT) and by this pack (projection, image branch, LoRA as weight patches). One
evaluation through ComfyUI's real sampler with CFG; both halves must match diffusers' to 1e-4.
Face embeddings and CLIP hidden states are given (random), as the glue's outputs would be.
"""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import conditioning, diffusers_noise, full_sd15, node, predict_noise, relative_error
from tools import random_models

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SIGMA = 4.0
VARIANTS = {
    "ip-adapter-faceid_sd15": dict(kind="faceid", faces=1, seed=41),
    "ip-adapter-faceid-plusv2_sd15": dict(kind="faceid-plus", faces=1, shortcut=1.0, seed=42),
    "ip-adapter-faceid-portrait_sd15": dict(kind="portrait", faces=2, seed=43),  # several faces, tokens concatenated
}


@pytest.fixture(scope="module")
def sd15(comfy):
    return full_sd15(comfy)


POSITIVE, NEGATIVE = conditioning(1), conditioning(2)
NOISE = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def bare_cond(comfy, sd15):
    """The model's conditional prediction without any adapter, shared by every variant."""
    return predict_noise(comfy, sd15[1], NOISE, SIGMA, POSITIVE, NEGATIVE)[1]


def inputs(faces: int, seed: int):
    """Unit face embeddings (InsightFace's normed_embedding) and CLIP ViT-H hidden states (cond, and the zero-pixel answer)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(faces, 512, generator=generator)
    clip = torch.randn(2, 257, 1280, generator=generator)
    return embeddings / embeddings.norm(dim=-1, keepdim=True), clip[:1], clip[1:]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_diffusers(comfy, pack, sd15, bare_cond, tmp_path, name):
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.face_encoding import project_faces
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    unet, model = sd15
    variant = VARIANTS[name]
    state_dict = random_models.faceid_state_dict(variant["kind"], random_models.SD15_LAYER_DIMS, lora_rank=128, lora_scale=0.3, seed=variant["seed"])
    path = random_models.save_adapter(state_dict, tmp_path / f"{name}.safetensors")
    adapter = wrap_adapter(IPAdapterModel.load(path), path.name)
    faces, clip, clip_uncond = inputs(variant["faces"], variant["seed"])
    plus = variant["kind"] == "faceid-plus"
    prompt = project_faces(adapter.model, faces, clip if plus else None, clip_uncond if plus else None, shortcut_scale=variant.get("shortcut"))
    apply = node("ExactApplyIPAdapter")
    (patched,) = apply(model, adapter, prompt, 1.0, 0.0, 1.0)

    x, eps_cond, eps_uncond, sigma = predict_noise(comfy, patched, NOISE, SIGMA, POSITIVE, NEGATIVE)
    timestep = model.get_model_object("model_sampling").timestep(sigma)

    def configure(projection):  # what diffusers' FaceID plus projection reads besides the face embeddings
        if plus:
            projection.clip_embeds = torch.cat([clip, clip_uncond])[:, None]
            projection.shortcut, projection.shortcut_scale = True, variant["shortcut"]

    embeds = torch.stack([faces, torch.zeros_like(faces)])  # (cond/uncond, faces, 512)
    expected = diffusers_noise(unet, state_dict, x, SIGMA, timestep, [POSITIVE[0][0], NEGATIVE[0][0]], embeds, configure)

    errors = relative_error(eps_cond, expected[:1]), relative_error(eps_uncond, expected[1:])
    log.info("%s: relative error cond %.2e, uncond %.2e", name, *errors)
    assert errors[0] < 1e-4 and errors[1] < 1e-4, errors
    # The comparison means something only if the image branch, and the LoRA where there is one, move the prediction.
    assert relative_error(bare_cond, eps_cond) > 1e-2
    if adapter.model.spec.lora_rank:
        (without_lora,) = apply(model, adapter, prompt, 1.0, 0.0, 1.0, lora_strength=0.0)
        _, no_lora_cond, _, _ = predict_noise(comfy, without_lora, NOISE, SIGMA, POSITIVE, NEGATIVE)
        assert relative_error(no_lora_cond, eps_cond) > 1e-2
