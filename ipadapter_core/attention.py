"""Decoupled cross-attention: Z = Attn(Q, K_text, V_text) + Σ_a λ_a · Attn(Q, K_a, V_a).

The text half is whatever the host computed; this module adds the image halves. Each
adapter keeps its own softmax (concatenating image and text tokens into one softmax is a
different model). The weight λ_a is folded into V_a by whoever builds the values, because
attention is linear in V: that costs a few tokens' worth of work instead of a query-sized pass.

Image branches have only 4-16 tokens per reference, so on a GPU each kernel launch costs more
than its arithmetic. All adapters of a layer therefore run as one per-head attention over their
tokens concatenated along the token axis, with one softmax per adapter segment: one softmax call
covers every segment by viewing the scores as (segments, W, queries), W the longest token count
(scores are keys x queryᵀ: see add_to). The
kernels per layer call do not depend on the number of adapters, and the arithmetic stays within
1.5x of one softmax(QKᵀ)V per adapter and head. Each segment's softmax subtracts its own
maximum, so an adapter whose scores lie far below another's neither underflows to 0/0 nor
vanishes, in fp16 and bf16 alike.

Two query layouts (batched matrix products take one batch stride, and the query's rows x heads
have two):
- Row-major, when the caller hands over a text output it owns (`overwrite_text`) and the batch
  has at most two key/value rows (cond and uncond): the query as it comes, one product against
  every row's keys (for two rows, half the scores are never read: 1.5x the minimal arithmetic),
  then one product per row that accumulates into the text output in place: scores, softmax
  and one product per row, four kernels with CFG, three for one row.
- Head-major otherwise: the query copied to (rows x heads, L, d), scores, softmax, weighted
  values, add to the text output: five kernels (the copy is a view for one row).

Unequal token counts: when every count divides the longest and repeating the shorter segments
keeps the padded width within 1.5x of the total, each segment's tokens are repeated to width W
at build time. That is exact (m copies of a token each get 1/m of its weight, with unchanged
values) and costs no kernel. Otherwise the scores are padded with -inf by one concatenation,
and the weighted values use the padded layout (zero values: head-major only) while that keeps
the branch within 1.5x, or the compact one (a second concatenation; row-major if allowed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# An attention kernel over (batch, tokens, heads*dim) tensors: image_attention or the host's (SD3.5's joint branch takes one).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

MAX_FLOPS_OVER_MINIMAL = 1.5


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
        padded_total = len(self.token_counts) * self.width
        self.repeated = padded_total > total and all(self.width % count == 0 for count in self.token_counts) and padded_total <= MAX_FLOPS_OVER_MINIMAL * total
        if self.repeated:
            keys = [k.repeat(1, self.width // k.shape[1], 1) for k in keys]
            values = [v.repeat(1, self.width // v.shape[1], 1) for v in values]
        self.padded = padded_total > total and not self.repeated
        # Scores come from the compact keys; the weighted values use the padded layout while the
        # branch's arithmetic, (total + padded_total) / (2 total), stays within the bound.
        self.pad_values = self.padded and padded_total + total <= 2 * MAX_FLOPS_OVER_MINIMAL * total
        self.segments = [(sum(self.token_counts[:a]), count) for a, count in enumerate(self.token_counts)]
        self.keys = head_major(torch.cat(list(keys), dim=1), heads) * (keys[0].shape[-1] // heads) ** -0.5  # (G*H, N, d)
        values = head_major(torch.cat(list(values), dim=1), heads)
        if self.pad_values:
            values = self.pad(values, values.new_zeros(()))
        self.values = values
        # Row-major layout: the product against every row's keys costs G times the scores'
        # arithmetic, (G + 1) / 2 times the minimum with the per-row value products. Padded
        # values would add to that; with compact values it saves the head-major query copy.
        arithmetic = (self.rows + 1) / 2 * (padded_total / total if self.repeated else 1.0)
        self.all_row_keys = None
        if not self.pad_values and arithmetic <= MAX_FLOPS_OVER_MINIMAL:
            self.all_row_keys = self.keys.unflatten(0, (self.rows, heads)).transpose(0, 1).flatten(1, 2)  # (H, G*N, d)
        self.neg_inf = self.keys.new_full((), float("-inf"))
        self.mask_memo: tuple[object, int, torch.Tensor | None] = (None, 0, None)

    def add_to(
        self,
        text_out: torch.Tensor,
        q: torch.Tensor,
        value_scale: torch.Tensor | None = None,
        masks: Sequence[torch.Tensor | None] | None = None,
        overwrite_text: bool = False,
    ) -> torch.Tensor:
        """text_out + Σ_a mask_a · Attn(q, K_a, scale_a · V_a).

        value_scale: (G or 1, adapters) factors applied on top of the folded weights (step gating);
        masks: per adapter, None or (B, L, 1) over the queries. A list passed again (the same
        object) reuses what was derived from it the first time.
        overwrite_text: text_out is the caller's own fresh tensor that nothing else reads and
        autograd does not need; the image half may then be accumulated into it in place (and
        text_out is returned).

        Scores are computed as keys x queryᵀ (tokens, queries): the tokens are the products' short
        side, so a score does not depend on how many other adapters share the product (BLAS
        libraries pick their kernels, and with them the rounding, by the short side).
        """
        groups = self.rows
        length = q.shape[0] // groups * q.shape[1]  # queries per row, samples folded into the sequence
        factors = self.factors(masks, value_scale, length)
        if overwrite_text and self.all_row_keys is not None and text_out.is_contiguous() and text_out.dtype == self.values.dtype:
            return self.accumulate_row_major(text_out, q, factors, length)
        return self.add_head_major(text_out, q, factors, length)

    def accumulate_row_major(self, out: torch.Tensor, q: torch.Tensor, factors: torch.Tensor | None, length: int) -> torch.Tensor:
        """Scores of every row's keys against the query as it comes; per row, the weighted values
        accumulate into `out` in place (the product's own accumulation: no add kernel)."""
        groups, heads = self.rows, self.heads
        scores = torch.bmm(self.all_row_keys, q.reshape(groups * length, heads, -1).permute(1, 2, 0))  # (H, G*N, G*L)
        probs = self.segment_softmax(scores.unflatten(1, (groups, -1)))  # (H, G, A, W, G*L): every row's segments
        if factors is not None:  # out of place: softmax's backward needs its output
            probs = (probs.unflatten(-1, (groups, length)) * factors.permute(2, 0, 1).unsqueeze(1)).flatten(-2)
        probs = self.compact(probs.flatten(2, 3)).unflatten(-1, (groups, length))  # row g's keys meet row g's queries at [:, g, :, g]
        rows = out.view(groups, length, heads, -1)
        values = self.values.unflatten(0, (groups, heads))
        for g in range(groups):
            rows[g].transpose(0, 1).baddbmm_(probs[:, g, :, g].transpose(1, 2), values[g])
        return out

    def add_head_major(self, text_out: torch.Tensor, q: torch.Tensor, factors: torch.Tensor | None, length: int) -> torch.Tensor:
        """One (row, head) matrix per batch entry: the query copied once, the sum added out of place."""
        shape = q.shape
        groups, heads = self.rows, self.heads
        q = head_major(q.reshape(groups, length, shape[-1]), heads)
        probs = self.segment_softmax(torch.bmm(self.keys, q.transpose(1, 2)))  # (G*H, A, W, L)
        if factors is not None:  # out of place: softmax's backward needs its output
            probs = (probs.unflatten(0, (groups, heads)) * factors.transpose(1, 2).unsqueeze(1).unsqueeze(-2)).flatten(0, 1)
        image_out = torch.bmm(self.compact(probs.flatten(1, 2)).transpose(1, 2), self.values).unflatten(0, (groups, heads)).transpose(1, 2)
        return (text_out.reshape(groups, length, heads, -1) + image_out).reshape(shape)

    def segment_softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """(..., N, queries) scores of the compact (or repeated) keys -> (..., adapters, W, queries)
        weights, one softmax per segment; at most 4 dims, so that the padding concatenation is one kernel."""
        if self.padded:
            scores = self.pad(scores, self.neg_inf)
        return scores.unflatten(-2, (len(self.token_counts), self.width)).softmax(dim=-2)

    def compact(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., adapters * W, queries) -> the token layout of the values: unchanged unless the
        values are compact and the weights padded (then one concatenation; at most 4 dims)."""
        if not self.padded or self.pad_values:
            return probs
        return torch.cat([probs[..., a * self.width : a * self.width + count, :] for a, count in enumerate(self.token_counts)], dim=-2)

    def pad(self, t: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """(..., N, X) -> (..., adapters * W, X): each segment's tokens followed by `fill` up to the common width."""
        pieces = []
        for start, count in self.segments:
            pieces.append(t[..., start : start + count, :])
            if count < self.width:
                pieces.append(fill.expand(*t.shape[:-2], self.width - count, t.shape[-1]))
        return torch.cat(pieces, dim=-2)

    def factors(self, masks: Sequence[torch.Tensor | None] | None, value_scale: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """What multiplies each adapter's attention weights, (G or 1, queries or 1, adapters), or None."""
        mask = self.query_factors(masks, length)
        if value_scale is None:  # attention is linear in V: scaling the weights scales the values
            return mask
        scale = value_scale.to(self.values.dtype).reshape(-1, 1, len(self.token_counts))
        return scale if mask is None else mask * scale

    def query_factors(self, masks: Sequence[torch.Tensor | None] | None, length: int) -> torch.Tensor | None:
        """The masks as one (G, queries, adapters) factor, or None; combined once per list."""
        if masks is None or all(m is None for m in masks):
            return None
        if self.mask_memo[0] is not masks or self.mask_memo[1] != length:
            one = self.values.new_ones(()).expand(self.rows, length, 1)
            pieces = [one if m is None else m.to(self.values.dtype).reshape(self.rows, length, 1) for m in masks]
            self.mask_memo = (masks, length, torch.cat(pieces, dim=-1))
        return self.mask_memo[2]
