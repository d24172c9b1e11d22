"""`python -m tools.thumbnails`: the template browser's picture of every shipped workflow.

ComfyUI's template browser lists a pack's `workflows/*.json` and shows `<name>.jpg` beside each
as its thumbnail (tests/test_manager_install.py checks both are served). This draws each workflow
as the page shows it once opened - the real frontend in headless Chromium - zoomed onto the pack's
nodes and the Load Image nodes with their example images, and saves that square as the JPEG. Run it
after changing a workflow's layout; it needs the embedded default models (built on first use).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tools.browser import ComfyPage, chromium
from tools.comfy_host import REPO, import_pack
from tools.comfy_server import ComfyServer
from tools.embedded_models import build_embedded_models

log = logging.getLogger("tools.thumbnails")

WORKFLOWS = REPO / "workflows"
SIZE = 512  # the template cards are square, about 220 pixels wide: sharp on high-DPI screens too
VIEWPORT = {"width": 1600, "height": 1200}
QUALITY = 85
MARGIN = 24  # screen pixels of canvas around the graph
# The page's own controls (tabs, side bar, run button, zoom buttons) and LiteGraph's statistics,
# hidden so that the picture shows the graph alone.
HIDE_CONTROLS_JS = """
() => {
  const style = document.createElement('style');
  style.textContent = `.workflow-tabs-container, .side-toolbar-container, .actionbar-container, .subgraph-breadcrumb,
    .graph-canvas-panel .p-buttongroup { visibility: hidden !important; }`;
  document.head.appendChild(style);
  app.canvas.render_info = false;
}
"""
# Zooms the canvas onto the pack's nodes and the images they are given (what a card should show:
# the graph as a whole is too wide to read at that size); returns their box in screen pixels.
FOCUS_JS = """
([types, margin]) => {
  const canvas = app.canvas, ds = canvas.ds;
  const focus = app.graph.nodes.filter(n => n.type.startsWith('Exact') || types.includes(n.type));
  const boxes = (focus.length ? focus : app.graph.nodes).map(n => n.getBounding());
  const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
  const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
  const width = canvas.canvas.width, height = canvas.canvas.height;
  ds.scale = Math.min(1.5, (width - 2 * margin) / (x1 - x0), (height - 2 * margin) / (y1 - y0));
  ds.offset[0] = width / 2 / ds.scale - (x0 + x1) / 2;
  ds.offset[1] = height / 2 / ds.scale - (y0 + y1) / 2;
  canvas.setDirty(true, true);
  return [x0, y0, x1, y1].map((v, i) => (v + ds.offset[i % 2]) * ds.scale);
}
"""


def render_thumbnails(names: list[str] | None = None) -> list[Path]:
    """Write workflows/<name>.jpg for the given workflows (all by default); returns the files written."""
    paths = [WORKFLOWS / f"{name}.json" for name in names] if names else sorted(WORKFLOWS.glob("*.json"))
    models = build_embedded_models()
    import_pack()
    from comfyui_ipadapter.nodes.example_inputs import IMAGE_LOADERS

    written = []
    with tempfile.TemporaryDirectory(prefix="comfyui-thumbnails-") as base, ComfyServer(Path(base), models, startup_timeout=600) as server:
        with chromium(VIEWPORT) as context:
            page = ComfyPage(context.new_page(), server.url)
            page.open()
            page.page.evaluate(HIDE_CONTROLS_JS)
            for path in paths:
                page.drop_workflow(path.read_text(), path.name)
                page.close_dialogs()
                box = page.page.evaluate(FOCUS_JS, [list(IMAGE_LOADERS), MARGIN])
                page.page.wait_for_timeout(500)  # the canvas redraws on the next animation frames
                screen = Image.open(io.BytesIO(page.page.screenshot())).convert("RGB")
                target = path.with_suffix(".jpg")
                square_around(screen, box).resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(target, quality=QUALITY, optimize=True)
                log.info("Wrote %s", target)
                written.append(target)
    return written


def square_around(screen: Image.Image, box: list[float]) -> Image.Image:
    """The smallest square around the box (plus MARGIN) that fits in the screenshot, centred on the box."""
    x0, y0, x1, y1 = box
    side = min(max(x1 - x0, y1 - y0) + 2 * MARGIN, *screen.size)
    left = min(max((x0 + x1 - side) / 2, 0), screen.size[0] - side)
    top = min(max((y0 + y1 - side) / 2, 0), screen.size[1] - side)
    return screen.crop((round(left), round(top), round(left + side), round(top + side)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="workflow names without .json (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    unknown = [name for name in args.names if not (WORKFLOWS / f"{name}.json").is_file()]
    if unknown:
        log.error("No such workflow: %s", ", ".join(unknown))
        return 2
    render_thumbnails(args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
