"""Every training setting, defaulting to the reference recipe (paper + official scripts).

A run is configured by a YAML/JSON file (or a shipped preset's name) and `--key value` flags
that override any key. Unknown keys are errors, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IPAdapterError

PACKAGE = Path(__file__).resolve().parent
PRESETS = PACKAGE / "presets"
ACCELERATE_CONFIGS = PACKAGE / "accelerate_configs"


@dataclass
class TrainConfig:
    # models
    base_model: str = ""  # diffusers folder or single-file checkpoint
    family: str = ""  # sd15 / sdxl; read from a diffusers folder when empty
    base_model_config: str = ""  # diffusers config folder for a single-file base model (offline)
    image_encoder: str = ""  # CLIP vision file (models/clip_vision), transformers folder, or OpenCLIP checkpoint
    open_clip_model: str = ""  # OpenCLIP architecture name (e.g. ViT-H-14) when image_encoder is an OpenCLIP checkpoint
    adapter: str = "base"  # base (ImageProjModel, pooled embedding) or plus (Resampler, penultimate tokens)
    num_tokens: int = 0  # image tokens; 0: 4 for base, 16 for plus
    resampler_dim: int = 0  # plus only; 0: min(text width, 1280)
    resampler_heads: int = 0  # plus only; 0: resampler_dim / 64
    resampler_depth: int = 4
    init_adapter: str = ""  # start from an existing adapter file instead of the paper's initialisation
    # data
    data_json: str = ""  # reference format: JSON list of {"image_file", "text"}
    data_root: str = ""  # folder the image_file paths are relative to
    shards: list[str] = field(default_factory=list)  # webdataset .tar shards (brace ranges allowed)
    epoch_length: int = 0  # webdataset: samples per epoch over all processes (0: not counted)
    skip_bad_samples: bool = False  # broken image / missing field: error naming it (false) or skip it
    resolution: int = 512
    clip_size: int = 0  # CLIP input size; 0: the encoder's own
    num_workers: int = 2
    # recipe
    image_drop_rate: float = 0.05
    text_drop_rate: float = 0.05
    both_drop_rate: float = 0.05
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 0.0  # 0: no clipping
    lr_scheduler: str = "constant"  # diffusers.optimization names: constant, constant_with_warmup, linear, cosine, ...
    lr_warmup_steps: int = 0
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    seed: int = 42
    mixed_precision: str = "no"  # no / fp16 / bf16 (accelerate's autocast; the adapter stays fp32)
    frozen_dtype: str = "auto"  # UNet and text encoders; auto: the mixed-precision dtype
    vae_dtype: str = "auto"  # SDXL's VAE overflows in fp16: its presets use fp32
    encoder_dtype: str = "auto"
    gradient_checkpointing: bool = False
    cpu: bool = False  # force CPU (with torchrun: gloo DDP)
    expected_processes: int = 0  # stop unless exactly this many processes run (0: checked from the launcher)
    # output
    output_dir: str = "output/ipadapter-training"
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3  # 0: keep all
    resume: str = ""  # "latest" or a checkpoint folder
    export_name: str = "ip-adapter.safetensors"
    export_dtype: str = "fp16"
    log_every: int = 10
    tensorboard: bool = True  # when tensorboard is installed
    sample_every: int = 0  # steps between sample images; 0: off
    sample_references: list[str] = field(default_factory=list)  # image files; default: the first dataset images
    sample_count: int = 2
    sample_prompt: str = ""
    sample_steps: int = 30
    sample_guidance: float = 7.5
    progress_bar: bool = True

    @property
    def tokens(self) -> int:
        return self.num_tokens or (4 if self.adapter == "base" else 16)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def read_config_file(name: str) -> dict[str, Any]:
    """A YAML/JSON file, or the name of a shipped preset (`sd15-base`, ...)."""
    path = Path(name)
    if not path.is_file():
        preset = PRESETS / f"{name}.yaml"
        if not preset.is_file():
            raise IPAdapterError(f"Config {name} not found: give a YAML/JSON file or a preset ({', '.join(preset_names())}).")
        path = preset
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise IPAdapterError(f"{path} must hold a mapping of config keys.")
    base = values.pop("preset", None)
    return {**(read_config_file(base) if base else {}), **values}


def parse_value(key: str, text: Any) -> Any:
    """A flag's or file's value converted to the key's type."""
    kind = FIELDS[key].type
    if not isinstance(text, str):
        return list(text) if kind.startswith("list") and isinstance(text, (list, tuple)) else text
    try:
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("list"):
            return [part for part in text.split(",") if part]
    except ValueError as error:
        raise IPAdapterError(f"--{key}: {text!r} is not a valid {kind}.") from error
    return text


def build_config(config_file: str = "", overrides: dict[str, Any] | None = None) -> TrainConfig:
    values = read_config_file(config_file) if config_file else {}
    values.update(overrides or {})
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise IPAdapterError(f"Unknown config key(s): {', '.join(unknown)}. Valid keys: {', '.join(FIELDS)}.")
    config = TrainConfig(**{key: parse_value(key, value) for key, value in values.items()})
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    if not config.base_model:
        raise IPAdapterError("base_model is not set: give a diffusers folder or a checkpoint file (--base_model PATH).")
    if not config.image_encoder:
        raise IPAdapterError("image_encoder is not set: give a CLIP vision file from models/clip_vision (--image_encoder PATH).")
    if bool(config.data_json) == bool(config.shards):
        raise IPAdapterError("Give exactly one data source: data_json (with data_root) or shards (webdataset .tar files).")
    rates = (config.image_drop_rate, config.text_drop_rate, config.both_drop_rate)
    if min(rates) < 0 or sum(rates) > 1:
        raise IPAdapterError(f"Dropout rates {rates} must be >= 0 and sum to at most 1.")
    if config.adapter not in ("base", "plus"):
        raise IPAdapterError(f"adapter must be base or plus, not {config.adapter!r}.")
    for key in ("batch_size", "gradient_accumulation_steps", "max_steps", "resolution"):
        if getattr(config, key) < 1:
            raise IPAdapterError(f"{key} must be at least 1.")
    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise IPAdapterError(f"mixed_precision must be no, fp16 or bf16, not {config.mixed_precision!r}.")
    if config.export_dtype not in ("fp16", "bf16", "fp32"):
        raise IPAdapterError(f"export_dtype must be fp16, bf16 or fp32, not {config.export_dtype!r}.")
