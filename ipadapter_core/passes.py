"""Which image tokens and which latents each chunk of one model call stands for.

A sampler calls the model on a batch made of chunks, one per conditioning list it evaluates, and
each chunk holds some latents of the batch. Two facts decide what an image branch adds there,
and neither is a position inside the call:

- Which tokens a chunk gets. The host's `cond_or_uncond` only indexes the list the guider handed
  to calc_cond_batch ([positive, negative] for CFG, [negative, middle, positive] for
  DualCFGGuider), so index 0 is not "conditional" in general. A conditioning marked
  `prompt_type` "negative" gets the unconditional image tokens, any other the conditional ones.
  The host itself gives every conditioning its guider's name as prompt_type (what
  encode_model_conds passes to the model's extra_conds) unless it is already marked, and
  DualCFGGuider marks its middle conditioning "negative": there the image prompt is guided with
  cond1's text, by cfg_conds, and cfg_cond2_negative does not move it.
- Which latents a chunk holds. Sliding context windows call the model on a window of the batch
  and name its latents in the transformer options (the host's `context_window.index_list` over
  dimension 0, AnimateDiff-Evolved's `ad_params["sub_idxs"]`); per-latent inputs (unfolded
  references, weight schedules, per-latent masks) follow those indices.

Everything here reads plain dicts, lists and tensors; the node layer passes the host's objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

COND, UNCOND = 0, 1  # the image tokens a chunk gets: the prompt's conditional or unconditional ones
PASS_KINDS = "ipadapter_pass_kinds"  # transformer-options entry: COND or UNCOND per conditioning list of the call


def conditioning_kind(conditioning: Iterable | None) -> int:
    """UNCOND for a conditioning list marked negative (any of its entries), else COND."""
    if conditioning is None:
        return COND
    return UNCOND if any(isinstance(entry, Mapping) and entry.get("prompt_type") == "negative" for entry in conditioning) else COND


def mark_prompt_types(conds: Mapping[str, Iterable | None]) -> None:
    """Give each entry of a guider's conditionings the prompt_type the host gives it anyway: its
    name in the guider, unless it is already marked. `conds` must be the run's own copies."""
    for name, conditioning in conds.items():
        for entry in conditioning or ():
            if isinstance(entry, dict):
                entry.setdefault("prompt_type", name)


def pass_kinds(transformer_options: Mapping) -> tuple[int, ...]:
    """COND or UNCOND for each chunk of the call, from the kinds of the call's conditioning lists.

    Without them (a caller that runs the model outside calc_cond_batch) the indices keep the
    host's meaning for plain CFG: 0 conditional, anything else unconditional.
    """
    order = transformer_options.get("cond_or_uncond") or [0]
    marks = transformer_options.get(PASS_KINDS)
    if marks is None:
        return tuple(COND if index == 0 else UNCOND for index in order)
    return tuple(marks[index] for index in order)


def window_latents(transformer_options: Mapping, chunk: int) -> tuple[int, ...] | None:
    """Indices into the whole latent batch of the `chunk` latents in this call, when a context
    window over the batch names them; None otherwise (latent i of the call is latent i)."""
    window = transformer_options.get("context_window")
    indices = getattr(window, "index_list", None) if getattr(window, "dim", 0) == 0 else None
    if indices is None:
        indices = (transformer_options.get("ad_params") or {}).get("sub_idxs")
    if indices is None or len(indices) != chunk:
        return None
    return tuple(int(i) for i in indices)


def call_latents(transformer_options: Mapping, chunk: int) -> tuple[int, ...]:
    """The batch indices of the call's latents: a window's, or 0..chunk-1."""
    return window_latents(transformer_options, chunk) or tuple(range(chunk))


def row_layout(kinds: Sequence[int], latents: Sequence[int], per_latent: bool) -> list[tuple[int, int]]:
    """(kind, latent index) per key/value row: one row per pass, or one per latent of each pass."""
    if per_latent:
        return [(kind, i) for kind in kinds for i in latents]
    return [(kind, 0) for kind in kinds]


def row_gate(gate: torch.Tensor, passes: int, chunk: int, per_latent: bool) -> torch.Tensor:
    """One step gate per key/value row, from the gate of the host's sigmas (one per latent of the call).

    Rows per latent repeat the latents' gates for every pass; a row serving a whole pass takes
    its first latent's (samplers step all latents of a batch together).
    """
    gate = gate.reshape(-1)
    if gate.numel() != chunk:
        gate = gate[:1].expand(chunk)
    return gate.repeat(passes) if per_latent else gate[:1].expand(passes)
