"""The image prompt: projected tokens for the conditional and unconditional passes of CFG."""

from __future__ import annotations

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


def combine_prompts(prompts: list[ImagePrompt], method: str) -> ImagePrompt:
    """Merge prompts made by one adapter: concat keeps every reference; average, add and subtract
    (first minus the mean of the others) work on the projected tokens and give one reference."""
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
    elif method in ("average", "add"):
        reduce = torch.mean if method == "average" else torch.sum
        cond = reduce(torch.cat([p.cond for p in prompts]), dim=0, keepdim=True)
        uncond = reduce(torch.cat([p.uncond for p in prompts]), dim=0, keepdim=True)
        weights = None
    elif method == "subtract":
        rest_cond = torch.cat([p.cond for p in prompts[1:]]).mean(0, keepdim=True)
        rest_uncond = torch.cat([p.uncond for p in prompts[1:]]).mean(0, keepdim=True)
        cond = first.cond.mean(0, keepdim=True) - rest_cond
        uncond = first.uncond.mean(0, keepdim=True) - rest_uncond
        weights = None
    else:
        raise IPAdapterError(f"Unknown method {method!r}; choose one of {', '.join(PROMPT_COMBINE_METHODS)}.")
    return ImagePrompt(cond, uncond, first.adapter_identity, first.adapter_description, weights)
