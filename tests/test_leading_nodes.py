"""The nodes ComfyUI_IPAdapter_plus workflows convert to: presets, CLIP embeds, tiles, negative images.

Each checked against a hand-composed computation of what the leading pack's node does (its
formulas, written out here), in the real ComfyUI with the tiny UNet and a 2-layer ViT-H.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from helpers import conditioning, node, predict_noise
from tools.random_models import adapter_state_dict, faceid_state_dict, meta_model, save_adapter


def images(seed, count=1, height=224, width=224):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def adapters(pack, tmp_path_factory, tiny_layer_dims):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter_leading")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=61), folder / "leading_base.safetensors")
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=62), folder / "leading_plus.bin")
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    loaded = {name: node("ExactLoadIPAdapter")(file)[0] for name, file in (("base", "leading_base.safetensors"), ("plus", "leading_plus.bin"))}
    return loaded


def features(adapter, clip_vision, image):
    """The encoder output the adapter reads, computed directly from ComfyUI's CLIP vision model."""
    from comfyui_ipadapter.ipadapter_core.preprocess import clip_pixels
    from comfyui_ipadapter.nodes.clip_vision import comfy_encoder

    return comfy_encoder(clip_vision, adapter.model.spec)(clip_pixels(image))


def evaluate(comfy, model, batch=1):
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, 4.0, conditioning(1), conditioning(2), cfg=5.0)
    return torch.cat([cond, uncond])


# --- CLIP embeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_encode_then_project_is_encode_image_prompt(adapters, small_clip_vision, kind):
    adapter, image = adapters[kind], images(1, count=2)
    embeds, negative = node("ExactEncodeClipEmbeds")(adapter, small_clip_vision, image)
    projected = node("ExactProjectClipEmbeds")(adapter, embeds, negative)[0]
    direct = node("ExactEncodeImagePrompt")(adapter, small_clip_vision, image)[0]
    assert torch.allclose(projected.cond, direct.cond, atol=1e-5) and torch.allclose(projected.uncond, direct.uncond, atol=1e-5)
    assert (projected.adapter_identity, projected.adapter_description) == (direct.adapter_identity, direct.adapter_description)


def test_weighted_embeds_are_combined_before_the_projection(adapters, small_clip_vision):
    """The leading pack's weighted-embeds graph: weight scales the embedding, average merges before projecting."""
    adapter = adapters["plus"]
    first, second = images(2), images(3)
    e1, n1 = node("ExactEncodeClipEmbeds")(adapter, small_clip_vision, first, weight=0.6)
    e2, _ = node("ExactEncodeClipEmbeds")(adapter, small_clip_vision, second, weight=1.5)
    combined = node("ExactCombineClipEmbeds")(e1, "average", e2)[0]
    prompt = node("ExactProjectClipEmbeds")(adapter, combined, n1)[0]
    expected = (0.6 * features(adapter, small_clip_vision, first) + 1.5 * features(adapter, small_clip_vision, second)) / 2
    assert torch.allclose(prompt.cond, adapter.model.project(expected), atol=1e-5)
    zeros = small_clip_vision.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1].float()
    assert torch.allclose(prompt.uncond, adapter.model.project(zeros), atol=1e-5)


def test_combine_methods():
    from ipadapter_core.clip_embeds import combine_clip_embeds

    g = torch.Generator().manual_seed(4)
    a, b, c = torch.randn(1, 8, generator=g), torch.randn(2, 8, generator=g), torch.randn(1, 8, generator=g)
    rows = torch.cat([a, b, c])
    assert torch.equal(combine_clip_embeds([a, b, c], "concat"), rows)
    assert torch.allclose(combine_clip_embeds([a, b, c], "add"), rows.sum(0, keepdim=True))
    assert torch.allclose(combine_clip_embeds([a, b, c], "average"), rows.mean(0, keepdim=True))
    assert torch.allclose(combine_clip_embeds([a, b, c], "subtract"), a - rows[1:].mean(0, keepdim=True))
    assert torch.equal(combine_clip_embeds([a, b, c], "max"), rows.max(0, keepdim=True).values)
    assert torch.equal(combine_clip_embeds([a, b, c], "min"), rows.min(0, keepdim=True).values)
    unit = rows / rows.norm(dim=-1, keepdim=True)
    assert torch.allclose(combine_clip_embeds([a, b, c], "norm average"), unit.mean(0, keepdim=True))


def test_mask_multiplies_the_encoders_pixels(adapters, small_clip_vision):
    from comfyui_ipadapter.ipadapter_core.preprocess import clip_pixels
    from comfyui_ipadapter.nodes.clip_vision import comfy_encoder

    adapter, image = adapters["base"], images(4)
    mask = torch.zeros(1, 224, 224)
    mask[:, 50:150, 30:200] = 1
    embeds, _ = node("ExactEncodeClipEmbeds")(adapter, small_clip_vision, image, mask=mask)
    expected = comfy_encoder(small_clip_vision, adapter.model.spec)(clip_pixels(image) * mask[:, None])
    assert torch.allclose(embeds, expected, atol=1e-6)
    assert not torch.allclose(embeds, features(adapter, small_clip_vision, image), atol=1e-3)


def test_hidden_state_embeds_need_negatives_or_clip_vision(adapters, small_clip_vision):
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    adapter = adapters["plus"]
    embeds, negative = node("ExactEncodeClipEmbeds")(adapter, small_clip_vision, images(5))
    with pytest.raises(IPAdapterError, match="connect negative_embeds"):
        node("ExactProjectClipEmbeds")(adapter, embeds)
    with_encoder = node("ExactProjectClipEmbeds")(adapter, embeds, clip_vision=small_clip_vision)[0]
    assert torch.allclose(with_encoder.uncond, adapter.model.project(negative), atol=1e-6)
    with pytest.raises(IPAdapterError, match="reads \\(images, tokens, width\\) hidden states"):
        node("ExactProjectClipEmbeds")(adapter, torch.zeros(1, 1280), negative)


def test_embeds_files_are_the_leading_packs_and_never_run_code(pack, tmp_path):
    from comfyui_ipadapter.ipadapter_core.clip_embeds import load_clip_embeds, save_clip_embeds
    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError

    embeds = torch.randn(2, 257, 1280)
    assert torch.equal(load_clip_embeds(save_clip_embeds(embeds, tmp_path / "a.ipadpt")), embeds)
    torch.save(embeds.half(), tmp_path / "leading.ipadpt")  # as the leading pack writes them (any float dtype)
    assert torch.equal(load_clip_embeds(tmp_path / "leading.ipadpt"), embeds.half().float())

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')",))

    pickle.loads(pickle.dumps(Payload()))  # what an unpickler that runs code would do
    assert marker.exists()
    marker.unlink()

    with open(tmp_path / "evil.ipadpt", "wb") as file:
        pickle.dump(Payload(), file)
    with pytest.raises(IPAdapterError, match="refused"):
        load_clip_embeds(tmp_path / "evil.ipadpt")
    assert not marker.exists()
    torch.save({"not": "a tensor"}, tmp_path / "dict.ipadpt")
    with pytest.raises(IPAdapterError, match="not CLIP embeds"):
        load_clip_embeds(tmp_path / "dict.ipadpt")


def test_save_and_load_nodes(pack, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "output"))
    embeds = torch.randn(1, 1024)
    saved = node("ExactSaveClipEmbeds").output(embeds, "ipadapter_embeds/test").ui["clip_embeds"][0]
    assert saved["filename"] == "test_00001.ipadpt" and saved["subfolder"] == "ipadapter_embeds"
    listed = node("ExactLoadClipEmbeds").INPUT_TYPES()["required"]["embeds_file"][1]["options"]
    assert listed == ["ipadapter_embeds/test_00001.ipadpt"]  # subfolders listed, as the leading pack lists them
    assert torch.equal(node("ExactLoadClipEmbeds")(listed[0])[0], embeds)


# --- presets -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preset_folder(pack, tmp_path_factory, tiny_layer_dims):
    """Adapters under misleading names: the weights must decide."""
    folder = tmp_path_factory.mktemp("presets")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=71), folder / "ip-adapter-plus_sd15.safetensors")
    save_adapter(adapter_state_dict("plus", tiny_layer_dims, seed=72), folder / "base.bin")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, clip_dim=1280, seed=73), folder / "what.safetensors")
    save_adapter(adapter_state_dict("full", tiny_layer_dims, seed=74), folder / "full.safetensors")
    save_adapter(faceid_state_dict("portrait", tiny_layer_dims, seed=76), folder / "ip-adapter-faceid_sd15.bin")
    save_adapter(faceid_state_dict("faceid", tiny_layer_dims, lora_rank=4, seed=77), folder / "portrait.safetensors")
    save_adapter(faceid_state_dict("faceid-plus", tiny_layer_dims, lora_rank=4, seed=78), folder / "face-v1.bin")
    (folder / "notes.bin").write_bytes(b"not weights")
    return folder


def tiny_layers(tiny_model):
    from ipadapter_core.layer_map import cross_attention_layers

    return cross_attention_layers(tiny_model.get_model_object("diffusion_model"))


@pytest.mark.parametrize("preset, expected", [
    ("standard", "ip-adapter-plus_sd15.safetensors"), ("light", "ip-adapter-plus_sd15.safetensors"), ("plus", "base.bin"),
    ("plus face", "base.bin"), ("vit-G", "what.safetensors"), ("full face", "full.safetensors"),
    ("faceid", "portrait.safetensors"), ("faceid portrait", "ip-adapter-faceid_sd15.bin"),  # 4 and 16 tokens per face
    ("faceid plus", "face-v1.bin"), ("faceid plusv2", "face-v1.bin"),  # plus and plusv2 files have identical weights
])
def test_presets_are_resolved_by_weights(preset_folder, tiny_model, preset, expected):
    from ipadapter_core.presets import find_preset_adapter

    assert find_preset_adapter(preset, tiny_layers(tiny_model), sorted(preset_folder.iterdir())).name == expected


def test_preset_errors_name_the_fix(preset_folder, tiny_model, tiny_layer_dims, tmp_path):
    from ipadapter_core.errors import IPAdapterError
    from ipadapter_core.layer_map import cross_attention_layers
    from ipadapter_core.presets import find_preset_adapter

    twins = sorted(preset_folder.iterdir()) + [save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=75), tmp_path / "second.safetensors")]
    with pytest.raises(IPAdapterError, match="2 files .* fit preset 'standard'.*second.safetensors.*light cannot be told apart.*ipadapter_file"):
        find_preset_adapter("standard", tiny_layers(tiny_model), twins)
    sd15 = cross_attention_layers(meta_model("sd15")[1].get_model_object("diffusion_model"))
    with pytest.raises(IPAdapterError, match="Download ip-adapter-plus_sd15.safetensors from h94/IP-Adapter"):
        find_preset_adapter("plus", sd15, sorted(preset_folder.iterdir()))  # tiny-UNet adapters do not fit SD1.5's layers
    sdxl = cross_attention_layers(meta_model("sdxl")[1].get_model_object("diffusion_model"))
    with pytest.raises(IPAdapterError, match="no full face IP-Adapter for SDXL"):
        find_preset_adapter("full face", sdxl, [])
    with pytest.raises(IPAdapterError, match="no faceid portrait unnorm IP-Adapter for SD1.5"):
        find_preset_adapter("faceid portrait unnorm", sd15, [])
    twins = sorted(preset_folder.iterdir()) + [save_adapter(faceid_state_dict("faceid-plus", tiny_layer_dims, lora_rank=4, seed=79),
                                                            tmp_path / "face-v2.bin")]
    with pytest.raises(IPAdapterError, match="2 files .* fit preset 'faceid plusv2'.*face-v1.bin, face-v2.bin.*faceid plus cannot be told apart"):
        find_preset_adapter("faceid plusv2", tiny_layers(tiny_model), twins)


def test_preset_node_picks_by_weights_or_checks_the_pinned_file(pack, preset_folder, tiny_model, monkeypatch):
    import folder_paths

    from comfyui_ipadapter.ipadapter_core.errors import IPAdapterError
    from comfyui_ipadapter.nodes import preset_loader

    folder_paths.add_model_folder_path("ipadapter", str(preset_folder))
    loaded = []
    monkeypatch.setattr(preset_loader, "load_adapter_and_encoder", lambda name: loaded.append(name) or ("adapter", "clip_vision"))
    loader = node("ExactLoadIPAdapterPreset")
    assert "full.safetensors" in loader.INPUT_TYPES()["optional"]["ipadapter_file"][1]["options"]
    assert loader(tiny_model, "full face") == (tiny_model, "adapter", "clip_vision") and loaded == ["full.safetensors"]
    loader(tiny_model, "standard", "ip-adapter-plus_sd15.safetensors")
    assert loaded[-1] == "ip-adapter-plus_sd15.safetensors"
    with pytest.raises(IPAdapterError, match="base.bin is SD1.5 IP-Adapter \\(plus.*not a standard adapter"):
        loader(tiny_model, "standard", "base.bin")
    # Face-only FaceID adapters read no CLIP: the adapter alone, no encoder looked for.
    monkeypatch.setattr(preset_loader, "load_adapter", lambda name: loaded.append(name) or "face adapter")
    assert loader(tiny_model, "faceid portrait") == (tiny_model, "face adapter", None) and loaded[-1] == "ip-adapter-faceid_sd15.bin"
    assert loader(tiny_model, "faceid plus") == (tiny_model, "adapter", "clip_vision") and loaded[-1] == "face-v1.bin"


# --- tiles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width, tiles, windows", [
    (256, 512, 2, [(0, 0), (0, 256)]),  # wide: short side 256, two tiles side by side
    (300, 300, 4, [(0, 0), (0, 256), (256, 0), (256, 256)]),  # nearly square: 512x512, 2x2
    (256, 455, 2, [(0, 0), (0, 199)]),  # overlapping: (2 * 256 - 455) / 1 = 57 pixels
    (100, 600, 4, [(0, 0), (0, 256), (0, 512), (0, 768)]),  # 6:1 is cut to 4 tiles (256x1024)
])
def test_tile_geometry_is_the_leading_packs(height, width, tiles, windows):
    from ipadapter_core.tiled_reference import reference_tiles

    image = torch.rand(1, height, width, 3)
    found, masks = reference_tiles(image)
    assert len(found) == tiles and all(t.shape == (1, 256, 256, 3) for t in found)
    for mask, (top, left) in zip(masks, windows):
        inside = torch.zeros_like(mask, dtype=torch.bool)
        inside[:, top : top + 256, left : left + 256] = True
        assert torch.all(mask[inside] > 0.99) and torch.all(mask[~inside] == 0)


def test_tiled_node_applies_each_half_to_its_region(comfy, tiny_model, adapters, small_clip_vision):
    """A 2:1 reference needs no resizing: tile i is its half i, acting only on image half i."""
    adapter, image = adapters["base"], images(6, height=256, width=512)
    tiled = node("ExactIPAdapterTiled")(tiny_model, adapter, small_clip_vision, image, 0.9, "linear", "concat", 0.0, 1.0, 0.0, "V only")
    model = tiny_model
    for half in (0, 1):
        mask = torch.zeros(1, 256, 512)
        mask[:, :, 256 * half : 256 * (half + 1)] = 1
        prompt = node("ExactEncodeImagePrompt")(adapter, small_clip_vision, image[:, :, 256 * half : 256 * (half + 1)])[0]
        model = node("ExactApplyIPAdapter")(model, adapter, prompt, 0.9, 0.0, 1.0, attn_mask=mask)[0]
    assert torch.allclose(evaluate(comfy, tiled[0]), evaluate(comfy, model), atol=1e-5)
    assert tiled[1].shape == (2, 256, 256, 3) and torch.allclose(tiled[1], torch.cat([image[:, :, :256], image[:, :, 256:]]), atol=1e-6)
    nothing = node("ExactIPAdapterTiled")(tiny_model, adapter, small_clip_vision, image, 0.9, "linear", "concat", 0.0, 1.0, 0.0, "V only",
                                                attn_mask=torch.zeros(256, 512))[0]
    assert torch.equal(evaluate(comfy, nothing), evaluate(comfy, tiny_model))


# --- negative images ---------------------------------------------------------------------------------


def test_dissolve_and_gaussian_are_the_leading_packs_noise():
    from ipadapter_core.negatives import negative_image

    image = torch.rand(1, 16, 16, 3)
    g = torch.Generator().manual_seed(3)
    replaced, noise = torch.rand(image.shape, generator=g) < 0.3, torch.rand(image.shape, generator=g)
    dissolved = negative_image(image, "dissolve", 0.3, seed=3)
    assert torch.equal(dissolved, torch.where(replaced, noise, image)) and 0.2 < replaced.float().mean() < 0.4
    g = torch.Generator().manual_seed(3)
    assert torch.equal(negative_image(image, "gaussian", 0.5, seed=3), (image + 0.5 * torch.randn(image.shape, generator=g)).clamp(0, 1))
