"""The "embedded default model": a ComfyUI models folder of random-weight files, built locally.

No weights can be downloaded here, yet shipped workflows must run unchanged on a real server.
So the files carry the names users download (v1-5-pruned-emaonly.safetensors, the ViT-H/14
CLIP vision model, ip-adapter_sd15.safetensors) and the official key layouts, and the stock
loaders (CheckpointLoaderSimple, CLIPVisionLoader) and this pack's loader read them as they
would the real ones. Only the UNet is shrunk (the tiny SD1.5-detected one of random_models),
which keeps a 256x256 image to seconds on a CPU. Weights are fp16 to keep the folder small,
seeds are fixed so every build is identical, and each file is built once and moved into place
only when complete (and, for the checkpoint, verified), so a half-written file is never loaded.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from tools import random_models
from tools.comfy_host import CACHE, import_comfy, import_pack

log = logging.getLogger(__name__)

DEFAULT_TARGET = CACHE / "embedded-models"
CHECKPOINT = "checkpoints/v1-5-pruned-emaonly.safetensors"
CLIP_VISION = "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
IPADAPTER = "ipadapter/ip-adapter_sd15.safetensors"
SEEDS = {"unet": 0, "text_encoder": 1, "vae": 2, "clip_vision": 3, "ipadapter": 4}

# CLIP ViT-L/14's text tower, the SD1.5 text encoder (openai/clip-vit-large-patch14).
CLIP_TEXT_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
# The SD1.x VAE (ldm's AutoencoderKL with first_stage_config's ddconfig), as comfy/sd.py builds it.
SD_VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def build_embedded_models(target_dir: Path = DEFAULT_TARGET) -> Path:
    """Build whatever is missing under target_dir and return it (a ComfyUI `models` folder)."""
    target = Path(target_dir)
    writers: dict[str, Callable[[Path], None]] = {CHECKPOINT: write_checkpoint, CLIP_VISION: write_clip_vision, IPADAPTER: write_ipadapter}
    for relative, write in writers.items():
        path = target / relative
        if path.is_file():
            log.debug("%s exists", path)
            continue
        log.info("Building %s (random weights)", path)
        import_comfy()
        write_atomically(path, write)
    return target


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write (and check) in a hidden folder outside every model folder, then rename into place.

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
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = random_models.randomize_(CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_CONFIG)), SEEDS["text_encoder"])
    text = text_encoder.state_dict()
    # The released checkpoint stores the position ids; recent transformers no longer saves them.
    text["text_model.embeddings.position_ids"] = torch.arange(CLIP_TEXT_CONFIG["max_position_embeddings"]).unsqueeze(0)
    vae = random_models.randomize_(AutoencoderKL(ddconfig=SD_VAE_CONFIG, embed_dim=4), SEEDS["vae"])
    save_file({
        **half(random_models.tiny_unet_state_dict(SEEDS["unet"]), "model.diffusion_model."),
        **half(text, "cond_stage_model.transformer."),
        **half(vae.state_dict(), "first_stage_model."),
    }, str(path))
    verify_checkpoint(path)


def verify_checkpoint(path: Path) -> None:
    """What CheckpointLoaderSimple will do with the file: SD15 model, a text encoder, a working VAE."""
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    family = type(model.model.model_config).__name__
    if family != "SD15" or clip is None or vae is None:
        raise RuntimeError(f"{path.name} loads as {family}, clip={clip}, vae={vae}; expected SD15 with CLIP and VAE")
    pixels = vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    if not (torch.isfinite(pixels).all() and 0 <= pixels.min() and pixels.max() <= 1 and pixels.std() > 0.05):
        raise RuntimeError(f"{path.name}: the VAE decodes a random latent to values outside [0, 1] or to a flat image")


def write_clip_vision(path: Path) -> None:
    """ViT-H/14 in transformers' layout; the stock CLIPVisionLoader (comfy.clip_vision.load) must pick its ViT-H config."""
    import comfy.clip_vision

    save_file(random_models.clip_vision_state_dict("vit-h", seed=SEEDS["clip_vision"], dtype=torch.float16), str(path))
    clip_vision = comfy.clip_vision.load(str(path))
    if clip_vision is None or clip_vision.model.visual_projection.weight.shape != (1024, 1280):
        raise RuntimeError(f"{path.name} does not load as a ViT-H/14 CLIP vision model")


def write_ipadapter(path: Path) -> None:
    """A base SD1.5 adapter with one to_k_ip/to_v_ip pair per cross-attention layer of the tiny UNet.

    The layers come from the pack's own layer map run on the UNet ComfyUI builds from the
    checkpoint's weights, so the adapter matches the model the workflow actually loads.
    """
    import_pack()
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    unet = random_models.tiny_model(SEEDS["unet"]).get_model_object("diffusion_model")
    layer_dims = [(layer.processor_index, layer.inner_dim) for layer in cross_attention_layers(unet)]
    log.info("IP-Adapter layers (processor index, inner dim): %s", layer_dims)
    random_models.save_adapter(random_models.adapter_state_dict("base", layer_dims, seed=SEEDS["ipadapter"], dtype=torch.float16), path)
