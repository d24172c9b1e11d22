"""Reading IP-Adapter files into the two state dicts every variant is made of.

Official files come as `.bin` (a pickled `{"image_proj": ..., "ip_adapter": ...}`) or as flat
`.safetensors` keys prefixed `image_proj.` / `ip_adapter.`; some trainers write
`adapter_modules.` instead of `ip_adapter.`. XLabs' Flux adapters name their keys after the
Flux model (`ip_adapter_proj_model.*`, `double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.*`);
they are renamed to the common `image_proj` / `{i}.to_{k,v}_ip.*` layout here, as diffusers'
loader does. Pickles are only ever read with `weights_only=True`, so a file that needs
arbitrary code to load is refused, not run.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import IPAdapterError

StateDict = dict[str, torch.Tensor]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ADAPTER_PREFIXES = ("ip_adapter.", "adapter_modules.")
XLABS_PROJECTION_PREFIX = "ip_adapter_proj_model."
XLABS_BLOCK_KEY = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")


@dataclass(frozen=True)
class AdapterWeights:
    """The image projection network's weights and the per-layer `to_k_ip`/`to_v_ip` weights."""

    image_proj: StateDict
    ip_adapter: StateDict


def read_weights_file(path: str | Path) -> StateDict:
    """Load a weights file as a flat or nested dict of tensors, refusing unsafe pickles."""
    path = Path(path)
    if not path.is_file():
        raise IPAdapterError(f"IP-Adapter file not found: {path}. Put it in ComfyUI's models/ipadapter folder.")
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            return load_file(str(path), device="cpu")
        if path.suffix in PICKLE_SUFFIXES:
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # not a refused import: the pickle stream itself is broken
            raise IPAdapterError(
                f"{path.name} could not be read as plain weights: the file is corrupt or truncated, or it is a "
                "pickle that needs code to load. Download it again, preferably the .safetensors release."
            ) from error
        raise IPAdapterError(
            f"{path.name} contains Python objects that can only be loaded by unpickling, which can run "
            "arbitrary code; it was not loaded. Use the official .safetensors release of this adapter, "
            f"or convert the file with a tool you trust. ({first_line(error)})"
        ) from error
    except Exception as error:  # a damaged stream can make the unpickler raise almost anything
        raise IPAdapterError(
            f"{path.name} could not be read: the file is corrupt or truncated ({first_line(error)}). "
            "Download it again."
        ) from error
    raise IPAdapterError(f"{path.name}: unsupported file type {path.suffix!r}; use .safetensors or .bin.")


def split_adapter_weights(state_dict: dict, source: str = "the file") -> AdapterWeights:
    """Accept the nested `.bin` layout and the flat prefixed layouts; reject anything else clearly."""
    if not isinstance(state_dict, dict):
        raise IPAdapterError(f"{source} does not hold a dictionary of tensors; it is not an IP-Adapter file.")
    if any(isinstance(key, str) and key.startswith(XLABS_PROJECTION_PREFIX) for key in state_dict):
        image_proj, ip_adapter = split_xlabs(state_dict, source)
    elif "image_proj" in state_dict or "ip_adapter" in state_dict:
        image_proj = dict(state_dict.get("image_proj") or {})
        ip_adapter = dict(state_dict.get("ip_adapter") or state_dict.get("adapter_modules") or {})
    else:
        image_proj = strip_prefix(state_dict, "image_proj.")
        ip_adapter = {}
        for prefix in ADAPTER_PREFIXES:
            ip_adapter.update(strip_prefix(state_dict, prefix))
    if not image_proj and not ip_adapter:
        raise IPAdapterError(
            f"{source} has neither `image_proj` nor `ip_adapter` weights; it is not an IP-Adapter checkpoint "
            "(is it a CLIP vision model or a LoRA? those go in models/clip_vision and models/loras)."
        )
    if not ip_adapter:
        raise IPAdapterError(
            f"{source} has an empty `ip_adapter` dict, so there are no cross-attention weights to apply. "
            "Trainers that deduplicate shared tensors when saving produce such files; re-export the "
            "checkpoint with the adapter modules saved explicitly."
        )
    if not image_proj:
        raise IPAdapterError(f"{source} has no `image_proj` weights; the file is incomplete. Download it again.")
    for name, tensor in {**image_proj, **ip_adapter}.items():
        if not isinstance(tensor, torch.Tensor):
            raise IPAdapterError(f"{source}: entry {name!r} is not a tensor; the file is not an IP-Adapter checkpoint.")
    return AdapterWeights(image_proj=image_proj, ip_adapter=ip_adapter)


def split_xlabs(state_dict: dict, source: str) -> tuple[dict, dict]:
    image_proj, ip_adapter = {}, {}
    for key, value in state_dict.items():
        if key.startswith(XLABS_PROJECTION_PREFIX):
            image_proj[key[len(XLABS_PROJECTION_PREFIX):]] = value
            continue
        match = XLABS_BLOCK_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"{source}: unexpected key {key!r} in an XLabs Flux IP-Adapter; the file is not a supported Flux IP-Adapter.")
        block, kv, kind = match.groups()
        ip_adapter[f"{block}.to_{kv}_ip.{kind}"] = value
    return image_proj, ip_adapter


def load_adapter_weights(path: str | Path) -> AdapterWeights:
    return split_adapter_weights(read_weights_file(path), source=Path(path).name)


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
