"""IP-Adapter: encode and apply in one node, for simple graphs (same code as the two separate nodes)."""

from __future__ import annotations

from .api import CATEGORY, io
from .apply_ipadapter import apply_prompt, end_at_input, model_input, patched_model_output, start_at_input, weight_input, weight_type_input
from .encode_image_prompt import clip_vision_input, encode_prompt, image_input
from .socket_types import IPAdapterSocket


class IPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactIPAdapter",
            display_name="IP-Adapter (encode + apply)",
            category=CATEGORY,
            description="Encode Image Prompt + Apply IP-Adapter in one node.",
            inputs=[
                model_input(),
                IPAdapterSocket.Input("ipadapter", tooltip="From Load IP-Adapter."),
                clip_vision_input(),
                image_input(),
                weight_input(),
                weight_type_input(optional=False),
                start_at_input(),
                end_at_input(),
            ],
            outputs=[patched_model_output("A copy of the model with the image prompt applied; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, ipadapter, clip_vision, image, weight, weight_type, start_at, end_at) -> io.NodeOutput:
        prompt = encode_prompt(ipadapter, clip_vision, image)
        return io.NodeOutput(apply_prompt(model, ipadapter, prompt, weight, start_at, end_at, weight_type=weight_type))
