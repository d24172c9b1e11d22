"""Reference images -> image tokens, against ComfyUI's preprocessing and diffusers' encode path."""

from __future__ import annotations

import pytest
import torch

from helpers import node, relative_error
from tools import random_models


def image(seed, shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1, 224, 224, 3), (2, 300, 200, 3), (1, 37, 511, 3), (1, 10, 7, 3), (1, 1, 1, 3)])
def test_pixels_match_comfyui_clip_preprocess(comfy, shape):
    """The nodes hand the host's clip_preprocess to the core; the core's own copy (for the trainer and
    tests without ComfyUI) must give the same bits, for CLIP's 224 px and SigLIP's 384 px, cropped or squashed."""
    from comfy.clip_vision import clip_preprocess

    from ipadapter_core.preprocess import clip_pixels

    batch = image(0, shape)
    for size, mean, std in ((224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)), (384, (0.5,) * 3, (0.5,) * 3)):
        for crop in (True, False):
            expected = clip_preprocess(batch, size=size, mean=list(mean), std=list(std), crop=crop)
            assert torch.equal(clip_pixels(batch, size, mean, std, crop=crop), expected)
            assert torch.equal(clip_pixels(batch, size, mean, std, crop=crop, normalise=clip_preprocess), expected)


def test_pixels_match_transformers_clip_processor():
    """The reference pipeline preprocesses uint8 PIL images with CLIPImageProcessor (224, bicubic, centre crop)."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from ipadapter_core.preprocess import clip_pixels

    rgb = (image(1, (1, 180, 320, 3)) * 255).round().to(torch.uint8)
    expected = CLIPImageProcessor(size=224, crop_size=224)(Image.fromarray(rgb[0].numpy()), return_tensors="pt").pixel_values
    actual = clip_pixels(rgb.float() / 255)
    # PIL and torch resample slightly differently; one 8-bit level is 0.015 after normalisation.
    assert (actual - expected).abs().mean() < 0.01
    assert relative_error(actual, expected) < 0.02


def test_rgba_and_grayscale_are_converted():
    from ipadapter_core.preprocess import clip_pixels

    rgb = image(2, (1, 64, 48, 3))
    rgba = torch.cat([rgb, torch.rand(1, 64, 48, 1)], dim=-1)
    assert torch.equal(clip_pixels(rgba), clip_pixels(rgb))
    gray = image(3, (1, 64, 48, 1))
    assert torch.equal(clip_pixels(gray), clip_pixels(gray.expand(1, 64, 48, 3)))
    gray_alpha = torch.cat([gray, torch.ones_like(gray)], dim=-1)
    assert torch.equal(clip_pixels(gray_alpha), clip_pixels(gray.expand(1, 64, 48, 3)))


class PipelineStub:
    """diffusers' StableDiffusionPipeline.encode_image reads only these two attributes."""

    def __init__(self, image_encoder):
        self.image_encoder = image_encoder
        self.feature_extractor = None


@pytest.fixture(scope="module")
def vit_h(comfy):
    """A random full-size ViT-H/14 as transformers and as ComfyUI (fp32) hold it, same weights."""
    import comfy.clip_vision
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = random_models.clip_vision_state_dict("vit-h", seed=31)
    config = CLIPVisionConfig(**random_models.VISION_CONFIGS["vit-h"], image_size=224, patch_size=14, hidden_act="gelu")
    reference = CLIPVisionModelWithProjection(config).eval()
    reference.load_state_dict(state)
    ours = comfy.clip_vision.load_clipvision_from_sd(dict(state))
    assert ours.dtype == torch.float32
    return reference, ours


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["base", "plus", "full"])
def test_image_prompt_matches_diffusers_encode_image(pack, vit_h, kind):
    """Section 4 of the reference end to end: encoder output, unconditional rule, projection, concat."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.ipadapter_core.preprocess import clip_pixels
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    reference_encoder, clip_vision = vit_h
    state = random_models.adapter_state_dict(kind, random_models.SD15_LAYER_DIMS[:1], seed=32)
    adapter = wrap_adapter(IPAdapterModel.from_weights(split_adapter_weights(state)), "adapter")
    images = image(33, (2, 256, 320, 3))
    prompt = node("ExactEncodeImagePrompt")(adapter, clip_vision, images)[0]

    projection = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(None, state["image_proj"], low_cpu_mem_usage=False)
    hidden = kind != "base"
    with torch.no_grad():
        cond, uncond = StableDiffusionPipeline.encode_image(PipelineStub(reference_encoder), clip_pixels(images), "cpu", 1, output_hidden_states=hidden or None)
        expected_cond = projection(cond).reshape(1, -1, 768)
        expected_uncond = projection(uncond).reshape(1, -1, 768)
    cond, uncond, _ = prompt.layout(unfold=False)  # both references' tokens concatenated, as diffusers does
    assert cond.shape == expected_cond.shape == (1, 2 * (4 if kind == "base" else 16 if kind == "plus" else 257), 768)
    assert relative_error(cond, expected_cond) < 1e-5
    assert relative_error(uncond, expected_uncond) < 1e-5


# --- batches, progress, stop ---------------------------------------------------------------------


def counting_encoder(calls: list[int], width: int = 1024):
    """A stand-in encoder, per image (mean colour per channel through a fixed linear map): batching cannot change it."""
    weight = torch.randn(3, width, generator=torch.Generator().manual_seed(7))

    def encode(pixels):
        calls.append(pixels.shape[0])
        return pixels.mean(dim=(2, 3)) @ weight

    return encode


@pytest.fixture(scope="module")
def base_adapter():
    from ipadapter_core.adapter import IPAdapterModel
    from ipadapter_core.checkpoint import split_adapter_weights

    return IPAdapterModel.from_weights(split_adapter_weights(random_models.adapter_state_dict("base", random_models.SD15_LAYER_DIMS[:1], seed=8)))


@pytest.mark.parametrize("crop, tiles", [("center", 1), ("tiles", 2)])
def test_batches_give_the_same_prompt_and_report_progress(base_adapter, crop, tiles):
    from ipadapter_core.encoding import encode_image_prompt

    images, negatives = image(20, (5, 64, 128, 3)), image(21, (5, 64, 128, 3))
    whole_calls, batch_calls, progress = [], [], []
    whole = encode_image_prompt(base_adapter, images, counting_encoder(whole_calls), negative_images=negatives, crop=crop)
    batched = encode_image_prompt(base_adapter, images, counting_encoder(batch_calls), negative_images=negatives, crop=crop,
                                  batch_size=2, on_progress=lambda done, total: progress.append((done, total)))
    assert whole_calls == [5 * tiles, 5 * tiles]  # references, then negatives, each in one call
    assert batch_calls == [2 * tiles, 2 * tiles, 1 * tiles] * 2
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert torch.allclose(batched.cond, whole.cond, atol=1e-6) and torch.allclose(batched.uncond, whole.uncond, atol=1e-6)


def test_a_stop_between_batches_ends_the_encoding(base_adapter):
    from ipadapter_core.encoding import encode_image_prompt

    class Stopped(Exception):
        pass

    def stop(done, total):
        raise Stopped

    calls = []
    with pytest.raises(Stopped):
        encode_image_prompt(base_adapter, image(22, (6, 32, 32, 3)), counting_encoder(calls), batch_size=1, on_progress=stop)
    assert calls == [1]


def test_a_negative_batch_size_is_refused(base_adapter):
    from ipadapter_core.encoding import encode_image_prompt
    from ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match="encode_batch_size is -1; use 0"):
        encode_image_prompt(base_adapter, image(23, (2, 32, 32, 3)), counting_encoder([]), batch_size=-1)


def test_the_node_uses_the_hosts_preprocessing_and_loads_both_models_at_once(pack, small_clip_vision, monkeypatch):
    """Encode Image Prompt: comfy.clip_vision.clip_preprocess prepares the pixels, and one load_models_gpu
    call holds the adapter and the encoder (loading them one by one could evict the first for the second)."""
    import comfy.clip_vision
    import comfy.model_management

    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    adapter = wrap_adapter(IPAdapterModel.from_weights(split_adapter_weights(random_models.adapter_state_dict("plus", random_models.SD15_LAYER_DIMS[:1], seed=9))), "adapter")
    loads, preprocessed = [], []
    load_models_gpu, clip_preprocess = comfy.model_management.load_models_gpu, comfy.clip_vision.clip_preprocess
    monkeypatch.setattr(comfy.model_management, "load_models_gpu", lambda models, *args, **kwargs: loads.append(list(models)) or load_models_gpu(models, *args, **kwargs))
    monkeypatch.setattr(comfy.clip_vision, "clip_preprocess", lambda *args, **kwargs: preprocessed.append(args[0].shape) or clip_preprocess(*args, **kwargs))
    node("ExactEncodeImagePrompt")(adapter, small_clip_vision, image(40, (3, 64, 80, 3)))
    assert loads == [[adapter.patcher, small_clip_vision.patcher]]
    assert preprocessed == [(3, 64, 80, 3)]
