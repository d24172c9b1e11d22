"""How samplers call the model, beyond plain CFG: guiders with more passes, sliding context windows.

Each is checked against the same sampler run on a branch composed by hand: models whose image
tokens are the same for every pass (all conditional, or all unconditional) give what each
pass must see, whatever the guider's list order or batching; windows must give every latent
exactly what the unwindowed batch gives it. The UNet's attn2 patches on the tiny SD1.5 UNet,
then the same for the Flux double blocks and SD3.5 joint blocks (tests/test_dit_controls.py's
small models and adapters).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from helpers import apply, conditioning, encode, node, predict_noise
import test_dit_controls as dit
from tools.random_models import adapter_state_dict, save_adapter


@pytest.fixture(scope="module")
def adapter(pack, tmp_path_factory, tiny_layer_dims):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter_protocols")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=61), folder / "protocols_base.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return node("ExactLoadIPAdapter")("protocols_base.safetensors")[0]


def images(seed, count=1):
    return torch.rand(count, 64, 64, 3, generator=torch.Generator().manual_seed(seed))


def one_evaluation(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
    return model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)


def pass_outputs(comfy, model, make_guider, noise, sigma=4.0):
    """Run one model evaluation through `make_guider(model)`; each conditioning list's output, None where skipped."""
    import comfy.samplers
    from comfy.patcher_extension import WrappersMP

    captured = []
    probe = model.clone()

    def capture(executor, inner, conds, x_in, timestep, model_options):
        out = executor(inner, conds, x_in, timestep, model_options)
        captured.append([None if c is None else o.clone() for c, o in zip(conds, out)])
        return out

    probe.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test-capture", capture)
    guider = make_guider(probe)
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(one_evaluation), torch.tensor([sigma, 0.0]), disable_pbar=True, seed=0)
    assert len(captured) == 1
    return captured[0]


# --- guiders with any number and order of passes ---------------------------------------------


CONDS = {"positive": 1, "middle": 3, "negative": 2}  # conditioning seeds


def make_list_guider(order, condition=conditioning):
    """A guider that hands calc_cond_batch the named conditionings in `order` (marked as the host marks them)."""
    import comfy.samplers
    import node_helpers

    class ListGuider(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006  (the host's signature)
            out = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds.get(name) for name in order], x, timestep, model_options)
            return out[0]

    def make(model):
        guider = ListGuider(model)
        conds = {name: condition(seed) for name, seed in CONDS.items() if name in order}
        if "middle" in conds:  # as DualCFGGuider marks its middle conditioning
            conds["middle"] = node_helpers.conditioning_set_values(conds["middle"], {"prompt_type": "negative"})
        guider.inner_set_conds(conds)
        return guider

    return make


def make_dual_guider(cfg1, cfg2, nested, condition=conditioning):
    def make(model):
        from comfy_extras.nodes_custom_sampler import Guider_DualCFG

        guider = Guider_DualCFG(model)
        guider.set_conds(condition(CONDS["positive"]), condition(CONDS["middle"]), condition(CONDS["negative"]))
        guider.set_cfg(cfg1, cfg2, nested=nested)
        return guider

    return make


def composed_by_hand(model, adapter, prompt) -> dict:
    """The real branch, and two composed by hand: every pass sees the conditional / the unconditional tokens."""
    return {
        "real": apply(model, adapter, prompt),
        "cond": apply(model, adapter, dataclasses.replace(prompt, uncond=prompt.cond)),
        "uncond": apply(model, adapter, dataclasses.replace(prompt, cond=prompt.uncond)),
    }


@pytest.fixture(scope="module")
def by_hand(comfy, tiny_model, adapter, small_clip_vision):
    return composed_by_hand(tiny_model, adapter, encode(adapter, small_clip_vision, images(1)))


def expected_source(name):
    """The middle pass follows the mark DualCFGGuider gives it (negative): unconditional image tokens."""
    return "cond" if name == "positive" else "uncond"


ORDERS = [order for size in (1, 2, 3) for order in itertools.permutations(CONDS, size)]
LATENT_SIDE = 4  # the tiny UNet's cost grows with the latent's area; 4x4 keeps these many runs cheap


@pytest.mark.parametrize("separate", [False, True], ids=["one batch", "one call per pass"])
def test_any_number_and_order_of_passes(comfy, by_hand, separate, monkeypatch):
    noise = torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(3))
    orders = ORDERS
    if separate:  # the host batches passes only when they fit in memory; here each pass gets its own call
        import comfy.samplers

        monkeypatch.setattr(comfy.samplers, "can_concat_cond", lambda c1, c2: c1 is c2)
        orders = [order for order in ORDERS if len(order) == len(CONDS)]
    hand = {source: pass_outputs(comfy, by_hand[source], make_list_guider(list(CONDS)), noise) for source in ("cond", "uncond")}
    for order in orders:
        real = pass_outputs(comfy, by_hand["real"], make_list_guider(order), noise)
        for name, output in zip(order, real):
            expected = hand[expected_source(name)][list(CONDS).index(name)]
            assert torch.allclose(output, expected, rtol=1e-5, atol=1e-5), (order, name)


@pytest.mark.parametrize("cfg1, cfg2, nested, passes", [(3.0, 5.0, False, 3), (3.0, 5.0, True, 3), (3.0, 1.0, False, 2), (1.0, 1.0, False, 1)])
def test_dual_cfg_guider(comfy, by_hand, cfg1, cfg2, nested, passes):
    """DualCFGGuider lists [negative, middle, positive]; cfg values of 1 drop passes."""
    noise = torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(4))
    guider = make_dual_guider(cfg1, cfg2, nested)
    real = pass_outputs(comfy, by_hand["real"], guider, noise)
    hand = {source: pass_outputs(comfy, by_hand[source], guider, noise) for source in ("cond", "uncond")}
    assert sum(output is not None for output in real) == passes
    for name, output in zip(("negative", "middle", "positive"), real):
        if output is not None:
            assert torch.allclose(output, hand[expected_source(name)][("negative", "middle", "positive").index(name)], rtol=1e-5, atol=1e-5), name


def test_plain_cfg_is_unchanged(comfy, by_hand):
    noise = torch.randn(2, 4, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, by_hand["real"], noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    _, hand_cond, _, _ = predict_noise(comfy, by_hand["cond"], noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    _, _, hand_uncond, _ = predict_noise(comfy, by_hand["uncond"], noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    assert torch.allclose(cond, hand_cond, rtol=1e-5, atol=1e-5) and torch.allclose(uncond, hand_uncond, rtol=1e-5, atol=1e-5)


# --- sliding context windows ------------------------------------------------------------------


LATENTS = 12
WINDOWS = {  # windows of 4 as each protocol might send them
    "host": [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9], [8, 9, 10, 11], [10, 11, 0, 1]],  # overlapping, looped
    "animatediff": [list(range(i, i + 4)) for i in range(0, LATENTS, 4)],  # disjoint
}


def windowed(model, protocol, windows):
    """The model called on windows of latents, as the host's context windows or AnimateDiff-Evolved call it.

    The host's IndexListContextHandler cannot window the batch of an image model in this ComfyUI
    version, so its calls are emulated here: per window, the window's latents, timesteps and
    protocol key in transformer_options, and the outputs averaged where windows overlap.
    """
    from comfy.context_windows import IndexListContextWindow
    from comfy.patcher_extension import WrappersMP

    def by_windows(executor, inner, conds, x_in, timestep, model_options):
        total = [torch.zeros_like(x_in) for _ in conds]
        counts = torch.zeros(x_in.shape[0], 1, 1, 1)
        for window in windows:
            options = {**model_options, "transformer_options": dict(model_options["transformer_options"])}
            if protocol == "host":
                options["transformer_options"]["context_window"] = IndexListContextWindow(window, dim=0)
            else:
                options["transformer_options"]["ad_params"] = {"sub_idxs": window, "full_length": x_in.shape[0], "context_length": len(window)}
            out = executor(inner, conds, x_in[window], timestep[window], options)
            for i, o in enumerate(out):
                total[i][window] += o
            counts[window] += 1
        return [t / counts for t in total]

    windowed_model = model.clone()
    windowed_model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test-windows", by_windows)
    return windowed_model


@pytest.fixture(scope="module")
def per_latent_models(tiny_model, adapter, small_clip_vision):
    """Per-latent masks alone (keys per pass, masks per latent), and every per-latent input at once with
    step gating: unfolded references (fewer than latents), a weight schedule, one mask per latent."""
    masks = torch.zeros(LATENTS, 64, 64)
    for i in range(LATENTS):
        masks[i, : 16 + 4 * i, : 60 - 4 * i] = 1
    unfolded = encode(adapter, small_clip_vision, images(2, count=5))
    schedule = tuple(1.0 - i / LATENTS for i in range(LATENTS))
    return {
        "masks": apply(tiny_model, adapter, encode(adapter, small_clip_vision, images(4)), attn_mask=masks),
        "unfold, schedule, masks, start_at": apply(tiny_model, adapter, unfolded, start_at=0.2, unfold_batch=True, weight_schedule=schedule, attn_mask=masks),
    }


@pytest.mark.parametrize("inputs", ["masks", "unfold, schedule, masks, start_at"])
def test_context_windows_give_every_latent_its_own_inputs(comfy, per_latent_models, inputs):
    model = per_latent_models[inputs]
    noise = torch.randn(LATENTS, 4, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(6))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    for protocol, windows in WINDOWS.items():
        _, window_cond, window_uncond, _ = predict_noise(comfy, windowed(model, protocol, windows), noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
        assert torch.allclose(window_cond, cond, rtol=1e-5, atol=1e-5), protocol
        assert torch.allclose(window_uncond, uncond, rtol=1e-5, atol=1e-5), protocol


# --- the same on Flux double blocks and SD3.5 joint blocks -----------------------------------------


FLUX, SD3, LATENT, SIGMA = dit.FLUX, dit.SD3, dit.LATENT, dit.SIGMA
dit_models, dit_adapter_folder = dit.models, dit.adapter_folder  # its fixtures, under this module's names


@pytest.fixture(scope="module")
def dit_by_hand(comfy, dit_models, dit_adapter_folder):
    hands = {}
    for kind in (FLUX, SD3):
        adapter = dit.load(kind)
        hands[kind] = composed_by_hand(dit_models[kind], adapter, dit.random_prompt(adapter, seed=7))
    return hands


@pytest.mark.parametrize("kind", [FLUX, SD3])
@pytest.mark.parametrize("separate", [False, True], ids=["one batch", "one call per pass"])
def test_dit_blocks_give_each_pass_its_tokens(comfy, dit_by_hand, kind, separate, monkeypatch):
    """DualCFGGuider's three passes, and a guider listing them in another order."""
    if separate:
        import comfy.samplers

        monkeypatch.setattr(comfy.samplers, "can_concat_cond", lambda c1, c2: c1 is c2)

    def condition(seed):
        return dit.conditioning(kind, seed)

    noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(8))
    guiders = [(("negative", "middle", "positive"), make_dual_guider(3.0, 5.0, False, condition)),
               (("middle", "positive", "negative"), make_list_guider(["middle", "positive", "negative"], condition))]
    for order, guider in guiders:
        real = pass_outputs(comfy, dit_by_hand[kind]["real"], guider, noise, sigma=SIGMA[kind])
        hand = {source: pass_outputs(comfy, dit_by_hand[kind][source], guider, noise, sigma=SIGMA[kind]) for source in ("cond", "uncond")}
        assert all(output is not None for output in real)
        for position, (name, output) in enumerate(zip(order, real)):
            assert torch.allclose(output, hand[expected_source(name)][position], rtol=1e-5, atol=1e-5), (order, name)


DIT_LATENTS = 6
DIT_WINDOWS = {"host": [[0, 1, 2], [2, 3, 4], [4, 5, 0]], "animatediff": [[0, 1, 2], [3, 4, 5]]}


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_dit_context_windows_give_every_latent_its_own_inputs(comfy, dit_models, dit_adapter_folder, kind):
    """Unfolded references (fewer than latents), a weight schedule, one mask per latent and step gating."""
    adapter = dit.load(kind)
    height, width = 8 * LATENT[1], 8 * LATENT[2]
    masks = torch.zeros(DIT_LATENTS, height, width)
    for i in range(DIT_LATENTS):
        masks[i, : 16 + 8 * i, : width - 12 * i] = 1
    schedule = tuple(1.0 - i / DIT_LATENTS for i in range(DIT_LATENTS))
    model = apply(dit_models[kind], adapter, dit.random_prompt(adapter, references=4, seed=9), start_at=0.2, unfold_batch=True,
                  weight_schedule=schedule, attn_mask=masks)
    noise = torch.randn(DIT_LATENTS, *LATENT, generator=torch.Generator().manual_seed(10))
    positive, negative = dit.conditioning(kind, 1), dit.conditioning(kind, 2)
    _, cond, uncond, _ = predict_noise(comfy, model, noise, SIGMA[kind], positive, negative, cfg=2.0)
    for protocol, windows in DIT_WINDOWS.items():
        _, window_cond, window_uncond, _ = predict_noise(comfy, windowed(model, protocol, windows), noise, SIGMA[kind], positive, negative, cfg=2.0)
        assert torch.allclose(window_cond, cond, rtol=1e-5, atol=1e-5), protocol
        assert torch.allclose(window_uncond, uncond, rtol=1e-5, atol=1e-5), protocol
