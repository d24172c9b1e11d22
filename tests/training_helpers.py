"""Data and configs for the trainer's tests: image folders with the reference JSON, webdataset shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def random_image(seed: int, height: int = 20, width: int = 24) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8"))


def write_json_dataset(folder: Path, count: int = 16) -> Path:
    """Images of varied sizes (SDXL's original-size conditioning sees them) and captions."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        random_image(i, 18 + i % 5, 20 + i % 7).save(folder / f"{i:03d}.png")
        items.append({"image_file": f"{i:03d}.png", "text": f"picture number {i}"})
    (folder / "data.json").write_text(json.dumps(items))
    return folder / "data.json"


def write_shards(folder: Path, shards: int = 2, per_shard: int = 6) -> list[Path]:
    """webdataset layout: members `{key}.png` and `{key}.txt` next to each other in each tar."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = folder / f"shard-{shard:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in range(per_shard):
                key = f"s{shard}_{i:04d}"
                buffer = io.BytesIO()
                random_image(100 * shard + i).save(buffer, format="PNG")
                for name, data in ((f"{key}.png", buffer.getvalue()), (f"{key}.txt", f"caption {shard} {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def tiny_run(models: dict, data_json: Path, output_dir: Path, **overrides) -> dict:
    """Config values for a seconds-long run on the tiny models."""
    values = dict(base_model=str(models["sd15"]), image_encoder=str(models["encoder"]), data_json=str(data_json),
                  data_root=str(data_json.parent), resolution=16, batch_size=4, max_steps=4, checkpoint_every=1000,
                  output_dir=str(output_dir), num_workers=0, tensorboard=False, progress_bar=False, log_every=1)
    values.update(overrides)
    return values
