"""The projection networks against diffusers' own (the reference implementation), same weights."""

from __future__ import annotations

import pytest
import torch

from ipadapter_core.adapter import IPAdapterModel
from ipadapter_core.checkpoint import split_adapter_weights
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict

CASES = {
    "base_sd15": dict(kind="base", cross_dim=768, clip_dim=1024, input=(2, 1024)),
    "vit-G_sd15": dict(kind="base", cross_dim=768, clip_dim=1280, input=(1, 1280)),
    "base_sdxl": dict(kind="base", cross_dim=2048, clip_dim=1280, input=(1, 1280)),
    "plus_sd15": dict(kind="plus", cross_dim=768, clip_dim=1280, input=(2, 257, 1280)),
    "plus_sdxl": dict(kind="plus", cross_dim=2048, clip_dim=1280, heads=20, input=(1, 257, 1280)),
    "full_face_sd15": dict(kind="full", cross_dim=768, clip_dim=1280, input=(2, 257, 1280)),
}


def diffusers_projection(image_proj_state_dict):
    from diffusers import UNet2DConditionModel

    # The conversion diffusers' IP-Adapter loader applies to official checkpoints.
    return UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(None, image_proj_state_dict, low_cpu_mem_usage=False).eval()


@pytest.mark.parametrize("name", list(CASES))
def test_projection_matches_diffusers(name):
    case = CASES[name]
    dims = SD15_LAYER_DIMS[:1] if case["cross_dim"] == 768 else [(1, 640)]
    state = adapter_state_dict(case["kind"], dims, case["cross_dim"], case["clip_dim"], seed=7, resampler_heads=case.get("heads"))
    ours = IPAdapterModel.from_weights(split_adapter_weights(state))
    reference = diffusers_projection(state["image_proj"])
    features = torch.randn(*case["input"], generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = reference(features)
    actual = ours.project(features)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5), (actual - expected).abs().max()
