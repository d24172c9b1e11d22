"""Negative reference images: what the unconditional pass should steer away from.

The default unconditional tokens come from a zero embedding or a black image, so CFG pushes
results toward "anything but black". With a degraded copy of the reference (noised, blurred or
pixel-shuffled) as the negative, CFG pushes away from that degradation instead, while the
reference's colours and composition stay on both sides; flat grey is the neutral choice.
dissolve and gaussian are the leading pack's (ComfyUI_IPAdapter_plus) IPAdapterNoise types of
those names: random values replacing a `strength` share of the pixel values, and Gaussian noise
of standard deviation `strength` added to the image.
"""

from __future__ import annotations

import torch

from .errors import IPAdapterError
from .preprocess import to_rgb
from .reference_prep import gaussian_blur

NEGATIVE_KINDS = ("noise", "blur", "shuffle", "gray", "dissolve", "gaussian")
BLUR_FRACTION = 1 / 16  # blur sigma as a fraction of the short side: shapes survive, details do not


def negative_image(image: torch.Tensor, kind: str = "noise", strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(B, H, W, C) in [0, 1] -> an RGB image of the same size, `strength` of the way to `kind`.

    Random kinds draw from a CPU generator seeded with `seed`, so a seed gives the same image
    on every machine and device.
    """
    if kind not in NEGATIVE_KINDS:
        raise IPAdapterError(f"Unknown kind {kind!r}; choose one of {', '.join(NEGATIVE_KINDS)}.")
    if not 0.0 <= strength <= 1.0:
        raise IPAdapterError(f"strength is {strength}; it must be between 0 and 1.")
    image = to_rgb(image)
    generator = torch.Generator().manual_seed(seed)
    if kind == "dissolve":
        replaced = torch.rand(image.shape, generator=generator) < strength
        return torch.where(replaced.to(image.device), torch.rand(image.shape, generator=generator).to(image.device), image)
    if kind == "gaussian":
        return (image + torch.randn(image.shape, generator=generator).to(image.device) * strength).clamp(0, 1)
    if kind == "noise":
        target = torch.rand(image.shape, generator=generator).to(image.device)
    elif kind == "blur":
        sigma = max(1.0, min(image.shape[1:3]) * BLUR_FRACTION)
        target = gaussian_blur(image.movedim(-1, 1), sigma).movedim(1, -1)
    elif kind == "shuffle":
        target = shuffle_pixels(image, generator)
    else:
        target = torch.full_like(image, 0.5)
    return torch.lerp(image, target, strength)


def shuffle_pixels(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's pixels (all channels together) in a random order: its colours, none of its shapes."""
    batch, height, width, channels = image.shape
    flat = image.reshape(batch, height * width, channels)
    order = torch.stack([torch.randperm(height * width, generator=generator) for _ in range(batch)]).to(image.device)
    return torch.gather(flat, 1, order[..., None].expand(-1, -1, channels)).reshape(image.shape)
