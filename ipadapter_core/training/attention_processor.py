"""A diffusers attention processor whose image branch is the inference code (`ipadapter_core/attention.py`).

Training and inference must share the decoupled attention, or an adapter learns one function and
is applied as another. This processor does the diffusers-side bookkeeping (norms, residual,
output projection) and hands the image half to `ImageKeysValues`, the object the ComfyUI patch
uses at sampling time. It is a plain object, not an `nn.Module`: the `to_k_ip`/`to_v_ip` weights
belong to the adapter being trained, which is the only module that owns them (so DDP, the
optimizer and the export see each parameter exactly once).

The image tokens travel with the text embedding as `encoder_hidden_states = (text, tokens)`,
the form diffusers' own IP-Adapter processors accept; a plain tensor means "no image prompt".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapter import KeyValueProjection
from ..attention import ImageKeysValues, image_attention
from ..errors import IPAdapterError


class DecoupledAttnProcessor:
    """Z = Attn(Q, K_text, V_text) + scale · Attn(Q, K_img, V_img), then the layer's to_out."""

    def __init__(self, layer: KeyValueProjection, scale: float = 1.0):
        self.layer = layer
        self.scale = scale

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image_tokens = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, image_tokens = encoder_hidden_states
            if isinstance(image_tokens, (list, tuple)):
                if len(image_tokens) != 1:
                    raise IPAdapterError(f"The training processor takes one adapter's image tokens, got {len(image_tokens)}.")
                image_tokens = image_tokens[0]
        if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
            raise IPAdapterError("Attention layers with query/key normalisation are not IP-Adapter cross-attention layers (SD1.5/SDXL).")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        if attention_mask is None:
            out = image_attention(query, key, value, attn.heads)
        else:
            out = masked_attention(attn, query, key, value, attention_mask)
        out = out.to(query.dtype)

        if image_tokens is not None and self.scale != 0:
            tokens = image_tokens.to(self.layer.to_k_ip.weight.dtype)
            image_keys = self.layer.to_k_ip(tokens).to(query.dtype)
            image_values = (self.layer.to_v_ip(tokens) * self.scale).to(query.dtype)
            out = ImageKeysValues([image_keys], [image_values], attn.heads).add_to(out, query)

        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def masked_attention(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Text attention with diffusers' attention mask (the image branch has none)."""
    batch, length, width = query.shape
    heads = attn.heads
    mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch).view(batch, heads, -1, key.shape[1])
    q, k, v = (t.reshape(batch, -1, heads, width // heads).transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(batch, length, width)
