"""The layer map, derived from the UNet's structure, against diffusers' processor order.

Both UNets are built on the meta device (shapes, no memory), so the full SDXL architecture
(2.6B parameters) is checked key by key in well under a second.
"""

from __future__ import annotations

import re

import pytest
import torch

from tools.random_models import SD15_LAYER_DIMS, sdxl_layer_dims

SD15 = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SDXL = dict(
    sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
# The SD1.5 table of ipadapter-reference.md section 2, written out.
SD15_TABLE = {1: ("input", 1), 3: ("input", 2), 5: ("input", 4), 7: ("input", 5), 9: ("input", 7), 11: ("input", 8),
              13: ("output", 3), 15: ("output", 4), 17: ("output", 5), 19: ("output", 6), 21: ("output", 7), 23: ("output", 8),
              25: ("output", 9), 27: ("output", 10), 29: ("output", 11), 31: ("middle", 0)}


def build_pair(comfy, config):
    """A diffusers UNet and the ComfyUI UNet ComfyUI derives from its state dict, both on meta."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        reference = UNet2DConditionModel(**config)
    unet_config = comfy.model_detection.unet_config_from_diffusers_unet(reference.state_dict())
    ours = UNetModel(**unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    return reference, ours, unet_config


def ldm_key(ldm_weight_name: str) -> tuple[str, int, int]:
    match = re.match(r"(input_blocks|output_blocks|middle_block)\.?(\d*)\.\d+\.transformer_blocks\.(\d+)\.attn2", ldm_weight_name)
    block, number, index = match.groups()
    if block == "middle_block":
        return ("middle", 0, int(index))
    return (block.split("_")[0], int(number), int(index))


@pytest.mark.parametrize("config, reference_dims", [(SD15, SD15_LAYER_DIMS), (SDXL, sdxl_layer_dims())], ids=["sd15", "sdxl"])
def test_map_follows_diffusers_processor_order(comfy, pack, config, reference_dims):
    import comfy.utils
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    reference, ours, unet_config = build_pair(comfy, config)
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

    _, ours, _ = build_pair(comfy, SD15)
    layers = cross_attention_layers(ours)
    assert {layer.processor_index: layer.key[:2] for layer in layers} == SD15_TABLE
    assert all(layer.key[2] == 0 for layer in layers)
    assert layers[-1].key == ("middle", 0, 0)  # ComfyUI calls the middle block ("middle", 0), not 1


def test_sdxl_middle_block_gets_ten_layers(comfy, pack):
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    _, ours, _ = build_pair(comfy, SDXL)
    middle = [layer for layer in cross_attention_layers(ours) if layer.key[0] == "middle"]
    assert [layer.key for layer in middle] == [("middle", 0, i) for i in range(10)]
    assert [layer.processor_index for layer in middle] == list(range(121, 140, 2))
