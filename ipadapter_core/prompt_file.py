"""Image prompts on disk, so references are encoded once and reused or shared.

Only safetensors: the file holds tensors and string metadata, nothing executable, so a prompt
from a stranger is safe to load. Values are stored bit for bit (float32 tokens, float64
weights), so applying a loaded prompt gives exactly the result the original gave.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import IPAdapterError
from .image_prompt import ImagePrompt
from .weight_files import FileDamaged, check_safetensors_header, regular_file_size

FORMAT = "ipadapter-image-prompt"
VERSION = 1
EXTENSION = ".imageprompt"
TENSOR_NAMES = {"cond", "uncond", "reference_weights"}
DAMAGED = "the file is damaged or was not written by Save Image Prompt; save the prompt again."


def save_image_prompt(prompt: ImagePrompt, path: str | Path) -> Path:
    if not isinstance(prompt, ImagePrompt):
        raise IPAdapterError(f"Expected an IMAGE_PROMPT to save, got {type(prompt).__name__}; connect Encode Image Prompt's output.")
    tensors = {"cond": prompt.cond.detach().cpu().float().contiguous(), "uncond": prompt.uncond.detach().cpu().float().contiguous()}
    if prompt.reference_weights is not None:
        tensors["reference_weights"] = torch.tensor(prompt.reference_weights, dtype=torch.float64)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "adapter_identity": prompt.adapter_identity,
        "adapter_description": prompt.adapter_description,
    }
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    logging.info("Saved image prompt (%d references, %s) to %s", prompt.references, prompt.adapter_description, path)
    return path


def load_image_prompt(path: str | Path) -> ImagePrompt:
    path = Path(path)
    regular_file_size(path, f"Put the {EXTENSION} file in ComfyUI's input folder.", "an image prompt", "Save the prompt again with Save Image Prompt.")
    try:
        check_safetensors_header(path)
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            check_metadata(metadata, path.name)
            names = set(file.keys())
            if not {"cond", "uncond"} <= names or not names <= TENSOR_NAMES:
                raise IPAdapterError(f"{path.name} has tensors {sorted(names)} instead of cond and uncond; {DAMAGED}")
            tensors = {name: file.get_tensor(name) for name in names}
    except (FileDamaged, SafetensorError, OSError, RuntimeError, ValueError, TypeError) as error:
        raise IPAdapterError(
            f"{path.name} could not be read as an image prompt: it is not a safetensors file, or it is corrupt or "
            f"truncated ({str(error).strip()[:200]}). Save the prompt again with Save Image Prompt."
        ) from error
    return build_prompt(tensors, metadata, path.name)


def check_metadata(metadata: dict[str, str], name: str) -> None:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise IPAdapterError(
            f"{name} is not an image prompt file (no '{FORMAT}' mark in its metadata). "
            "Choose a file written by Save Image Prompt."
        )
    version = metadata.get("version", "")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,6}", version):
        raise IPAdapterError(f"{name} has an unreadable format version {str(version)[:20]!r}; {DAMAGED}")
    if int(version) > VERSION:
        raise IPAdapterError(
            f"{name} was saved by a newer version of the IP-Adapter nodes (image prompt format {version}; this "
            f"version reads format {VERSION}). Update the IP-Adapter custom nodes to load it."
        )
    if int(version) != VERSION or not isinstance(metadata.get("adapter_identity"), str) or not metadata["adapter_identity"]:
        raise IPAdapterError(f"{name} has no valid adapter identity or format version; {DAMAGED}")


def build_prompt(tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> ImagePrompt:
    cond, uncond = tensors["cond"], tensors["uncond"]
    if cond.ndim != 3 or cond.shape != uncond.shape or not cond.is_floating_point() or not uncond.is_floating_point():
        raise IPAdapterError(
            f"{name} holds tokens of shapes {tuple(cond.shape)} and {tuple(uncond.shape)}; an image prompt needs two "
            f"equal (references, tokens, width) float tensors; {DAMAGED}"
        )
    if min(cond.shape) < 1:
        raise IPAdapterError(f"{name} holds empty tokens of shape {tuple(cond.shape)}; {DAMAGED}")
    weights = tensors.get("reference_weights")
    if weights is not None and (weights.ndim != 1 or weights.shape[0] != cond.shape[0] or not weights.is_floating_point()):
        raise IPAdapterError(f"{name} has {tuple(weights.shape)} reference weights for {cond.shape[0]} references; {DAMAGED}")
    if not all(bool(torch.isfinite(t).all()) for t in (cond, uncond) + (() if weights is None else (weights,))):
        raise IPAdapterError(f"{name} contains NaN or infinite values; {DAMAGED}")
    return ImagePrompt(
        cond=cond.float(),
        uncond=uncond.float(),
        adapter_identity=metadata["adapter_identity"],
        adapter_description=metadata.get("adapter_description", "an unknown IP-Adapter"),
        reference_weights=None if weights is None else tuple(weights.double().tolist()),
    )
