"""Decoupled cross-attention: Z = Attn(Q, K_text, V_text) + Σ_a λ_a · Attn(Q, K_a, V_a).

The text half is whatever the host computed; this module adds the image halves. Each
adapter keeps its own softmax (concatenating image and text tokens into one softmax is a
different model). The weight λ_a is folded into V_a by whoever builds the values, because
attention is linear in V: that costs a few tokens' worth of work instead of a query-sized pass.

Image branches have only 4-16 tokens per reference, so on a GPU each kernel launch costs more
than its arithmetic. All adapters of a layer therefore run as one per-head attention over their
tokens concatenated along the token axis, with one softmax per adapter segment: the same five
kernels (query to head-major, scores, softmax, weighted values, add to the text output) for one
adapter or many of one token count, with the arithmetic of one softmax(QKᵀ)V per adapter and head. The query copy
to head-major is a view when the batch has a single key/value row.

One softmax call covers every segment by viewing the scores as (adapters, W), W the longest
segment. Shorter segments are padded with -inf scores (zero weight) by one concatenation after
the scores; the weighted-value product then runs on the padded layout (zero values: some extra
arithmetic, no extra kernel) while the branch stays within 1.5x of its minimal arithmetic, and
on the compact layout (a second concatenation) beyond that. Each segment's softmax subtracts
its own maximum, so an adapter whose scores lie far below another's neither underflows to 0/0
nor vanishes, in fp16 and bf16 alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# An attention kernel over (batch, tokens, heads*dim) tensors: image_attention or the host's (SD3.5's joint branch takes one).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def image_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-head softmax(q kᵀ/√d) v for (batch, tokens, heads*dim) tensors; the reference form."""
    b, length, width = q.shape
    d = width // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, width)


def head_major(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(G, T, H*d) -> (G*H, T, d): one matrix per row and head, the batch layout of torch.bmm."""
    g, tokens, width = t.shape
    return t.reshape(g, tokens, heads, width // heads).transpose(1, 2).reshape(g * heads, tokens, width // heads)


class ImageKeysValues:
    """The image keys/values of every adapter on one layer, laid out for one batch.

    Built once per layer and batch layout (per sampling run), then applied at every step; also
    what training differentiates through (keys and values keep their autograd history).
    Keys and values have G rows for a batch of B queries, G dividing B: each row serves B/G
    consecutive samples. Samples that share image tokens (all conditional latents of a batch)
    are folded into the sequence axis, so a batch of latents costs no extra key/value memory.
    """

    def __init__(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], heads: int):
        self.heads = heads
        self.rows = keys[0].shape[0]
        self.token_counts = tuple(k.shape[1] for k in keys)
        self.width = max(self.token_counts)  # every segment's width inside the softmax
        total = sum(self.token_counts)
        padding = len(self.token_counts) * self.width - total  # columns padding adds to a product
        self.padded = padding > 0
        # Scores always come from the compact keys. The weighted-value product runs on the padded
        # layout (zero values: arithmetic instead of a kernel to compact the weights) while that
        # keeps the branch within 1.5x of its minimal arithmetic, i.e. padding <= total.
        self.pad_values = self.padded and padding <= total
        self.segments = [(sum(self.token_counts[:a]), count) for a, count in enumerate(self.token_counts)]
        self.keys = head_major(torch.cat(list(keys), dim=1), heads) * (keys[0].shape[-1] // heads) ** -0.5  # (G*H, T, d)
        values = head_major(torch.cat(list(values), dim=1), heads)
        if self.pad_values:
            values = self.pad(values.transpose(1, 2), values.new_zeros(())).transpose(1, 2)
        self.values = values
        self.neg_inf = self.keys.new_full((), float("-inf"))
        self.mask_memo: tuple[object, int, torch.Tensor | None] = (None, 0, None)

    def add_to(
        self,
        text_out: torch.Tensor,
        q: torch.Tensor,
        value_scale: torch.Tensor | None = None,
        masks: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """text_out + Σ_a mask_a · Attn(q, K_a, scale_a · V_a).

        value_scale: (G or 1, adapters) factors applied on top of the folded weights (step gating);
        masks: per adapter, None or (B, L, 1) over the queries. A list passed again (the same
        object) reuses what was derived from it the first time.
        """
        shape = q.shape
        groups, heads, adapters = self.rows, self.heads, len(self.token_counts)
        length = shape[0] // groups * shape[1]  # queries per row, samples folded into the sequence
        q = head_major(q.reshape(groups, length, shape[-1]), heads)
        scores = torch.bmm(q, self.keys.transpose(1, 2))
        if self.padded:
            scores = self.pad(scores, self.neg_inf)
        probs = scores.unflatten(-1, (adapters, self.width)).softmax(dim=-1)  # one softmax per segment
        factors = self.query_factors(masks, length)
        if value_scale is not None:  # attention is linear in V: scaling the weights scales the values
            scale = value_scale.to(probs.dtype).reshape(-1, 1, 1, adapters, 1)
            factors = scale if factors is None else factors * scale
        if factors is not None:  # out of place: softmax's backward needs its output
            probs = (probs.unflatten(0, (groups, heads)) * factors).flatten(0, 1)
        probs = probs.flatten(-2)
        if self.padded and not self.pad_values:
            probs = torch.cat([probs[..., a * self.width : a * self.width + count] for a, count in enumerate(self.token_counts)], dim=-1)
        image_out = torch.bmm(probs, self.values).unflatten(0, (groups, heads)).transpose(1, 2)
        return (text_out.reshape(groups, length, heads, -1) + image_out).reshape(shape)

    def pad(self, t: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """(..., T) -> (..., adapters * W): each segment followed by `fill` up to the common width."""
        pieces = []
        for start, count in self.segments:
            pieces.append(t[..., start : start + count])
            if count < self.width:
                pieces.append(fill.expand(*t.shape[:-1], self.width - count))
        return torch.cat(pieces, dim=-1)

    def query_factors(self, masks: Sequence[torch.Tensor | None] | None, length: int) -> torch.Tensor | None:
        """The masks as one (G, 1, queries, adapters, 1) factor on the attention weights, or None."""
        if masks is None or all(m is None for m in masks):
            return None
        if self.mask_memo[0] is not masks or self.mask_memo[1] != length:
            one = self.values.new_ones(()).expand(self.rows, 1, length, 1, 1)
            pieces = [one if m is None else m.to(self.values.dtype).reshape(self.rows, 1, length, 1, 1) for m in masks]
            self.mask_memo = (masks, length, torch.cat(pieces, dim=3))
        return self.mask_memo[2]
