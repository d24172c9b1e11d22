"""The image prompt: projected tokens for the conditional and unconditional passes of CFG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .adapter import IPAdapterModel
from .errors import IPAdapterError


@dataclass(frozen=True)
class ImagePrompt:
    """Tokens an adapter made from reference images, plus which adapter made them.

    cond / uncond: (references, tokens, width) float32 on the CPU, one row per reference
    (after any combining). By default all rows are concatenated into one prompt, as diffusers
    does with several images; unfolded, row i goes to latent i.
    reference_weights: how much each reference's tokens count (scales their values).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    adapter_identity: str
    adapter_description: str
    reference_weights: tuple[float, ...] | None = None

    def check_made_by(self, adapter: IPAdapterModel) -> None:
        if self.adapter_identity != adapter.identity:
            raise IPAdapterError(
                f"This image prompt was encoded by a different IP-Adapter ({self.adapter_description}) than "
                f"the one being applied ({adapter.spec.description}). Apply it with the adapter that encoded it: "
                "connect the same Load IP-Adapter node to Encode Image Prompt and Apply IP-Adapter."
            )

    @property
    def references(self) -> int:
        return self.cond.shape[0]

    def layout(self, unfold: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(cond, uncond, per-token value scale) with one row per prompt the sampler will see."""
        weights = None
        if self.reference_weights is not None:
            weights = torch.tensor(self.reference_weights, dtype=torch.float32)[:, None].expand(self.cond.shape[:2])
        if unfold:
            return self.cond, self.uncond, weights
        width = self.cond.shape[-1]
        flat = None if weights is None else weights.reshape(1, -1)
        return self.cond.reshape(1, -1, width), self.uncond.reshape(1, -1, width), flat


PROMPT_COMBINE_METHODS = ("concat", "average", "add", "subtract")


def weighted_sum(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w_i x_i over dim 0, keeping it."""
    return (rows * weights.to(rows.dtype).view(-1, *[1] * (rows.ndim - 1))).sum(0, keepdim=True)


def check_average_weights(weights: Sequence[float]) -> float:
    """The weights' sum, refusing 0: a weighted average over weights that cancel out is undefined."""
    total = float(sum(weights))
    if total == 0.0:
        raise IPAdapterError("The reference weights add up to 0, so their average is undefined; give at least one reference a weight that does not cancel out.")
    return total


def weighted_average(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w_i x_i / Σ w_i."""
    return weighted_sum(rows, weights) / check_average_weights(weights.tolist())


def counted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w_i x_i divided by how many references count (w_i ≠ 0); zeros when none does.

    With all weights 1 it is the plain mean; a weight scales its reference, and a reference
    with weight 0 is left out entirely, as if it were not there.
    """
    return weighted_sum(rows, weights) / max(int((weights != 0).sum()), 1)


def combine_prompts(prompts: list[ImagePrompt], method: str) -> ImagePrompt:
    """Merge prompts made by one adapter: concat keeps every reference; average, add and subtract
    (first minus the mean of the others) work on the projected tokens and give one reference.
    Each reference counts with its weight (image_weights), so one with weight 0 does not count."""
    first = prompts[0]
    for prompt in prompts[1:]:
        if prompt.adapter_identity != first.adapter_identity:
            raise IPAdapterError(
                f"Image prompts from different IP-Adapters cannot be combined ({first.adapter_description} and "
                f"{prompt.adapter_description}); encode all of them with the same Load IP-Adapter node."
            )
        if prompt.cond.shape[1:] != first.cond.shape[1:]:
            raise IPAdapterError(f"Image prompts with {first.cond.shape[1]} and {prompt.cond.shape[1]} tokens per reference cannot be combined.")
    if method == "concat":
        weights = None
        if any(p.reference_weights is not None for p in prompts):
            weights = tuple(w for p in prompts for w in (p.reference_weights or (1.0,) * p.references))
        cond, uncond = torch.cat([p.cond for p in prompts]), torch.cat([p.uncond for p in prompts])
    elif method in ("average", "add", "subtract"):
        weights = None
        w = [torch.tensor(p.reference_weights or (1.0,) * p.references, dtype=p.cond.dtype) for p in prompts]
        merged = []
        for tokens in ([p.cond for p in prompts], [p.uncond for p in prompts]):
            if method == "average":
                merged.append(weighted_average(torch.cat(tokens), torch.cat(w)))
            elif method == "add":
                merged.append(weighted_sum(torch.cat(tokens), torch.cat(w)))
            else:
                merged.append(counted_mean(tokens[0], w[0]) - counted_mean(torch.cat(tokens[1:]), torch.cat(w[1:])))
        cond, uncond = merged
    else:
        raise IPAdapterError(f"Unknown method {method!r}; choose one of {', '.join(PROMPT_COMBINE_METHODS)}.")
    return ImagePrompt(cond, uncond, first.adapter_identity, first.adapter_description, weights)
