"""IP-Adapter nodes for ComfyUI: image prompts through decoupled cross-attention.

ComfyUI finds the nodes through `comfy_entrypoint` (the V3 extension API). There is no
NODE_CLASS_MAPPINGS: the host would take that instead and the two could disagree.
"""

from .nodes import comfy_entrypoint, register_model_folder

register_model_folder()

__all__ = ["comfy_entrypoint"]
