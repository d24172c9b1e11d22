"""Training throughput of the IP-Adapter trainer on random-weight models of the real architectures.

    python -m benchmarks.train_throughput --model sd15 --batch 8 --precision fp16 --device cuda
    python -m benchmarks.train_throughput --model sdxl --batch 1 --precision fp16 --device cuda
    python -m benchmarks.train_throughput --model tiny --batch 8            # what a CPU can run

Runs the real trainer (`ipadapter_core.training.trainer.train`: data loading, VAE, text and image
encoders, UNet with the adapter, AdamW, checkpoints) on synthetic pictures, and reports samples/s,
step time (median after warm-up), the share of the step spent waiting for data, peak memory,
checkpoint size and save time. sd15 trains at 512x512 with ViT-H/14, sdxl at 1024x1024 with
ViT-H/14; tiny is the test suite's model at 16x16. Full-size models are written to a temporary
diffusers folder first (several GB; on a shared machine run them under the heavy-model lock).
Raw JSON goes to benchmarks/results/, named with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.step_cost import RESULTS, machine
from ipadapter_core.training.config import build_config
from ipadapter_core.training.trainer import train
from tools.training_models import write_base_model, write_image_encoder

RESOLUTIONS = {"tiny": 16, "sd15": 512, "sdxl": 1024}


def write_pictures(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        Image.fromarray((rng.random((side + 7 * (i % 3), side, 3)) * 255).astype("uint8")).save(folder / f"{i}.jpg", quality=90)
        items.append({"image_file": f"{i}.jpg", "text": f"a synthetic picture number {i}"})
    (folder / "data.json").write_text(json.dumps(items))
    return folder / "data.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(RESOLUTIONS), default="tiny")
    parser.add_argument("--adapter", choices=["base", "plus"], default="base")
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the step-time statistics")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    family = "sdxl" if args.model == "sdxl" else "sd15"
    size = "tiny" if args.model == "tiny" else "full"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        base = write_base_model(tmp / "base", family, size)
        encoder = write_image_encoder(tmp / "clip_vision.safetensors", "tiny" if size == "tiny" else "vit-h")
        data = write_pictures(tmp / "data", max(32, args.batch * args.accumulation * 2), RESOLUTIONS[args.model])
        print(f"models and data written in {time.perf_counter() - started:.1f} s")
        mixed = "no" if args.precision == "fp32" else args.precision
        config = build_config("", dict(
            base_model=str(base), image_encoder=str(encoder), data_json=str(data), family=family, adapter=args.adapter,
            resolution=RESOLUTIONS[args.model], batch_size=args.batch, gradient_accumulation_steps=args.accumulation,
            max_steps=args.steps, mixed_precision=mixed, vae_dtype="fp32" if family == "sdxl" else "auto",
            checkpoint_every=args.steps, output_dir=str(tmp / "out"), num_workers=args.workers, tensorboard=False,
            progress_bar=False, log_every=args.steps, cpu=args.device == "cpu", gradient_checkpointing=args.gradient_checkpointing,
            resampler_dim=32 if size == "tiny" and args.adapter == "plus" else 0, resampler_heads=2 if size == "tiny" and args.adapter == "plus" else 0))
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = train(config)
        timed = result.step_seconds[args.warmup:] or result.step_seconds
        step = statistics.median(timed)
        samples_per_step = args.batch * args.accumulation
        record = {
            "machine": machine(torch.device(args.device)),
            "device": args.device,
            "model": args.model,
            "adapter": args.adapter,
            "resolution": RESOLUTIONS[args.model],
            "batch": args.batch,
            "accumulation": args.accumulation,
            "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "steps": args.steps,
            "warmup": args.warmup,
            "torch": torch.__version__,
            "load_average_before_after": [load_before[0], os.getloadavg()[0]],  # other work on a shared machine
            "samples_per_s": samples_per_step / step,
            "step_s_median": step,
            "step_s_min": min(timed),
            "data_share": sum(result.data_seconds[args.warmup:]) / sum(timed),
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_kind": "cuda max_memory_allocated" if args.device == "cuda" else "process max RSS (models, data, everything)",
            "checkpoint_mb": result.checkpoint_bytes / 2**20,
            "checkpoint_save_s": result.checkpoint_seconds[-1] if result.checkpoint_seconds else None,
            "export_mb": result.export.stat().st_size / 2**20 if result.export else None,
            "adapter_parameters": sum(p.numel() for p in result.model.adapter.parameters()),
            "step_s": result.step_seconds,
            "data_s": result.data_seconds,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{args.device}-train-{args.model}-{args.adapter}-b{args.batch}-a{args.accumulation}-{args.precision}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (RESULTS / name).write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k not in ("step_s", "data_s")}, indent=2))
    print(f"written to benchmarks/results/{name}")


if __name__ == "__main__":
    main()
