"""Reading IP-Adapter files into the two state dicts every variant is made of.

Official files come as `.bin` (a pickled `{"image_proj": ..., "ip_adapter": ...}`) or as flat
`.safetensors` keys prefixed `image_proj.` / `ip_adapter.`; some trainers write
`adapter_modules.` instead of `ip_adapter.`. XLabs' Flux adapters name their keys after the
Flux model (`ip_adapter_proj_model.*`, `double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.*`);
they are renamed to the common `image_proj` / `{i}.to_{k,v}_ip.*` layout here, as diffusers'
loader does. Files are read through weight_files.py: pickles are checked before
`torch.load(weights_only=True)` sees them, so a file that needs arbitrary code to load is
refused, not run, and a damaged one is reported as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import IPAdapterError
from .weight_files import read_weights

StateDict = dict[str, torch.Tensor]

ADAPTER_PREFIXES = ("ip_adapter.", "adapter_modules.")
XLABS_PROJECTION_PREFIX = "ip_adapter_proj_model."
XLABS_BLOCK_KEY = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
MISSING = "Put it in ComfyUI's models/ipadapter folder."


@dataclass(frozen=True)
class AdapterWeights:
    """The image projection network's weights and the per-layer `to_k_ip`/`to_v_ip` weights."""

    image_proj: StateDict
    ip_adapter: StateDict


def read_weights_file(path: str | Path) -> StateDict:
    """Load a weights file as a flat or nested dict of tensors, refusing unsafe pickles and damaged files."""
    return read_weights(path, "IP-Adapter", MISSING)


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
        check_weight(source, name, tensor)
    return AdapterWeights(image_proj=image_proj, ip_adapter=ip_adapter)


def split_xlabs(state_dict: dict, source: str) -> tuple[dict, dict]:
    image_proj, ip_adapter = {}, {}
    for key, value in state_dict.items():
        if isinstance(key, str) and key.startswith(XLABS_PROJECTION_PREFIX):
            image_proj[key[len(XLABS_PROJECTION_PREFIX):]] = value
            continue
        match = XLABS_BLOCK_KEY.match(key) if isinstance(key, str) else None
        if match is None:
            raise IPAdapterError(f"{source}: unexpected key {key!r} in an XLabs Flux IP-Adapter; the file is not a supported Flux IP-Adapter.")
        block, kv, kind = match.groups()
        ip_adapter[f"{block}.to_{kv}_ip.{kind}"] = value
    return image_proj, ip_adapter


def check_weight(source: str, name: object, tensor: object) -> None:
    """Each entry must be a finite floating-point tensor: anything else is damage, not a variant."""
    if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
        raise IPAdapterError(f"{source}: entry {name!r} is not a named tensor; the file is not an IP-Adapter checkpoint.")
    if not tensor.is_floating_point() or tensor.is_complex():
        raise IPAdapterError(f"{source}: {name} holds {tensor.dtype} values, but IP-Adapter weights are floating point; the file is damaged. Download it again.")
    if tensor.device.type == "meta":
        return
    stored = tensor.untyped_storage().nbytes() // tensor.element_size()
    if tensor.numel() > stored:  # a pickled view repeating a few values (zero strides): any use would allocate it in full
        raise IPAdapterError(f"{source}: {name} declares {tensor.numel()} values over {stored} stored ones; the file is damaged. Download it again.")
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise IPAdapterError(f"{source}: {name} contains NaN or infinite values; the file is damaged. Download it again.")


def load_adapter_weights(path: str | Path) -> AdapterWeights:
    return split_adapter_weights(read_weights_file(path), source=Path(path).name)


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items() if isinstance(key, str) and key.startswith(prefix)}
