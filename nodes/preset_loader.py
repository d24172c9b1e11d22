"""Load IP-Adapter Preset: an adapter kind (light, standard, plus, ...) resolved for the model from the files' weights."""

from __future__ import annotations

import logging

import folder_paths
from comfy.model_patcher import ModelPatcher

from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.layer_map import cross_attention_layers, family_of
from ..ipadapter_core.presets import (
    AUTO,
    PRESETS,
    find_preset_adapter,
    read_adapter_spec,
)
from .api import CATEGORY, io
from .folders import FOLDER, check_listed
from .load_ipadapter import ipadapter_output, load_adapter
from .paired_loader import load_adapter_and_encoder


class LoadIPAdapterPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactLoadIPAdapterPreset",
            display_name="Load IP-Adapter Preset",
            category=CATEGORY,
            description=(
                "Picks the adapter of a preset for the connected model (SD1.5 or SDXL) from models/ipadapter, and the CLIP vision "
                "model it needs from models/clip_vision, by reading the files' weights; file names play no role. "
                "IPAdapter Unified Loader (and its FaceID variant) of ComfyUI_IPAdapter_plus workflows converts to this node."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model the adapter will patch: it decides between SD1.5 and SDXL adapters."),
                io.Combo.Input("preset", options=list(PRESETS), default="standard", tooltip=(
                    "light / standard: base adapters (4 tokens, light weaker, SD1.5 only); vit-G: base adapters reading ViT-bigG; "
                    "plus / plus face: 16-token adapters; full face: SD1.5 full-face. faceid ...: FaceID adapters, for Encode Face "
                    "Image Prompt (plus and plusv2 also read ViT-H; portrait unnorm is SDXL only). light and standard, plus and "
                    "plus face, faceid plus and plusv2 have the same layout: with both in the folder, pick the file below.")),
                io.Combo.Input("ipadapter_file", options=[AUTO, *folder_paths.get_filename_list(FOLDER)], default=AUTO, optional=True, tooltip=(
                    "auto: the one file of models/ipadapter that is this preset's kind of adapter for the model. "
                    "Or the file to use, checked against the preset.")),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model, unchanged: connect it on to Apply IP-Adapter."),
                ipadapter_output(),
                io.ClipVision.Output(display_name="clip_vision", tooltip=(
                    "The CLIP vision model the adapter was trained with, to connect to Encode Image Prompt (or to Encode Face Image "
                    "Prompt for faceid plus / plusv2). Nothing for the face-only FaceID presets, which read no CLIP.")),
            ],
        )

    @classmethod
    def execute(cls, model: ModelPatcher, preset: str, ipadapter_file: str = AUTO) -> io.NodeOutput:
        layers = cross_attention_layers(model.get_model_object("diffusion_model"))
        if ipadapter_file == AUTO:
            names = {folder_paths.get_full_path(FOLDER, name): name for name in folder_paths.get_filename_list(FOLDER)}
            names.pop(None, None)
            chosen = names[str(find_preset_adapter(preset, layers, names))]
        else:
            chosen = ipadapter_file
            spec = read_adapter_spec(folder_paths.get_full_path_or_raise(FOLDER, ipadapter_file))
            if spec is None or not PRESETS[preset].matches(spec):
                found = spec.description if spec is not None else "not a supported IP-Adapter"
                raise IPAdapterError(
                    f"{ipadapter_file} is {found}, not a {preset} adapter for {family_of({l.context_dim for l in layers})}; "
                    "pick another file, or auto."
                )
        logging.info("IP-Adapter preset %s: %s", preset, chosen)
        if not PRESETS[preset].reads_clip:
            return io.NodeOutput(model, load_adapter(chosen), None)
        return io.NodeOutput(model, *load_adapter_and_encoder(chosen))

    @classmethod
    def validate_inputs(cls, preset: str, ipadapter_file: str = AUTO) -> bool | str:
        return True if ipadapter_file == AUTO else check_listed(FOLDER, ipadapter_file)
