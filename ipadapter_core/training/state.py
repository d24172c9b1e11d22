"""Training checkpoints (adapter + optimizer + schedule + RNG + data position, never the frozen model) and the export.

A checkpoint folder `checkpoints/step-NNNNNNN/` holds:
- adapter.safetensors: the adapter in fp32, official flat keys (so any checkpoint is also a usable adapter);
- optimizer.pt, scheduler.pt: their state dicts (tensors and numbers only; read with weights_only=True);
- rng.safetensors: torch's global CPU (and CUDA) generator states of the writing process;
- state.json: step, samples seen, seed, world size, batch layout, the config.
A folder is written under a temporary name and renamed when complete, so an interrupted save never
looks like a checkpoint. Under DeepSpeed the optimizer is sharded and saved by DeepSpeed itself
(`deepspeed/`, frozen parameters excluded).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..adapter import IPAdapterModel
from ..checkpoint import AdapterWeights, split_adapter_weights
from ..errors import IPAdapterError
from ..variants import detect_variant

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
PREFIX = "step-"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    folder = Path(output_dir) / CHECKPOINTS
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and (p / "state.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def verified_state_dict(adapter: IPAdapterModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The official flat layout, checked by the pack's own variant detection before anything is written."""
    flat = {key: value.detach().to("cpu", dtype).contiguous() for key, value in adapter.state_dict_official().items()}
    weights = split_adapter_weights(flat, source="the adapter being saved")
    spec = detect_variant(weights)
    if spec != adapter.spec:
        raise IPAdapterError(f"The adapter being saved reads back as {spec.description}, not {adapter.spec.description}; nothing was written.")
    return flat


def export_adapter(adapter: IPAdapterModel, path: Path, dtype: str = "fp16") -> Path:
    """Write the adapter as nodes and diffusers' load_ip_adapter read it (image_proj.* + ip_adapter.*)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = verified_state_dict(adapter, DTYPES[dtype])
    partial = path.with_name(path.name + ".partial")
    save_file(flat, str(partial), metadata={"format": "pt", "ipadapter": adapter.spec.description})
    partial.replace(path)
    return path


def save_checkpoint(output_dir: Path, step: int, adapter: IPAdapterModel, optimizer, scheduler, info: dict, limit: int) -> Path:
    """Rank 0 only. Returns the folder; older folders beyond `limit` (0: keep all) are removed."""
    started = time.perf_counter()
    folder = Path(output_dir) / CHECKPOINTS / f"{PREFIX}{step:07d}"
    partial = folder.with_name(folder.name + ".partial")  # may already hold DeepSpeed's shards of this step
    partial.mkdir(parents=True, exist_ok=True)
    save_file(verified_state_dict(adapter, torch.float32), str(partial / "adapter.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(partial / "rng.safetensors"))
    (partial / "state.json").write_text(json.dumps({"step": step, **info}, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    if limit > 0:
        for old in checkpoint_dirs(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s written in %.2f s", folder, time.perf_counter() - started)
    return folder


def find_resume(output_dir: Path, resume: str) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    folder = Path(resume)
    if not (folder / "state.json").is_file():
        raise IPAdapterError(f"resume: {folder} is not a checkpoint folder (no state.json); use 'latest' or a {CHECKPOINTS}/{PREFIX}N folder.")
    return folder


def load_checkpoint(folder: Path, adapter: IPAdapterModel, optimizer, scheduler) -> dict:
    """Restore the adapter (exactly: fp32), optimizer and schedule; returns state.json."""
    state = json.loads((folder / "state.json").read_text())
    flat = load_file(str(folder / "adapter.safetensors"))
    weights = split_adapter_weights(flat, source=str(folder / "adapter.safetensors"))
    load_adapter_state(adapter, weights)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return state


def load_adapter_state(adapter: IPAdapterModel, weights: AdapterWeights) -> None:
    with torch.no_grad():
        adapter.image_proj.load_state_dict(weights.image_proj, strict=True)
        adapter.ip_layers.load_state_dict(weights.ip_adapter, strict=True)
