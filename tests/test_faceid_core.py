"""FaceID in ipadapter_core alone: variant detection, projections against diffusers', faces -> ImagePrompt."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from ipadapter_core.adapter import IPAdapterModel
from ipadapter_core.checkpoint import split_adapter_weights
from ipadapter_core.encoding import encode_image_prompt
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.face_analysis import Face
from ipadapter_core.face_encoding import encode_face_image_prompt, project_faces
from ipadapter_core.encoders import FACE_EMBEDS, PENULTIMATE
from ipadapter_core.variants import detect_variant
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict, faceid_state_dict, sdxl_layer_dims

# The official FaceID files: (kind, family) -> what detection must report. SDXL ones on meta (shapes only).
OFFICIAL = {
    "ip-adapter-faceid_sd15": ("faceid", 768, dict(projection="face_mlp", encoder_output=FACE_EMBEDS, num_tokens=4, face_embedding="normed", lora_rank=128, lora_count=32)),
    "ip-adapter-faceid-plus(v2)_sd15": ("faceid-plus", 768, dict(projection="face_plus", encoder_output=PENULTIMATE, encoder_width=1280, num_tokens=4, resampler_heads=12, resampler_depth=4, face_embedding="normed", lora_rank=128, lora_count=32)),
    "ip-adapter-faceid-portrait(-v11)_sd15": ("portrait", 768, dict(projection="face_mlp", encoder_output=FACE_EMBEDS, num_tokens=16, face_embedding="normed", lora_rank=0, lora_count=0)),
    "ip-adapter-faceid_sdxl": ("faceid", 2048, dict(projection="face_mlp", encoder_output=FACE_EMBEDS, num_tokens=4, lora_rank=128, lora_count=140)),
    "ip-adapter-faceid-plusv2_sdxl": ("faceid-plus", 2048, dict(projection="face_plus", encoder_width=1280, num_tokens=4, resampler_heads=32, lora_rank=128, lora_count=140)),
    "ip-adapter-faceid-portrait_sdxl": ("portrait", 2048, dict(projection="face_mlp", num_tokens=16, lora_rank=0)),
    "ip-adapter-faceid-portrait_sdxl_unnorm": ("portrait-unnorm", 2048, dict(projection="face_resampler", encoder_output=FACE_EMBEDS, encoder_width=512, num_tokens=16, resampler_heads=20, face_embedding="raw", lora_rank=0)),
}


def faceid_weights(kind: str, cross_dim: int = 768, device: str = "cpu", lora_rank: int = 4, **kwargs):
    """Real tensors get a small LoRA rank (the layout is what matters); meta ones the official 128."""
    dims = SD15_LAYER_DIMS if cross_dim == 768 else sdxl_layer_dims()
    rank = 128 if device == "meta" else lora_rank
    return split_adapter_weights(faceid_state_dict(kind, dims, cross_dim, device=device, lora_rank=rank, **kwargs))


@pytest.fixture(scope="module")
def portrait_unnorm():
    state = faceid_state_dict("portrait-unnorm", [(1, 640)], cross_dim=2048, seed=10)
    return state, IPAdapterModel.from_weights(split_adapter_weights(state))


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_detects_every_faceid_variant(name):
    kind, cross_dim, expected = OFFICIAL[name]
    spec = detect_variant(faceid_weights(kind, cross_dim, device="meta"))
    expected = dict(expected)
    assert len(spec.lora_layers) == expected.pop("lora_count", len(spec.lora_layers))
    for field, value in expected.items():
        assert getattr(spec, field) == value, field
    assert spec.is_faceid and spec.face_width == 512 and spec.cross_attention_dim == cross_dim
    assert spec.family == ("SD1.5" if cross_dim == 768 else "SDXL")
    assert "InsightFace" in spec.description


def test_portrait_unnorm_is_not_a_plus_adapter_needing_a_512_wide_encoder():
    """Regression: its Resampler reads the 512-d raw face embedding, which once passed for CLIP hidden states."""
    spec = detect_variant(faceid_weights("portrait-unnorm", 2048, device="meta"))
    assert spec.projection == "face_resampler" and spec.encoder_output == FACE_EMBEDS and not spec.needs_clip
    assert spec.face_embedding == "raw"
    assert "512" not in spec.description and "plus," not in spec.description


def test_clip_adapters_are_unchanged():
    spec = detect_variant(split_adapter_weights(adapter_state_dict("plus", SD15_LAYER_DIMS, device="meta")))
    assert (spec.projection, spec.lora_rank, spec.is_faceid, spec.needs_clip) == ("resampler", 0, False, True)


def test_lora_lives_on_self_and_cross_attention():
    spec = detect_variant(faceid_weights("faceid", device="meta"))
    assert spec.lora_layers == tuple(range(32))  # attn1 at 2j, attn2 at 2j + 1, every transformer block


@pytest.mark.parametrize("damage, message", [
    (lambda ip: ip.pop("4.to_v_lora.up.weight"), "incomplete at attention layer 4"),
    (lambda ip: ip.__setitem__("40.to_q_lora.down.weight", torch.zeros(4, 320)), "incomplete at attention layer 40"),
    (lambda ip: ip.__setitem__("1.to_k_lora.up.weight", torch.zeros(320, 2)), "1.to_k_lora.*mismatched shapes"),
])
def test_damaged_lora_is_refused(damage, message):
    weights = faceid_weights("faceid")
    damage(weights.ip_adapter)
    with pytest.raises(IPAdapterError, match=message):
        detect_variant(weights)


def test_lora_round_trips_and_pairs_up():
    state = faceid_state_dict("faceid", SD15_LAYER_DIMS, lora_rank=4, seed=3)
    adapter = IPAdapterModel.from_weights(split_adapter_weights(state))
    saved = adapter.state_dict_official()
    assert saved.keys() == {f"image_proj.{k}" for k in state["image_proj"]} | {f"ip_adapter.{k}" for k in state["ip_adapter"]}
    pairs = adapter.lora_pairs()
    assert sorted(pairs) == list(range(32)) and all(set(p) == {"q", "k", "v", "out"} for p in pairs.values())
    down, up = pairs[5]["k"]
    assert down is state["ip_adapter"]["5.to_k_lora.down.weight"] and up is state["ip_adapter"]["5.to_k_lora.up.weight"]


def diffusers_projection(image_proj, host=None):
    from diffusers import UNet2DConditionModel

    # The conversion diffusers' IP-Adapter loader applies to official FaceID checkpoints.
    return UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(host, image_proj, low_cpu_mem_usage=host is not None).eval()


def unit_faces(count: int, seed: int) -> torch.Tensor:
    faces = torch.randn(count, 512, generator=torch.Generator().manual_seed(seed))
    return faces / faces.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("kind, shortcut", [("faceid", None), ("portrait", None), ("faceid-plus", None), ("faceid-plus", 1.3)])
def test_sd15_projection_matches_diffusers(kind, shortcut):
    state = faceid_state_dict(kind, SD15_LAYER_DIMS[:1], lora_rank=4, seed=7)
    ours = IPAdapterModel.from_weights(split_adapter_weights(state))
    reference = diffusers_projection(state["image_proj"])
    faces, clip = unit_faces(3, 8), torch.randn(3, 257, 1280, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        if kind == "faceid-plus":  # diffusers reads the CLIP states and the v2 shortcut from attributes
            reference.clip_embeds, reference.shortcut, reference.shortcut_scale = clip[:, None], shortcut is not None, shortcut or 1.0
        expected = reference(faces)
    actual = ours.project(faces, clip, shortcut)
    assert actual.shape == expected.shape == (3, 16 if kind == "portrait" else 4, 768)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5), (actual - expected).abs().max()


def test_plus_v2_shortcut_changes_the_tokens():
    adapter = IPAdapterModel.from_weights(faceid_weights("faceid-plus"))
    faces, clip = unit_faces(1, 1), torch.randn(1, 257, 1280)
    v1, v2 = adapter.project(faces, clip), adapter.project(faces, clip, 1.0)
    face_tokens = adapter.image_proj.norm(adapter.image_proj.proj(faces).reshape(1, 4, -1))
    assert torch.allclose(v2, face_tokens + v1, atol=1e-5)  # v2 = face tokens + scale x v1's output


def test_portrait_unnorm_matches_diffusers_plus_projection_on_one_token(portrait_unnorm):
    """diffusers has no portrait-unnorm class; its plus Resampler fed the raw embedding as one token is the reference."""
    state, ours = portrait_unnorm
    reference = diffusers_projection(state["image_proj"])
    raw = unit_faces(2, 11) * 23.0  # InsightFace's raw embeddings have norms of about 20-25
    with torch.no_grad():
        expected = reference(raw[:, None])
    assert torch.allclose(ours.project(raw), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["faceid", "faceid-plus", "portrait"])
def test_sdxl_projection_shapes_key_by_key(kind):
    """Full-size SDXL FaceID projections on the meta device: diffusers' converter loads the official
    layout parameter by parameter (shape-checked), and both give the same token shape."""
    state = faceid_state_dict(kind, [(1, 640)], cross_dim=2048, device="meta")
    ours = IPAdapterModel.from_weights(split_adapter_weights(state), identity="meta")
    reference = diffusers_projection(state["image_proj"], types.SimpleNamespace(device=torch.device("meta"), dtype=torch.float32))
    assert sum(p.numel() for p in reference.parameters()) == sum(t.numel() for t in state["image_proj"].values())
    assert sum(p.numel() for p in ours.image_proj.parameters()) == sum(t.numel() for t in state["image_proj"].values())
    faces, clip = torch.empty(2, 512, device="meta"), torch.empty(2, 257, 1280, device="meta")
    if kind == "faceid-plus":
        reference.clip_embeds, reference.shortcut = clip[:, None], True
    assert ours.project(faces, clip, 1.0).shape == reference(faces).shape == (2, 16 if kind == "portrait" else 4, 2048)


class FixedEncoder:
    """CLIP stand-in: hidden states that depend on every pixel; records what it saw."""

    def __init__(self):
        self.seen = []
        self.weight = torch.randn(3, 1280, generator=torch.Generator().manual_seed(12))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixels)
        cells = torch.nn.functional.adaptive_avg_pool2d(pixels, 16).flatten(2).transpose(1, 2)  # (B, 256, 3)
        tokens = torch.cat([cells.mean(1, keepdim=True), cells], dim=1)
        return tokens @ self.weight


def face(index: int, seed: int) -> Face:
    generator = torch.Generator().manual_seed(seed)
    return Face(image_index=index, box=(0, 0, 10, 10), landmarks=np.zeros((5, 2)), embedding=torch.randn(512, generator=generator) * 20,
                crop=torch.rand(224, 224, 3, generator=generator))


def test_face_prompt_is_the_projection_of_faces_and_of_zeros():
    adapter = IPAdapterModel.from_weights(faceid_weights("faceid"))
    faces = [face(0, 1), face(1, 2)]
    prompt = encode_face_image_prompt(adapter, faces)
    normed = torch.stack([f.embedding / f.embedding.norm() for f in faces])
    assert torch.allclose(prompt.cond, adapter.project(normed)) and prompt.cond.shape == (2, 4, 768)
    assert torch.allclose(prompt.uncond, adapter.project(torch.zeros(2, 512)))
    averaged = encode_face_image_prompt(adapter, faces, combine="average", weights=[1.0, 3.0])
    assert torch.allclose(averaged.cond, adapter.project((normed[:1] + 3 * normed[1:]) / 4), atol=1e-6)


def test_portrait_unnorm_reads_the_raw_embedding(portrait_unnorm):
    _, adapter = portrait_unnorm
    faces = [face(0, 3)]
    assert torch.allclose(encode_face_image_prompt(adapter, faces).cond, adapter.project(faces[0].embedding[None]))


def test_plus_prompt_encodes_the_aligned_crops_and_a_zero_image():
    from ipadapter_core.preprocess import clip_pixels

    adapter = IPAdapterModel.from_weights(faceid_weights("faceid-plus"))
    encoder, faces = FixedEncoder(), [face(0, 5)]
    prompt = encode_face_image_prompt(adapter, faces, encoder, shortcut_scale=1.0)
    assert torch.equal(encoder.seen[0], clip_pixels(faces[0].crop[None]))
    assert torch.equal(encoder.seen[1], torch.zeros(1, 3, 224, 224))
    normed = faces[0].embedding[None] / faces[0].embedding.norm()
    assert torch.allclose(prompt.cond, adapter.project(normed, encoder(encoder.seen[0]), 1.0))
    assert torch.allclose(prompt.uncond, adapter.project(torch.zeros(1, 512), encoder(torch.zeros(1, 3, 224, 224)), 1.0))


def test_plus_without_clip_vision_says_what_to_connect():
    adapter = IPAdapterModel.from_weights(faceid_weights("faceid-plus"))
    with pytest.raises(IPAdapterError, match="connect clip_vision.*CLIP-ViT-H-14"):
        encode_face_image_prompt(adapter, [face(0, 6)])


def test_adapter_kinds_are_not_interchangeable():
    clip_adapter = IPAdapterModel.from_weights(split_adapter_weights(adapter_state_dict("base", SD15_LAYER_DIMS)))
    with pytest.raises(IPAdapterError, match="not a FaceID adapter.*Encode Image Prompt"):
        encode_face_image_prompt(clip_adapter, [face(0, 7)])
    with pytest.raises(IPAdapterError, match="not a FaceID adapter"):
        project_faces(clip_adapter, torch.zeros(1, 512))
    face_adapter = IPAdapterModel.from_weights(faceid_weights("faceid-plus"))
    with pytest.raises(IPAdapterError, match="FaceID plus.*Encode Face Image Prompt"):
        encode_image_prompt(face_adapter, torch.rand(1, 64, 64, 3), FixedEncoder())
