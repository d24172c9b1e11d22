"""ComfyUI node classes of the pack; registered by the package's top-level __init__."""

from .apply_ipadapter import ApplyIPAdapter
from .combine_image_prompts import CombineImagePrompts
from .encode_image_prompt import EncodeImagePrompt
from .folders import register_model_folder
from .ipadapter_simple import IPAdapter
from .load_ipadapter import LoadIPAdapter

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
    "CombineImagePrompts": CombineImagePrompts,
    "IPAdapter": IPAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt (IP-Adapter)",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "CombineImagePrompts": "Combine Image Prompts (IP-Adapter)",
    "IPAdapter": "IP-Adapter (encode + apply)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_model_folder"]
