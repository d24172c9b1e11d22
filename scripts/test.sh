#!/usr/bin/env bash
# The test suite, each test file in its own pytest process (what `make test` runs).
# Several files build full-size models (SD1.5 UNets, ViT-H/14 encoders, a diffusers reference
# beside ComfyUI's copy). Freed tensors are not all handed back to the OS by the allocator, so
# in one process the files' peaks add up past a 24 GB machine; one process per file bounds
# memory by the heaviest file. Arguments go to every run, e.g. scripts/test.sh -m "not slow".
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
for file in tests/test_*.py; do
    echo "== $file"
    .venv/bin/python -m pytest "$file" -q "$@"
    status=$?
    # 5: no test selected in this file (e.g. all deselected by -m), not a failure
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
        failed+=("$file")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all test files passed"
