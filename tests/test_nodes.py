"""The three nodes in a real ComfyUI, on the tiny SD1.5-detected UNet: behaviour that must hold exactly."""

from __future__ import annotations

import pytest
import torch

from helpers import conditioning, node, predict_noise, relative_error
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict, save_adapter


@pytest.fixture(scope="module")
def adapter_folder(pack, tmp_path_factory, tiny_layer_dims):
    """A models/ipadapter folder registered the way extra_model_paths.yaml would add one."""
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=21), folder / "tiny_base.safetensors")
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=22), folder / "tiny_plus.bin")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=23), folder / "tiny_other.safetensors")
    save_adapter(adapter_state_dict("base", [(n, d) for n, d in tiny_layer_dims], cross_dim=2048, clip_dim=1280, seed=24), folder / "tiny_sdxl.safetensors")
    save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS, seed=25), folder / "ip-adapter_sd15.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return folder


def load(file_name):
    return node("ExactLoadIPAdapter")(file_name)[0]


def encode(adapter, clip_vision, seed=0, **kwargs):
    image = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(seed))
    return node("ExactEncodeImagePrompt")(adapter, clip_vision, image, **kwargs)[0]


def apply(model, adapter, prompt, weight=1.0, start_at=0.0, end_at=1.0):
    return node("ExactApplyIPAdapter")(model, adapter, prompt, weight, start_at, end_at)[0]


def evaluate(comfy, model, sigma=4.0):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, sigma, conditioning(1), conditioning(2), cfg=5.0)
    return torch.cat([cond, uncond])


def sample(comfy, model, steps=3):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    latent = torch.zeros(1, 4, 8, 8)
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", conditioning(1), conditioning(2), latent, seed=0, disable_pbar=True)


@pytest.fixture(scope="module")
def base(adapter_folder):
    return load("tiny_base.safetensors")


@pytest.fixture(scope="module")
def base_prompt(base, small_clip_vision):
    return encode(base, small_clip_vision)


def test_folder_lists_adapter_files(adapter_folder):
    import folder_paths

    from comfyui_ipadapter.nodes.load_ipadapter import LoadIPAdapter

    assert "tiny_base.safetensors" in folder_paths.get_filename_list("ipadapter")
    choices = LoadIPAdapter.INPUT_TYPES()["required"]["ipadapter_file"][1]["options"]
    assert {"tiny_base.safetensors", "tiny_plus.bin"} <= set(choices)
    # checked when the prompt is queued, as ComfyUI checks a classic node's list
    assert LoadIPAdapter.validate_inputs("tiny_base.safetensors") is True
    assert LoadIPAdapter.validate_inputs("absent.safetensors").startswith("Value not in list: 'absent.safetensors' is not in models/ipadapter.")


def test_adapter_changes_the_prediction_and_input_model_is_untouched(comfy, tiny_model, base, base_prompt):
    options_before = repr(tiny_model.model_options)
    bare = evaluate(comfy, tiny_model)
    patched = apply(tiny_model, base, base_prompt)
    assert repr(tiny_model.model_options) == options_before
    assert relative_error(evaluate(comfy, patched), bare) > 1e-2
    assert torch.equal(evaluate(comfy, tiny_model), bare)


def test_weight_zero_is_exactly_the_bare_model(comfy, tiny_model, base, base_prompt):
    assert torch.equal(evaluate(comfy, apply(tiny_model, base, base_prompt, weight=0.0)), evaluate(comfy, tiny_model))
    assert torch.equal(sample(comfy, apply(tiny_model, base, base_prompt, weight=0.0)), sample(comfy, tiny_model))


def test_sigma_outside_start_end_is_exactly_the_bare_model(comfy, tiny_model, base, base_prompt):
    sampling = tiny_model.get_model_object("model_sampling")
    sigma = float(sampling.percent_to_sigma(0.5))
    late = apply(tiny_model, base, base_prompt, start_at=0.7, end_at=1.0)  # active only below sigma(0.7)
    early = apply(tiny_model, base, base_prompt, start_at=0.0, end_at=0.3)  # active only above sigma(0.3)
    inside = apply(tiny_model, base, base_prompt, start_at=0.3, end_at=0.7)
    bare = evaluate(comfy, tiny_model, sigma)
    assert torch.equal(evaluate(comfy, late, sigma), bare)
    assert torch.equal(evaluate(comfy, early, sigma), bare)
    assert torch.equal(evaluate(comfy, inside, sigma), evaluate(comfy, apply(tiny_model, base, base_prompt), sigma))


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_low_precision_model_weights(comfy, base, base_prompt, stored):
    """A UNet stored in bf16/fp8 is cast to its compute dtype layer by layer (ComfyUI's manual cast);
    the image branch must follow the compute dtype and give what an fp32 UNet holding the same
    rounded weights gives."""
    from tools.random_models import tiny_unet_state_dict

    weights = tiny_unet_state_dict(0)
    low = comfy.sd.load_diffusion_model_state_dict(dict(weights), model_options={"dtype": stored})
    rounded = comfy.sd.load_diffusion_model_state_dict({k: v.to(stored).float() for k, v in weights.items()})
    assert low.model.get_dtype() == stored and low.model.manual_cast_dtype == torch.float32
    expected = evaluate(comfy, apply(rounded, base, base_prompt))
    assert relative_error(evaluate(comfy, apply(low, base, base_prompt)), expected) < 1e-6
    assert relative_error(expected, evaluate(comfy, rounded)) > 1e-3  # the adapter acts


def test_bf16_compute(comfy, tiny_model, base, base_prompt, monkeypatch):
    """With bf16 as the compute dtype (a GPU's usual choice, forced here on the CPU) the image branch
    runs in bf16 and stays close to fp32."""
    import comfy.model_management

    weights = {k: v.to(torch.bfloat16) for k, v in tiny_model.model.diffusion_model.state_dict().items()}
    monkeypatch.setattr(comfy.model_management, "unet_manual_cast", lambda *args, **kwargs: None)
    low = comfy.sd.load_diffusion_model_state_dict(weights, model_options={"dtype": torch.bfloat16})
    assert low.model.manual_cast_dtype is None
    seen = []
    low.set_model_attn2_output_patch(lambda out, extra: seen.append(out.dtype) or out)
    fp32 = evaluate(comfy, apply(tiny_model, base, base_prompt))
    bf16 = evaluate(comfy, apply(low, base, base_prompt))
    assert set(seen) == {torch.bfloat16}
    assert relative_error(bf16, fp32) < 2e-2
    assert relative_error(bf16, evaluate(comfy, low)) > 10 * relative_error(bf16, fp32)  # the adapter acts, beyond rounding


def test_two_adapters_with_weights_w_and_zero_equal_one(comfy, tiny_model, base, base_prompt, small_clip_vision):
    other = load("tiny_other.safetensors")
    other_prompt = encode(other, small_clip_vision, seed=1)
    one = evaluate(comfy, apply(tiny_model, base, base_prompt, weight=0.8))
    two = evaluate(comfy, apply(apply(tiny_model, base, base_prompt, weight=0.8), other, other_prompt, weight=0.0))
    assert torch.allclose(two, one, rtol=1e-6, atol=1e-6)


def test_applying_twice_adds_two_branches(comfy, tiny_model, base, base_prompt, small_clip_vision):
    from comfyui_ipadapter.nodes.attention_patch import ImagePromptAttention

    plus = load("tiny_plus.bin")
    plus_prompt = encode(plus, small_clip_vision, seed=2)
    both = apply(apply(tiny_model, base, base_prompt), plus, plus_prompt)
    swapped = apply(apply(tiny_model, plus, plus_prompt), base, base_prompt)
    patches = both.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(patches) == 4 and all(isinstance(p, ImagePromptAttention) and len(p.branches) == 2 for p in patches.values())
    result = evaluate(comfy, both)
    assert torch.allclose(result, evaluate(comfy, swapped), rtol=1e-5, atol=1e-5)
    assert relative_error(result, evaluate(comfy, apply(tiny_model, base, base_prompt))) > 1e-3
    assert relative_error(result, evaluate(comfy, apply(tiny_model, plus, plus_prompt))) > 1e-3
    assert len(both.get_additional_models_with_key("ipadapter")) == 2


def test_patches_are_shared_not_copied_by_clone(tiny_model, base, base_prompt):
    patched = apply(tiny_model, base, base_prompt)
    clone = patched.clone()
    key = ("input", 1, 0)
    replace = lambda m: m.model_options["transformer_options"]["patches_replace"]["attn2"]  # noqa: E731
    assert replace(clone)[key] is replace(patched)[key]
    assert replace(clone)[key].branches[0].adapter is base.model


def test_caches_are_released_after_sampling(comfy, tiny_model, base, base_prompt):
    patched = apply(tiny_model, base, base_prompt, start_at=0.1)
    first = sample(comfy, patched)
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"].values()
    assert all(not p.cache for p in patches)
    assert all(p.branches[0].gate_cache == [None, None] and not p.branches[0].device_cache for p in patches)
    assert torch.equal(sample(comfy, patched), first)


@pytest.mark.parametrize("how", ["interrupt flag", "exception from the callback"])
def test_interrupted_sampling_leaves_no_cached_keys_values(comfy, tiny_model, base, base_prompt, how):
    """Cancelled mid-sampling (the frontend's interrupt sets the flag the host's ops check; a step
    callback may raise too): no cached image keys/values, masks or gates survive, and the next run
    equals one on a fresh patch."""
    import comfy.model_management as management

    patched = apply(tiny_model, base, base_prompt, start_at=0.1)
    steps_seen = []

    def cancel_after_two_steps(step, *_):
        steps_seen.append(step)
        if step == 1:
            if how == "interrupt flag":
                management.interrupt_current_processing(True)
            else:
                raise management.InterruptProcessingException()

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    with pytest.raises(management.InterruptProcessingException):
        comfy.sample.sample(patched, noise, 6, 5.0, "euler", "normal", conditioning(1), conditioning(2), torch.zeros(1, 4, 8, 8),
                            seed=0, disable_pbar=True, callback=cancel_after_two_steps)
    assert steps_seen == [0, 1] and not management.processing_interrupted()  # stopped inside step three, flag consumed
    patches = list(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())
    assert all(not p.cache and not p.mask_cache for p in patches)
    assert all(p.branches[0].gate_cache == [None, None] and not p.branches[0].device_cache for p in patches)
    assert torch.equal(sample(comfy, patched), sample(comfy, apply(tiny_model, base, base_prompt, start_at=0.1)))


def test_calls_the_patch_another_pack_registered(comfy, tiny_model, base, base_prompt):
    """A foreign attn2 patch (here: scales the text attention) keeps working under ours."""
    import comfy.ldm.modules.attention as attention

    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return attention.optimized_attention(q, k, v, extra_options["n_heads"]) * 0.5

    other_pack = tiny_model.clone()
    other_pack.set_model_attn2_replace(foreign, "input", 1)  # block-level key, as some packs register
    other_pack.set_model_attn2_replace(foreign, "middle", 0, 0)
    expected_foreign_only = evaluate(comfy, other_pack)
    calls.clear()
    combined = apply(other_pack, base, base_prompt)
    result = evaluate(comfy, combined)
    assert sorted(set(calls)) == [("input", 1), ("middle", 0)]
    assert relative_error(result, expected_foreign_only) > 1e-3
    # With weight 0 the foreign patch's own result comes back exactly.
    assert torch.equal(evaluate(comfy, apply(other_pack, base, base_prompt, weight=0.0)), expected_foreign_only)


def test_encoder_tokens_and_negative_image(base, plus_prompt_inputs):
    adapter, clip_vision = plus_prompt_inputs
    prompt = encode(adapter, clip_vision, seed=3)
    assert prompt.cond.shape == (1, 16, 768) and prompt.uncond.shape == (1, 16, 768)
    two = node("ExactEncodeImagePrompt")(adapter, clip_vision, torch.rand(2, 64, 64, 3))[0]
    assert two.cond.shape == (2, 16, 768)  # one row per reference
    assert two.layout(unfold=False)[0].shape == (1, 32, 768)  # concatenated for the sampler, as diffusers does
    negative = encode(adapter, clip_vision, seed=3, negative_image=torch.rand(1, 64, 64, 3))
    assert torch.equal(negative.cond, prompt.cond) and not torch.allclose(negative.uncond, prompt.uncond)


@pytest.fixture(scope="module")
def plus_prompt_inputs(adapter_folder, small_clip_vision):
    return load("tiny_plus.bin"), small_clip_vision


# --- errors, all raised before sampling, each naming the fix --------------------------------------


def test_sdxl_adapter_on_sd15_model(tiny_model, small_clip_vision, adapter_folder):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    sdxl = load("tiny_sdxl.safetensors")
    prompt = ImagePrompt(torch.zeros(1, 4, 2048), torch.zeros(1, 4, 2048), sdxl.model.identity, "")
    with pytest.raises(IPAdapterError, match="Wrong IP-Adapter for the model: this model is SD1.5 but this is an SDXL IP-Adapter.*Load an IP-Adapter made for SD1.5"):
        apply(tiny_model, sdxl, prompt)


def test_adapter_for_other_layout(tiny_model, adapter_folder):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    full_size = load("ip-adapter_sd15.safetensors")
    prompt = ImagePrompt(torch.zeros(1, 4, 768), torch.zeros(1, 4, 768), full_size.model.identity, "")
    with pytest.raises(IPAdapterError, match="16 layers do not line up with the 4 cross-attention layers"):
        apply(tiny_model, full_size, prompt)


def test_prompt_from_another_adapter(tiny_model, base, adapter_folder, small_clip_vision):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    other = load("tiny_other.safetensors")
    with pytest.raises(IPAdapterError, match="encoded by a different IP-Adapter.*same Load IP-Adapter node"):
        apply(tiny_model, base, encode(other, small_clip_vision))


@pytest.mark.parametrize("kind, layers, message", [
    ("vit-l", 2, "needs CLIP ViT-H/14 .*but CLIP ViT-L/14 gives width 768.*CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ("vit-bigg", 2, "needs CLIP ViT-H/14 .*but CLIP ViT-bigG/14 gives width 1280"),
])
def test_wrong_encoder(comfy, base, kind, layers, message, tmp_path):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from tools.random_models import comfy_clip_vision

    with pytest.raises(IPAdapterError, match=message):
        encode(base, comfy_clip_vision(kind, num_layers=layers, tmp_dir=tmp_path))


def test_wrong_encoder_for_plus(comfy, plus_prompt_inputs, tmp_path):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from tools.random_models import comfy_clip_vision

    adapter, _ = plus_prompt_inputs
    with pytest.raises(IPAdapterError, match="needs CLIP ViT-H/14 \\(penultimate_hidden_states width 1280\\).*gives width 1664"):
        encode(adapter, comfy_clip_vision("vit-bigg", num_layers=2, tmp_dir=tmp_path))


@pytest.mark.parametrize("start_at, end_at, weight, message", [
    (0.6, 0.4, 1.0, "start_at \\(0.6\\) is after end_at \\(0.4\\)"),
    (0.0, 1.0, 7.0, "weight is 7.0; it must be between -1.0 and 5.0"),
    (-0.1, 1.0, 1.0, "start_at is -0.1"),
])
def test_bad_apply_inputs(tiny_model, base, base_prompt, start_at, end_at, weight, message):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match=message):
        apply(tiny_model, base, base_prompt, weight, start_at, end_at)


@pytest.mark.parametrize("image, message", [
    (torch.rand(64, 64, 3), "must be an IMAGE batch"),
    (torch.rand(1, 64, 64, 5), "has 5 channels"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
    (torch.rand(0, 64, 64, 3), "is empty"),
])
def test_bad_images(base, small_clip_vision, image, message):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match=message):
        node("ExactEncodeImagePrompt")(base, small_clip_vision, image)


def test_negative_image_count_must_fit(base, small_clip_vision):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match="negative_image has 2 images but image has 3"):
        node("ExactEncodeImagePrompt")(base, small_clip_vision, torch.rand(3, 32, 32, 3), negative_image=torch.rand(2, 32, 32, 3))


def test_latent_batch_and_cfg_one(comfy, tiny_model, base, base_prompt):
    """Every latent of a batch gets the prompt; with CFG 1 ComfyUI skips the unconditional pass."""
    patched = apply(tiny_model, base, base_prompt)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    _, batch_cond, batch_uncond, _ = predict_noise(comfy, patched, noise, 4.0, conditioning(1), conditioning(2))
    for i in range(2):
        _, cond, uncond, _ = predict_noise(comfy, patched, noise[i : i + 1], 4.0, conditioning(1), conditioning(2))
        assert torch.allclose(batch_cond[i : i + 1], cond, rtol=1e-5, atol=1e-5)
        assert torch.allclose(batch_uncond[i : i + 1], uncond, rtol=1e-5, atol=1e-5)
    _, cfg_one, _, _ = predict_noise(comfy, patched, noise[:1], 4.0, conditioning(1), conditioning(2), cfg=1.0)
    assert torch.allclose(cfg_one, batch_cond[:1], rtol=1e-5, atol=1e-5)


def test_adapter_is_freed_when_no_graph_uses_it(comfy, tiny_model, small_clip_vision, adapter_folder):
    """Nothing of the pack (patches, caches, model management) keeps an adapter alive after its graph is gone."""
    import gc
    import weakref

    import comfy.model_management

    adapter = load("tiny_other.safetensors")
    patched = apply(tiny_model, adapter, encode(adapter, small_clip_vision, seed=4))
    sample(comfy, patched)
    weights = weakref.ref(adapter.model)
    del adapter, patched
    gc.collect()
    comfy.model_management.cleanup_models()
    assert weights() is None


def test_sampling_makes_no_host_device_round_trips(comfy, tiny_model, base, base_prompt, monkeypatch):
    """No .item()/.cpu()/bool(tensor)/host-built tensors in the pack while it samples: each would stall a GPU.

    Checked on the CPU by recording every such call whose caller is a file of this pack, with
    gating, a mask and a per-latent schedule switched on so every code path runs.
    """
    import sys
    from pathlib import Path

    pack_files = tuple(str(Path(__file__).resolve().parents[1] / folder) for folder in ("ipadapter_core", "nodes"))
    calls = []

    def spy(owner, name):
        original = getattr(owner, name)

        def recording(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(pack_files):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recording)

    patched = apply(tiny_model, base, base_prompt, start_at=0.2, end_at=0.9)
    patched = node("ExactApplyIPAdapter")(patched, base, base_prompt, 0.5, 0.0, 1.0, attn_mask=torch.ones(1, 32, 32), weight_schedule=(1.0, 0.5))[0]
    for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
        spy(torch.Tensor, name)
    spy(torch, "tensor")
    sample(comfy, patched)
    assert calls == []


def test_encoding_in_batches_shows_progress_and_stops_when_asked(base, small_clip_vision):
    """Encode Image Prompt with encode_batch_size: ComfyUI's progress bar moves per batch, and Stop acts between batches."""
    import comfy.model_management
    import comfy.utils

    images = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(9))
    encode_node = node("ExactEncodeImagePrompt")
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview=None, node_id=None: updates.append((value, total)))
    try:
        whole = encode_node(base, small_clip_vision, images)[0]
        assert updates == [(3, 3)]
        updates.clear()
        batched = encode_node(base, small_clip_vision, images, encode_batch_size=1)[0]
        assert updates == [(1, 3), (2, 3), (3, 3)]
        assert torch.allclose(batched.cond, whole.cond, atol=1e-5) and torch.allclose(batched.uncond, whole.uncond, atol=1e-5)

        def stop_after_first(value, total, preview=None, node_id=None):
            updates.append((value, total))
            comfy.model_management.interrupt_current_processing(True)  # the frontend's Stop button

        updates.clear()
        comfy.utils.set_progress_bar_global_hook(stop_after_first)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            encode_node(base, small_clip_vision, images, encode_batch_size=1)
        assert updates == [(1, 3)]
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
