"""Reference images -> CLIP pixel values, as the IP-Adapter reference pipeline prepares them.

Images arrive as ComfyUI-style float tensors (batch, height, width, channels) in [0, 1].
Two steps: `prepare_rgb` checks and converts what users connect (RGBA, grayscale, NaN, empty or
extreme strips); a Normalise function then does the CLIP preprocessing proper: shortest side to
`size` (bicubic, antialiased), centre crop, quantise to 8-bit levels (the reference works on
uint8 PIL images, so this keeps results comparable), normalise with CLIP's mean and std.
The nodes pass ComfyUI's own `comfy.clip_vision.clip_preprocess` as that function;
`resize_crop_normalise` is the same computation for what runs without ComfyUI (the trainer and
the core's tests), checked bit for bit against the host's in tests/test_encoding.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import IPAdapterError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Resizing the shortest side to 224 first (as the reference does) turns a 1x4096 strip into a
# 224x917504 image (2.4 GB) before the centre crop; beyond this ratio the long side is cropped
# first. Below it, nothing changes.
MAX_ASPECT = 16
MAX_TILES = 16  # square tiles of one reference (crop "tiles"); each is a full encoder pass
# (images (B, H, W, 3) in [0, 1], size, mean, std, crop) -> (B, 3, size, size): comfy.clip_vision.clip_preprocess's signature
Normalise = Callable[[torch.Tensor, int, Sequence[float], Sequence[float], bool], torch.Tensor]


def to_rgb(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Accept RGB, RGBA (alpha dropped, as PIL's convert("RGB") does), grayscale and grayscale+alpha."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise IPAdapterError(f"The {name} must be an IMAGE batch (batch, height, width, channels); got {shape}.")
    if image.shape[0] == 0 or image.shape[1] < 1 or image.shape[2] < 1:
        raise IPAdapterError(f"The {name} is empty ({tuple(image.shape)}); connect an image with at least one pixel.")
    channels = image.shape[-1]
    if channels in (1, 2):
        image = image[..., :1].expand(*image.shape[:-1], 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise IPAdapterError(f"The {name} has {channels} channels; expected RGB (3), RGBA (4) or grayscale (1).")
    image = image.float()
    if not torch.isfinite(image).all():
        raise IPAdapterError(f"The {name} contains NaN or infinite values; check the node that produced it.")
    return image


def clip_pixels(
    image: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop: bool = True,
    normalise: Normalise | None = None,
) -> torch.Tensor:
    """(B, H, W, C) in [0, 1] -> normalised (B, 3, size, size). Without crop the image is squashed.

    normalise: the CLIP preprocessing proper (the host's in the nodes); resize_crop_normalise if None.
    """
    return (normalise or resize_crop_normalise)(prepare_rgb(image, crop), size, mean, std, crop)


def prepare_rgb(image: torch.Tensor, crop: bool = True) -> torch.Tensor:
    """What users connect -> (B, H, W, 3) float RGB, checked; with crop, extreme strips cut to MAX_ASPECT first."""
    pixels = to_rgb(image)
    return limit_aspect(pixels) if crop else pixels


def resize_crop_normalise(image: torch.Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, crop: bool = True) -> torch.Tensor:
    """(B, H, W, 3) RGB in [0, 1] -> (B, 3, size, size): the computation of comfy.clip_vision.clip_preprocess."""
    pixels = image.movedim(-1, 1)
    if pixels.shape[2:] != (size, size):
        if crop:
            scale = size / min(pixels.shape[2:])
            target = (round(scale * pixels.shape[2]), round(scale * pixels.shape[3]))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[2] - size) // 2, (pixels.shape[3] - size) // 2
        pixels = pixels[:, :, top : top + size, left : left + size]
    pixels = (pixels * 255).clamp(0, 255).round() / 255
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def limit_aspect(image: torch.Tensor, max_ratio: int = MAX_ASPECT) -> torch.Tensor:
    """(B, H, W, C): the centre of the long side, at most `max_ratio` times the short side.

    The centre crop keeps only the middle square anyway; this bounds the resize before it.
    """
    height, width = image.shape[1:3]
    short = min(height, width)
    if max(height, width) <= max_ratio * short:
        return image
    keep = max_ratio * short
    if height > width:
        top = (height - keep) // 2
        return image[:, top : top + keep]
    left = (width - keep) // 2
    return image[:, :, left : left + keep]


def square_tiles(image: torch.Tensor) -> torch.Tensor:
    """Cover each image with square tiles along its long side, so nothing is cropped away.

    A 2:1 image gives 2 tiles, a 2.5:1 image 3 evenly spaced overlapping ones; a square
    image gives itself. Tiles of all images are returned as one batch, in order.
    """
    image = to_rgb(image)
    height, width = image.shape[1:3]
    side = min(height, width)
    count = -(-max(height, width) // side)
    if count > MAX_TILES:
        raise IPAdapterError(
            f"The image is {width}x{height}: square tiles would make {count} references (at most {MAX_TILES}). "
            "Crop or resize it first, or choose crop 'center' or 'squash'."
        )
    starts = [round(i * (max(height, width) - side) / max(count - 1, 1)) for i in range(count)]
    if height >= width:
        tiles = [image[:, start : start + side] for start in starts]
    else:
        tiles = [image[:, :, start : start + side] for start in starts]
    return torch.stack(tiles, dim=1).reshape(-1, side, side, 3)
