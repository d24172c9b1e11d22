"""Save CLIP Embeds / Load CLIP Embeds: .ipadpt files, as ComfyUI_IPAdapter_plus writes them."""

from __future__ import annotations

import hashlib
import os

import folder_paths

from ..ipadapter_core.clip_embeds import EXTENSION, load_clip_embeds, save_clip_embeds
from .api import CATEGORY, io
from .socket_types import ClipEmbedsSocket


class SaveClipEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactSaveClipEmbeds",
            display_name="Save CLIP Embeds (IP-Adapter)",
            category=CATEGORY,
            description=(
                f"Saves CLIP embeds to ComfyUI's output folder as a {EXTENSION} file, the format ComfyUI_IPAdapter_plus uses, "
                "so both packs read it. Move it to the input folder to load it."
            ),
            inputs=[
                ClipEmbedsSocket.Input("embeds", tooltip="From Encode CLIP Embeds or Combine CLIP Embeds."),
                io.String.Input("filename_prefix", default="ipadapter_embeds/embeds", tooltip="Path inside the output folder; a counter and the extension are appended."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, embeds, filename_prefix="ipadapter_embeds/embeds") -> io.NodeOutput:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        file = f"{filename}_{counter:05}{EXTENSION}"
        save_clip_embeds(embeds, os.path.join(folder, file))
        return io.NodeOutput(ui={"clip_embeds": [{"filename": file, "subfolder": subfolder, "type": "output"}]})


def embeds_files() -> list[str]:
    """Every .ipadpt file under the input folder, as paths relative to it (subfolders included, as that pack lists them)."""
    root = folder_paths.get_input_directory()
    found = [os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root) for name in names if name.endswith(EXTENSION)]
    return sorted(found)


class LoadClipEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactLoadClipEmbeds",
            display_name="Load CLIP Embeds (IP-Adapter)",
            category=CATEGORY,
            description=f"Loads a {EXTENSION} file (from Save CLIP Embeds or ComfyUI_IPAdapter_plus) from the input folder; only plain tensors load.",
            inputs=[io.Combo.Input("embeds_file", options=embeds_files(), tooltip=f"A {EXTENSION} file in ComfyUI's input folder.")],
            outputs=[ClipEmbedsSocket.Output(display_name="embeds", tooltip="The saved embeds, for Project CLIP Embeds or Combine CLIP Embeds.")],
        )

    @classmethod
    def execute(cls, embeds_file) -> io.NodeOutput:
        return io.NodeOutput(load_clip_embeds(folder_paths.get_annotated_filepath(embeds_file)))

    @classmethod
    def fingerprint_inputs(cls, embeds_file):
        with open(folder_paths.get_annotated_filepath(embeds_file), "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()

    @classmethod
    def validate_inputs(cls, embeds_file):
        if not folder_paths.exists_annotated_filepath(embeds_file):
            return f"Embeds file not found: {embeds_file}. Put it in ComfyUI's input folder."
        return True
