"""Saved image prompts: bit-exact round trips, refusal of anything else, and the same prediction in ComfyUI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from helpers import conditioning, node, predict_noise
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.image_prompt import ImagePrompt
from ipadapter_core.prompt_file import load_image_prompt, save_image_prompt
from tools.random_models import adapter_state_dict, save_adapter

METADATA = {"format": "ipadapter-image-prompt", "version": "1", "adapter_identity": "0123456789abcdef", "adapter_description": "SD1.5 IP-Adapter (plus, needs CLIP ViT-H/14)"}


def random_prompt(references=2, tokens=4, width=768, weights=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cond, uncond = (torch.randn(references, tokens, width, generator=generator) for _ in range(2))
    return ImagePrompt(cond, uncond, METADATA["adapter_identity"], METADATA["adapter_description"], weights)


def assert_same(loaded: ImagePrompt, original: ImagePrompt):
    assert torch.equal(loaded.cond, original.cond) and torch.equal(loaded.uncond, original.uncond)
    assert loaded.cond.dtype == torch.float32 and loaded.uncond.dtype == torch.float32
    assert loaded.reference_weights == original.reference_weights
    assert loaded.adapter_identity == original.adapter_identity
    assert loaded.adapter_description == original.adapter_description


@pytest.mark.parametrize("weights", [None, (1.0, 0.1), (0.3333333333333333, -2.5e-7)])
def test_round_trip_is_bit_exact(tmp_path, weights):
    prompt = random_prompt(weights=weights)
    path = save_image_prompt(prompt, tmp_path / "p.imageprompt")
    assert_same(load_image_prompt(path), prompt)


def test_file_is_plain_safetensors_with_the_documented_metadata(tmp_path):
    from safetensors import safe_open

    path = save_image_prompt(random_prompt(weights=(1.0, 0.5)), tmp_path / "p.imageprompt")
    with safe_open(str(path), "pt") as file:
        assert file.metadata() == METADATA
        assert set(file.keys()) == {"cond", "uncond", "reference_weights"}


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def torch_saved(path):
    torch.save({"cond": torch.zeros(1)}, path)
    return path


def raw_safetensors(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


def bad_files(tmp_path):
    good = save_image_prompt(random_prompt(), tmp_path / "good.imageprompt").read_bytes()
    header_length = struct.unpack("<Q", good[:8])[0]
    tokens = {"cond": torch.zeros(1, 4, 8), "uncond": torch.zeros(1, 4, 8)}
    return {
        "pickle": (write(tmp_path / "evil.imageprompt", b"\x80\x04cos\nsystem\n(S'echo owned'\ntR."), "not a safetensors file, or it is corrupt or truncated"),
        "torch save": (torch_saved(tmp_path / "torch.imageprompt"), "not a safetensors file"),
        "garbage": (write(tmp_path / "garbage.imageprompt", bytes(range(256)) * 4), "could not be read as an image prompt"),
        "empty": (write(tmp_path / "empty.imageprompt", b""), "could not be read as an image prompt"),
        "truncated": (write(tmp_path / "truncated.imageprompt", good[: len(good) - 100]), "corrupt or truncated"),
        "header only": (write(tmp_path / "header.imageprompt", good[: 8 + header_length]), "corrupt or truncated"),
        "other safetensors": (raw_safetensors(tmp_path / "latent.imageprompt", {"latent_tensor": torch.zeros(1, 4, 8, 8)}, None), "is not an image prompt file .*Choose a file written by Save Image Prompt"),
        "newer": (raw_safetensors(tmp_path / "newer.imageprompt", tokens, {**METADATA, "version": "2"}), "saved by a newer version of the IP-Adapter nodes \\(image prompt format 2.*Update the IP-Adapter custom nodes"),
        "bad version": (raw_safetensors(tmp_path / "v.imageprompt", tokens, {**METADATA, "version": "one"}), "unreadable format version 'one'"),
        "no identity": (raw_safetensors(tmp_path / "id.imageprompt", tokens, {**METADATA, "adapter_identity": ""}), "no valid adapter identity"),
        "missing uncond": (raw_safetensors(tmp_path / "u.imageprompt", {"cond": torch.zeros(1, 4, 8)}, METADATA), "has tensors \\['cond'\\] instead of cond and uncond"),
        "extra tensor": (raw_safetensors(tmp_path / "x.imageprompt", {**tokens, "payload": torch.zeros(1)}, METADATA), "instead of cond and uncond"),
        "mismatched": (raw_safetensors(tmp_path / "m.imageprompt", {"cond": torch.zeros(1, 4, 8), "uncond": torch.zeros(1, 5, 8)}, METADATA), "shapes \\(1, 4, 8\\) and \\(1, 5, 8\\)"),
        "integer tokens": (raw_safetensors(tmp_path / "i.imageprompt", {"cond": torch.zeros(1, 4, 8, dtype=torch.int32), "uncond": torch.zeros(1, 4, 8, dtype=torch.int32)}, METADATA), "float tensors"),
        "weights count": (raw_safetensors(tmp_path / "w.imageprompt", {**tokens, "reference_weights": torch.ones(3, dtype=torch.float64)}, METADATA), "\\(3,\\) reference weights for 1 references"),
        "missing": (tmp_path / "absent.imageprompt", "not found.*input folder"),
    }


@pytest.mark.parametrize("case", ["pickle", "torch save", "garbage", "empty", "truncated", "header only", "other safetensors", "newer",
                                  "bad version", "no identity", "missing uncond", "extra tensor", "mismatched", "integer tokens", "weights count", "missing"])
def test_refuses_files_that_are_not_image_prompts(tmp_path, case):
    path, message = bad_files(tmp_path)[case]
    with pytest.raises(IPAdapterError, match=message):
        load_image_prompt(path)


def hand_built(path, cond_shape, cond_bytes, data_bytes):
    """A safetensors file written byte by byte, so its header can lie about the data."""
    header = {
        "__metadata__": METADATA,
        "cond": {"dtype": "F32", "shape": cond_shape, "data_offsets": [0, cond_bytes]},
        "uncond": {"dtype": "F32", "shape": [1, 4, 8], "data_offsets": [cond_bytes, cond_bytes + 128]},
    }
    encoded = json.dumps(header).encode()
    return write(path, struct.pack("<Q", len(encoded)) + encoded + bytes(data_bytes))


@pytest.mark.parametrize("cond_shape, cond_bytes, data_bytes", [
    ([1, 4, 8], 128, 256),  # consistent: loads
    ([1, 4, 8], 128, 200),  # data cut short
    ([1, 4, 8], 4096, 256),  # offsets past the end of the file
    ([1, 4, 9], 128, 256),  # shape disagrees with the byte count
])
def test_lying_headers_are_refused(tmp_path, cond_shape, cond_bytes, data_bytes):
    path = hand_built(tmp_path / "hand.imageprompt", cond_shape, cond_bytes, data_bytes)
    if data_bytes == cond_bytes + 128 and cond_shape == [1, 4, 8]:
        assert load_image_prompt(path).cond.shape == (1, 4, 8)
        return
    with pytest.raises(IPAdapterError, match="could not be read as an image prompt.*Save the prompt again with Save Image Prompt"):
        load_image_prompt(path)


def test_random_bytes_are_refused(tmp_path):
    generator = torch.Generator().manual_seed(0)
    for size in (1, 8, 9, 64, 4096):
        noise = torch.randint(0, 256, (size,), generator=generator, dtype=torch.uint8).numpy().tobytes()
        with pytest.raises(IPAdapterError, match="could not be read as an image prompt"):
            load_image_prompt(write(tmp_path / f"noise{size}.imageprompt", noise))


def test_save_refuses_what_is_not_a_prompt(tmp_path):
    with pytest.raises(IPAdapterError, match="Expected an IMAGE_PROMPT to save, got Tensor"):
        save_image_prompt(torch.zeros(1), tmp_path / "x.imageprompt")


# --- in ComfyUI -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(pack, tmp_path_factory, tiny_layer_dims):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter_prompt_files")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=41), folder / "prompt_files_base.safetensors")
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=42), folder / "prompt_files_plus.bin")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    load = node("ExactLoadIPAdapter")
    return load("prompt_files_base.safetensors")[0], load("prompt_files_plus.bin")[0]


@pytest.fixture
def comfy_folders(pack, tmp_path):
    """Private output and input folders, restored afterwards (ComfyUI keeps them in globals)."""
    import folder_paths

    before = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    yield tmp_path / "output", tmp_path / "input"
    folder_paths.set_output_directory(before[0])
    folder_paths.set_input_directory(before[1])


def save_and_load(prompt, output, input_folder, prefix="image_prompts/ipadapter"):
    """Save Image Prompt, move the file to the input folder as a user would, Load Image Prompt."""
    ui = node("ExactSaveImagePrompt").output(prompt, prefix).ui["image_prompts"][0]
    saved = output / ui["subfolder"] / ui["filename"]
    shutil.copy(saved, input_folder / ui["filename"])
    return ui, node("ExactLoadImagePrompt")(ui["filename"])[0]


def evaluate(comfy, model):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    return torch.cat([cond, uncond])


def test_saved_and_loaded_prompt_gives_exactly_the_same_prediction(comfy, tiny_model, adapters, small_clip_vision, comfy_folders):
    from comfyui_ipadapter.nodes.prompt_files import LoadImagePrompt

    output, input_folder = comfy_folders
    base = adapters[0]
    images = torch.rand(2, 80, 96, 3, generator=torch.Generator().manual_seed(1))
    prompt = node("ExactEncodeImagePrompt")(base, small_clip_vision, images, image_weights="1, 0.35")[0]
    ui, loaded = save_and_load(prompt, output, input_folder)
    assert ui == {"filename": "ipadapter_00001_.imageprompt", "subfolder": "image_prompts", "type": "output"}
    assert_same(loaded, prompt)
    assert LoadImagePrompt.INPUT_TYPES()["required"]["image_prompt_file"][1]["options"] == ["ipadapter_00001_.imageprompt"]
    assert LoadImagePrompt.validate_inputs(ui["filename"]) is True
    assert "not found" in LoadImagePrompt.validate_inputs("absent.imageprompt")
    fingerprint = LoadImagePrompt.fingerprint_inputs(ui["filename"])
    assert LoadImagePrompt.fingerprint_inputs(ui["filename"]) == fingerprint

    apply = node("ExactApplyIPAdapter")
    original = evaluate(comfy, apply(tiny_model, base, prompt, 0.9, 0.0, 1.0)[0])
    assert torch.equal(evaluate(comfy, apply(tiny_model, base, loaded, 0.9, 0.0, 1.0)[0]), original)
    # A second save gets the next counter, as stock save nodes do; replacing the input file re-runs the loader.
    ui_2 = node("ExactSaveImagePrompt").output(dataclasses.replace(prompt, cond=prompt.cond * 2), "image_prompts/ipadapter").ui["image_prompts"][0]
    assert ui_2["filename"] == "ipadapter_00002_.imageprompt"
    shutil.copy(output / ui_2["subfolder"] / ui_2["filename"], input_folder / ui["filename"])
    assert LoadImagePrompt.fingerprint_inputs(ui["filename"]) != fingerprint


def test_prompt_for_another_adapter_fails_naming_its_maker(tiny_model, adapters, small_clip_vision, comfy_folders):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError  # the pack's copy of the class

    base, plus = adapters
    prompt = node("ExactEncodeImagePrompt")(plus, small_clip_vision, torch.rand(1, 64, 64, 3))[0]
    _, loaded = save_and_load(prompt, *comfy_folders)
    with pytest.raises(IPAdapterError, match=f"encoded by a different IP-Adapter \\({plus.name}, SD1.5 IP-Adapter \\(plus, needs CLIP ViT-H/14\\)\\)"):
        node("ExactApplyIPAdapter")(tiny_model, base, loaded, 1.0, 0.0, 1.0)
