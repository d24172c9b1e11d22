"""Every numeric input at its limits gives a result or a clear error before sampling, never a torch traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import apply, conditioning, encode, node, predict_noise
from tools.random_models import adapter_state_dict, save_adapter


@pytest.fixture(scope="module")
def adapters(pack, tmp_path_factory, tiny_layer_dims):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter_limits")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=71), folder / "limits_base.safetensors")
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=72), folder / "limits_plus.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return {kind: node("ExactLoadIPAdapter")(f"limits_{kind}.safetensors")[0] for kind in ("base", "plus")}


def images(seed, count=1, height=64, width=64):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def result_or_clear_error(comfy, build, batch=1):
    """Either the graph runs to finite predictions, or IPAdapterError stops it before the first model call."""
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    try:
        model = build()
    except IPAdapterError as error:
        return str(error)
    calls = []
    probe = model.clone()
    probe.set_model_unet_function_wrapper(lambda apply_model, args: calls.append(1) or apply_model(args["input"], args["timestep"], **args["c"]))
    noise = torch.randn(batch, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    try:
        _, cond, uncond, _ = predict_noise(comfy, probe, noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    except IPAdapterError as error:
        assert not calls, f"the error came after sampling started: {error}"
        return str(error)
    assert torch.isfinite(cond).all() and torch.isfinite(uncond).all()
    return None


@pytest.fixture(scope="module")
def prompt(adapters, small_clip_vision):
    return encode(adapters["base"], small_clip_vision, images(0))


@pytest.mark.parametrize("weight", [-1.0, 5.0])
@pytest.mark.parametrize("embeds_scaling", ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_weight_at_its_limits(comfy, tiny_model, adapters, prompt, weight, embeds_scaling):
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], prompt, weight, embeds_scaling=embeds_scaling)) is None


@pytest.mark.parametrize("start_at, end_at", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_start_at_equal_to_end_at(comfy, tiny_model, adapters, prompt, start_at, end_at):
    """An empty range is allowed: the image prompt acts at most at that one step."""
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], prompt, 1.0, start_at, end_at)) is None


@pytest.mark.parametrize("mask", [torch.ones(1, 1), torch.zeros(1, 1), torch.rand(4096, 64, generator=torch.Generator().manual_seed(1)),
                                  torch.rand(64, 4096, generator=torch.Generator().manual_seed(2))], ids=["1x1 ones", "1x1 zeros", "4096x64", "64x4096"])
def test_masks_of_extreme_sizes(comfy, tiny_model, adapters, prompt, mask):
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], prompt, attn_mask=mask)) is None


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 1, 4096, 3), (1, 4096, 1, 3), (1, 1, 1, 1), (1, 2, 2, 4)])
@pytest.mark.parametrize("crop", ["center", "squash", "tiles"])
def test_tiny_and_extreme_references(comfy, tiny_model, adapters, small_clip_vision, shape, crop):
    image = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    for kind in ("base", "plus"):
        message = result_or_clear_error(comfy, lambda: apply(tiny_model, adapters[kind], encode(adapters[kind], small_clip_vision, image, crop=crop)))
        assert message is None or "tiles" in message, message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_references_in_other_precisions(comfy, tiny_model, adapters, small_clip_vision, prompt, dtype):
    image = images(0).to(dtype)
    encoded = encode(adapters["base"], small_clip_vision, image)
    assert torch.allclose(encoded.cond, prompt.cond, atol=2e-2)
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], encoded)) is None


def test_sixteen_bit_png_through_the_stock_loader(comfy, tiny_model, adapters, small_clip_vision, tmp_path):
    """A 16-bit PNG as ComfyUI's LoadImage hands it over."""
    import folder_paths
    import nodes

    values = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        image, _ = nodes.LoadImage().load_image("sixteen.png")
    finally:
        folder_paths.set_input_directory(before)
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], encode(adapters["base"], small_clip_vision, image))) is None


def test_sixty_four_references(comfy, tiny_model, adapters, small_clip_vision):
    """64 plus references: 1,024 image tokens per layer, past the fused path."""
    prompt = encode(adapters["plus"], small_clip_vision, images(4, count=64, height=32, width=32))
    assert prompt.cond.shape[0] == 64
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["plus"], prompt)) is None
    message = result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["plus"], prompt, unfold_batch=True))
    assert "64 references for 1 latents" in message


def test_weight_schedule_at_its_limits(comfy, tiny_model, adapters, prompt):
    schedule = node("ExactIPAdapterWeightSchedule")(4096, -1.0, 5.0, "ease in-out")[0]
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], prompt, weight_schedule=schedule), batch=2) is None
    one = node("ExactIPAdapterWeightSchedule")(1, 5.0, 5.0, "linear")[0]
    assert result_or_clear_error(comfy, lambda: apply(tiny_model, adapters["base"], prompt, weight_schedule=one), batch=2) is None
