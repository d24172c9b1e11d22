"""Decoupled attention math: the fused block-diagonal path and the general path against the formula."""

from __future__ import annotations

import pytest
import torch

from ipadapter_core import attention as attn
from ipadapter_core.attention import ImageKeysValues, image_attention


def naive_attention(q, k, v, heads):
    """softmax(q kᵀ / √d) v per head, written out with einsum: the formula, independent of SDPA."""
    b, length, width = q.shape
    d = width // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d) for t in (q, k, v))
    weights = torch.einsum("blhd,bthd->bhlt", qh, kh).mul(d**-0.5).softmax(-1)
    return torch.einsum("bhlt,bthd->blhd", weights, vh).reshape(b, length, width)


def tensors(seed, batch=2, length=64, width=320, tokens=(4,)):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, length, width, generator=g, dtype=torch.float64)
    text = torch.randn(batch, length, width, generator=g, dtype=torch.float64)
    ks = [torch.randn(batch, t, width, generator=g, dtype=torch.float64) for t in tokens]
    vs = [torch.randn(batch, t, width, generator=g, dtype=torch.float64) for t in tokens]
    return q, text, ks, vs


def test_reference_attention_is_the_formula():
    q, _, (k,), (v,) = tensors(0)
    assert torch.allclose(image_attention(q, k, v, 8), naive_attention(q, k, v, 8), atol=1e-12)


@pytest.mark.parametrize("tokens", [(4,), (16,), (4, 4), (4, 16), (4, 16, 8)])
def test_fused_path_equals_sum_of_branches(tokens):
    q, text, ks, vs = tensors(1, tokens=tokens)
    image_kv = ImageKeysValues(ks, vs, heads=8)
    assert image_kv.fused
    expected = text + sum(naive_attention(q, k, v, 8) for k, v in zip(ks, vs))
    assert torch.allclose(image_kv.add_to(text, q), expected, atol=1e-10)


def test_general_path_for_many_tokens():
    q, text, ks, vs = tensors(2, tokens=(257,))
    image_kv = ImageKeysValues(ks, vs, heads=8)
    assert not image_kv.fused
    assert torch.allclose(image_kv.add_to(text, q), text + naive_attention(q, ks[0], vs[0], 8), atol=1e-10)


@pytest.mark.parametrize("limit", [attn.FUSED_COLUMN_LIMIT, 0])
def test_scales_and_masks(monkeypatch, limit):
    """value_scale multiplies each adapter's values per sample; a mask gates its output per query."""
    monkeypatch.setattr(attn, "FUSED_COLUMN_LIMIT", limit)
    q, text, ks, vs = tensors(3, tokens=(4, 16))
    scale = torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64)
    mask = (torch.rand(2, 64, 1, generator=torch.Generator().manual_seed(4)) > 0.5).double()
    image_kv = ImageKeysValues(ks, vs, heads=8)
    assert image_kv.fused == (limit > 0)
    out = image_kv.add_to(text, q, value_scale=scale, masks=[mask, None])
    expected = text + mask * naive_attention(q, ks[0], vs[0] * scale[:, 0, None, None], 8) + naive_attention(q, ks[1], vs[1] * scale[:, 1, None, None], 8)
    assert torch.allclose(out, expected, atol=1e-10)


@pytest.mark.parametrize("tokens", [(4,), (257,)])
def test_zero_values_leave_text_output_bit_identical(tokens):
    q, text, ks, vs = tensors(5, tokens=tokens)
    image_kv = ImageKeysValues(ks, [torch.zeros_like(v) for v in vs], heads=8)
    assert torch.equal(image_kv.add_to(text, q), text)
    gated = ImageKeysValues(ks, vs, heads=8).add_to(text, q, value_scale=torch.zeros(2, 1, dtype=torch.float64))
    assert torch.equal(gated, text)


def test_half_precision_stays_close():
    q, text, ks, vs = tensors(6, tokens=(4, 16))
    expected = ImageKeysValues(ks, vs, heads=8).add_to(text, q)
    half = ImageKeysValues([k.half() for k in ks], [v.half() for v in vs], heads=8).add_to(text.half(), q.half())
    assert half.dtype == torch.float16
    assert ((half.double() - expected).norm() / expected.norm()) < 2e-3


def test_gradients_flow_to_keys_and_values():
    """Training uses the same math: to_k_ip/to_v_ip outputs must receive gradients."""
    q, text, ks, vs = tensors(7, tokens=(4,))
    k = ks[0].clone().requires_grad_(True)
    v = vs[0].clone().requires_grad_(True)
    ImageKeysValues([k], [v], heads=8).add_to(text, q).sum().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0
    assert v.grad is not None and v.grad.abs().sum() > 0


@pytest.mark.parametrize("tokens", [(4, 16), (257,)])
def test_shared_rows_equal_per_sample_rows(tokens):
    """Keys/values with one row per pass give what one row per sample gives (batch of 3 latents, CFG)."""
    q, text, ks, vs = tensors(8, batch=6, tokens=tokens)
    shared_k = [k[[0, 3]] for k in ks]  # rows for the cond pass (samples 0-2) and the uncond pass (3-5)
    shared_v = [v[[0, 3]] for v in vs]
    per_sample = ImageKeysValues([k.repeat_interleave(3, 0) for k in shared_k], [v.repeat_interleave(3, 0) for v in shared_v], heads=8)
    shared = ImageKeysValues(shared_k, shared_v, heads=8)
    assert shared.rows == 2 and per_sample.rows == 6
    mask = torch.rand(6, 64, 1, dtype=torch.float64)
    masks = [mask] + [None] * (len(tokens) - 1)
    expected = per_sample.add_to(text, q, masks=masks)
    assert torch.allclose(shared.add_to(text, q, masks=masks), expected, atol=1e-10)
    expected_scaled = per_sample.add_to(text, q, value_scale=torch.tensor([[0.5] * len(tokens)] * 3 + [[2.0] * len(tokens)] * 3, dtype=torch.float64))
    assert torch.allclose(shared.add_to(text, q, value_scale=torch.tensor([[0.5] * len(tokens), [2.0] * len(tokens)], dtype=torch.float64)), expected_scaled, atol=1e-10)
