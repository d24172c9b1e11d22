"""API-format prompts for long sessions on a real server: good ones mixing adapters, weights, masks
and chains, bad ones that must fail with their message, and a long one to interrupt.

Built directly in the API format (the conversion from UI workflows is tested elsewhere) on the
embedded default models, at 64x64 and a few steps so a hundred of them take minutes on a CPU.
Every good prompt saves one image under a prefix naming it, so its output can be found.
"""

from __future__ import annotations

from typing import Any

from tools.embedded_models import CHECKPOINT, CLIP_VISION, IPADAPTER, IPADAPTER_PLUS, IPADAPTER_PLUS_SDXL

REFERENCES = ("reference.png", "reference_2.png")  # from workflows/, copied into the server's input folder
MASK = "regions_mask.png"
SIZE = 64
STEPS = 3


def file_name(relative: str) -> str:
    return relative.split("/", 1)[1]


def base_graph(seed: int, prefix: str, steps: int = STEPS, batch: int = 1) -> dict[str, dict[str, Any]]:
    """Checkpoint, text, CLIP vision, references and sampler; "model" is filled in by the adapter part."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": file_name(CHECKPOINT)}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a landscape", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": file_name(CLIP_VISION)}},
        "ref1": {"class_type": "LoadImage", "inputs": {"image": REFERENCES[0]}},
        "ref2": {"class_type": "LoadImage", "inputs": {"image": REFERENCES[1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}},
        "sampler": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
                                                         "denoise": 1.0, "model": None, "positive": ["pos", 0], "negative": ["neg", 0],
                                                         "latent_image": ["latent", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }


def adapter(graph: dict, key: str, file: str, reference: str, model: list, weight: float, **apply_options) -> list:
    """Load + Encode + Apply; returns the patched model's link."""
    graph[f"{key}_load"] = {"class_type": "ExactLoadIPAdapter", "inputs": {"ipadapter_file": file}}
    graph[f"{key}_encode"] = {"class_type": "ExactEncodeImagePrompt", "inputs": {"ipadapter": [f"{key}_load", 0], "clip_vision": ["vision", 0],
                                                                                  "image": [reference, 0]}}
    inputs = {"model": model, "ipadapter": [f"{key}_load", 0], "image_prompt": [f"{key}_encode", 0], "weight": weight,
              "start_at": apply_options.pop("start_at", 0.0), "end_at": apply_options.pop("end_at", 1.0), **apply_options}
    graph[f"{key}_apply"] = {"class_type": "ExactApplyIPAdapter", "inputs": inputs}
    return [f"{key}_apply", 0]


def good(kind: str, seed: int) -> dict:
    """A prompt that must produce an image: kind picks adapters, weights, masks and chains."""
    graph = base_graph(seed, f"session_{kind}_{seed}")
    base = file_name(IPADAPTER)
    plus = file_name(IPADAPTER_PLUS)
    model = ["ckpt", 0]
    if kind == "base":
        model = adapter(graph, "a", base, "ref1", model, 0.8)
    elif kind == "plus_masked":
        graph["mask"] = {"class_type": "LoadImageMask", "inputs": {"image": MASK, "channel": "red"}}
        model = adapter(graph, "a", plus, "ref2", model, 1.2, attn_mask=["mask", 0])
    elif kind == "chain":
        graph["mask"] = {"class_type": "LoadImageMask", "inputs": {"image": MASK, "channel": "red"}}
        graph["inverted"] = {"class_type": "InvertMask", "inputs": {"mask": ["mask", 0]}}
        model = adapter(graph, "a", base, "ref1", model, 0.6, end_at=0.6, attn_mask=["mask", 0])
        model = adapter(graph, "b", plus, "ref2", model, 0.9, weight_type="ease in", attn_mask=["inverted", 0])
    elif kind == "weighted":
        model = adapter(graph, "a", base, "ref2", model, -0.5, embeds_scaling="K+V", start_at=0.2)
    else:
        raise ValueError(kind)
    graph["sampler"]["inputs"]["model"] = model
    return graph


GOOD_KINDS = ("base", "plus_masked", "chain", "weighted")


def bad(kind: str, seed: int) -> tuple[dict, str]:
    """(prompt, text its error must contain): each fails in its own way, at validation or before sampling."""
    graph = base_graph(seed, f"session_bad_{kind}_{seed}")
    model = ["ckpt", 0]
    if kind == "wrong_adapter":
        model = adapter(graph, "a", file_name(IPADAPTER_PLUS_SDXL), "ref1", model, 1.0)
        expected = "Wrong IP-Adapter for the model"
    elif kind == "missing_file":
        model = adapter(graph, "a", "missing-adapter.safetensors", "ref1", model, 1.0)
        expected = "'missing-adapter.safetensors' is not in models/ipadapter"
    elif kind == "reversed_range":
        model = adapter(graph, "a", file_name(IPADAPTER), "ref1", model, 1.0, start_at=0.8, end_at=0.2)
        expected = "start_at (0.8) is after end_at (0.2)"
    elif kind == "mask_count":
        graph["mask"] = {"class_type": "LoadImageMask", "inputs": {"image": MASK, "channel": "red"}}
        graph["masks"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["mask_image", 0], "amount": 3}}
        graph["mask_image"] = {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}}
        graph["three"] = {"class_type": "ImageToMask", "inputs": {"image": ["masks", 0], "channel": "red"}}
        model = adapter(graph, "a", file_name(IPADAPTER), "ref2", model, 1.0, attn_mask=["three", 0])
        expected = "attn_mask has 3 masks for a batch of 1 latents"
    else:
        raise ValueError(kind)
    graph["sampler"]["inputs"]["model"] = model
    return graph, expected


BAD_KINDS = ("wrong_adapter", "missing_file", "reversed_range", "mask_count")


def long_running(seed: int, steps: int = 400) -> dict:
    """A good prompt with many steps, to be interrupted mid-sampling."""
    graph = good("chain", seed)
    graph["sampler"]["inputs"]["steps"] = steps
    graph["save"]["inputs"]["filename_prefix"] = f"session_long_{seed}"
    return graph
