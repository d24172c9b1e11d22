"""Damaged and hostile model files through the pack's loaders, at full count; JSON in benchmarks/results/.

    python -m benchmarks.hostile_files --count 12000 --seed 20261127

See tools/hostile_files.py for the cases and what counts as a pass; the test suite runs a
fixed-seed sample of the same cases (tests/test_hostile_files.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tools import hostile_files

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()
    summary = hostile_files.run(args.count, args.seed)
    result = {"machine": machine(), "torch": torch.__version__, **summary}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cpu-hostile-files-{args.count}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['machine']} | {summary['ran']} files, seed {args.seed}: {summary['statuses']}")
    print(f"failures {summary['failure_count']}, crashes {len(summary['crashes'])}, code ran: {summary['code_ran']}")
    print(f"peak memory above the file's size: at most {summary['max_peak_rise_over_file_mb']} MB (allowance {summary['allowance_mb']} MB)")
    print(f"slowest case {summary['max_case_seconds']} s; total {summary['total_seconds']} s -> {path}")


if __name__ == "__main__":
    main()
