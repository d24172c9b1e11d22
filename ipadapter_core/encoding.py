"""Reference images -> ImagePrompt, with the unconditional tokens the reference uses for CFG."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .adapter import IPAdapterModel
from .encoders import IMAGE_EMBEDS, vision_model_name
from .errors import IPAdapterError
from .image_prompt import ImagePrompt, check_average_weights, counted_mean, weighted_average, weighted_sum
from .preprocess import CLIP_MEAN, CLIP_STD, Normalise, clip_pixels, square_tiles
from .variants import BLACK_IMAGE, ZERO_FEATURES, AdapterSpec

# pixels (B, 3, S, S), normalised -> the encoder output the adapter reads (B, width) or (B, tokens, width)
Encoder = Callable[[torch.Tensor], torch.Tensor]
# (images encoded so far, all images): called after each batch; raising stops the encoding there
Progress = Callable[[int, int], None]
COMBINE_METHODS = ("concat", "average", "norm average", "add", "subtract")
CROP_MODES = ("center", "squash", "tiles")


def require_clip_adapter(spec: AdapterSpec) -> None:
    """FaceID adapters read faces (InsightFace), not CLIP image embeddings of whole references."""
    if spec.is_faceid:
        raise IPAdapterError(
            f"This is a {spec.description}: it reads InsightFace face embeddings, not CLIP image embeddings. "
            "Encode the reference with Encode Face Image Prompt (IP-Adapter) and Load InsightFace instead."
        )


def check_encoder(spec: AdapterSpec, embeds_width: int, hidden_width: int) -> None:
    """Fail before encoding when the CLIP vision model cannot feed this adapter, naming the one that can."""
    if not spec.needs_clip:
        require_clip_adapter(spec)
    width = embeds_width if spec.encoder_output == IMAGE_EMBEDS else hidden_width
    if width == spec.encoder_width:
        return
    given = vision_model_name(embeds_width, hidden_width)
    raise IPAdapterError(
        f"Wrong CLIP vision model for this IP-Adapter: the {spec.description} needs {spec.encoder_name} "
        f"({spec.encoder_output} width {spec.encoder_width}), but {given} gives width {width}. "
        f"Load {spec.encoder_file} from models/clip_vision with the Load CLIP Vision node."
    )


def combine_features(features: torch.Tensor, method: str, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Merge several references' encoder outputs into one before projection (concat keeps them all).

    Weighted: average uses Σ w_i f_i / Σ w_i, add Σ w_i f_i, norm average averages unit-length
    embeddings the same way, subtract is w_0 f_0 minus the mean of the others' w_i f_i over those
    that count. In every mode a reference with weight 0 counts as if it were not there.
    """
    if method == "concat":
        return features
    if method not in COMBINE_METHODS:
        raise IPAdapterError(f"Unknown combine method {method!r}; choose one of {', '.join(COMBINE_METHODS)}.")
    w = torch.tensor(weights if weights is not None else [1.0] * features.shape[0], dtype=features.dtype, device=features.device)
    if method == "average":
        return weighted_average(features, w)
    if method == "norm average":
        return weighted_average(features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12), w)
    if method == "add":
        return weighted_sum(features, w)
    return weighted_sum(features[:1], w[:1]) - counted_mean(features[1:], w[1:])


def parse_weights(text: str, count: int) -> tuple[float, ...] | None:
    """'1, 0.5' -> one weight per reference; empty means all 1. Too few are padded with the last."""
    if not text.strip():
        return None
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError as error:
        raise IPAdapterError(f"image_weights must be numbers separated by commas, like '1, 0.5'; got {text!r}.") from error
    if not values or not all(math.isfinite(value) for value in values):
        raise IPAdapterError(f"image_weights must be finite numbers separated by commas, like '1, 0.5'; got {text!r}.")
    if len(values) > count:
        raise IPAdapterError(f"image_weights has {len(values)} values for {count} reference images; give at most one per image.")
    return tuple(values + [values[-1]] * (count - len(values)))


def encode_in_batches(images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 0, on_progress: Progress | None = None) -> torch.Tensor:
    """encode(images), `batch_size` images at a time (0: all in one call), concatenated.

    Bounds the encoder's activation memory on long animations; on_progress runs between batches,
    where a stop request can end the work.
    """
    if batch_size < 0:
        raise IPAdapterError(f"encode_batch_size is {batch_size}; use 0 (all images at once) or a positive number.")
    total = images.shape[0]
    step = batch_size if 0 < batch_size < total else max(total, 1)  # one call for all, even for none (which encode refuses)
    parts = []
    for first in range(0, max(total, 1), step):
        parts.append(encode(images[first:first + step]))
        if on_progress is not None:
            on_progress(min(first + step, total), total)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def encode_image_prompt(
    adapter: IPAdapterModel,
    images: torch.Tensor,
    encode: Encoder,
    negative_images: torch.Tensor | None = None,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    combine: str = "concat",
    weights: Sequence[float] | None = None,
    crop: str = "center",
    batch_size: int = 0,
    on_progress: Progress | None = None,
    normalise: Normalise | None = None,
) -> ImagePrompt:
    """Project the reference images; by default their tokens are later concatenated (as diffusers does).

    Unconditional tokens, as each reference pipeline makes them (spec.unconditional): the
    projection of zero features (pooled-embedding adapters, SD3.5), of the encoder's output for an
    all-zero pixel tensor (hidden-state UNet adapters), of a black image (Flux), or of the user's
    negative image(s), combined the same way. Timestep-conditioned adapters (SD3.5) keep the
    encoder features instead of tokens: their projection runs at every sampling step.
    crop: "center" crops to a square as the reference does, "squash" resizes without cropping,
    "tiles" encodes square tiles covering wide or tall images, each as a reference.
    batch_size: reference images (with their tiles) encoded per encoder call, 0 for all at once;
    on_progress(done, total) follows the references (see encode_in_batches).
    normalise: the CLIP preprocessing after the checks (preprocess.clip_pixels); the nodes give the host's.
    """
    spec = adapter.spec
    require_clip_adapter(spec)
    if crop not in CROP_MODES:
        raise IPAdapterError(f"Unknown crop mode {crop!r}; choose one of {', '.join(CROP_MODES)}.")
    if combine not in COMBINE_METHODS:
        raise IPAdapterError(f"Unknown combine method {combine!r}; choose one of {', '.join(COMBINE_METHODS)}.")
    if weights is not None and len(weights) != images.shape[0]:
        raise IPAdapterError(f"{len(weights)} image weights for {images.shape[0]} reference images; give one per image.")
    if weights is not None and combine in ("average", "norm average"):
        check_average_weights(weights)

    def pixels(batch: torch.Tensor) -> torch.Tensor:
        if crop == "tiles":
            batch = square_tiles(batch)
        return clip_pixels(batch, size, mean, std, crop=crop != "squash", normalise=normalise)

    def encode_images(batch: torch.Tensor) -> torch.Tensor:
        return encode(pixels(batch))

    features = encode_in_batches(images, encode_images, batch_size, on_progress)
    check_feature_width(spec, features)
    count = features.shape[0]
    if weights is not None:
        weights = [w for w in weights for _ in range(count // images.shape[0])]  # each tile keeps its image's weight
    if negative_images is not None:
        negative = encode_in_batches(negative_images, lambda batch: encode(pixels(batch).to(features.device)), batch_size)
        if negative.shape[0] not in (1, count):
            raise IPAdapterError(
                f"negative_image has {negative.shape[0]} images but image has {count}; give one negative image "
                "or exactly one per reference image."
            )
        negative = negative.expand(count, *negative.shape[1:])
    elif spec.unconditional == ZERO_FEATURES:
        negative = torch.zeros_like(features)
    elif spec.unconditional == BLACK_IMAGE:
        black = clip_pixels(torch.zeros(1, size, size, 3), size, mean, std, normalise=normalise)
        negative = encode(black.to(features.device)).expand(count, *features.shape[1:])
    else:
        negative = encode(torch.zeros(1, 3, size, size, device=features.device)).expand(count, *features.shape[1:])
    reference_weights = tuple(weights) if weights is not None and combine == "concat" else None
    return build_prompt(adapter, combine_features(features, combine, weights), combine_features(negative, combine, weights), reference_weights)


def build_prompt(
    adapter: IPAdapterModel, features: torch.Tensor, negative: torch.Tensor, reference_weights: tuple[float, ...] | None = None
) -> ImagePrompt:
    """Conditional and unconditional encoder features (one row per reference) as an ImagePrompt: projected
    into tokens, or kept as features for timestep-conditioned adapters (projected at every sampling step)."""
    if adapter.spec.timestep_conditioned:
        cond, uncond = features.float().cpu().contiguous(), negative.float().cpu().contiguous()
    else:
        cond, uncond = adapter.project(features).cpu(), adapter.project(negative).cpu()
    return ImagePrompt(
        cond=cond,
        uncond=uncond,
        adapter_identity=adapter.identity,
        adapter_description=adapter.spec.description,
        reference_weights=reference_weights,
    )


def check_feature_width(spec: AdapterSpec, features: torch.Tensor) -> None:
    if features.shape[-1] != spec.encoder_width:
        raise IPAdapterError(
            f"The image encoder produced features of width {features.shape[-1]}, but the {spec.description} "
            f"needs {spec.encoder_name} (width {spec.encoder_width}). Load {spec.encoder_file}."
        )
