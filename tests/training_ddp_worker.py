"""Runs the training CLI under torchrun, recording every file this process writes.

Python-level writes are seen by an audit hook (open for writing, mkdir, rename, remove);
safetensors and torch.save write from native code, so their entry points are wrapped before the
trainer imports them. Each rank writes its list to WRITES_DIR/rank-N.json at exit.
"""

import atexit
import json
import os
import sys

import safetensors.torch
import torch

writes = []


def audit(event, args):
    if event == "open" and len(args) > 1 and isinstance(args[1], str) and any(m in args[1] for m in "wax+"):
        writes.append(str(args[0]))
    elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
        writes.append(str(args[0]))


def recording(function):
    def wrapper(obj, path, *args, **kwargs):
        writes.append(str(path))
        return function(obj, path, *args, **kwargs)

    return wrapper


def report():
    with open(os.path.join(os.environ["WRITES_DIR"], f"rank-{os.environ.get('RANK', '0')}.json"), "w") as out:
        json.dump(writes, out)


safetensors.torch.save_file = recording(safetensors.torch.save_file)
torch.save = recording(torch.save)
sys.addaudithook(audit)
atexit.register(report)

from ipadapter_core.training.__main__ import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
