"""Weight schedules: exact endpoints, easing shapes, custom lists, and their effect on a latent batch."""

from __future__ import annotations

import pytest
import torch

from helpers import conditioning, node, predict_noise
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.schedules import SCHEDULE_METHODS, format_schedule, parse_schedule, weight_schedule
from tools.random_models import adapter_state_dict, save_adapter


@pytest.mark.parametrize("method", SCHEDULE_METHODS)
@pytest.mark.parametrize("start, end", [(1.0, 0.0), (0.0, 1.0), (0.1, 0.7), (-0.3, 2.9)])
def test_endpoints_are_exact_and_values_monotonic(method, start, end):
    values = weight_schedule(17, start, end, method)
    assert len(values) == 17 and values[0] == start and values[-1] == end
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(step * (end - start) >= 0 for step in steps)


def test_linear_values():
    assert weight_schedule(5, 1.0, 0.0, "linear") == (1.0, 0.75, 0.5, 0.25, 0.0)
    assert weight_schedule(1, 0.8, 0.0, "linear") == (0.8,)
    assert weight_schedule(3, 0.5, 0.5, "ease in") == (0.5, 0.5, 0.5)


def test_ease_shapes_at_quarter_middle_and_three_quarters():
    linear, ease_in, ease_out, in_out = (weight_schedule(5, 0.0, 1.0, m) for m in ("linear", "ease in", "ease out", "ease in-out"))
    assert linear == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert ease_in[2] == 0.25 and all(e < lin for e, lin in zip(ease_in[1:-1], linear[1:-1]))
    assert ease_out[2] == 0.75 and all(e > lin for e, lin in zip(ease_out[1:-1], linear[1:-1]))
    assert in_out[2] == 0.5 and in_out[1] < linear[1] and in_out[3] > linear[3]  # slow at both ends
    # Mirror symmetry: ease out is ease in played backwards.
    assert all(abs(a - (1 - b)) < 1e-12 for a, b in zip(ease_out, reversed(ease_in)))


def test_custom_values_are_used_as_is():
    assert parse_schedule("1, 0.8,0.5 , 0") == (1.0, 0.8, 0.5, 0.0)
    assert parse_schedule(" 0.3 ,") == (0.3,)
    assert parse_schedule("-1, 2.5e0") == (-1.0, 2.5)
    values = weight_schedule(7, 1.0, 0.0, "ease in-out")
    assert parse_schedule(format_schedule(values)) == tuple(float(f"{v:.4g}") for v in values)


@pytest.mark.parametrize("text, message", [
    ("1, 0.5x, 0", "custom value 2 \\('0.5x'\\) is not a number; write numbers separated by commas, like '1, 0.8, 0.5'"),
    ("1; 0.5", "custom value 1 \\('1; 0.5'\\) is not a number"),
    (" , ,", "custom has no values"),
    ("1, nan", "custom value 2 is 'nan'; every value must be a finite number"),
    ("inf", "every value must be a finite number"),
])
def test_custom_errors(text, message):
    with pytest.raises(IPAdapterError, match=message):
        parse_schedule(text)


def test_bad_arguments():
    with pytest.raises(IPAdapterError, match="frames is 0; it must be at least 1"):
        weight_schedule(0, 1.0, 0.0)
    with pytest.raises(IPAdapterError, match="Unknown method 'cubic'; choose one of linear, ease in, ease out, ease in-out"):
        weight_schedule(4, 1.0, 0.0, "cubic")


# --- in ComfyUI -----------------------------------------------------------------------------


def test_node_outputs(pack):
    schedule = node("ExactIPAdapterWeightSchedule")
    types = schedule.INPUT_TYPES()
    assert list(types["required"]) == ["frames", "start", "end", "method"] and list(types["optional"]) == ["custom"]
    assert tuple(schedule.RETURN_TYPES) == ("EXACT_IPADAPTER_WEIGHTS", "STRING")
    assert schedule(5, 1.0, 0.0, "linear") == ((1.0, 0.75, 0.5, 0.25, 0.0), "1, 0.75, 0.5, 0.25, 0")
    assert schedule(5, 1.0, 0.0, "linear", custom="0.2, 1") == ((0.2, 1.0), "0.2, 1")
    assert schedule(3, 1.0, 0.0, "linear", custom="  ")[0] == (1.0, 0.5, 0.0)


@pytest.fixture(scope="module")
def adapter(pack, tmp_path_factory, tiny_layer_dims):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter_schedules")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=31), folder / "schedules_base.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return node("ExactLoadIPAdapter")("schedules_base.safetensors")[0]


def evaluate_batch(comfy, model):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    return cond, uncond


def test_schedule_one_zero_over_two_latents(comfy, tiny_model, adapter, small_clip_vision):
    image = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(0))
    prompt = node("ExactEncodeImagePrompt")(adapter, small_clip_vision, image)[0]
    (schedule, _) = node("ExactIPAdapterWeightSchedule")(2, 1.0, 0.0, "linear")
    apply = node("ExactApplyIPAdapter")
    scheduled = evaluate_batch(comfy, apply(tiny_model, adapter, prompt, 1.0, 0.0, 1.0, weight_schedule=schedule)[0])
    plain = evaluate_batch(comfy, apply(tiny_model, adapter, prompt, 1.0, 0.0, 1.0)[0])
    bare = evaluate_batch(comfy, tiny_model)
    for got, with_adapter, without in zip(scheduled, plain, bare):
        assert torch.equal(got[1], without[1])
        # Factor 0 adds exactly zero; factor 1 runs the same math through a per-latent key/value layout,
        # whose matrix products may round differently on other BLAS builds (bit-equal here today).
        assert torch.allclose(got[0], with_adapter[0], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(got[0], without[0], rtol=1e-3, atol=1e-3)
