"""Training runs the inference attention: same loss and gradients as diffusers' IPAdapterAttnProcessor2_0.

A tiny UNet with the SD layout (cross-attention in down, up and mid blocks) gets our trainable
adapter through `DecoupledAttnProcessor` (whose image branch is `attention.py`), and a copy of the
same UNet gets the same adapter weights through diffusers' own `load_ip_adapter`. One training
forward/backward on identical inputs must give the same loss (1e-5) and the same gradients for
every to_k_ip/to_v_ip and projection parameter (1e-4, relative).
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import relative_error
from ipadapter_core.attention import ImageKeysValues
from ipadapter_core.training.adapter_setup import AdapterTrainingModel, build_adapter, cross_attention_sites, install_processors
from ipadapter_core.training.convert import official_projection
from tools.training_models import TINY_UNETS, scale_like_linear

pytestmark = pytest.mark.usefixtures("one_thread")
ENCODER_WIDTH = {"base": 40, "plus": 48}


class PipelineStub:
    def __init__(self, unet):
        self.unet = unet


def tiny_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return scale_like_linear(UNet2DConditionModel(**TINY_UNETS["sd15"]))


def perturbed(adapter, seed: int):
    """Away from the to_k/to_v copies, so a mixed-up layer order cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapter


def diffusers_unet(unet, adapter):
    from diffusers.loaders import IPAdapterMixin

    reference = copy.deepcopy(unet)
    official = adapter.state_dict_official()
    state_dict = {"image_proj": {k[len("image_proj."):]: v.detach().clone() for k, v in official.items() if k.startswith("image_proj.")},
                  "ip_adapter": {k[len("ip_adapter."):]: v.detach().clone() for k, v in official.items() if k.startswith("ip_adapter.")}}
    stub = type("Pipeline", (IPAdapterMixin,), {"__init__": PipelineStub.__init__})(reference)
    stub.load_ip_adapter(state_dict, subfolder="", weight_name="adapter.bin")
    stub.set_ip_adapter_scale(1.0)
    return reference.float().requires_grad_(True)


def inputs(kind: str, seed: int, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, 16, 32, generator=g)
    features = torch.randn(batch, ENCODER_WIDTH[kind], generator=g) if kind == "base" else torch.randn(batch, 17, ENCODER_WIDTH[kind], generator=g)
    target = torch.randn(batch, 4, 8, 8, generator=g)
    return x, t, text, features, target


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_loss_and_gradients_equal_diffusers(kind):
    unet = tiny_unet(0).requires_grad_(False)
    adapter = perturbed(build_adapter(unet, kind, ENCODER_WIDTH[kind], 4 if kind == "base" else 16, resampler_dim=32, resampler_heads=2), 1)
    reference = diffusers_unet(unet, adapter)
    install_processors(unet, adapter)
    x, t, text, features, target = inputs(kind, 2)

    ours = torch.nn.functional.mse_loss(AdapterTrainingModel(unet, adapter)(x, t, text, features), target)
    ours.backward()
    expected = torch.nn.functional.mse_loss(reference(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [features[:, None]]}).sample, target)
    expected.backward()
    assert abs(ours.item() - expected.item()) / expected.item() < 1e-5

    sites = cross_attention_sites(unet)
    assert [s.processor_name for s in sites][-1].startswith("mid_block")  # the middle block is trained too
    processors = [reference.attn_processors[s.processor_name] for s in sites]
    for site, processor in zip(sites, processors):
        layer = adapter.layer(site.index)
        assert relative_error(layer.to_k_ip.weight.grad, processor.to_k_ip[0].weight.grad) < 1e-4
        assert relative_error(layer.to_v_ip.weight.grad, processor.to_v_ip[0].weight.grad) < 1e-4
    projection = reference.encoder_hid_proj.image_projection_layers[0]
    reference_grads = official_projection({name: p.grad for name, p in projection.named_parameters()})
    ours_grads = {name: p.grad for name, p in adapter.image_proj.named_parameters()}
    assert set(reference_grads) == set(ours_grads)
    for name, grad in ours_grads.items():
        assert grad.abs().sum() > 0, name
        assert relative_error(grad, reference_grads[name]) < 1e-4, name


def test_processor_is_text_attention_plus_image_keys_values():
    """One layer by hand: to_out(Attn_text + ImageKeysValues(to_k_ip(c), to_v_ip(c)).add_to) - the inference object."""
    unet = tiny_unet(3).requires_grad_(False)
    adapter = perturbed(build_adapter(unet, "base", 40, 4), 4)
    install_processors(unet, adapter)
    site = cross_attention_sites(unet)[0]
    attention = dict(unet.named_modules())[site.processor_name[: -len(".processor")]]
    g = torch.Generator().manual_seed(5)
    hidden, text, tokens = torch.randn(2, 64, site.inner_dim, generator=g), torch.randn(2, 16, 32, generator=g), torch.randn(2, 4, 32, generator=g)
    layer = adapter.layer(site.index)
    with torch.no_grad():
        q, k, v = attention.to_q(hidden), attention.to_k(text), attention.to_v(text)
        heads, d = attention.heads, site.inner_dim // attention.heads
        weights = torch.einsum("blhd,bthd->bhlt", q.view(2, -1, heads, d), k.view(2, -1, heads, d)).mul(d**-0.5).softmax(-1)
        text_out = torch.einsum("bhlt,bthd->blhd", weights, v.view(2, -1, heads, d)).reshape(2, 64, -1)
        expected = attention.to_out[0](ImageKeysValues([layer.to_k_ip(tokens)], [layer.to_v_ip(tokens)], heads).add_to(text_out, q))
        out = attention(hidden, encoder_hidden_states=(text, tokens))
        plain = attention(hidden, encoder_hidden_states=text)
    assert relative_error(out, expected) < 1e-6
    assert relative_error(plain, out) > 1e-2  # the image branch moved the output; without tokens it is the base layer
