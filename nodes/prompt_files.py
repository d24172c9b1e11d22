"""Save Image Prompt / Load Image Prompt: encode references once, reuse the tokens in any workflow."""

from __future__ import annotations

import hashlib
import os

import folder_paths

from ..ipadapter_core.prompt_file import EXTENSION, load_image_prompt, save_image_prompt
from .api import CATEGORY, io
from .socket_types import ImagePromptSocket


class SaveImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactSaveImagePrompt",
            display_name="Save Image Prompt (IP-Adapter)",
            category=CATEGORY,
            description=(
                f"Saves an image prompt to ComfyUI's output folder as a {EXTENSION} file (safetensors). Move it to the "
                "input folder to load it with Load Image Prompt; it only works with the adapter that made it."
            ),
            inputs=[
                ImagePromptSocket.Input("image_prompt", tooltip="From Encode Image Prompt or Combine Image Prompts."),
                io.String.Input("filename_prefix", default="image_prompts/ipadapter", tooltip="Path inside the output folder; a counter and the extension are appended."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image_prompt, filename_prefix="image_prompts/ipadapter") -> io.NodeOutput:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        file = f"{filename}_{counter:05}_{EXTENSION}"
        save_image_prompt(image_prompt, os.path.join(folder, file))
        return io.NodeOutput(ui={"image_prompts": [{"filename": file, "subfolder": subfolder, "type": "output"}]})


class LoadImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        folder = folder_paths.get_input_directory()
        files = [f for f in os.listdir(folder) if f.lower().endswith(EXTENSION) and os.path.isfile(os.path.join(folder, f))]
        return io.Schema(
            node_id="ExactLoadImagePrompt",
            display_name="Load Image Prompt (IP-Adapter)",
            category=CATEGORY,
            description=f"Loads a {EXTENSION} file saved by Save Image Prompt from ComfyUI's input folder.",
            inputs=[io.Combo.Input("image_prompt_file", options=sorted(files), tooltip=f"A {EXTENSION} file in ComfyUI's input folder.")],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt", tooltip="The saved tokens; apply them with the same adapter that encoded them.")],
        )

    @classmethod
    def execute(cls, image_prompt_file) -> io.NodeOutput:
        return io.NodeOutput(load_image_prompt(folder_paths.get_annotated_filepath(image_prompt_file)))

    @classmethod
    def fingerprint_inputs(cls, image_prompt_file):
        with open(folder_paths.get_annotated_filepath(image_prompt_file), "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()

    @classmethod
    def validate_inputs(cls, image_prompt_file):
        if not folder_paths.exists_annotated_filepath(image_prompt_file):
            return f"Image prompt file not found: {image_prompt_file}. Put it in ComfyUI's input folder."
        return True
