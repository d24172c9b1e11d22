"""The pack's ComfyUI nodes (V3 schema) and the extension that hands them to ComfyUI."""

from __future__ import annotations

import folder_paths

from .api import ComfyExtension, io
from .apply_ipadapter import ApplyIPAdapter
from .clip_embeds_files import LoadClipEmbeds, SaveClipEmbeds
from .combine_clip_embeds import CombineClipEmbeds
from .combine_image_prompts import CombineImagePrompts
from .convert_route import register_routes
from .encode_clip_embeds import EncodeClipEmbeds
from .encode_face_image_prompt import EncodeFaceImagePrompt
from .encode_image_prompt import EncodeImagePrompt
from .example_inputs import provide_example_inputs
from .folders import register_model_folder
from .ipadapter_simple import IPAdapter
from .ipadapter_tiled import IPAdapterTiled
from .load_insightface import LoadInsightFace
from .load_ipadapter import LoadIPAdapter
from .negative_image import MakeNegativeImage
from .paired_loader import LoadIPAdapterAndEncoder
from .prepare_image import PrepareImageForClip
from .preset_loader import LoadIPAdapterPreset
from .project_clip_embeds import ProjectClipEmbeds
from .prompt_files import LoadImagePrompt, SaveImagePrompt
from .weight_schedule import IPAdapterWeightSchedule

# In the order the Add Node menu lists them.
NODES: tuple[type[io.ComfyNode], ...] = (
    LoadIPAdapter,
    EncodeImagePrompt,
    ApplyIPAdapter,
    CombineImagePrompts,
    IPAdapter,
    PrepareImageForClip,
    MakeNegativeImage,
    IPAdapterWeightSchedule,
    SaveImagePrompt,
    LoadImagePrompt,
    LoadIPAdapterAndEncoder,
    LoadInsightFace,
    EncodeFaceImagePrompt,
    LoadIPAdapterPreset,
    IPAdapterTiled,
    EncodeClipEmbeds,
    CombineClipEmbeds,
    ProjectClipEmbeds,
    SaveClipEmbeds,
    LoadClipEmbeds,
)


class IPAdapterExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> IPAdapterExtension:
    """What ComfyUI calls to load the pack (its loader awaits a coroutine entry point).

    The workflow templates' input images are put in the input folder here, once ComfyUI's
    folders are configured, so the templates run as they open.
    """
    provide_example_inputs(folder_paths.get_input_directory())
    return IPAdapterExtension()


__all__ = ["NODES", "IPAdapterExtension", "comfy_entrypoint", "register_model_folder", "register_routes"]
