"""What the image prompt costs per sampling step, in memory, and once per prompt.

Runs real ComfyUI sampling (comfy.sample.sample, euler, CFG batch 2) on random weights of the
real architectures, interleaving configurations across repeats so drift hits all alike:
bare model; 1, 2 and 4 adapters (four different adapters, four image branches per layer);
one adapter through a naive patch that recomputes keys/values in every call (the usual first
attempt).
Per-step time is the median interval between sampler callbacks (device synchronised),
first step excluded; the table gives the median over repeats and, for noisy shared CPUs, the
minimum. Also measured: adapter load time from a warm disk and image encoding.

    python -m benchmarks.step_cost --model sd15 --latent 32 --dtype fp32            # CPU
    python -m benchmarks.step_cost --model sdxl --latent 128 --dtype fp16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tools import random_models
from tools.comfy_host import NodeRunner, import_comfy, import_pack, pack_nodes

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_model(name: str, dtype: torch.dtype):
    import comfy.sd

    if name == "tiny":
        return random_models.tiny_model(seed=0)
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    state = UNet2DConditionModel(**random_models.DIFFUSERS_UNET_CONFIGS[name]).state_dict()
    return comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})


def conditioning(model_name: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if model_name == "sdxl":
        return [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    return [[torch.randn(1, 77, 768, generator=g), {}]]


def make_adapters(pack_module, model, count: int, tmp: Path):
    """`count` different random base adapters for this model, with image prompts from random features."""
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    layers = cross_attention_layers(model.get_model_object("diffusion_model"))
    cross_dim = layers[0].context_dim
    clip_dim = 1280 if cross_dim == 2048 else 1024
    adapters = []
    for i in range(count):
        state = random_models.adapter_state_dict("base", [(l.processor_index, l.inner_dim) for l in layers], cross_dim, clip_dim, seed=100 + i, dtype=torch.float16)
        adapter = wrap_adapter(IPAdapterModel.load(random_models.save_adapter(state, tmp / f"adapter{i}.safetensors")), f"adapter{i}")
        features = torch.randn(1, clip_dim, generator=torch.Generator().manual_seed(200 + i))
        prompt = ImagePrompt(adapter.model.project(features), adapter.model.project(torch.zeros_like(features)), adapter.model.identity, "")
        adapters.append((adapter, prompt))
    return adapters, layers


def apply_adapters(model, adapters):
    apply = NodeRunner(pack_nodes()["ExactApplyIPAdapter"])
    for adapter, prompt in adapters:
        model = apply(model, adapter, prompt, 1.0, 0.0, 1.0)[0]
    return model


def naive_patch(model, adapter, prompt, layers):
    """The straightforward patch, for comparison: keys/values recomputed and cast in every call."""
    from comfy.ldm.modules.attention import optimized_attention

    patched = model.clone()
    for layer in layers:
        projection = adapter.model.layer(layer.processor_index)

        def patch(q, k, v, extra, projection=projection):
            heads = extra["n_heads"]
            out = optimized_attention(q, k, v, heads)
            kinds = extra["cond_or_uncond"]
            chunk = q.shape[0] // len(kinds)
            tokens = torch.cat([(prompt.uncond if kind else prompt.cond).expand(chunk, -1, -1) for kind in kinds]).to(q)
            ik = tokens @ projection.to_k_ip.weight.to(q).T
            iv = tokens @ projection.to_v_ip.weight.to(q).T
            return out + optimized_attention(q, ik, iv, heads)

        patched.set_model_attn2_replace(patch, *layer.key)
    patched.set_additional_models("ipadapter", [adapter.patcher])
    return patched


def held_bytes(model) -> int:
    """Bytes of image keys/values the pack's patches hold right now (read during sampling)."""
    from comfyui_ipadapter.nodes.attention_patch import ImagePromptAttention

    total = 0
    for patch in model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {}).values():
        if isinstance(patch, ImagePromptAttention):
            for image_kv in patch.cache.values():
                held = [t for t in (image_kv.keys, image_kv.values, image_kv.all_row_keys) if t is not None]
                total += sum(t.numel() * t.element_size() for t in held)
    return total


def time_steps(comfy, model, model_name, latent: int, steps: int, device: torch.device):
    """Median seconds per step (first step excluded), peak device memory, pack-held bytes, and on
    the CPU the seconds per step spent in the image-branch math itself.

    The last is measured directly (a timer around ImageKeysValues.add_to) because on a shared CPU
    the difference of two noisy step times cannot resolve a few percent.
    """
    from comfyui_ipadapter.ipadapter_core.attention import ImageKeysValues

    noise = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(1))
    stamps, held, branch = [], [], []
    cuda = device.type == "cuda"
    add_to = ImageKeysValues.add_to

    def timed_add_to(self, *args, **kwargs):
        start = time.perf_counter()
        out = add_to(self, *args, **kwargs)
        branch.append(time.perf_counter() - start)
        return out

    if not cuda:
        ImageKeysValues.add_to = timed_add_to

    def callback(step, x0, x, total):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if step == total - 1:
            held.append(held_bytes(model))

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        comfy.sample.sample(model, noise, steps, 7.5, "euler", "normal", conditioning(model_name, 2), conditioning(model_name, 3),
                            torch.zeros_like(noise), seed=0, callback=callback, disable_pbar=True)
    finally:
        ImageKeysValues.add_to = add_to
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(intervals), peak, held[0] if held else 0, sum(branch) / steps


def one_off_costs(comfy, encoder: bool) -> dict:
    """Load time of a real-size SD1.5 base adapter (22M parameters, fp16) and image encoding time."""
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = random_models.save_adapter(random_models.adapter_state_dict("base", random_models.SD15_LAYER_DIMS, dtype=torch.float16), Path(tmp) / "ip-adapter_sd15.safetensors")
        IPAdapterModel.load(path)  # warm the page cache
        loads = []
        for _ in range(7):
            start = time.perf_counter()
            adapter = wrap_adapter(IPAdapterModel.load(path), path.name)
            loads.append(time.perf_counter() - start)
        out["adapter_load_s"] = statistics.median(loads)
        out["adapter_parameters"] = sum(p.numel() for p in adapter.model.parameters())
    if encoder:
        import comfy.clip_vision

        clip_vision = comfy.clip_vision.load_clipvision_from_sd(random_models.clip_vision_state_dict("vit-h", seed=5, dtype=torch.float16))
        image = torch.rand(1, 512, 512, 3)
        encode = NodeRunner(pack_nodes()["ExactEncodeImagePrompt"])
        encode(adapter, clip_vision, image)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            encode(adapter, clip_vision, image)
            times.append(time.perf_counter() - start)
        out["encode_one_image_s"] = statistics.median(times)
        out["encoder_dtype"] = str(clip_vision.dtype)
    return out


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sd15", "sdxl"], default="sd15")
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--adapters", default="1,2,4", help="adapter counts to measure besides the bare model")
    parser.add_argument("--skip-encoder", action="store_true", help="skip the image-encoding timing (builds a 632M ViT-H)")
    args = parser.parse_args()

    comfy = import_comfy(force_fp32=args.dtype == "fp32", cpu=args.device == "cpu")
    import_pack()

    device = torch.device(args.device)
    model = build_model(args.model, DTYPES[args.dtype])
    counts = [int(c) for c in args.adapters.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        adapters, layers = make_adapters(None, model, max(counts + [1]), Path(tmp))
        configs = {"bare": model}
        configs.update({f"{n} adapter{'s' if n > 1 else ''}": apply_adapters(model, adapters[:n]) for n in counts})
        configs["1 adapter, naive patch"] = naive_patch(model, *adapters[0], layers)
        samples = {name: [] for name in configs}
        peaks, held, branch = {}, {}, {name: [] for name in configs}
        time_steps(comfy, model, args.model, args.latent, 3, device)  # warm-up: loads, kernel selection
        names = list(configs)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate: no config always first
                seconds, peaks[name], held[name], branch_seconds = time_steps(comfy, configs[name], args.model, args.latent, args.steps, device)
                samples[name].append(seconds)
                branch[name].append(branch_seconds)
    bare, bare_min = statistics.median(samples["bare"]), min(samples["bare"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        # On a shared CPU, interference only adds time: the minimum is the steadier estimate there.
        rows.append(dict(config=name, ms_per_step=median * 1000, steps_per_s=1 / median, overhead_pct=(median / bare - 1) * 100,
                         min_ms_per_step=min(values) * 1000, overhead_of_min_pct=(min(values) / bare_min - 1) * 100,
                         branch_ms_per_step=statistics.median(branch[name]) * 1000, branch_pct_of_bare_min=statistics.median(branch[name]) / bare_min * 100,
                         peak_mem_mb=peaks[name] / 2**20, pack_held_kv_mb=held[name] / 2**20, samples_ms=[v * 1000 for v in values]))
    result = dict(machine=machine(device), device=args.device, model=args.model, latent=args.latent, dtype=args.dtype, steps=args.steps,
                  repeats=args.repeats, torch=torch.__version__, adapter_weights_mb=sum(p.numel() * p.element_size() for p in adapters[0][0].model.parameters()) / 2**20,
                  rows=rows, one_off=one_off_costs(comfy, not args.skip_encoder))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"{args.device}-{args.model}-{args.latent}-{args.dtype}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['machine']} | {args.model} latent {args.latent}x{args.latent} {args.dtype}, CFG batch 2, {args.steps} steps x {args.repeats} repeats")
    print(f"{'config':28} {'ms/step':>9} {'steps/s':>8} {'overhead':>9} {'min ms':>9} {'min ovh':>8} {'branch':>8} {'peak MB':>9} {'K/V MB':>7}")
    for row in rows:
        print(f"{row['config']:28} {row['ms_per_step']:9.2f} {row['steps_per_s']:8.2f} {row['overhead_pct']:+8.1f}% "
              f"{row['min_ms_per_step']:9.2f} {row['overhead_of_min_pct']:+7.1f}% {row['branch_pct_of_bare_min']:7.2f}% "
              f"{row['peak_mem_mb']:9.0f} {row['pack_held_kv_mb']:7.2f}")
    print("branch: time in the image-branch math per step (CPU only), as a share of the bare model's fastest step")
    print(f"adapter load {result['one_off']['adapter_load_s'] * 1000:.0f} ms; " + (f"encode one image {result['one_off']['encode_one_image_s']:.2f} s; " if "encode_one_image_s" in result["one_off"] else "") + f"raw: {out}")


if __name__ == "__main__":
    main()
