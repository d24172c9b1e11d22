"""What the image branch adds to one sampling step, counted: FLOPs and dispatched operators.

Wall-clock time on a shared CPU cannot resolve the image branch, and GPUs are rare here. Two
counts are deterministic and predict GPU cost: FLOPs (torch's FlopCounterMode) and dispatched
non-view operators (roughly one kernel launch each, which is what a branch of 4-16 tokens costs
on a GPU). Both need only shapes, so the full-size UNets run on fake tensors: no arithmetic and
about 1 GB of memory (on a loaded 2-core CPU, about a minute per configuration for SD1.5 at
512x512 and two to five for SDXL at 1024x1024).

One whole CFG step through ComfyUI's real sampler (comfy.sample.sample, euler, 2 steps; the
second step is counted, after the first has built the per-run caches). Every diffusion-model
call of the step is counted, however the host batches cond and uncond. Per configuration:
ops and FLOPs over the bare model, and the branch FLOPs over the minimum (one softmax(QKᵀ)V per
adapter and head: 4·B·L·C·T per patched layer call and adapter of T tokens).

How the host runs without weights (each piece checked against ComfyUI 0.3.75):
- The UNet is built on the meta device and given uninitialised CPU storage (`to_empty`): the
  host's model management sees an ordinary CPU model (it moves modules with `.to()`, which fake
  or meta parameters do not survive), and untouched pages are never resident.
- A DIFFUSION_MODEL wrapper (the host's own extension point) runs each UNet forward under
  FakeTensorMode with the counters on, then hands the sampler real zeros of the output's shape,
  so the sampler's own Python logic (float(sigma) and the like) runs on real tensors.
- Adapters are built the same way (meta, then `to_empty`); image tokens are random.
- ComfyUI picks its attention from the device; the GPU choice (PyTorch SDPA) is forced with its
  own `--use-pytorch-cross-attention` flag, and free memory reads as 64 GiB so the host batches
  cond and uncond into one call as on a large GPU, whatever else this machine is running.
- Operators are counted after decomposition into aten kernels (linear -> addmm, SDPA -> the
  backend's kernel); views, `_unsafe_view` and `prim` metadata queries launch nothing and are
  not counted. torch has no FLOP formula for the CPU flash-attention kernel; the CUDA kernels'
  formula is registered for it.

    python -m benchmarks.count_cost --model sd15          # 512x512
    python -m benchmarks.count_cost --model sdxl          # 1024x1024
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    bmm_flop,
    register_flop_formula,
    sdpa_flop_count,
)

from tools import random_models
from tools.comfy_host import (
    NodeRunner,
    comfyui_path,
    import_comfy,
    import_pack,
    pack_nodes,
)

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"sd15": 512, "sdxl": 1024}
TEXT_WIDTH = {"sd15": 768, "sdxl": 2048}
FREE_MEMORY = 64 << 30
MASK_AND_GATE = "mask+gate"

# name -> (adapter kinds in chain order, options). Mixed chains alternate kinds where they can.
CONFIGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bare": ((), ()),
    **{f"base x{n}": (("base",) * n, ()) for n in (1, 2, 4, 8)},
    **{f"plus x{n}": (("plus",) * n, ()) for n in (1, 2, 4, 8)},
    "base+plus": (("base", "plus"), ()),
    "2 base+2 plus": (("base", "plus") * 2, ()),
    "4 base+4 plus": (("base", "plus") * 4, ()),
    "7 base+1 plus": (("base",) * 7 + ("plus",), ()),
    "1 base+7 plus": (("base",) + ("plus",) * 7, ()),
    "base x1 mask+gate": (("base",), (MASK_AND_GATE,)),
    "2 base+2 plus mask+gate": (("base", "plus") * 2, (MASK_AND_GATE,)),
}


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten.baddbmm_)
def _in_place_baddbmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """torch registers baddbmm only; its in-place form does the same product."""
    return bmm_flop(a_shape, b_shape)


def launches(func, args, kwargs) -> int:
    """Kernels one dispatched operator launches. Out-of-place baddbmm with beta != 0 launches two:
    ATen's baddbmm first copies its input into the new output (in the operator's meta function,
    below this counter), then the batched GEMM accumulates onto it. In place (baddbmm_) the input
    is the output and there is no copy; addmm's bias vector is fused into the GEMM on a GPU."""
    if func is torch.ops.aten.baddbmm.default and kwargs.get("beta", 1) != 0:  # beta is keyword-only
        return 2
    return 1


class OperatorCounter(TorchDispatchMode):
    """Counts the aten kernels an eager run would launch: composite operators are decomposed
    first (counting what they run), views and metadata queries are not counted, and an operator
    that launches more than one kernel counts for each (see `launches`)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_name: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "prim":
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
            if not func.is_view and func is not torch.ops.aten._unsafe_view.default:
                count = launches(func, args, kwargs)
                self.total += count
                self.by_name[str(func)] += count
        return func(*args, **kwargs)


def import_host():
    """ComfyUI with the attention it would pick on a GPU (SDPA), on the CPU, fp32."""
    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.use_pytorch_cross_attention = True  # must precede comfy.model_management
    comfy = import_comfy(force_fp32=True, cpu=True)
    import_pack()
    return comfy


def build_unet(name: str):
    """A ModelPatcher of the real architecture with uninitialised (never touched) weights."""
    import comfy.model_detection
    import comfy.model_patcher
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        layout = UNet2DConditionModel(**random_models.DIFFUSERS_UNET_CONFIGS[name]).state_dict()
    config = comfy.model_detection.model_config_from_diffusers_unet(layout)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("meta"))
    model.diffusion_model.to_empty(device="cpu")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def build_adapter(kind: str, layers, text_width: int, index: int):
    """An adapter of the official layout (uninitialised weights) and a random image prompt for it."""
    from comfyui_ipadapter.ipadapter_core.adapter import IPAdapterModel
    from comfyui_ipadapter.ipadapter_core.checkpoint import AdapterWeights
    from comfyui_ipadapter.ipadapter_core.image_prompt import ImagePrompt
    from comfyui_ipadapter.nodes.load_ipadapter import wrap_adapter

    state = random_models.adapter_state_dict(kind, [(layer.processor_index, layer.inner_dim) for layer in layers], text_width, device="meta")
    model = IPAdapterModel.from_weights(AdapterWeights(state["image_proj"], state["ip_adapter"]), identity=f"{kind}-{index}")
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(index)
    tokens = model.spec.num_tokens
    cond, uncond = (torch.randn(1, tokens, text_width, generator=generator) for _ in range(2))
    return wrap_adapter(model, f"{kind}-{index}"), ImagePrompt(cond, uncond, model.identity, model.spec.description)


def apply_config(unet, kinds: tuple[str, ...], options: tuple[str, ...], adapters: dict, side: int):
    apply = NodeRunner(pack_nodes()["ExactApplyIPAdapter"])
    model = unet
    seen = collections.Counter()
    for kind in kinds:
        adapter, prompt = adapters[(kind, seen[kind])]
        seen[kind] += 1
        extra = {}
        start, end = 0.0, 1.0
        if MASK_AND_GATE in options:
            extra["attn_mask"] = torch.rand(1, side, side, generator=torch.Generator().manual_seed(seen[kind]))
            start, end = 0.1, 0.9
        model = apply(model, adapter, prompt, 1.0, start, end, **extra)[0]
    return model


@contextmanager
def fixed_free_memory():
    """The host batches cond and uncond when memory allows; make that decision independent of this machine."""
    import comfy.model_management as mm

    original = mm.get_free_memory
    mm.get_free_memory = lambda dev=None, torch_free_too=False: (FREE_MEMORY, FREE_MEMORY) if torch_free_too else FREE_MEMORY
    try:
        yield
    finally:
        mm.get_free_memory = original


@contextmanager
def minimal_flops_recorder(record: list):
    """Per patched-layer call: 4·B·L·C·T_a summed over its adapters (two products, 2 FLOPs per multiply-add)."""
    from comfyui_ipadapter.nodes.attention_patch import ImagePromptAttention

    original = ImagePromptAttention.__call__

    def recording(self, q, k, v, extra_options):
        record.append(sum(4 * q.numel() * branch.cond.shape[1] for branch in self.branches))
        return original(self, q, k, v, extra_options)

    ImagePromptAttention.__call__ = recording
    try:
        yield
    finally:
        ImagePromptAttention.__call__ = original


def count_step(comfy, model, name: str, side: int) -> dict:
    """Ops and FLOPs of the second of two euler steps, over every diffusion-model call it makes."""
    from comfy.patcher_extension import WrappersMP

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    calls, minimal = [], []

    def counted_forward(executor, x, *args, **kwargs):
        ops, flops = OperatorCounter(), FlopCounterMode(display=False)
        first_minimal = len(minimal)
        with fake, ops, flops:
            out = executor(x, *args, **kwargs)
        calls.append(dict(batch=x.shape[0], ops=ops.total, flops=flops.get_total_flops(), by_name=dict(ops.by_name),
                          minimal_branch_flops=sum(minimal[first_minimal:])))
        return torch.zeros(out.shape, dtype=out.dtype)

    model = model.clone()
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "count_cost", counted_forward)
    width = TEXT_WIDTH[name]

    def conditioning(seed: int):
        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, 1280, generator=g)} if name == "sdxl" else {}
        return [[torch.randn(1, 77, width, generator=g), extra]]

    noise = torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(0))
    step_ends = []
    with torch.inference_mode(), fixed_free_memory(), minimal_flops_recorder(minimal):
        comfy.sample.sample(model, noise, 2, 7.5, "euler", "normal", conditioning(1), conditioning(2), torch.zeros_like(noise),
                            seed=0, callback=lambda *_: step_ends.append(len(calls)), disable_pbar=True)
    step = calls[step_ends[0] : step_ends[1]]
    by_name = collections.Counter()
    for call in step:
        by_name.update(call["by_name"])
    return dict(model_calls=len(step), batch_per_call=[c["batch"] for c in step], ops=sum(c["ops"] for c in step),
                flops=sum(c["flops"] for c in step), minimal_branch_flops=sum(c["minimal_branch_flops"] for c in step),
                ops_by_name=dict(sorted(by_name.items())))


def git_state() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (uncommitted changes)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(SIZES), default="sd15")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from: " + ", ".join(CONFIGS))
    parser.add_argument("--label", default="", help="stored in the result, e.g. 'before' / 'after'")
    args = parser.parse_args()
    names = ["bare"] + [n for n in args.configs.split(",") if n and n != "bare"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs: {unknown}")

    code = git_state()  # what is counted: the code as the run starts, whatever is committed meanwhile
    comfy = import_host()
    from comfyui_ipadapter.ipadapter_core.layer_map import cross_attention_layers

    side = SIZES[args.model]
    unet = build_unet(args.model)
    layers = cross_attention_layers(unet.get_model_object("diffusion_model"))
    needed = collections.Counter()
    for name in names:
        needed |= collections.Counter(CONFIGS[name][0])
    adapters = {(kind, i): build_adapter(kind, layers, TEXT_WIDTH[args.model], 10 * (kind == "plus") + i) for kind, n in needed.items() for i in range(n)}

    rows = []
    for name in names:
        start = time.perf_counter()
        kinds, options = CONFIGS[name]
        counts = count_step(comfy, apply_config(unet, kinds, options, adapters, side), args.model, side)
        rows.append(dict(config=name, adapters=list(kinds), options=list(options), seconds=time.perf_counter() - start, **counts))
    bare = rows[0]
    for row in rows:
        branch_flops = row["flops"] - bare["flops"]
        row["ops_over_bare"] = row["ops"] - bare["ops"]
        row["ops_over_bare_pct"] = 100 * row["ops_over_bare"] / bare["ops"]
        row["flops_over_bare_pct"] = 100 * branch_flops / bare["flops"]
        row["branch_flops_over_minimal"] = branch_flops / row["minimal_branch_flops"] if row["minimal_branch_flops"] else None

    result = dict(kind="count", label=args.label, code=code, model=args.model, image_size=side, dtype="fp32",
                  counted="second of two euler steps, CFG 7.5, every diffusion-model call", host="ComfyUI 0.3.75, SDPA attention",
                  torch=torch.__version__, patched_layers=len(layers), rows=rows)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"count-{args.model}-{side}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.model} {side}x{side}, one CFG step: bare {bare['ops']} ops, {bare['flops'] / 1e9:.1f} GFLOP in {bare['model_calls']} call(s); code {result['code']}")
    print(f"{'config':28} {'FLOPs over bare':>16} {'ops over bare':>14} {'ops':>6} {'branch/minimal':>15}")
    for row in rows[1:]:
        ratio = row["branch_flops_over_minimal"]
        print(f"{row['config']:28} {row['flops_over_bare_pct']:+15.3f}% {row['ops_over_bare_pct']:+13.1f}% {row['ops_over_bare']:6d} {ratio:14.2f}x")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
