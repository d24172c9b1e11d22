"""IP-Adapter Tiled: a large or wide reference as tiles, each applied to its own region of the image."""

from __future__ import annotations

import torch

from ..ipadapter_core.encoding import COMBINE_METHODS
from ..ipadapter_core.image_branch import SCALING_MODES
from ..ipadapter_core.tiled_reference import reference_tiles
from .api import CATEGORY, io
from .apply_ipadapter import apply_prompt, end_at_input, model_input, start_at_input, weight_input, weight_type_input
from .encode_image_prompt import clip_vision_input, encode_prompt
from .socket_types import IPAdapterSocket


class IPAdapterTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactIPAdapterTiled",
            display_name="IP-Adapter Tiled",
            category=CATEGORY,
            description=(
                "Cuts the reference into 256-pixel tiles (a square one into 2x2, a wide one along its length, at most 4) and applies "
                "each tile only where it lies in the image, through attention masks. ComfyUI_IPAdapter_plus's IPAdapter Tiled "
                "converts to this node."
            ),
            inputs=[
                model_input(),
                IPAdapterSocket.Input("ipadapter", tooltip="From a Load IP-Adapter node."),
                clip_vision_input(),
                io.Image.Input("image", tooltip="The reference; wide or tall ones give more tiles."),
                weight_input(),
                weight_type_input(optional=False),
                io.Combo.Input("combine", options=list(COMBINE_METHODS), default="concat", tooltip="How several reference images of one tile become one prompt."),
                start_at_input(),
                end_at_input(),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05, tooltip="Unsharp-mask strength on the tiles. 0: none."),
                io.Combo.Input("embeds_scaling", options=list(SCALING_MODES), default="V only", tooltip="Where the weight enters the attention. V only is the paper's formula."),
                io.Image.Input("negative_image", optional=True, tooltip="Replaces the neutral unconditional image tokens of every tile."),
                io.Mask.Input("attn_mask", optional=True, tooltip="Limits every tile further: the tiles' masks are cut from this one."),
                io.Boolean.Input("unfold_batch", default=False, optional=True, tooltip="Reference i goes to latent i (the last repeats) instead of all references to every latent."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with one image branch per tile."),
                io.Image.Output(display_name="tiles", tooltip="The tiles, to preview."),
                io.Mask.Output(display_name="masks", tooltip="Each tile's mask, to preview."),
            ],
        )

    @classmethod
    def execute(cls, model, ipadapter, clip_vision, image, weight, weight_type, combine, start_at, end_at, sharpening, embeds_scaling,
                negative_image=None, attn_mask=None, unfold_batch=False) -> io.NodeOutput:
        tiles, masks = reference_tiles(image, attn_mask, sharpening)
        patched = model
        for tile, mask in zip(tiles, masks):
            prompt = encode_prompt(ipadapter, clip_vision, tile, negative_image=negative_image, combine=combine)
            patched = apply_prompt(patched, ipadapter, prompt, weight, start_at, end_at, weight_type=weight_type,
                                   embeds_scaling=embeds_scaling, attn_mask=mask, unfold_batch=unfold_batch)
        return io.NodeOutput(patched, torch.cat(tiles), torch.cat(masks))
