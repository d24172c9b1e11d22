"""Image encoders for training: the CLIP vision files of models/clip_vision, or OpenCLIP checkpoints.

Both give the two outputs IP-Adapters read (`IMAGE_EMBEDS` in ipadapter_core/encoders.py: the projected pooled
embedding; `PENULTIMATE`: all tokens of the second-to-last layer), in eval mode, frozen.
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import read_weights_file
from ..encoder_files import TRANSFORMERS_LAYER_KEY
from ..encoders import IMAGE_EMBEDS, PENULTIMATE, PENULTIMATE_LAYER, encoder_reading
from ..errors import IPAdapterError
from ..preprocess import CLIP_MEAN, CLIP_STD



class ImageEncoder(nn.Module, metaclass=abc.ABCMeta):
    """pixels (B, 3, S, S), CLIP-normalised -> the requested output; one subclass per model library."""

    def __init__(self, image_size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        super().__init__()
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    @abc.abstractmethod
    def features(self, pixels: torch.Tensor, output: str) -> torch.Tensor:
        """IMAGE_EMBEDS: (B, width); PENULTIMATE: (B, tokens, width)."""

    @abc.abstractmethod
    def width(self, output: str) -> int:
        """The width of that output, checked against the adapter before training."""


class TransformersImageEncoder(ImageEncoder):
    def __init__(self, model: nn.Module):
        super().__init__(model.config.image_size)
        self.model = model

    def features(self, pixels: torch.Tensor, output: str) -> torch.Tensor:
        result = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=output == PENULTIMATE)
        return result.image_embeds if output == IMAGE_EMBEDS else result.hidden_states[PENULTIMATE_LAYER]

    def width(self, output: str) -> int:
        return self.model.config.projection_dim if output == IMAGE_EMBEDS else self.model.config.hidden_size


class OpenClipImageEncoder(ImageEncoder):
    """OpenCLIP's visual tower; the penultimate block's output is read with a forward hook."""

    def __init__(self, visual: nn.Module):
        config = getattr(visual, "preprocess_cfg", {}) or {}
        size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
        super().__init__(size, config.get("mean", CLIP_MEAN), config.get("std", CLIP_STD))
        self.visual = visual

    def features(self, pixels: torch.Tensor, output: str) -> torch.Tensor:
        dtype = next(self.visual.parameters()).dtype
        if output == IMAGE_EMBEDS:
            return self.visual(pixels.to(dtype))
        captured = []
        blocks = self.visual.transformer.resblocks
        handle = blocks[PENULTIMATE_LAYER].register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            self.visual(pixels.to(dtype))
        finally:
            handle.remove()
        hidden = captured[0]
        if not getattr(self.visual.transformer, "batch_first", True):
            hidden = hidden.transpose(0, 1)
        return hidden

    def width(self, output: str) -> int:
        return self.visual.output_dim if output == IMAGE_EMBEDS else self.visual.transformer.width


def load_image_encoder(path: str, open_clip_model: str = "") -> ImageEncoder:
    """A transformers CLIP vision file/folder, or with open_clip_model (e.g. "ViT-H-14") an OpenCLIP checkpoint."""
    source = Path(path)
    if not source.exists():
        raise IPAdapterError(f"image_encoder {source} does not exist; give a CLIP vision file from models/clip_vision, a transformers folder, or an OpenCLIP checkpoint with open_clip_model.")
    if open_clip_model:
        return load_open_clip(source, open_clip_model)
    from transformers import CLIPVisionModelWithProjection

    if source.is_dir():
        model = CLIPVisionModelWithProjection.from_pretrained(str(source))
    else:
        weights = read_weights_file(source)
        if any(key.startswith("visual.") for key in weights):
            raise IPAdapterError(f"{source.name} is an OpenCLIP checkpoint; set open_clip_model to its architecture name (e.g. ViT-H-14).")
        config = vision_config_from_weights(weights, source.name)
        model = CLIPVisionModelWithProjection(config)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [key for key in missing if not key.endswith("position_ids")]
        if missing or unexpected:
            raise IPAdapterError(f"{source.name} is not a CLIP vision model with projection (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return TransformersImageEncoder(model.eval().requires_grad_(False))


def vision_config_from_weights(weights: dict[str, torch.Tensor], name: str):
    from transformers import CLIPVisionConfig

    try:
        patch = weights["vision_model.embeddings.patch_embedding.weight"]
        positions = weights["vision_model.embeddings.position_embedding.weight"].shape[0]
        projection = weights["visual_projection.weight"]
    except KeyError as error:
        raise IPAdapterError(f"{name} is not a CLIP vision model with projection in transformers' layout (no {error.args[0]}).") from error
    width = patch.shape[0]
    layers = 1 + max(int(m.group(1)) for key in weights if (m := TRANSFORMERS_LAYER_KEY.match(key)))
    known = encoder_reading(PENULTIMATE, width)  # heads and activation are not in the weights
    grid = round((positions - 1) ** 0.5)
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=weights["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_attention_heads=known.heads if known is not None and known.heads else max(1, width // 64),
        num_hidden_layers=layers,
        projection_dim=projection.shape[0],
        patch_size=patch.shape[-1],
        image_size=grid * patch.shape[-1],
        hidden_act=known.activation if known is not None else "gelu",
    )


def load_open_clip(path: Path, model_name: str) -> ImageEncoder:
    try:
        import open_clip
    except ImportError as error:
        raise IPAdapterError("OpenCLIP encoders need open_clip_torch: pip install -r requirements-train.txt") from error
    model = open_clip.create_model(model_name, pretrained=str(path), load_weights=True) if path.is_file() else None
    if model is None:
        raise IPAdapterError(f"OpenCLIP checkpoint {path} must be a file.")
    return OpenClipImageEncoder(model.visual.eval().requires_grad_(False))
