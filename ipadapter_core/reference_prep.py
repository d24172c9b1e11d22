"""Reference images made square at the encoder's resolution, with control over what is kept.

CLIP sees a centred square; subjects off-centre (a face at the top of a portrait, a product at
the left of a banner) are cut off unless the crop is moved, or the whole image is letterboxed.
Doing it here, visibly, lets users preview exactly what the encoder will get.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import IPAdapterError
from .preprocess import to_rgb

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
CROP_POSITIONS = ("center", "top", "bottom", "left", "right", "pad")
PAD_VALUE = 0.5  # mid-grey: the most neutral letterbox for CLIP (it normalises around ~0.45)
SHARPEN_SIGMA = 1.0  # unsharp-mask radius in output pixels: fine detail lost by downscaling


def prepare_reference(
    image: torch.Tensor,
    size: int = 224,
    interpolation: str = "bicubic",
    crop_position: str = "center",
    sharpening: float = 0.0,
) -> torch.Tensor:
    """(B, H, W, C) in [0, 1] -> (B, size, size, 3): a square crop (or letterbox) resized to `size`.

    top/bottom move the crop along the height of tall images, left/right along the width of
    wide ones; the other axis is always fully used, so they act like center there. The result
    is already square at `size`, so encoding it afterwards neither crops nor resizes again.
    """
    if interpolation not in INTERPOLATIONS:
        raise IPAdapterError(f"Unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}.")
    if crop_position not in CROP_POSITIONS:
        raise IPAdapterError(f"Unknown crop_position {crop_position!r}; choose one of {', '.join(CROP_POSITIONS)}.")
    if size < 1:
        raise IPAdapterError(f"size is {size}; it must be at least 1 (CLIP models use 224).")
    if not 0.0 <= sharpening <= 1.0:
        raise IPAdapterError(f"sharpening is {sharpening}; it must be between 0 and 1.")
    pixels = to_rgb(image).movedim(-1, 1)
    if crop_position == "pad":
        pixels = letterbox(pixels, size, interpolation)
    else:
        pixels = resize(square_crop(pixels, crop_position), (size, size), interpolation)
    return sharpen(pixels, sharpening).clamp(0, 1).movedim(1, -1)


def sharpen(pixels: torch.Tensor, amount: float) -> torch.Tensor:
    """Unsharp mask on (B, C, H, W): restores the fine detail downscaling blurs. 0 changes nothing."""
    if amount <= 0:
        return pixels
    return pixels + amount * (pixels - gaussian_blur(pixels, SHARPEN_SIGMA))


def square_crop(pixels: torch.Tensor, position: str) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    side = min(height, width)
    spare_y, spare_x = height - side, width - side
    top = {"top": 0, "bottom": spare_y}.get(position, spare_y // 2)
    left = {"left": 0, "right": spare_x}.get(position, spare_x // 2)
    return pixels[..., top : top + side, left : left + side]


def letterbox(pixels: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Long side to `size`, then grey bars; resizing first keeps the bars exactly PAD_VALUE."""
    height, width = pixels.shape[-2:]
    scale = size / max(height, width)
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = resize(pixels, target, interpolation)
    top, left = (size - target[0]) // 2, (size - target[1]) // 2
    padding = (left, size - target[1] - left, top, size - target[0] - top)
    return F.pad(pixels, padding, value=PAD_VALUE)


def resize(pixels: torch.Tensor, target: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Antialiased when shrinking, as PIL does, so a downscaled reference does not alias."""
    if tuple(pixels.shape[-2:]) == target:
        return pixels
    if interpolation == "nearest":
        return F.interpolate(pixels, size=target, mode="nearest-exact")
    if interpolation == "area":
        return F.interpolate(pixels, size=target, mode="area")
    return F.interpolate(pixels, size=target, mode=interpolation, align_corners=False, antialias=True)


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian on (B, C, H, W); edges replicate, so any image size works."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = pixels.shape[1]
    out = F.pad(pixels, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
