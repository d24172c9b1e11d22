"""Load IP-Adapter: a file from models/ipadapter -> EXACT_IPADAPTER."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import folder_paths
from comfy.model_patcher import ModelPatcher

from ..ipadapter_core.adapter import IPAdapterModel
from .api import CATEGORY, io
from .folders import FOLDER, check_listed
from .socket_types import IPAdapterSocket


@dataclass(frozen=True)
class LoadedIPAdapter:
    """What travels on an IPADAPTER socket: the weights and the patcher that lets ComfyUI's model
    management move them to the GPU with the UNet and offload them under memory pressure."""

    model: IPAdapterModel
    patcher: ModelPatcher
    name: str


def wrap_adapter(model: IPAdapterModel, name: str) -> LoadedIPAdapter:
    patcher = ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    return LoadedIPAdapter(model=model, patcher=patcher, name=name)


def load_adapter(ipadapter_file: str) -> LoadedIPAdapter:
    path = folder_paths.get_full_path_or_raise(FOLDER, ipadapter_file)
    model = IPAdapterModel.load(path)
    logging.info("IP-Adapter %s: %s", ipadapter_file, model.spec.description)
    return wrap_adapter(model, ipadapter_file)


def ipadapter_file_input() -> io.Combo.Input:
    """The adapter file choice, listed from models/ipadapter each time the frontend asks."""
    return io.Combo.Input("ipadapter_file", options=folder_paths.get_filename_list(FOLDER), tooltip="A file from models/ipadapter (.safetensors or .bin).")


def ipadapter_output() -> io.Output:
    return IPAdapterSocket.Output(display_name="ipadapter", tooltip="The adapter, to connect to Encode Image Prompt and Apply IP-Adapter.")


class LoadIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactLoadIPAdapter",
            display_name="Load IP-Adapter",
            category=CATEGORY,
            description="Loads an IP-Adapter file. The variant (base, plus, full-face, FaceID; SD1.5 or SDXL; XLabs' Flux.1, InstantX's SD3.5 Large) is read from the weights.",
            inputs=[ipadapter_file_input()],
            outputs=[ipadapter_output()],
        )

    @classmethod
    def execute(cls, ipadapter_file: str) -> io.NodeOutput:
        return io.NodeOutput(load_adapter(ipadapter_file))

    @classmethod
    def validate_inputs(cls, ipadapter_file: str) -> bool | str:
        return check_listed(FOLDER, ipadapter_file)
