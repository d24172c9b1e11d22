"""Whole training runs on tiny models: exact resume, real accumulation, DDP = one big batch, the CLI.

Every run trains the tiny SD-layout models end to end (VAE, text encoder, CLIP vision, UNet with
the adapter) with the reference recipe, on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import relative_error
from ipadapter_core.adapter import IPAdapterModel
from ipadapter_core.training.__main__ import main
from ipadapter_core.training.config import build_config
from ipadapter_core.training.state import checkpoint_dirs
from ipadapter_core.training.trainer import train
from training_helpers import tiny_run, write_json_dataset, write_shards

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_dirs(output_dir)[-1] / "adapter.safetensors"))


def weights_error(a: dict, b: dict) -> float:
    return relative_error(torch.cat([a[k].flatten() for k in sorted(a)]), torch.cat([b[k].flatten() for k in sorted(b)]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json_dataset(tmp_path_factory.mktemp("data"), 16)


def test_resume_is_bit_exact(training_models, data, tmp_path):
    """10 steps, stop, resume, 10 more == 20 steps straight: weights and losses identical bit for bit."""
    common = dict(max_steps=20, checkpoint_every=10, learning_rate=1e-3, batch_size=2)
    straight = train(build_config("", tiny_run(training_models, data, tmp_path / "straight", **common)))
    first = train(build_config("", tiny_run(training_models, data, tmp_path / "split", **{**common, "max_steps": 10})))
    resumed = train(build_config("", tiny_run(training_models, data, tmp_path / "split", **common, resume="latest")))
    assert first.final_step == 10 and resumed.final_step == 20 and len(resumed.losses) == 10
    assert first.losses + resumed.losses == straight.losses
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(checkpoint_dirs(tmp_path / "split")[0] / "adapter.safetensors"))
    assert not all(torch.equal(a[k], start[k]) for k in a)  # it did train between 10 and 20


def test_gradient_accumulation_accumulates(training_models, data, tmp_path):
    """Batch 4 x 2 accumulation steps == batch 8: the same update, and not batch 4's."""
    runs = {}
    for name, batch, accumulation in (("big", 8, 1), ("accumulated", 4, 2), ("small", 4, 1)):
        config = tiny_run(training_models, data, tmp_path / name, max_steps=2, batch_size=batch, gradient_accumulation_steps=accumulation, learning_rate=1e-3)
        train(build_config("", config))
        runs[name] = final_weights(tmp_path / name)
    assert weights_error(runs["accumulated"], runs["big"]) < 1e-5
    assert weights_error(runs["small"], runs["big"]) > 1e-4


def test_ddp_two_processes_equal_one_big_batch(training_models, data, tmp_path):
    """torchrun, 2 CPU processes (gloo) at batch 4 == 1 process at batch 8; only rank 0 writes."""
    common = dict(max_steps=3, learning_rate=1e-3, checkpoint_every=2)
    train(build_config("", tiny_run(training_models, data, tmp_path / "single", batch_size=8, **common)))
    flags = [f"--{k}={v}" for k, v in tiny_run(training_models, data, tmp_path / "ddp", batch_size=4, cpu=True, **common).items()]
    writes = tmp_path / "writes"
    writes.mkdir()
    env = {**os.environ, "WRITES_DIR": str(writes), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                          str(REPO / "tests" / "training_ddp_worker.py"), "train", *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert weights_error(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")) < 1e-5
    state = json.loads((checkpoint_dirs(tmp_path / "ddp")[-1] / "state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 8
    output = str(tmp_path / "ddp")
    rank0 = [p for p in json.loads((writes / "rank-0.json").read_text()) if p.startswith(output)]
    rank1 = [p for p in json.loads((writes / "rank-1.json").read_text()) if p.startswith(output)]
    assert any(p.endswith("ip-adapter.safetensors.partial") for p in rank0) and any("optimizer.pt" in p for p in rank0)
    assert rank1 == []


def test_cpu_launch_that_starts_one_process_is_stopped(training_models, data, tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs one process: the trainer stops before writing anything."""
    accelerate = Path(sys.executable).with_name("accelerate")
    flags = [f"--{k}={v}" for k, v in tiny_run(training_models, data, tmp_path / "out").items()]
    run = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", "-m", "ipadapter_core.training", "train", *flags],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0, run.stderr[-3000:]  # the trainer exits 2; accelerate reports its child failing as 1
    assert "asked for 2 processes but started 1" in run.stderr and "torchrun --nproc_per_node" in run.stderr
    assert not (tmp_path / "out").exists()


def test_cli_json_folder_end_to_end(training_models, data, tmp_path):
    """`train` from a config file with flag overrides: checkpoints (limit kept), metrics, samples, the export."""
    config_file = tmp_path / "run.yaml"
    values = tiny_run(training_models, data, tmp_path / "out", max_steps=6, checkpoint_every=2, checkpoints_total_limit=2,
                      sample_every=6, sample_steps=2, sample_count=2)
    config_file.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items() if k != "max_steps"))
    assert main(["train", "--config", str(config_file), "--max_steps", "6", "--tensorboard=true"]) == 0
    out = tmp_path / "out"
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000004", "step-0000006"]
    assert json.loads((out / "config.json").read_text())["max_steps"] == 6
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert (out / "samples" / "step-0000006.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    adapter = IPAdapterModel.load(out / "ip-adapter.safetensors")
    assert adapter.spec.projection == "linear" and adapter.spec.num_tokens == 4 and len(adapter.spec.layer_dims) == 4
    assert next(adapter.image_proj.parameters()).dtype == torch.float16


def test_cli_webdataset_shards_sdxl_plus(training_models, tmp_path):
    """Two shards, two data-loader workers, the SDXL layout (two text encoders, time ids) and a plus adapter."""
    write_shards(tmp_path / "shards", shards=2, per_shard=5)
    values = tiny_run(training_models, Path("unused.json"), tmp_path / "out", base_model=str(training_models["sdxl"]), adapter="plus",
                      resampler_dim=32, resampler_heads=2, max_steps=3, num_workers=2, batch_size=3)
    del values["data_json"], values["data_root"]
    flags = [f"--{k}={v}" for k, v in values.items()] + ["--shards", f"{tmp_path}/shards/shard-{{000..001}}.tar"]
    assert main(["train", *flags]) == 0
    adapter = IPAdapterModel.load(tmp_path / "out" / "ip-adapter.safetensors")
    assert adapter.spec.projection == "resampler" and adapter.spec.cross_attention_dim == 64 and adapter.spec.num_tokens == 16
    # down: 1 block x 2 transformers, up: 2 blocks x 2, mid: 2 -> 8 layers, n = 1, 3, ..., 15
    assert [n for n, _ in adapter.spec.layer_dims] == list(range(1, 17, 2))
