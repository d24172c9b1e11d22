"""The trained adapter learns to use the image: a small end-to-end reproduction of the paper's claim.

A tiny SD-layout model is first trained as a text-to-image model on flat pictures of random
colours, captioned with the nearest of eight colour names ("<colour> picture"), with the recipe's
caption dropout at 50% so that it also learns the unconditional picture (as classifier-free
guidance training does). The adapter is then
trained with the recipe (dropout, frozen base, to_k_ip/to_v_ip from to_k/to_v) on the same kind
of pictures with empty captions: only the image prompt tells the colour. On held-out pictures with
fixed noise and timesteps, the noise-prediction loss with the picture itself as the image prompt
must beat the loss with another picture's prompt (shuffled) and the base model without the
adapter. A falling training loss alone would prove nothing: with a random base the loss falls
while matched and shuffled references score the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ipadapter_core.checkpoint import split_adapter_weights
from ipadapter_core.training.adapter_setup import AdapterTrainingModel, build_adapter, install_processors
from ipadapter_core.training.config import build_config
from ipadapter_core.training.data import ImageTransform, JsonImageTextDataset, collate
from ipadapter_core.training.encoders import load_image_encoder
from ipadapter_core.training.models import load_base_model
from ipadapter_core.training.recipe import Recipe, StepDraws
from ipadapter_core.training.state import checkpoint_dirs, load_adapter_state
from ipadapter_core.training.trainer import train
from ipadapter_core.encoders import IMAGE_EMBEDS
from tools.training_models import write_base_model, write_image_encoder

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEED = int(os.environ.get("IPADAPTER_LEARNING_SEED", "0"))
RESOLUTION = 16
COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40), (150, 50, 200), (40, 210, 210), (240, 140, 30), (128, 128, 128)]
NAMES = ["red", "green", "blue", "yellow", "purple", "cyan", "orange", "gray"]
BASE_STEPS, ADAPTER_STEPS, BATCH = 400, 300, 32
DEVICE = torch.device("cpu")


def write_pictures(folder: Path, count: int, seed: int, captions: bool) -> Path:
    """Flat pictures of a random colour; captioned with the nearest of eight named colours, or empty captions.

    Colours are drawn from the whole RGB cube, not from the eight: with a few distinct colours an
    untrained adapter's random output could correlate with them by chance, and matched and
    shuffled prompts would differ before any training.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        colour = rng.integers(0, 256, 3)
        nearest = int(np.argmin(((np.array(COLORS) - colour) ** 2).sum(1)))
        pixels = np.empty((RESOLUTION, RESOLUTION, 3), np.uint8)
        pixels[:] = colour
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        items.append({"image_file": f"{i:04d}.png", "text": f"{NAMES[nearest]} picture" if captions else ""})
    (folder / "data.json").write_text(json.dumps(items))
    return folder / "data.json"


def batches(data_json: Path, transform: ImageTransform, seed: int):
    dataset = JsonImageTextDataset(str(data_json), "", transform)
    generator = torch.Generator().manual_seed(seed)
    while True:
        for order in torch.randperm(len(dataset), generator=generator).split(BATCH):
            if len(order) == BATCH:
                yield collate([dataset[int(i)] for i in order])


def calibrate_vae(folder: Path, data_json: Path) -> None:
    """Make the random VAE behave like SD's trained one: unit-variance latents, a nearly exact posterior.

    At the default scaling factor a random VAE's latents lie far below the noise, and its random
    log-variance samples latents whose spread swamps the picture: the noise is then predictable
    from the noisy latent alone and no conditioning could matter. The scaling factor is set as SD's
    0.18215 is, and the posterior's standard deviation to 1% of the latents' spread.
    """
    base = load_base_model(str(folder))
    dataset = JsonImageTextDataset(str(data_json), "", ImageTransform(RESOLUTION, 32, (0.5,) * 3, (0.5,) * 3))
    pixels = torch.stack([dataset[i]["pixels"] for i in range(128)])
    vae = base.vae
    channels = vae.config.latent_channels
    with torch.no_grad():
        std = vae.encode(pixels).latent_dist.mean.std().item()
        vae.quant_conv.weight[channels:].zero_()  # the log-variance half of the posterior's moments
        vae.quant_conv.bias[channels:].fill_(2 * math.log(0.01 * std))
    vae.register_to_config(scaling_factor=1 / std)
    vae.save_pretrained(str(folder / "vae"))


def pretrain_base(folder: Path, encoder_path: Path, data_json: Path) -> None:
    """Text-to-image training of the whole tiny UNet (no adapter), half the captions dropped, saved in place."""
    calibrate_vae(folder, data_json)
    base = load_base_model(str(folder))
    encoder = load_image_encoder(str(encoder_path))
    recipe = Recipe(base, encoder, IMAGE_EMBEDS, RESOLUTION, 0.0, 0.5, 0.0)
    unet = base.unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    source = batches(data_json, ImageTransform(RESOLUTION, encoder.image_size, encoder.mean, encoder.std), SEED)
    for step in range(BASE_STEPS):
        inputs = recipe.inputs(next(source), StepDraws.make(SEED + 1, step, BATCH, recipe.latent_shape, 1000, DEVICE), DEVICE)
        loss = Recipe.loss(unet(inputs["noisy_latents"], inputs["timesteps"], encoder_hidden_states=inputs["text_embeds"]).sample, inputs["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval().save_pretrained(str(folder / "unet"))


def evaluate(model: AdapterTrainingModel, recipe: Recipe, data_json: Path, encoder) -> dict[str, float]:
    """Mean loss over held-out pictures, fixed draws: matched prompt, shuffled prompt, adapter off."""
    transform = ImageTransform(RESOLUTION, encoder.image_size, encoder.mean, encoder.std)
    dataset = JsonImageTextDataset(str(data_json), "", transform)
    totals = {"matched": 0.0, "shuffled": 0.0, "base": 0.0}
    chunks = list(torch.arange(len(dataset)).split(BATCH))
    with torch.no_grad():
        for number, chunk in enumerate(chunks):
            batch = collate([dataset[int(i)] for i in chunk])
            inputs = recipe.inputs(batch, StepDraws.make(12345, number, len(chunk), recipe.latent_shape, 1000, DEVICE), DEVICE)
            args = (inputs["noisy_latents"], inputs["timesteps"], inputs["text_embeds"])
            features = inputs["image_features"]
            totals["matched"] += Recipe.loss(model(*args, features), inputs["target"]).item()
            totals["shuffled"] += Recipe.loss(model(*args, features.roll(1, 0)), inputs["target"]).item()
            totals["base"] += Recipe.loss(model(*args, None), inputs["target"]).item()
    return {k: v / len(chunks) for k, v in totals.items()}


def test_adapter_learns_to_use_the_image(tmp_path):
    models = tmp_path / "base"
    write_base_model(models, "sd15", seed=SEED)
    encoder_path = write_image_encoder(tmp_path / "clip_vision.safetensors", seed=SEED)
    pretrain_json = write_pictures(tmp_path / "pretrain", 512, SEED, captions=True)
    train_json = write_pictures(tmp_path / "train", 512, SEED + 1, captions=False)
    eval_json = write_pictures(tmp_path / "eval", 128, SEED + 1000, captions=False)
    pretrain_base(models, encoder_path, pretrain_json)

    base = load_base_model(str(models))
    encoder = load_image_encoder(str(encoder_path))
    recipe = Recipe(base, encoder, IMAGE_EMBEDS, RESOLUTION, 0.0, 0.0, 0.0)
    config = build_config("", dict(
        base_model=str(models), image_encoder=str(encoder_path), data_json=str(train_json), resolution=RESOLUTION, batch_size=BATCH,
        max_steps=ADAPTER_STEPS, learning_rate=1e-3, checkpoint_every=ADAPTER_STEPS, output_dir=str(tmp_path / "out"),
        num_workers=0, tensorboard=False, progress_bar=False, log_every=50, seed=SEED))
    torch.manual_seed(config.seed)  # the trainer's initialisation, rebuilt here to measure "before"
    initial = build_adapter(base.unet, "base", encoder.width(IMAGE_EMBEDS), 4)
    install_processors(base.unet, initial)
    before = evaluate(AdapterTrainingModel(base.unet, initial), recipe, eval_json, encoder)
    frozen_before = {name: t.clone() for name, t in base.unet.state_dict().items()}

    result = train(config)
    trained = result.model.adapter
    after = evaluate(result.model, recipe, eval_json, encoder)
    log.info(f"seed {SEED}: before {before}, after {after}, shuffled/matched {after['shuffled'] / after['matched']:.4f}, "
             f"matched/base {after['matched'] / after['base']:.4f}")

    assert abs(before["shuffled"] / before["matched"] - 1) < 0.01
    assert after["shuffled"] / after["matched"] >= 1.03
    assert after["matched"] / after["base"] <= 0.96

    # frozen: the UNet, VAE, text encoder and image encoder are bit-identical to the files
    assert all(torch.equal(t, frozen_before[name]) for name, t in result.model.unet.state_dict().items())
    fresh = load_base_model(str(models))
    for name, module in (("vae", fresh.vae), ("text_encoder_0", fresh.text_encoders[0]), ("image_encoder", load_image_encoder(str(encoder_path)))):
        reference = module.state_dict()
        assert all(torch.equal(t, reference[k]) for k, t in result.frozen[name].state_dict().items()), name
    # trained: every to_k_ip / to_v_ip (the middle block's included) and every projection parameter moved
    initial_state = initial.state_dict()
    for name, parameter in trained.state_dict().items():
        assert not torch.equal(parameter, initial_state[name]), name
    assert str(max(n for n, _ in trained.spec.layer_dims)) in {k.split(".")[1] for k in initial_state if k.startswith("ip_layers.")}
    saved = split_adapter_weights(load_file(str(checkpoint_dirs(tmp_path / "out")[-1] / "adapter.safetensors")))
    check = build_adapter(base.unet, "base", encoder.width(IMAGE_EMBEDS), 4)
    load_adapter_state(check, saved)
    assert all(torch.equal(a, b) for a, b in zip(check.state_dict().values(), trained.state_dict().values()))
