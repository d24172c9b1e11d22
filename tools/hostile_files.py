"""Malformed and hostile model files, and a harness that feeds them to the pack's loaders.

A public server's model folders hold whatever was downloaded, renamed or linked there. This
builds small valid files of every kind the pack reads (adapters in each layout, CLIP vision
files in both key layouts, saved image prompts) and damages them: truncation, bit flips,
overwritten and inserted bytes; rewritten safetensors headers (dtypes, shapes, offsets, huge
declared sizes, header lengths); rebuilt pickles (imports of code, nested pickles, deep nesting,
storages declaring more than they hold, compressed zip members and zip bombs); wrong dtypes and
shapes, NaN/inf values, non-tensor entries; links out of the folder to devices, pipes, folders.

Every case runs in a child process, one at a time, with an alarm against hangs; the parent
restarts the child if it dies, so a crash is recorded against its case. Per case the child
records the outcome and how far its peak resident memory rose (Linux: VmHWM, reset before
each case through /proc/self/clear_refs). A case passes when the loader raised IPAdapterError
naming the file (or loaded a file the damage left valid), nothing else escaped, and the peak
rose by at most the file's size plus ALLOWANCE_BYTES.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from ipadapter_core.encoders import SIGLIP

REPO = Path(__file__).resolve().parents[1]
ALLOWANCE_BYTES = 24 << 20  # interpreter, torch and allocator slack a load may touch beyond the file
CASE_TIMEOUT_S = 20
KINDS = ("adapter", "encoder", "image_prompt")

log = logging.getLogger(__name__)


# --- valid seed files -------------------------------------------------------------------------


def tiny_adapter(kind: str, generator: torch.Generator, cross: int = 16, clip: int = 8) -> dict[str, dict[str, torch.Tensor]]:
    """A small adapter in the official nested layout: base (4 tokens), plus (resampler) or full-face."""

    def r(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    if kind == "base":
        proj = {"proj.weight": r(4 * cross, clip), "proj.bias": r(4 * cross), "norm.weight": 1 + r(cross), "norm.bias": r(cross)}
    elif kind == "plus":
        dim, heads = 64, 1
        proj = {"latents": r(1, 2, dim), "proj_in.weight": r(dim, clip), "proj_in.bias": r(dim), "proj_out.weight": r(cross, dim),
                "proj_out.bias": r(cross), "norm_out.weight": 1 + r(cross), "norm_out.bias": r(cross)}
        proj.update({"layers.0.0.norm1.weight": 1 + r(dim), "layers.0.0.norm1.bias": r(dim), "layers.0.0.norm2.weight": 1 + r(dim),
                     "layers.0.0.norm2.bias": r(dim), "layers.0.0.to_q.weight": r(heads * 64, dim), "layers.0.0.to_kv.weight": r(2 * heads * 64, dim),
                     "layers.0.0.to_out.weight": r(dim, heads * 64), "layers.0.1.0.weight": 1 + r(dim), "layers.0.1.0.bias": r(dim),
                     "layers.0.1.1.weight": r(4 * dim, dim), "layers.0.1.3.weight": r(dim, 4 * dim)})
    else:
        proj = {"proj.0.weight": r(clip, clip), "proj.0.bias": r(clip), "proj.2.weight": r(cross, clip), "proj.2.bias": r(cross),
                "proj.3.weight": 1 + r(cross), "proj.3.bias": r(cross)}
    ip = {}
    for n in (1, 3):
        ip[f"{n}.to_k_ip.weight"] = r(32, cross)
        ip[f"{n}.to_v_ip.weight"] = r(32, cross)
    return {"image_proj": proj, "ip_adapter": ip}


def tiny_dit_or_faceid_adapter(kind: str, seed: int) -> dict:
    """The other official layouts at toy sizes: FaceID with its in-file LoRA (nested), XLabs' Flux
    (flat keys), InstantX's SD3.5 (nested), from the generators the reference tests use."""
    from tools import random_models

    if kind == "faceid":
        return random_models.faceid_state_dict("faceid", [(1, 32), (3, 32)], cross_dim=16, seed=seed, lora_rank=4)
    if kind == "flux":
        return random_models.flux_adapter_state_dict(blocks=2, hidden=32, width=16, clip_dim=12, tokens=2, seed=seed)
    return random_models.sd3_adapter_state_dict(blocks=2, hidden=32, head_dim=16, dim=64, heads=1, depth=1, queries=2, clip_dim=12,
                                                timestep_dim=8, seed=seed)


ADAPTER_KINDS = ("base", "plus", "full", "faceid", "flux", "sd3")


def adapter_state(kind: str, generator: torch.Generator) -> dict:
    """A valid adapter of `kind` (ADAPTER_KINDS): nested {"image_proj", "ip_adapter"}, or flat for Flux."""
    if kind in ("base", "plus", "full"):
        return tiny_adapter(kind, generator)
    return tiny_dit_or_faceid_adapter(kind, int(torch.randint(0, 2**31, (1,), generator=generator)))


def tiny_encoder(layout: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """What identifies an image encoder file: a CLIP projection and a few layers in transformers or
    open_clip keys, or SigLIP's patch bias, positions and final norm (no projection, no class token)."""
    if layout == "transformers":
        state = {f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(4) for i in range(3)}
        state["visual_projection.weight"] = torch.randn(12, 20, generator=generator)
    elif layout == "siglip":
        state = {f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(4) for i in range(3)}
        state["vision_model.embeddings.patch_embedding.bias"] = torch.randn(4, generator=generator)
        state["vision_model.embeddings.position_embedding.weight"] = torch.randn(SIGLIP.positions, 4, generator=generator)
        state["vision_model.post_layernorm.weight"] = torch.ones(SIGLIP.hidden_width)
    else:
        state = {f"visual.transformer.resblocks.{i}.attn.in_proj_weight": torch.ones(4) for i in range(3)}
        state["visual.proj"] = torch.randn(20, 12, generator=generator)
    return state


def flat(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{section}.{key}": value for section, tensors in state.items() for key, value in tensors.items()}


def torch_bytes(obj, **options) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)
    return buffer.getvalue()


def image_prompt_bytes(generator: torch.Generator, weights: bool) -> bytes:
    tensors = {"cond": torch.randn(2, 4, 16, generator=generator), "uncond": torch.randn(2, 4, 16, generator=generator)}
    if weights:
        tensors["reference_weights"] = torch.tensor([1.0, 0.5], dtype=torch.float64)
    metadata = {"format": "ipadapter-image-prompt", "version": "1", "adapter_identity": "0123456789abcdef", "adapter_description": "fuzz"}
    return save_safetensors(tensors, metadata=metadata)


def seeds(seed: int) -> dict[str, list[tuple[str, bytes]]]:
    """Valid files per loader kind: (suffix, bytes)."""
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for kind in ADAPTER_KINDS:
        state = adapter_state(kind, generator)
        adapters.append((".safetensors", save_safetensors(state if kind == "flux" else flat(state))))
        adapters.append((".bin", torch_bytes(state)))
    adapters.append((".bin", torch_bytes({k: {n: t.half() for n, t in v.items()} for k, v in tiny_adapter("base", generator).items()})))
    encoders = []
    for layout in ("transformers", "open_clip", "siglip"):
        state = tiny_encoder(layout, generator)
        encoders.append((".safetensors", save_safetensors(state)))
        encoders.append((".bin", torch_bytes(state)))
    encoders.append((".pt", torch_bytes({"state_dict": tiny_encoder("transformers", generator)})))
    prompts = [(".imageprompt", image_prompt_bytes(generator, weights)) for weights in (False, True)]
    return {"adapter": adapters, "encoder": encoders, "image_prompt": prompts}


# --- damage -------------------------------------------------------------------------------------


def truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 64)), len(data) - rng.randrange(1, min(len(data), 64) + 1)])
    return data[:cut]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        position = rng.randrange(min(len(out), 4096)) if rng.random() < 0.7 else rng.randrange(len(out))  # headers and pickles first
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    length = rng.choice([1, 4, 8, 64, 512])
    fill = rng.choice([b"\x00", b"\xff", None])
    chunk = bytes(rng.randrange(256) for _ in range(length)) if fill is None else fill * length
    out[start : start + length] = chunk[: max(0, len(out) - start)]
    return bytes(out)


def splice(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:start] + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100]))) + data[start:]
    return data[:start] + data[start + rng.choice([1, 7, 100]) :]


def safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def safetensors_from(header: dict | bytes, payload: bytes, length: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + payload


HUGE = [2**31, 2**32 + 3, 2**40, 2**62, 2**63 - 1]


def rewrite_safetensors_header(data: bytes, rng: random.Random) -> bytes:
    """Change one thing the header claims: dtype, shape, offsets, metadata, or its own length."""
    header, payload = safetensors_parts(data)
    names = [name for name in header if name != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    choice = rng.randrange(12)
    if choice == 0:
        entry["dtype"] = rng.choice(["I32", "I64", "BOOL", "U8", "F64", "C64", "F8_E4M3", "X9", "", 5])
    elif choice == 1:
        entry["shape"] = rng.choice([[], [0], list(reversed(entry["shape"])), entry["shape"] + [1], [rng.choice(HUGE)], [-1, 4], ["a"], None])
    elif choice == 2:
        entry["shape"] = [rng.choice(HUGE), rng.choice(HUGE)]
        entry["data_offsets"] = [0, rng.choice(HUGE)]
    elif choice == 3:
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[end, begin], [begin, end + rng.choice([1, 4096, 2**40])], [0, 0], [-8, end], [begin], "x"])
    elif choice == 4:
        header["__metadata__"] = rng.choice([{"format": 1}, {"format": "x" * 100000}, [1, 2], "meta", {"version": "9" * 5000}, {"version": "²"}])
    elif choice == 5:
        return safetensors_from(header, payload, length=rng.choice(HUGE + [0, 1, len(data)]))
    elif choice == 6:
        return safetensors_from(b"[" * 100000 + b"]" * 100000, payload)
    elif choice == 7:
        return safetensors_from(json.dumps(header).encode()[: rng.randrange(1, 60)], payload)
    elif choice == 8:
        del header[name]
    elif choice == 9:
        header[f"{name}.extra"] = dict(entry)  # a second tensor over the same bytes
    elif choice == 10:
        header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(20000)}
    else:
        numel = math.prod(entry["shape"]) if entry.get("shape") else 0
        begin = entry["data_offsets"][0]
        values = torch.full((max(numel, 1),), rng.choice([float("nan"), float("inf"), -float("inf")]))
        dtype = {"F32": torch.float32, "F16": torch.float16, "F64": torch.float64, "BF16": torch.bfloat16}.get(entry.get("dtype"), torch.float32)
        raw = values.to(dtype).numpy().tobytes() if dtype != torch.bfloat16 else values.to(dtype).view(torch.int16).numpy().tobytes()
        payload = payload[:begin] + raw[: max(0, entry["data_offsets"][1] - begin)] + payload[begin + len(raw) :]
    return safetensors_from(header, payload)


class Payload:
    """Pickles to a call of `target(*args)`: what a hostile pickle does."""

    def __init__(self, target, args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def hostile_objects(rng: random.Random, marker: str):
    options = [
        Payload(os.system, (f"touch {marker}",)),
        Payload(eval, (f"open({marker!r}, 'w')",)),
        Payload(exec, ("import os",)),
        Payload(getattr, (Payload(__import__, ("os",)), "system")),
        Payload(pickle.loads, (pickle.dumps({"inner": Payload(os.system, (f"touch {marker}",))}),)),  # a nested pickle
        Payload(torch.load, (marker,)),
        Payload(__import__, ("subprocess",)),
        {"bytes holding a pickle": pickle.dumps(Payload(os.system, ("true",)))},
        Payload(torch.nn.Linear, (2, 2)),
        argparse_namespace(),
    ]
    return rng.choice(options)


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-4)


def nested(depth: int):
    value: object = torch.zeros(1)
    for _ in range(depth):
        value = {"x": value}
    return value


def structured_pickle(kind: str, rng: random.Random, generator: torch.Generator, marker: str) -> bytes:
    """torch.save files with the wrong content: code, wrong dtypes/shapes, NaN, non-tensors, odd formats."""
    if kind == "adapter":
        base = adapter_state(rng.choice(ADAPTER_KINDS), generator)
    else:
        base = {"state": tiny_encoder(rng.choice(["transformers", "siglip"]), generator)}
    flat_layout = not all(isinstance(value, dict) for value in base.values())  # XLabs' Flux files
    section = rng.choice(list(base))
    tensors = base if flat_layout else base[section]  # the dict of tensors to damage
    key = rng.choice(list(tensors))
    choice = rng.randrange(11)
    if choice == 0:
        tensors[key] = hostile_objects(rng, marker)
    elif choice == 1:
        tensors[key] = tensors[key].to(rng.choice([torch.int32, torch.int64, torch.bool, torch.uint8, torch.complex64, torch.float64, torch.bfloat16]))
    elif choice == 2:
        tensor = tensors[key]
        tensors[key] = rng.choice([tensor.t() if tensor.ndim == 2 else tensor[None], tensor.reshape(-1), tensor[..., :0], torch.zeros(0), tensor[None, None]])
    elif choice == 3:
        tensors[key] = tensors[key].clone().fill_(rng.choice([float("nan"), float("inf")]))
    elif choice == 4:
        tensors[key] = rng.choice([1, "weights", [torch.zeros(1)], None, 2**100, {"a": torch.zeros(1)}])
    elif choice == 5:
        base[section] = nested(rng.choice([10, 100, 300]))
    elif choice == 6:
        return torch_bytes(base, _use_new_zipfile_serialization=False)
    elif choice == 7:
        return pickle.dumps(base)
    elif choice == 8:
        base = {f"k{i}": torch.zeros(1) for i in range(rng.choice([0, 1, 3000]))}
    elif choice == 9:
        tensors[rng.choice([5, ("a",), 3.5])] = torch.zeros(1)
    else:
        tensors[key] = tensors[key].expand(1000, *tensors[key].shape)  # a view sharing one storage
    return torch_bytes(base)


def rebuild_zip(data: bytes, rng: random.Random) -> bytes:
    """A torch zip rebuilt member by member with one lie: compression, a bomb, a swapped or edited pickle, a lost record."""
    source = zipfile.ZipFile(io.BytesIO(data))
    members = {info.filename: source.read(info.filename) for info in source.infolist()}
    pickle_name = next(name for name in members if name.endswith("/data.pkl"))
    records = [name for name in members if "/data/" in name]
    choice = rng.randrange(9)
    compression = {}
    if choice == 0:
        compression = {name: zipfile.ZIP_DEFLATED for name in members}
    elif choice == 1:
        members[rng.choice(records)] = b"\x00" * (64 << 20)  # a zip bomb: 64 MB of zeros in ~64 kB
        compression = {name: zipfile.ZIP_DEFLATED for name in members}
    elif choice == 2:
        del members[rng.choice(records)]
    elif choice == 3:
        members[rng.choice(records)] = members[rng.choice(records)][: rng.randrange(4)]
    elif choice == 4:
        stream = bytearray(members[pickle_name])
        for _ in range(rng.choice([1, 3])):  # numbers in the pickle: sizes, strides, offsets, numels
            position = rng.randrange(len(stream))
            stream[position] = rng.choice([0x00, 0x7F, 0xFF, 0x80])
        members[pickle_name] = bytes(stream)
    elif choice == 5:
        members[pickle_name] = enlarged_numel(members[pickle_name], rng)
    elif choice == 6:
        members.update({f"{pickle_name[:-8]}extra/{i}": b"" for i in range(rng.choice([10, 70000]))})
    elif choice == 7:
        members[pickle_name] = pickle.dumps(Payload(os.system, ("true",)), protocol=2)
    else:  # lists nested 100000 deep, written opcode by opcode (no pickler can recurse that far)
        depth = 100000
        members[pickle_name] = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression.get(name, zipfile.ZIP_STORED))
    return out.getvalue()


def enlarged_numel(stream: bytes, rng: random.Random) -> bytes:
    """Raise the numel a storage declares (the BININT before a BINPERSID's TUPLE) to a huge value."""
    import pickletools

    ops = list(pickletools.genops(stream))
    targets = [i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID"]
    if not targets:
        return stream
    index = rng.choice(targets)
    for op, arg, position in reversed(ops[:index]):
        if op.name in ("BININT", "BININT1", "BININT2", "LONG1"):
            value = rng.choice(HUGE)
            encoded = b"\x8a" + bytes([8]) + value.to_bytes(8, "little", signed=True)  # LONG1 of 8 bytes
            length = {"BININT": 5, "BININT1": 2, "BININT2": 3, "LONG1": 2 + arg.bit_length() // 8 + 1}[op.name]
            return stream[:position] + encoded + stream[position + length :]
    return stream


def damaged(kind: str, suffix: str, data: bytes, rng: random.Random, generator: torch.Generator, marker: str) -> tuple[str, bytes]:
    """(description, bytes) of one damaged variant of a valid file."""
    generic = [("truncated", truncate), ("bit flips", flip_bits), ("overwritten bytes", overwrite), ("inserted or deleted bytes", splice)]
    structured = []
    if suffix in (".safetensors", ".imageprompt"):
        structured.append(("safetensors header", rewrite_safetensors_header))
    elif data.startswith(b"PK"):
        structured.append(("zip structure", rebuild_zip))
    if suffix != ".imageprompt" and kind != "image_prompt":
        structured.append(("pickle content", lambda d, r: structured_pickle(kind, r, generator, marker)))
    name, mutate = rng.choice(generic + structured * 2)
    return name, mutate(data, rng)


# --- links out of the model folder ----------------------------------------------------------------


def link_targets(outside: Path) -> list[tuple[str, Path | None]]:
    """(description, target) of links a folder may hold; None: a link to itself."""
    junk = outside / "junk.bin"
    junk.write_bytes(b"\x80\x02}q\x00." * 10)
    directory = outside / "a_folder"
    directory.mkdir(exist_ok=True)
    fifo = outside / "a_pipe"
    if not fifo.exists():
        os.mkfifo(fifo)
    targets = [("link to /dev/zero", Path("/dev/zero")), ("link to /dev/urandom", Path("/dev/urandom")),
               ("link to /proc/self/environ", Path("/proc/self/environ")), ("link to a folder", directory),
               ("link to a pipe", fifo), ("dangling link", outside / "missing.bin"), ("link loop", None),
               ("link to a junk file outside", junk), ("link to /etc/hostname", Path("/etc/hostname"))]
    return targets


# --- cases ----------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    kind: str
    name: str  # file name in the model folder
    mutation: str


@dataclass
class Outcome:
    index: int
    kind: str
    mutation: str
    status: str  # "refused", "loaded", "failed"
    detail: str
    file_bytes: int
    peak_rise_bytes: int
    seconds: float


def write_cases(folder: Path, outside: Path, count: int, seed: int) -> list[Case]:
    """Write `count` damaged files (and the links) into folder; deterministic for a seed."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    valid = seeds(seed)
    cases = []
    links = link_targets(outside)
    marker = str(outside / "pwned")
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        if index % 97 == 0:  # links, for each loader kind in turn
            description, target = links[(index // 97) % len(links)]
            suffix = {"adapter": ".safetensors", "encoder": ".bin", "image_prompt": ".imageprompt"}[kind]
            name = f"case{index:06d}{suffix}"
            path = folder / name
            path.symlink_to(path if target is None else target)
            cases.append(Case(index, kind, name, description))
            continue
        suffix, data = rng.choice(valid[kind])
        mutation, data = damaged(kind, suffix, data, rng, generator, marker)
        if rng.random() < 0.1:
            suffix = suffix.upper()
        name = f"case{index:06d}{suffix}"
        (folder / name).write_bytes(data)
        cases.append(Case(index, kind, name, mutation))
    return cases


# --- running them ---------------------------------------------------------------------------------


def loaders():
    """The pack's loaders, each taking a path: what the nodes call for these files."""
    from ipadapter_core.adapter import IPAdapterModel
    from ipadapter_core.encoder_files import find_encoder
    from ipadapter_core.encoders import IMAGE_EMBEDS, PENULTIMATE
    from ipadapter_core.errors import IPAdapterError
    from ipadapter_core.prompt_file import load_image_prompt
    from ipadapter_core.variants import SD3, AdapterSpec

    clip = AdapterSpec(projection="linear", encoder_output=IMAGE_EMBEDS, encoder_width=12, cross_attention_dim=16, num_tokens=4, layer_dims=((1, 32),))
    siglip = AdapterSpec(projection="time_resampler", encoder_output=PENULTIMATE, encoder_width=SIGLIP.hidden_width, cross_attention_dim=16,
                         num_tokens=2, layer_dims=((0, 32),), architecture=SD3)

    def find_either(path):
        """The file for a CLIP adapter, else for the SD3.5 adapter (SigLIP); the CLIP answer's error if neither fits."""
        try:
            return find_encoder(clip, [path])
        except IPAdapterError as error:
            try:
                return find_encoder(siglip, [path])
            except IPAdapterError:
                raise error from None

    return {
        "adapter": IPAdapterModel.load,
        "encoder": find_either,
        "image_prompt": load_image_prompt,
    }


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def current_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Hang(Exception):
    pass


def alarm(signum, frame):
    raise Hang(f"no answer within {CASE_TIMEOUT_S} s")


def describe_exception(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def allocation_failure(error: BaseException) -> bool:
    """An exception anywhere in the chain that says memory ran out (torch wraps it in RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError) or "can't allocate" in str(error) or "out of memory" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def run_one(case: Case, folder: Path, load, error_type) -> Outcome:
    path = folder / case.name
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    reset_peak()
    before = current_rss()
    started = time.perf_counter()
    signal.alarm(CASE_TIMEOUT_S)
    try:
        load(path)
        status, detail = "loaded", ""
    except error_type as error:
        if allocation_failure(error):
            status, detail = "failed", f"allocation failure behind our error: {error}"
        elif case.name not in str(error):
            status, detail = "failed", f"message does not name the file: {error}"
        else:
            status, detail = "refused", str(error)
    except Hang as error:
        status, detail = "failed", f"hang: {error}"
    except BaseException as error:  # noqa: BLE001  anything else escaping a loader is what this harness looks for
        status, detail = "failed", f"{describe_exception(error)}\n{traceback.format_exc(limit=6)}"
    finally:
        signal.alarm(0)
    seconds = time.perf_counter() - started
    rise = max(0, peak_rss() - before)
    if status != "failed" and case.index >= 0 and rise > size + ALLOWANCE_BYTES:  # warm-up loads pay first-use costs
        status, detail = "failed", f"peak memory rose {rise >> 20} MB for a {size} byte file; {detail}"
    return Outcome(case.index, case.kind, case.mutation, status, detail[:600], size, rise, seconds)


def child(cases: list[Case], folder: str, start: int, results_path: str) -> None:
    """Run cases[start:] appending one JSON line per outcome; a crash ends the process mid-way."""
    sys.path.insert(0, str(REPO))
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    from ipadapter_core.errors import IPAdapterError

    signal.signal(signal.SIGALRM, alarm)
    table = loaders()
    directory = Path(folder)
    with open(results_path, "a") as results:
        for case in cases[start:]:
            results.write(json.dumps({"started": case.index}) + "\n")
            results.flush()
            outcome = run_one(case, directory, table[case.kind], IPAdapterError)
            results.write(json.dumps(asdict(outcome)) + "\n")
            results.flush()


def warm_up(folder: Path) -> list[Case]:
    """Valid files of every kind, loaded first so first-use allocations (imports, pools) are not charged to a case."""
    cases = []
    for kind, files in seeds(12345).items():
        for suffix, data in files:
            name = f"valid{len(cases):03d}{suffix}"
            (folder / name).write_bytes(data)
            cases.append(Case(-1 - len(cases), kind, name, "valid"))
    return cases


def run(count: int, seed: int, workdir: Path | None = None) -> dict:
    """Write and run `count` cases; a summary dict with every failure."""
    with tempfile.TemporaryDirectory(prefix="hostile-files-") as temporary:
        root = Path(workdir or temporary)
        folder, outside = root / "models", root / "outside"
        folder.mkdir(parents=True, exist_ok=True)
        outside.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        warm = warm_up(folder)
        cases = write_cases(folder, outside, count, seed)
        written = time.perf_counter() - started
        results_path = root / "results.jsonl"
        outcomes: dict[int, dict] = {}
        crashes = []
        position = 0
        context = multiprocessing.get_context("spawn")
        all_cases = warm + cases
        while position < len(all_cases):
            process = context.Process(target=child, args=(all_cases, str(folder), position, str(results_path)))
            process.start()
            process.join()
            lines = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
            done = {line["index"]: line for line in lines if "index" in line}
            outcomes.update(done)
            started_cases = [line["started"] for line in lines if "started" in line]
            if process.exitcode == 0:
                break
            crashed = started_cases[-1] if started_cases else None
            crashes.append({"index": crashed, "exit_code": process.exitcode})
            crashed_position = next((i for i, c in enumerate(all_cases) if c.index == crashed), position)
            outcomes[crashed] = asdict(Outcome(crashed, all_cases[crashed_position].kind, all_cases[crashed_position].mutation, "failed",
                                               f"process died (exit code {process.exitcode})", 0, 0, 0.0))
            position = crashed_position + 1
        marker_hit = (outside / "pwned").exists()
    fuzzed = [outcomes[c.index] for c in cases if c.index in outcomes]
    warm_failures = [outcomes[c.index] for c in warm if c.index in outcomes and outcomes[c.index]["status"] != "loaded"]
    statuses = Counter(o["status"] for o in fuzzed)
    by_mutation = Counter((o["kind"], o["mutation"], o["status"]) for o in fuzzed)
    families = Counter(message_family(o["detail"]) for o in fuzzed if o["status"] == "refused")
    failures = [o for o in fuzzed if o["status"] == "failed"] + warm_failures
    rises = [o["peak_rise_bytes"] - o["file_bytes"] for o in fuzzed]
    return {
        "count": len(cases),
        "seed": seed,
        "ran": len(fuzzed),
        "statuses": dict(statuses),
        "by_kind_mutation_status": {" | ".join(key): value for key, value in sorted(by_mutation.items())},
        "message_families": dict(families.most_common()),
        "failures": failures[:50],
        "failure_count": len(failures),
        "crashes": crashes,
        "code_ran": marker_hit,
        "max_peak_rise_over_file_mb": round(max(rises, default=0) / 2**20, 2),
        "largest_rises": [{"index": o["index"], "kind": o["kind"], "mutation": o["mutation"], "rise_over_file_mb": round((o["peak_rise_bytes"] - o["file_bytes"]) / 2**20, 2)}
                          for o in sorted(fuzzed, key=lambda o: o["file_bytes"] - o["peak_rise_bytes"])[:5]],
        "max_case_seconds": round(max((o["seconds"] for o in fuzzed), default=0.0), 3),
        "setup_seconds": round(written, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "allowance_mb": ALLOWANCE_BYTES >> 20,
    }


def message_family(message: str) -> str:
    """The kind of answer, without the file name: the words after it up to the first detail."""
    text = message.split(": ", 1)[-1] if message.startswith("case") else message
    for marker in (" could not be read", " is a pickle that needs code", " is not a regular file", " was not found",
                   " is a plain pickle", " is a file in the format", " is not an image prompt", " has tensors", " holds tokens",
                   " reference weights", " contains NaN", " holds ", " is not a named tensor", "No CLIP vision model"):
        if marker in message:
            return marker.strip()
    return " ".join(text.split()[:6])
