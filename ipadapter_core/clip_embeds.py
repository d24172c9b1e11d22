"""CLIP embeddings before the adapter's projection: what the leading pack's EMBEDS sockets carry.

ComfyUI_IPAdapter_plus encodes references to the encoder output an adapter reads (pooled
image_embeds for base adapters, penultimate hidden states for plus and full-face), combines
and saves them in that form (`.ipadpt`: one tensor written with torch.save), and projects them
with the adapter only when applying. These functions keep that form so converted workflows
combine, save and load the same tensors; `project_clip_embeds` turns them into an ImagePrompt.
`.ipadpt` files are read with `weights_only=True`: a plain tensor loads, anything that would
need code to unpickle is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .adapter import IPAdapterModel
from .encoding import Encoder, build_prompt, check_feature_width, combine_features
from .errors import IPAdapterError
from .image_prompt import ImagePrompt
from .preprocess import CLIP_MEAN, CLIP_STD, clip_pixels
from .variants import IMAGE_EMBEDS, AdapterSpec
from .weight_files import FileDamaged, NeedsCode, UnsupportedFormat, load_pickle_weights, regular_file_size

EXTENSION = ".ipadpt"
EMBEDS_COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average", "max", "min")


def pixel_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A MASK (H, W) or (B, H, W) as the encoder's square: centre crop, then resize to `size`."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise IPAdapterError(f"mask must be a MASK (height, width) or a batch of them; got shape {tuple(mask.shape)}.")
    height, width = mask.shape[1:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = mask[:, None, top : top + side, left : left + side].float()
    if side != size:
        square = F.interpolate(square, size=(size, size), mode="bicubic", antialias=True)
    return square


def encode_clip_embeds(
    spec: AdapterSpec,
    images: torch.Tensor,
    encode: Encoder,
    weight: float = 1.0,
    mask: torch.Tensor | None = None,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds × weight, negative embeds) of the encoder output `spec` reads, one row per image.

    The mask multiplies the normalised pixels, so masked-out areas read as the dataset mean.
    Negative embeds are what the adapter's unconditional pass uses: zeros for pooled embeddings,
    the encoder's answer to all-zero pixels for hidden states (as the reference pipeline does).
    """
    pixels = clip_pixels(images, size, mean, std)
    if mask is not None:
        pixels = pixels * pixel_mask(mask, size).to(pixels.device, pixels.dtype)
    features = encode(pixels)
    check_feature_width(spec, features)
    if spec.encoder_output == IMAGE_EMBEDS:
        negative = torch.zeros_like(features)
    else:
        negative = encode(torch.zeros(1, 3, size, size, device=pixels.device))
    return (features * weight).cpu(), negative.cpu()


def combine_clip_embeds(embeds: Sequence[torch.Tensor], method: str) -> torch.Tensor:
    """Several embeds (each one or more rows) as one: concat keeps every row, the others merge them into one.

    add, subtract (first row minus the mean of the others), average and norm average (each row
    scaled to unit length first) are the combine methods of Encode Image Prompt; max and min
    are element-wise.
    """
    if method not in EMBEDS_COMBINE_METHODS:
        raise IPAdapterError(f"Unknown method {method!r}; choose one of {', '.join(EMBEDS_COMBINE_METHODS)}.")
    shapes = {tuple(e.shape[1:]) for e in embeds}
    if len(shapes) != 1:
        raise IPAdapterError(
            f"Embeds of different shapes cannot be combined ({', '.join(str(s) for s in sorted(shapes))}); "
            "encode all of them with the same adapter."
        )
    rows = torch.cat([e.float() for e in embeds])
    if method == "max":
        return rows.max(dim=0, keepdim=True).values
    if method == "min":
        return rows.min(dim=0, keepdim=True).values
    return combine_features(rows, method)


def check_embeds(spec: AdapterSpec, embeds: torch.Tensor, name: str) -> torch.Tensor:
    """Embeds of the shape the adapter reads: (rows, width) pooled or (rows, tokens, width) hidden states."""
    pooled = spec.encoder_output == IMAGE_EMBEDS
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != (2 if pooled else 3) or not embeds.is_floating_point():
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        kind = "(images, width) pooled embeddings" if pooled else "(images, tokens, width) hidden states"
        raise IPAdapterError(
            f"The {spec.description} reads {kind}, but {name} has shape {shape}. Encode the embeds with the same "
            "adapter (or one of the same kind) that applies them."
        )
    check_feature_width(spec, embeds)
    return embeds.float()


def project_clip_embeds(
    adapter: IPAdapterModel,
    embeds: torch.Tensor,
    negative: torch.Tensor | None = None,
    encode_zeros: Callable[[], torch.Tensor] | None = None,
) -> ImagePrompt:
    """An ImagePrompt from embeds: every row a reference (concatenated when applied).

    negative: the unconditional embeds, one row or any number (the last repeats, extra rows are
    dropped, as the leading pack does); by default zeros for pooled embeddings, and for hidden
    states `encode_zeros()`, the encoder's answer to all-zero pixels.
    """
    spec = adapter.spec
    embeds = check_embeds(spec, embeds, "embeds")
    if negative is None:
        if spec.encoder_output == IMAGE_EMBEDS:
            negative = torch.zeros_like(embeds[:1])
        elif encode_zeros is None:
            raise IPAdapterError(
                f"The {spec.description} needs negative embeds for its unconditional tokens: connect negative_embeds "
                f"(the second output of Encode CLIP Embeds) or a CLIP vision model ({spec.encoder_name})."
            )
        else:
            negative = encode_zeros()
    negative = check_embeds(spec, negative, "negative_embeds").to(embeds.device)
    rows = embeds.shape[0]
    if negative.shape[0] < rows:
        negative = torch.cat([negative, negative[-1:].expand(rows - negative.shape[0], *negative.shape[1:])])
    return build_prompt(adapter, embeds, negative[:rows])


def save_clip_embeds(embeds: torch.Tensor, path: str | Path) -> Path:
    """One tensor, written as the leading pack writes `.ipadpt` files, so both packs read it."""
    if not isinstance(embeds, torch.Tensor):
        raise IPAdapterError(f"Expected CLIP embeds to save, got {type(embeds).__name__}; connect Encode CLIP Embeds' output.")
    path = Path(path)
    torch.save(embeds.detach().cpu().float().contiguous(), str(path))
    return path


def load_clip_embeds(path: str | Path) -> torch.Tensor:
    """A `.ipadpt` file as a float tensor; files that need code to unpickle are refused, not run."""
    path = Path(path)
    size = regular_file_size(path, f"Put the {EXTENSION} file in ComfyUI's input folder.", "CLIP embeds", "Save the embeds again.")
    try:  # the checks every pickle-based weight file gets: decided from the file's bytes, never run
        embeds = load_pickle_weights(path, size)
    except NeedsCode as error:
        raise IPAdapterError(
            f"{path.name} is not a plain tensor file: it holds Python objects ({', '.join(error.names[:4])}) that can only be "
            "loaded by running code, which is refused. Save the embeds again."
        ) from error
    except (FileDamaged, UnsupportedFormat) as error:
        raise IPAdapterError(f"{path.name} could not be read as CLIP embeds ({error}); save the embeds again.") from error
    if not isinstance(embeds, torch.Tensor) or embeds.ndim not in (2, 3) or not embeds.is_floating_point() or embeds.numel() == 0:
        found = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise IPAdapterError(
            f"{path.name} holds {found}, not CLIP embeds (a float tensor of shape (images, width) or (images, tokens, width))."
        )
    return embeds.float()
