"""A long session on the real server (`main.py --cpu`, loopback); JSON in benchmarks/results/.

    flock /tmp/ipadapter-heavy.lock .venv/bin/python -m benchmarks.long_session --prompts 100

The prompts (tools/session_prompts.py, all four good kinds and all four bad ones, interleaved) are
queued at once; then a long prompt is cancelled mid-sampling and one more runs. Every good prompt
is compared with the same prompt run alone on a fresh server (one per distinct prompt: kinds x
seeds), every bad one with its message (tools/long_session.py, which tests/test_long_session.py
runs on 12 prompts). Also recorded: the server's resident memory (VmRSS) when each prompt was
done, and the criterion that after prompt 100 it is within 5% of after prompt 10. What a server holds
between prompts depends on the last prompt (ComfyUI keeps its node outputs: after a wrong-adapter
prompt, the SDXL adapter it loaded), so memory is also compared between the last prompt and the
first one from prompt 10 on at the same place in the cycle of kinds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.hostile_files import RESULTS, machine
from tools.embedded_models import build_embedded_models
from tools.long_session import MODEL_FILES, cycle, run_session

RSS_TOLERANCE = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="each good kind runs with each seed in turn (a fresh server each)")
    args = parser.parse_args()
    if args.prompts < 10:
        parser.error("--prompts must be at least 10 (memory is compared with after prompt 10)")
    models = build_embedded_models(only=MODEL_FILES)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="long-session-") as work_dir:
        report = run_session(models, Path(work_dir), args.prompts, args.seeds)
    rss = [outcome.rss_bytes for outcome in report.outcomes]
    at_10, at_last = rss[9], rss[-1]
    period = len(cycle())
    same_place = next(index for index in range(9, len(rss)) if index % period == (len(rss) - 1) % period)
    failures = [outcome.index for outcome in [*report.outcomes, report.interrupt.next_outcome] if not outcome.ok]
    interrupted = report.interrupt.outcome.status == "interrupted" and report.interrupt.outcome.message == "interrupted in node sampler"
    result = {
        "machine": machine() + " (the server: torch's default threads)", "torch": torch.__version__,
        "prompts": args.prompts, "seeds": args.seeds, "wall_seconds": round(time.monotonic() - started, 1),
        "good": sum(outcome.expected_error is None for outcome in report.outcomes),
        "good_equal_to_fresh": sum(bool(outcome.equals_fresh) for outcome in report.outcomes),
        "bad_with_their_message": sum(bool(outcome.ok) for outcome in report.outcomes if outcome.expected_error is not None),
        "failures": failures,
        "interrupted_in_sampler": interrupted,
        "after_interrupt_equals_fresh": bool(report.interrupt.next_outcome.equals_fresh),
        "rss_mb_after_prompt_10": round(at_10 / 2**20, 1), f"rss_mb_after_prompt_{args.prompts}": round(at_last / 2**20, 1),
        "rss_change_10_to_last": round(at_last / at_10 - 1, 4), "rss_within_5_percent": abs(at_last / at_10 - 1) <= RSS_TOLERANCE,
        "rss_mb_max": round(max(rss) / 2**20, 1),
        "rss_same_place_prompt": same_place + 1, "rss_change_same_place_to_last": round(at_last / rss[same_place] - 1, 4),
        **report.record(),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cpu-long-session-{args.prompts}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['machine']} | {args.prompts} prompts in {report.session_seconds:.0f} s on one server, "
          f"{report.fresh_count} fresh servers in {report.fresh_seconds:.0f} s")
    print(f"good equal to fresh: {result['good_equal_to_fresh']}/{result['good']}; bad with their message: "
          f"{result['bad_with_their_message']}/{args.prompts - result['good']}; failures: {failures}")
    print(f"interrupted in the sampler after {report.interrupt.steps_before_interrupt} of {report.interrupt.total_steps} steps: {interrupted}; "
          f"next prompt equals fresh: {result['after_interrupt_equals_fresh']}")
    print(f"RSS after prompt 10: {result['rss_mb_after_prompt_10']} MB, after prompt {args.prompts}: "
          f"{result[f'rss_mb_after_prompt_{args.prompts}']} MB ({result['rss_change_10_to_last']:+.1%}); "
          f"from prompt {same_place + 1} (same place in the cycle): {result['rss_change_same_place_to_last']:+.2%} -> {path}")


if __name__ == "__main__":
    main()
