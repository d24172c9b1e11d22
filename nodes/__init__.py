"""ComfyUI node classes of the pack; registered by the package's top-level __init__."""

from .apply_ipadapter import ApplyIPAdapter
from .combine_image_prompts import CombineImagePrompts
from .encode_image_prompt import EncodeImagePrompt
from .folders import register_model_folder
from .ipadapter_simple import IPAdapter
from .load_ipadapter import LoadIPAdapter
from .negative_image import MakeNegativeImage
from .paired_loader import LoadIPAdapterAndEncoder
from .prepare_image import PrepareImageForClip
from .prompt_files import LoadImagePrompt, SaveImagePrompt
from .weight_schedule import IPAdapterWeightSchedule

NODE_CLASS_MAPPINGS = {
    "ExactLoadIPAdapter": LoadIPAdapter,
    "ExactEncodeImagePrompt": EncodeImagePrompt,
    "ExactApplyIPAdapter": ApplyIPAdapter,
    "ExactCombineImagePrompts": CombineImagePrompts,
    "ExactIPAdapter": IPAdapter,
    "ExactPrepareImageForClip": PrepareImageForClip,
    "ExactMakeNegativeImage": MakeNegativeImage,
    "ExactIPAdapterWeightSchedule": IPAdapterWeightSchedule,
    "ExactSaveImagePrompt": SaveImagePrompt,
    "ExactLoadImagePrompt": LoadImagePrompt,
    "ExactLoadIPAdapterAndEncoder": LoadIPAdapterAndEncoder,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExactLoadIPAdapter": "Load IP-Adapter",
    "ExactEncodeImagePrompt": "Encode Image Prompt (IP-Adapter)",
    "ExactApplyIPAdapter": "Apply IP-Adapter",
    "ExactCombineImagePrompts": "Combine Image Prompts (IP-Adapter)",
    "ExactIPAdapter": "IP-Adapter (encode + apply)",
    "ExactPrepareImageForClip": "Prepare Image For CLIP (IP-Adapter)",
    "ExactMakeNegativeImage": "Make Negative Image (IP-Adapter)",
    "ExactIPAdapterWeightSchedule": "IP-Adapter Weight Schedule",
    "ExactSaveImagePrompt": "Save Image Prompt (IP-Adapter)",
    "ExactLoadImagePrompt": "Load Image Prompt (IP-Adapter)",
    "ExactLoadIPAdapterAndEncoder": "Load IP-Adapter + CLIP Vision",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_model_folder"]
