"""What an adapter file is, read from its key names and tensor shapes (never its file name)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch

from .checkpoint import AdapterWeights
from .encoders import FACE_EMBEDS, FACE_WIDTH, IMAGE_EMBEDS, PENULTIMATE, Encoder, encoder_name, encoder_reading
from .errors import IPAdapterError

# The model architecture an adapter patches: UNets get an image branch in every cross-attention
# layer; Flux.1 (XLabs layout) in every double-stream block's image stream; SD3.5 (InstantX
# layout) in every joint block, conditioned on the timestep.
UNET = "unet"
FLUX = "flux"
SD3 = "sd3"
ARCHITECTURE_NAMES = {UNET: "UNet", FLUX: "Flux.1", SD3: "SD3.5 Large"}

# What the unconditional (CFG negative) pass sees when no negative image is given, as each
# reference pipeline makes it: zero encoder features, the encoder's answer to an all-zero pixel
# tensor (a mean-grey image), or a black image (diffusers' Flux pipeline).
ZERO_FEATURES = "zero features"
ZERO_PIXELS = "zero pixels"
BLACK_IMAGE = "black image"

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
# Per-layer tensors of the DiT layouts, after checkpoint.py's renaming (`{block}.{name}`).
FLUX_LAYER_TENSORS = ("to_k_ip.weight", "to_k_ip.bias", "to_v_ip.weight", "to_v_ip.bias")
SD3_LAYER_TENSORS = ("norm_ip.linear.weight", "norm_ip.linear.bias", "to_k_ip.weight", "to_v_ip.weight",
                     "norm_q.weight", "norm_k.weight", "norm_ip_k.weight")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the pack needs to know about an adapter, derived from its weights."""

    # "linear" (ImageProjModel), "resampler" (Plus), "mlp" (full-face); FaceID: "face_mlp" (FaceID,
    # portrait), "face_plus" (FaceID plus / plusv2), "face_resampler" (portrait, unnormalised);
    # SD3.5: "time_resampler" (timestep-conditioned Resampler)
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
    architecture: str = UNET
    head_dim: int = 0  # DiT layouts: the per-head width their norms act on (SD3.5); 0 where unused

    @property
    def family(self) -> str:
        if self.architecture != UNET:
            return ARCHITECTURE_NAMES[self.architecture]
        return FAMILIES.get(self.cross_attention_dim, f"a model with text width {self.cross_attention_dim}")

    @property
    def timestep_conditioned(self) -> bool:
        """The projection depends on the timestep (SD3.5): image prompts hold encoder features,
        projected once per sampling step."""
        return self.projection == "time_resampler"

    @property
    def unconditional(self) -> str:
        if self.architecture == FLUX:
            return BLACK_IMAGE
        if self.encoder_output == IMAGE_EMBEDS or self.architecture == SD3:
            return ZERO_FEATURES
        return ZERO_PIXELS

    @property
    def encoder(self) -> Encoder | None:
        """The known encoder this adapter reads from, if any."""
        return encoder_reading(self.encoder_output, self.encoder_width)

    @property
    def encoder_name(self) -> str:
        return encoder_name(self.encoder_output, self.encoder_width)

    @property
    def encoder_file(self) -> str:
        encoder = self.encoder
        return encoder.file if encoder is not None and encoder.file else "the matching CLIP vision model"

    @property
    def is_faceid(self) -> bool:
        return self.projection in FACE_PROJECTIONS

    @property
    def needs_clip(self) -> bool:
        """Whether a CLIP vision model feeds the projection (all but the face-only FaceID adapters)."""
        return self.encoder_output != FACE_EMBEDS

    @property
    def description(self) -> str:
        if self.architecture == FLUX:
            return f"Flux.1 IP-Adapter (XLabs, {self.num_tokens} tokens, needs {self.encoder_name})"
        if self.architecture == SD3:
            return f"SD3.5 Large IP-Adapter (InstantX, {self.num_tokens} tokens, needs {self.encoder_name})"
        kind = KINDS[self.projection]
        if self.projection == "face_mlp" and self.num_tokens == PORTRAIT_TOKENS:
            kind = "FaceID portrait"
        if self.lora_rank:
            kind += f", LoRA rank {self.lora_rank}"
        needs = self.encoder_name
        if self.projection == "face_plus":
            needs = f"InsightFace and {self.encoder_name}"
        return f"{self.family} IP-Adapter ({kind}, needs {needs})"


def architecture_of(weights: AdapterWeights) -> str:
    """Which model family the per-layer weights were made for, from their names: biases on the
    image keys/values are XLabs' Flux layout, per-block norms InstantX's SD3.5 layout."""
    names = {key.split(".", 1)[1] for key in weights.ip_adapter if "." in key}
    if "norm_ip.linear.weight" in names:
        return SD3
    if "to_k_ip.bias" in names:
        return FLUX
    return UNET


def detect_variant(weights: AdapterWeights) -> AdapterSpec:
    """Identify the projection network and the model layers from the state dict alone."""
    architecture = architecture_of(weights)
    try:
        if architecture == FLUX:
            spec = detect_flux(weights)
        elif architecture == SD3:
            spec = detect_sd3(weights)
        else:
            spec = detect_unet(weights)
    except (KeyError, IndexError, ZeroDivisionError) as error:  # a recognised layout with missing or misshapen tensors
        raise IPAdapterError(
            f"The IP-Adapter's image projection has missing or misshapen tensors ({type(error).__name__}: {error}); "
            "the file is damaged. Download it again."
        ) from None
    if min(spec.encoder_width, spec.cross_attention_dim, spec.num_tokens or 1, *(dim for _, dim in spec.layer_dims)) < 1:
        raise IPAdapterError("The IP-Adapter's weights have empty dimensions; the file is damaged. Download it again.")
    return spec


def detect_unet(weights: AdapterWeights) -> AdapterSpec:
    """The UNet layouts: the projection from its key layout, the layers (and a FaceID LoRA) from theirs."""
    layer_dims, cross_dim, lora_rank, lora_layers = read_layers(weights.ip_adapter)
    spec = projection_spec(weights.image_proj, layer_dims, dict(lora_rank=lora_rank, lora_layers=lora_layers))
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


def projection_spec(proj: dict[str, torch.Tensor], layer_dims: tuple[tuple[int, int], ...], lora: dict) -> AdapterSpec:
    """The AdapterSpec of the image projection's key layout; shapes read as the official modules define them."""
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
            "plus-face and FaceID (faceid, plusv2, portrait, portrait-unnorm) for SDXL; XLabs' for Flux.1; InstantX's for SD3.5 Large."
        )
    return spec


def detect_flux(weights: AdapterWeights) -> AdapterSpec:
    """XLabs' Flux.1 adapters (v1, v2): CLIP ViT-L/14 image_embeds -> ImageProjModel -> N tokens, and
    per double-stream block a biased key/value pair."""
    proj = weights.image_proj
    if not ("proj.weight" in proj and "norm.weight" in proj):
        raise IPAdapterError(
            "This Flux IP-Adapter has an image projection this pack does not know (keys: "
            f"{', '.join(sorted(proj)[:6])}...); XLabs' flux-ip-adapter and flux-ip-adapter-v2 are supported."
        )
    blocks = read_block_tensors(weights.ip_adapter, FLUX_LAYER_TENSORS, "Flux")
    width = proj["norm.weight"].shape[0]
    layer_dims = []
    for index, tensors in blocks:
        k, v = tensors["to_k_ip.weight"], tensors["to_v_ip.weight"]
        if k.ndim != 2 or k.shape != v.shape or k.shape[1] != width or tensors["to_k_ip.bias"].shape != k.shape[:1] or tensors["to_v_ip.bias"].shape != k.shape[:1]:
            raise IPAdapterError(f"Double block {index} of the Flux IP-Adapter has mismatched key/value shapes; the file is damaged.")
        layer_dims.append((index, k.shape[0]))
    return AdapterSpec(
        projection="linear",
        encoder_output=IMAGE_EMBEDS,
        encoder_width=proj["proj.weight"].shape[1],
        cross_attention_dim=width,
        num_tokens=proj["proj.weight"].shape[0] // width,
        layer_dims=tuple(layer_dims),
        architecture=FLUX,
    )


def detect_sd3(weights: AdapterWeights) -> AdapterSpec:
    """InstantX's SD3.5-Large adapter: SigLIP penultimate hidden states -> a timestep-conditioned
    Resampler -> 64 tokens, and per joint block an adaptive norm, keys/values and three RMS norms."""
    proj = weights.image_proj
    needed = ("latents", "proj_in.weight", "proj_out.weight", "time_embedding.linear_1.weight", "layers.0.0.to_q.weight", "layers.0.2.1.weight")
    if any(key not in proj for key in needed):
        raise IPAdapterError(
            "This SD3.5 IP-Adapter has an image projection this pack does not know (keys: "
            f"{', '.join(sorted(proj)[:6])}...); InstantX's SD3.5-Large-IP-Adapter is supported."
        )
    blocks = read_block_tensors(weights.ip_adapter, SD3_LAYER_TENSORS, "SD3.5")
    width = proj["proj_out.weight"].shape[0]
    head_dims = set()
    layer_dims = []
    for index, tensors in blocks:
        k = tensors["to_k_ip.weight"]
        if k.ndim != 2 or k.shape[1] != width or tensors["to_v_ip.weight"].shape != k.shape:
            raise IPAdapterError(f"Joint block {index} of the SD3.5 IP-Adapter has mismatched key/value shapes; the file is damaged.")
        head_dims.update(tensors[name].shape[0] for name in ("norm_q.weight", "norm_k.weight", "norm_ip_k.weight"))
        layer_dims.append((index, k.shape[0]))
    if len(head_dims) != 1:
        raise IPAdapterError("The SD3.5 IP-Adapter's per-block norms disagree on the head width; the file is damaged.")
    return AdapterSpec(
        projection="time_resampler",
        encoder_output=PENULTIMATE,
        encoder_width=proj["proj_in.weight"].shape[1],
        cross_attention_dim=width,
        num_tokens=proj["latents"].shape[1],
        layer_dims=tuple(layer_dims),
        resampler_heads=proj["layers.0.0.to_q.weight"].shape[0] // 64,
        resampler_depth=depth_of(proj),
        architecture=SD3,
        head_dim=head_dims.pop(),
    )


def read_block_tensors(ip_adapter: dict[str, torch.Tensor], names: tuple[str, ...], family: str) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """`{block}.{name}` tensors grouped per block, every block complete and numbered 0..n-1."""
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in ip_adapter.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or name not in names:
            raise IPAdapterError(f"Unexpected key {key!r} in the {family} IP-Adapter's block weights; the file is not a supported {family} IP-Adapter.")
        blocks.setdefault(int(index), {})[name] = tensor
    for index, tensors in blocks.items():
        missing = sorted(set(names) - set(tensors))
        if missing:
            raise IPAdapterError(f"Block {index} of the {family} IP-Adapter lacks {', '.join(missing)}; the file is damaged.")
    if sorted(blocks) != list(range(len(blocks))):
        raise IPAdapterError(f"The {family} IP-Adapter's blocks are numbered {sorted(blocks)}, with gaps; the file is damaged.")
    return sorted(blocks.items())


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
