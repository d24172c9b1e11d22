"""Decoupled attention math: every adapter of a layer in one per-head layout, against the formula and the reference form."""

from __future__ import annotations

import functools

import pytest
import torch

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
def test_layer_equals_sum_of_branches(tokens):
    q, text, ks, vs = tensors(1, tokens=tokens)
    image_kv = ImageKeysValues(ks, vs, heads=8)
    expected = text + sum(naive_attention(q, k, v, 8) for k, v in zip(ks, vs))
    assert torch.allclose(image_kv.add_to(text, q), expected, atol=1e-10)


def test_many_tokens():
    q, text, ks, vs = tensors(2, tokens=(257,))
    image_kv = ImageKeysValues(ks, vs, heads=8)
    assert torch.allclose(image_kv.add_to(text, q), text + naive_attention(q, ks[0], vs[0], 8), atol=1e-10)


def test_scales_and_masks():
    """value_scale multiplies each adapter's values per sample; a mask gates its output per query."""
    q, text, ks, vs = tensors(3, tokens=(4, 16))
    scale = torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64)
    mask = (torch.rand(2, 64, 1, generator=torch.Generator().manual_seed(4)) > 0.5).double()
    image_kv = ImageKeysValues(ks, vs, heads=8)
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


def reference_sum(text, q, ks, vs, heads, scale=None, masks=None):
    """The reference form, one adapter at a time: rows repeated per sample, scale on V, mask on the output."""
    out = text
    for a, (k, v) in enumerate(zip(ks, vs)):
        per_sample = q.shape[0] // k.shape[0]
        if scale is not None:
            v = v * scale[:, a, None, None]
        branch = image_attention(q, k.repeat_interleave(per_sample, 0), v.repeat_interleave(per_sample, 0), heads)
        if masks is not None and masks[a] is not None:
            branch = branch * masks[a]
        out = out + branch
    return out


def mixed_case(seed, tokens, rows, batch, dtype=torch.float64, length=64):
    """Inputs with some adapters masked and per-row gates that include 0."""
    g = torch.Generator().manual_seed(seed)
    q, text, ks, vs = tensors(seed, batch=batch, length=length, tokens=tokens)
    ks, vs = [k[:rows] for k in ks], [v[:rows] for v in vs]
    scale = torch.rand(rows, len(tokens), generator=g, dtype=torch.float64) * 2
    scale[0, 0] = 0.0
    masks = [torch.rand(batch, q.shape[1], 1, generator=g, dtype=torch.float64) if a % 2 == 0 else None for a in range(len(tokens))]
    q, text, scale = q.to(dtype), text.to(dtype), scale.to(dtype)
    return q, text, [k.to(dtype) for k in ks], [v.to(dtype) for v in vs], scale, [None if m is None else m.to(dtype) for m in masks]


def add(image_kv, text, q, overwrite, **kwargs):
    """add_to as the node patch calls it: with overwrite, on a fresh copy of the text output."""
    return image_kv.add_to(text.clone() if overwrite else text, q, overwrite_text=overwrite, **kwargs)


# Token mixes that reach every segment layout: equal counts; shorter segments repeated (every
# count divides the longest, within 1.5x); scores padded with padded weighted values; padded
# scores with compact weighted values (padding would more than double that product).
LAYOUTS = {
    (4, 4, 4): "equal",
    (16,) * 7 + (4,): "repeated",
    (16, 4, 16): "repeated",
    (16, 16, 12): "padded values",
    (4, 16): "padded values",
    (4, 257): "padded values",
    (4, 4, 4, 16): "compact values",
}


def layout_of(image_kv):
    if image_kv.padded:
        return "padded values" if image_kv.pad_values else "compact values"
    return "repeated" if image_kv.repeated else "equal"


@pytest.mark.parametrize("tokens", list(LAYOUTS))
@pytest.mark.parametrize("rows, batch", [(2, 6), (4, 4), (1, 2)])
@pytest.mark.parametrize("overwrite", [False, True])
def test_every_layout_matches_reference_form(tokens, rows, batch, overwrite):
    """Mixed token counts, masks, per-row gates, shared or per-latent rows, either query layout:
    the per-adapter SDPA sum."""
    q, text, ks, vs, scale, masks = mixed_case(9, tokens, rows, batch)
    image_kv = ImageKeysValues(ks, vs, heads=8)
    assert layout_of(image_kv) == LAYOUTS[tokens]
    expected = reference_sum(text, q, ks, vs, 8, scale, masks)
    assert torch.allclose(add(image_kv, text, q, overwrite, value_scale=scale, masks=masks), expected, atol=1e-10)
    assert torch.allclose(add(image_kv, text, q, overwrite), reference_sum(text, q, ks, vs, 8), atol=1e-10)


@pytest.mark.parametrize(
    "tokens, rows, row_major",
    [((4,), 2, True), ((4,) * 8, 1, True), ((16, 4, 16), 1, True), ((4, 4, 4, 16), 2, True), ((16, 4, 16), 2, False), ((4,), 4, False), ((4, 16), 2, False)],
)
def test_row_major_layout_accumulates_in_place_only_when_allowed(tokens, rows, row_major):
    """The text output is updated in place only when the caller hands it over and the row-major
    product stays within 1.5x of the minimal arithmetic: up to two rows, no repeat (one row: a
    repeat within 1.5x), compact values. Otherwise, and always without overwrite_text, the
    caller's tensor is untouched."""
    q, text, ks, vs, scale, masks = mixed_case(16, tokens, rows, batch=4)
    image_kv = ImageKeysValues(ks, vs, heads=8)
    assert (image_kv.all_row_keys is not None) == row_major
    kept = text.clone()
    out = image_kv.add_to(text, q, value_scale=scale, masks=masks)
    assert out is not text and torch.equal(text, kept)
    out = image_kv.add_to(text, q, value_scale=scale, masks=masks, overwrite_text=True)
    assert (out is text) == row_major and torch.equal(text, kept) != row_major
    assert torch.allclose(out, reference_sum(kept, q, ks, vs, 8, scale, masks), atol=1e-10)
    non_contiguous = kept.transpose(0, 1).contiguous().transpose(0, 1)
    assert image_kv.add_to(non_contiguous, q, overwrite_text=True) is not non_contiguous


@pytest.mark.parametrize("rows, batch", [(1, 2), (2, 2), (2, 6), (4, 4)])
def test_adapters_with_zero_values_leave_the_others_bit_identical(rows, batch):
    """An adapter at weight 0 (zero values) beside others changes nothing, to the bit, in either
    layout and for any number of them: tokens are the short side of the score product, so no
    score depends on how many adapters share it (test_nodes relies on this through a whole UNet)."""
    q, text, ks, vs = tensors(17, batch=batch, length=48, tokens=(4,) * 8)
    ks, vs = [k[:rows].float() for k in ks], [v[:rows].float() for v in vs]
    q, text = q.float(), text.float()
    zeros = [torch.zeros_like(v) for v in vs]
    one = ImageKeysValues(ks[:1], vs[:1], heads=8).add_to(text, q)
    for count in (2, 3, 8):
        image_kv = ImageKeysValues(ks[:count], vs[:1] + zeros[1:count], heads=8)
        for overwrite in (False, True):
            assert torch.equal(add(image_kv, text, q, overwrite), one)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [(4, 4), (4, 16), (16, 16, 12), (16, 4, 16)])
def test_far_apart_adapters_in_half_precision(dtype, tokens, overwrite):
    """One adapter's scores >100 below another's: a softmax shifted by one maximum for all segments
    would underflow that adapter to 0/0 (even in fp32); each segment keeps its own maximum. Scores
    that large lose digits when stored in half precision, so the bar is the formula evaluated in
    that precision, adapter by adapter."""
    g = torch.Generator().manual_seed(11)
    heads, d, length = 2, 32, 16
    u = torch.nn.functional.normalize(torch.randn(1, 1, heads * d, generator=g), dim=-1) * d**0.5
    q = 5 * u + torch.randn(2, length, heads * d, generator=g)
    ks = [(5 if a % 2 == 0 else -5) * u + torch.randn(2, t, heads * d, generator=g) for a, t in enumerate(tokens)]
    vs = [torch.randn(2, t, heads * d, generator=g) for t in tokens]
    text = torch.randn(2, length, heads * d, generator=g)
    q, text, ks, vs = q.to(dtype), text.to(dtype), [k.to(dtype) for k in ks], [v.to(dtype) for v in vs]
    scores = [torch.einsum("blhd,bthd->bhlt", q.double().unflatten(-1, (heads, d)), k.double().unflatten(-1, (heads, d))) / d**0.5 for k in ks]
    assert (scores[1].amax(dim=-1) < scores[0].amin(dim=-1) - 100).all()  # in every head, for every query
    out = add(ImageKeysValues(ks, vs, heads), text, q, overwrite)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = reference_sum(text.double(), q.double(), [k.double() for k in ks], [v.double() for v in vs], heads)
    same_precision = text + sum(naive_attention(q, k, v, heads) for k, v in zip(ks, vs))
    error = (out.double() - expected).norm() / expected.norm()
    assert error < 1.5 * (same_precision.double() - expected).norm() / expected.norm()
    low = image_attention(q.double(), ks[1].double(), vs[1].double(), heads)
    assert low.norm() > 0.2 * (expected - text.double()).norm()  # the low adapter really contributes


@pytest.mark.parametrize("rows, overwrite", [(2, False), (2, True), (1, True)])
@pytest.mark.parametrize("tokens", list(LAYOUTS))
def test_gradients_match_reference_form(tokens, rows, overwrite):
    """Training differentiates through this layout: gradients to q, keys, values and the text
    output are the reference's (the in-place accumulation included)."""
    q, text, ks, vs, scale, masks = mixed_case(12, tokens, rows=rows, batch=4, length=16)
    leaves = [q, text, *ks, *vs]
    for t in leaves:
        t.requires_grad_(True)
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    out = add(ImageKeysValues(ks, vs, heads=8), text, q, overwrite, value_scale=scale, masks=masks)
    grads = torch.autograd.grad((out * weights).sum(), leaves)
    expected = torch.autograd.grad((reference_sum(text, q, ks, vs, 8, scale, masks) * weights).sum(), leaves)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-10)


@functools.cache
def count_kernels(tokens, rows=2, batch=4, gated=False, masked=False, overwrite=False):
    """Kernels of one add_to call, counted as benchmarks/count_cost.py counts a sampling step."""
    from benchmarks.count_cost import OperatorCounter

    q, text, ks, vs, scale, masks = mixed_case(14, tokens, rows, batch, dtype=torch.float32, length=16)
    image_kv = ImageKeysValues(ks, vs, heads=8)
    masks = masks if masked else None
    if masks is not None:
        image_kv.add_to(text, q, masks=masks)  # masks are combined once per list, as in sampling
    with torch.inference_mode():
        text = text.clone()  # the host's fresh output, made outside the count
        with OperatorCounter() as counter:
            image_kv.add_to(text, q, value_scale=scale if gated else None, masks=masks, overwrite_text=overwrite)
    return counter.total


def test_kernels_do_not_grow_with_adapters():
    """Per layer call, row-major (the node patch's case with CFG): scores, softmax, one product per
    row that accumulates into the text output. Head-major: query copy (a view for one row), scores,
    softmax, weighted values, add. The same for 1 or 8 adapters; unequal counts that cannot be
    repeated add a concatenation per padded product (row-major when both products would be
    padded); a mask and a gate add one multiplication each."""
    assert count_kernels((4,), overwrite=True) == count_kernels((4,) * 8, overwrite=True) == count_kernels((16,) * 8, overwrite=True) == 4
    assert count_kernels((257,) * 2, overwrite=True) == 4
    assert count_kernels((4,), rows=1, batch=2, overwrite=True) == count_kernels((16, 4, 16), rows=1, batch=2, overwrite=True) == 3
    assert count_kernels((4,)) == count_kernels((4,) * 8) == count_kernels((16, 4, 16)) == count_kernels((16,) * 7 + (4,)) == 5
    assert count_kernels((16, 4, 16), overwrite=True) == count_kernels((4,), rows=4, overwrite=True) == 5
    assert count_kernels((4,), rows=1, batch=2) == count_kernels((16,) * 8, rows=1, batch=2) == 4
    for overwrite in (False, True):
        assert count_kernels((4, 16), overwrite=overwrite) == count_kernels((4, 16) * 4, overwrite=overwrite) == count_kernels((16, 16, 12), overwrite=overwrite) == 6
        assert count_kernels((4, 4, 4, 16), overwrite=overwrite) == count_kernels((4,) * 7 + (16,), overwrite=overwrite) == 7 - overwrite
        for tokens in [(4,), (4,) * 8, (4, 16) * 4, (16, 4, 16), (4, 4, 4, 16)]:
            plain = count_kernels(tokens, overwrite=overwrite)
            assert count_kernels(tokens, masked=True, overwrite=overwrite) == count_kernels(tokens, gated=True, overwrite=overwrite) == plain + 1
            assert count_kernels(tokens, masked=True, gated=True, overwrite=overwrite) == plain + 2


def test_counter_counts_the_copy_inside_out_of_place_baddbmm():
    """ATen's out-of-place baddbmm copies its input into the new output before the GEMM (two
    launches, below any dispatch mode); in place there is no copy. The FLOPs of both forms count."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.count_cost import OperatorCounter

    a, b, c = torch.randn(4, 8, 16), torch.randn(4, 16, 3), torch.randn(4, 8, 3)
    for call, kernels in [(lambda: torch.baddbmm(c, a, b), 2), (lambda: torch.baddbmm(c, a, b, beta=0), 1), (lambda: c.baddbmm_(a, b), 1), (lambda: torch.bmm(a, b), 1)]:
        with OperatorCounter() as counter, FlopCounterMode(display=False) as flops:
            call()
        assert counter.total == kernels and flops.get_total_flops() == 2 * 4 * 8 * 16 * 3


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("tokens", [(4,), (4,) * 8, (16,) * 8, (4, 16), (16, 16, 12), (4, 257), (4,) * 7 + (16,), (16,) + (4,) * 7, (16,) * 7 + (4,), (16, 4, 16)])
def test_flops_stay_within_one_and_a_half_of_minimal(tokens, rows, overwrite):
    """Minimal: one softmax(QKᵀ)V per adapter and head, 4·B·L·C·T; exactly that for equal counts
    in the head-major layout, 1.5x in the row-major one with two rows."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.count_cost import OperatorCounter  # noqa: F401  (registers the in-place product's FLOPs)

    q, text, ks, vs, _, _ = mixed_case(15, tokens, rows=rows, batch=4, dtype=torch.float32)
    image_kv = ImageKeysValues(ks, vs, heads=8)
    with torch.inference_mode():
        text = text.clone()
        with FlopCounterMode(display=False) as flops:
            image_kv.add_to(text, q, overwrite_text=overwrite)
    ratio = flops.get_total_flops() / (4 * q.numel() * sum(tokens))
    if len(set(tokens)) == 1:
        assert ratio == (1.5 if overwrite and rows == 2 else 1.0)
    assert 1.0 <= ratio <= 1.5
