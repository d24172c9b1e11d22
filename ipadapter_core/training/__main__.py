"""Command line: `train` and `convert` (see the README's Training section)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import IPAdapterError
from .config import FIELDS, build_config, preset_names

log = logging.getLogger("ipadapter_core.training")


def split_overrides(extra: list[str]) -> dict[str, str]:
    """`--key value` and `--key=value` pairs for any config key."""
    overrides, i = {}, 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--"):
            raise IPAdapterError(f"Unexpected argument {item!r}; config keys are given as --key value.")
        key, _, value = item[2:].partition("=")
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise IPAdapterError(f"Unknown option --{key}. Valid keys: {', '.join(FIELDS)}.")
        if not value:
            if i + 1 >= len(extra):
                raise IPAdapterError(f"--{key} needs a value.")
            i += 1
            value = extra[i]
        overrides[key] = value
        i += 1
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ipadapter_core.training", description="Train or convert IP-Adapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an adapter; any config key can be given as --key value",
                                epilog=f"presets: {', '.join(preset_names())}")
    train.add_argument("--config", default="", help="YAML/JSON config file or preset name")
    convert = commands.add_parser("convert", help="official/diffusers trainer output -> official adapter file")
    convert.add_argument("source", help="checkpoint folder or file (model.safetensors, pytorch_model.bin, ...)")
    convert.add_argument("target", help="output .safetensors")
    convert.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "convert":
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            from .convert import convert as run_convert

            log.info("wrote %s", run_convert(args.source, args.target, args.dtype))
            return 0
        from .trainer import train as run_train

        result = run_train(build_config(args.config, split_overrides(extra)))
        if result.export is not None:
            log.info("adapter written to %s", result.export)
        return 0
    except IPAdapterError as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
