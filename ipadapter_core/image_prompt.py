"""The image prompt: projected tokens for the conditional and unconditional passes of CFG."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapter import IPAdapterModel
from .errors import IPAdapterError


@dataclass(frozen=True)
class ImagePrompt:
    """Tokens an adapter made from reference images, plus which adapter made them.

    cond / uncond: (rows, tokens, width) float32 on the CPU. One row is one prompt shared by
    the whole latent batch; several rows map row i to latent i (the last row repeats).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    adapter_identity: str
    adapter_description: str

    def check_made_by(self, adapter: IPAdapterModel) -> None:
        if self.adapter_identity != adapter.identity:
            raise IPAdapterError(
                f"This image prompt was encoded by a different IP-Adapter ({self.adapter_description}) than "
                f"the one being applied ({adapter.spec.description}). Connect the same Load IP-Adapter node "
                "to both Encode Image Prompt and Apply IP-Adapter."
            )

    @property
    def rows(self) -> int:
        return self.cond.shape[0]
