"""IP-Adapter in plain PyTorch: checkpoints, projections, the layer map, decoupled attention.

Imports nothing from ComfyUI, so it can be used and tested on its own.
"""
