"""Apply IP-Adapter's inputs to image branches (ipadapter_core.branches), without ComfyUI.

The layers are SD1.5's cross-attention layers as the layer map derives them (the table of
tests/test_layer_map.py, which checks the map against diffusers), so weight types resolve to the
real style and composition blocks.
"""

from __future__ import annotations

import pytest
import torch

from ipadapter_core.adapter import IPAdapterModel
from ipadapter_core.branches import FRACTION_RANGE, WEIGHT_RANGE, build_branches, check_mask, check_range, sigma_range
from ipadapter_core.checkpoint import split_adapter_weights
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.image_prompt import ImagePrompt
from ipadapter_core.layer_map import DIT_BLOCK, CrossAttentionLayer
from ipadapter_core.layer_weights import apply_layer_spec, composition_factors, layer_factors
from test_layer_map import SD15_TABLE
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict

LAYERS = [CrossAttentionLayer((*SD15_TABLE[index], 0), index, dim, 768, 8) for index, dim in SD15_LAYER_DIMS]


def percent_to_sigma(percent: float) -> float:
    """A stand-in for a model's schedule: sigma 14 at the start, 0 at the end."""
    return 14.0 * (1.0 - percent)


@pytest.fixture(scope="module")
def adapter() -> IPAdapterModel:
    return IPAdapterModel.from_weights(split_adapter_weights(adapter_state_dict("base", SD15_LAYER_DIMS, seed=3)))


@pytest.fixture(scope="module")
def other_adapter() -> IPAdapterModel:
    return IPAdapterModel.from_weights(split_adapter_weights(adapter_state_dict("base", SD15_LAYER_DIMS, seed=4)))


def prompt_of(adapter: IPAdapterModel, references: int = 2, seed: int = 0) -> ImagePrompt:
    generator = torch.Generator().manual_seed(seed)
    cond, uncond = (torch.randn(references, 4, 768, generator=generator) for _ in range(2))
    return ImagePrompt(cond, uncond, adapter.identity, adapter.spec.description)


def build(adapter, prompt, weight=1.0, start_at=0.0, end_at=1.0, **options):
    return build_branches(adapter, LAYERS, prompt, weight, start_at, end_at, percent_to_sigma, **options)


def test_the_defaults_give_one_plain_branch(adapter):
    prompt = prompt_of(adapter)
    (branch,) = build(adapter, prompt, weight=0.7)
    assert branch.adapter is adapter and branch.weight == 0.7 and branch.scaling == "V only"
    assert branch.sigma_range is None and branch.mask is None and branch.latent_weights is None and branch.layer_weights is None
    assert torch.equal(branch.cond, prompt.cond.reshape(1, 8, 768)) and torch.equal(branch.uncond, prompt.uncond.reshape(1, 8, 768))


def test_every_input_reaches_the_branch(adapter):
    prompt = prompt_of(adapter)
    mask = torch.zeros(24, 32)
    mask[:, :16] = 1
    (branch,) = build(adapter, prompt, weight=-0.5, start_at=0.25, end_at=0.5, weight_type="ease in", embeds_scaling="K+V",
                      attn_mask=mask, unfold_batch=True, weight_schedule=[1, 0.5], layer_weights="middle:0")
    assert branch.weight == -0.5 and branch.scaling == "K+V"
    assert branch.sigma_range == (10.5, 7.0)
    assert torch.equal(branch.mask, mask[None]) and branch.latent_weights == (1.0, 0.5)
    assert torch.equal(branch.cond, prompt.cond)  # unfolded: one row per reference
    expected = layer_factors(LAYERS, "ease in")
    # "middle": ComfyUI's middle block, as the leading pack's weight types name it
    assert branch.layer_weights == {key: 0.0 if key[0] == "middle" else value for key, value in expected.items()}
    assert 0 < sum(value == 0.0 for value in branch.layer_weights.values()) < len(LAYERS)


def test_style_and_composition_adds_the_composition_branch(adapter):
    style_prompt, composition_prompt = prompt_of(adapter, seed=1), prompt_of(adapter, seed=2)
    style, composition = build(adapter, style_prompt, weight=0.8, weight_type="style and composition",
                               composition_image_prompt=composition_prompt, composition_weight=0.3)
    assert style.weight == 0.8 and style.layer_weights == layer_factors(LAYERS, "style and composition")
    assert composition.weight == 0.3 and composition.layer_weights == composition_factors(LAYERS)
    assert torch.equal(composition.cond, composition_prompt.cond.reshape(1, 8, 768))
    (_, same_prompt) = build(adapter, style_prompt, weight_type="style and composition")
    assert torch.equal(same_prompt.cond, style.cond)


@pytest.mark.parametrize("spec, style_factor, composition_factor, elsewhere", [
    ("composition: 0.5", 1.0, 0.5, 0.0),
    ("style: 0.25", 0.25, None, 0.0),  # None: the composition half keeps its own factors
    ("all: 0.3", 0.3, 0.3, 0.3),
])
def test_layer_weights_reach_both_halves_of_style_and_composition(adapter, spec, style_factor, composition_factor, elsewhere):
    """Each layer belongs to one half: the composition blocks to composition_image_prompt's branch, every
    other layer to image_prompt's; layer_weights set factors in both (bug: they reached the style half only).
    On SD1.5 the leading pack's table gives the composition half input 7 at 0.25 and input 8 at 1."""
    own_composition = composition_factors(LAYERS, "style and composition")
    assert {key: value for key, value in own_composition.items() if value} == {("input", 7, 0): 0.25, ("input", 8, 0): 1.0}
    in_composition = {key for key, value in own_composition.items() if value}
    in_style = {key for key, value in layer_factors(LAYERS, "style and composition").items() if value}
    style, composition = build(adapter, prompt_of(adapter), weight_type="style and composition", layer_weights=spec)
    for key in (layer.key for layer in LAYERS):
        expected_style = 0.0 if key in in_composition else style_factor if key in in_style else elsewhere
        own = own_composition[key] if composition_factor is None else composition_factor
        expected_composition = own if key in in_composition else 0.0
        assert (style.layer_weights[key], composition.layer_weights[key]) == (expected_style, expected_composition), key


@pytest.mark.parametrize("options, message", [
    (dict(weight=5.5), "weight is 5.5; it must be between -1.0 and 5.0"),
    (dict(weight_type="style and composition", composition_weight=-2.0), "composition_weight is -2.0; it must be between -1.0 and 5.0"),
    (dict(start_at=-0.1), "start_at is -0.1; it must be between 0.0 and 1.0"),
    (dict(end_at=1.5), "end_at is 1.5; it must be between 0.0 and 1.0"),
    (dict(start_at=0.8, end_at=0.2), r"start_at \(0.8\) is after end_at \(0.2\)"),
    (dict(embeds_scaling="Q only"), "Unknown embeds_scaling 'Q only'"),
    (dict(weight_type="sideways"), "Unknown weight_type 'sideways'"),
    (dict(composition_image_prompt="set below"), "composition_image_prompt is used only with weight_type 'style and composition' or 'strong style and composition'"),
    (dict(attn_mask=torch.full((8, 8), 2.0)), "attn_mask values must lie between 0 and 1"),
])
def test_bad_inputs_are_refused_with_the_fix(adapter, options, message):
    if options.get("composition_image_prompt") == "set below":
        options["composition_image_prompt"] = prompt_of(adapter)
    with pytest.raises(IPAdapterError, match=message):
        build(adapter, prompt_of(adapter), **options)


def test_a_prompt_from_another_adapter_is_refused(adapter, other_adapter):
    with pytest.raises(IPAdapterError, match="encoded by a different IP-Adapter"):
        build(adapter, prompt_of(other_adapter))
    with pytest.raises(IPAdapterError, match="encoded by a different IP-Adapter"):
        build(adapter, prompt_of(adapter), weight_type="style and composition", composition_image_prompt=prompt_of(other_adapter))


def test_range_checks_include_the_bounds():
    assert check_range("weight", WEIGHT_RANGE[0], *WEIGHT_RANGE) == -1.0 and check_range("weight", 5, *WEIGHT_RANGE) == 5.0
    assert isinstance(check_range("weight", 5, *WEIGHT_RANGE), float)
    assert sigma_range(*FRACTION_RANGE, percent_to_sigma) is None  # the whole schedule: no gate
    assert sigma_range(0.5, 0.5, percent_to_sigma) == (7.0, 7.0)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(1, 2, 8, 8), r"got shape \(1, 2, 8, 8\)"),
    (torch.ones(8), r"got shape \(8,\)"),
    (torch.ones(0, 8, 8), r"got shape \(0, 8, 8\)"),
    (torch.full((8, 8), float("nan")), "between 0 and 1"),
    (torch.full((8, 8), -0.1), "between 0 and 1"),
])
def test_mask_checks(mask, message):
    with pytest.raises(IPAdapterError, match=message):
        check_mask(mask)


def test_a_valid_mask_becomes_a_float_batch_on_the_cpu():
    assert check_mask(None) is None
    single = check_mask(torch.ones(4, 6, dtype=torch.float16))
    assert single.shape == (1, 4, 6) and single.dtype == torch.float32
    batch = torch.rand(3, 4, 6)
    assert torch.equal(check_mask(batch), batch)


def test_transformer_stacks_take_the_ease_ramps_over_their_blocks():
    """Flux/SD3.5: the same formulas as on UNets (the leading pack's), block t of N first to last; block numbers select."""
    blocks = 19
    layers = [CrossAttentionLayer((DIT_BLOCK, index, 0), index, 3072, 0, 24) for index in range(blocks)]
    ramps = {"ease in": lambda t: 1 - t / blocks, "ease out": lambda t: t / blocks,
             "ease in-out": lambda t: 1 - abs(t - blocks / 2) / (blocks / 2), "reverse in-out": lambda t: abs(t - blocks / 2) / (blocks / 2)}
    for name, ramp in ramps.items():
        expected = {(DIT_BLOCK, t, 0): 0.05 + 0.95 * ramp(t) for t in range(blocks)}
        assert layer_factors(layers, name) == pytest.approx(expected, abs=1e-12), name
    for name in ("weak input", "style transfer", "strong style and composition"):
        with pytest.raises(IPAdapterError, match="one stack of blocks"):
            layer_factors(layers, name)
    numbered = apply_layer_spec(layer_factors(layers, "linear"), layers, "all: 0, 3: 1")
    assert numbered == apply_layer_spec(layer_factors(layers, "linear"), layers, "all: 0, block 3: 1")
    assert {key for key, value in numbered.items() if value} == {(DIT_BLOCK, 3, 0)}
    with pytest.raises(IPAdapterError, match="no UNet stages"):
        apply_layer_spec(layer_factors(layers, "linear"), layers, "middle: 0")
