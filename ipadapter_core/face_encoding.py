"""Faces -> ImagePrompt for FaceID adapters, with the unconditional tokens the reference uses.

The result is an ordinary ImagePrompt: from here on FaceID goes through the same code as every
CLIP adapter (combining, weights, masks, schedules, the attention patch).
Unconditional tokens, as in the reference pipeline: the projection of a zero face embedding and,
for plus adapters, of CLIP's hidden states for an all-zero pixel tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .adapter import IPAdapterModel
from .encoding import Encoder, check_feature_width, combine_features
from .errors import IPAdapterError
from .face_analysis import Face
from .image_prompt import ImagePrompt
from .preprocess import CLIP_MEAN, CLIP_STD, Normalise, clip_pixels


def require_faceid_adapter(adapter: IPAdapterModel) -> None:
    if not adapter.spec.is_faceid:
        raise IPAdapterError(
            f"This is a {adapter.spec.description}, not a FaceID adapter: it reads CLIP image embeddings, not faces. "
            "Encode its references with Encode Image Prompt, or load a FaceID adapter (ip-adapter-faceid*)."
        )


def check_face_encoder(adapter: IPAdapterModel, has_clip_encoder: bool) -> None:
    """Before any face is analysed: a FaceID adapter, and CLIP vision exactly where the adapter reads it."""
    require_faceid_adapter(adapter)
    spec = adapter.spec
    if spec.needs_clip and not has_clip_encoder:
        raise IPAdapterError(
            f"The {spec.description} also reads CLIP's view of the face: connect clip_vision "
            f"({spec.encoder_file} from models/clip_vision)."
        )


def encode_face_image_prompt(
    adapter: IPAdapterModel,
    faces: Sequence[Face],
    encode: Encoder | None = None,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    combine: str = "concat",
    weights: Sequence[float] | None = None,
    shortcut_scale: float | None = None,
    normalise: Normalise | None = None,
) -> ImagePrompt:
    """Project detected faces; plus adapters also encode the aligned crops with CLIP (`encode`).

    weights: one per face. shortcut_scale: plusv2's shortcut (None: plus v1); other adapters ignore it.
    normalise: the CLIP preprocessing of the crops (preprocess.clip_pixels); the nodes give the host's.
    """
    check_face_encoder(adapter, encode is not None)
    spec = adapter.spec
    if not faces:
        raise IPAdapterError("No faces to encode; connect at least one reference image with a face.")
    embeddings = torch.stack([face.embedding_for(spec.face_embedding) for face in faces])
    clip = clip_uncond = None
    if spec.needs_clip:
        clip = encode(clip_pixels(torch.stack([face.crop for face in faces]), size, mean, std, normalise=normalise))
        check_feature_width(spec, clip)
        clip_uncond = encode(torch.zeros(1, 3, size, size, device=clip.device)).expand_as(clip)
    return project_faces(adapter, embeddings, clip, clip_uncond, combine, weights, shortcut_scale)


def project_faces(
    adapter: IPAdapterModel,
    embeddings: torch.Tensor,
    clip: torch.Tensor | None = None,
    clip_uncond: torch.Tensor | None = None,
    combine: str = "concat",
    weights: Sequence[float] | None = None,
    shortcut_scale: float | None = None,
) -> ImagePrompt:
    """(faces, 512) embeddings (+ CLIP hidden states of their crops) -> ImagePrompt; several faces are
    combined like several CLIP references (portrait adapters concatenate them, as the reference does)."""
    require_faceid_adapter(adapter)
    spec = adapter.spec
    if embeddings.ndim != 2 or embeddings.shape[1] != spec.face_width:
        raise IPAdapterError(f"Face embeddings of shape {tuple(embeddings.shape)}; the {spec.description} reads (faces, {spec.face_width}).")
    if weights is not None and len(weights) != embeddings.shape[0]:
        raise IPAdapterError(f"{len(weights)} weights for {embeddings.shape[0]} faces; give one per face.")
    scale = shortcut_scale if spec.projection == "face_plus" else None

    def project(faces: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        merged = None if hidden is None else combine_features(hidden, combine, weights)
        return adapter.project(combine_features(faces, combine, weights), merged, scale).cpu()

    return ImagePrompt(
        cond=project(embeddings, clip),
        uncond=project(torch.zeros_like(embeddings), clip_uncond),
        adapter_identity=adapter.identity,
        adapter_description=spec.description,
        reference_weights=tuple(weights) if weights is not None and combine == "concat" else None,
    )
