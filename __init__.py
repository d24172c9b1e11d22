"""IP-Adapter nodes for ComfyUI: image prompts through decoupled cross-attention.

ComfyUI finds the nodes through `comfy_entrypoint` (the V3 extension API). There is no
NODE_CLASS_MAPPINGS: the host would take that instead and the two could disagree.
"""

from .nodes import comfy_entrypoint, register_model_folder, register_routes

# The node help pages (web/docs/<node id>.md) and the frontend extension (web/js: the Edit-menu
# command converting ComfyUI_IPAdapter_plus workflows); ComfyUI serves this folder under
# /extensions/<pack folder>/.
WEB_DIRECTORY = "./web"

register_model_folder()
register_routes()

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
