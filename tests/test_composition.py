"""IP-Adapter in a graph with stock ControlNet and LoRA nodes, sampled by the stock KSampler node."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from helpers import conditioning, node, relative_error
from tools import random_models


@pytest.fixture(scope="module")
def model_folders(pack, tiny_model, tiny_layer_dims, tmp_path_factory):
    import folder_paths

    root = tmp_path_factory.mktemp("models")
    for folder in ("loras", "controlnet", "ipadapter"):
        (root / folder).mkdir()
        folder_paths.add_model_folder_path(folder, str(root / folder))
    save_file(random_models.lora_state_dict(tiny_model, seed=41), str(root / "loras" / "random_lora.safetensors"))
    save_file(random_models.tiny_controlnet_state_dict(seed=42), str(root / "controlnet" / "random_controlnet.safetensors"))
    random_models.save_adapter(random_models.adapter_state_dict("base", tiny_layer_dims, seed=43), root / "ipadapter" / "composition.safetensors")
    return root


def run_graph(comfy, tiny_model, clip_vision, ipadapter_weight=1.0, lora_strength=1.0, control_strength=1.0, lora_first=True):
    """LoadIPAdapter/EncodeImagePrompt/ApplyIPAdapter + LoraLoaderModelOnly + ControlNetApplyAdvanced + KSampler."""
    import nodes as stock


    adapter = node("ExactLoadIPAdapter")("composition.safetensors")[0]
    reference = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(44))
    prompt = node("ExactEncodeImagePrompt")(adapter, clip_vision, reference)[0]

    def lora(m):
        return stock.LoraLoaderModelOnly().load_lora_model_only(m, "random_lora.safetensors", lora_strength)[0]

    def ipadapter(m):
        return node("ExactApplyIPAdapter")(m, adapter, prompt, ipadapter_weight, 0.0, 1.0)[0]

    model = ipadapter(lora(tiny_model)) if lora_first else lora(ipadapter(tiny_model))
    control_net = stock.ControlNetLoader().load_controlnet("random_controlnet.safetensors")[0]
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(45))
    positive, negative = stock.ControlNetApplyAdvanced().apply_controlnet(conditioning(1), conditioning(2), control_net, hint, control_strength, 0.0, 1.0)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return stock.KSampler().sample(model, 7, 3, 5.0, "euler", "normal", positive, negative, latent, 1.0)[0]["samples"]


def test_ipadapter_with_controlnet_and_lora(comfy, tiny_model, small_clip_vision, model_folders):
    full = run_graph(comfy, tiny_model, small_clip_vision)
    assert torch.isfinite(full).all()
    # every part is active: removing any one of them changes the result
    assert relative_error(run_graph(comfy, tiny_model, small_clip_vision, ipadapter_weight=0.0), full) > 1e-3
    assert relative_error(run_graph(comfy, tiny_model, small_clip_vision, lora_strength=0.0), full) > 1e-3
    assert relative_error(run_graph(comfy, tiny_model, small_clip_vision, control_strength=0.0), full) > 1e-3
    # LoRA patches weights, the adapter patches attention: the order of the two nodes does not matter
    assert torch.allclose(run_graph(comfy, tiny_model, small_clip_vision, lora_first=False), full, rtol=1e-5, atol=1e-5)
