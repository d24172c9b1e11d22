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
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
    "CombineImagePrompts": CombineImagePrompts,
    "IPAdapter": IPAdapter,
    "PrepareImageForClip": PrepareImageForClip,
    "MakeNegativeImage": MakeNegativeImage,
    "IPAdapterWeightSchedule": IPAdapterWeightSchedule,
    "SaveImagePrompt": SaveImagePrompt,
    "LoadImagePrompt": LoadImagePrompt,
    "LoadIPAdapterAndEncoder": LoadIPAdapterAndEncoder,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt (IP-Adapter)",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "CombineImagePrompts": "Combine Image Prompts (IP-Adapter)",
    "IPAdapter": "IP-Adapter (encode + apply)",
    "PrepareImageForClip": "Prepare Image For CLIP (IP-Adapter)",
    "MakeNegativeImage": "Make Negative Image (IP-Adapter)",
    "IPAdapterWeightSchedule": "IP-Adapter Weight Schedule",
    "SaveImagePrompt": "Save Image Prompt (IP-Adapter)",
    "LoadImagePrompt": "Load Image Prompt (IP-Adapter)",
    "LoadIPAdapterAndEncoder": "Load IP-Adapter + CLIP Vision",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_model_folder"]
