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
FACE_EMBEDS = "face_embeds"  # InsightFace's identity embedding (recognition model output)
FACE_WIDTH = 512  # every InsightFace recognition model (buffalo_l, antelopev2) embeds faces in 512 dimensions

# (encoder output, width) -> the encoder that produces it, and the file users download for it.
ENCODERS = {
    (IMAGE_EMBEDS, 1024): "CLIP ViT-H/14",
    (PENULTIMATE, 1280): "CLIP ViT-H/14",
    (IMAGE_EMBEDS, 1280): "CLIP ViT-bigG/14",
    (PENULTIMATE, 1664): "CLIP ViT-bigG/14",
    (IMAGE_EMBEDS, 768): "CLIP ViT-L/14",
    (PENULTIMATE, 1024): "CLIP ViT-L/14",
    (FACE_EMBEDS, FACE_WIDTH): "InsightFace",
}
ENCODER_FILES = {
    "CLIP ViT-H/14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "CLIP ViT-bigG/14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
    "CLIP ViT-L/14": "clip-vit-large-patch14.safetensors",
}
FAMILIES = {768: "SD1.5", 2048: "SDXL"}
LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
# FaceID files carry a LoRA for the UNet's own attention layers, self- and cross-attention alike,
# numbered like the layers (n counts every attention processor, attn1 taking the even numbers).
LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
LORA_PROJECTIONS = ("q", "k", "v", "out")
KINDS = {
    "linear": "base",
    "resampler": "plus",
    "mlp": "full-face",
    "face_mlp": "FaceID",
    "face_plus": "FaceID plus",
    "face_resampler": "FaceID portrait, unnormalised embedding",
}
FACE_PROJECTIONS = ("face_mlp", "face_plus", "face_resampler")
PORTRAIT_TOKENS = 16  # portrait adapters give 16 tokens per face instead of FaceID's 4


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the pack needs to know about an adapter, derived from its weights."""

    # "linear" (ImageProjModel), "resampler" (Plus), "mlp" (full-face); FaceID: "face_mlp" (FaceID,
    # portrait), "face_plus" (FaceID plus / plusv2), "face_resampler" (portrait, unnormalised)
    projection: str
    encoder_output: str  # IMAGE_EMBEDS, PENULTIMATE, or FACE_EMBEDS for FaceID adapters without a CLIP half
    encoder_width: int  # width of that encoder output
    cross_attention_dim: int  # text-embedding width of the UNet it was trained for
    num_tokens: int | None  # image tokens per reference; None: one per encoder token (full-face)
    layer_dims: tuple[tuple[int, int], ...]  # (processor index n, inner_dim) for every to_k_ip/to_v_ip pair
    resampler_heads: int = 0
    resampler_depth: int = 0
    face_embedding: str = ""  # FaceID: "normed" (unit length) or "raw" InsightFace embedding; "" for CLIP adapters
    face_width: int = 0  # width of the face embedding a FaceID projection reads
    lora_rank: int = 0  # rank of the in-file UNet LoRA (0: none)
    lora_layers: tuple[int, ...] = ()  # processor indices n the LoRA patches (attn1: even, attn2: odd)

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
    def is_faceid(self) -> bool:
        return self.projection in FACE_PROJECTIONS

    @property
    def needs_clip(self) -> bool:
        """Whether a CLIP vision model feeds the projection (all but the face-only FaceID adapters)."""
        return self.encoder_output != FACE_EMBEDS

    @property
    def description(self) -> str:
        kind = KINDS[self.projection]
        if self.projection == "face_mlp" and self.num_tokens == PORTRAIT_TOKENS:
            kind = "FaceID portrait"
        if self.lora_rank:
            kind += f", LoRA rank {self.lora_rank}"
        needs = self.encoder_name
        if self.projection == "face_plus":
            needs = f"InsightFace and {self.encoder_name}"
        return f"{self.family} IP-Adapter ({kind}, needs {needs})"


def detect_variant(weights: AdapterWeights) -> AdapterSpec:
    """Identify the projection network and the UNet layers from the state dict alone."""
    proj = weights.image_proj
    layer_dims, cross_dim, lora_rank, lora_layers = read_layers(weights.ip_adapter)
    lora = dict(lora_rank=lora_rank, lora_layers=lora_layers)
    if "perceiver_resampler.proj_in.weight" in proj and "proj.0.weight" in proj:
        perceiver = strip(proj, "perceiver_resampler.")
        width = proj["norm.weight"].shape[0] if "norm.weight" in proj else 0
        spec = AdapterSpec(
            projection="face_plus",
            encoder_output=PENULTIMATE,
            encoder_width=perceiver["proj_in.weight"].shape[1],
            cross_attention_dim=perceiver["proj_out.weight"].shape[0],
            num_tokens=proj["proj.2.weight"].shape[0] // max(width, 1),
            layer_dims=layer_dims,
            resampler_heads=perceiver["layers.0.0.to_q.weight"].shape[0] // 64,
            resampler_depth=depth_of(perceiver),
            face_embedding="normed",
            face_width=proj["proj.0.weight"].shape[1],
            **lora,
        )
    elif "proj.weight" in proj and "norm.weight" in proj:
        out_dim = proj["norm.weight"].shape[0]
        spec = AdapterSpec(
            projection="linear",
            encoder_output=IMAGE_EMBEDS,
            encoder_width=proj["proj.weight"].shape[1],
            cross_attention_dim=out_dim,
            num_tokens=proj["proj.weight"].shape[0] // out_dim,
            layer_dims=layer_dims,
            **lora,
        )
    elif "latents" in proj and "proj_in.weight" in proj:
        # Portrait-unnorm (SDXL) is a plus Resampler reading one token: the raw 512-wide face
        # embedding. No CLIP encoder has hidden states that narrow, so the width tells them apart.
        face = proj["proj_in.weight"].shape[1] == FACE_WIDTH
        spec = AdapterSpec(
            projection="face_resampler" if face else "resampler",
            encoder_output=FACE_EMBEDS if face else PENULTIMATE,
            encoder_width=proj["proj_in.weight"].shape[1],
            cross_attention_dim=proj["proj_out.weight"].shape[0],
            num_tokens=proj["latents"].shape[1],
            layer_dims=layer_dims,
            resampler_heads=proj["layers.0.0.to_q.weight"].shape[0] // 64,
            resampler_depth=depth_of(proj),
            face_embedding="raw" if face else "",
            face_width=FACE_WIDTH if face else 0,
            **lora,
        )
    elif "proj.3.weight" in proj and "proj.0.weight" in proj:
        spec = AdapterSpec(
            projection="mlp",
            encoder_output=PENULTIMATE,
            encoder_width=proj["proj.0.weight"].shape[1],
            cross_attention_dim=proj["proj.3.weight"].shape[0],
            num_tokens=None,
            layer_dims=layer_dims,
            **lora,
        )
    elif "proj.0.weight" in proj and "proj.2.weight" in proj and "norm.weight" in proj:
        width = proj["norm.weight"].shape[0]
        spec = AdapterSpec(
            projection="face_mlp",
            encoder_output=FACE_EMBEDS,
            encoder_width=proj["proj.0.weight"].shape[1],
            cross_attention_dim=width,
            num_tokens=proj["proj.2.weight"].shape[0] // width,
            layer_dims=layer_dims,
            face_embedding="normed",
            face_width=proj["proj.0.weight"].shape[1],
            **lora,
        )
    else:
        raise IPAdapterError(
            "Unrecognised image projection in this IP-Adapter file (keys: "
            f"{', '.join(sorted(proj)[:6])}...). Supported: base, light, vit-G, plus, plus-face, "
            "full-face and FaceID (faceid, plus, plusv2, portrait) for SD1.5; base, vit-h, plus, "
            "plus-face and FaceID (faceid, plusv2, portrait, portrait-unnorm) for SDXL."
        )
    if spec.cross_attention_dim != cross_dim:
        raise IPAdapterError(
            f"Inconsistent IP-Adapter file: the image projection outputs width {spec.cross_attention_dim} but "
            f"the cross-attention weights expect {cross_dim}. The file is damaged or mixes two adapters."
        )
    if spec.is_faceid and spec.face_width != FACE_WIDTH:
        raise IPAdapterError(
            f"This FaceID adapter reads face embeddings of width {spec.face_width}, but InsightFace's are "
            f"{FACE_WIDTH} wide; the file is damaged or not an official FaceID adapter."
        )
    return spec


def depth_of(resampler: dict[str, torch.Tensor]) -> int:
    return len({key.split(".")[1] for key in resampler if key.startswith("layers.")})


def strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def read_layers(ip_adapter: dict[str, torch.Tensor]) -> tuple[tuple[tuple[int, int], ...], int, int, tuple[int, ...]]:
    """(processor index, inner_dim) per to_k_ip/to_v_ip pair, the text width, and the LoRA's rank and indices."""
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    lora: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in ip_adapter.items():
        match = LAYER_KEY.match(key)
        if match is not None:
            pairs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
            continue
        match = LORA_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"Unexpected key {key!r} in the IP-Adapter's cross-attention weights; the file is not a supported IP-Adapter.")
        lora.setdefault(int(match.group(1)), {})[f"{match.group(2)}.{match.group(3)}"] = tensor
    dims = []
    cross_dims = set()
    for n, pair in sorted(pairs.items()):
        if set(pair) != {"k", "v"} or pair["k"].shape != pair["v"].shape or pair["k"].ndim != 2:
            raise IPAdapterError(f"Layer {n} of the IP-Adapter lacks a matching to_k_ip/to_v_ip pair; the file is damaged.")
        dims.append((n, pair["k"].shape[0]))
        cross_dims.add(pair["k"].shape[1])
    if len(cross_dims) != 1:
        raise IPAdapterError("The IP-Adapter's layers disagree on the text-embedding width; the file is damaged.")
    return tuple(dims), cross_dims.pop(), lora_rank(lora, set(pairs)), tuple(sorted(lora))


def lora_rank(lora: dict[int, dict[str, torch.Tensor]], layers: set[int]) -> int:
    """The rank shared by every LoRA pair; each attention layer needs all four projections' down/up."""
    ranks = set()
    expected = {f"{p}.{d}" for p in LORA_PROJECTIONS for d in ("down", "up")}
    for n, tensors in lora.items():
        cross_attention = n if n % 2 else n + 1  # attn1 of a transformer block precedes its attn2
        if set(tensors) != expected or cross_attention not in layers:
            raise IPAdapterError(
                f"The LoRA of this FaceID adapter is incomplete at attention layer {n} (has {sorted(tensors)}; needs "
                "to_q/to_k/to_v/to_out down and up for a layer the adapter patches); the file is damaged."
            )
        for projection in LORA_PROJECTIONS:
            down, up = tensors[f"{projection}.down"], tensors[f"{projection}.up"]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise IPAdapterError(f"LoRA pair {n}.to_{projection}_lora of this FaceID adapter has mismatched shapes; the file is damaged.")
            ranks.add(down.shape[0])
    if len(ranks) > 1:
        raise IPAdapterError(f"The FaceID adapter's LoRA mixes ranks {sorted(ranks)}; the file is damaged.")
    return ranks.pop() if ranks else 0


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
