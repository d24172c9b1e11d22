"""What the image branch costs per sampling step on Flux.1 and SD3.5 (transformer models).

Two measurements, both through real ComfyUI sampling and the pack's nodes:
- Time, on a small config that keeps the real architecture's proportions (double and single
  blocks 1:2 for Flux, head width 128 / 64): per-step time of the bare model and of 1 and 2
  adapters, interleaved over repeats, and the time spent in the image-branch code itself (a
  timer around it), as a share of the bare model's fastest step. On a shared 2-core CPU whole
  steps vary by more than the branch costs, so the direct timer is the figure to read.
- Counts, deterministic and machine-independent: FLOPs (torch's FlopCounterMode) and
  dispatched non-view operators (each roughly one kernel launch on a GPU) for one model
  evaluation, bare and patched. With --full-size they are also counted for the real
  architecture (Flux.1 [dev]: 19 double + 38 single blocks of width 3072; SD3.5 Large: 38 joint
  blocks of width 2432) at 1024x1024 on the meta device, where nothing is allocated.

    python -m benchmarks.dit_step_cost --model flux --full-size
    python -m benchmarks.dit_step_cost --model sd3 --full-size
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.step_cost import machine
from tools import random_models
from tools.comfy_host import NodeRunner, import_comfy, import_pack, pack_nodes

RESULTS = Path(__file__).resolve().parent / "results"
T5_TOKENS = 512  # Flux [dev] and SD3.5 pad T5 text to 256 / 77+256; 512 is the long-prompt case


def flux_config(width: int, double: int, single: int) -> dict:
    heads = width // 128
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=width, mlp_ratio=4.0,
                num_heads=heads, depth=double, depth_single_blocks=single, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)


def sd3_config(blocks: int) -> dict:
    return dict(in_channels=16, out_channels=16, patch_size=2, depth=blocks, input_size=None, adm_in_channels=2048,
                context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * blocks}},
                num_patches=192 * 192, pos_embed_max_size=192, qk_norm="rms", pos_embed_scaling_factor=None, x_block_self_attn_layers=[])


def build(kind: str, config: dict, device: str):
    """A ComfyUI ModelPatcher of the given architecture, random weights (or shapes only on meta)."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(dict(config)) if kind == "flux" else comfy.supported_models.SD3(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=device)
    if device != "meta":
        random_models.randomize_(model.diffusion_model, seed=0)
    target = torch.device(device)
    return comfy.model_patcher.ModelPatcher(model, load_device=target, offload_device=target)


def make_adapters(kind: str, config: dict, count: int, device: str):
    """`count` different random adapters in the official layout for this model, with image prompts
    (on the meta device: shapes only, for counting the full-size architecture)."""
    import comfy.model_patcher
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import split_adapter_weights
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt
    from comfyui_ipadapter.nodes.load_ipadapter import LoadedIPAdapter

    adapters = []
    for i in range(count):
        if kind == "flux":
            state = random_models.flux_adapter_state_dict(config["depth"], config["hidden_size"], 4096, tokens=16, seed=100 + i, device=device)
            features = torch.randn(2, 768, generator=torch.Generator().manual_seed(200 + i))
        else:
            state = random_models.sd3_adapter_state_dict(config["depth"], 64 * config["depth"], seed=100 + i, device=device)
            features = torch.randn(2, 729, 1152, generator=torch.Generator().manual_seed(200 + i))
        model = IPAdapterModel.from_weights(split_adapter_weights(state), identity=f"adapter{i}")
        target = torch.device(device)
        adapter = LoadedIPAdapter(model, comfy.model_patcher.ModelPatcher(model, load_device=target, offload_device=target), f"adapter{i}")
        if model.spec.timestep_conditioned:
            prompt = ImagePrompt(features[:1], features[1:], model.identity, "")
        else:
            prompt = ImagePrompt(model.project(features[:1]), model.project(features[1:]), model.identity, "")
        adapters.append((adapter, prompt))
    return adapters


def apply(model, adapters):
    run = NodeRunner(pack_nodes()["ExactApplyIPAdapter"])
    for adapter, prompt in adapters:
        model = run(model, adapter, prompt, 1.0, 0.0, 1.0)[0]
    return model


def conditioning(kind: str, seed: int, tokens: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, 4096, generator=g).to(device)
    if kind == "flux":
        return [[context, {"pooled_output": torch.randn(1, 768, generator=g).to(device), "guidance": 3.5}]]
    return [[context, {"pooled_output": torch.randn(1, 2048, generator=g).to(device)}]]


def branch_timer():
    """Wraps the pack's image-branch entry points with a timer; returns (calls as (start, seconds), restore)."""
    from comfyui_ipadapter.nodes.attention_patch import ImagePromptAttention
    from comfyui_ipadapter.nodes.dit_patch import ImagePromptBlock

    seconds: list[tuple[float, float]] = []  # (start, duration) per call
    originals = {(ImagePromptAttention, "add_image"): ImagePromptAttention.add_image, (ImagePromptBlock, "add_joint"): ImagePromptBlock.add_joint}

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            seconds.append((start, time.perf_counter() - start))
            return out
        return wrapper

    for (owner, name), function in originals.items():
        setattr(owner, name, timed(function))

    def restore():
        for (owner, name), function in originals.items():
            setattr(owner, name, function)

    return seconds, restore


def time_steps(comfy, kind, model, latent, steps, cfg, text_tokens):
    noise = torch.randn(1, 16, latent, latent, generator=torch.Generator().manual_seed(1))
    stamps = []
    seconds, restore = branch_timer()
    try:
        comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", conditioning(kind, 2, text_tokens), conditioning(kind, 3, text_tokens),
                            torch.zeros_like(noise), seed=0, callback=lambda step, x0, x, total: stamps.append(time.perf_counter()), disable_pbar=True)
    finally:
        restore()
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    # As for the step times, the first step is left out: it also builds what a run computes once
    # (Flux's image keys/values, device copies of the prompt).
    steady = sum(duration for start, duration in seconds if start > stamps[0])
    return statistics.median(intervals), steady / (steps - 1)


class OpCounter(TorchDispatchMode):
    """Counts dispatched operators that are not views (views launch no kernel)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_one_evaluation(kind, model, latent, cfg, text_tokens, device):
    """FLOPs and non-view ops of one model evaluation (CFG batch 2 when cfg > 1), in steady state:
    the patched model is evaluated once first, so per-run work (image keys/values of Flux,
    device copies) is not counted and per-step work (SD3.5's projection) is."""
    import comfy.patcher_extension

    kinds = [0, 1] if cfg > 1 else [0]
    batch = len(kinds)
    (context, extra), = conditioning(kind, 2, text_tokens, device)
    x = torch.randn(batch, 16, latent, latent, device=device)
    conds = dict(c_crossattn=context.repeat(batch, 1, 1), y=extra["pooled_output"].repeat(batch, 1))
    if kind == "flux":
        conds["guidance"] = torch.full((batch,), 3.5, device=device)
    counted = {}
    with gpu_attention_kernel():
        for sigma in (0.8, 0.7):
            sigmas = torch.full((batch,), sigma, device=device)
            options = {**model.model_options["transformer_options"], "cond_or_uncond": kinds, "sigmas": sigmas}
            # the patcher's wrappers (SD3.5's per-step inputs), merged in as the host's sampler does
            options["wrappers"] = comfy.patcher_extension.merge_nested_dicts(dict(options.get("wrappers", {})), model.wrappers)
            flops, ops = FlopCounterMode(display=False), OpCounter()
            with torch.inference_mode(), flops, ops:
                model.model.apply_model(x, sigmas, transformer_options=options, **conds)
            counted = dict(flops=flops.get_total_flops(), ops=sum(ops.ops.values()))
    return counted


@contextlib.contextmanager
def gpu_attention_kernel():
    """Count with the attention kernel ComfyUI uses on GPUs (PyTorch SDPA, one op per call) instead of
    the CPU's chunked sub-quadratic one, whose op count depends on free memory (and fails on meta)."""
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention
    import comfy.ldm.modules.diffusionmodules.mmdit
    from comfyui_ipadapter.nodes import attention_patch

    modules = (comfy.ldm.modules.attention, comfy.ldm.flux.math, comfy.ldm.modules.diffusionmodules.mmdit, attention_patch)
    saved = [module.optimized_attention for module in modules]
    for module in modules:
        module.optimized_attention = comfy.ldm.modules.attention.attention_pytorch
    try:
        yield
    finally:
        for module, function in zip(modules, saved):
            module.optimized_attention = function


def counts(kind, config, latent, cfg, text_tokens, device):
    model = build(kind, config, device)
    adapters = make_adapters(kind, config, 2, device)
    rows = {}
    for name, patched in (("bare", model), ("1 adapter", apply(model, adapters[:1])), ("2 adapters", apply(model, adapters))):
        rows[name] = count_one_evaluation(kind, patched, latent, cfg, text_tokens, device)
    bare = rows["bare"]
    return [dict(config=name, gflop=row["flops"] / 1e9, ops=row["ops"], flops_over_bare_pct=(row["flops"] / bare["flops"] - 1) * 100,
                 ops_over_bare_pct=(row["ops"] / bare["ops"] - 1) * 100, ops_per_patched_block=(row["ops"] - bare["ops"]) / config["depth"])
            for name, row in rows.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["flux", "sd3"], default="flux")
    parser.add_argument("--width", type=int, default=768, help="Flux: hidden width (heads of 128); SD3: 64 x blocks")
    parser.add_argument("--blocks", type=int, default=2, help="Flux: double blocks (single blocks: twice as many); SD3: joint blocks")
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-size", action="store_true", help="also count FLOPs/ops for the real architecture at 1024x1024 (meta device)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 keeps small ops fair on an oversubscribed machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    comfy = import_comfy()
    import_pack()
    load_before = os.getloadavg()
    kind = args.model
    cfg = 1.0 if kind == "flux" else 4.5  # Flux [dev] is guidance-distilled: one pass per step
    config = flux_config(args.width, args.blocks, 2 * args.blocks) if kind == "flux" else sd3_config(args.blocks)
    model = build(kind, config, "cpu")
    adapters = make_adapters(kind, config, 2, "cpu")
    configs = {"bare": model, "1 adapter": apply(model, adapters[:1]), "2 adapters": apply(model, adapters)}
    time_steps(comfy, kind, model, args.latent, 2, cfg, args.text_tokens)  # warm-up
    samples = {name: [] for name in configs}
    branch = {name: [] for name in configs}
    names = list(configs)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            seconds, branch_seconds = time_steps(comfy, kind, configs[name], args.latent, args.steps, cfg, args.text_tokens)
            samples[name].append(seconds)
            branch[name].append(branch_seconds)
    small_counts = counts(kind, config, args.latent, cfg, args.text_tokens, "cpu")
    full = None
    if args.full_size:
        full_config = flux_config(3072, 19, 38) if kind == "flux" else sd3_config(38)
        full = dict(config="Flux.1 [dev]" if kind == "flux" else "SD3.5 Large", latent=128, text_tokens=T5_TOKENS if kind == "flux" else 77 + 256,
                    rows=counts(kind, full_config, 128, cfg, T5_TOKENS if kind == "flux" else 77 + 256, "meta"))
    bare_min = min(samples["bare"])
    rows = [dict(config=name, ms_per_step=statistics.median(values) * 1000, min_ms_per_step=min(values) * 1000,
                 overhead_of_min_pct=(min(values) / bare_min - 1) * 100, branch_ms_per_step=statistics.median(branch[name]) * 1000,
                 branch_pct_of_bare_min=statistics.median(branch[name]) / bare_min * 100, samples_ms=[v * 1000 for v in values])
            for name, values in samples.items()]
    result = dict(machine=machine(torch.device("cpu")), load_average_before_after=[load_before[0], os.getloadavg()[0]], model=kind, unet_config=config, latent=args.latent, text_tokens=args.text_tokens, cfg=cfg,
                  steps=args.steps, repeats=args.repeats, torch=torch.__version__, rows=rows, counts=small_counts, full_size_counts=full)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cpu-{kind}-w{config.get('hidden_size', 64 * args.blocks)}-{args.latent}-fp32-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['machine']} (load {load_before[0]:.1f}) | {kind}, {args.blocks} blocks, latent {args.latent}, {args.text_tokens} text tokens, cfg {cfg}, {args.steps} steps x {args.repeats}")
    for row in rows:
        print(f"{row['config']:12} {row['ms_per_step']:9.1f} ms/step  min {row['min_ms_per_step']:9.1f} ({row['overhead_of_min_pct']:+5.1f}%)  "
              f"branch {row['branch_ms_per_step']:7.2f} ms = {row['branch_pct_of_bare_min']:.2f}% of the bare step")
    for title, table in (("this config", small_counts), (full and full["config"], full and full["rows"])):
        if table:
            print(f"counts, {title}:")
            for row in table:
                print(f"  {row['config']:12} {row['gflop']:10.1f} GFLOP ({row['flops_over_bare_pct']:+.3f}%)  {row['ops']:6d} ops ({row['ops_over_bare_pct']:+.1f}%, {row['ops_per_patched_block']:.1f} per block)")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
