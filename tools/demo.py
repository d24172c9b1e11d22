"""`python -m tools.demo`: run the shipped image-variation workflow on a real, headless ComfyUI.

What a new user does - start ComfyUI with the pack installed, load workflows/image_variation.json,
queue it - with the embedded default models instead of downloaded weights, so it runs anywhere
without a GPU or a network (at 256x256 and 4 steps instead of the workflow's 512x512 and 25). The saved PNG's absolute path is the only line on stdout, so scripts
can use it; progress goes to stderr.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from tools.comfy_host import CACHE, REPO
from tools.comfy_server import ComfyServer, ServerError
from tools.embedded_models import build_embedded_models, files_used_by
from tools.workflow_api import shrink_for_cpu, ui_to_api

log = logging.getLogger("tools.demo")

WORKFLOW = REPO / "workflows" / "image_variation.json"
RUN_DIR = CACHE / "demo-run"
OUTPUT_DIR = REPO / "output"


def run_demo(run_dir: Path = RUN_DIR, output_dir: Path = OUTPUT_DIR) -> Path:
    """Run the workflow in a fresh server base directory; returns where the image was copied.

    Only the model files the workflow names are built, and its input image is not copied by hand:
    the pack puts the templates' images into the input folder when the server loads it.
    """
    workflow = json.loads(WORKFLOW.read_text())
    models = build_embedded_models(only=files_used_by(workflow))
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with ComfyServer(run_dir, models) as server:
        object_info = server.object_info()
        prompt = ui_to_api(shrink_for_cpu(workflow, object_info), object_info)
        prompt_id = server.queue(prompt)
        log.info("Queued %s as prompt %s", WORKFLOW.name, prompt_id)
        images = server.output_images(server.wait(prompt_id, timeout=900))
        if not images:
            raise ServerError(f"{WORKFLOW.name} finished without saving an image")
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / images[0]["filename"]
        target.write_bytes(server.fetch(images[0]))
    return target.resolve()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        path = run_demo()
    except Exception as error:  # the CLI boundary: one clear message; a traceback only for unexpected errors
        log.error("Demo failed: %s", error, exc_info=not isinstance(error, (ServerError, TimeoutError)))
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
