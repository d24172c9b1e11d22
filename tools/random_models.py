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

# The official SD1.5 layer table (the order diffusers numbers attention processors in): processor index n -> inner_dim.
SD15_LAYER_DIMS = [(1, 320), (3, 320), (5, 640), (7, 640), (9, 1280), (11, 1280), (13, 1280), (15, 1280), (17, 1280),
                   (19, 640), (21, 640), (23, 640), (25, 320), (27, 320), (29, 320), (31, 1280)]


def sdxl_layer_dims() -> list[tuple[int, int]]:
    """SDXL: input 4,5 (2 blocks, 640), input 7,8 (10 blocks, 1280), output 0-2 (10, 1280), output 3-5 (2, 640), middle (10, 1280)."""
    blocks = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    return [(2 * i + 1, dim) for i, dim in enumerate(blocks)]


# A tiny UNet that ComfyUI detects as SD1.5 (25.8M parameters): one level of 320 channels, four cross-attention layers.
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

# Small diffusers transformers with the real block structure, for reference comparisons on a CPU.
# Flux: joint_attention_dim stays 4096 because diffusers' Flux loader tells 16-token adapters from
# 4-token ones by their projection's 65536 = 16 x 4096 rows; heads x head width is free (ComfyUI's
# own detection would assume 24 heads of 128, so ComfyUI's model is built from flux_unet_config).
DIFFUSERS_FLUX_CONFIG = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
                             joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(8, 12, 12))
# SD3.5 Large's structure (RMS QK-norm, head width 64, no dual-attention layers) at 3 heads and 3 blocks
# (ComfyUI reads the MMDiT's depth from its width: blocks = heads = width / 64).
DIFFUSERS_SD3_CONFIG = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=64, num_attention_heads=3,
                            joint_attention_dim=256, caption_projection_dim=192, pooled_projection_dim=64, out_channels=16,
                            pos_embed_max_size=16, qk_norm="rms_norm")

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


def flux_adapter_state_dict(
    blocks: int = 19, hidden: int = 3072, width: int = 4096, clip_dim: int = 768, tokens: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """A random XLabs Flux.1 IP-Adapter, flat keys as in its released ip_adapter.safetensors.

    v1 has 4 tokens, v2 16; both read CLIP ViT-L/14 image_embeds (768) and make tokens of the
    T5 width (4096); every double-stream block (19, width 3072) gets a biased key/value pair.
    """
    r = Randn(seed, dtype, device)
    state = {
        "ip_adapter_proj_model.proj.weight": r.weight(tokens * width, clip_dim),
        "ip_adapter_proj_model.proj.bias": r(tokens * width, scale=0.1),
        **r.norm(width, "ip_adapter_proj_model.norm"),
    }
    for i in range(blocks):
        for kv in "kv":
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            state[f"{prefix}.weight"] = r.weight(hidden, width)
            state[f"{prefix}.bias"] = r(hidden, scale=0.1)
    return state


def sd3_adapter_state_dict(
    blocks: int = 38, hidden: int = 2432, head_dim: int = 64, dim: int = 1280, heads: int = 20, depth: int = 4, queries: int = 64,
    clip_dim: int = 1152, timestep_dim: int = 320, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu",
) -> dict[str, dict[str, torch.Tensor]]:
    """A random InstantX SD3.5-Large IP-Adapter in its released nested layout (ip-adapter.bin).

    image_proj: a Resampler (dim 1280, 20 heads, depth 4, 64 queries) over SigLIP so400m hidden
    states (1152) with a timestep embedding (320 sinusoidal -> 1280) modulating every block;
    tokens of the model's width (2432). ip_adapter: per joint block (38) an adaptive norm of the
    tokens driven by that embedding, to_k_ip/to_v_ip and RMS norms (head width 64).
    """
    r = Randn(seed, dtype, device)
    proj = {"latents": r(1, queries, dim, scale=dim**-0.5), "proj_in.weight": r.weight(dim, clip_dim), "proj_in.bias": r(dim, scale=0.1),
            "proj_out.weight": r.weight(hidden, dim), "proj_out.bias": r(hidden, scale=0.1), **r.norm(hidden, "norm_out"),
            "time_embedding.linear_1.weight": r.weight(dim, timestep_dim), "time_embedding.linear_1.bias": r(dim, scale=0.1),
            "time_embedding.linear_2.weight": r.weight(dim, dim), "time_embedding.linear_2.bias": r(dim, scale=0.1)}
    for i in range(depth):
        p = f"layers.{i}"
        proj.update({**r.norm(dim, f"{p}.0.norm1"), **r.norm(dim, f"{p}.0.norm2"),
                     f"{p}.0.to_q.weight": r.weight(heads * 64, dim), f"{p}.0.to_kv.weight": r.weight(2 * heads * 64, dim),
                     f"{p}.0.to_out.weight": r.weight(dim, heads * 64), **r.norm(dim, f"{p}.1.0"),
                     f"{p}.1.1.weight": r.weight(4 * dim, dim), f"{p}.1.3.weight": r.weight(dim, 4 * dim),
                     f"{p}.2.1.weight": r.weight(4 * dim, dim, ) * 0.3, f"{p}.2.1.bias": r(4 * dim, scale=0.1)})
    ip = {}
    for i in range(blocks):
        ip.update({f"{i}.norm_ip.linear.weight": r.weight(2 * hidden, dim) * 0.3, f"{i}.norm_ip.linear.bias": r(2 * hidden, scale=0.1),
                   f"{i}.to_k_ip.weight": r.weight(hidden, hidden), f"{i}.to_v_ip.weight": r.weight(hidden, hidden),
                   f"{i}.norm_q.weight": 1 + r(head_dim, scale=0.1), f"{i}.norm_k.weight": 1 + r(head_dim, scale=0.1),
                   f"{i}.norm_ip_k.weight": 1 + r(head_dim, scale=0.1)})
    return {"image_proj": proj, "ip_adapter": ip}


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


SIGLIP_384_CONFIG = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27, image_size=384,
                         patch_size=14, hidden_act="gelu_pytorch_tanh")  # google/siglip-so400m-patch14-384's vision tower


def siglip_vision_model(seed: int = 0, num_layers: int | None = None, device: str = "cpu"):
    """A random transformers SiglipVisionModel of SigLIP so400m/14-384 (optionally fewer layers).

    device="meta" gives the structure only, for random_state_dict (no 400M-parameter init).
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = dict(SIGLIP_384_CONFIG)
    if num_layers is not None:
        config["num_hidden_layers"] = num_layers
    torch.manual_seed(seed)
    with torch.device(device):
        model = SiglipVisionModel(SiglipVisionConfig(**config))
    return model.eval() if device == "meta" else randomize_(model, seed).eval()


def siglip_state_dict(model, dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys `vision_model.*` as in the released files (transformers 5 saves them without the prefix).

    A model on the meta device gets random_state_dict's values for `seed`.
    """
    state = random_state_dict(model, seed) if next(model.parameters()).is_meta else model.state_dict()
    return {(k if k.startswith("vision_model.") else f"vision_model.{k}"): v.to(dtype).contiguous() for k, v in state.items()}


def random_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """randomize_'s values for a module built on the meta device, without materialising the module."""
    r = Randn(seed)
    names = set(module.state_dict())
    state = {}
    for name, parameter in module.named_parameters():
        shape = parameter.shape
        if parameter.ndim >= 2:
            state[name] = r(*shape, scale=1 / math.sqrt(math.prod(shape[1:])))
        else:
            state[name] = 1 + r(*shape, scale=0.1) if name.endswith("weight") else r(*shape, scale=0.02)
    if names != set(state):
        raise ValueError(f"{type(module).__name__} has persistent buffers random_state_dict cannot make: {sorted(names - set(state))[:5]}")
    return state


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


def flux_unet_config(config: dict) -> dict:
    """ComfyUI's Flux unet_config for a diffusers FluxTransformer2DModel configuration."""
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    return dict(image_model="flux", in_channels=config["in_channels"] // 4, out_channels=config["in_channels"] // 4, vec_in_dim=config["pooled_projection_dim"],
                context_in_dim=config["joint_attention_dim"], hidden_size=hidden, mlp_ratio=4.0, num_heads=config["num_attention_heads"],
                depth=config["num_layers"], depth_single_blocks=config["num_single_layers"], axes_dim=list(config["axes_dims_rope"]),
                theta=10000, patch_size=2, qkv_bias=True, guidance_embed=config["guidance_embeds"])


def diffusers_dit(kind: str, seed: int = 0):
    """A random diffusers FluxTransformer2DModel ("flux") or SD3Transformer2DModel ("sd3")."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(seed)
    if kind == "flux":
        return FluxTransformer2DModel(**DIFFUSERS_FLUX_CONFIG).eval()
    return SD3Transformer2DModel(**DIFFUSERS_SD3_CONFIG).eval()


def sd3_unet_config(config: dict) -> dict:
    """ComfyUI's MMDiT unet_config, as its detection reads it from a diffusers SD3Transformer2DModel's weights."""
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    return dict(in_channels=config["in_channels"], out_channels=config["out_channels"], patch_size=config["patch_size"], depth=hidden // 64, input_size=None,
                adm_in_channels=config["pooled_projection_dim"], num_patches=config["pos_embed_max_size"] ** 2, pos_embed_max_size=config["pos_embed_max_size"],
                context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": config["joint_attention_dim"], "out_features": config["caption_projection_dim"]}},
                qk_norm="rms", pos_embed_scaling_factor=None, x_block_self_attn_layers=[])


def random_comfy_dit(kind: str, seed: int = 0):
    """ComfyUI's own model of DIFFUSERS_FLUX_CONFIG / DIFFUSERS_SD3_CONFIG with random weights, fp32 on
    the CPU: for tests that need no diffusers reference."""
    import comfy.model_patcher
    import comfy.supported_models

    if kind == "flux":
        model_config = comfy.supported_models.Flux(flux_unet_config(DIFFUSERS_FLUX_CONFIG))
    else:
        model_config = comfy.supported_models.SD3(sd3_unet_config(DIFFUSERS_SD3_CONFIG))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    randomize_(model.diffusion_model, seed)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def comfy_dit(kind: str, reference):
    """ComfyUI's model with the diffusers model's weights (converted by ComfyUI's own key map), fp32 on the CPU.

    SD3 is detected from the weights as ComfyUI detects a checkpoint; Flux is built from an
    explicit config, since detection assumes the real 24 heads.
    """
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    state = comfy.model_detection.convert_diffusers_mmdit({k: v.clone() for k, v in reference.state_dict().items()}, "")
    if kind == "flux":
        model_config = comfy.supported_models.Flux(flux_unet_config(DIFFUSERS_FLUX_CONFIG))
    else:
        model_config = comfy.model_detection.model_config_from_unet(state, "")
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(state, "")
    model.diffusion_model.load_state_dict(model_config.process_unet_state_dict(state), strict=True)  # every weight, nothing left over
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
