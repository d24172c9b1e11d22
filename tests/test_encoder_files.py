"""Pairing an adapter with its CLIP vision file by reading weights: names never decide."""

from __future__ import annotations

import os
import random

import pytest
import torch
from safetensors.torch import save_file

from helpers import node
from ipadapter_core import encoder_files
from ipadapter_core.checkpoint import split_adapter_weights
from ipadapter_core.encoder_files import EncoderWidths, find_encoder, read_encoder_widths
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.variants import detect_variant
from tools.random_models import SD15_LAYER_DIMS, VISION_CONFIGS, adapter_state_dict, clip_vision_state_dict, save_adapter

ARCHITECTURES = {kind: (c["projection_dim"], c["hidden_size"], c["num_hidden_layers"]) for kind, c in VISION_CONFIGS.items()}


def encoder_state_dict(kind: str, layout: str = "transformers", layers: int | None = None, embeds: int | None = None) -> dict[str, torch.Tensor]:
    """Only what identifies an encoder: its projection (real shape) and one tiny tensor per layer."""
    default_embeds, hidden, default_layers = ARCHITECTURES[kind]
    embeds, layers = embeds or default_embeds, layers or default_layers
    if layout == "transformers":
        state = {f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(1) for i in range(layers)}
        state["vision_model.post_layernorm.weight"] = torch.ones(hidden)
        state["visual_projection.weight"] = torch.zeros(embeds, hidden, dtype=torch.float16)
    else:
        state = {f"visual.transformer.resblocks.{i}.attn.in_proj_weight": torch.ones(1) for i in range(layers)}
        state["visual.ln_post.weight"] = torch.ones(hidden)
        state["visual.proj"] = torch.zeros(hidden, embeds, dtype=torch.float16)
    return state


def write_encoder(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path


def spec(kind: str, clip_dim: int | None = None):
    return detect_variant(split_adapter_weights(adapter_state_dict(kind, SD15_LAYER_DIMS, clip_dim=clip_dim, device="meta")))


@pytest.mark.parametrize("layout", ["transformers", "open_clip"])
@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pt"])
@pytest.mark.parametrize("kind", ["vit-h", "vit-bigg", "vit-l"])
def test_reads_architecture_from_weights(tmp_path, layout, suffix, kind):
    embeds, hidden, layers = ARCHITECTURES[kind]
    path = write_encoder(tmp_path / f"encoder{suffix}", encoder_state_dict(kind, layout))
    assert read_encoder_widths(path) == EncoderWidths(embeds=embeds, hidden=hidden, layers=layers)


def test_reads_real_transformers_keys_and_state_dict_wrappers(tmp_path):
    state = clip_vision_state_dict("vit-l", num_layers=2, dtype=torch.float16)
    assert read_encoder_widths(write_encoder(tmp_path / "model.safetensors", state)) == EncoderWidths(768, 1024, 2)
    torch.save({"state_dict": state}, tmp_path / "wrapped.ckpt")
    assert read_encoder_widths(tmp_path / "wrapped.ckpt") == EncoderWidths(768, 1024, 2)


def test_safetensors_are_read_from_the_header_only(tmp_path, monkeypatch):
    path = write_encoder(tmp_path / "e.safetensors", encoder_state_dict("vit-h"))

    def no_tensor_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr("safetensors._safetensors_rust.safe_open.get_tensor", no_tensor_data, raising=False)
    assert read_encoder_widths(path).embeds == 1024


def test_files_that_are_not_encoders_give_none(tmp_path, caplog):
    adapter = save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS, device="cpu"), tmp_path / "ip-adapter.safetensors")
    no_projection = encoder_state_dict("vit-h")
    del no_projection["visual_projection.weight"]
    assert read_encoder_widths(adapter) is None
    assert read_encoder_widths(write_encoder(tmp_path / "noproj.safetensors", no_projection)) is None
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "garbage.bin").write_bytes(b"not a pickle")
    assert read_encoder_widths(tmp_path / "garbage.safetensors") is None and read_encoder_widths(tmp_path / "garbage.bin") is None
    assert "skipping garbage.bin" in caplog.text
    # Random bytes make the unpickler fail in many different ways (IndexError, KeyError, ...): all are skipped.
    for seed in range(50):
        noise = tmp_path / f"noise{seed}.pt"
        noise.write_bytes(random.Random(seed).randbytes(4096))
        assert read_encoder_widths(noise) is None


def test_unsafe_pickles_are_never_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "owned"),))

    torch.save({"visual_projection.weight": torch.zeros(2, 2), "payload": Payload()}, tmp_path / "evil.bin")
    assert read_encoder_widths(tmp_path / "evil.bin") is None
    assert not (tmp_path / "owned").exists()


@pytest.fixture
def misleading_folder(tmp_path):
    """Every file named after another encoder, in both layouts and formats."""
    files = [
        write_encoder(tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", encoder_state_dict("vit-l")),
        write_encoder(tmp_path / "x.safetensors", encoder_state_dict("vit-h")),
        write_encoder(tmp_path / "clip-vit-large-patch14.bin", encoder_state_dict("vit-bigg", "open_clip")),
        write_encoder(tmp_path / "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", encoder_state_dict("vit-l", "open_clip", layers=12)),
    ]
    (tmp_path / "notes.safetensors").write_bytes(b"{}")
    return files + [tmp_path / "notes.safetensors"]


@pytest.mark.parametrize("adapter, clip_dim, expected", [
    ("base", 1024, "x.safetensors"),  # ip-adapter_sd15: ViT-H image_embeds
    ("plus", 1280, "x.safetensors"),  # plus: ViT-H hidden states
    ("full", 1280, "x.safetensors"),
    ("base", 1280, "clip-vit-large-patch14.bin"),  # ip-adapter_sd15_vit-G: bigG image_embeds
    ("plus", 1664, "clip-vit-large-patch14.bin"),
    ("base", 768, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),  # ViT-L image_embeds; the 24-layer file wins
    ("plus", 1024, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
])
def test_picks_by_weights_whatever_the_names_and_order(misleading_folder, adapter, clip_dim, expected):
    for seed in range(3):
        files = list(misleading_folder)
        random.Random(seed).shuffle(files)
        assert find_encoder(spec(adapter, clip_dim), files).name == expected


def test_equal_output_width_of_another_architecture_does_not_fit(tmp_path):
    """A ViT-L-sized model projecting to 1024 has ViT-H's image_embeds width, but not ViT-H's features."""
    impostor = write_encoder(tmp_path / "impostor.safetensors", encoder_state_dict("vit-l", embeds=1024))
    with pytest.raises(IPAdapterError, match="impostor.safetensors \\(CLIP ViT-H/14, 24 layers\\)"):
        find_encoder(spec("base", 1024), [impostor])


def test_deepest_fitting_file_wins_then_the_first_given(tmp_path):
    short = write_encoder(tmp_path / "a.safetensors", encoder_state_dict("vit-h", layers=4))
    full = write_encoder(tmp_path / "b.safetensors", encoder_state_dict("vit-h"))
    copy = write_encoder(tmp_path / "c.bin", encoder_state_dict("vit-h", "open_clip"))
    assert find_encoder(spec("base"), [short, full, copy]) == full
    assert find_encoder(spec("base"), [copy, short, full]) == copy


def test_no_fitting_encoder_names_the_file_to_download(misleading_folder, tmp_path):
    vit_h = [f for f in misleading_folder if f.name != "x.safetensors"]
    with pytest.raises(IPAdapterError) as error:
        find_encoder(spec("base", 1024), vit_h)
    message = str(error.value)
    assert "Download CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (CLIP ViT-H/14) into models/clip_vision" in message
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (CLIP ViT-L/14, 24 layers)" in message  # what is there instead
    with pytest.raises(IPAdapterError, match="No CLIP vision model was found there"):
        find_encoder(spec("plus", 1664), [])


def test_results_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = write_encoder(tmp_path / "e.safetensors", encoder_state_dict("vit-h"))
    reads = []
    original = encoder_files.read_shapes
    monkeypatch.setattr(encoder_files, "read_shapes", lambda p, size: reads.append(p) or original(p, size))
    for _ in range(3):
        assert read_encoder_widths(path).embeds == 1024
    assert len(reads) == 1
    write_encoder(path, encoder_state_dict("vit-l"))  # new size
    assert read_encoder_widths(path).embeds == 768 and len(reads) == 2
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, new mtime
    assert read_encoder_widths(path).embeds == 768 and len(reads) == 3


# --- the node, in ComfyUI ---------------------------------------------------------------------


@pytest.fixture
def comfy_model_folders(pack, tmp_path, tiny_layer_dims):
    """A private models/clip_vision, restored afterwards, and an adapter under a name no other test uses."""
    import folder_paths

    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=51), tmp_path / "ipadapter" / "encoder_files_base.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path / "ipadapter"))
    clip_folder = tmp_path / "clip_vision"
    clip_folder.mkdir()
    before = folder_paths.folder_names_and_paths["clip_vision"]
    folder_paths.folder_names_and_paths["clip_vision"] = ([str(clip_folder)], before[1])
    yield clip_folder
    folder_paths.folder_names_and_paths["clip_vision"] = before
    folder_paths.filename_list_cache.pop("clip_vision", None)


def paired_loader():
    return node("ExactLoadIPAdapterAndEncoder")


def test_node_inputs_match_load_ipadapter(comfy_model_folders):
    from comfyui_ipadapter.nodes.load_ipadapter import LoadIPAdapter

    types = paired_loader().INPUT_TYPES()["required"]
    assert list(types) == ["ipadapter_file"]
    assert types["ipadapter_file"] == LoadIPAdapter.INPUT_TYPES()["required"]["ipadapter_file"]
    assert "encoder_files_base.safetensors" in types["ipadapter_file"][1]["options"]


def test_node_without_a_fitting_encoder(comfy_model_folders):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError  # the pack's copy of the class

    write_encoder(comfy_model_folders / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", encoder_state_dict("vit-l"))
    with pytest.raises(IPAdapterError, match="Download CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors \\(CLIP ViT-H/14\\) into models/clip_vision"):
        paired_loader()("encoder_files_base.safetensors")


def full_vit_h_fp16(seed: int = 0) -> dict[str, torch.Tensor]:
    """All 32 layers (ComfyUI detects ViT-H by layer 30's key), random, fp16: 1.26 GB instead of 2.5."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIGS["vit-h"], image_size=224, patch_size=14, hidden_act="gelu"))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        shape = tensor.shape
        if len(shape) >= 2:
            value = torch.randn(shape, generator=generator) * (shape[1:].numel() ** -0.5)
        else:
            value = (1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("layernorm.weight") else 0.0) + 0.02 * torch.randn(shape, generator=generator)
        state[name] = value.to(torch.float16)
    return state


@pytest.mark.slow
def test_node_loads_the_fitting_encoder_end_to_end(comfy_model_folders):
    state = full_vit_h_fp16()
    projection = state["visual_projection.weight"].clone()
    write_encoder(comfy_model_folders / "x.safetensors", state)
    del state
    write_encoder(comfy_model_folders / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", clip_vision_state_dict("vit-l", num_layers=2, dtype=torch.float16))

    adapter, clip_vision = paired_loader()("encoder_files_base.safetensors")
    assert adapter.model.spec.encoder_name == "CLIP ViT-H/14"
    assert torch.equal(clip_vision.model.visual_projection.weight.detach().cpu(), projection.float())
    prompt = node("ExactEncodeImagePrompt")(adapter, clip_vision, torch.rand(1, 64, 96, 3))[0]
    assert prompt.cond.shape == (1, 4, 768) and torch.isfinite(prompt.cond).all()


@pytest.mark.parametrize("name", ["ENCODER.SAFETENSORS", "encoder.Bin"])
def test_extensions_are_matched_in_any_case(tmp_path, name):
    path = tmp_path / name
    state = encoder_state_dict("vit-h")
    if name.lower().endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    assert read_encoder_widths(path) == EncoderWidths(1024, 1280, 32)
