"""Training data: the reference JSON list over an image folder, or webdataset tar shards.

Every sample becomes the VAE's input (short side resized to the resolution, centre-cropped,
[-1, 1]), the CLIP input made from the raw image by the inference preprocessing
(`preprocess.clip_pixels`), the caption, and SDXL's original size and crop offset.

Order is a pure function of (seed, sample number): the JSON data set is read through one
permutation per epoch and process r of W takes its rows of each global batch, so a run resumed
at step s reads exactly what an uninterrupted run reads, and W processes at batch B read what
one process at batch W·B reads. Shards are split by process and data-loader worker and read
as a stream that cycles through them (reshuffled per pass), so every process always has data.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import IPAdapterError
from ..preprocess import clip_pixels

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt", "text", "caption")


@dataclass(frozen=True)
class ImageTransform:
    resolution: int
    clip_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).float().div(255)
        height, width = rgb.shape[:2]
        clip = clip_pixels(rgb[None], self.clip_size, self.mean, self.std)[0]
        scale = self.resolution / min(height, width)
        size = (max(self.resolution, round(height * scale)), max(self.resolution, round(width * scale)))
        pixels = F.interpolate(rgb.movedim(-1, 0)[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
        pixels = pixels[:, top : top + self.resolution, left : left + self.resolution]
        return {
            "pixels": pixels.clamp(0, 1) * 2 - 1,
            "clip_pixels": clip,
            "original_size": torch.tensor([height, width]),
            "crop_top_left": torch.tensor([top, left]),
        }


def open_image(data: bytes | Path, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        return image
    except Exception as error:  # PIL raises many types for damaged files
        raise IPAdapterError(f"Image {name} cannot be read ({type(error).__name__}: {error}); fix or remove it, or set skip_bad_samples: true.") from error


class JsonImageTextDataset(torch.utils.data.Dataset):
    """The reference layout: a JSON list of {"image_file": relative path, "text": caption}."""

    def __init__(self, json_file: str, root: str, transform: ImageTransform, skip_bad: bool = False):
        path = Path(json_file)
        try:
            items = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise IPAdapterError(f"data_json {path} cannot be read as JSON: {error}") from error
        if not isinstance(items, list) or not items:
            raise IPAdapterError(f"data_json {path} must be a non-empty JSON list of {{\"image_file\", \"text\"}} objects.")
        self.root = Path(root) if root else path.parent
        self.transform = transform
        self.skip_bad = skip_bad
        self.items = []
        for number, item in enumerate(items):
            problem = item_problem(item)
            if problem is None:
                self.items.append(item)
            elif skip_bad:
                log.warning("data_json item %d skipped: %s", number, problem)
            else:
                raise IPAdapterError(f"data_json item {number} {problem}; fix it or set skip_bad_samples: true.")
        if not self.items:
            raise IPAdapterError(f"data_json {path} has no usable items.")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.items)):
            item = self.items[(index + attempt) % len(self.items)]
            path = self.root / item["image_file"]
            try:
                return {**self.transform(open_image(path, str(path))), "text": item["text"]}
            except IPAdapterError:
                if not self.skip_bad:
                    raise
                log.warning("skipped unreadable image %s", path)
        raise IPAdapterError("No image of the data set can be read.")


def item_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "is not an object with image_file and text"
    for key in ("image_file", "text"):
        if not isinstance(item.get(key), str):
            return f"has no {key!r} string field"
    return None


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Index lists for this process's micro-batches, from optimizer step `start_step` on, forever.

    Sample g of the run (g = step·G + micro·B·W + rank·B + i, G = B·W·accumulation) is item
    perm_e[g mod N] with e = g div N and perm_e a permutation seeded by (seed, e).
    """

    def __init__(self, size: int, batch_size: int, world: int, rank: int, accumulation: int, seed: int, start_step: int = 0):
        self.size, self.batch, self.world, self.rank = size, batch_size, world, rank
        self.accumulation, self.seed, self.start_step = accumulation, seed, start_step
        self.permutations: dict[int, torch.Tensor] = {}

    def item(self, sample: int) -> int:
        epoch, position = divmod(sample, self.size)
        if epoch not in self.permutations:
            self.permutations = {epoch: torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))}
        return int(self.permutations[epoch][position])

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            for micro in range(self.accumulation):
                first = (step * self.accumulation + micro) * self.batch * self.world + self.rank * self.batch
                yield [self.item(first + i) for i in range(self.batch)]
            step += 1


def expand_shards(patterns: list[str]) -> list[str]:
    """Paths with brace ranges, `data/{000..009}.tar`, as webdataset writes them."""
    shards = []
    for pattern in patterns:
        match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
        if match is None:
            shards.append(pattern)
            continue
        first, last = match.group(1), match.group(2)
        for number in range(int(first), int(last) + 1):
            shards.extend(expand_shards([pattern[: match.start()] + str(number).zfill(len(first)) + pattern[match.end() :]]))
    return shards


def tar_samples(path: str, skip_bad: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) groups of consecutive members sharing a key, webdataset's convention."""
    key, group = None, {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                stem, _, extension = name.partition(".")
                member_key = member.name[: len(member.name) - len(name)] + stem
                if member_key != key and group:
                    yield key, group
                    group = {}
                key = member_key
                group[extension.lower()] = archive.extractfile(member).read()
    except (OSError, tarfile.TarError) as error:
        if not skip_bad:
            raise IPAdapterError(f"Shard {path} cannot be read ({error}); fix it or set skip_bad_samples: true.") from error
        log.warning("shard %s: %s; rest of the shard skipped", path, error)
    if group:
        yield key, group


def decode_sample(shard: str, key: str, group: dict[str, bytes], transform: ImageTransform) -> dict:
    image = next((group[e] for e in IMAGE_EXTENSIONS if e in group), None)
    if image is None:
        raise IPAdapterError(f"Sample {key} in {shard} has no image ({', '.join(IMAGE_EXTENSIONS)}).")
    text = next((group[e].decode("utf-8") for e in TEXT_EXTENSIONS if e in group), None)
    if text is None and "json" in group:
        meta = json.loads(group["json"])
        text = meta.get("text", meta.get("caption")) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        raise IPAdapterError(f"Sample {key} in {shard} has no caption (.txt, or .json with a text/caption field).")
    return {**transform(open_image(image, f"{key} in {shard}")), "text": text}


class ShardStream(torch.utils.data.IterableDataset):
    """Samples of this process's shards; each data-loader worker reads its own subset of them.

    Worker w of process r reads shards[r::W][w::workers], passing through them again and again,
    reshuffled each pass by (seed, pass). skip_batches: batches already consumed by this process
    (resume); batches come from the workers in turn, so each worker skips its own share.
    """

    def __init__(self, shards: list[str], transform: ImageTransform, batch_size: int, world: int, rank: int, seed: int,
                 skip_bad: bool = False, skip_batches: int = 0):
        self.shards = shards[rank::world]
        if not self.shards:
            raise IPAdapterError(f"{len(shards)} shard(s) for {world} processes: every process needs at least one shard.")
        self.transform, self.batch_size, self.seed, self.skip_bad = transform, batch_size, seed, skip_bad
        self.rank, self.skip_batches = rank, skip_batches

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.shards[worker::workers]
        if not mine:
            raise IPAdapterError(f"Process {self.rank} has {len(self.shards)} shard(s) for {workers} data-loader workers; use at most that many workers (num_workers).")
        skip = len(range(worker, self.skip_batches, workers)) * self.batch_size
        passes = 0
        while True:
            order = torch.randperm(len(mine), generator=torch.Generator().manual_seed(self.seed * 100_003 + passes * 1009 + self.rank * 31 + worker))
            produced = False
            for shard_number in order.tolist():
                shard = mine[shard_number]
                for key, group in tar_samples(shard, self.skip_bad):
                    if skip:
                        skip -= 1
                        continue
                    try:
                        sample = decode_sample(shard, key, group, self.transform)
                    except IPAdapterError:
                        if not self.skip_bad:
                            raise
                        log.warning("skipped sample %s in %s", key, shard)
                        continue
                    produced = True
                    yield sample
            if not produced and not skip:
                raise IPAdapterError(f"Shards {mine} hold no usable sample.")
            passes += 1


def collate(samples: list[dict]) -> dict:
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0] if key != "text"}
    batch["text"] = [s["text"] for s in samples]
    return batch
