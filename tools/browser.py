"""Debian's Chromium, headless, driven by Playwright: the real ComfyUI frontend for end-to-end tests.

A workflow file is only proven to work if the page users open loads it: the frontend creates the
widgets from /object_info, migrates old workflows, shows missing-node and error dialogs, and turns
the graph into the prompt it queues. So the tests drive that page instead of re-implementing it.
Playwright's own browser download is unreachable offline, hence the system browser, which
scripts/install_browser.sh installs (ensure_chromium runs it when the browser is missing).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, sync_playwright

from tools.comfy_host import REPO

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_SCRIPT = REPO / "scripts" / "install_browser.sh"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 1080}
# Frontend settings for a reproducible page: no template browser for a "new user", no minimap over
# the graph, and text still drawn when a large graph is zoomed out to fit a screenshot.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2,
}
# Dismisses the "Nodes 2.0" banner, which would push the canvas down.
INIT_SCRIPT = "localStorage.setItem('vueNodesBannerDismissed', 'true')"
READY = "window.app && window.app.graph && window.app.canvas && window.app.extensionManager"
GRAPH_STATE_JS = """
() => {
  const slotLinks = (slots) => (slots || []).map(s => ({name: s.name, type: s.type, link: s.link ?? null, links: s.links ?? null}));
  return JSON.stringify({
    nodes: app.graph.nodes.map(n => ({
      id: n.id, type: n.type, mode: n.mode, pos: Array.from(n.pos), size: Array.from(n.size),
      min_size: Array.from(n.computeSize()),
      widgets: (n.widgets || []).filter(w => w.serialize !== false).map(w => [w.name, w.value ?? null]),
      inputs: slotLinks(n.inputs), outputs: slotLinks(n.outputs),
    })),
    links: [...app.graph.links.values()].map(l => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]),
    title_height: LiteGraph.NODE_TITLE_HEIGHT,
  });
}
"""
DROP_JS = """
([text, name]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([text], name, {type: 'application/json'}));
  document.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
}
"""
VISIBLE_DIALOGS_JS = """
() => Array.from(document.querySelectorAll('.p-dialog, .p-toast-message-error'))
  .filter(e => e.offsetParent !== null || getComputedStyle(e).position === 'fixed')
  .map(e => e.innerText.trim())
"""


class BrowserError(RuntimeError):
    """The browser or the page did not do what was asked in time."""


def ensure_chromium() -> Path:
    """The system Chromium, installed with scripts/install_browser.sh (apt-get) when it is missing."""
    if not CHROMIUM.is_file():
        log.info("%s missing: running %s", CHROMIUM, INSTALL_SCRIPT)
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    if not CHROMIUM.is_file():
        raise BrowserError(f"{CHROMIUM} not found after {INSTALL_SCRIPT.name}; install Debian's chromium and chromium-driver")
    return CHROMIUM


@contextmanager
def chromium(viewport: dict[str, int] = VIEWPORT) -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile (no state from earlier runs), closed and deleted on exit."""
    executable = ensure_chromium()
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    try:
        with sync_playwright() as playwright:
            # The persistent context is how Playwright passes --user-data-dir.
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=str(executable), headless=True, args=CHROMIUM_FLAGS, viewport=viewport,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class ComfyPage:
    """The ComfyUI web page in one browser tab, used the way a person uses it.

    Workflows arrive by dropping the file on the page; queueing goes through app.queuePrompt, the
    call behind the Run button; errors are read from the dialogs the frontend shows.
    """

    def __init__(self, page: Page, server_url: str, timeout_ms: float = 60_000):
        self.page = page
        self.url = server_url
        self.timeout_ms = timeout_ms
        self.page_errors: list[str] = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def open(self) -> None:
        self.page.context.add_init_script(INIT_SCRIPT)
        response = self.page.request.post(f"{self.url}/settings", data=json.dumps(SETTINGS), headers={"Content-Type": "application/json"})
        if not response.ok:
            raise BrowserError(f"POST /settings answered {response.status}")
        self.page.goto(self.url)
        self.page.wait_for_function(READY, timeout=self.timeout_ms)

    def drop_workflow(self, text: str, file_name: str) -> None:
        """Drop a workflow file on the page; returns once the frontend opened it in a new workflow tab."""
        before = self.active_workflow()
        self.page.evaluate(DROP_JS, [text, file_name])
        self.page.wait_for_function(
            f"window.app.extensionManager.workflow.activeWorkflow?.key !== {json.dumps(before)} && !window.app.configuringGraph",
            timeout=self.timeout_ms,
        )
        self.page.wait_for_function(
            "app.graph.nodes.filter(n => n.type === 'LoadImage' || n.type === 'LoadImageMask').every(n => n.imgs?.[0]?.complete)",
            timeout=self.timeout_ms,
        )

    def active_workflow(self) -> str | None:
        return self.page.evaluate("window.app.extensionManager.workflow.activeWorkflow?.key ?? null")

    def graph_state(self) -> dict[str, Any]:
        """Nodes (type, widgets, size, slots) and links as the frontend holds them now."""
        return json.loads(self.page.evaluate(GRAPH_STATE_JS))

    def node_definitions(self) -> dict[str, dict]:
        """The node definitions the frontend built from /object_info (descriptions, tooltips), by type."""
        return json.loads(self.page.evaluate(
            "JSON.stringify(Object.fromEntries(Object.entries(LiteGraph.registered_node_types).filter(([, c]) => c.nodeData).map(([t, c]) => [t, c.nodeData])))"
        ))

    def visible_dialogs(self) -> list[str]:
        """Text of every open dialog and error toast (missing nodes, missing models, prompt errors)."""
        return self.page.evaluate(VISIBLE_DIALOGS_JS)

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.visible_dialogs():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)
        if self.visible_dialogs():
            raise BrowserError(f"Dialogs stay open: {self.visible_dialogs()}")

    def wait_for_dialog(self, text: str, timeout_ms: float | None = None) -> str:
        """The first open dialog whose text contains `text`, waiting for it to appear."""
        self.page.wait_for_function(
            f"({VISIBLE_DIALOGS_JS})().some(t => t.includes({json.dumps(text)}))", timeout=timeout_ms or self.timeout_ms,
        )
        return next(t for t in self.visible_dialogs() if text in t)

    def set_widget(self, node_id: int, name: str, value: Any) -> None:
        """Change a widget value as typing into it would (the value the next queue sends)."""
        found = self.page.evaluate(
            """([id, name, value]) => { const w = app.graph.getNodeById(id)?.widgets?.find(w => w.name === name);
                 if (!w) return false; w.value = value; w.callback?.(value); app.graph.setDirtyCanvas(true, true); return true; }""",
            [node_id, name, value],
        )
        if not found:
            raise BrowserError(f"Node {node_id} has no widget {name!r}")

    def graph_to_prompt(self) -> dict[str, Any]:
        """The API prompt the frontend would queue for the open graph (app.graphToPrompt)."""
        return json.loads(self.page.evaluate("app.graphToPrompt().then(p => JSON.stringify(p.output))"))

    def queue(self) -> tuple[int, dict[str, Any]]:
        """Queue the open graph as the Run button does; the HTTP status and body of its POST /prompt."""
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST", timeout=self.timeout_ms) as answer:
            self.page.evaluate("app.queuePrompt(0, 1)")
        return answer.value.status, answer.value.json()

    def screenshot(self, path: Path, fit: bool = True) -> Path:
        """A PNG of the page, by default with the whole graph fitted into view."""
        if fit:
            self.page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(500)  # the canvas redraws on the next animation frames
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path
