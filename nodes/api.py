"""The one place the pack names the host's node API: ComfyUI's V3 schema at a pinned version.

`comfy_api.latest` moves with every ComfyUI release; a numbered module keeps the behaviour the
nodes were written and tested against. Every node module imports `io` from here.
"""

from comfy_api.v0_0_2 import ComfyExtension, io

CATEGORY = "ipadapter"

__all__ = ["CATEGORY", "ComfyExtension", "io"]
