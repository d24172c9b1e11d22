"""The export is the official format that the nodes and diffusers load; `convert` rescues other trainers' outputs.

ComfyUI's tiny SD1.5-detected UNet is copied into a diffusers UNet (ComfyUI's own key map), so the
same weights run in three places: the trainer's forward (DecoupledAttnProcessor), ComfyUI with
the exported file loaded and applied by our nodes, and diffusers with the file loaded by
`load_ip_adapter`. All three give the same noise prediction, which the adapter changes.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import conditioning, node, predict_noise, relative_error
from ipadapter_core.adapter import IPAdapterModel
from ipadapter_core.checkpoint import load_adapter_weights
from ipadapter_core.errors import IPAdapterError
from ipadapter_core.training.__main__ import main
from ipadapter_core.training.adapter_setup import AdapterTrainingModel, build_adapter, install_processors
from ipadapter_core.training.convert import convert
from ipadapter_core.training.state import export_adapter, load_adapter_state
from ipadapter_core.variants import detect_variant
from tools.training_models import TINY_UNETS, scale_like_linear

pytestmark = pytest.mark.usefixtures("one_thread")
SIGMA = 4.0


class PipelineStub:
    def __init__(self, unet):
        self.unet = unet


def load_into_diffusers(unet, source, weight_name="adapter.bin"):
    from diffusers.loaders import IPAdapterMixin

    stub = type("Pipeline", (IPAdapterMixin,), {"__init__": PipelineStub.__init__})(unet)
    stub.load_ip_adapter(source, subfolder="", weight_name=weight_name)
    stub.set_ip_adapter_scale(1.0)
    return unet


def perturbed(adapter, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapter


@pytest.fixture(scope="module")
def comfy_and_diffusers(comfy, tiny_model):
    """ComfyUI's tiny UNet and a diffusers UNet with identical weights."""
    import comfy.utils
    from diffusers import UNet2DConditionModel

    mapping = comfy.utils.unet_to_diffusers(tiny_model.model.model_config.unet_config)
    ldm = tiny_model.model.diffusion_model.state_dict()
    unet = UNet2DConditionModel(sample_size=32, block_out_channels=(320,), down_block_types=("CrossAttnDownBlock2D",),
                                up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1, cross_attention_dim=768, attention_head_dim=8)
    unet.load_state_dict({d: ldm[key].clone() for d, key in mapping.items() if key in ldm}, strict=True)  # the map also lists layouts this UNet lacks
    return tiny_model, unet.eval().requires_grad_(False)


def test_export_runs_the_same_in_trainer_nodes_and_diffusers(comfy, pack, comfy_and_diffusers, tmp_path):
    import folder_paths

    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt

    model, unet = comfy_and_diffusers
    reference = copy.deepcopy(unet)
    torch.manual_seed(0)
    adapter = perturbed(build_adapter(unet, "base", 1024, 4), 1)
    path = export_adapter(adapter, tmp_path / "ipadapter" / "trained.safetensors")  # fp16, the default
    exported = load_file(str(path))
    assert all(t.dtype == torch.float16 for t in exported.values())
    assert {k.split(".")[0] for k in exported} == {"image_proj", "ip_adapter"}
    load_adapter_state(adapter, load_adapter_weights(path))  # train with exactly the exported (fp16-rounded) values
    install_processors(unet, adapter)

    folder_paths.add_model_folder_path("ipadapter", str(path.parent))
    loaded = node("ExactLoadIPAdapter")(path.name)[0]
    assert loaded.model.spec.description == "SD1.5 IP-Adapter (base, needs CLIP ViT-H/14)"
    features = torch.randn(1, 1024, generator=torch.Generator().manual_seed(2))
    uncond = torch.zeros_like(features)
    prompt = ImagePrompt(loaded.model.project(features), loaded.model.project(uncond), loaded.model.identity, "")
    patched = node("ExactApplyIPAdapter")(model, loaded, prompt, 1.0, 0.0, 1.0)[0]
    positive, negative = conditioning(3), conditioning(4)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    x, eps_cond, eps_uncond, sigma = predict_noise(comfy, patched, noise, SIGMA, positive, negative)

    timestep = model.get_model_object("model_sampling").timestep(sigma)
    x_in = (x / math.sqrt(SIGMA**2 + 1)).repeat(2, 1, 1, 1)
    text = torch.cat([positive[0][0], negative[0][0]])
    with torch.no_grad():
        trainer = AdapterTrainingModel(unet, adapter)(x_in, timestep.expand(2), text, torch.cat([features, uncond]))
        # the nodes project in the file's fp16; the attention path is compared on their very tokens
        trainer_on_node_tokens = unet(x_in, timestep, encoder_hidden_states=(text, torch.cat([prompt.cond, prompt.uncond]))).sample
        diffusers = load_into_diffusers(reference, str(path.parent), path.name)(
            x_in, timestep, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [torch.stack([features, uncond])]}).sample
    assert relative_error(eps_cond, trainer_on_node_tokens[:1]) < 1e-4 and relative_error(eps_uncond, trainer_on_node_tokens[1:]) < 1e-4
    assert relative_error(trainer_on_node_tokens, trainer) < 2e-3  # fp16 vs fp32 projection of the same weights
    assert relative_error(diffusers, trainer) < 1e-4
    _, bare_cond, _, _ = predict_noise(comfy, model, noise, SIGMA, positive, negative)
    assert relative_error(bare_cond, eps_cond) > 1e-2


class OfficialProcessor(torch.nn.Module):
    """The tutorial scripts' IPAttnProcessor: to_k_ip / to_v_ip as direct submodules (attn1 ones hold nothing)."""

    def __init__(self, cross_dim=None, inner_dim=None):
        super().__init__()
        if cross_dim is not None:
            self.to_k_ip = torch.nn.Linear(cross_dim, inner_dim, bias=False)
            self.to_v_ip = torch.nn.Linear(cross_dim, inner_dim, bias=False)


class OfficialScriptModel(torch.nn.Module):
    """What the official IP-Adapter training script hands to accelerator.save_state: unet first, then image_proj_model, adapter_modules."""

    def __init__(self, unet, adapter):
        super().__init__()
        processors = {}
        for position, name in enumerate(unet.attn_processors):
            if name.endswith("attn2.processor"):
                processor = OfficialProcessor(*reversed(adapter.layer(position).to_k_ip.weight.shape))
                processor.load_state_dict(adapter.layer(position).state_dict())
            else:
                processor = OfficialProcessor()
            processors[name] = processor
        unet.set_attn_processor(processors)
        self.unet = unet
        self.image_proj_model = copy.deepcopy(adapter.image_proj)
        self.adapter_modules = torch.nn.ModuleList(unet.attn_processors.values())


@pytest.fixture
def trained():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(7)
    unet = scale_like_linear(UNet2DConditionModel(**TINY_UNETS["sd15"]))
    return unet, {kind: perturbed(build_adapter(unet, kind, 48, 4 if kind == "base" else 16, 32, 2), 8) for kind in ("base", "plus")}


def same_weights(path, adapter):
    weights = load_adapter_weights(path)
    expected = adapter.state_dict_official()
    flat = {f"image_proj.{k}": v for k, v in weights.image_proj.items()} | {f"ip_adapter.{k}": v for k, v in weights.ip_adapter.items()}
    return flat.keys() == expected.keys() and all(torch.equal(flat[k].float(), expected[k].half().float()) for k in flat)


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_convert_rescues_deduplicated_accelerate_checkpoint(trained, tmp_path, kind):
    """accelerate's safetensors save keeps the first name of shared tensors (unet.…processor…): adapter_modules vanish."""
    from accelerate import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    PartialState(cpu=True)  # accelerate's logging needs its state, as in a real save_state
    unet, adapters = trained
    state = OfficialScriptModel(copy.deepcopy(unet), adapters[kind]).state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    clean_state_dict_for_safetensors(state)
    assert not any(k.startswith("adapter_modules.") for k in state)  # the known failure, reproduced
    folder = tmp_path / "checkpoint-1000"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    # the tutorials' hand conversion of that file gives an adapter with no cross-attention weights
    hand = {"image_proj": {k[len("image_proj_model."):]: v for k, v in state.items() if k.startswith("image_proj_model.")},
            "ip_adapter": {k[len("adapter_modules."):]: v for k, v in state.items() if k.startswith("adapter_modules.")}}
    torch.save(hand, tmp_path / "hand_converted.bin")
    with pytest.raises(IPAdapterError, match="empty `ip_adapter`"):
        load_adapter_weights(tmp_path / "hand_converted.bin")
    assert main(["convert", str(folder), str(tmp_path / "rescued.safetensors")]) == 0
    assert same_weights(tmp_path / "rescued.safetensors", adapters[kind])


def test_convert_reads_full_pickled_checkpoint(trained, tmp_path):
    unet, adapters = trained
    state = OfficialScriptModel(copy.deepcopy(unet), adapters["base"]).state_dict()
    assert any(k.startswith("adapter_modules.") for k in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert same_weights(convert(tmp_path / "pytorch_model.bin", tmp_path / "out.safetensors"), adapters["base"])


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_convert_reads_diffusers_unet_with_adapter_loaded(trained, tmp_path, kind):
    """A UNet saved after diffusers' load_ip_adapter: projection in diffusers' naming, processors' to_k_ip.0."""
    unet, adapters = trained
    export_adapter(adapters[kind], tmp_path / "a.safetensors", "fp32")
    diffusers_unet = load_into_diffusers(copy.deepcopy(unet), str(tmp_path), "a.safetensors")
    save_file({k: v.contiguous() for k, v in diffusers_unet.state_dict().items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    out = convert(tmp_path, tmp_path / "out.safetensors")
    assert same_weights(out, adapters[kind])
    assert detect_variant(load_adapter_weights(out)) == adapters[kind].spec


def test_export_refuses_what_variant_detection_rejects(trained, tmp_path):
    unet, adapters = trained
    adapter = adapters["base"]
    broken = IPAdapterModel(adapter.spec, adapter.image_proj, torch.nn.ModuleDict(), "x")
    with pytest.raises(IPAdapterError):
        export_adapter(broken, tmp_path / "broken.safetensors")
    assert not (tmp_path / "broken.safetensors").exists()
