"""Shared fixtures: the real ComfyUI imported once per session, and models too slow to build twice.

The pack is imported as the package `comfyui_ipadapter` (as ComfyUI imports a custom node
folder); tests of the nodes must import the core through it (`comfyui_ipadapter.ipadapter_core`),
since `import ipadapter_core`, which core-only tests use, is a second copy with its own classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools import random_models  # noqa: E402
from tools.comfy_host import import_comfy, import_pack  # noqa: E402


@pytest.fixture(scope="session")
def comfy():
    return import_comfy()


@pytest.fixture(scope="session")
def pack(comfy):
    return import_pack()


@pytest.fixture(scope="session")
def tiny_model(comfy):
    return random_models.tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_layer_dims(pack, tiny_model):
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    layers = cross_attention_layers(tiny_model.get_model_object("diffusion_model"))
    return [(layer.processor_index, layer.inner_dim) for layer in layers]


@pytest.fixture(scope="session")
def small_clip_vision(comfy, tmp_path_factory):
    """A real ComfyUI ViT-H/14 ClipVisionModel cut to 2 layers: the right widths, built in a second."""
    return random_models.comfy_clip_vision("vit-h", seed=1, num_layers=2, tmp_dir=tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def training_models(tmp_path_factory):
    """Tiny SD1.5- and SDXL-layout diffusers folders and a tiny CLIP vision file, random weights."""
    from tools.training_models import write_base_model, write_image_encoder

    root = tmp_path_factory.mktemp("training-models")
    return {"sd15": write_base_model(root / "sd15", "sd15"), "sdxl": write_base_model(root / "sdxl", "sdxl"),
            "encoder": write_image_encoder(root / "clip_vision.safetensors")}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models' ops take microseconds: on a shared 2-core machine a second thread only adds contention."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
