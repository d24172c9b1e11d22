"""Random-weight models in the exact official layouts (key names and shapes), for offline work.

No weights can be downloaded in CI, so tests, benchmarks and the demo build what they need
here: IP-Adapter checkpoints of every supported variant, UNets ComfyUI detects as SD1.5/SDXL,
CLIP vision encoders, ControlNets and LoRAs. The adapter layouts are written out key by key
from the reference (not derived from this pack's own modules) so loading them tests the pack.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

# Official SD1.5 layer table (ipadapter-reference.md section 2): processor index n -> inner_dim.
SD15_LAYER_DIMS = [(1, 320), (3, 320), (5, 640), (7, 640), (9, 1280), (11, 1280), (13, 1280), (15, 1280), (17, 1280),
                   (19, 640), (21, 640), (23, 640), (25, 320), (27, 320), (29, 320), (31, 1280)]


def sdxl_layer_dims() -> list[tuple[int, int]]:
    """SDXL: input 4,5 (2 blocks, 640), input 7,8 (10 blocks, 1280), output 0-2 (10, 1280), output 3-5 (2, 640), middle (10, 1280)."""
    blocks = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    return [(2 * i + 1, dim) for i, dim in enumerate(blocks)]


# The tiny UNet of comfyui-host.md: ComfyUI detects it as SD1.5 (25.8M parameters).
TINY_UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
    num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=False, context_dim=768,
    transformer_depth=[1], transformer_depth_middle=1, transformer_depth_output=[1, 1], legacy=False,
)

# diffusers UNet2DConditionModel configurations of the two real architectures.
DIFFUSERS_UNET_CONFIGS = {
    "sd15": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sdxl": dict(
        sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}

VISION_CONFIGS = {
    "vit-h": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, projection_dim=1024),
    "vit-bigg": dict(hidden_size=1664, intermediate_size=8192, num_attention_heads=16, num_hidden_layers=48, projection_dim=1280),
    "vit-l": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, projection_dim=768),
}


class Randn:
    """Deterministic random tensors, scaled like a default Linear so activations stay O(1)."""

    def __init__(self, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.generator = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        self.device = device

    def __call__(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        if self.device == "meta":  # shapes only: enough for layout detection of multi-GB SDXL adapters
            return torch.empty(*shape, dtype=self.dtype, device="meta")
        return (torch.randn(*shape, generator=self.generator) * scale).to(self.dtype)

    def weight(self, out_dim: int, in_dim: int) -> torch.Tensor:
        return self(out_dim, in_dim, scale=1 / math.sqrt(in_dim))

    def norm(self, dim: int, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + self(dim, scale=0.1), f"{prefix}.bias": self(dim, scale=0.1)}


def adapter_state_dict(
    kind: str,
    layer_dims: list[tuple[int, int]],
    cross_dim: int = 768,
    clip_dim: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    resampler_heads: int | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, torch.Tensor]]:
    """A random adapter in the official nested layout {"image_proj": ..., "ip_adapter": ...}.

    kind: "base" (ImageProjModel, 4 tokens), "plus" (Resampler, 16 queries, depth 4), "full" (MLP).
    clip_dim defaults to ViT-H's width for that kind (1024 pooled, 1280 hidden).
    """
    r = Randn(seed, dtype, device)
    proj: dict[str, torch.Tensor] = {}
    if kind == "base":
        clip_dim = clip_dim or 1024
        proj = {"proj.weight": r.weight(4 * cross_dim, clip_dim), "proj.bias": r(4 * cross_dim, scale=0.1), **r.norm(cross_dim, "norm")}
    elif kind == "plus":
        clip_dim = clip_dim or 1280
        dim = 768 if cross_dim == 768 else 1280
        proj = {"latents": r(1, 16, dim, scale=dim**-0.5), **perceiver(r, dim, resampler_heads or dim // 64, clip_dim, cross_dim)}
    elif kind == "full":
        clip_dim = clip_dim or 1280
        proj = {"proj.0.weight": r.weight(clip_dim, clip_dim), "proj.0.bias": r(clip_dim, scale=0.1),
                "proj.2.weight": r.weight(cross_dim, clip_dim), "proj.2.bias": r(cross_dim, scale=0.1), **r.norm(cross_dim, "proj.3")}
    else:
        raise ValueError(kind)
    ip = {}
    for n, inner in layer_dims:
        ip[f"{n}.to_k_ip.weight"] = r.weight(inner, cross_dim)
        ip[f"{n}.to_v_ip.weight"] = r.weight(inner, cross_dim)
    return {"image_proj": proj, "ip_adapter": ip}


def perceiver(r: Randn, dim: int, heads: int, embedding_dim: int, output_dim: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """The official Resampler / FacePerceiverResampler body: proj_in, 4 x (attention, feed-forward), proj_out, norm_out."""
    proj = {f"{prefix}proj_in.weight": r.weight(dim, embedding_dim), f"{prefix}proj_in.bias": r(dim, scale=0.1),
            f"{prefix}proj_out.weight": r.weight(output_dim, dim), f"{prefix}proj_out.bias": r(output_dim, scale=0.1), **r.norm(output_dim, f"{prefix}norm_out")}
    for i in range(4):
        p = f"{prefix}layers.{i}"
        proj.update({**r.norm(dim, f"{p}.0.norm1"), **r.norm(dim, f"{p}.0.norm2"),
                     f"{p}.0.to_q.weight": r.weight(heads * 64, dim), f"{p}.0.to_kv.weight": r.weight(2 * heads * 64, dim),
                     f"{p}.0.to_out.weight": r.weight(dim, heads * 64), **r.norm(dim, f"{p}.1.0"),
                     f"{p}.1.1.weight": r.weight(4 * dim, dim), f"{p}.1.3.weight": r.weight(dim, 4 * dim)})
    return proj


# The official FaceID files (h94/IP-Adapter-FaceID): what their projections are and whether a LoRA is inside.
FACEID_KINDS = ("faceid", "faceid-plus", "portrait", "portrait-unnorm")


def faceid_state_dict(
    kind: str,
    layer_dims: list[tuple[int, int]],
    cross_dim: int = 768,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    lora_rank: int = 128,
    lora_scale: float = 1.0,
    device: str = "cpu",
) -> dict[str, dict[str, torch.Tensor]]:
    """A random FaceID adapter in the official nested layout.

    faceid: MLP 512 -> 1024 -> 4 tokens + LayerNorm, and a LoRA on every attention layer (attn1 at
    n - 1, attn2 at n, for each cross-attention layer n). faceid-plus (also plusv2's file): the same
    MLP plus a FacePerceiverResampler (width cross_dim, cross_dim / 64 heads) on ViT-H hidden states,
    and the LoRA. portrait: the MLP with 16 tokens, no LoRA. portrait-unnorm (SDXL): a plus Resampler
    (1280 wide, 20 heads, 16 queries) reading the raw 512-d embedding as one token, no LoRA.
    lora_scale scales the LoRA's up weights (how far it moves the UNet).
    """
    if kind not in FACEID_KINDS:
        raise ValueError(kind)
    r = Randn(seed, dtype, device)
    tokens = 16 if kind.startswith("portrait") else 4
    if kind == "portrait-unnorm":
        proj = {"latents": r(1, tokens, 1280, scale=1280**-0.5), **perceiver(r, 1280, 20, 512, cross_dim)}
    else:
        proj = {"proj.0.weight": r.weight(1024, 512), "proj.0.bias": r(1024, scale=0.1), "proj.2.weight": r.weight(tokens * cross_dim, 1024),
                "proj.2.bias": r(tokens * cross_dim, scale=0.1), **r.norm(cross_dim, "norm")}
        if kind == "faceid-plus":
            proj.update(perceiver(r, cross_dim, cross_dim // 64, 1280, cross_dim, prefix="perceiver_resampler."))
    ip = {}
    for n, inner in layer_dims:
        ip[f"{n}.to_k_ip.weight"] = r.weight(inner, cross_dim)
        ip[f"{n}.to_v_ip.weight"] = r.weight(inner, cross_dim)
        if kind in ("faceid", "faceid-plus"):
            for index, context in ((n - 1, inner), (n, cross_dim)):  # self-attention, then cross-attention
                for projection, in_dim in (("q", inner), ("k", context), ("v", context), ("out", inner)):
                    ip[f"{index}.to_{projection}_lora.down.weight"] = r.weight(lora_rank, in_dim)
                    ip[f"{index}.to_{projection}_lora.up.weight"] = r(inner, lora_rank, scale=lora_scale / math.sqrt(lora_rank))
    return {"image_proj": proj, "ip_adapter": ip}


def save_adapter(state_dict: dict[str, dict[str, torch.Tensor]], path: Path, prefix: str = "ip_adapter") -> Path:
    """`.bin`: the nested pickle of the official releases; `.safetensors`: flat prefixed keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        flat = {f"image_proj.{k}": v.contiguous() for k, v in state_dict["image_proj"].items()}
        flat.update({f"{prefix}.{k}": v.contiguous() for k, v in state_dict["ip_adapter"].items()})
        save_file(flat, str(path))
    else:
        torch.save(state_dict, str(path))
    return path


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter in place: weights ~ N(0, 1/fan_in), norm scales ~ 1, biases small."""
    r = Randn(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            shape = parameter.shape
            if parameter.ndim >= 2:
                value = r(*shape, scale=1 / math.sqrt(math.prod(shape[1:])))
            elif name.endswith("weight"):
                value = 1 + r(*shape, scale=0.1)
            else:
                value = r(*shape, scale=0.02)
            parameter.copy_(value.to(parameter.dtype))
    return module


def tiny_unet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of the tiny SD1.5-detected UNet, built with ComfyUI's own UNetModel."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**TINY_UNET_CONFIG, operations=comfy.ops.disable_weight_init)
    return randomize_(unet, seed).state_dict()


def tiny_model(seed: int = 0):
    """A real ComfyUI ModelPatcher around the tiny UNet."""
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(tiny_unet_state_dict(seed))


def clip_vision_state_dict(kind: str = "vit-h", seed: int = 0, num_layers: int | None = None, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A CLIP vision model with projection in transformers' key layout (what ComfyUI loads)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = dict(VISION_CONFIGS[kind])
    if num_layers is not None:
        config["num_hidden_layers"] = num_layers
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config, image_size=224, patch_size=14, hidden_act="gelu"))
    return {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}


def comfy_clip_vision(kind: str = "vit-h", seed: int = 0, num_layers: int | None = None, tmp_dir: Path | None = None):
    """A real ComfyUI ClipVisionModel with random weights; fewer layers keep fast tests fast.

    ComfyUI picks its vision config from a JSON file, so a shortened copy of the stock one is
    written when num_layers is given.
    """
    import json
    import tempfile

    import comfy.clip_vision

    stock = Path(comfy.clip_vision.__file__).parent / {"vit-h": "clip_vision_config_h.json", "vit-bigg": "clip_vision_config_g.json", "vit-l": "clip_vision_config_vitl.json"}[kind]
    config = json.loads(stock.read_text())
    if num_layers is not None:
        config["num_hidden_layers"] = num_layers
    directory = Path(tmp_dir or tempfile.mkdtemp())
    path = directory / f"clip_vision_{kind}_{num_layers}.json"
    path.write_text(json.dumps(config))
    clip = comfy.clip_vision.ClipVisionModel(str(path))
    randomize_(clip.model, seed)
    return clip


def tiny_controlnet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A ControlNet for the tiny UNet in the original `control_model.*` layout ControlNetLoader reads."""
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in TINY_UNET_CONFIG.items() if k not in ("out_channels", "transformer_depth_output", "legacy")}
    control = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    return {f"control_model.{k}": v for k, v in randomize_(control, seed).state_dict().items()}


def lora_state_dict(model_patcher, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA touching every linear layer of the UNet's transformer blocks.

    ComfyUI accepts each layer under its LDM name and its diffusers name; kohya's SD1.5 LoRAs
    use the diffusers ones (lora_unet_down_blocks_0_attentions_0_...), so only those are written.
    """
    import comfy.lora

    r = Randn(seed)
    weights = model_patcher.model.state_dict()
    kohya = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")
    lora = {}
    for lora_key, weight_key in comfy.lora.model_lora_keys_unet(model_patcher.model, {}).items():
        if not lora_key.startswith(kohya) or "transformer_blocks" not in lora_key or weights[weight_key].ndim != 2:
            continue
        out_dim, in_dim = weights[weight_key].shape
        lora[f"{lora_key}.lora_down.weight"] = r(rank, in_dim, scale=1 / math.sqrt(in_dim))
        lora[f"{lora_key}.lora_up.weight"] = r(out_dim, rank, scale=1 / math.sqrt(rank))
        lora[f"{lora_key}.alpha"] = torch.tensor(float(rank))
    return lora


def meta_model(architecture: str):
    """A ComfyUI ModelPatcher of the full SD1.5 or SDXL architecture on the meta device.

    Shapes without memory: enough to see which layers a patch registers on, for SDXL too.
    Returns (diffusers UNet on meta, ComfyUI ModelPatcher, ComfyUI unet config).
    """
    import comfy.model_detection
    import comfy.model_patcher
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        reference = UNet2DConditionModel(**DIFFUSERS_UNET_CONFIGS[architecture])
    unet_config = comfy.model_detection.unet_config_from_diffusers_unet(reference.state_dict())
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="meta")
    cpu = torch.device("cpu")
    return reference, comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), unet_config
