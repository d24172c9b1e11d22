"""The `ipadapter` and `insightface` model folders: models/<name> by default, more via extra_model_paths.yaml."""

from __future__ import annotations

import os

import folder_paths

from ..ipadapter_core.face_analysis import MODEL_SUFFIX
from ..ipadapter_core.weight_files import WEIGHT_SUFFIXES

FOLDER = "ipadapter"
EXTENSIONS = set(WEIGHT_SUFFIXES)
# InsightFace's model packs, where users already keep them: models/insightface/models/<pack>/*.onnx.
INSIGHTFACE_FOLDER = "insightface"


def register_model_folder() -> None:
    """Make models/ipadapter and models/insightface default entries without dropping paths users configured."""
    add_default_folder(FOLDER, EXTENSIONS)
    add_default_folder(INSIGHTFACE_FOLDER, {MODEL_SUFFIX})


def add_default_folder(name: str, extensions: set[str]) -> None:
    """extra_model_paths.yaml is applied before custom nodes load and may already have created the
    entry (with no extension filter); keep its paths and add ours after them."""
    default = os.path.join(folder_paths.models_dir, name)
    if name in folder_paths.folder_names_and_paths:
        paths, configured = folder_paths.folder_names_and_paths[name]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(configured) | extensions)
    else:
        folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def check_listed(folder: str, file_name: str) -> bool | str:
    """ComfyUI's "Value not in list" check for a file choice, for the node's validate_inputs.

    ComfyUI 0.3.75 checks a classic node's file list when a prompt is queued but not a V3 node's
    (later versions check both); without this a missing file would be noticed only when the node runs.
    """
    if file_name in folder_paths.get_filename_list(folder):
        return True
    return (
        f"Value not in list: {file_name!r} is not in models/{folder}. Put the file there (or in an "
        f"{folder}: path of extra_model_paths.yaml) and refresh the page, or pick a listed file."
    )
