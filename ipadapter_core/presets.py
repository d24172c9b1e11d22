"""Adapter presets (light, standard, plus, ...) resolved by reading the files' weights, not their names.

A preset names a kind of adapter: its projection network and the CLIP encoder it reads. Which
file of models/ipadapter is that kind, and fits the model being patched (SD1.5 or SDXL layers),
is decided from key names and tensor shapes only, so renamed files are found and a misnamed one
is never loaded. Three pairs of official adapters have identical layouts and differ only in their
trained values: light and standard (SD1.5 base, ViT-H), plus and plus face, FaceID plus and
plusv2. Weights cannot tell those apart, so when several files fit, the choice is the user's (the
node's ipadapter_file). The FaceID presets read InsightFace's face embedding (plus ones also
CLIP's view of the face); FaceID and FaceID portrait differ in their tokens per face (4 and 16).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import split_adapter_weights
from .errors import IPAdapterError
from .layer_map import CrossAttentionLayer, family_of
from .encoders import CLIP_VIT_BIGG, CLIP_VIT_H
from .encoders import INSIGHTFACE as INSIGHTFACE_ENCODER
from .variants import AdapterSpec, detect_variant
from .weight_files import load_pickle_weights, read_weights, safetensors_shapes, weight_format

# The encoders' names as AdapterSpec.encoder_name gives them.
VIT_H, VIT_BIGG, INSIGHTFACE = CLIP_VIT_H.name, CLIP_VIT_BIGG.name, INSIGHTFACE_ENCODER.name
AUTO = "auto"  # the ipadapter_file choice that lets the weights decide


@dataclass(frozen=True)
class Preset:
    projection: str  # as AdapterSpec.projection
    encoder: str  # as AdapterSpec.encoder_name
    families: tuple[str, ...]  # model families it exists for
    downloads: tuple[tuple[str, str], ...]  # (family, official file name): a download hint, never used to choose
    tokens: int | None = None  # tokens per reference, where the projection and encoder leave a choice (FaceID 4, portrait 16)

    def matches(self, spec: AdapterSpec) -> bool:
        return spec.projection == self.projection and spec.encoder_name == self.encoder and self.tokens in (None, spec.num_tokens)

    @property
    def reads_clip(self) -> bool:
        """Whether its adapters need a CLIP vision model (all but the face-only FaceID ones)."""
        return self.encoder != INSIGHTFACE

    def same_layout(self, other: Preset) -> bool:
        """Whether files of the two presets have the same weight layout (only their trained values differ)."""
        return (self.projection, self.encoder, self.tokens) == (other.projection, other.encoder, other.tokens)


PRESETS = {
    "light": Preset("linear", VIT_H, ("SD1.5",), (("SD1.5", "ip-adapter_sd15_light_v11.bin"),)),
    "standard": Preset("linear", VIT_H, ("SD1.5", "SDXL"), (("SD1.5", "ip-adapter_sd15.safetensors"), ("SDXL", "ip-adapter_sdxl_vit-h.safetensors"))),
    "vit-G": Preset("linear", VIT_BIGG, ("SD1.5", "SDXL"), (("SD1.5", "ip-adapter_sd15_vit-G.safetensors"), ("SDXL", "ip-adapter_sdxl.safetensors"))),
    "plus": Preset("resampler", VIT_H, ("SD1.5", "SDXL"), (("SD1.5", "ip-adapter-plus_sd15.safetensors"), ("SDXL", "ip-adapter-plus_sdxl_vit-h.safetensors"))),
    "plus face": Preset("resampler", VIT_H, ("SD1.5", "SDXL"),
                        (("SD1.5", "ip-adapter-plus-face_sd15.safetensors"), ("SDXL", "ip-adapter-plus-face_sdxl_vit-h.safetensors"))),
    "full face": Preset("mlp", VIT_H, ("SD1.5",), (("SD1.5", "ip-adapter-full-face_sd15.safetensors"),)),
    "faceid": Preset("face_mlp", INSIGHTFACE, ("SD1.5", "SDXL"), (("SD1.5", "ip-adapter-faceid_sd15.bin"), ("SDXL", "ip-adapter-faceid_sdxl.bin")), tokens=4),
    "faceid plus": Preset("face_plus", VIT_H, ("SD1.5",), (("SD1.5", "ip-adapter-faceid-plus_sd15.bin"),)),
    "faceid plusv2": Preset("face_plus", VIT_H, ("SD1.5", "SDXL"),
                            (("SD1.5", "ip-adapter-faceid-plusv2_sd15.bin"), ("SDXL", "ip-adapter-faceid-plusv2_sdxl.bin"))),
    "faceid portrait": Preset("face_mlp", INSIGHTFACE, ("SD1.5", "SDXL"),
                              (("SD1.5", "ip-adapter-faceid-portrait-v11_sd15.bin"), ("SDXL", "ip-adapter-faceid-portrait_sdxl.bin")), tokens=16),
    "faceid portrait unnorm": Preset("face_resampler", INSIGHTFACE, ("SDXL",), (("SDXL", "ip-adapter-faceid-portrait_sdxl_unnorm.bin"),)),
}


def fits_model(spec: AdapterSpec, layers: Sequence[CrossAttentionLayer]) -> bool:
    """Whether the adapter's layers line up with the model's (what match_adapter would accept)."""
    return {layer.context_dim for layer in layers} == {spec.cross_attention_dim} and {
        layer.processor_index: layer.inner_dim for layer in layers
    } == dict(spec.layer_dims)


def read_adapter_spec(path: str | Path) -> AdapterSpec | None:
    """The adapter a file holds, read from its key names and shapes; None if it is not a supported adapter.

    Cached until the file's size or mtime changes, so scanning the folder again is free.
    """
    path = Path(path)
    stat = path.stat()
    return cached_spec(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def cached_spec(path: str, size: int, mtime_ns: int) -> AdapterSpec | None:
    try:
        shapes = read_adapter_shapes(Path(path))
        weights = split_adapter_weights(meta_tensors(shapes), source=Path(path).name)
        return detect_variant(weights)
    except IPAdapterError as error:
        logging.info("IP-Adapter presets: %s is not a supported adapter (%s)", Path(path).name, str(error)[:200])
        return None


def read_adapter_shapes(path: Path) -> dict:
    """Key -> shape (nested like the file) without reading tensor data, through the checks every weight file gets."""
    return read_weights(path, "IP-Adapter", "Put it in models/ipadapter.", reader=nested_shapes)


def nested_shapes(path: Path, size: int) -> object:
    """The safetensors header, or a memory-mapped pickle's tensors as shapes."""
    if weight_format(path) == "safetensors":
        return safetensors_shapes(path)
    return shapes_of(load_pickle_weights(path, size, mmap=True))


def shapes_of(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return tuple(state.shape)
    if isinstance(state, dict):
        return {key: shapes_of(value) for key, value in state.items()}
    return state


def meta_tensors(shapes: object) -> object:
    if isinstance(shapes, tuple):
        return torch.empty(shapes, device="meta")
    if isinstance(shapes, dict):
        return {key: meta_tensors(value) for key, value in shapes.items()}
    return shapes


def find_preset_adapter(preset: str, layers: Sequence[CrossAttentionLayer], files: Iterable[str | Path]) -> Path:
    """The one file among `files` that is the preset's kind of adapter and fits the model's layers.

    Raises IPAdapterError naming what to download when none fits, and listing the candidates
    when several do (their layouts are identical; the user picks one).
    """
    if preset not in PRESETS:
        raise IPAdapterError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    kind = PRESETS[preset]
    family = family_of({layer.context_dim for layer in layers})
    if family not in kind.families:
        raise IPAdapterError(
            f"There is no {preset} IP-Adapter for {family} models ({preset} exists for {', '.join(kind.families)}); choose another preset."
        )
    fitting, seen = [], []
    for path in map(Path, files):
        spec = read_adapter_spec(path)
        if spec is None:
            continue
        seen.append(f"{path.name} ({spec.description})")
        if kind.matches(spec) and fits_model(spec, layers):
            fitting.append(path)
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        download = dict(kind.downloads).get(family, "the matching adapter")
        found = f" Found there: {'; '.join(seen)}." if seen else " No IP-Adapter was found there."
        raise IPAdapterError(
            f"No IP-Adapter in models/ipadapter is a {preset} adapter for this {family} model ({kind.projection} projection reading "
            f"{kind.encoder}). Download {download} from h94/IP-Adapter into models/ipadapter.{found}"
        )
    twins = [name for name, other in PRESETS.items() if other != kind and other.same_layout(kind)]
    raise IPAdapterError(
        f"{len(fitting)} files in models/ipadapter fit preset {preset!r} for this {family} model: "
        f"{', '.join(sorted(p.name for p in fitting))}. Their weights have the same layout"
        + (f" ({preset} and {' / '.join(twins)} cannot be told apart from weights)" if twins else "")
        + "; choose the file in this node's ipadapter_file."
    )
