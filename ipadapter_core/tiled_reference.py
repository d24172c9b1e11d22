"""A large or wide reference cut into tiles, each tile steering only its own region of the image.

The leading pack's IPAdapterTiled applies one adapter per 256-pixel tile of the reference, each
masked to the area the tile covers, so a reference's left half shapes the left of the result.
The geometry here is that node's: a nearly square reference (aspect 0.75 to 1.33) is centre-
cropped and scaled to 512x512 (2x2 tiles); otherwise the short side becomes 256 and the long side
follows, centre-cropped to at most 4 tiles; tiles overlap evenly to cover the whole width and
height. Resampling is torch's antialiased bicubic (that node uses PIL's Lanczos) and sharpening
is this pack's unsharp mask, so tile pixels differ slightly; tile positions and masks are the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import IPAdapterError
from .preprocess import to_rgb
from .reference_prep import sharpen

TILE = 256
MAX_TILES = 4


def resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return F.interpolate(tensor, size=size, mode="bicubic", antialias=True, align_corners=False)


def center_crop(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = max(0, (tensor.shape[-2] - height) // 2), max(0, (tensor.shape[-1] - width) // 2)
    return tensor[..., top : top + height, left : left + width]


def reference_tiles(
    image: torch.Tensor, mask: torch.Tensor | None = None, sharpening: float = 0.0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(tiles, masks): tile i is (B, 256, 256, 3) and mask i (masks, h, w) is `mask` inside tile i's area, 0 outside.

    mask (the attention mask over the reference, any size; default all ones) is scaled to the
    reference and cut like it; the masks come out at the prepared reference's size (h, w).
    """
    image = to_rgb(image)
    height, width = image.shape[1:3]
    if mask is None:
        mask = torch.ones(1, height, width)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise IPAdapterError(f"attn_mask must be a MASK (height, width) or a batch of them; got shape {tuple(mask.shape)}.")
    pixels = image.movedim(-1, 1)
    masks = resize(mask[:, None].float().to(pixels.device), (height, width))
    ratio = height / width
    if 0.75 < ratio < 1.33:
        side = min(height, width)
        pixels, masks = center_crop(pixels, side, side), center_crop(masks, side, side)
        size = (2 * TILE, 2 * TILE)
    else:
        size = (TILE, int(TILE * width / height)) if height < width else (int(TILE * height / width), TILE)
    pixels = resize(pixels, size).clamp(0, 1)
    masks = resize(masks, size)
    if ratio > MAX_TILES or ratio < 1 / MAX_TILES:
        crop = (TILE, TILE * MAX_TILES) if height < width else (TILE * MAX_TILES, TILE)
        pixels, masks = center_crop(pixels, *crop), center_crop(masks, *crop)
    pixels = sharpen(pixels, sharpening).clamp(0, 1)
    masks = masks[:, 0]
    out_h, out_w = pixels.shape[-2:]
    tiles_x, tiles_y = math.ceil(out_w / TILE), math.ceil(out_h / TILE)
    overlap_x = max(0.0, (tiles_x * TILE - out_w) / max(tiles_x - 1, 1))
    overlap_y = max(0.0, (tiles_y * TILE - out_h) / max(tiles_y - 1, 1))
    tiles, tile_masks = [], []
    for y in range(tiles_y):
        for x in range(tiles_x):
            left, top = int(x * (TILE - overlap_x)), int(y * (TILE - overlap_y))
            window = (slice(top, top + TILE), slice(left, left + TILE))
            tiles.append(pixels[:, :, window[0], window[1]].movedim(1, -1))
            tile_mask = torch.zeros_like(masks)
            tile_mask[:, window[0], window[1]] = masks[:, window[0], window[1]]
            tile_masks.append(tile_mask.clamp(0, 1))
    return tiles, tile_masks
