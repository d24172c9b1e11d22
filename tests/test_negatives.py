"""Make Negative Image: each kind does what it says, deterministically."""

from __future__ import annotations

import pytest
import torch

from helpers import node
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.negatives import NEGATIVE_KINDS, negative_image


def image(seed, shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def high_frequency_energy(batch: torch.Tensor) -> float:
    return ((batch[:, 1:] - batch[:, :-1]) ** 2).mean().item() + ((batch[:, :, 1:] - batch[:, :, :-1]) ** 2).mean().item()


@pytest.mark.parametrize("kind", NEGATIVE_KINDS)
def test_shape_range_and_determinism(kind):
    batch = image(0, (3, 40, 56, 3))
    out = negative_image(batch, kind, seed=7)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, negative_image(batch, kind, seed=7))


@pytest.mark.parametrize("kind", NEGATIVE_KINDS)
def test_strength_zero_returns_the_input(kind):
    batch = image(1, (2, 17, 23, 3))
    assert torch.equal(negative_image(batch, kind, strength=0.0, seed=3), batch)


def test_strength_blends_linearly():
    batch = image(2, (1, 16, 16, 3))
    full = negative_image(batch, "noise", strength=1.0, seed=4)
    half = negative_image(batch, "noise", strength=0.5, seed=4)
    assert torch.allclose(half, (batch + full) / 2, atol=1e-6)


def test_gray_is_constant_half():
    out = negative_image(image(3, (2, 9, 11, 3)), "gray")
    assert torch.all(out == 0.5)


def test_shuffle_is_a_permutation_of_each_images_pixels():
    batch = image(4, (2, 24, 32, 3))
    out = negative_image(batch, "shuffle", seed=5)
    pixels_in, pixels_out = batch.reshape(2, -1, 3), out.reshape(2, -1, 3)
    for i in range(2):
        assert torch.equal(pixels_in[i].sort(dim=0).values, pixels_out[i].sort(dim=0).values)
        # Whole pixels move (channels stay together): every output pixel is an input pixel.
        rows = {tuple(p) for p in pixels_in[i].tolist()}
        assert all(tuple(p) in rows for p in pixels_out[i].tolist())
    assert not torch.equal(out, batch)
    assert not torch.equal(out[0], negative_image(batch[:1], "shuffle", seed=6)[0])


def test_blur_removes_high_frequencies():
    batch = image(5, (1, 64, 64, 3))
    out = negative_image(batch, "blur")
    assert high_frequency_energy(out) < 0.05 * high_frequency_energy(batch)
    assert torch.allclose(out.mean(dim=(1, 2)), batch.mean(dim=(1, 2)), atol=0.02)  # colours survive


def test_noise_differs_by_seed_and_ignores_content():
    batch = image(6, (1, 32, 32, 3))
    a, b = negative_image(batch, "noise", seed=1), negative_image(batch, "noise", seed=2)
    assert (a - b).abs().mean() > 0.2
    assert torch.equal(a, negative_image(torch.zeros_like(batch), "noise", seed=1))


def test_rgba_and_grayscale_give_rgb():
    assert negative_image(image(7, (1, 8, 8, 4)), "blur").shape == (1, 8, 8, 3)
    gray = negative_image(image(8, (1, 8, 8, 1)), "shuffle", seed=1)
    assert gray.shape == (1, 8, 8, 3) and torch.equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="fade"), "Unknown kind 'fade'; choose one of noise, blur, shuffle, gray"),
    (dict(strength=1.5), "strength is 1.5; it must be between 0 and 1"),
])
def test_bad_inputs(kwargs, message):
    with pytest.raises(IPAdapterError, match=message):
        negative_image(image(0, (1, 8, 8, 3)), **kwargs)


def test_node(pack):
    make = node("ExactMakeNegativeImage")
    inputs = make.INPUT_TYPES()["required"]
    assert list(inputs) == ["image", "kind", "strength", "seed"]
    assert inputs["kind"][1]["default"] == "noise" and inputs["strength"][1]["default"] == 1.0
    batch = image(9, (2, 20, 30, 3))
    (out,) = make(batch, "shuffle", 0.5, 11)
    assert torch.equal(out, negative_image(batch, "shuffle", 0.5, 11))
