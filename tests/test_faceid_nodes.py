"""FaceID nodes in a real ComfyUI, on the tiny SD1.5-detected UNet and tiny InsightFace models.

The LoRA inside FaceID files must land on the UNet weights diffusers would patch (checked key by
key on the full SD1.5 and SDXL architectures), act as an ordinary weight patch (equal to merging it
by hand), and everything else must go through the same image-prompt path as CLIP adapters.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import conditioning, node, predict_noise, relative_error
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict, faceid_state_dict, meta_model, save_adapter, sdxl_layer_dims
from tools.tiny_insightface import face_picture, write_model_pack

pytest.importorskip("insightface")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(pack, tmp_path_factory, tiny_layer_dims):
    """models/ipadapter with tiny FaceID files and models/insightface with the tiny buffalo_l pack, registered as ComfyUI would."""
    import folder_paths

    root = tmp_path_factory.mktemp("models")
    for name, kind in (("faceid", "faceid"), ("faceid_plus", "faceid-plus"), ("portrait", "portrait")):
        save_adapter(faceid_state_dict(kind, tiny_layer_dims, lora_rank=4, lora_scale=0.5, seed=31), root / "ipadapter" / f"tiny_{name}.safetensors")
    save_adapter(faceid_state_dict("faceid", SD15_LAYER_DIMS, lora_rank=2, seed=32), root / "ipadapter" / "ip-adapter-faceid_sd15.bin")
    save_adapter(adapter_state_dict("base", tiny_layer_dims, seed=33), root / "ipadapter" / "tiny_clip_base.safetensors")
    write_model_pack(root / "insightface", "buffalo_l")
    folder_paths.add_model_folder_path("ipadapter", str(root / "ipadapter"))
    folder_paths.add_model_folder_path("insightface", str(root / "insightface"))
    return root


def load(name):
    return node("ExactLoadIPAdapter")(name)[0]


@pytest.fixture(scope="module")
def insightface(models):
    return node("ExactLoadInsightFace")("buffalo_l", "CPU")[0]


def face_batch(*faces) -> torch.Tensor:
    return torch.from_numpy(np.stack([face_picture(faces=f) for f in faces or [((320, 256, 64, 1.0),)]]))


def encode(adapter, insightface, image=None, **kwargs):
    return node("ExactEncodeFaceImagePrompt")(adapter, insightface, face_batch() if image is None else image, **kwargs)


def apply(model, adapter, prompt, weight=1.0, start_at=0.0, end_at=1.0, **kwargs):
    return node("ExactApplyIPAdapter")(model, adapter, prompt, weight, start_at, end_at, **kwargs)[0]


def evaluate(comfy, model, sigma=4.0):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    _, cond, uncond, _ = predict_noise(comfy, model, noise, sigma, conditioning(1), conditioning(2), cfg=5.0)
    return torch.cat([cond, uncond])


# --- the LoRA's place in the UNet, key by key against diffusers' numbering ---------------------

@pytest.mark.parametrize("architecture, layer_dims", [("sd15", SD15_LAYER_DIMS), ("sdxl", sdxl_layer_dims())])
def test_lora_lands_where_diffusers_puts_it(comfy, pack, architecture, layer_dims):
    """LoRA n belongs to diffusers' n-th attention processor; ComfyUI's own diffusers -> LDM weight map
    says which UNet weight that is. Every one of SD1.5's 32 and SDXL's 140 layers, 4 projections each."""
    import comfy.utils
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers, lora_weight_pairs

    reference, patcher, unet_config = meta_model(architecture)
    unet = patcher.get_model_object("diffusion_model")
    cross_dim = 768 if architecture == "sd15" else 2048
    adapter = IPAdapterModel.from_weights(split_adapter_weights(faceid_state_dict("faceid", layer_dims, cross_dim, device="meta")), identity="meta")
    mapped = lora_weight_pairs(unet, cross_attention_layers(unet), adapter.lora_pairs())
    to_ldm = comfy.utils.unet_to_diffusers(unet_config)
    processors = list(reference.attn_processors)
    assert len(processors) == len(adapter.lora_pairs()) == 2 * len(layer_dims)
    expected = {}
    for n, name in enumerate(processors):
        for projection, linear in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("out", "to_out.0")):
            ldm = to_ldm[name.replace(".processor", f".{linear}.weight")]
            expected[ldm] = adapter.lora_pairs()[n][projection]
    assert mapped.keys() == expected.keys()
    for key, (down, up) in mapped.items():
        assert down is expected[key][0] and up is expected[key][1], key
        assert (up.shape[0], down.shape[1]) == tuple(unet.get_submodule(key.rsplit(".", 1)[0]).weight.shape)


def test_faceid_adapter_for_another_layout_is_refused(tiny_model, models):
    with pytest.raises(Exception, match="do not line up"):
        apply(tiny_model, load("ip-adapter-faceid_sd15.bin"), None)


# --- the nodes -------------------------------------------------------------------------------

def test_nodes_are_registered_without_colliding_names(pack):
    from comfyui_ipadapter.nodes.socket_types import INSIGHTFACE
    from tools.comfy_host import pack_nodes

    ids = set(pack_nodes())
    assert {"ExactLoadInsightFace", "ExactEncodeFaceImagePrompt"} <= ids
    assert INSIGHTFACE == "EXACT_INSIGHTFACE"
    taken = {"IPAdapterFaceID", "IPAdapterInsightFaceLoader", "INSIGHTFACE", "FACE_ANALYSIS"}
    assert not taken & ids and INSIGHTFACE not in taken
    (model_name,) = [spec for spec in pack_nodes()["ExactLoadInsightFace"].GET_SCHEMA().inputs if spec.id == "model_name"]
    assert model_name.options[:2] == ["buffalo_l", "antelopev2"]


def test_face_prompt_is_the_core_encoding_of_the_detected_face(models, insightface, small_clip_vision):
    from comfyui_ipadapter.ipadapter_core.face_encoding import encode_face_image_prompt
    from comfyui_ipadapter.nodes.clip_vision import comfy_encoder

    adapter = load("tiny_faceid_plus.safetensors")
    prompt, crops = encode(adapter, insightface, clip_vision=small_clip_vision, v2_scale=0.7)
    faces = insightface.reference_faces(face_batch())
    expected = encode_face_image_prompt(adapter.model, faces, comfy_encoder(small_clip_vision, adapter.model.spec), shortcut_scale=0.7)
    assert torch.equal(prompt.cond, expected.cond) and torch.equal(prompt.uncond, expected.uncond)
    assert torch.equal(crops, faces[0].crop[None])
    v1, _ = encode(adapter, insightface, clip_vision=small_clip_vision, faceid_v2=False)
    assert not torch.allclose(v1.cond, prompt.cond)


def test_lora_is_an_ordinary_weight_patch(comfy, tiny_model, models, insightface):
    """Apply with the in-file LoRA == the same adapter (LoRA off) on a UNet whose weights hold W + s * up @ down."""
    adapter = load("tiny_faceid.safetensors")
    prompt, _ = encode(adapter, insightface)
    patched = apply(tiny_model, adapter, prompt, lora_strength=0.8)
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers, lora_weight_pairs

    unet = tiny_model.get_model_object("diffusion_model")
    merged = {k: v.clone() for k, v in unet.state_dict().items()}
    pairs = lora_weight_pairs(unet, cross_attention_layers(unet), adapter.model.lora_pairs())
    assert len(pairs) == 4 * 8  # 4 cross-attention layers: attn1 and attn2, q/k/v/out each
    for key, (down, up) in pairs.items():
        merged[key] += 0.8 * up.float() @ down.float()
    by_hand = comfy.sd.load_diffusion_model_state_dict(merged)
    expected = evaluate(comfy, apply(by_hand, adapter, prompt, lora_strength=0.0))
    assert relative_error(evaluate(comfy, patched), expected) < 1e-5
    without = evaluate(comfy, apply(tiny_model, adapter, prompt, lora_strength=0.0))
    assert relative_error(without, expected) > 1e-2  # the LoRA acts
    assert not any(key.startswith("diffusion_model.") for key in apply(tiny_model, adapter, prompt, lora_strength=0.0).patches)


def test_lora_composes_with_a_lora_node_and_is_added_once(comfy, tiny_model, models, insightface):
    from tools.random_models import lora_state_dict

    adapter = load("tiny_faceid.safetensors")
    prompt, _ = encode(adapter, insightface)
    import comfy.sd

    # What the stock LoRA loader nodes do with a LoRA file's weights.
    other, _ = comfy.sd.load_lora_for_models(tiny_model, None, lora_state_dict(tiny_model, seed=3), 0.5, 0.0)
    twice = apply(apply(other, adapter, prompt), adapter, prompt, weight=0.5)
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert len(twice.patches[key]) == 2  # the LoRA node's patch and the adapter's, once
    once = apply(apply(other, adapter, prompt), adapter, prompt, weight=0.5, lora_strength=0.0)
    assert torch.equal(evaluate(comfy, twice), evaluate(comfy, once))


def test_faceid_goes_through_the_image_prompt_path(comfy, tiny_model, models, insightface):
    """Masks, start/end, weight types, scaling and combining act on FaceID tokens as on CLIP tokens;
    at weight 0 only the LoRA remains."""
    from comfyui_ipadapter.nodes.attention_patch import ImagePromptAttention, attn2_patches

    adapter = load("tiny_portrait.safetensors")  # no LoRA: the image branch alone
    prompt, crops = encode(adapter, insightface, face_batch(((320, 256, 64, 1.0),), ((128, 128, 64, 0.9),)))
    assert prompt.cond.shape == (2, 16, 768) and crops.shape == (2, 224, 224, 3)
    bare = evaluate(comfy, tiny_model)
    assert torch.equal(evaluate(comfy, apply(tiny_model, adapter, prompt, weight=0.0)), bare)
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1.0
    for options in (dict(), dict(attn_mask=mask), dict(weight_type="ease in"), dict(embeds_scaling="K+V"), dict(start_at=0.2, end_at=0.9)):
        patched = apply(tiny_model, adapter, prompt, **options)
        assert all(isinstance(p, ImagePromptAttention) for p in attn2_patches(patched).values())
        assert relative_error(evaluate(comfy, patched), bare) > 1e-3, options
    merged = node("ExactCombineImagePrompts")(prompt, prompt, "average")[0]
    assert relative_error(evaluate(comfy, apply(tiny_model, adapter, merged)), bare) > 1e-3


def test_weight_zero_leaves_only_the_lora(comfy, tiny_model, models, insightface):
    adapter = load("tiny_faceid.safetensors")
    prompt, _ = encode(adapter, insightface)
    only_lora = evaluate(comfy, apply(tiny_model, adapter, prompt, weight=0.0))
    assert relative_error(only_lora, evaluate(comfy, tiny_model)) > 1e-3
    assert torch.equal(only_lora, evaluate(comfy, apply(tiny_model, adapter, prompt, weight=0.0, lora_strength=1.0)))


# --- bad input: clear errors before sampling ---------------------------------------------------

def test_clip_adapter_into_the_face_node_and_the_reverse(tiny_model, models, insightface, small_clip_vision):
    clip_adapter = load("tiny_clip_base.safetensors")
    with pytest.raises(Exception, match="not a FaceID adapter.*Encode Image Prompt"):
        encode(clip_adapter, insightface)
    face_only = load("tiny_faceid.safetensors")
    clip_prompt = node("ExactEncodeImagePrompt")(clip_adapter, small_clip_vision, face_batch())[0]
    face_prompt, _ = encode(face_only, insightface)
    with pytest.raises(Exception, match="encoded by a different IP-Adapter.*FaceID"):
        apply(tiny_model, face_only, clip_prompt)
    with pytest.raises(Exception, match="encoded by a different IP-Adapter.*FaceID"):
        apply(tiny_model, clip_adapter, face_prompt)
    with pytest.raises(Exception, match="FaceID.*Encode Face Image Prompt"):
        node("ExactEncodeImagePrompt")(face_only, small_clip_vision, face_batch())
    with pytest.raises(Exception, match="FaceID plus.*Encode Face Image Prompt"):
        node("ExactEncodeImagePrompt")(load("tiny_faceid_plus.safetensors"), small_clip_vision, face_batch())
    with pytest.raises(Exception, match="needs no CLIP vision model"):
        node("ExactLoadIPAdapterAndEncoder")("tiny_faceid.safetensors")


def test_plus_without_clip_vision_fails_before_face_analysis(models):
    class Untouchable:
        def reference_faces(self, *args, **kwargs):
            raise AssertionError("face analysis ran before the inputs were checked")

    with pytest.raises(Exception, match="connect clip_vision"):
        encode(load("tiny_faceid_plus.safetensors"), Untouchable())


def test_no_face_and_several_faces(models, insightface):
    adapter = load("tiny_faceid.safetensors")
    blank = torch.full((1, 640, 640, 3), 0.3)
    with pytest.raises(Exception, match=r"No face found in reference image 2 of 2 \(batch_index 1\)"):
        encode(adapter, insightface, torch.cat([face_batch(), blank]))
    group = face_batch(((64, 64, 64, 0.6), (448, 384, 64, 1.0)))
    largest, crops = encode(adapter, insightface, group)
    every, all_crops = encode(adapter, insightface, group, faces="all")
    assert largest.references == 1 and every.references == 2 and torch.allclose(every.cond[:1], largest.cond, atol=1e-5)
    assert torch.equal(all_crops[:1], crops)
    weighted, _ = encode(adapter, insightface, torch.cat([group, face_batch()]), faces="all", image_weights="1, 0.5")
    assert weighted.reference_weights == (1.0, 1.0, 0.5)  # both faces of image 1 keep its weight


def test_missing_insightface_models_name_folder_and_files(models, tmp_path):
    with pytest.raises(Exception, match=r"'antelopev2' was not found.*scrfd_10g_bnkps\.onnx.*insightface/models/antelopev2"):
        node("ExactLoadInsightFace")("antelopev2", "CPU")


def test_pack_loads_and_works_without_insightface(models, tmp_path):
    """A fresh ComfyUI process where importing insightface fails, as on a machine without it."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["insightface"] = None  # `import insightface` now raises ImportError
        sys.path.insert(0, {str(REPO)!r})
        from tools.comfy_host import NodeRunner, pack_nodes
        classes = pack_nodes()
        import folder_paths
        folder_paths.add_model_folder_path("insightface", {str(models / "insightface")!r})
        assert "ExactLoadInsightFace" in classes and "ExactEncodeFaceImagePrompt" in classes
        schedule = NodeRunner(classes["ExactIPAdapterWeightSchedule"])(4, 1.0, 0.0, "linear")
        assert max(abs(a - b) for a, b in zip(schedule[0], (1.0, 2 / 3, 1 / 3, 0.0))) < 1e-9, schedule
        try:
            NodeRunner(classes["ExactLoadInsightFace"])("buffalo_l", "CPU")
        except ValueError as error:
            print("ERROR:", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR: FaceID needs the optional packages insightface, onnxruntime and opencv-python-headless" in result.stdout
    assert "requirements-faceid.txt" in result.stdout

