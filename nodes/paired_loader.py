"""Load IP-Adapter + Encoder: the adapter and the CLIP vision model its weights call for, in one node."""

from __future__ import annotations

import logging

import comfy.clip_vision
import folder_paths

from ..ipadapter_core.encoder_files import find_encoder
from ..ipadapter_core.errors import IPAdapterError
from .api import CATEGORY, io
from .folders import FOLDER, check_listed
from .load_ipadapter import LoadedIPAdapter, ipadapter_file_input, ipadapter_output, load_adapter

CLIP_VISION_FOLDER = "clip_vision"


class LoadIPAdapterAndEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactLoadIPAdapterAndEncoder",
            display_name="Load IP-Adapter + CLIP Vision",
            category=CATEGORY,
            description=(
                "Loads an IP-Adapter and picks the CLIP vision model from models/clip_vision that it was trained with, "
                "by reading both files' weights (file names play no role)."
            ),
            inputs=[ipadapter_file_input()],
            outputs=[
                ipadapter_output(),
                io.ClipVision.Output(display_name="clip_vision", tooltip="The matching encoder, to connect to Encode Image Prompt."),
            ],
        )

    @classmethod
    def execute(cls, ipadapter_file: str) -> io.NodeOutput:
        return io.NodeOutput(*load_adapter_and_encoder(ipadapter_file))

    @classmethod
    def validate_inputs(cls, ipadapter_file: str) -> bool | str:
        return check_listed(FOLDER, ipadapter_file)


def load_adapter_and_encoder(ipadapter_file: str) -> tuple[LoadedIPAdapter, object]:
    """The adapter and the CLIP vision model of models/clip_vision whose weights fit it."""
    adapter = load_adapter(ipadapter_file)
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
    return adapter, clip_vision
