"""Load IP-Adapter: a file from models/ipadapter -> EXACT_IPADAPTER."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import folder_paths
from comfy.model_patcher import ModelPatcher

from ..ipadapter_core.adapter import IPAdapterModel
from .folders import FOLDER
from .socket_types import IPADAPTER


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


class LoadIPAdapter:
    DESCRIPTION = "Loads an IP-Adapter file. The variant (base, plus, full-face, SD1.5 or SDXL) is read from the weights."
    CATEGORY = "ipadapter"
    RETURN_TYPES = (IPADAPTER,)
    RETURN_NAMES = ("ipadapter",)
    OUTPUT_TOOLTIPS = ("The adapter, to connect to Encode Image Prompt and Apply IP-Adapter.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "ipadapter_file": (folder_paths.get_filename_list(FOLDER), {"tooltip": "A file from models/ipadapter (.safetensors or .bin)."}),
            }
        }

    def load(self, ipadapter_file: str) -> tuple:
        path = folder_paths.get_full_path_or_raise(FOLDER, ipadapter_file)
        model = IPAdapterModel.load(path)
        logging.info("IP-Adapter %s: %s", ipadapter_file, model.spec.description)
        return (wrap_adapter(model, ipadapter_file),)
