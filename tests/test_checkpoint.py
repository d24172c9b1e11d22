"""Checkpoint reading and variant detection (ipadapter_core alone, no ComfyUI)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_core.adapter import IPAdapterModel
from ipadapter_core.checkpoint import load_adapter_weights, split_adapter_weights
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.encoders import IMAGE_EMBEDS, PENULTIMATE
from ipadapter_core.variants import detect_variant
from tools.random_models import SD15_LAYER_DIMS, adapter_state_dict, save_adapter, sdxl_layer_dims

# (kind, cross_dim, clip_dim, resampler heads) -> what detection must report. SDXL files are
# built on the meta device: detection only reads shapes, and real ones are 350M-700M parameters.
OFFICIAL = {
    "ip-adapter_sd15": ("base", 768, 1024, None, dict(projection="linear", encoder_output=IMAGE_EMBEDS, encoder_width=1024, num_tokens=4, family="SD1.5", encoder_name="CLIP ViT-H/14")),
    "ip-adapter_sd15_vit-G": ("base", 768, 1280, None, dict(projection="linear", encoder_width=1280, family="SD1.5", encoder_name="CLIP ViT-bigG/14")),
    "ip-adapter-plus_sd15": ("plus", 768, 1280, None, dict(projection="resampler", encoder_output=PENULTIMATE, encoder_width=1280, num_tokens=16, resampler_heads=12, resampler_depth=4, encoder_name="CLIP ViT-H/14")),
    "ip-adapter-full-face_sd15": ("full", 768, 1280, None, dict(projection="mlp", encoder_output=PENULTIMATE, encoder_width=1280, num_tokens=None, family="SD1.5")),
    "ip-adapter_sdxl": ("base", 2048, 1280, None, dict(projection="linear", encoder_width=1280, num_tokens=4, family="SDXL", encoder_name="CLIP ViT-bigG/14")),
    "ip-adapter_sdxl_vit-h": ("base", 2048, 1024, None, dict(projection="linear", encoder_width=1024, family="SDXL", encoder_name="CLIP ViT-H/14")),
    "ip-adapter-plus_sdxl_vit-h": ("plus", 2048, 1280, 20, dict(projection="resampler", encoder_width=1280, num_tokens=16, resampler_heads=20, family="SDXL", encoder_name="CLIP ViT-H/14")),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_detects_every_official_variant(name):
    kind, cross_dim, clip_dim, heads, expected = OFFICIAL[name]
    dims = SD15_LAYER_DIMS if cross_dim == 768 else sdxl_layer_dims()
    weights = split_adapter_weights(adapter_state_dict(kind, dims, cross_dim, clip_dim, resampler_heads=heads, device="meta"))
    spec = detect_variant(weights)
    for field, value in expected.items():
        assert getattr(spec, field) == value, field
    assert spec.cross_attention_dim == cross_dim
    assert spec.layer_dims == tuple(dims)


def test_official_parameter_counts():
    """The layouts match the reference's parameter counts (22.3M base SD1.5, 49.1M plus, 21.8M full-face)."""
    expected = {"base": 22.3e6, "plus": 49.1e6, "full": 21.8e6}
    for kind, count in expected.items():
        state = adapter_state_dict(kind, SD15_LAYER_DIMS, device="meta")
        total = sum(t.numel() for part in state.values() for t in part.values())
        assert abs(total - count) < 0.06e6, (kind, total)


@pytest.mark.parametrize("suffix, prefix", [(".bin", None), (".safetensors", "ip_adapter"), (".safetensors", "adapter_modules")])
def test_file_formats_load_identically(tmp_path, suffix, prefix):
    state = adapter_state_dict("plus", SD15_LAYER_DIMS, seed=3, dtype=torch.float16)
    path = save_adapter(state, tmp_path / f"adapter{suffix}", prefix=prefix or "ip_adapter")
    adapter = IPAdapterModel.load(path)
    assert adapter.spec.projection == "resampler"
    loaded = adapter.state_dict_official()
    for key, tensor in state["image_proj"].items():
        assert torch.equal(loaded[f"image_proj.{key}"], tensor)
    for key, tensor in state["ip_adapter"].items():
        assert loaded[f"ip_adapter.{key}"].dtype == torch.float16
        assert torch.equal(loaded[f"ip_adapter.{key}"], tensor)


def test_mixed_precision_file(tmp_path):
    """ip-adapter-plus_sd15.bin stores image_proj in fp32 and the layers in fp16."""
    state = adapter_state_dict("plus", SD15_LAYER_DIMS, seed=4, dtype=torch.float16)
    state["image_proj"] = {k: v.float() for k, v in state["image_proj"].items()}
    adapter = IPAdapterModel.load(save_adapter(state, tmp_path / "plus.bin"))
    assert adapter.image_proj.proj_in.weight.dtype == torch.float32
    assert adapter.layer(1).to_k_ip.weight.dtype == torch.float16
    tokens = adapter.project(torch.randn(1, 257, 1280))
    assert tokens.shape == (1, 16, 768) and torch.isfinite(tokens).all()


def test_saved_model_round_trips(tmp_path):
    state = adapter_state_dict("full", SD15_LAYER_DIMS, seed=5)
    adapter = IPAdapterModel.load(save_adapter(state, tmp_path / "a.safetensors"))
    save_file({k: v.contiguous() for k, v in adapter.state_dict_official().items()}, str(tmp_path / "b.safetensors"))
    again = IPAdapterModel.load(tmp_path / "b.safetensors")
    assert again.identity == adapter.identity
    assert again.spec == adapter.spec


def test_identity_tells_adapters_apart(tmp_path):
    a = IPAdapterModel.load(save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS, seed=1), tmp_path / "a.bin"))
    a_again = IPAdapterModel.load(save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS, seed=1), tmp_path / "a.safetensors"))
    b = IPAdapterModel.load(save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS, seed=2), tmp_path / "b.bin"))
    assert a.identity == a_again.identity
    assert a.identity != b.identity


class Exploit:
    """A pickle payload that would create a file if unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_unsafe_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"image_proj": {"x": Exploit(marker)}, "ip_adapter": {}}, path)
    with pytest.raises(IPAdapterError, match="unpickling.*not loaded.*safetensors"):
        load_adapter_weights(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain pickle before refusing it
def test_refuses_plain_pickle_of_code(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Exploit(tmp_path / "pwned2")))
    with pytest.raises(IPAdapterError, match="needs code to load"):
        load_adapter_weights(path)
    assert not (tmp_path / "pwned2").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_truncated_file(tmp_path, suffix):
    path = save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS), tmp_path / f"adapter{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IPAdapterError, match="corrupt or truncated.*Download it again"):
        load_adapter_weights(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_garbage_file(tmp_path, suffix):
    path = tmp_path / f"adapter{suffix}"
    for seed in range(20):  # many different damaged streams: each must give the same clear error
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(IPAdapterError, match="corrupt or truncated"):
            load_adapter_weights(path)


def test_missing_file(tmp_path):
    with pytest.raises(IPAdapterError, match="not found.*models/ipadapter"):
        load_adapter_weights(tmp_path / "nope.safetensors")


def test_empty_ip_adapter_dict(tmp_path):
    state = adapter_state_dict("base", SD15_LAYER_DIMS)
    state["ip_adapter"] = {}
    with pytest.raises(IPAdapterError, match="empty `ip_adapter`.*re-export"):
        load_adapter_weights(save_adapter(state, tmp_path / "empty.bin"))


def test_not_an_adapter(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_file({"vision_model.embeddings.class_embedding": torch.zeros(1280)}, str(path))
    with pytest.raises(IPAdapterError, match="not an IP-Adapter checkpoint.*clip_vision"):
        load_adapter_weights(path)


def test_inconsistent_widths():
    state = adapter_state_dict("base", SD15_LAYER_DIMS, cross_dim=768)
    state["ip_adapter"] = adapter_state_dict("base", [(1, 640)], cross_dim=2048)["ip_adapter"]
    with pytest.raises(IPAdapterError, match="Inconsistent.*768.*2048"):
        detect_variant(split_adapter_weights(state))


def test_unpaired_layer():
    state = adapter_state_dict("base", SD15_LAYER_DIMS)
    del state["ip_adapter"]["31.to_v_ip.weight"]
    with pytest.raises(IPAdapterError, match="Layer 31.*damaged"):
        detect_variant(split_adapter_weights(state))


@pytest.mark.parametrize("name", ["A.SafeTensors", "B.SFT", "C.BIN", "D.Pt", "E.CKPT"])
def test_extensions_are_matched_in_any_case(tmp_path, name):
    """ComfyUI lists model files whatever the case of their extension, so the loader reads them too."""
    state = adapter_state_dict("base", SD15_LAYER_DIMS, seed=6)
    path = tmp_path / name
    if path.suffix.lower() in (".safetensors", ".sft"):
        save_adapter(state, tmp_path / "staging.safetensors").rename(path)
    else:
        torch.save(state, path)
    assert IPAdapterModel.load(path).spec.projection == "linear"


def unsafe_zip_pickle(path):
    torch.save({"image_proj": {"x": Exploit(path.parent / "pwned3")}, "ip_adapter": {}}, path)
    return path


def truncated_zip(path):
    save_adapter(adapter_state_dict("base", SD15_LAYER_DIMS), path)
    path.write_bytes(path.read_bytes()[:5000])
    return path


def plain_pickle_of_code(path):
    path.write_bytes(pickle.dumps(Exploit(path.parent / "pwned4")))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("make, message", [
    (unsafe_zip_pickle, "needs code to load.*safetensors"),
    (plain_pickle_of_code, "needs code to load.*safetensors"),
    (truncated_zip, "corrupt or truncated.*Download it again"),
])
@pytest.mark.parametrize("torch_says", ["Weights only load failed. Unsupported global: GLOBAL os.system", "some reworded message", None])
def test_pickle_or_corrupt_is_decided_from_the_file_not_from_torchs_message(tmp_path, monkeypatch, make, message, torch_says):
    """A torch upgrade that rewords its errors (or fails differently) must not change what the user reads."""
    path = make(tmp_path / "adapter.bin")
    if torch_says is not None:
        def reworded(*args, **kwargs):
            raise pickle.UnpicklingError(torch_says)

        monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(IPAdapterError, match=message):
        load_adapter_weights(path)
    assert not list(tmp_path.glob("pwned*"))


def test_a_pickled_view_repeating_a_few_values_is_refused_before_it_is_expanded(tmp_path):
    """A zero-stride view pickles as its few stored values: checking or using it would allocate the
    whole declared tensor (found by tools/hostile_files.py: 440 MB from a 2 MB file)."""
    state = adapter_state_dict("base", SD15_LAYER_DIMS[:1], seed=5)
    key = "1.to_k_ip.weight"
    state["ip_adapter"][key] = state["ip_adapter"][key].expand(64, *state["ip_adapter"][key].shape)  # (64, 320, 768) over 320 x 768
    path = tmp_path / "repeated.bin"
    torch.save(state, path)
    assert path.stat().st_size < 20 << 20
    with pytest.raises(IPAdapterError, match=r"repeated.bin: 1.to_k_ip.weight declares 15728640 values over 245760 stored ones"):
        load_adapter_weights(path)
