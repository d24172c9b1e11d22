"""IP-Adapter nodes for ComfyUI: image prompts through decoupled cross-attention.

ComfyUI finds the nodes through `comfy_entrypoint` (the V3 extension API). There is no
NODE_CLASS_MAPPINGS: the host would take that instead and the two could disagree.
"""

from .nodes import comfy_entrypoint, register_model_folder

# The node help pages (web/docs/<node id>.md) and any frontend extension; ComfyUI serves this
# folder under /extensions/<pack folder>/.
WEB_DIRECTORY = "./web"

register_model_folder()

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
