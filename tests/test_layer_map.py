"""The layer map, derived from the UNet's structure, against diffusers' processor order.

Both UNets are built on the meta device (shapes, no memory), so the full SDXL architecture
(2.6B parameters) is checked key by key in well under a second.
"""

from __future__ import annotations

import re

import pytest

from tools.random_models import SD15_LAYER_DIMS, meta_model, sdxl_layer_dims

# The official SD1.5 layer table (tools/random_models.py's SD15_LAYER_DIMS), with each layer's UNet block written out.
SD15_TABLE = {1: ("input", 1), 3: ("input", 2), 5: ("input", 4), 7: ("input", 5), 9: ("input", 7), 11: ("input", 8),
              13: ("output", 3), 15: ("output", 4), 17: ("output", 5), 19: ("output", 6), 21: ("output", 7), 23: ("output", 8),
              25: ("output", 9), 27: ("output", 10), 29: ("output", 11), 31: ("middle", 0)}


def build_pair(architecture):
    """A diffusers UNet and the ComfyUI UNet ComfyUI derives from its state dict, both on meta."""
    reference, patcher, unet_config = meta_model(architecture)
    return reference, patcher.get_model_object("diffusion_model"), unet_config


def ldm_key(ldm_weight_name: str) -> tuple[str, int, int]:
    match = re.match(r"(input_blocks|output_blocks|middle_block)\.?(\d*)\.\d+\.transformer_blocks\.(\d+)\.attn2", ldm_weight_name)
    block, number, index = match.groups()
    if block == "middle_block":
        return ("middle", 0, int(index))
    return (block.split("_")[0], int(number), int(index))


@pytest.mark.parametrize("architecture, reference_dims", [("sd15", SD15_LAYER_DIMS), ("sdxl", sdxl_layer_dims())])
def test_map_follows_diffusers_processor_order(comfy, pack, architecture, reference_dims):
    import comfy.utils
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    reference, ours, unet_config = build_pair(architecture)
    layers = cross_attention_layers(ours)
    # diffusers numbers its j-th cross-attention processor 2j+1 when loading IP-Adapter weights
    cross = [name for name in reference.attn_processors if name.endswith("attn2.processor")]
    to_ldm = comfy.utils.unet_to_diffusers(unet_config)  # ComfyUI's own diffusers -> LDM weight map
    assert len(layers) == len(cross) == len(reference_dims)
    for j, (layer, name) in enumerate(zip(layers, cross)):
        weight = name.replace(".processor", ".to_k.weight")
        assert layer.processor_index == 2 * j + 1
        assert layer.key == ldm_key(to_ldm[weight]), name
        assert (layer.processor_index, layer.inner_dim) == reference_dims[j]
        assert layer.inner_dim == reference.get_submodule(name.replace(".processor", "")).to_k.out_features


def test_sd15_map_is_the_reference_table(comfy, pack):
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    _, ours, _ = build_pair("sd15")
    layers = cross_attention_layers(ours)
    assert {layer.processor_index: layer.key[:2] for layer in layers} == SD15_TABLE
    assert all(layer.key[2] == 0 for layer in layers)
    assert layers[-1].key == ("middle", 0, 0)  # ComfyUI calls the middle block ("middle", 0), not 1


def test_sdxl_middle_block_gets_ten_layers(comfy, pack):
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    _, ours, _ = build_pair("sdxl")
    middle = [layer for layer in cross_attention_layers(ours) if layer.key[0] == "middle"]
    assert [layer.key for layer in middle] == [("middle", 0, i) for i in range(10)]
    assert [layer.processor_index for layer in middle] == list(range(121, 140, 2))
