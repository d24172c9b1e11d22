"""A long session on a real server, checked prompt by prompt: one implementation for the CI test
(tests/test_long_session.py, a short session) and the benchmark (benchmarks/long_session.py, 100).

A public server runs many users' prompts one after another in one process, so whatever one
prompt leaves behind (cached keys/values, patches, memory) meets the next. The session queues
every prompt at once, good ones (tools/session_prompts.py) interleaved with failing ones. Each
good prompt recurs with other prompts between, so ComfyUI's cache (which keeps only what the
last prompt shares) runs its sampler again; each must give exactly the image the same prompt
gives alone on a freshly started server, and each bad one must end with its message. After the
queue, a long prompt is cancelled mid-sampling as the frontend cancels (POST /interrupt once the
sampler reports progress), and the next prompt must again equal its fresh-server image.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tools import session_prompts
from tools.comfy_server import ComfyServer, PromptRejected, ServerError
from tools.embedded_models import CHECKPOINT, CLIP_VISION, IPADAPTER, IPADAPTER_PLUS, IPADAPTER_PLUS_SDXL

log = logging.getLogger(__name__)

MODEL_FILES = (CHECKPOINT, CLIP_VISION, IPADAPTER, IPADAPTER_PLUS, IPADAPTER_PLUS_SDXL)
SAMPLER_NODE = "sampler"  # node id in tools/session_prompts.py


def cycle(good_kinds: Sequence[str] = session_prompts.GOOD_KINDS) -> tuple[str, ...]:
    """Good and bad kinds alternating, so every prompt follows one that failed or used other adapters."""
    bad_kinds = session_prompts.BAD_KINDS
    rounds = max(len(good_kinds), len(bad_kinds))
    return tuple(kind for index in range(rounds) for kind in (good_kinds[index % len(good_kinds)], bad_kinds[index % len(bad_kinds)]))


@dataclass(frozen=True)
class SessionPrompt:
    kind: str
    seed: int
    prompt: dict
    expected_error: str | None  # None: must give an image

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.seed}"


def plan(count: int, seeds: Sequence[int], good_kinds: Sequence[str] = session_prompts.GOOD_KINDS) -> list[SessionPrompt]:
    """count prompts going round cycle(good_kinds), the seed advancing each round (so every good
    prompt recurs, with other prompts between)."""
    kinds = cycle(good_kinds)
    prompts = []
    for index in range(count):
        kind, seed = kinds[index % len(kinds)], seeds[(index // len(kinds)) % len(seeds)]
        if kind in session_prompts.GOOD_KINDS:
            prompts.append(SessionPrompt(kind, seed, session_prompts.good(kind, seed), None))
        else:
            prompt, expected = session_prompts.bad(kind, seed)
            prompts.append(SessionPrompt(kind, seed, prompt, expected))
    return prompts


@dataclass
class Outcome:
    index: int
    kind: str
    seed: int
    status: str  # "image", "rejected" (at validation), "failed" (while executing), "interrupted", "no image"
    message: str = ""
    expected_error: str | None = None
    pixels_sha256: str | None = None
    sampler_ran: bool | None = None  # False: the executor took the sampler's result from its cache
    rss_bytes: int | None = None  # the server's resident memory when the prompt was done
    equals_fresh: bool | None = None
    ok: bool | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)

    def record(self) -> dict:
        return {name: value for name, value in asdict(self).items() if name != "pixels"}


def resident_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ServerError(f"No VmRSS for process {pid}")


def server_rss(server: ComfyServer) -> int:
    server.check_alive()
    return resident_bytes(server.process.pid)


def events(entry: dict, name: str) -> list[dict]:
    return [data for event, data in (entry.get("status") or {}).get("messages", []) if event == name]


def pixels_of(server: ComfyServer, entry: dict) -> np.ndarray | None:
    images = server.output_images(entry)
    if len(images) != 1:
        return None
    return np.asarray(Image.open(io.BytesIO(server.fetch(images[0]))).convert("RGB"))


def finish(server: ComfyServer, outcome: Outcome, entry: dict) -> Outcome:
    """Fill outcome from a done prompt's history entry."""
    if (errors := events(entry, "execution_error")):
        outcome.status = "failed"
        outcome.message = f"{errors[0].get('exception_type')}: {errors[0].get('exception_message')}"
    elif (interrupted := events(entry, "execution_interrupted")):
        outcome.status = "interrupted"
        outcome.message = f"interrupted in node {interrupted[0].get('node_id')}"
    else:
        outcome.pixels = pixels_of(server, entry)
        outcome.status = "image" if outcome.pixels is not None else "no image"
        if outcome.pixels is not None:
            outcome.pixels_sha256 = hashlib.sha256(outcome.pixels.tobytes()).hexdigest()
    cached = events(entry, "execution_cached")
    outcome.sampler_ran = bool(cached) and SAMPLER_NODE not in cached[0].get("nodes", [])
    return outcome


def run_queued(server: ComfyServer, prompts: Sequence[SessionPrompt], timeout: float = 600) -> list[Outcome]:
    """Queue every prompt at once, then collect each outcome in order, with the server's RSS when it was done."""
    queued: list[tuple[Outcome, str | None]] = []
    for index, item in enumerate(prompts):
        outcome = Outcome(index, item.kind, item.seed, "queued", expected_error=item.expected_error)
        try:
            queued.append((outcome, server.queue(item.prompt)))
        except PromptRejected as rejected:
            outcome.status, outcome.message = "rejected", str(rejected)
            queued.append((outcome, None))
    outcomes = []
    for outcome, prompt_id in queued:
        if prompt_id is not None:
            finish(server, outcome, server.wait_done(prompt_id, timeout=timeout, poll=0.05))
        outcome.rss_bytes = server_rss(server)
        log.info("prompt %d %s/%d: %s %s", outcome.index, outcome.kind, outcome.seed, outcome.status, outcome.message[:120])
        outcomes.append(outcome)
    return outcomes


async def cancel_after_steps(server: ComfyServer, prompt: dict, steps: int, timeout: float) -> tuple[str, int]:
    """Queue prompt, listen on the websocket as the frontend does, and POST /interrupt once the sampler
    has reported `steps` steps; returns (prompt id, the step reported last before the interrupt)."""
    import aiohttp  # a ComfyUI requirement: present wherever a server can run

    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=aiohttp.ClientWSTimeout(ws_close=10)) as socket:
            prompt_id = server.queue(prompt, client_id=client_id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = await socket.receive(timeout=max(deadline - time.monotonic(), 0.1))
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary frames are previews
                data = json.loads(message.data)
                body = data.get("data") or {}
                if data.get("type") == "progress" and body.get("prompt_id") == prompt_id and body.get("node") == SAMPLER_NODE \
                        and body.get("value", 0) >= steps:
                    server.interrupt(prompt_id)
                    return prompt_id, body["value"]
    raise TimeoutError(f"The sampler reported no step {steps} within {timeout:.0f} s")


@dataclass
class InterruptResult:
    steps_before_interrupt: int
    total_steps: int
    outcome: Outcome  # of the cancelled prompt
    next_outcome: Outcome  # of the prompt after it


def interrupt_then_run(server: ComfyServer, seed: int, after: SessionPrompt, steps: int = 2, timeout: float = 600) -> InterruptResult:
    """Cancel a long prompt mid-sampling, then run `after` (whose fresh image the caller compares)."""
    long = session_prompts.long_running(seed)
    prompt_id, reported = asyncio.run(cancel_after_steps(server, long, steps, timeout))
    cancelled = finish(server, Outcome(-1, "long_running", seed, "queued"), server.wait_done(prompt_id, timeout=timeout, poll=0.05))
    cancelled.rss_bytes = server_rss(server)
    following = run_queued(server, [after], timeout=timeout)[0]
    following.index = -1
    return InterruptResult(reported, long[SAMPLER_NODE]["inputs"]["steps"], cancelled, following)


def run_alone(models: Path, base_dir: Path, prompt: dict, timeout: float = 600) -> np.ndarray:
    """The prompt's image from a freshly started server that runs nothing else."""
    with ComfyServer(base_dir, models) as server:
        entry = server.wait(server.queue(prompt), timeout=timeout)
        pixels = pixels_of(server, entry)
    if pixels is None:
        raise ServerError(f"The prompt gave no single image on a fresh server ({base_dir})")
    return pixels


def judge(outcomes: Sequence[Outcome], fresh: dict[str, np.ndarray]) -> None:
    """outcome.ok: a good prompt ran its sampler and equals its fresh image; a bad one ended with its message."""
    for outcome in outcomes:
        if outcome.expected_error is None:
            reference = fresh[f"{outcome.kind}/{outcome.seed}"]
            outcome.equals_fresh = outcome.pixels is not None and np.array_equal(outcome.pixels, reference)
            outcome.ok = outcome.status == "image" and outcome.sampler_ran and outcome.equals_fresh
        else:
            outcome.ok = outcome.status in ("rejected", "failed") and outcome.expected_error in outcome.message


@dataclass
class SessionReport:
    outcomes: list[Outcome]
    interrupt: InterruptResult
    session_seconds: float
    fresh_seconds: float
    fresh_count: int
    server_start_seconds: float

    def record(self) -> dict:
        return {
            "session_seconds": round(self.session_seconds, 1), "fresh_seconds": round(self.fresh_seconds, 1),
            "fresh_servers": self.fresh_count, "session_server_start_seconds": round(self.server_start_seconds, 1),
            "prompts": [outcome.record() for outcome in self.outcomes],
            "interrupt": {"steps_before_interrupt": self.interrupt.steps_before_interrupt, "total_steps": self.interrupt.total_steps,
                          "cancelled": self.interrupt.outcome.record(), "next": self.interrupt.next_outcome.record()},
        }


def run_session(models: Path, work_dir: Path, count: int, seeds: Sequence[int], good_kinds: Sequence[str] = session_prompts.GOOD_KINDS,
                timeout: float = 600) -> SessionReport:
    """The whole check: the session on one server (queue, then the interrupt), then every distinct
    good prompt alone on its own fresh server, one after another (two servers never share the machine).
    good_kinds must include "chain", the prompt run after the interrupt."""
    prompts = plan(count, seeds, good_kinds)
    after_interrupt = next(p for p in prompts if p.expected_error is None and p.kind == "chain")
    started = time.monotonic()
    with ComfyServer(work_dir / "session", models) as server:
        server_start = time.monotonic() - started
        outcomes = run_queued(server, prompts, timeout)
        interrupt = interrupt_then_run(server, seeds[0], after_interrupt, timeout=timeout)
    session_seconds = time.monotonic() - started

    started = time.monotonic()
    distinct = {p.key: p for p in prompts if p.expected_error is None}
    fresh = {key: run_alone(models, work_dir / f"fresh-{index}", item.prompt, timeout) for index, (key, item) in enumerate(distinct.items())}
    fresh_seconds = time.monotonic() - started
    judge([*outcomes, interrupt.next_outcome], fresh)
    return SessionReport(outcomes, interrupt, session_seconds, fresh_seconds, len(fresh), server_start)
