"""Prepare Image For CLIP: which square the encoder sees, letterboxing and sharpening, by the numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import node
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.reference_prep import PAD_VALUE, prepare_reference


def image(seed, shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def high_frequency_energy(batch: torch.Tensor) -> float:
    """Mean squared difference of neighbouring pixels, (B, H, W, C)."""
    return ((batch[:, 1:] - batch[:, :-1]) ** 2).mean().item() + ((batch[:, :, 1:] - batch[:, :, :-1]) ** 2).mean().item()


def smooth(seed, shape):
    """Low-frequency content, so sharpening is not lost to clamping at 0 and 1."""
    batch, height, width, channels = shape
    coarse = image(seed, (batch, channels, height // 8, width // 8))
    return (0.25 + 0.5 * F.interpolate(coarse, size=(height, width), mode="bilinear")).movedim(1, -1)


def test_center_is_comfyui_resize_of_the_centre_square():
    wide = image(0, (2, 100, 180, 3))
    expected = F.interpolate(wide[:, :, 40:140].movedim(-1, 1), size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1).movedim(1, -1)
    assert torch.equal(prepare_reference(wide, size=64), expected)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "area"])
def test_crop_positions_pick_the_named_square(interpolation):
    wide, tall = image(1, (2, 60, 150, 3)), image(2, (1, 170, 70, 3))

    def prep(batch, position):
        return prepare_reference(batch, size=32, interpolation=interpolation, crop_position=position)

    assert torch.equal(prep(wide, "left"), prep(wide[:, :, :60], "center"))
    assert torch.equal(prep(wide, "right"), prep(wide[:, :, -60:], "center"))
    assert torch.equal(prep(tall, "top"), prep(tall[:, :70], "center"))
    assert torch.equal(prep(tall, "bottom"), prep(tall[:, -70:], "center"))
    # The other axis is fully used: top/bottom of a wide image are its centre square.
    assert torch.equal(prep(wide, "top"), prep(wide, "center")) and torch.equal(prep(wide, "bottom"), prep(wide, "center"))
    assert not torch.equal(prep(wide, "left"), prep(wide, "right"))


def test_pad_letterboxes_the_whole_image_on_grey():
    wide = image(3, (1, 50, 100, 3))  # 2:1 -> 64 x 32 content, 16 rows of grey above and below
    out = prepare_reference(wide, size=64, interpolation="area", crop_position="pad")
    assert out.shape == (1, 64, 64, 3)
    assert torch.all(out[:, :16] == PAD_VALUE) and torch.all(out[:, 48:] == PAD_VALUE)
    content = F.interpolate(wide.movedim(-1, 1), size=(32, 64), mode="area").movedim(1, -1)
    assert torch.equal(out[:, 16:48], content.clamp(0, 1))

    tall = image(4, (1, 90, 30, 3))  # 3:1 -> 21 x 64 content: 21 columns, 21 + 22 of grey
    out = prepare_reference(tall, size=64, interpolation="nearest", crop_position="pad")
    assert torch.all(out[:, :, :21] == PAD_VALUE) and torch.all(out[:, :, 42:] == PAD_VALUE)
    assert not torch.any(out[:, :, 21:42] == PAD_VALUE)


def test_square_image_at_size_is_returned_unchanged():
    square = image(5, (1, 48, 48, 3))
    for position in ("center", "left", "pad"):
        assert torch.equal(prepare_reference(square, size=48, crop_position=position), square)


def test_sharpening_zero_is_no_sharpening_bit_for_bit():
    batch = image(6, (2, 80, 120, 3))
    resized = F.interpolate(batch[:, :, 20:100].movedim(-1, 1), size=(56, 56), mode="bilinear", antialias=True).movedim(1, -1)
    assert torch.equal(prepare_reference(batch, size=56, interpolation="bilinear", sharpening=0.0), resized.clamp(0, 1))


def test_sharpening_adds_high_frequencies_and_keeps_shape():
    batch = smooth(7, (2, 128, 128, 3))
    energies = [high_frequency_energy(prepare_reference(batch, size=64, sharpening=s)) for s in (0.0, 0.5, 1.0)]
    assert energies[0] < energies[1] < energies[2]
    assert energies[2] > 1.5 * energies[0]
    sharpened = prepare_reference(batch, size=64, sharpening=1.0)
    assert sharpened.shape == (2, 64, 64, 3) and 0 <= sharpened.min() and sharpened.max() <= 1
    # An unsharp mask keeps the local mean: the image itself is unchanged at low frequencies.
    plain = prepare_reference(batch, size=64)
    assert (F.avg_pool2d(sharpened.movedim(-1, 1), 8) - F.avg_pool2d(plain.movedim(-1, 1), 8)).abs().max() < 0.02


def test_rgba_and_grayscale_inputs():
    rgb = image(8, (1, 40, 60, 3))
    rgba = torch.cat([rgb, torch.rand(1, 40, 60, 1)], dim=-1)
    assert torch.equal(prepare_reference(rgba, size=32), prepare_reference(rgb, size=32))
    gray = image(9, (1, 40, 60, 1))
    out = prepare_reference(gray, size=32, crop_position="pad")
    assert out.shape == (1, 32, 32, 3)
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(interpolation="lanczos"), "Unknown interpolation 'lanczos'; choose one of nearest, bilinear, bicubic, area"),
    (dict(crop_position="middle"), "Unknown crop_position 'middle'"),
    (dict(sharpening=2.0), "sharpening is 2.0; it must be between 0 and 1"),
])
def test_bad_inputs(kwargs, message):
    with pytest.raises(IPAdapterError, match=message):
        prepare_reference(image(0, (1, 8, 8, 3)), **kwargs)


def test_node(pack):
    prepare = node("ExactPrepareImageForClip")
    assert prepare.GET_SCHEMA().display_name == "Prepare Image For CLIP (IP-Adapter)"
    inputs = prepare.INPUT_TYPES()["required"]
    assert list(inputs) == ["image", "interpolation", "crop_position", "sharpening", "size"]
    assert inputs["interpolation"][1]["default"] == "bicubic" and inputs["crop_position"][1]["default"] == "center"
    assert inputs["sharpening"][1]["default"] == 0.0 and inputs["size"][1]["default"] == 224
    batch = image(10, (2, 300, 200, 4))
    (out,) = prepare(batch, "bicubic", "top", 0.0, 224)
    assert torch.equal(out, prepare_reference(batch[:, :200, :, :3], size=224))
