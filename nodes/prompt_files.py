"""Save Image Prompt / Load Image Prompt: encode references once, reuse the tokens in any workflow."""

from __future__ import annotations

import hashlib
import os

import folder_paths

from ..ipadapter_core.prompt_file import EXTENSION, load_image_prompt, save_image_prompt
from .socket_types import IMAGE_PROMPT


class SaveImagePrompt:
    DESCRIPTION = (
        f"Saves an image prompt to ComfyUI's output folder as a {EXTENSION} file (safetensors). Move it to the "
        "input folder to load it with Load Image Prompt; it only works with the adapter that made it."
    )
    CATEGORY = "ipadapter"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image_prompt": (IMAGE_PROMPT, {"tooltip": "From Encode Image Prompt or Combine Image Prompts."}),
                "filename_prefix": ("STRING", {"default": "image_prompts/ipadapter", "tooltip": "Path inside the output folder; a counter and the extension are appended."}),
            }
        }

    def save(self, image_prompt, filename_prefix="image_prompts/ipadapter") -> tuple:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        file = f"{filename}_{counter:05}_{EXTENSION}"
        save_image_prompt(image_prompt, os.path.join(folder, file))
        return {"ui": {"image_prompts": [{"filename": file, "subfolder": subfolder, "type": "output"}]}}


class LoadImagePrompt:
    DESCRIPTION = f"Loads a {EXTENSION} file saved by Save Image Prompt from ComfyUI's input folder."
    CATEGORY = "ipadapter"
    RETURN_TYPES = (IMAGE_PROMPT,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("The saved tokens; apply them with the same adapter that encoded them.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        folder = folder_paths.get_input_directory()
        files = [f for f in os.listdir(folder) if f.endswith(EXTENSION) and os.path.isfile(os.path.join(folder, f))]
        return {"required": {"image_prompt_file": (sorted(files), {"tooltip": f"A {EXTENSION} file in ComfyUI's input folder."})}}

    def load(self, image_prompt_file) -> tuple:
        return (load_image_prompt(folder_paths.get_annotated_filepath(image_prompt_file)),)

    @classmethod
    def IS_CHANGED(cls, image_prompt_file):
        with open(folder_paths.get_annotated_filepath(image_prompt_file), "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image_prompt_file):
        if not folder_paths.exists_annotated_filepath(image_prompt_file):
            return f"Image prompt file not found: {image_prompt_file}. Put it in ComfyUI's input folder."
        return True
