"""ipadapter_core is plain PyTorch: importing any of its modules never imports ComfyUI.

Run in a fresh interpreter that *could* import ComfyUI (its folder is on sys.path), so an
accidental `import comfy` anywhere in the core succeeds and shows up in sys.modules instead of
hiding behind an ImportError.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tools.comfy_host import REPO, comfyui_path

HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "execution", "server", "node_helpers")

PROBE = """
import importlib, json, pkgutil, sys
sys.path[:0] = [{repo!r}, {comfyui!r}]
import ipadapter_core
names = sorted(info.name for info in pkgutil.walk_packages(ipadapter_core.__path__, "ipadapter_core."))
for name in names:
    importlib.import_module(name)
print(json.dumps({{"imported": names, "modules": sorted(sys.modules)}}))
"""


def test_importing_every_core_module_imports_nothing_from_comfyui():
    assert (comfyui_path() / "comfy" / "model_management.py").is_file()  # the host is there to be imported by mistake
    probe = PROBE.format(repo=str(REPO), comfyui=str(comfyui_path()))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    imported = set(report["imported"])
    assert {"ipadapter_core.training.trainer", "ipadapter_core.face_analysis", "ipadapter_core.attention", "ipadapter_core.passes"} <= imported
    host = [name for name in report["modules"] if name.split(".")[0] in HOST_MODULES]
    assert host == [], f"ipadapter_core imported ComfyUI modules: {host}"
