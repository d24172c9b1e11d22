"""Sample images during training: fixed references through the inference path, with CFG.

The image prompt is made by `encoding.encode_image_prompt` (the nodes' code: CLIP preprocessing,
projection, unconditional tokens) and the UNet runs with the training processors, whose image
branch is `ipadapter_core/attention.py`; so the samples show what the adapter will do when applied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..adapter import IPAdapterModel
from ..encoding import encode_image_prompt
from .encoders import ImageEncoder
from .models import BaseModel, encode_text, time_ids


@torch.no_grad()
def sample_images(
    base: BaseModel,
    unet: torch.nn.Module,
    encoder: ImageEncoder,
    adapter: IPAdapterModel,
    references: list[Image.Image],
    prompt: str,
    resolution: int,
    steps: int,
    guidance: float,
    seed: int,
    device: torch.device,
    clip_size: int = 0,
) -> list[Image.Image]:
    """Images for the references with CFG on both text and image (the unconditional image tokens of inference)."""
    from diffusers import DDIMScheduler

    spec = adapter.spec
    images = torch.stack([torch.from_numpy(np.asarray(r.convert("RGB"), dtype=np.uint8).copy()).float().div(255) for r in fit(references)])
    image_prompt = encode_image_prompt(
        adapter, images, lambda pixels: encoder.features(pixels.to(device), spec.encoder_output).float(),
        size=clip_size or encoder.image_size, mean=encoder.mean, std=encoder.std,
    )
    count = images.shape[0]
    text_cond, pooled_cond = encode_text(base, [prompt] * count, device)
    text_uncond, pooled_uncond = encode_text(base, [""] * count, device)
    tokens = torch.cat([image_prompt.cond, image_prompt.uncond]).to(device)
    context = (torch.cat([text_cond, text_uncond]), tokens)
    added = None
    if base.family == "sdxl":
        sizes = torch.tensor([[resolution, resolution]] * 2 * count)
        added = {"text_embeds": torch.cat([pooled_cond, pooled_uncond]), "time_ids": time_ids(sizes, torch.zeros_like(sizes), resolution).to(device, pooled_cond.dtype)}
    scheduler = DDIMScheduler.from_config(base.noise_scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    factor = 2 ** (len(base.vae.config.block_out_channels) - 1)
    shape = (count, base.vae.config.latent_channels, resolution // factor, resolution // factor)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        prediction = unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample.float()
        cond, uncond = prediction.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    shift = getattr(base.vae.config, "shift_factor", None) or 0.0
    decoded = base.vae.decode((latents / base.vae.config.scaling_factor + shift).to(base.vae.dtype)).sample.float()
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def fit(references: list[Image.Image]) -> list[Image.Image]:
    """One size for the batch: every reference as a square, as CLIP will see it anyway."""
    side = min(min(r.size) for r in references)
    out = []
    for reference in references:
        width, height = reference.size
        left, top = (width - min(width, height)) // 2, (height - min(width, height)) // 2
        out.append(reference.crop((left, top, left + min(width, height), top + min(width, height))).resize((side, side), Image.BICUBIC))
    return out


def save_grid(references: list[Image.Image], samples: list[Image.Image], path: Path) -> Path:
    """References in the top row, samples below."""
    side = samples[0].size[0]
    grid = Image.new("RGB", (side * len(samples), side * 2))
    for i, (reference, sample) in enumerate(zip(fit(references), samples)):
        grid.paste(reference.convert("RGB").resize((side, side)), (i * side, 0))
        grid.paste(sample, (i * side, side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
