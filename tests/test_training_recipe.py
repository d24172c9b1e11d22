"""The recipe's pieces: dropout, what is trained, data and config errors, the distributed-launch guard."""

from __future__ import annotations

import json

import pytest
import torch

from ipadapter_core.errors import IPAdapterError
from ipadapter_core.training.config import build_config, preset_names
from ipadapter_core.training.data import ImageTransform, JsonImageTextDataset, ShardStream, expand_shards
from ipadapter_core.training.distributed import check_world_size, requested_by_launcher
from ipadapter_core.training.recipe import DROP_BOTH, DROP_IMAGE, DROP_TEXT, KEEP, Recipe, StepDraws, dropout_codes
from ipadapter_core.encoders import IMAGE_EMBEDS, PENULTIMATE
from training_helpers import random_image, tiny_run, write_json_dataset, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")
TRANSFORM = ImageTransform(resolution=16, clip_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_dropout_frequencies_over_100k_draws():
    draws = StepDraws.make(seed=7, step=3, count=100_000, latent_shape=(1, 1, 1), num_train_timesteps=1000, device=torch.device("cpu"))
    codes = dropout_codes(draws.uniform, 0.05, 0.05, 0.05)
    share = {code: (codes == code).double().mean().item() for code in (KEEP, DROP_IMAGE, DROP_TEXT, DROP_BOTH)}
    assert abs(share[KEEP] - 0.85) < 0.005
    for code in (DROP_IMAGE, DROP_TEXT, DROP_BOTH):
        assert abs(share[code] - 0.05) < 0.005
    # timesteps uniform over the schedule
    counts = torch.bincount(draws.timesteps, minlength=1000).double()
    assert draws.timesteps.min() >= 0 and draws.timesteps.max() < 1000
    assert counts.std() / counts.mean() < 0.15


def test_draws_depend_on_the_sample_not_the_partition():
    """Rows of one step's draws are what every process slices: the same sample gets the same noise."""
    a = StepDraws.make(1, 5, 8, (4, 2, 2), 1000, torch.device("cpu"))
    b = StepDraws.make(1, 5, 8, (4, 2, 2), 1000, torch.device("cpu"))
    assert torch.equal(a.rows(4, 4).noise, b.noise[4:8]) and torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.noise, StepDraws.make(1, 6, 8, (4, 2, 2), 1000, torch.device("cpu")).noise)


class RecordingEncoder:
    """Stands in for the image encoder: records what it was given."""

    image_size = 32
    mean = std = (0.5, 0.5, 0.5)

    def __init__(self):
        self.seen = []

    def features(self, pixels, output):
        self.seen.append(pixels.clone())
        return pixels.flatten(1)[:, :40] + 1.0 if output == IMAGE_EMBEDS else pixels.flatten(2).transpose(1, 2)[:, :17] + 1.0


@pytest.mark.parametrize("output", [IMAGE_EMBEDS, PENULTIMATE])
def test_dropped_image_is_the_inference_unconditional_input(training_models, output):
    """base: zero embedding; plus: the encoder sees zero pixels. Dropped text is the empty prompt."""
    from ipadapter_core.training.models import encode_text, load_base_model

    base = load_base_model(str(training_models["sd15"]))
    encoder = RecordingEncoder()
    recipe = Recipe(base, encoder, output, resolution=16)
    batch = {"pixels": torch.rand(4, 3, 16, 16) * 2 - 1, "clip_pixels": torch.rand(4, 3, 32, 32) + 0.5, "text": ["a", "b", "c", "d"],
             "original_size": torch.tensor([[16, 16]] * 4), "crop_top_left": torch.zeros(4, 2, dtype=torch.long)}
    draws = StepDraws.make(0, 0, 4, recipe.latent_shape, 1000, torch.device("cpu"))
    draws.uniform = torch.tensor([0.5, 0.01, 0.07, 0.12])  # keep, image, text, both
    inputs = recipe.inputs(batch, draws, torch.device("cpu"))
    features = inputs["image_features"]
    if output == IMAGE_EMBEDS:
        assert torch.equal(features[[1, 3]], torch.zeros_like(features[[1, 3]]))
        assert (features[[0, 2]] != 0).all()
    else:
        seen = encoder.seen[0]
        assert torch.equal(seen[[1, 3]], torch.zeros_like(seen[[1, 3]])) and (seen[[0, 2]] != 0).all()
    empty, _ = encode_text(base, [""], torch.device("cpu"))
    kept, _ = encode_text(base, ["a"], torch.device("cpu"))
    assert torch.equal(inputs["text_embeds"][2], empty[0]) and torch.equal(inputs["text_embeds"][3], empty[0])
    assert torch.equal(inputs["text_embeds"][0], kept[0])


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_trainable_set_is_the_optimizer_set(training_models, tmp_path, kind):
    from ipadapter_core.training.trainer import make_optimizer, setup_models

    data = write_json_dataset(tmp_path / "data", 4)
    config = build_config("", tiny_run(training_models, data, tmp_path / "out", adapter=kind, resampler_dim=32, resampler_heads=2))
    base, encoder, model, _ = setup_models(config, torch.device("cpu"), "no")
    optimizer = make_optimizer(config, model.adapter)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert optimized == trainable == {id(p) for p in model.adapter.parameters()}
    frozen = [base.vae, *base.text_encoders, encoder, base.unet]
    assert not any(p.requires_grad for module in frozen for p in module.parameters() if id(p) not in trainable)
    names = {name for name, p in model.adapter.named_parameters()}
    assert any(name.startswith("image_proj.") for name in names)
    assert {n for n, _ in model.adapter.spec.layer_dims} == {int(name.split(".")[1]) for name in names if name.startswith("ip_layers.")}
    # initialisation: to_k_ip / to_v_ip are copies of the layer's to_k / to_v
    modules = dict(base.unet.named_modules())
    from ipadapter_core.training.adapter_setup import cross_attention_sites

    for site in cross_attention_sites(base.unet):
        attention = modules[site.processor_name[: -len(".processor")]]
        assert torch.equal(model.adapter.layer(site.index).to_k_ip.weight, attention.to_k.weight)
        assert torch.equal(model.adapter.layer(site.index).to_v_ip.weight, attention.to_v.weight)


def test_transform_matches_the_recipe():
    """Short side to the resolution, centre crop, [-1, 1]; SDXL's original size and crop offset."""
    transform = ImageTransform(resolution=16, clip_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = transform(random_image(0, 20, 40))
    assert out["pixels"].shape == (3, 16, 16) and out["clip_pixels"].shape == (3, 32, 32)
    assert out["pixels"].min() >= -1 and out["pixels"].max() <= 1
    assert out["original_size"].tolist() == [20, 40] and out["crop_top_left"].tolist() == [0, 8]


def test_json_errors_name_the_item(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    random_image(1).save(tmp_path / "b.png")
    (tmp_path / "missing.json").write_text(json.dumps([{"image_file": "b.png", "text": "x"}, {"image_file": "b.png"}]))
    with pytest.raises(IPAdapterError, match="item 1 has no 'text'"):
        JsonImageTextDataset(str(tmp_path / "missing.json"), str(tmp_path), TRANSFORM)
    assert len(JsonImageTextDataset(str(tmp_path / "missing.json"), str(tmp_path), TRANSFORM, skip_bad=True)) == 1
    (tmp_path / "broken.json").write_text(json.dumps([{"image_file": "a.png", "text": "x"}, {"image_file": "b.png", "text": "y"}]))
    with pytest.raises(IPAdapterError, match="a.png cannot be read"):
        JsonImageTextDataset(str(tmp_path / "broken.json"), str(tmp_path), TRANSFORM)[0]
    skipped = JsonImageTextDataset(str(tmp_path / "broken.json"), str(tmp_path), TRANSFORM, skip_bad=True)[0]
    assert skipped["text"] == "y"


def test_shards_split_by_process_and_worker(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path, shards=4, per_shard=3)]
    assert expand_shards([str(tmp_path / "shard-{000..003}.tar")]) == shards
    texts = {}
    for rank in range(2):
        stream = iter(ShardStream(shards, TRANSFORM, batch_size=1, world=2, rank=rank, seed=0))
        texts[rank] = {next(stream)["text"].split()[1] for _ in range(6)}
    assert texts[0] == {"0", "2"} and texts[1] == {"1", "3"}
    with pytest.raises(IPAdapterError, match="every process needs at least one shard"):
        ShardStream(shards[:1], TRANSFORM, 1, world=2, rank=1, seed=0)


def test_shard_sample_without_caption_is_named(tmp_path):
    import io
    import tarfile

    buffer = io.BytesIO()
    random_image(0).save(buffer, format="PNG")
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        info = tarfile.TarInfo("k1.png")
        info.size = len(buffer.getvalue())
        archive.addfile(info, io.BytesIO(buffer.getvalue()))
    with pytest.raises(IPAdapterError, match="Sample k1 in .*bad.tar has no caption"):
        next(iter(ShardStream([str(tmp_path / "bad.tar")], TRANSFORM, 1, 1, 0, 0)))


def test_config_keys_flags_and_presets(tmp_path):
    required = dict(base_model="m", image_encoder="e", data_json="d.json")
    assert set(preset_names()) == {"sd15-base", "sd15-plus", "sdxl-base", "sdxl-plus"}
    plus = build_config("sdxl-plus", required)
    assert (plus.family, plus.adapter, plus.resampler_dim, plus.resampler_heads, plus.vae_dtype, plus.resolution) == ("sdxl", "plus", 1280, 20, "fp32", 1024)
    base = build_config("sd15-base", {**required, "learning_rate": "2e-5", "shards": ""})
    assert base.learning_rate == 2e-5 and base.image_drop_rate == 0.05 and base.weight_decay == 0.01 and base.tokens == 4
    with pytest.raises(IPAdapterError, match="Unknown config key"):
        build_config("", {**required, "learning_rte": 1})
    with pytest.raises(IPAdapterError, match="not a valid int"):
        build_config("", {**required, "batch_size": "eight"})
    with pytest.raises(IPAdapterError, match="exactly one data source"):
        build_config("", {**required, "shards": "a.tar"})


def test_world_size_guard():
    check_world_size(1, environ={}, launcher=[])
    check_world_size(2, environ={"WORLD_SIZE": "2"}, launcher=[])
    # --multi_gpu without a GPU: two processes, each initialised alone
    with pytest.raises(IPAdapterError, match="launcher started 2 processes"):
        check_world_size(1, environ={"WORLD_SIZE": "2"}, launcher=[])
    # accelerate launch --cpu --num_processes 2 starts one process
    launch = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "ipadapter_core.training", "train"]
    assert requested_by_launcher(launch) == 2
    with pytest.raises(IPAdapterError, match="asked for 2 processes but started 1.*torchrun"):
        check_world_size(1, environ={}, launcher=launch)
    assert requested_by_launcher(["python", "-m", "pytest", "--num_processes", "2"]) is None
    with pytest.raises(IPAdapterError, match="expected_processes is 4"):
        check_world_size(2, expected=4, environ={"WORLD_SIZE": "2"}, launcher=[])


def test_open_clip_checkpoint_gives_both_encoder_outputs(tmp_path):
    """An OpenCLIP checkpoint (the paper's encoder family): pooled projection and the penultimate block's tokens."""
    import open_clip
    from safetensors.torch import save_file

    from ipadapter_core.training.encoders import load_image_encoder

    config = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 3, "width": 48, "patch_size": 8, "head_width": 12},
              "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 4, "layers": 1}}
    (tmp_path / "tiny-openclip-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-openclip-vit.json")
    torch.manual_seed(0)
    reference = open_clip.create_model("tiny-openclip-vit").eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(IPAdapterError, match="set open_clip_model"):
        load_image_encoder(str(tmp_path / "tiny.safetensors"))
    encoder = load_image_encoder(str(tmp_path / "tiny.safetensors"), open_clip_model="tiny-openclip-vit")
    assert encoder.image_size == 32 and encoder.width(IMAGE_EMBEDS) == 24 and encoder.width(PENULTIMATE) == 48
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(encoder.features(pixels, IMAGE_EMBEDS), reference.encode_image(pixels), atol=1e-6)
        visual = reference.visual
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        assert torch.allclose(encoder.features(pixels, PENULTIMATE), x, atol=1e-6)
