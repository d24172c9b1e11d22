"""`python -m ipadapter_core.convert IN.json OUT.json` from the pack's folder: no ComfyUI needed.

Writes the converted workflow (same format as the input) and prints what was converted, what
was left unchanged and why; `--report FILE` also writes the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import IPAdapterError
from . import convert_workflow

log = logging.getLogger("ipadapter_core.convert")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipadapter_core.convert",
        description="Convert a workflow built with ComfyUI_IPAdapter_plus (UI or API format) to this pack's nodes.",
    )
    parser.add_argument("input", type=Path, help="workflow JSON to convert")
    parser.add_argument("output", type=Path, help="where to write the converted workflow (may equal input)")
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        workflow = json.loads(args.input.read_text(encoding="utf-8"))
        converted, report = convert_workflow(workflow)
    except (OSError, json.JSONDecodeError, IPAdapterError) as error:
        log.error("Cannot convert %s: %s", args.input, error)
        return 2
    args.output.write_text(json.dumps(converted, indent=2) + "\n", encoding="utf-8")
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    for line in report.lines():
        log.info("%s", line)
    log.info("Wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
