"""Load IP-Adapter + Encoder: the adapter and the CLIP vision model its weights call for, in one node."""

from __future__ import annotations

import logging

import comfy.clip_vision
import folder_paths

from ..ipadapter_core.encoder_files import find_encoder
from ..ipadapter_core.errors import IPAdapterError
from .load_ipadapter import LoadIPAdapter
from .socket_types import IPADAPTER

CLIP_VISION_FOLDER = "clip_vision"


class LoadIPAdapterAndEncoder:
    DESCRIPTION = (
        "Loads an IP-Adapter and picks the CLIP vision model from models/clip_vision that it was trained with, "
        "by reading both files' weights (file names play no role)."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = (IPADAPTER, "CLIP_VISION")
    RETURN_NAMES = ("ipadapter", "clip_vision")
    OUTPUT_TOOLTIPS = (
        "The adapter, to connect to Encode Image Prompt and Apply IP-Adapter.",
        "The matching encoder, to connect to Encode Image Prompt.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"ipadapter_file": LoadIPAdapter.INPUT_TYPES()["required"]["ipadapter_file"]}}

    def load(self, ipadapter_file: str) -> tuple:
        (adapter,) = LoadIPAdapter().load(ipadapter_file)
        spec = adapter.model.spec
        files = [folder_paths.get_full_path(CLIP_VISION_FOLDER, name) for name in folder_paths.get_filename_list(CLIP_VISION_FOLDER)]
        path = find_encoder(spec, [f for f in files if f is not None])
        logging.info("IP-Adapter %s: using CLIP vision %s", ipadapter_file, path)
        clip_vision = comfy.clip_vision.load(str(path))
        if clip_vision is None:
            raise IPAdapterError(
                f"{path.name} has the widths of {spec.encoder_name} but ComfyUI cannot load it (an unexpected number "
                f"of layers); it may be incomplete. Download {spec.encoder_file} into models/clip_vision again."
            )
        return (adapter, clip_vision)
