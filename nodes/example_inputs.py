"""The images the shipped workflows load, put where ComfyUI's Load Image nodes list them.

The workflows in `workflows/` open from ComfyUI's template browser, and their Load Image nodes
name images that ship beside them (reference.png, ...). Load Image only lists files at the top of
ComfyUI's input folder, so when ComfyUI loads the pack each missing image is copied there. A file
of the same name that is already there is never replaced: a user's own image wins.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
# Stock nodes whose first widget is an image file name in the input folder.
IMAGE_LOADERS = ("LoadImage", "LoadImageMask")


def images_used(workflows: Path = WORKFLOWS) -> list[Path]:
    """Images in `workflows` that a workflow there loads with a stock image loader."""
    names = set()
    for path in sorted(workflows.glob("*.json")):
        for node in json.loads(path.read_text(encoding="utf-8")).get("nodes", []):
            values = node.get("widgets_values")
            if node.get("type") in IMAGE_LOADERS and isinstance(values, list) and values and isinstance(values[0], str):
                names.add(values[0])
    return [workflows / name for name in sorted(names) if (workflows / name).is_file()]


def provide_example_inputs(input_dir: str | Path, workflows: Path = WORKFLOWS) -> list[Path]:
    """Copy the images the workflows load into `input_dir` unless a file of that name is there; returns the copies.

    Each copy is written under a temporary name and renamed into place, so a server listing the
    folder meanwhile sees no half-written image. A folder that cannot be written is logged, not
    raised: the pack works without its examples.
    """
    target = Path(input_dir)
    copied = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for image in images_used(workflows):
            destination = target / image.name
            if destination.exists():
                continue
            descriptor, staging = tempfile.mkstemp(dir=target, prefix=".ipadapter-", suffix=image.suffix)
            os.close(descriptor)
            try:
                shutil.copyfile(image, staging)
                os.replace(staging, destination)
            except OSError:
                Path(staging).unlink(missing_ok=True)
                raise
            copied.append(destination)
    except OSError as error:
        logging.warning("IP-Adapter: could not copy the example workflows' images into %s: %s", target, error)
    if copied:
        logging.info("IP-Adapter: copied %d example image(s) for the workflow templates into %s", len(copied), target)
    return copied
