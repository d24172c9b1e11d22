"""Flux.1 and SD3.5 through the same nodes: every control users rely on, checked by its numbers.

Small random Flux and SD3.5-structured models (tools.random_models) in the real ComfyUI; adapters
in the official XLabs / InstantX layouts. Exactness against diffusers is in tests/test_reference_dit.py;
here: what the controls do, how adapters compose with each other, with
LoRA, ControlNet and other packs' block patches, and the errors for wrong inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import apply, node, predict_noise, relative_error
from tools import random_models

FLUX, SD3 = "flux", "sd3"
SIGMA = {FLUX: 0.7, SD3: 0.8}
LATENT = (16, 8, 12)


@pytest.fixture(scope="module")
def models(comfy):
    return {kind: random_models.random_comfy_dit(kind, seed=1) for kind in (FLUX, SD3)}


@pytest.fixture(scope="module")
def adapter_folder(pack, tmp_path_factory):
    import folder_paths
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("dit-ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    flux, sd3 = random_models.DIFFUSERS_FLUX_CONFIG, random_models.DIFFUSERS_SD3_CONFIG
    flux_hidden = flux["attention_head_dim"] * flux["num_attention_heads"]
    for seed in (1, 2):
        save_file(random_models.flux_adapter_state_dict(flux["num_layers"], flux_hidden, flux["joint_attention_dim"], tokens=4, seed=seed), str(folder / f"flux_{seed}.safetensors"))
        torch.save(random_models.sd3_adapter_state_dict(sd3["num_layers"], sd3["attention_head_dim"] * sd3["num_attention_heads"], dim=128, heads=2, seed=seed), folder / f"sd3_{seed}.bin")
    return folder


def load(kind: str, seed: int = 1):
    return node("ExactLoadIPAdapter")(f"{kind}_{seed}.{'safetensors' if kind == FLUX else 'bin'}")[0]


def random_prompt(adapter, references: int = 1, seed: int = 0):
    """An image prompt as Encode Image Prompt makes it, from random encoder outputs."""
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    generator = torch.Generator().manual_seed(seed)
    spec = adapter.model.spec
    if spec.timestep_conditioned:
        features = torch.randn(2 * references, 30, spec.encoder_width, generator=generator)
        return ImagePrompt(features[:references], features[references:], adapter.model.identity, "")
    features = torch.randn(2 * references, spec.encoder_width, generator=generator)
    return ImagePrompt(adapter.model.project(features[:references]), adapter.model.project(features[references:]), adapter.model.identity, "")


def conditioning(kind: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if kind == FLUX:
        config = random_models.DIFFUSERS_FLUX_CONFIG
        return [[torch.randn(1, 5, config["joint_attention_dim"], generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]]
    config = random_models.DIFFUSERS_SD3_CONFIG
    return [[torch.randn(1, 5, config["joint_attention_dim"], generator=generator), {"pooled_output": torch.randn(1, config["pooled_projection_dim"], generator=generator)}]]


def evaluate(comfy, kind, model, batch=1, shape=LATENT, sigma=None, positive=None):
    noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, sigma or SIGMA[kind], positive or conditioning(kind, 1), conditioning(kind, 2), cfg=2.0)
    return torch.cat([cond, uncond])


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_weight_zero_and_steps_outside_start_end_are_exactly_the_bare_model(comfy, models, adapter_folder, kind):
    model, adapter = models[kind], load(kind)
    prompt = random_prompt(adapter)
    bare = evaluate(comfy, kind, model)
    assert relative_error(evaluate(comfy, kind, apply(model, adapter, prompt)), bare) > 1e-2
    assert torch.equal(evaluate(comfy, kind, apply(model, adapter, prompt, weight=0.0)), bare)
    sampling = model.get_model_object("model_sampling")
    inside = sampling.percent_to_sigma(0.2) > SIGMA[kind] > sampling.percent_to_sigma(0.6)
    assert inside
    assert torch.equal(evaluate(comfy, kind, apply(model, adapter, prompt, start_at=0.6)), bare)  # starts after this sigma
    assert torch.equal(evaluate(comfy, kind, apply(model, adapter, prompt, end_at=0.2)), bare)  # ended before it
    assert torch.equal(evaluate(comfy, kind, apply(model, adapter, prompt, start_at=0.2, end_at=0.6)), evaluate(comfy, kind, apply(model, adapter, prompt)))


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_chained_adapters_add_up_in_any_order(comfy, models, adapter_folder, kind):
    model, a, b = models[kind], load(kind, 1), load(kind, 2)
    pa, pb = random_prompt(a, seed=1), random_prompt(b, seed=2)
    only_a = evaluate(comfy, kind, apply(model, a, pa))
    assert torch.allclose(evaluate(comfy, kind, apply(apply(model, a, pa), b, pb, weight=0.0)), only_a, rtol=1e-5, atol=1e-6)
    both = evaluate(comfy, kind, apply(apply(model, a, pa), b, pb))
    assert relative_error(both, only_a) > 1e-3 and relative_error(both, evaluate(comfy, kind, apply(model, b, pb))) > 1e-3
    assert torch.allclose(evaluate(comfy, kind, apply(apply(model, b, pb), a, pa)), both, rtol=1e-5, atol=1e-6)
    # the same adapter applied twice at weight w/2 is one application at weight w (the branch is linear in its weight)
    halves = evaluate(comfy, kind, apply(apply(model, a, pa, weight=0.5), a, pa, weight=0.5))
    assert torch.allclose(halves, only_a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_unfold_gives_latent_i_reference_i(comfy, models, adapter_folder, kind):
    model, adapter = models[kind], load(kind)
    prompt = random_prompt(adapter, references=2, seed=3)
    batch = evaluate(comfy, kind, apply(model, adapter, prompt, unfold_batch=True), batch=2)  # [cond 0, cond 1, uncond 0, uncond 1]
    noise = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(5))
    for i in range(2):
        single = type(prompt)(prompt.cond[i : i + 1], prompt.uncond[i : i + 1], prompt.adapter_identity, "")
        _, cond, uncond, _ = predict_noise(comfy, apply(model, adapter, single), noise[i : i + 1], SIGMA[kind], conditioning(kind, 1), conditioning(kind, 2), cfg=2.0)
        assert torch.allclose(batch[i], cond[0], rtol=1e-4, atol=1e-5) and torch.allclose(batch[2 + i], uncond[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="2 references for 1 latents"):
        evaluate(comfy, kind, apply(model, adapter, prompt, unfold_batch=True), batch=1)


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_weight_schedule_per_latent(comfy, models, adapter_folder, kind):
    """A schedule of (1, 0): the first latent gets the branch, the second is exactly the bare model's."""
    model, adapter = models[kind], load(kind)
    prompt = random_prompt(adapter)
    scheduled = evaluate(comfy, kind, apply(model, adapter, prompt, weight_schedule=(1.0, 0.0)), batch=2)
    full = evaluate(comfy, kind, apply(model, adapter, prompt), batch=2)
    bare = evaluate(comfy, kind, model, batch=2)
    for row in (0, 2):  # cond and uncond of latent 0
        assert torch.allclose(scheduled[row], full[row], rtol=1e-4, atol=1e-5)
    for row in (1, 3):  # latent 1
        assert torch.equal(scheduled[row], bare[row])


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_masks_at_the_token_grid(comfy, models, adapter_folder, kind):
    model, adapter = models[kind], load(kind)
    prompt = random_prompt(adapter)
    plain = evaluate(comfy, kind, apply(model, adapter, prompt))
    height, width = 8 * LATENT[1], 8 * LATENT[2]  # the image's size in pixels; the grid is the 2x2-patch token grid
    assert torch.allclose(evaluate(comfy, kind, apply(model, adapter, prompt, attn_mask=torch.ones(height, width))), plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(evaluate(comfy, kind, apply(model, adapter, prompt, attn_mask=torch.zeros(height, width))), evaluate(comfy, kind, model))
    left = torch.zeros(height, width)
    left[:, : width // 2] = 1
    half = evaluate(comfy, kind, apply(model, adapter, prompt, attn_mask=left))
    assert relative_error(half, plain) > 1e-3 and relative_error(half, evaluate(comfy, kind, model)) > 1e-3
    # The branch itself acts only on the masked tokens: with only the last block patched, the image
    # stream leaving that block moves exactly there (later layers then mix tokens, as they should).
    assert masked_tokens_only(comfy, kind, model, adapter, prompt, left)


def masked_tokens_only(comfy, kind, model, adapter, prompt, mask) -> bool:
    """The last block's image-stream output moves only on tokens under the mask, given identical inputs."""
    diffusion_model = model.get_model_object("diffusion_model")
    tokens = (LATENT[1] // 2) * (LATENT[2] // 2)
    last = f"block {len(diffusion_model.double_blocks if kind == FLUX else diffusion_model.joint_blocks) - 1}"
    outputs = {}
    for name, weight in (("bare", 0.0), ("masked", 1.0)):
        captured = []
        if kind == FLUX:  # the branch joins after the block, so read the stream where the single blocks take it
            hook = diffusion_model.single_blocks[0].register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0][:, -tokens:].clone()))
        else:
            hook = diffusion_model.joint_blocks[-1].register_forward_hook(lambda module, inputs, output: captured.append(output[1].clone()))
        try:
            evaluate(comfy, kind, apply(model, adapter, prompt, weight=weight, attn_mask=mask, layer_weights=f"all:0, {last}:1"))
        finally:
            hook.remove()
        outputs[name] = captured[-1]
    moved = (outputs["masked"] - outputs["bare"]).abs().sum(dim=(0, 2))  # per image token
    grid = (LATENT[1] // 2, LATENT[2] // 2)
    where = torch.nn.functional.interpolate(mask[None, None], size=grid, mode="bilinear").reshape(-1) > 0
    return bool((moved[~where] == 0).all() and (moved[where] > 0).all())


def test_several_references_on_sd3_are_projected_one_by_one(comfy, models, adapter_folder):
    """Two references = the tokens of each (64 apiece) side by side in one branch: weighting the second
    to 0 removes its values but keeps its keys, so it differs from the first alone, and from equal weights."""
    model, adapter = models[SD3], load(SD3)
    two = random_prompt(adapter, references=2, seed=4)
    both = evaluate(comfy, SD3, apply(model, adapter, two))
    first = evaluate(comfy, SD3, apply(model, adapter, type(two)(two.cond[:1], two.uncond[:1], two.adapter_identity, "")))
    weighted = evaluate(comfy, SD3, apply(model, adapter, type(two)(two.cond, two.uncond, two.adapter_identity, "", reference_weights=(1.0, 0.0))))
    assert relative_error(both, first) > 1e-3 and relative_error(weighted, both) > 1e-3 and relative_error(weighted, first) > 1e-4


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_weight_types_and_layer_weights(comfy, models, adapter_folder, kind):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from comfyui_ipadapter.nodes.dit_patch import dit_patches

    model, adapter = models[kind], load(kind)
    prompt = random_prompt(adapter)
    blocks = random_models.DIFFUSERS_FLUX_CONFIG["num_layers"] if kind == FLUX else random_models.DIFFUSERS_SD3_CONFIG["num_layers"]
    eased = apply(model, adapter, prompt, weight_type="ease in")
    assert relative_error(evaluate(comfy, kind, eased), evaluate(comfy, kind, apply(model, adapter, prompt))) > 1e-4
    only_last = apply(model, adapter, prompt, layer_weights=f"all:0, block {blocks - 1}:1")
    assert set(dit_patches(only_last)) == {("double_block", blocks - 1)}  # switched-off blocks are not patched at all
    for weight_type in ("style transfer", "weak input", "strong middle"):
        with pytest.raises(IPAdapterError, match="one stack of blocks.*linear, ease in"):
            apply(model, adapter, prompt, weight_type=weight_type)
    with pytest.raises(IPAdapterError, match="no UNet stages.*block 3"):
        apply(model, adapter, prompt, layer_weights="input 4:0.5")
    with pytest.raises(IPAdapterError, match="selects no"):
        apply(model, adapter, prompt, layer_weights="block 40:1")


def test_embeds_scaling(comfy, models, adapter_folder):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    flux, adapter = models[FLUX], load(FLUX)
    prompt = random_prompt(adapter)
    assert relative_error(evaluate(comfy, FLUX, apply(flux, adapter, prompt, weight=0.5, embeds_scaling="K+V")),
                          evaluate(comfy, FLUX, apply(flux, adapter, prompt, weight=0.5))) > 1e-4
    sd3 = load(SD3)
    with pytest.raises(IPAdapterError, match="not defined for the SD3.5.*V only"):
        apply(models[SD3], sd3, random_prompt(sd3), embeds_scaling="K+V")


def test_wrong_family_and_wrong_file_errors(comfy, models, tiny_model, adapter_folder):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    flux, sd3 = load(FLUX), load(SD3)
    with pytest.raises(IPAdapterError, match="model is an SD3-family MMDiT.*Flux.1 IP-Adapter.*made for SD3.5 Large"):
        apply(models[SD3], flux, random_prompt(flux))
    with pytest.raises(IPAdapterError, match="model is Flux.*SD3.5 Large IP-Adapter.*made for Flux.1"):
        apply(models[FLUX], sd3, random_prompt(sd3))
    with pytest.raises(IPAdapterError, match="model is SD1.5 but this is an Flux.1 IP-Adapter.*made for SD1.5"):
        apply(tiny_model, flux, random_prompt(flux))
    full_size = full_size_flux_adapter()
    with pytest.raises(IPAdapterError, match="19 blocks of width 3072, but the model is Flux \\(2 blocks of width 64\\)"):
        apply(models[FLUX], full_size, random_prompt(full_size))
    with pytest.raises(IPAdapterError, match="encoded by a different IP-Adapter"):
        apply(models[FLUX], flux, random_prompt(load(FLUX, 2)))


def full_size_flux_adapter():
    """XLabs' real Flux adapter, shapes only (meta device): 0.5 billion parameters need not be drawn to be refused."""
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.nodes.load_ipadapter import LoadedIPAdapter

    model = IPAdapterModel.from_weights(split_adapter_weights(random_models.flux_adapter_state_dict(device="meta")), identity="flux-ip-adapter-v2")
    return LoadedIPAdapter(model=model, patcher=None, name="flux-ip-adapter-v2.safetensors")


def test_damaged_dit_files(adapter_folder, tmp_path):
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from safetensors.torch import save_file

    flux = random_models.flux_adapter_state_dict(2, 64, 4096, tokens=4)
    del flux["double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias"]
    save_file(flux, str(tmp_path / "broken_flux.safetensors"))
    with pytest.raises(IPAdapterError, match="Block 1 of the Flux IP-Adapter lacks to_v_ip.bias"):
        IPAdapterModel.load(tmp_path / "broken_flux.safetensors")
    flux = random_models.flux_adapter_state_dict(2, 64, 4096, tokens=4)
    flux["double_blocks.0.processor.unknown.weight"] = torch.zeros(1)
    save_file(flux, str(tmp_path / "odd_flux.safetensors"))
    with pytest.raises(IPAdapterError, match="unexpected key 'double_blocks.0.processor.unknown.weight'"):
        IPAdapterModel.load(tmp_path / "odd_flux.safetensors")
    sd3 = random_models.sd3_adapter_state_dict(3, 192, dim=128, heads=2)
    del sd3["ip_adapter"]["2.norm_ip_k.weight"]
    torch.save(sd3, tmp_path / "broken_sd3.bin")
    with pytest.raises(IPAdapterError, match="Block 2 of the SD3.5 IP-Adapter lacks norm_ip_k.weight"):
        IPAdapterModel.load(tmp_path / "broken_sd3.bin")
    sd3 = random_models.sd3_adapter_state_dict(3, 192, dim=128, heads=2)
    del sd3["image_proj"]["time_embedding.linear_1.weight"]
    torch.save(sd3, tmp_path / "no_time_sd3.bin")
    with pytest.raises(IPAdapterError, match="SD3.5 IP-Adapter has an image projection this pack does not know"):
        IPAdapterModel.load(tmp_path / "no_time_sd3.bin")


def test_lora_and_controlnet_compose_with_flux(comfy, models, adapter_folder):
    """LoRA patches the weights the image branch reads from (the query), ControlNet adds to the
    image stream after each block: both compose, in any order for the LoRA."""
    import comfy.controlnet
    import comfy.lora
    import comfy.ops
    import comfy.sd
    import nodes as stock
    from comfy.ldm.flux.controlnet import ControlNetFlux

    model, adapter = models[FLUX], load(FLUX)
    prompt = random_prompt(adapter)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    r = random_models.Randn(8)
    lora = {}
    for name, weight_key in key_map.items():
        if isinstance(weight_key, str) and name.startswith("lora_unet_double_blocks_") and weight_key.endswith(("img_attn.qkv.weight", "img_mlp.0.weight")):
            out_dim, in_dim = model.model.state_dict()[weight_key].shape
            lora.update({f"{name}.lora_down.weight": r(4, in_dim, scale=in_dim**-0.5), f"{name}.lora_up.weight": r(out_dim, 4, scale=0.5), f"{name}.alpha": torch.tensor(4.0)})
    assert len(lora) == 3 * 2 * random_models.DIFFUSERS_FLUX_CONFIG["num_layers"]

    def with_lora(m):
        return comfy.sd.load_lora_for_models(m, None, lora, 1.0, 0.0)[0]

    control_model = ControlNetFlux(operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32, **random_models.flux_unet_config(random_models.DIFFUSERS_FLUX_CONFIG))
    random_models.randomize_(control_model, seed=9)
    control = comfy.controlnet.ControlNet(control_model, load_device=torch.device("cpu"), manual_cast_dtype=None, extra_conds=["y", "guidance"])
    hint = torch.rand(1, 8 * LATENT[1], 8 * LATENT[2], 3, generator=torch.Generator().manual_seed(10))

    def run(m, ip=True, lora_on=True, control_on=True, lora_first=True):
        if lora_on and lora_first:
            m = with_lora(m)
        if ip:
            m = apply(m, adapter, prompt)
        if lora_on and not lora_first:
            m = with_lora(m)
        positive, negative = conditioning(FLUX, 1), conditioning(FLUX, 2)
        if control_on:
            positive, negative = stock.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
        noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(5))
        _, cond, uncond, _ = predict_noise(comfy, m, noise, SIGMA[FLUX], positive, negative, cfg=2.0)
        return torch.cat([cond, uncond])

    full = run(model)
    for part in ("ip", "lora_on", "control_on"):
        assert relative_error(run(model, **{part: False}), full) > 1e-3, part
    assert torch.allclose(run(model, lora_first=False), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_calls_another_packs_block_patch_and_leaves_no_hooks(comfy, models, adapter_folder, kind):
    model, adapter = models[kind], load(kind)
    prompt = random_prompt(adapter)
    calls = []

    def other_pack(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    other = model.clone()
    for index in range(3 if kind == SD3 else 2):
        other.set_model_patch_replace(other_pack, "dit", "double_block", index)
    plain = evaluate(comfy, kind, apply(model, adapter, prompt))
    assert torch.allclose(evaluate(comfy, kind, apply(other, adapter, prompt)), plain, rtol=1e-6, atol=1e-7)
    assert calls
    diffusion_model = model.get_model_object("diffusion_model")
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in diffusion_model.modules())

    def skipping_pack(args, extra):  # replaces the block without running it
        return {"img": args["img"], "txt": args["txt"]}

    skipping = model.clone()
    skipping.set_model_patch_replace(skipping_pack, "dit", "double_block", 0)
    with pytest.raises(Exception, match="replaced by another node's patch"):
        evaluate(comfy, kind, apply(skipping, adapter, prompt))
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in diffusion_model.modules())


@pytest.mark.parametrize("kind", [FLUX, SD3])
def test_caches_are_released_after_sampling(comfy, models, adapter_folder, kind):
    from comfyui_ipadapter.nodes.dit_patch import block_patches

    model, adapter = models[kind], load(kind)
    patched = apply(model, adapter, random_prompt(adapter))
    noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(6))
    comfy.sample.sample(patched, noise, 2, 2.0, "euler", "simple", conditioning(kind, 1), conditioning(kind, 2), torch.zeros_like(noise), seed=0, disable_pbar=True)
    for patch in block_patches(patched):
        assert not patch.cache and all(not b.device_cache for b in patch.branches)
        assert patch.image is None or not patch.image.cache
        assert all(getattr(b, "step_cache", [None])[0] is None for b in patch.branches)


# --- encoding: encoders, unconditional tokens ------------------------------------------------------


@pytest.fixture(scope="module")
def encoders(comfy, tmp_path_factory):
    import comfy.clip_vision

    folder = tmp_path_factory.mktemp("encoders")
    stock = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_siglip_384.json").read_text())
    (folder / "siglip.json").write_text(json.dumps({**stock, "num_hidden_layers": 2}))
    siglip = comfy.clip_vision.ClipVisionModel(str(folder / "siglip.json"))
    siglip.load_sd(random_models.siglip_state_dict(random_models.siglip_vision_model(seed=2, num_layers=2)))
    return {"vit-l": random_models.comfy_clip_vision("vit-l", seed=3, num_layers=2, tmp_dir=folder), "vit-h": random_models.comfy_clip_vision("vit-h", seed=4, num_layers=2, tmp_dir=folder), "siglip": siglip}


def test_encoding_follows_each_reference_pipeline(adapter_folder, encoders):
    """Flux: tokens from ViT-L image_embeds, unconditional = a black image (diffusers' Flux pipeline).
    SD3.5: the SigLIP penultimate hidden states themselves (projected per step), unconditional = zeros."""
    from comfyui_ipadapter.ipadapter_core.preprocess import clip_pixels
    from comfyui_ipadapter.nodes.clip_vision import comfy_encoder

    image = torch.rand(1, 300, 200, 3, generator=torch.Generator().manual_seed(1))
    flux = load(FLUX)
    with torch.inference_mode():
        prompt = node("ExactEncodeImagePrompt")(flux, encoders["vit-l"], image)[0]
        encode = comfy_encoder(encoders["vit-l"], flux.model.spec)
        assert torch.allclose(prompt.cond, flux.model.project(encode(clip_pixels(image))), atol=1e-6)
        black = flux.model.project(encode(clip_pixels(torch.zeros(1, 224, 224, 3))))
        assert torch.allclose(prompt.uncond, black, atol=1e-6)
        assert not torch.allclose(black, flux.model.project(torch.zeros(1, 768)), atol=1e-3)

        sd3 = load(SD3)
        siglip = encoders["siglip"]
        prompt = node("ExactEncodeImagePrompt")(sd3, siglip, image)[0]
        pixels = clip_pixels(image, 384, tuple(siglip.image_mean), tuple(siglip.image_std))
        hidden = siglip.model(pixel_values=pixels, intermediate_output=-2)[1]
        assert prompt.cond.shape == (1, 729, 1152) and torch.allclose(prompt.cond, hidden, atol=1e-6)
        assert torch.equal(prompt.uncond, torch.zeros_like(prompt.cond))
        negative = node("ExactEncodeImagePrompt")(sd3, siglip, image, negative_image=torch.ones(1, 64, 64, 3))[0]
        assert not torch.equal(negative.uncond, prompt.uncond)


def test_wrong_encoder_names_the_right_one(adapter_folder, encoders):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(IPAdapterError, match="Flux.1 IP-Adapter.*needs CLIP ViT-L/14.*CLIP ViT-H/14 gives width 1024.*clip-vit-large-patch14"):
        node("ExactEncodeImagePrompt")(load(FLUX), encoders["vit-h"], image)
    with pytest.raises(IPAdapterError, match="needs CLIP ViT-L/14.*but SigLIP so400m/14-384 gives width 0"):
        node("ExactEncodeImagePrompt")(load(FLUX), encoders["siglip"], image)
    with pytest.raises(IPAdapterError, match="SD3.5 Large IP-Adapter.*needs SigLIP so400m/14-384.*sigclip_vision_patch14_384"):
        node("ExactEncodeImagePrompt")(load(SD3), encoders["vit-l"], image)


def test_encoder_file_found_by_weights(adapter_folder, tmp_path):
    """Load IP-Adapter + CLIP Vision's search: SigLIP so400m/384 for SD3.5, ViT-L/14 for Flux."""
    from comfyui_ipadapter.ipadapter_core.encoder_files import find_encoder
    from safetensors.torch import save_file

    def header(path, state):
        save_file({k: torch.zeros(v) for k, v in state.items()}, str(path))
        return path

    siglip_shapes = {"vision_model.embeddings.patch_embedding.weight": (1152, 3, 14, 14), "vision_model.embeddings.patch_embedding.bias": (1152,),
                     "vision_model.post_layernorm.weight": (1152,), **{f"vision_model.encoder.layers.{i}.layer_norm1.weight": (1,) for i in range(27)}}
    siglip = header(tmp_path / "model.safetensors", {**siglip_shapes, "vision_model.embeddings.position_embedding.weight": (729, 1)})
    siglip_512 = header(tmp_path / "siglip2.safetensors", {**siglip_shapes, "vision_model.embeddings.position_embedding.weight": (1024, 1)})
    vit_l = header(tmp_path / "clip_l.safetensors", {"visual_projection.weight": (768, 1024), **{f"vision_model.encoder.layers.{i}.layer_norm1.weight": (1,) for i in range(24)}})
    assert find_encoder(load(SD3).model.spec, [vit_l, siglip_512, siglip]) == siglip
    assert find_encoder(load(FLUX).model.spec, [siglip, vit_l]) == vit_l
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match="Download sigclip_vision_patch14_384.safetensors.*another resolution"):
        find_encoder(load(SD3).model.spec, [siglip_512])


@pytest.mark.parametrize("kind, encoder", [(FLUX, "vit-l"), (SD3, "siglip")])
def test_one_node_equals_encode_plus_apply(comfy, models, adapter_folder, encoders, kind, encoder):
    model, adapter = models[kind], load(kind)
    image = torch.rand(1, 80, 96, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        (one,) = node("ExactIPAdapter")(model, adapter, encoders[encoder], image, 0.8, "linear", 0.0, 1.0)
        (prompt,) = node("ExactEncodeImagePrompt")(adapter, encoders[encoder], image)
    assert torch.equal(evaluate(comfy, kind, one), evaluate(comfy, kind, apply(model, adapter, prompt, weight=0.8)))
