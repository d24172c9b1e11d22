"""Stop a distributed launch that did not start what was asked, before anything is written.

Two launches fail silently otherwise: `accelerate launch --cpu --num_processes 2` starts a single
process, and `--multi_gpu` on a machine without GPUs starts two processes that each initialise
as a one-process run and then write the same files. The CPU launch that works is torchrun with
the trainer's `cpu` switch, which accelerate turns into a gloo process group:

    torchrun --nproc_per_node 2 -m ipadapter_core.training train --config FILE --cpu true
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import IPAdapterError

CPU_LAUNCH = "torchrun --nproc_per_node N -m ipadapter_core.training train --config FILE --cpu true"


def requested_by_launcher(parent_cmdline: list[str]) -> int | None:
    """Processes an `accelerate launch` command line asked for (flag or config file), else None."""
    if "launch" not in parent_cmdline or not any(Path(part).name == "accelerate" or part.endswith("accelerate/commands/launch.py") for part in parent_cmdline):
        return None
    requested = None
    for i, part in enumerate(parent_cmdline):
        for flag in ("--num_processes", "--num-processes"):
            if part == flag and i + 1 < len(parent_cmdline):
                requested = int(parent_cmdline[i + 1])
            elif part.startswith(flag + "="):
                requested = int(part.split("=", 1)[1])
        if part in ("--config_file", "--config-file") and i + 1 < len(parent_cmdline) and requested is None:
            requested = config_file_processes(Path(parent_cmdline[i + 1]))
    return requested


def config_file_processes(path: Path) -> int | None:
    try:
        import yaml

        return int((yaml.safe_load(path.read_text()) or {}).get("num_processes", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def parent_cmdline() -> list[str]:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_text().split("\0")
    except OSError:  # not Linux: only the environment checks apply
        return []


def check_world_size(num_processes: int, expected: int = 0, environ: dict | None = None, launcher: list[str] | None = None) -> None:
    """Raise unless the processes that run are the processes that were launched."""
    environ = os.environ if environ is None else environ
    launcher = parent_cmdline() if launcher is None else launcher
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world != num_processes:
        raise IPAdapterError(
            f"The launcher started {world} processes, but each initialised as {num_processes} of {num_processes} "
            "(on a machine without GPUs, --multi_gpu does this): they would all train alone and write the same files. "
            f"On a CPU launch with: {CPU_LAUNCH}."
        )
    requested = requested_by_launcher(launcher)
    if requested is not None and requested != num_processes:
        raise IPAdapterError(
            f"accelerate launch was asked for {requested} processes but started {num_processes} "
            "(with --cpu it starts one process whatever --num_processes says). "
            f"On a CPU launch with: {CPU_LAUNCH}; on GPUs use --multi_gpu or the shipped multi_gpu.yaml."
        )
    if expected and expected != num_processes:
        raise IPAdapterError(f"expected_processes is {expected} but {num_processes} process(es) run; check the launch command ({CPU_LAUNCH} on a CPU).")
