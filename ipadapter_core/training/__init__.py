"""Training IP-Adapters the paper's way: plain PyTorch on accelerate, no ComfyUI.

`python -m ipadapter_core.training train --config FILE` (or `accelerate launch -m ...`) trains;
`... convert SOURCE TARGET` rescues other trainers' outputs. The decoupled attention used here is
`ipadapter_core/attention.py`, the code the nodes run at inference.
"""
