"""Which tokens and latents each chunk of a model call stands for (ipadapter_core.passes), without ComfyUI.

The samplers themselves are exercised in tests/test_sampler_protocols.py; here the rules alone,
on the plain dicts and lists the host hands over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ipadapter_core.passes import (
    COND, PASS_KINDS, UNCOND, call_latents, conditioning_kind, mark_prompt_types, pass_kinds, row_gate, row_layout, window_latents,
)


@dataclass
class Window:
    """The two attributes of the host's IndexListContextWindow the rules read."""

    index_list: list[int]
    dim: int = 0


def test_a_conditioning_marked_negative_gets_the_unconditional_tokens():
    assert conditioning_kind(None) == COND
    assert conditioning_kind([{"prompt_type": "positive"}]) == COND
    assert conditioning_kind([{}]) == COND
    assert conditioning_kind([{"prompt_type": "positive"}, {"prompt_type": "negative"}]) == UNCOND  # any area of it


def test_marks_are_the_guider_names_unless_already_set():
    conds = {"positive": [{}], "middle": [{"prompt_type": "negative"}], "negative": [{}, {}], "empty": None}
    mark_prompt_types(conds)
    assert conds == {"positive": [{"prompt_type": "positive"}], "middle": [{"prompt_type": "negative"}],
                     "negative": [{"prompt_type": "negative"}] * 2, "empty": None}


def test_pass_kinds_follow_the_marks_not_the_index():
    dual = {"cond_or_uncond": [0, 1, 2], PASS_KINDS: (UNCOND, UNCOND, COND)}  # [negative, middle, positive]
    assert pass_kinds(dual) == (UNCOND, UNCOND, COND)
    assert pass_kinds({"cond_or_uncond": [2, 0], PASS_KINDS: (UNCOND, UNCOND, COND)}) == (COND, UNCOND)
    # without marks (the model run outside calc_cond_batch): the host's plain-CFG meaning
    assert pass_kinds({"cond_or_uncond": [1, 0]}) == (UNCOND, COND)
    assert pass_kinds({}) == (COND,)


def test_window_latents_from_either_protocol():
    assert window_latents({}, 4) is None
    assert window_latents({"context_window": Window([8, 9, 10, 11])}, 4) == (8, 9, 10, 11)
    assert window_latents({"ad_params": {"sub_idxs": [3, 4]}}, 2) == (3, 4)
    assert window_latents({"context_window": Window([0, 1, 2, 3], dim=2)}, 4) is None  # a window over frames of a video latent
    assert window_latents({"ad_params": {"sub_idxs": [3, 4]}}, 3) is None  # not this call's latents
    assert call_latents({}, 3) == (0, 1, 2)
    assert call_latents({"ad_params": {"sub_idxs": [5, 6, 7]}}, 3) == (5, 6, 7)


def test_row_layout_and_gate():
    assert row_layout((COND, UNCOND), (4, 5), per_latent=False) == [(COND, 0), (UNCOND, 0)]
    assert row_layout((UNCOND, COND), (4, 5), per_latent=True) == [(UNCOND, 4), (UNCOND, 5), (COND, 4), (COND, 5)]
    gate = torch.tensor([1.0, 0.0])  # one per latent of a pass
    assert row_gate(gate, passes=3, chunk=2, per_latent=True).tolist() == [1.0, 0.0] * 3
    assert row_gate(gate, passes=3, chunk=2, per_latent=False).tolist() == [1.0] * 3
    assert row_gate(torch.tensor([1.0]), passes=2, chunk=3, per_latent=True).tolist() == [1.0] * 6
