"""The controls on top of the core nodes: each checked by its numbers, in the real ComfyUI."""

from __future__ import annotations

import functools

import pytest
import torch

from helpers import apply, conditioning, encode, node, predict_noise, relative_error
from tools.random_models import adapter_state_dict, meta_model, save_adapter


@pytest.fixture(scope="module")
def adapters(pack, tmp_path_factory, tiny_layer_dims):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter_controls")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=51), folder / "controls_a.safetensors")
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=52), folder / "controls_b.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return {name: node("ExactLoadIPAdapter")(f"controls_{name}.safetensors")[0] for name in ("a", "b")}


def images(seed, count=1, height=96, width=128):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def evaluate(comfy, model, batch=1, height=8, width=8, positive=None, negative=None):
    noise = torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, 4.0, positive or conditioning(1), negative or conditioning(2), cfg=5.0)
    return torch.cat([cond, uncond])


@pytest.fixture(scope="module")
def prompt_a(adapters, small_clip_vision):
    return encode(adapters["a"], small_clip_vision, images(0))


def test_optional_inputs_at_defaults_change_nothing(comfy, tiny_model, adapters, small_clip_vision, prompt_a):
    """Saved workflows from before the optional inputs existed must give identical results."""
    defaults = {name: spec[1]["default"] for name, spec in node("ExactApplyIPAdapter").INPUT_TYPES()["optional"].items() if "default" in spec[1]}
    plain = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a))
    assert torch.equal(evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, **defaults)), plain)
    encode_defaults = {name: spec[1]["default"] for name, spec in node("ExactEncodeImagePrompt").INPUT_TYPES()["optional"].items() if "default" in spec[1]}
    explicit = encode(adapters["a"], small_clip_vision, images(0), **encode_defaults)
    assert torch.equal(explicit.cond, prompt_a.cond) and torch.equal(explicit.uncond, prompt_a.uncond)


# --- masks ---------------------------------------------------------------------------------------


def test_mask_of_ones_is_no_mask_and_zeros_is_bare(comfy, tiny_model, adapters, prompt_a):
    plain = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a))
    assert torch.equal(evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, attn_mask=torch.ones(64, 64))), plain)
    assert torch.equal(evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, attn_mask=torch.zeros(64, 64))), evaluate(comfy, tiny_model))


def call_patch(model, key, q, length_hw, kinds=(0, 1)):
    """Call the attn2 patch ComfyUI would call for `key`, on synthetic inputs."""
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    g = torch.Generator().manual_seed(7)
    k = torch.randn(q.shape[0], 77, q.shape[2], generator=g)
    v = torch.randn(q.shape[0], 77, q.shape[2], generator=g)
    extra = dict(n_heads=patch.layer.heads, attn_precision=None, cond_or_uncond=list(kinds), sigmas=torch.full((q.shape[0],), 4.0),
                 original_shape=[q.shape[0], 4, *length_hw])
    try:
        return patch(q, k, v, extra)
    finally:
        patch.release()


def test_two_masks_give_regional_prompts(tiny_model, adapters, small_clip_vision, prompt_a):
    """Where mask A is 1 the layer output carries only adapter A's branch, elsewhere only B's."""
    prompt_b = encode(adapters["b"], small_clip_vision, images(1))
    left = torch.zeros(1, 64, 96)
    left[..., :48] = 1
    regional = apply(apply(tiny_model, adapters["a"], prompt_a, attn_mask=left), adapters["b"], prompt_b, attn_mask=1 - left)
    only_a = apply(tiny_model, adapters["a"], prompt_a)
    only_b = apply(tiny_model, adapters["b"], prompt_b)
    bare = apply(tiny_model, adapters["a"], prompt_a, weight=0.0)
    q = torch.randn(2, 8 * 12, 320, generator=torch.Generator().manual_seed(8))  # an 8x12 latent, full resolution layer
    key = ("input", 1, 0)
    text = call_patch(bare, key, q, (8, 12))
    grid = torch.zeros(8, 12)
    grid[:, :6] = 1
    m = grid.reshape(1, -1, 1)
    expected = text + m * (call_patch(only_a, key, q, (8, 12)) - text) + (1 - m) * (call_patch(only_b, key, q, (8, 12)) - text)
    assert torch.allclose(call_patch(regional, key, q, (8, 12)), expected, atol=1e-5)


def test_mask_on_non_square_latent_and_masked_text_conditioning(comfy, tiny_model, adapters, prompt_a):
    """Mask resized to each layer for a 10x6 latent, next to ComfyUI's masked (regional) text conditioning."""
    import node_helpers

    top = torch.zeros(80, 48)
    top[:40] = 1
    positive = conditioning(1) + [node_helpers.conditioning_set_values(conditioning(3), {"mask": 1 - top[None], "set_area_to_bounds": False, "mask_strength": 1.0})[0]]
    bare = evaluate(comfy, tiny_model, height=10, width=6, positive=positive)
    masked = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, attn_mask=top), height=10, width=6, positive=positive)
    assert relative_error(masked, bare) > 1e-3
    zero = apply(tiny_model, adapters["a"], prompt_a, attn_mask=torch.zeros(80, 48))
    assert torch.equal(evaluate(comfy, zero, height=10, width=6, positive=positive), bare)


@pytest.mark.parametrize("mask, message", [
    (torch.full((8, 8), 2.0), "between 0 and 1"),
    (torch.zeros(1, 1, 8, 8), "must be a MASK"),
])
def test_bad_masks(tiny_model, adapters, prompt_a, mask, message):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match=message):
        apply(tiny_model, adapters["a"], prompt_a, attn_mask=mask)


# --- several references, combining, weights per image --------------------------------------------


def features_of(adapter, clip_vision, image, crop=True):
    from comfyui_ipadapter.ipadapter_core.preprocess import clip_pixels
    from comfyui_ipadapter.nodes.clip_vision import comfy_encoder

    return comfy_encoder(clip_vision, adapter.model.spec)(clip_pixels(image, crop=crop))


def test_average_of_one_image_is_that_image(adapters, small_clip_vision):
    image = images(3)
    one = encode(adapters["b"], small_clip_vision, image)
    for method in ("average", "add"):
        averaged = encode(adapters["b"], small_clip_vision, image, combine=method)
        assert torch.equal(averaged.cond, one.cond) and torch.equal(averaged.uncond, one.uncond)


@pytest.mark.parametrize("method", ["average", "norm average", "add", "subtract"])
def test_combine_methods_project_the_combined_embedding(adapters, small_clip_vision, method):
    adapter = adapters["a"]
    batch = images(4, count=3)
    f = features_of(adapter, small_clip_vision, batch)
    w = torch.tensor([1.0, 0.5, 2.0])[:, None]
    expected = {
        "average": (f * w).sum(0, keepdim=True) / w.sum(),
        "norm average": (f / f.norm(dim=-1, keepdim=True) * w).sum(0, keepdim=True) / w.sum(),
        "add": (f * w).sum(0, keepdim=True),
        "subtract": (f * w)[:1] - (f * w)[1:].mean(0, keepdim=True),
    }[method]
    prompt = encode(adapter, small_clip_vision, batch, combine=method, image_weights="1, 0.5, 2")
    assert prompt.cond.shape == (1, 4, 768)
    assert torch.allclose(prompt.cond, adapter.model.project(expected), atol=1e-5)


@pytest.mark.parametrize("method", ["average", "norm average", "add", "subtract"])
@pytest.mark.parametrize("adapter_name", ["a", "b"])
def test_a_reference_with_weight_zero_does_not_count(adapters, small_clip_vision, method, adapter_name):
    """image_weights '1, 1, 0' on three references gives what the first two alone give, for every combine mode."""
    batch = images(14, count=3)
    weighted = encode(adapters[adapter_name], small_clip_vision, batch, combine=method, image_weights="1, 1, 0")
    two = encode(adapters[adapter_name], small_clip_vision, batch[:2], combine=method)
    assert torch.allclose(weighted.cond, two.cond, atol=1e-5) and torch.allclose(weighted.uncond, two.uncond, atol=1e-5)


@pytest.mark.parametrize("method", ["average", "add", "subtract"])
def test_combine_prompts_honours_image_weights(adapters, small_clip_vision, method):
    """Combine Image Prompts merges the references as weighted: one with weight 0 does not count."""
    combine = node("ExactCombineImagePrompts")
    first, second = images(15, count=2), images(16)
    weighted = combine(encode(adapters["a"], small_clip_vision, first, image_weights="1, 0"), encode(adapters["a"], small_clip_vision, second), method)[0]
    plain = combine(encode(adapters["a"], small_clip_vision, first[:1]), encode(adapters["a"], small_clip_vision, second), method)[0]
    # atol: a batch of two goes through CLIP vision with other kernels than one image alone
    assert torch.allclose(weighted.cond, plain.cond, atol=1e-5) and torch.allclose(weighted.uncond, plain.uncond, atol=1e-5)
    halved = combine(encode(adapters["a"], small_clip_vision, first[:1], image_weights="0.5"), encode(adapters["a"], small_clip_vision, second), "add")[0]
    one, other = encode(adapters["a"], small_clip_vision, first[:1]), encode(adapters["a"], small_clip_vision, second)
    assert torch.allclose(halved.cond, 0.5 * one.cond + other.cond, atol=1e-6)


def test_image_weights_that_cannot_be_used_are_refused_before_encoding(adapters, small_clip_vision):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match="add up to 0"):
        encode(adapters["a"], small_clip_vision, images(17, count=2), combine="average", image_weights="1, -1")
    for text in ("nan, 1", "1, inf"):
        with pytest.raises(IPAdapterError, match="finite"):
            encode(adapters["a"], small_clip_vision, images(17, count=2), image_weights=text)


def test_image_weights_scale_each_reference(comfy, tiny_model, adapters, small_clip_vision):
    batch = images(5, count=2)
    zeros = encode(adapters["a"], small_clip_vision, batch, image_weights="0, 0")
    assert torch.equal(evaluate(comfy, apply(tiny_model, adapters["a"], zeros)), evaluate(comfy, tiny_model))
    weighted = encode(adapters["a"], small_clip_vision, batch, image_weights="1, 0.25")
    _, _, scale = weighted.layout(unfold=False)
    assert scale.tolist() == [[1.0] * 4 + [0.25] * 4]
    plain = evaluate(comfy, apply(tiny_model, adapters["a"], encode(adapters["a"], small_clip_vision, batch)))
    assert relative_error(evaluate(comfy, apply(tiny_model, adapters["a"], weighted)), plain) > 1e-4


def test_combine_prompts_concat_equals_one_batch(adapters, small_clip_vision):
    first, second = images(6), images(7)
    combined = node("ExactCombineImagePrompts")(encode(adapters["a"], small_clip_vision, first), encode(adapters["a"], small_clip_vision, second), "concat")[0]
    batch = encode(adapters["a"], small_clip_vision, torch.cat([first, second]))
    assert torch.allclose(combined.cond, batch.cond, atol=1e-6) and torch.allclose(combined.uncond, batch.uncond, atol=1e-6)
    average = node("ExactCombineImagePrompts")(encode(adapters["a"], small_clip_vision, first), encode(adapters["a"], small_clip_vision, second), "average")[0]
    assert torch.allclose(average.cond, batch.cond.mean(0, keepdim=True), atol=1e-6)


def test_combine_prompts_of_two_adapters_is_refused(adapters, small_clip_vision, prompt_a):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    prompt_b = encode(adapters["b"], small_clip_vision, images(1))
    with pytest.raises(IPAdapterError, match="different IP-Adapters cannot be combined"):
        node("ExactCombineImagePrompts")(prompt_a, prompt_b, "concat")


def test_tiles_cover_wide_images(adapters, small_clip_vision):
    wide = images(8, height=64, width=128)
    tiled = encode(adapters["a"], small_clip_vision, wide, crop="tiles")
    assert tiled.cond.shape == (2, 4, 768)
    left = encode(adapters["a"], small_clip_vision, wide[:, :, :64])
    right = encode(adapters["a"], small_clip_vision, wide[:, :, 64:])
    assert torch.allclose(tiled.cond, torch.cat([left.cond, right.cond]), atol=1e-5)
    squashed = encode(adapters["a"], small_clip_vision, wide, crop="squash")
    assert squashed.cond.shape == (1, 4, 768) and not torch.allclose(squashed.cond, encode(adapters["a"], small_clip_vision, wide).cond)


# --- batches --------------------------------------------------------------------------------------


def test_unfold_gives_latent_i_reference_i(comfy, tiny_model, adapters, small_clip_vision):
    first, second = images(9), images(10)
    unfolded = apply(tiny_model, adapters["a"], encode(adapters["a"], small_clip_vision, torch.cat([first, second])), unfold_batch=True)
    both = evaluate(comfy, unfolded, batch=2)  # rows: cond latent 0, cond latent 1, uncond 0, uncond 1
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    for i, reference in enumerate((first, second)):
        alone = apply(tiny_model, adapters["a"], encode(adapters["a"], small_clip_vision, reference))
        _, cond, uncond, _ = predict_noise(comfy, alone, noise[i : i + 1], 4.0, conditioning(1), conditioning(2), cfg=5.0)
        assert torch.allclose(both[i : i + 1], cond, rtol=1e-5, atol=1e-5)
        assert torch.allclose(both[2 + i : 3 + i], uncond, rtol=1e-5, atol=1e-5)


def test_unfold_pads_with_the_last_reference(comfy, tiny_model, adapters, small_clip_vision):
    prompt = encode(adapters["a"], small_clip_vision, images(11))
    unfolded = evaluate(comfy, apply(tiny_model, adapters["a"], prompt, unfold_batch=True), batch=3)
    assert torch.allclose(unfolded, evaluate(comfy, apply(tiny_model, adapters["a"], prompt), batch=3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, message", [("unfold", "3 references for 2 latents"), ("mask", "attn_mask has 3 masks for a batch of 2 latents")])
def test_batch_mismatch_raised_before_the_first_step(comfy, tiny_model, adapters, small_clip_vision, prompt_a, case, message):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    if case == "unfold":
        model = apply(tiny_model, adapters["a"], encode(adapters["a"], small_clip_vision, images(12, count=3)), unfold_batch=True)
    else:
        model = apply(tiny_model, adapters["a"], prompt_a, attn_mask=torch.ones(3, 16, 16))
    calls = []
    model = model.clone()
    model.set_model_unet_function_wrapper(lambda apply_model, args: calls.append(1) or apply_model(args["input"], args["timestep"], **args["c"]))
    with pytest.raises(IPAdapterError, match=message):
        evaluate(comfy, model, batch=2)
    assert calls == []


# --- per-layer weights ----------------------------------------------------------------------------


@functools.cache
def layers_of(architecture):
    """The cross-attention layers of the full SD1.5 or SDXL UNet (built once: the meta model takes seconds)."""
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    return tuple(cross_attention_layers(meta_model(architecture)[1].get_model_object("diffusion_model")))


@pytest.mark.parametrize("architecture, sizes", [("sd15", (4, 6, 6)), ("sdxl", (4, 60, 6))])
def test_regions_follow_the_unet_structure(pack, architecture, sizes):
    from comfyui_ipadapter.ipadapter_core.layer_weights import regions

    counted = list(regions(layers_of(architecture)).values())
    assert (counted.count("input"), counted.count("deepest"), counted.count("output")) == sizes


# The leading pack's weight types (cubiq/ComfyUI_IPAdapter_plus: the tables in IPAdapterPlus.py's
# ipadapter_execute and the ramps in CrossAttentionPatch.py's ipadapter_attention), written out
# by hand. That pack numbers ComfyUI's blocks holding cross-attention in execution order:
BLOCKS = {
    "sd15": [("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0)]
    + [("output", n) for n in range(3, 12)],
    "sdxl": [("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0)] + [("output", n) for n in range(6)],
}
LEADING_TABLES = {  # weight type -> architecture -> {block number: factor}; absent blocks get 0
    "style transfer": {"sd15": dict.fromkeys([0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15], 1.0), "sdxl": {6: 1.0}},
    "composition": {"sd15": {4: 0.25, 5: 1.0}, "sdxl": {3: 1.0}},
    "strong style transfer": {"sd15": dict.fromkeys([0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 1.0),
                              "sdxl": dict.fromkeys([0, 1, 2, 4, 5, 6, 7, 8, 9, 10], 1.0)},
    "style and composition": {"sd15": dict.fromkeys([0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15], 1.0), "sdxl": {6: 1.0}},
    "strong style and composition": {"sd15": dict.fromkeys([0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 1.0),
                                     "sdxl": dict.fromkeys([0, 1, 2, 4, 5, 6, 7, 8, 9, 10], 1.0)},
}
LEADING_COMPOSITION_HALF = {  # the composition weight's blocks of the two-prompt types
    "style and composition": {"sd15": {4: 0.25, 5: 1.0}, "sdxl": {3: 1.0}},
    "strong style and composition": {"sd15": {4: 1.0, 5: 1.0}, "sdxl": {3: 1.0}},
}


def leading_ramp(weight_type, t, count):
    """CrossAttentionPatch.py's per-block factor for block t of `count` (16 on SD1.5, 11 on SDXL)."""
    half = count / 2
    return {
        "linear": 1.0,
        "ease in": 0.05 + 0.95 * (1 - t / count),
        "ease out": 0.05 + 0.95 * (t / count),
        "ease in-out": 0.05 + 0.95 * (1 - abs(t - half) / half),
        "reverse in-out": 0.05 + 0.95 * (abs(t - half) / half),
    }[weight_type]


def leading_factors(architecture, weight_type):
    """{block: factor} the leading pack gives each block for a weight type."""
    blocks = BLOCKS[architecture]
    if weight_type in LEADING_TABLES:
        table = LEADING_TABLES[weight_type][architecture]
        return {block: table.get(i, 0.0) for i, block in enumerate(blocks)}
    if weight_type.startswith(("weak", "strong middle")):
        weak = {"weak input": {"input"}, "weak middle": {"middle"}, "weak output": {"output"}, "strong middle": {"input", "output"}}[weight_type]
        return {block: 0.2 if block[0] in weak else 1.0 for block in blocks}
    return {block: leading_ramp(weight_type, i, len(blocks)) for i, block in enumerate(blocks)}


SHARED_NAMES = ["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak middle", "weak output",
                "strong middle", *LEADING_TABLES]


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", SHARED_NAMES)
def test_weight_type_selects_the_leading_packs_layers(pack, architecture, weight_type):
    """Same name, same behaviour: every layer's factor equals the leading pack's for its block."""
    from comfyui_ipadapter.ipadapter_core.layer_weights import layer_factors

    layers = layers_of(architecture)
    assert {layer.key[:2] for layer in layers} == set(BLOCKS[architecture])
    expected = leading_factors(architecture, weight_type)
    factors = layer_factors(layers, weight_type)
    assert factors == pytest.approx({layer.key: expected[layer.key[:2]] for layer in layers}, abs=1e-12)


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", list(LEADING_COMPOSITION_HALF))
def test_composition_half_matches_the_leading_pack(pack, architecture, weight_type):
    from comfyui_ipadapter.ipadapter_core.layer_weights import composition_factors

    layers = layers_of(architecture)
    table = LEADING_COMPOSITION_HALF[weight_type][architecture]
    expected = {block: table.get(i, 0.0) for i, block in enumerate(BLOCKS[architecture])}
    assert composition_factors(layers, weight_type) == {layer.key: expected[layer.key[:2]] for layer in layers}


def test_ease_in_is_strongest_at_the_first_input_block(pack):
    """The direction users know from the leading pack: ease in starts at full weight, ease out ends near it."""
    from comfyui_ipadapter.ipadapter_core.layer_weights import layer_factors

    layers = layers_of("sd15")
    ease_in, ease_out = layer_factors(layers, "ease in"), layer_factors(layers, "ease out")
    assert ease_in[("input", 1, 0)] == 1.0 and ease_out[("input", 1, 0)] == pytest.approx(0.05)
    assert ease_in[("output", 11, 0)] == pytest.approx(0.05 + 0.95 / 16) and ease_out[("output", 11, 0)] == pytest.approx(0.05 + 0.95 * 15 / 16)


@pytest.mark.parametrize("architecture, style, composition", [
    ("sd15", [("input", n, 0) for n in (1, 2, 4, 5)] + [("output", n, 0) for n in range(5, 12)], [("input", 7, 0), ("input", 8, 0)]),
    ("sdxl", [("output", 1, i) for i in range(10)], [("input", 8, i) for i in range(10)]),
])
def test_style_and_composition_touch_exactly_the_instantstyle_layers(pack, architecture, style, composition):
    """Counted on the patches registered on the real architecture's ModelPatcher: what ComfyUI will call."""
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    _, model, _ = meta_model(architecture)
    layers = layers_of(architecture)
    cross = layers[0].context_dim
    state = adapter_state_dict("base", [(l.processor_index, l.inner_dim) for l in layers], cross, 1280 if cross == 2048 else 1024, device="meta")
    adapter = wrap_adapter(IPAdapterModel.from_weights(split_adapter_weights(state), identity="meta"), "a")
    style_prompt = ImagePrompt(torch.zeros(1, 4, cross), torch.zeros(1, 4, cross), adapter.model.identity, "")
    composition_prompt = ImagePrompt(torch.ones(1, 4, cross), torch.ones(1, 4, cross), adapter.model.identity, "")

    def patched_keys(weight_type, **options):
        patched = apply(model, adapter, style_prompt, weight_type=weight_type, **options)
        return patched.model_options["transformer_options"]["patches_replace"]["attn2"]

    assert sorted(patched_keys("style transfer")) == sorted(style)
    assert sorted(patched_keys("composition")) == sorted(composition)
    both = patched_keys("style and composition", composition_image_prompt=composition_prompt, composition_weight=0.5)
    assert sorted(both) == sorted(style + composition)
    assert all(torch.equal(both[key].branches[0].cond, style_prompt.cond) and both[key].branches[0].weight == 1.0 for key in style)
    assert all(torch.equal(both[key].branches[0].cond, composition_prompt.cond) and both[key].branches[0].weight == 0.5 for key in composition)
    assert sorted(patched_keys("linear", layer_weights="all:0, style:1")) == sorted(style)


@pytest.mark.parametrize("layer_weights, expected", [
    ("composition: 0.5", dict(composition_weight=0.5)),
    ("style: 0.25", dict(weight=0.25)),
    ("style: 0, composition: 2", dict(weight=0.0, composition_weight=2.0)),
])
def test_layer_weights_reach_both_halves_of_style_and_composition(comfy, tiny_model, adapters, small_clip_vision, prompt_a, layer_weights, expected):
    """Each layer belongs to one half: the composition block to composition_image_prompt, every other layer to image_prompt."""
    composition = encode(adapters["a"], small_clip_vision, images(18))
    both = dict(weight_type="style and composition", composition_image_prompt=composition)
    with_spec = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, **both, layer_weights=layer_weights))
    arguments = dict(weight=1.0, composition_weight=1.0, **both)
    arguments.update(expected)
    assert torch.allclose(with_spec, evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, **arguments)), rtol=1e-5, atol=1e-6)


def test_weight_types_in_a_real_forward(comfy, tiny_model, adapters, prompt_a, monkeypatch):
    """On the tiny UNet, a layout without a leading-pack table, the InstantStyle blocks are derived from its
    structure; the layers a weight type selects are exactly the ones whose patch ComfyUI calls."""
    from comfyui_ipadapter.nodes.attention_patch import ImagePromptAttention

    called = []
    original = ImagePromptAttention.__call__
    monkeypatch.setattr(ImagePromptAttention, "__call__", lambda self, *a: called.append(self.layer.key) or original(self, *a))
    expected = {
        "style transfer": {("output", 1, 0)},
        "composition": {("input", 1, 0)},
        "strong style transfer": {("middle", 0, 0), ("output", 0, 0), ("output", 1, 0)},
        "linear": {("input", 1, 0), ("middle", 0, 0), ("output", 0, 0), ("output", 1, 0)},
    }
    for weight_type, keys in expected.items():
        called.clear()
        evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, weight_type=weight_type))
        assert set(called) == keys, weight_type


def test_weight_type_scales_each_layer(comfy, tiny_model, adapters, prompt_a):
    """'weak middle' equals a free-form spec giving the same factors, and differs from linear."""
    weak = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, weight_type="weak middle"))
    spec = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, layer_weights="middle: 0.2"))
    assert torch.equal(weak, spec)
    assert relative_error(weak, evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a))) > 1e-4


def test_block_numbers_select_the_leading_packs_layers(pack):
    """'6: 1' is the leading pack's layer_weights syntax: block 6 in execution order (the SD1.5 middle block)."""
    from comfyui_ipadapter.ipadapter_core.layer_weights import apply_layer_spec, layer_factors

    for architecture in ("sd15", "sdxl"):
        layers = layers_of(architecture)
        factors = apply_layer_spec(layer_factors(layers, "linear"), layers, "all: 0, 3: 0.5, 6: 1")
        chosen = {key[:2]: value for key, value in factors.items() if value}
        assert chosen == {BLOCKS[architecture][3]: 0.5, BLOCKS[architecture][6]: 1.0}


@pytest.mark.parametrize("spec, message", [
    ("output 4 = 1", "Cannot read layer weight"),
    ("input 3: 1", "selects no cross-attention layer of this model; its blocks are: 0 = input 1, 1 = middle 0, 2 = output 0, 3 = output 1"),
    ("4: 1", "selects no cross-attention layer"),
    ("sideways: 2", "Cannot read layer weight"),
])
def test_bad_layer_weight_specs(tiny_model, adapters, prompt_a, spec, message):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match=message):
        apply(tiny_model, adapters["a"], prompt_a, layer_weights=spec)


def test_composition_prompt_needs_its_weight_type(tiny_model, adapters, prompt_a):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match="only with weight_type 'style and composition'"):
        apply(tiny_model, adapters["a"], prompt_a, composition_image_prompt=prompt_a)


# --- embeds scaling -------------------------------------------------------------------------------


def test_embeds_scaling_formulas(pack):
    from comfyui_ipadapter.ipadapter_core.image_branch import scale_keys_values

    g = torch.Generator().manual_seed(12)
    k, v = torch.randn(2, 4, 320, generator=g), torch.randn(2, 4, 320, generator=g)
    w = 0.8
    assert torch.equal(scale_keys_values(k, v, w, "V only", 320)[1], v * w)
    kk, vv = scale_keys_values(k, v, w, "K+V", 320)
    assert torch.equal(kk, k * w) and torch.equal(vv, v * w)
    kk, vv = scale_keys_values(k, v, w, "K+V w/ C penalty", 320)
    assert torch.allclose(kk, k * w * 0.25) and torch.allclose(vv, v * w * 0.25)
    kk, vv = scale_keys_values(k, v, w, "K+mean(V) w/ C penalty", 1280)
    mean = v.mean(1, keepdim=True)
    assert torch.allclose(kk, k * w) and torch.allclose(vv, v - mean + mean * w)


def test_embeds_scaling_in_the_model(comfy, tiny_model, adapters, prompt_a):
    plain = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a))
    assert torch.equal(evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, embeds_scaling="K+V")), plain)  # at weight 1
    k_and_v = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, weight=0.5, embeds_scaling="K+V"))
    v_only = evaluate(comfy, apply(tiny_model, adapters["a"], prompt_a, weight=0.5))
    assert relative_error(k_and_v, v_only) > 1e-4


# --- convenience node -----------------------------------------------------------------------------


def test_one_node_equals_encode_plus_apply(comfy, tiny_model, adapters, small_clip_vision):
    image = images(13)
    single = node("ExactIPAdapter")(tiny_model, adapters["a"], small_clip_vision, image, 0.7, "ease in", 0.1, 0.9)[0]
    two = apply(tiny_model, adapters["a"], encode(adapters["a"], small_clip_vision, image), 0.7, 0.1, 0.9, weight_type="ease in")
    assert torch.equal(evaluate(comfy, single), evaluate(comfy, two))
