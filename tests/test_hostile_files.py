"""Damaged and hostile model files through the pack's loaders: a clear error naming the file, always.

A fixed-seed sample of tools/hostile_files.py's cases (the full count runs as a benchmark,
`python -m benchmarks.hostile_files`): each in a child process with an alarm against hangs, a
restart after a crash, and its peak resident memory compared with the file's size. The damaged
files start from every layout the loaders read: base, plus, full-face, FaceID (with its LoRA),
Flux and SD3.5 adapters; CLIP vision in both key layouts and SigLIP; saved image prompts.
"""

from __future__ import annotations

from tools import hostile_files

CASES = 1500


def test_every_damaged_file_gets_a_clear_error_naming_it():
    summary = hostile_files.run(CASES, seed=20261127)
    assert summary["ran"] == CASES
    assert summary["crashes"] == [] and not summary["code_ran"]
    assert summary["failures"] == [], "\n".join(f"{f['kind']} {f['mutation']}: {f['detail']}" for f in summary["failures"][:5])
    refused = summary["statuses"].get("refused", 0)
    assert refused > 0.8 * CASES, summary["statuses"]  # the rest are flips in tensor data that leave a valid file
    # every kind of damage reached every loader it applies to
    kinds = {key.split(" | ")[0] for key in summary["by_kind_mutation_status"]}
    assert kinds == set(hostile_files.KINDS)
