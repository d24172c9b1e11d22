"""Which CLIP vision file feeds an adapter, decided by the file's weights, not its name.

Encoder files are renamed freely (model.safetensors, pytorch_model.bin, ...) and the official
names are easy to mix up, so the choice reads the architecture from key names and tensor
shapes: only the header of a safetensors file, a memory-mapped view of a pickle (checked first
by weight_files.py, like every file the pack reads). Results are
cached per (path, size, mtime), so listing the folder again costs nothing until a file changes.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .encoders import IMAGE_EMBEDS, fits_encoder, vision_model_name
from .errors import IPAdapterError
from .variants import AdapterSpec
from .weight_files import load_pickle_weights, read_weights, regular_file_size, safetensors_shapes, weight_format

TRANSFORMERS_LAYER_KEY = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
LAYOUTS = (  # (projection key, whether it is stored (hidden, embeds), layer key pattern)
    ("visual_projection.weight", False, TRANSFORMERS_LAYER_KEY),  # transformers
    ("visual.proj", True, re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.")),  # open_clip
)


@dataclass(frozen=True)
class EncoderWidths:
    embeds: int  # width of image_embeds (the projection's output); 0 without a projection (SigLIP)
    hidden: int  # width of the hidden states (penultimate_hidden_states)
    layers: int
    positions: int = 0  # patch positions, read for SigLIP only, whose 384 and 512 px models share widths

    @property
    def name(self) -> str:
        return vision_model_name(self.embeds, self.hidden, self.positions)

    def fits(self, spec: AdapterSpec) -> bool:
        """The adapter needs the encoder it was trained with (both widths), not merely an output of the same width."""
        width = self.embeds if spec.encoder_output == IMAGE_EMBEDS else self.hidden
        return width == spec.encoder_width and fits_encoder(spec.encoder, self.embeds, self.hidden, self.positions)


def widths_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> EncoderWidths | None:
    """None when the keys are neither a CLIP vision model with a projection (in either layout) nor a SigLIP one."""
    for projection_key, transposed, layer_key in LAYOUTS:
        shape = shapes.get(projection_key)
        if shape is None or len(shape) != 2:
            continue
        embeds, hidden = reversed(shape) if transposed else shape
        layers = {int(match.group(1)) for key in shapes if (match := layer_key.match(key))}
        if layers:
            return EncoderWidths(embeds=embeds, hidden=hidden, layers=max(layers) + 1)
    return siglip_widths(shapes)


def siglip_widths(shapes: Mapping[str, tuple[int, ...]]) -> EncoderWidths | None:
    """SigLIP (transformers layout, as ComfyUI loads it): patch embedding with a bias, no class token."""
    positions = shapes.get("vision_model.embeddings.position_embedding.weight")
    norm = shapes.get("vision_model.post_layernorm.weight")
    if positions is None or norm is None or "vision_model.embeddings.patch_embedding.bias" not in shapes or "vision_model.embeddings.class_embedding" in shapes:
        return None
    if len(positions) != 2 or len(norm) != 1:
        return None
    layers = {int(match.group(1)) for key in shapes if (match := TRANSFORMERS_LAYER_KEY.match(key))}
    return EncoderWidths(embeds=0, hidden=norm[0], layers=max(layers) + 1, positions=positions[0]) if layers else None


MISSING = "Put CLIP vision models in ComfyUI's models/clip_vision folder."


def read_encoder_widths(path: str | Path) -> EncoderWidths | None:
    """The file's architecture, cached until its size or mtime changes; None if it is not a readable CLIP vision model."""
    widths, problem = encoder_file_state(path)
    if problem is not None:
        logging.warning("IP-Adapter: skipping %s", problem)
    return widths


def encoder_file_state(path: str | Path) -> tuple[EncoderWidths | None, str | None]:
    """(widths or None, why the file could not be read or None)."""
    path = Path(path)
    try:
        regular_file_size(path, MISSING)
        info = path.stat()
    except (IPAdapterError, OSError) as error:
        return None, str(error)
    return cached_widths(str(path), str(path.resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def cached_widths(path: str, target: str, size: int, mtime_ns: int) -> tuple[EncoderWidths | None, str | None]:
    """path: as listed (messages name it); target, size, mtime: what the answer depends on."""
    try:
        shapes = read_weights(path, "CLIP vision", MISSING, reader=read_shapes)
    except IPAdapterError as error:
        return None, str(error)
    return widths_from_shapes(shapes), None


def read_shapes(path: Path, size: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape without reading tensor data: a safetensors header, or a memory-mapped pickle."""
    if weight_format(path) == "safetensors":
        return safetensors_shapes(path)
    state = load_pickle_weights(path, size, mmap=True)
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))  # {"state_dict": {...}} and similar wrappers, as ComfyUI unwraps them
    if not isinstance(state, dict):
        return {}
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}


def find_encoder(spec: AdapterSpec, files: Iterable[str | Path]) -> Path:
    """The file among `files` that can feed `spec`; the deepest if several fit, then the first given.

    Raises IPAdapterError naming the file to download when none fits.
    """
    if not spec.needs_clip:
        raise IPAdapterError(
            f"The {spec.description} needs no CLIP vision model: load it with Load IP-Adapter, and encode faces with "
            "Encode Face Image Prompt and Load InsightFace."
        )
    fitting, seen, unreadable, others = [], [], [], []
    for path in map(Path, files):
        widths, problem = encoder_file_state(path)
        if problem is not None:
            logging.warning("IP-Adapter: skipping %s", problem)
            unreadable.append(problem)
        elif widths is None:
            others.append(path.name)
        if widths is None:
            continue
        seen.append(f"{path.name} ({widths.name}, {widths.layers} layers)")
        if widths.fits(spec):
            fitting.append((widths.layers, path))
    if not fitting:
        found = f" Found there: {'; '.join(seen)}." if seen else " No CLIP vision model was found there."
        not_encoders = f" Not CLIP vision models: {', '.join(others)}." if others else ""
        skipped = f" Skipped: {' '.join(unreadable)}" if unreadable else ""
        raise IPAdapterError(
            f"No CLIP vision model for the {spec.description} in models/clip_vision. Download {spec.encoder_file} "
            f"({spec.encoder_name}) into models/clip_vision.{found}{not_encoders}{skipped}"
        )
    chosen = max(fitting, key=lambda item: item[0])[1]  # max keeps the first of equal depth
    if len(fitting) > 1:
        logging.info("IP-Adapter: %d CLIP vision files fit the %s; using %s", len(fitting), spec.description, chosen.name)
    return chosen
