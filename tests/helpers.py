"""Shared test helpers: one model evaluation through ComfyUI's real sampler and what it predicted, inputs, node instances."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def predict_noise(comfy, model, noise: torch.Tensor, sigma: float, positive, negative, cfg: float = 7.5):
    """One evaluation of `model` through comfy.sample.sample_custom, as a real sampler makes it.

    Returns the model input x, the conditional and unconditional noise predictions (epsilon)
    and the sigma the sampler used, captured by a post-CFG hook.
    """
    import comfy.samplers

    captured = {}

    def post_cfg(args):
        captured.update(x=args["input"], cond=args["cond_denoised"], uncond=args["uncond_denoised"], sigma=args["sigma"])
        return args["denoised"]

    probe = model.clone()
    probe.set_model_sampler_post_cfg_function(post_cfg)

    def one_evaluation(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        return model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)

    sigmas = torch.tensor([sigma, 0.0])
    latent = torch.zeros_like(noise)
    comfy.sample.sample_custom(probe, noise, cfg, comfy.samplers.KSAMPLER(one_evaluation), sigmas, positive, negative, latent, seed=0, disable_pbar=True)
    x, s = captured["x"], captured["sigma"].view(-1, 1, 1, 1)
    return x, (x - captured["cond"]) / s, (x - captured["uncond"]) / s, captured["sigma"]


def conditioning(seed: int, batch: int = 1, tokens: int = 77, width: int = 768):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, width, generator=generator), {}]]


def node(name: str):
    """One of the pack's nodes by id, run as ComfyUI runs it: `node("ExactLoadIPAdapter")("file.safetensors")`
    returns the outputs as a tuple (tools.comfy_host.NodeRunner)."""
    from tools.comfy_host import NodeRunner, pack_nodes

    return NodeRunner(pack_nodes()[name])
