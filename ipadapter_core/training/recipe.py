"""The paper's training step: noise a latent, condition on text and image with dropout, regress the noise.

Random draws (timestep, noise, the VAE's latent sample, the dropout draw) are made per optimizer
step for the whole global batch from a generator seeded by (seed, step), and each process takes
its rows. They are therefore the same whatever the number of processes, the per-process batch
or the accumulation split, and a resumed run needs no generator state to continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..encoders import IMAGE_EMBEDS
from .models import BaseModel, encode_text, time_ids

KEEP, DROP_IMAGE, DROP_TEXT, DROP_BOTH = 0, 1, 2, 3


def dropout_codes(uniform: torch.Tensor, image_rate: float, text_rate: float, both_rate: float) -> torch.Tensor:
    """One uniform draw per sample decides: image dropped, text dropped, both, or neither (the reference's order)."""
    codes = torch.full_like(uniform, KEEP, dtype=torch.long)
    codes[uniform < image_rate + text_rate + both_rate] = DROP_BOTH
    codes[uniform < image_rate + text_rate] = DROP_TEXT
    codes[uniform < image_rate] = DROP_IMAGE
    return codes


@dataclass
class StepDraws:
    """Random inputs of one optimizer step for all G samples of the global batch."""

    timesteps: torch.Tensor  # (G,) long
    noise: torch.Tensor  # (G, C, h, w)
    latent_noise: torch.Tensor  # (G, C, h, w): the VAE posterior's sample
    uniform: torch.Tensor  # (G,) dropout draw

    @classmethod
    def make(cls, seed: int, step: int, count: int, latent_shape: tuple[int, ...], num_train_timesteps: int, device: torch.device) -> "StepDraws":
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
        return cls(
            timesteps=torch.randint(0, num_train_timesteps, (count,), generator=generator, device=device),
            noise=torch.randn((count, *latent_shape), generator=generator, device=device),
            latent_noise=torch.randn((count, *latent_shape), generator=generator, device=device),
            uniform=torch.rand((count,), generator=generator, device=device),
        )

    def rows(self, start: int, count: int) -> "StepDraws":
        return StepDraws(*(t[start : start + count] for t in (self.timesteps, self.noise, self.latent_noise, self.uniform)))


@dataclass
class Recipe:
    """The frozen models and the recipe's numbers; `loss` is one micro-batch's contribution."""

    base: BaseModel
    encoder: object  # encoders.ImageEncoder
    encoder_output: str  # IMAGE_EMBEDS or PENULTIMATE
    resolution: int
    image_drop_rate: float = 0.05
    text_drop_rate: float = 0.05
    both_drop_rate: float = 0.05

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        factor = 2 ** (len(self.base.vae.config.block_out_channels) - 1)
        return (self.base.vae.config.latent_channels, self.resolution // factor, self.resolution // factor)

    @torch.no_grad()
    def inputs(self, batch: dict, draws: StepDraws, device: torch.device) -> dict:
        """Everything the trainable part needs, from the frozen models (no graph kept)."""
        vae = self.base.vae
        pixels = batch["pixels"].to(device, vae.dtype)
        posterior = vae.encode(pixels).latent_dist
        latents = (posterior.mean + posterior.std * draws.latent_noise.to(posterior.mean.dtype)).float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
        noisy = self.base.noise_scheduler.add_noise(latents, draws.noise, draws.timesteps)

        codes = dropout_codes(draws.uniform, self.image_drop_rate, self.text_drop_rate, self.both_drop_rate)
        drop_text = (codes == DROP_TEXT) | (codes == DROP_BOTH)
        drop_image = (codes == DROP_IMAGE) | (codes == DROP_BOTH)
        texts = ["" if drop else text for text, drop in zip(batch["text"], drop_text.tolist())]
        text_embeds, pooled = encode_text(self.base, texts, device)

        clip = batch["clip_pixels"].to(device)
        if self.encoder_output == IMAGE_EMBEDS:
            # base: a dropped image is the zero embedding inference uses as the unconditional input
            features = self.encoder.features(clip, self.encoder_output)
            features = torch.where(drop_image.view(-1, 1), torch.zeros_like(features), features)
        else:
            # plus: a dropped image is the zero pixel tensor (a mean-grey image), as at inference
            clip = torch.where(drop_image.view(-1, 1, 1, 1), torch.zeros_like(clip), clip)
            features = self.encoder.features(clip, self.encoder_output)
        added = None
        if self.base.family == "sdxl":
            added = {"text_embeds": pooled, "time_ids": time_ids(batch["original_size"], batch["crop_top_left"], self.resolution).to(device, pooled.dtype)}
        return {"noisy_latents": noisy, "timesteps": draws.timesteps, "text_embeds": text_embeds, "image_features": features.float(),
                "added_cond_kwargs": added, "target": self.target(latents, draws)}

    def target(self, latents: torch.Tensor, draws: StepDraws) -> torch.Tensor:
        if self.base.noise_scheduler.config.prediction_type == "v_prediction":
            return self.base.noise_scheduler.get_velocity(latents, draws.noise, draws.timesteps)
        return draws.noise

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Noise MSE in fp32 whatever the compute dtype."""
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
