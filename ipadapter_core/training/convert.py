"""`convert`: turn what other IP-Adapter trainers save into the official adapter file.

Handled inputs:
- the official/diffusers tutorial scripts' `accelerator.save_state` output (a checkpoint folder or
  its model.safetensors / pytorch_model.bin): `image_proj_model.*` and `adapter_modules.{n}.*`
  beside the whole `unet.*`. With current accelerate the safetensors save drops tensors that are
  shared, and the adapter modules are shared with the UNet's attention processors, so
  `adapter_modules.*` may be missing entirely: the weights are then recovered from the
  processors' copies under `unet.…attn2.processor.to_k_ip…`, numbered in diffusers' order;
- a diffusers UNet state dict with IP-Adapter processors loaded (`…attn2.processor.to_k_ip.0.weight`,
  `encoder_hid_proj.image_projection_layers.0.*` in diffusers' projection naming);
- any file the pack already reads (official .bin / .safetensors, `adapter_modules.` prefix).
The result is verified by the pack's variant detection and written as flat fp16 safetensors.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoint import AdapterWeights, read_weights_file, split_adapter_weights, strip_prefix
from ..errors import IPAdapterError
from ..layer_map import checkpoint_index
from ..variants import detect_variant
from .state import DTYPES

STATE_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PROCESSOR_KEY = re.compile(r"^(?:unet\.)?(down_blocks|up_blocks|mid_block)\.(.*?)attn2\.processor\.to_([kv])_ip(?:\.0)?\.weight$")
BLOCK_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}  # diffusers' attn_processors order


def read_source(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        for name in STATE_FILES:
            if (path / name).is_file():
                return read_weights_file(path / name)
        raise IPAdapterError(f"{path} holds none of {', '.join(STATE_FILES)}; point convert at the trainer's checkpoint folder or file.")
    return read_weights_file(path)


def natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def adapter_from_processors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`{n}.to_k_ip.weight` from the attention processors' own copies, n = 2j+1 in diffusers' order."""
    layers: dict[tuple, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = PROCESSOR_KEY.match(key)
        if match:
            order = (BLOCK_ORDER[match.group(1)], natural_key(match.group(2)))
            layers.setdefault(order, {})[match.group(3)] = tensor
    out = {}
    for position, order in enumerate(sorted(layers)):
        pair = layers[order]
        if set(pair) != {"k", "v"}:
            raise IPAdapterError("A cross-attention layer has only one of to_k_ip/to_v_ip in the source; the checkpoint is incomplete.")
        index = checkpoint_index(position)
        out[f"{index}.to_k_ip.weight"], out[f"{index}.to_v_ip.weight"] = pair["k"], pair["v"]
    return out


def official_projection(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' projection naming back to the official one (inverse of diffusers' own conversion)."""
    if "image_embeds.weight" in state_dict:  # ImageProjection
        return {key.replace("image_embeds.", "proj.", 1): value for key, value in state_dict.items()}
    if "ff.net.0.proj.weight" in state_dict:  # full-face MLP
        names = {"ff.net.0.proj.": "proj.0.", "ff.net.2.": "proj.2.", "norm.": "proj.3."}
        return {next(new + key[len(old):] for old, new in names.items() if key.startswith(old)): value for key, value in state_dict.items()}
    if "latents" in state_dict and any(".attn.to_k." in key for key in state_dict):  # IPAdapterPlusImageProjection
        out = {}
        for key, value in state_dict.items():
            match = re.match(r"^layers\.(\d+)\.(.*)$", key)
            if match is None:
                out[key] = value
                continue
            i, rest = match.groups()
            if rest.startswith("attn.to_v."):
                continue
            if rest.startswith("attn.to_k."):
                out[f"layers.{i}.0.to_kv.weight"] = torch.cat([value, state_dict[f"layers.{i}.attn.to_v.weight"]])
                continue
            for old, new in (("ln0.", "0.norm1."), ("ln1.", "0.norm2."), ("attn.to_q.", "0.to_q."), ("attn.to_out.0.", "0.to_out."),
                             ("ff.0.", "1.0."), ("ff.1.net.0.proj.", "1.1."), ("ff.1.net.2.", "1.3.")):
                if rest.startswith(old):
                    out[f"layers.{i}.{new}{rest[len(old):]}"] = value
                    break
            else:
                raise IPAdapterError(f"Unexpected key {key!r} in the diffusers image projection.")
        return out
    return state_dict


def rescue(state_dict: dict) -> AdapterWeights:
    """The adapter inside any supported trainer output."""
    if "image_proj" in state_dict or any(key.startswith(("image_proj.", "ip_adapter.")) for key in state_dict):
        if not any(key.startswith("adapter_modules.") for key in state_dict):
            return split_adapter_weights(state_dict, "the source")
    image_proj = strip_prefix(state_dict, "image_proj_model.") or strip_prefix(state_dict, "image_proj.")
    if not image_proj:
        image_proj = official_projection(strip_prefix(state_dict, "encoder_hid_proj.image_projection_layers.0.") or strip_prefix(state_dict, "unet.encoder_hid_proj.image_projection_layers.0."))
    ip_adapter = strip_prefix(state_dict, "adapter_modules.") or strip_prefix(state_dict, "ip_adapter.")
    ip_adapter = {key: value for key, value in ip_adapter.items() if re.match(r"^\d+\.to_[kv]_ip\.weight$", key)}
    if not ip_adapter:
        ip_adapter = adapter_from_processors(state_dict)
    if not image_proj:
        raise IPAdapterError("The source has no image projection weights (image_proj_model.*, image_proj.* or encoder_hid_proj.*); it is not an IP-Adapter training output.")
    if not ip_adapter:
        raise IPAdapterError("The source has no to_k_ip/to_v_ip weights, neither as adapter_modules.* nor in the UNet's attention processors; the adapter cannot be recovered from it.")
    return split_adapter_weights({"image_proj": image_proj, "ip_adapter": ip_adapter}, "the source")


def convert(source: str | Path, target: str | Path, dtype: str = "fp16") -> Path:
    weights = rescue(read_source(Path(source)))
    spec = detect_variant(weights)
    flat = {f"image_proj.{k}": v.to(DTYPES[dtype]).contiguous() for k, v in weights.image_proj.items()}
    flat.update({f"ip_adapter.{k}": v.to(DTYPES[dtype]).contiguous() for k, v in weights.ip_adapter.items()})
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(target), metadata={"format": "pt", "ipadapter": spec.description})
    return target
