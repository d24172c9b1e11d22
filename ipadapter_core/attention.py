"""Decoupled cross-attention: Z = Attn(Q, K_text, V_text) + Σ_a λ_a · Attn(Q, K_a, V_a).

The text half is whatever the host computed; this module adds the image halves. Each
adapter keeps its own softmax (concatenating image and text tokens into one softmax is a
different model). The weight λ_a is folded into V_a by whoever builds the values, because
attention is linear in V: that costs a few tokens' worth of work instead of a query-sized pass.

Image branches have only 4-16 tokens per reference, so their cost is bytes moved, not
arithmetic. When heads x tokens is small, all adapters of a layer are evaluated as two batched
matrix products against block-diagonal key/value matrices (one column block per head and
adapter): the query is read once in its native (B, L, heads*dim) layout, no head transposes,
and the add to the text output is fused into the second product. Past `FUSED_COLUMN_LIMIT`
columns the zero blocks would cost more arithmetic than the passes they save, and each
adapter goes through a general attention kernel instead (the host's optimised one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
FUSED_COLUMN_LIMIT = 256


def image_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-head softmax(q kᵀ/√d) v for (batch, tokens, heads*dim) tensors; the reference form."""
    b, length, width = q.shape
    d = width // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, width)


def block_diagonal_keys(k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H*d) -> (B, H*d, H*T): head h's keys in rows h*d.. and columns h*T.., scaled by d^-1/2."""
    b, t, width = k.shape
    d = width // heads
    eye = torch.eye(heads, dtype=k.dtype, device=k.device)
    return torch.einsum("bthi,hg->bhigt", k.reshape(b, t, heads, d), eye).reshape(b, width, heads * t) * d**-0.5


def block_diagonal_values(v: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H*d) -> (B, H*T, H*d): head h's values in rows h*T.. and columns h*d.."""
    b, t, width = v.shape
    d = width // heads
    eye = torch.eye(heads, dtype=v.dtype, device=v.device)
    return torch.einsum("bthi,hg->bhtgi", v.reshape(b, t, heads, d), eye).reshape(b, heads * t, width)


class ImageKeysValues:
    """The image keys/values of every adapter on one layer, laid out for one batch.

    Built once per layer and batch layout (per sampling run), then applied at every step.
    Keys and values have G rows for a batch of B queries, G dividing B: each row serves B/G
    consecutive samples. Samples that share image tokens (all conditional latents of a batch)
    are folded into the sequence axis, so a batch of latents costs no extra key/value memory.
    """

    def __init__(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], heads: int):
        self.heads = heads
        self.rows = keys[0].shape[0]
        self.token_counts = tuple(k.shape[1] for k in keys)
        self.fused = heads * sum(self.token_counts) <= FUSED_COLUMN_LIMIT
        if self.fused:
            self.key_blocks = torch.cat([block_diagonal_keys(k, heads) for k in keys], dim=2)
            self.value_blocks = torch.cat([block_diagonal_values(v, heads) for v in values], dim=1)
            self.widths = [heads * t for t in self.token_counts]  # columns per adapter
            # (adapters, columns) indicator: turns one scale per adapter into one per value row.
            self.segment_matrix = torch.block_diag(*[values[0].new_ones(1, width) for width in self.widths])
        else:
            self.keys, self.values = list(keys), list(values)

    def add_to(
        self,
        text_out: torch.Tensor,
        q: torch.Tensor,
        attention: AttentionFn = image_attention,
        value_scale: torch.Tensor | None = None,
        masks: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """text_out + Σ_a mask_a · Attn(q, K_a, scale_a · V_a).

        value_scale: (G, adapters) factors applied on top of the folded weights (step gating);
        masks: per adapter, None or (B, L, 1) over the queries.
        """
        shape = q.shape
        groups = self.rows
        q, text_out = q.reshape(groups, -1, shape[-1]), text_out.reshape(groups, -1, shape[-1])
        if masks is not None:
            masks = [None if m is None else m.reshape(groups, -1, 1) for m in masks]
        if self.fused:
            return self.add_fused(text_out, q, value_scale, masks).reshape(shape)
        out = text_out
        for a, (k, v) in enumerate(zip(self.keys, self.values)):
            if value_scale is not None:
                v = v * value_scale[:, a, None, None].to(v.dtype)
            branch = attention(q, k, v, self.heads)
            if masks is not None and masks[a] is not None:
                branch = branch * masks[a]
            out = out + branch
        return out.reshape(shape)

    def add_fused(self, text_out: torch.Tensor, q: torch.Tensor, value_scale: torch.Tensor | None, masks: Sequence[torch.Tensor | None] | None) -> torch.Tensor:
        scores = torch.bmm(q, self.key_blocks)
        if len(set(self.token_counts)) == 1:
            probs = scores.unflatten(-1, (-1, self.token_counts[0])).softmax(dim=-1).flatten(-2)
        else:
            segments = scores.split(self.widths, dim=-1)
            probs = torch.cat([s.unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(-2) for s in segments], dim=-1)
        if masks is not None and any(m is not None for m in masks):  # out of place: softmax's backward needs probs
            probs = torch.cat([p if m is None else p * m for p, m in zip(probs.split(self.widths, dim=-1), masks)], dim=-1)
        values = self.value_blocks
        if value_scale is not None:
            values = values * (value_scale.to(values.dtype) @ self.segment_matrix).unsqueeze(-1)
        return torch.baddbmm(text_out, probs, values)
