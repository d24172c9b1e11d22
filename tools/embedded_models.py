"""The "embedded default model": a ComfyUI models folder of random-weight files, built locally.

No weights can be downloaded here, yet shipped workflows must run unchanged on a real server.
So the files carry the names users download (v1-5-pruned-emaonly.safetensors, the ViT-H/14
CLIP vision model, ip-adapter_sd15.safetensors) and the official key layouts, and the stock
loaders (CheckpointLoaderSimple, CLIPVisionLoader) and this pack's loader read them as they
would the real ones. Only the UNets are shrunk (for SD1.5 the tiny one of random_models),
which keeps a 256x256 image to seconds on a CPU. Weights are fp16 to keep the folder small,
seeds are fixed so every build is identical, and each file is built once and moved into place
only when complete (and verified by the stock loader that will read it), so a half-written or
misdetected file is never loaded.

The shipped workflows also need a ControlNet and a LoRA for the tiny UNet, plus adapters (a FaceID
plusv2 one with its in-file LoRA, and InsightFace's buffalo_l pack as tiny ONNX stand-ins written by
tools.tiny_insightface), and an SDXL checkpoint (about 4.3 GB and 3-4 minutes for the whole folder, once).

Flux.1 and SD3.5 Large (their IP-Adapter workflows). The SD3.5 file is a checkpoint as
Comfy-Org's all-in-one sd3.5_large_fp8_scaled ships it, with a 2-block MMDiT (ComfyUI reads the
depth from the width: 2 blocks of 128) and, of its text encoders, only CLIP-L: ComfyUI's SD3
loader builds the encoders present and pads the rest with zeros, so the stock workflow runs
unchanged on it. Flux cannot shrink that far: ComfyUI's detection fixes 24 heads of 128 (width
3072), so the embedded flux1-dev has one double and one single block of the real width (about
0.8 GB), and its text encoder cannot be embedded at all: Flux's loaders (DualCLIPLoader,
checkpoints) always build T5-XXL from a fixed 4.7-billion-parameter config (9.5 GB in fp16).
The embedded Flux therefore reads CLIP-L's 768-wide text tokens (its txt_in is 768 wide, which
ComfyUI reads from the weights) and the browser test runs the Flux workflow with its
DualCLIPLoader swapped for a CLIPLoader of clip_l.safetensors alone; everything else in
that graph runs as shipped. The image encoders are full size, as ComfyUI's loader picks their
fixed configs by layer count: CLIP ViT-L/14 (0.6 GB) and SigLIP so400m/14-384 (0.8 GB).

ComfyUI's SDXL detection does not look at channel_mult, so an SDXL UNet with
channel_mult [1, 1, 1] (all levels 320 wide) but SDXL's transformer depths, text width 2048 and
ADM input 2816 loads as SDXL at a tenth of the size. Its text encoders cannot shrink (ComfyUI builds
CLIP-L and the 32-layer CLIP-G from fixed configs), so that file is large (~2.3 GB) but built once.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ipadapter_core.encoders import CLIP_VIT_H, CLIP_VIT_L
from ipadapter_core.encoders import SIGLIP as SIGLIP_ENCODER
from tools import random_models
from tools.comfy_host import CACHE, import_comfy, import_pack

log = logging.getLogger(__name__)

DEFAULT_TARGET = CACHE / "embedded-models"
CHECKPOINT = "checkpoints/v1-5-pruned-emaonly.safetensors"
CLIP_VISION = f"clip_vision/{CLIP_VIT_H.file}"
IPADAPTER = "ipadapter/ip-adapter_sd15.safetensors"
IPADAPTER_PLUS = "ipadapter/ip-adapter-plus_sd15.safetensors"
CONTROLNET = "controlnet/control_v11p_sd15_canny_fp16.safetensors"
LORA = "loras/add_detail.safetensors"
SDXL_CHECKPOINT = "checkpoints/sd_xl_base_1.0.safetensors"
IPADAPTER_PLUS_SDXL = "ipadapter/ip-adapter-plus_sdxl_vit-h.safetensors"
IPADAPTER_FACEID = "ipadapter/ip-adapter-faceid-plusv2_sd15.bin"
INSIGHTFACE_DETECTION = "insightface/models/buffalo_l/det_10g.onnx"
INSIGHTFACE_RECOGNITION = "insightface/models/buffalo_l/w600k_r50.onnx"
FLUX_UNET = "diffusion_models/flux1-dev.safetensors"
FLUX_CLIP_L = "text_encoders/clip_l.safetensors"
FLUX_VAE = "vae/ae.safetensors"
CLIP_VISION_L = f"clip_vision/{CLIP_VIT_L.file}"
IPADAPTER_FLUX = "ipadapter/flux-ip-adapter-v2.safetensors"
SD35_CHECKPOINT = "checkpoints/sd3.5_large_fp8_scaled.safetensors"
SIGLIP = f"clip_vision/{SIGLIP_ENCODER.file}"
IPADAPTER_SD35 = "ipadapter/sd3.5-large-ip-adapter.bin"
SEEDS = {"unet": 0, "text_encoder": 1, "vae": 2, "clip_vision": 3, "ipadapter": 4, "ipadapter_plus": 5, "controlnet": 6, "lora": 7,
         "sdxl_unet": 8, "sdxl_clip_l": 9, "sdxl_clip_g": 10, "sdxl_vae": 11, "ipadapter_plus_sdxl": 12, "ipadapter_faceid": 13, "flux": 14,
         "flux_clip_l": 15, "flux_vae": 16, "clip_vision_l": 17, "ipadapter_flux": 18, "sd35": 19, "sd35_clip_l": 20, "sd35_vae": 21, "siglip": 22,
         "ipadapter_sd35": 23}

# CLIP ViT-L/14's text tower, the SD1.5 text encoder (openai/clip-vit-large-patch14) and SDXL's first one.
CLIP_TEXT_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
# OpenCLIP ViT-bigG/14's text tower, SDXL's second text encoder (the configuration ComfyUI ships for it).
CLIP_G_TEXT_CONFIG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                          num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
# The SD1.x VAE (ldm's AutoencoderKL with first_stage_config's ddconfig), as ComfyUI builds it; SDXL's has the same shapes.
SD_VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
# SDXL's UNet with every level at 320 channels: what ComfyUI's model detection reads is unchanged.
SMALL_SDXL_UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1],
    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True, context_dim=2048,
    num_classes="sequential", adm_in_channels=2816, legacy=False,
)


# Flux.1 [dev] as ComfyUI detects it (24 heads of 128, axes 16/56/56), 1 double and 1 single block,
# text tokens from CLIP-L (see the module docstring).
SMALL_FLUX_UNET_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=768, hidden_size=3072, mlp_ratio=4.0,
                              num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
# SD3.5 Large's MMDiT as ComfyUI detects it, 2 blocks wide 128: RMS QK-norm, T5-wide context, CLIP-L+G pooled vector.
SMALL_SD35_UNET_CONFIG = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=2048,
                              context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
                              num_patches=96 * 96, pos_embed_max_size=96, qk_norm="rms", pos_embed_scaling_factor=None, x_block_self_attn_layers=[])
# The 16-channel VAE of Flux.1 and SD3.x (ldm layout, no quant convolutions).
FLUX_VAE_CONFIG = {**SD_VAE_CONFIG, "z_channels": 16}


def writers() -> dict[str, Callable[[Path], None]]:
    """Every embedded model file (path inside the models folder) and the function that writes it."""
    return {
        CHECKPOINT: write_checkpoint, CLIP_VISION: write_clip_vision, IPADAPTER: write_ipadapter, IPADAPTER_PLUS: write_ipadapter_plus,
        CONTROLNET: write_controlnet, LORA: write_lora, SDXL_CHECKPOINT: write_sdxl_checkpoint, IPADAPTER_PLUS_SDXL: write_ipadapter_plus_sdxl,
        IPADAPTER_FACEID: write_ipadapter_faceid, INSIGHTFACE_DETECTION: write_insightface_detection, INSIGHTFACE_RECOGNITION: write_insightface_recognition,
        FLUX_UNET: write_flux_unet, FLUX_CLIP_L: write_flux_clip_l, FLUX_VAE: write_flux_vae, CLIP_VISION_L: write_clip_vision_l,
        IPADAPTER_FLUX: write_ipadapter_flux, SD35_CHECKPOINT: write_sd35_checkpoint, SIGLIP: write_siglip, IPADAPTER_SD35: write_ipadapter_sd35,
    }


def files_used_by(*ui_workflows: dict) -> list[str]:
    """The embedded model files the workflows name in a widget (a loader's file choice), as paths inside the models folder."""
    named = {value for workflow in ui_workflows for node in workflow.get("nodes", [])
             for value in (node.get("widgets_values") if isinstance(node.get("widgets_values"), list) else []) if isinstance(value, str)}
    return [relative for relative in writers() if Path(relative).name in named]


def build_embedded_models(target_dir: Path = DEFAULT_TARGET, only: Iterable[str] | None = None) -> Path:
    """Build whatever is missing under target_dir and return it (a ComfyUI `models` folder).

    only: the files to build (paths inside the models folder, e.g. from files_used_by); default all.
    """
    target = Path(target_dir)
    wanted = writers() if only is None else {relative: writers()[relative] for relative in only}
    for relative, write in wanted.items():
        path = target / relative
        if path.is_file():
            log.debug("%s exists", path)
            continue
        log.info("Building %s (random weights)", path)
        import_comfy()
        write_atomically(path, write)
    return target


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write (and check) in a hidden folder beside the model's folder, then rename into place.

    A server listing models/ meanwhile, or a second builder running at the same time, sees
    either no file or a complete one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parents[1], prefix=".building-") as staging:
        staged = Path(staging) / path.name
        write(staged)
        os.replace(staged, path)
    log.info("Wrote %s (%.0f MB)", path, path.stat().st_size / 2**20)


def half(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def write_checkpoint(path: Path) -> None:
    """SD1.5 in the original LDM layout: model.diffusion_model / cond_stage_model / first_stage_model."""
    text = clip_l_state_dict(SEEDS["text_encoder"])
    # The released checkpoint stores the position ids; recent transformers no longer saves them.
    text["text_model.embeddings.position_ids"] = torch.arange(CLIP_TEXT_CONFIG["max_position_embeddings"]).unsqueeze(0)
    save_file({
        **half(random_models.tiny_unet_state_dict(SEEDS["unet"]), "model.diffusion_model."),
        **half(text, "cond_stage_model.transformer."),
        **half(vae_state_dict(SEEDS["vae"]), "first_stage_model."),
    }, str(path))
    verify_checkpoint(path, "SD15")


def clip_l_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """CLIP-L's text tower keyed `text_model.*` as in the released checkpoints (transformers 5 drops that prefix)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text = random_models.randomize_(CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_CONFIG)), seed).state_dict()
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in text.items()}


def vae_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return random_models.randomize_(AutoencoderKL(ddconfig=SD_VAE_CONFIG, embed_dim=4), seed).state_dict()


def verify_checkpoint(path: Path, family: str, latent_channels: int = 4) -> None:
    """What CheckpointLoaderSimple will do with the file: the right model family, a text encoder, a working VAE."""
    import comfy.sd

    with LoaderWarnings() as warnings:  # ComfyUI only warns about missing or unexpected weights, and runs on
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    if warnings.messages:
        raise RuntimeError(f"{path.name}: ComfyUI's loader warned: {' | '.join(m[:300] for m in warnings.messages)}")
    detected = type(model.model.model_config).__name__
    if detected != family or clip is None or vae is None:
        raise RuntimeError(f"{path.name} loads as {detected}, clip={clip}, vae={vae}; expected {family} with CLIP and VAE")
    verify_vae(path, vae, latent_channels)


def verify_vae(path: Path, vae, latent_channels: int) -> None:
    pixels = vae.decode(torch.randn(1, latent_channels, 8, 8, generator=torch.Generator().manual_seed(0)))
    if not (torch.isfinite(pixels).all() and 0 <= pixels.min() and pixels.max() <= 1 and pixels.std() > 0.05):
        raise RuntimeError(f"{path.name}: the VAE decodes a random latent to values outside [0, 1] or to a flat image")


class LoaderWarnings(logging.Handler):
    """Collects the warnings ComfyUI logs while loading (weights missing, unexpected or ignored)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "LoaderWarnings":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        logging.getLogger().removeHandler(self)


def write_clip_vision(path: Path) -> None:
    """ViT-H/14 in transformers' layout; the stock CLIPVisionLoader (comfy.clip_vision.load) must pick its ViT-H config."""
    import comfy.clip_vision

    save_file(random_models.clip_vision_state_dict("vit-h", seed=SEEDS["clip_vision"], dtype=torch.float16), str(path))
    clip_vision = comfy.clip_vision.load(str(path))
    if clip_vision is None or clip_vision.model.visual_projection.weight.shape != (1024, 1280):
        raise RuntimeError(f"{path.name} does not load as a ViT-H/14 CLIP vision model")


def layer_dims_of(unet_state_dict: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(processor index, inner dim) of every cross-attention layer, from the pack's own layer map
    run on the UNet ComfyUI builds from these weights: the adapter matches the model a workflow loads."""
    import comfy.sd

    import_pack()
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    unet = comfy.sd.load_diffusion_model_state_dict(unet_state_dict).get_model_object("diffusion_model")
    layer_dims = [(layer.processor_index, layer.inner_dim) for layer in cross_attention_layers(unet)]
    log.info("IP-Adapter layers (processor index, inner dim): %s", layer_dims)
    return layer_dims


def write_ipadapter(path: Path) -> None:
    """A base SD1.5 adapter (ViT-H image embeds, 4 tokens) for the tiny UNet's cross-attention layers."""
    layer_dims = layer_dims_of(random_models.tiny_unet_state_dict(SEEDS["unet"]))
    random_models.save_adapter(random_models.adapter_state_dict("base", layer_dims, seed=SEEDS["ipadapter"], dtype=torch.float16), path)


def write_ipadapter_plus(path: Path) -> None:
    """A plus SD1.5 adapter (Resampler on ViT-H hidden states, 16 tokens) for the tiny UNet."""
    layer_dims = layer_dims_of(random_models.tiny_unet_state_dict(SEEDS["unet"]))
    adapter = random_models.adapter_state_dict("plus", layer_dims, seed=SEEDS["ipadapter_plus"], dtype=torch.float16)
    random_models.save_adapter(adapter, path)


def write_controlnet(path: Path) -> None:
    """A ControlNet for the tiny UNet in the `control_model.*` layout of the released .safetensors files."""
    import comfy.controlnet

    save_file(half(random_models.tiny_controlnet_state_dict(SEEDS["controlnet"]), ""), str(path))
    if comfy.controlnet.load_controlnet(str(path)) is None:
        raise RuntimeError(f"{path.name} does not load as a ControlNet")


def write_lora(path: Path) -> None:
    """A kohya LoRA on every linear layer of the tiny UNet's transformer blocks; every layer must apply to the checkpoint's model."""
    import comfy.lora

    model = random_models.tiny_model(SEEDS["unet"])
    lora = random_models.lora_state_dict(model, seed=SEEDS["lora"])
    patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=False)
    modules = len(lora) // 3  # lora_down, lora_up and alpha per layer
    if modules == 0 or len(patches) != modules:
        raise RuntimeError(f"{path.name}: only {len(patches)} of {modules} LoRA layers match a layer of the tiny UNet")
    save_file(half(lora, ""), str(path))


def small_sdxl_unet_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**SMALL_SDXL_UNET_CONFIG, operations=comfy.ops.disable_weight_init)
    return random_models.randomize_(unet, seed).state_dict()


def sdxl_text_encoders_state_dict() -> dict[str, torch.Tensor]:
    """CLIP-L and CLIP-G as in sd_xl_base_1.0 (conditioner.embedders.0 transformers, .1 OpenCLIP),
    converted by ComfyUI's own checkpoint-saving code, the inverse of what its loader does."""
    import comfy.supported_models
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    clip_g = random_models.randomize_(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT_CONFIG)), SEEDS["sdxl_clip_g"])
    text = {**half(clip_l_state_dict(SEEDS["sdxl_clip_l"]), "clip_l.transformer."), **half(clip_g.state_dict(), "clip_g.transformer.")}
    del clip_g
    saving = comfy.supported_models.SDXL(dict(SMALL_SDXL_UNET_CONFIG))
    return {k: v.contiguous() for k, v in saving.process_clip_state_dict_for_saving(text).items()}


def write_sdxl_checkpoint(path: Path) -> None:
    """sd_xl_base_1.0 layout: model.diffusion_model / conditioner.embedders / first_stage_model, with the small SDXL UNet."""
    save_file({
        **half(small_sdxl_unet_state_dict(SEEDS["sdxl_unet"]), "model.diffusion_model."),
        **sdxl_text_encoders_state_dict(),
        **half(vae_state_dict(SEEDS["sdxl_vae"]), "first_stage_model."),
    }, str(path))
    verify_checkpoint(path, "SDXL")


def write_ipadapter_plus_sdxl(path: Path) -> None:
    """plus SDXL ViT-H: Resampler (1280 wide, 20 heads) on ViT-H hidden states to 16 tokens of width 2048, for the small SDXL UNet."""
    layer_dims = layer_dims_of(small_sdxl_unet_state_dict(SEEDS["sdxl_unet"]))
    adapter = random_models.adapter_state_dict("plus", layer_dims, cross_dim=2048, resampler_heads=20, seed=SEEDS["ipadapter_plus_sdxl"], dtype=torch.float16)
    random_models.save_adapter(adapter, path)


def write_ipadapter_faceid(path: Path) -> None:
    """FaceID plusv2 SD1.5 (face MLP + face perceiver on ViT-H hidden states, LoRA rank 128 on every
    attention layer) for the tiny UNet, as the released .bin."""
    layer_dims = layer_dims_of(random_models.tiny_unet_state_dict(SEEDS["unet"]))
    adapter = random_models.faceid_state_dict("faceid-plus", layer_dims, lora_rank=128, lora_scale=0.3, seed=SEEDS["ipadapter_faceid"], dtype=torch.float16)
    random_models.save_adapter(adapter, path)


def write_insightface_detection(path: Path) -> None:
    """buffalo_l's detector as a tiny ONNX model with SCRFD's inputs and outputs."""
    import onnx

    from tools.tiny_insightface import detection_model

    onnx.save(detection_model(), str(path))


def write_insightface_recognition(path: Path) -> None:
    """buffalo_l's recognition model as a tiny ONNX model with ArcFace's inputs and outputs."""
    import onnx

    from tools.tiny_insightface import recognition_model

    onnx.save(recognition_model(), str(path))


def randomized_state_dict(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    return random_models.randomize_(model, seed).state_dict()


def write_flux_unet(path: Path) -> None:
    """flux1-dev in BFL's key layout (what ComfyUI's own Flux model holds); UNETLoader must detect it as Flux."""
    import comfy.sd
    import comfy.supported_models

    config = comfy.supported_models.Flux(dict(SMALL_FLUX_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}).diffusion_model
    save_file(half(randomized_state_dict(model, SEEDS["flux"]), ""), str(path))
    del model
    with LoaderWarnings() as warnings:
        loaded = comfy.sd.load_diffusion_model(str(path))
    if warnings.messages or type(loaded.model.model_config).__name__ != "Flux" or loaded.model.diffusion_model.params.context_in_dim != 768:
        raise RuntimeError(f"{path.name} does not load as the small Flux.1 [dev]: {warnings.messages[:3]}")


def write_flux_clip_l(path: Path) -> None:
    """CLIP-L's text tower with its projection, as comfyanonymous/flux_text_encoders ships clip_l.safetensors."""
    import comfy.sd

    text = clip_l_state_dict(SEEDS["flux_clip_l"])
    text["text_projection.weight"] = random_models.Randn(SEEDS["flux_clip_l"]).weight(768, 768)
    save_file(half(text, ""), str(path))
    with LoaderWarnings() as warnings:
        clip = comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.FLUX)
    if warnings.messages or clip is None:
        raise RuntimeError(f"{path.name} does not load as a CLIP-L text encoder: {warnings.messages[:3]}")


def flux_vae_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    module = "comfy.ldm.modules.diffusionmodules.model"
    vae = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                             encoder_config={"target": f"{module}.Encoder", "params": FLUX_VAE_CONFIG},
                             decoder_config={"target": f"{module}.Decoder", "params": FLUX_VAE_CONFIG})
    return randomized_state_dict(vae, seed)


def write_flux_vae(path: Path) -> None:
    """Flux's ae.safetensors: the 16-channel VAE; VAELoader must build it with 16 latent channels."""
    import comfy.sd
    import comfy.utils

    save_file(half(flux_vae_state_dict(SEEDS["flux_vae"]), ""), str(path))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    if vae.latent_channels != 16:
        raise RuntimeError(f"{path.name} loads as a VAE with {vae.latent_channels} latent channels, not 16")
    verify_vae(path, vae, 16)


def write_clip_vision_l(path: Path) -> None:
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14's vision tower and projection), what XLabs' Flux adapters read."""
    import comfy.clip_vision

    save_file(random_models.clip_vision_state_dict("vit-l", seed=SEEDS["clip_vision_l"], dtype=torch.float16), str(path))
    clip_vision = comfy.clip_vision.load(str(path))
    if clip_vision is None or clip_vision.model.visual_projection.weight.shape != (768, 1024):
        raise RuntimeError(f"{path.name} does not load as a ViT-L/14 CLIP vision model")


def write_ipadapter_flux(path: Path) -> None:
    """XLabs' flux-ip-adapter-v2 layout (16 tokens of width 4096) for the small Flux's double blocks."""
    config = SMALL_FLUX_UNET_CONFIG
    state = random_models.flux_adapter_state_dict(config["depth"], config["hidden_size"], 4096, tokens=16, seed=SEEDS["ipadapter_flux"], dtype=torch.float16)
    save_file(state, str(path))


def write_sd35_checkpoint(path: Path) -> None:
    """sd3.5_large_fp8_scaled's layout (model.diffusion_model / text_encoders / first_stage_model) with the
    small MMDiT and CLIP-L as its only text encoder; CheckpointLoaderSimple must load it as SD3."""
    import comfy.supported_models

    config = comfy.supported_models.SD3(dict(SMALL_SD35_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    save_file({
        **half(randomized_state_dict(config.get_model({}).diffusion_model, SEEDS["sd35"]), "model.diffusion_model."),
        **half(clip_l_state_dict(SEEDS["sd35_clip_l"]), "text_encoders.clip_l.transformer."),
        **half(flux_vae_state_dict(SEEDS["sd35_vae"]), "first_stage_model."),
    }, str(path))
    verify_checkpoint(path, "SD3", latent_channels=16)


def write_siglip(path: Path) -> None:
    """SigLIP so400m/14-384's vision tower as Comfy-Org's sigclip_vision_384 ships it; CLIPVisionLoader must pick ComfyUI's SigLIP 384 config."""
    import comfy.clip_vision

    model = random_models.siglip_vision_model(seed=SEEDS["siglip"], device="meta")
    save_file(random_models.siglip_state_dict(model, torch.float16, seed=SEEDS["siglip"]), str(path))
    clip_vision = comfy.clip_vision.load(str(path))
    if clip_vision is None or clip_vision.image_size != 384 or len(clip_vision.model.vision_model.encoder.layers) != 27:
        raise RuntimeError(f"{path.name} does not load as a SigLIP so400m/14-384 vision model")


def write_ipadapter_sd35(path: Path) -> None:
    """InstantX's SD3.5-Large-IP-Adapter layout (ip-adapter.bin) for the small MMDiT's joint blocks, a narrower Resampler."""
    config = SMALL_SD35_UNET_CONFIG
    state = random_models.sd3_adapter_state_dict(config["depth"], 64 * config["depth"], dim=256, heads=4, seed=SEEDS["ipadapter_sd35"], dtype=torch.float16)
    torch.save(state, str(path))
