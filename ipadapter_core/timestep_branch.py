"""SD3.5's image branch (InstantX layout): image tokens that follow the timestep, and a joint attention.

Two things differ from the UNet (and Flux) branch, both dictated by the reference
(diffusers' SD3IPAdapterJointAttnProcessor2_0):
- The image prompt holds encoder features, not tokens: the projection is modulated by the
  diffusion timestep, so it runs once per sampling step (cached per step, shared by every block),
  and each block then shifts and scales the tokens by the same timestep embedding.
- The branch is one softmax over the image stream's own keys and the image tokens' keys
  (query, keys and image keys RMS-normed by the adapter's own norms), added to the block's
  attention output before its output projection. It is not a decoupled attention over image
  tokens alone, so it goes through the host's general attention kernel with the two key sets
  concatenated; the image-token half is 64 tokens per reference, the stream half the latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .adapter import JointBlockProjection
from .attention import AttentionFn, image_attention
from .image_branch import ImageBranch


@dataclass(eq=False)
class TimestepImageBranch(ImageBranch):
    """An ImageBranch whose cond / uncond are encoder features (rows * features_per_row, tokens, width).

    features_per_row: references concatenated in one row (several references without
    unfold_batch); each is projected on its own and their tokens are joined, as for the
    other adapters. token_scale, if given, is per projected token: (rows, features_per_row * N).
    step_cache holds the last step's projection (per-run state, released with the others).
    """

    features_per_row: int = 1
    step_cache: list = field(default_factory=lambda: [None, None, None], repr=False)

    @property
    def rows(self) -> int:
        return self.cond.shape[0] // self.features_per_row

    def step_tokens(self, layout: Sequence[tuple[int, int]], timesteps: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (G, refs*N, width), timestep embedding (G, T)) for this step, one row per layout entry.

        timesteps: (B,) the tensor the diffusion model receives; row g of the layout serves B/G
        consecutive samples and takes the first one's timestep. Computed once per model
        evaluation, not per block: cached on the identity of that tensor, which all blocks share.
        """
        layout = tuple(layout)
        if self.step_cache[0] is timesteps and self.step_cache[1] == (layout, device):
            return self.step_cache[2]
        per_row, rows = self.features_per_row, self.rows
        features = self.on_device("features", lambda: torch.cat([self.cond, self.uncond]).float(), device)
        picks = []
        for kind, latent in layout:
            row = kind * rows + min(latent, rows - 1)
            picks.extend(range(row * per_row, (row + 1) * per_row))
        chosen = torch.cat([features[p : p + 1] for p in picks])
        row_timesteps = timesteps[:: timesteps.shape[0] // len(layout)]
        tokens, temb = self.adapter.project_at(chosen, row_timesteps.repeat_interleave(per_row))
        result = (tokens.reshape(len(layout), -1, tokens.shape[-1]), temb[::per_row])
        self.step_cache[:] = [timesteps, (layout, device), result]
        return result

    def release(self) -> None:
        super().release()
        self.step_cache[:] = [None, None, None]


def joint_image_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    projection: JointBlockProjection,
    tokens: torch.Tensor,
    temb: torch.Tensor,
    heads: int,
    attention: AttentionFn = image_attention,
    token_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The branch of one joint block: Attn(norm_q(q), [norm_k(k); norm_ip_k(K_ip)], [v; V_ip]).

    q, k, v: (B, L, H*d) the image stream's projections before the block's own QK norms.
    tokens (G, N, W) and temb (G, T): this step's projection, G dividing B (row g serves B/G
    consecutive samples). token_scale (G, N) scales the image values. Image keys/values are
    computed in the adapter weights' dtype and joined in the stream's dtype.
    Returns (B, L, H*d), unweighted.
    """
    batch, length, width = q.shape
    d = width // heads
    weight = projection.to_k_ip.weight
    normed = projection.norm_ip(tokens.to(weight.dtype), temb.to(weight.dtype))
    ip_k = projection.norm_ip_k(projection.to_k_ip(normed).unflatten(-1, (heads, d))).flatten(-2)
    ip_v = projection.to_v_ip(normed)
    if token_scale is not None:
        ip_v = ip_v * token_scale[..., None].to(ip_v.dtype)
    repeat = batch // tokens.shape[0]
    ip_k, ip_v = (t.to(q.dtype).repeat_interleave(repeat, dim=0) for t in (ip_k, ip_v))
    q = projection.norm_q(q.unflatten(-1, (heads, d))).flatten(-2)
    k = projection.norm_k(k.unflatten(-1, (heads, d))).flatten(-2)
    return attention(q, torch.cat([k, ip_k], dim=1), torch.cat([v, ip_v], dim=1), heads)
