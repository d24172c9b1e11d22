"""The training loop: one code path for one process, DDP and DeepSpeed ZeRO-2, through accelerate."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import IPAdapterError
from ..encoders import IMAGE_EMBEDS, PENULTIMATE
from .adapter_setup import AdapterTrainingModel, build_adapter, install_processors, load_adapter_for_training
from .config import TrainConfig
from .data import GlobalBatchSampler, ImageTransform, JsonImageTextDataset, ShardStream, collate, expand_shards, open_image, tar_samples
from .distributed import check_world_size
from .encoders import ImageEncoder, load_image_encoder
from .models import BaseModel, load_base_model
from .recipe import Recipe, StepDraws
from .samples import sample_images, save_grid
from .state import export_adapter, find_resume, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run produced and how long its parts took (the benchmark reads these)."""

    export: Path | None = None
    last_checkpoint: Path | None = None
    final_step: int = 0
    losses: list[float] = field(default_factory=list)  # this process's micro-batch-averaged loss per step
    step_seconds: list[float] = field(default_factory=list)
    data_seconds: list[float] = field(default_factory=list)  # of which waiting for the data loader
    checkpoint_seconds: list[float] = field(default_factory=list)
    checkpoint_bytes: int = 0
    model: torch.nn.Module | None = None  # the trained UNet + adapter, unwrapped
    frozen: dict = field(default_factory=dict)  # name -> every frozen module (VAE, text and image encoders)


def resolve_dtype(name: str, mixed_precision: str) -> torch.dtype:
    if name == "auto":
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    if name not in DTYPES:
        raise IPAdapterError(f"Unknown dtype {name!r}; use auto, fp32, fp16 or bf16.")
    return DTYPES[name]


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator

    tensorboard = config.tensorboard and importlib.util.find_spec("tensorboard") is not None
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        cpu=config.cpu,
        log_with="tensorboard" if tensorboard else None,
        project_dir=str(Path(config.output_dir) / "logs"),
    )
    check_world_size(accelerator.num_processes, config.expected_processes)
    if is_deepspeed(accelerator):
        plugin = accelerator.state.deepspeed_plugin
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
        if config.max_grad_norm:
            plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm
    return accelerator


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type.name == "DEEPSPEED"


def setup_models(config: TrainConfig, device: torch.device, mixed_precision: str) -> tuple[BaseModel, ImageEncoder, AdapterTrainingModel, str]:
    base = load_base_model(config.base_model, config.family, config.base_model_config)
    encoder = load_image_encoder(config.image_encoder, config.open_clip_model)
    output = IMAGE_EMBEDS if config.adapter == "base" else PENULTIMATE
    torch.manual_seed(config.seed)  # the projection's initialisation: identical on every process
    if config.init_adapter:
        adapter = load_adapter_for_training(config.init_adapter, base.unet)
        output = adapter.spec.encoder_output
    else:
        adapter = build_adapter(base.unet, config.adapter, encoder.width(output), config.tokens, config.resampler_dim, config.resampler_heads, config.resampler_depth)
    if adapter.spec.encoder_width != encoder.width(output):
        raise IPAdapterError(f"The adapter reads {output} of width {adapter.spec.encoder_width}, but the image encoder gives {encoder.width(output)}.")
    install_processors(base.unet, adapter)
    frozen = resolve_dtype(config.frozen_dtype, mixed_precision)
    base.unet.to(device, frozen)
    for text_encoder in base.text_encoders:
        text_encoder.to(device, frozen)
    base.vae.to(device, resolve_dtype(config.vae_dtype, mixed_precision))
    encoder.to(device, resolve_dtype(config.encoder_dtype, mixed_precision))
    adapter.to(device, torch.float32)
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    return base, encoder, AdapterTrainingModel(base.unet, adapter), output


def make_optimizer(config: TrainConfig, adapter: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the adapter alone: the projection and every to_k_ip/to_v_ip."""
    return torch.optim.AdamW(adapter.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon, weight_decay=config.weight_decay)


def make_loader(config: TrainConfig, transform: ImageTransform, world: int, rank: int, start_step: int):
    common = dict(num_workers=config.num_workers, collate_fn=collate, persistent_workers=False)
    if config.data_json:
        dataset = JsonImageTextDataset(config.data_json, config.data_root, transform, config.skip_bad_samples)
        sampler = GlobalBatchSampler(len(dataset), config.batch_size, world, rank, config.gradient_accumulation_steps, config.seed, start_step)
        return dataset, torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)
    shards = expand_shards(config.shards)
    stream = ShardStream(shards, transform, config.batch_size, world, rank, config.seed, config.skip_bad_samples,
                         skip_batches=start_step * config.gradient_accumulation_steps)
    return None, torch.utils.data.DataLoader(stream, batch_size=config.batch_size, **common)


def sample_references(config: TrainConfig, dataset) -> list[Image.Image]:
    if config.sample_references:
        return [open_image(Path(p), p) for p in config.sample_references]
    if dataset is not None:
        return [open_image(dataset.root / item["image_file"], item["image_file"]) for item in dataset.items[: config.sample_count]]
    references = []
    for key, group in tar_samples(expand_shards(config.shards)[0], config.skip_bad_samples):
        image = next((group[e] for e in ("jpg", "jpeg", "png", "webp") if e in group), None)
        if image is not None:
            references.append(open_image(image, key))
        if len(references) == config.sample_count:
            break
    return references


def train(config: TrainConfig) -> TrainResult:
    accelerator = make_accelerator(config)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    output_dir = Path(config.output_dir)
    base, encoder, model, _ = setup_models(config, device, accelerator.mixed_precision)
    adapter = model.adapter
    optimizer = make_optimizer(config, adapter)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_steps)
    global_batch = config.batch_size * world * config.gradient_accumulation_steps
    start_step, resume_dir = 0, find_resume(output_dir, config.resume)
    deepspeed = is_deepspeed(accelerator)
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, adapter, None if deepspeed else optimizer, scheduler)
        if state.get("global_batch") != global_batch or (config.shards and state.get("world_size") != world):
            raise IPAdapterError(
                f"{resume_dir} was written with global batch {state.get('global_batch')} over {state.get('world_size')} process(es); "
                f"resume with the same batch_size x processes x gradient_accumulation_steps (now {global_batch}), or the data order changes."
            )
        start_step = state["step"]
        log.info("resuming from %s at step %d", resume_dir, start_step)
    model, optimizer = accelerator.prepare(model, optimizer)
    if deepspeed and resume_dir is not None:
        model.load_checkpoint(str(resume_dir / "deepspeed"), load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=False)

    transform = ImageTransform(config.resolution, config.clip_size or encoder.image_size, encoder.mean, encoder.std)
    dataset, loader = make_loader(config, transform, world, rank, start_step)
    recipe = Recipe(base, encoder, adapter.spec.encoder_output, config.resolution, config.image_drop_rate, config.text_drop_rate, config.both_drop_rate)
    references = sample_references(config, dataset) if config.sample_every and accelerator.is_main_process else []
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        if accelerator.log_with:
            accelerator.init_trackers("ipadapter", config={k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))})

    result = TrainResult(final_step=start_step)
    info = {"global_batch": global_batch, "world_size": world, "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps, "seed": config.seed}
    batches = iter(loader)
    timesteps = base.noise_scheduler.config.num_train_timesteps
    from tqdm.auto import tqdm

    progress = tqdm(total=config.max_steps, initial=start_step, disable=not (accelerator.is_main_process and config.progress_bar), desc="training")
    window: list[float] = []
    for step in range(start_step, config.max_steps):
        started, waited, step_loss = time.perf_counter(), 0.0, 0.0
        draws = StepDraws.make(config.seed, step, global_batch, recipe.latent_shape, timesteps, device)
        for micro in range(config.gradient_accumulation_steps):
            fetch = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - fetch
            with accelerator.accumulate(model):
                inputs = recipe.inputs(batch, draws.rows((micro * world + rank) * config.batch_size, config.batch_size), device)
                with accelerator.autocast():
                    prediction = model(inputs["noisy_latents"], inputs["timesteps"], inputs["text_embeds"], inputs["image_features"], inputs["added_cond_kwargs"])
                loss = recipe.loss(prediction, inputs["target"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm and not deepspeed:
                    accelerator.clip_grad_norm_(adapter.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().item() / config.gradient_accumulation_steps
        scheduler.step()
        result.losses.append(step_loss)
        result.step_seconds.append(time.perf_counter() - started)
        result.data_seconds.append(waited)
        result.final_step = done = step + 1
        window.append(step_loss)
        progress.update(1)
        if done % config.log_every == 0 or done == config.max_steps:
            mean_loss = accelerator.reduce(torch.tensor(sum(window) / len(window), device=device), reduction="mean").item()
            window = []
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if accelerator.is_main_process:
                record = {"step": done, "loss": mean_loss, "lr": scheduler.get_last_lr()[0], "step_seconds": result.step_seconds[-1]}
                with open(output_dir / "metrics.jsonl", "a") as metrics:
                    metrics.write(json.dumps(record) + "\n")
                if accelerator.log_with:
                    accelerator.log({"loss": mean_loss, "lr": record["lr"]}, step=done)
        if done % config.checkpoint_every == 0 or done == config.max_steps:
            result.last_checkpoint = checkpoint(accelerator, output_dir, done, model, optimizer, scheduler, info, config, result, deepspeed)
        if config.sample_every and done % config.sample_every == 0 and accelerator.is_main_process:
            write_samples(config, base, encoder, accelerator.unwrap_model(model), references, output_dir, done, device, accelerator)
        accelerator.wait_for_everyone()
    progress.close()
    if accelerator.is_main_process:
        result.export = export_adapter(accelerator.unwrap_model(model).adapter, output_dir / config.export_name, config.export_dtype)
        log.info("adapter exported to %s", result.export)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result.model = accelerator.unwrap_model(model)
    result.frozen = {"vae": base.vae, "image_encoder": encoder, **{f"text_encoder_{i}": e for i, e in enumerate(base.text_encoders)}}
    return result


def checkpoint(accelerator, output_dir, step, model, optimizer, scheduler, info, config, result, deepspeed) -> Path | None:
    folder = None
    started = time.perf_counter()
    if deepspeed:  # every process writes its optimizer shard; frozen weights are left out
        target = output_dir / "checkpoints" / f"step-{step:07d}.partial" / "deepspeed"
        model.save_checkpoint(str(target), exclude_frozen_parameters=True)
    if accelerator.is_main_process:
        adapter = accelerator.unwrap_model(model).adapter
        folder = save_checkpoint(output_dir, step, adapter, None if deepspeed else optimizer, scheduler, info, config.checkpoints_total_limit)
        result.checkpoint_seconds.append(time.perf_counter() - started)
        result.checkpoint_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    accelerator.wait_for_everyone()
    return folder


def write_samples(config, base, encoder, model, references, output_dir, step, device, accelerator) -> None:
    if not references:
        return
    with accelerator.autocast():
        images = sample_images(base, model.unet, encoder, model.adapter, references, config.sample_prompt, config.resolution,
                               config.sample_steps, config.sample_guidance, config.seed, device, config.clip_size)
    path = save_grid(references, images, output_dir / "samples" / f"step-{step:07d}.png")
    if accelerator.log_with:
        import numpy as np

        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples", np.asarray(Image.open(path)), step, dataformats="HWC")
