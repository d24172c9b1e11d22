"""What an adapter file is, read from its key names and tensor shapes (never its file name)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch

from .checkpoint import AdapterWeights
from .errors import IPAdapterError

IMAGE_EMBEDS = "image_embeds"
PENULTIMATE = "penultimate_hidden_states"

# (encoder output, width) -> the encoder that produces it, and the file users download for it.
ENCODERS = {
    (IMAGE_EMBEDS, 1024): "CLIP ViT-H/14",
    (PENULTIMATE, 1280): "CLIP ViT-H/14",
    (IMAGE_EMBEDS, 1280): "CLIP ViT-bigG/14",
    (PENULTIMATE, 1664): "CLIP ViT-bigG/14",
    (IMAGE_EMBEDS, 768): "CLIP ViT-L/14",
    (PENULTIMATE, 1024): "CLIP ViT-L/14",
}
ENCODER_FILES = {
    "CLIP ViT-H/14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "CLIP ViT-bigG/14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
    "CLIP ViT-L/14": "clip-vit-large-patch14.safetensors",
}
FAMILIES = {768: "SD1.5", 2048: "SDXL"}
LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the pack needs to know about an adapter, derived from its weights."""

    projection: str  # "linear" (ImageProjModel), "resampler" (Plus), "mlp" (full-face)
    encoder_output: str  # IMAGE_EMBEDS or PENULTIMATE
    encoder_width: int  # width of that encoder output
    cross_attention_dim: int  # text-embedding width of the UNet it was trained for
    num_tokens: int | None  # image tokens per reference; None: one per encoder token (full-face)
    layer_dims: tuple[tuple[int, int], ...]  # (processor index n, inner_dim) for every to_k_ip/to_v_ip pair
    resampler_heads: int = 0
    resampler_depth: int = 0

    @property
    def family(self) -> str:
        return FAMILIES.get(self.cross_attention_dim, f"a model with text width {self.cross_attention_dim}")

    @property
    def encoder_name(self) -> str:
        return ENCODERS.get((self.encoder_output, self.encoder_width), f"an image encoder with output width {self.encoder_width}")

    @property
    def encoder_file(self) -> str:
        return ENCODER_FILES.get(self.encoder_name, "the matching CLIP vision model")

    @property
    def description(self) -> str:
        kind = {"linear": "base", "resampler": "plus", "mlp": "full-face"}[self.projection]
        return f"{self.family} IP-Adapter ({kind}, needs {self.encoder_name})"


def detect_variant(weights: AdapterWeights) -> AdapterSpec:
    """Identify the projection network and the UNet layers from the state dict alone."""
    proj = weights.image_proj
    reject_unsupported(weights)
    layer_dims, cross_dim = read_layers(weights.ip_adapter)
    if "proj.weight" in proj and "norm.weight" in proj:
        out_dim = proj["norm.weight"].shape[0]
        spec = AdapterSpec(
            projection="linear",
            encoder_output=IMAGE_EMBEDS,
            encoder_width=proj["proj.weight"].shape[1],
            cross_attention_dim=out_dim,
            num_tokens=proj["proj.weight"].shape[0] // out_dim,
            layer_dims=layer_dims,
        )
    elif "latents" in proj and "proj_in.weight" in proj:
        depth = len({key.split(".")[1] for key in proj if key.startswith("layers.")})
        spec = AdapterSpec(
            projection="resampler",
            encoder_output=PENULTIMATE,
            encoder_width=proj["proj_in.weight"].shape[1],
            cross_attention_dim=proj["proj_out.weight"].shape[0],
            num_tokens=proj["latents"].shape[1],
            layer_dims=layer_dims,
            resampler_heads=proj["layers.0.0.to_q.weight"].shape[0] // 64,
            resampler_depth=depth,
        )
    elif "proj.3.weight" in proj and "proj.0.weight" in proj:
        spec = AdapterSpec(
            projection="mlp",
            encoder_output=PENULTIMATE,
            encoder_width=proj["proj.0.weight"].shape[1],
            cross_attention_dim=proj["proj.3.weight"].shape[0],
            num_tokens=None,
            layer_dims=layer_dims,
        )
    else:
        raise IPAdapterError(
            "Unrecognised image projection in this IP-Adapter file (keys: "
            f"{', '.join(sorted(proj)[:6])}...). Supported: base, light, vit-G, plus, plus-face, "
            "full-face for SD1.5 and base, vit-h, plus, plus-face for SDXL."
        )
    if spec.cross_attention_dim != cross_dim:
        raise IPAdapterError(
            f"Inconsistent IP-Adapter file: the image projection outputs width {spec.cross_attention_dim} but "
            f"the cross-attention weights expect {cross_dim}. The file is damaged or mixes two adapters."
        )
    return spec


def reject_unsupported(weights: AdapterWeights) -> None:
    proj = weights.image_proj
    faceid = any(key.startswith("perceiver_resampler.") for key in proj) or any("lora" in key for key in weights.ip_adapter)
    faceid = faceid or ("proj.0.weight" in proj and "norm.weight" in proj and "proj.3.weight" not in proj)
    if faceid:
        raise IPAdapterError(
            "This is a FaceID IP-Adapter: it needs InsightFace face embeddings and a LoRA, which this pack "
            "does not support yet. Use a plus-face or full-face adapter instead."
        )


def read_layers(ip_adapter: dict[str, torch.Tensor]) -> tuple[tuple[tuple[int, int], ...], int]:
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in ip_adapter.items():
        match = LAYER_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"Unexpected key {key!r} in the IP-Adapter's cross-attention weights; the file is not a supported IP-Adapter.")
        pairs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    dims = []
    cross_dims = set()
    for n, pair in sorted(pairs.items()):
        if set(pair) != {"k", "v"} or pair["k"].shape != pair["v"].shape or pair["k"].ndim != 2:
            raise IPAdapterError(f"Layer {n} of the IP-Adapter lacks a matching to_k_ip/to_v_ip pair; the file is damaged.")
        dims.append((n, pair["k"].shape[0]))
        cross_dims.add(pair["k"].shape[1])
    if len(cross_dims) != 1:
        raise IPAdapterError("The IP-Adapter's layers disagree on the text-embedding width; the file is damaged.")
    return tuple(dims), cross_dims.pop()


def fingerprint(weights: AdapterWeights) -> str:
    """A short identity for "which adapter made this image prompt", cheap enough for every load.

    Hashes names, shapes, dtypes and an evenly strided sample of each tensor's values: two
    trained adapters never agree on all of those, and hashing every byte would cost more than
    the load itself for SDXL files.
    """
    digest = hashlib.sha256()
    for section, tensors in (("image_proj", weights.image_proj), ("ip_adapter", weights.ip_adapter)):
        for name in sorted(tensors):
            tensor = tensors[name]
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)].float().cpu()
            digest.update(f"{section}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
