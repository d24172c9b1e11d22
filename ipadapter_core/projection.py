"""The image projection networks of the supported IP-Adapters, in their checkpoint layouts.

Each turns image features (CLIP's or SigLIP's, or InsightFace's face embedding for FaceID) into
tokens of the width the adapter's key/value projections read. Module and parameter names follow
the official checkpoints exactly, so `load_state_dict` is strict. XLabs' Flux adapters use
ImageProjModel; InstantX's SD3.5 adapter a Resampler whose every block is modulated by the
diffusion timestep (TimeResampler).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .variants import AdapterSpec


class ImageProjModel(nn.Module):
    """Base / light / vit-G / SDXL: one pooled embedding -> N tokens."""

    def __init__(self, clip_dim: int, cross_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(clip_dim, num_tokens * cross_dim)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(embeds).reshape(embeds.shape[0], self.num_tokens, -1)
        return self.norm(tokens)


class MLPProjModel(nn.Module):
    """Full-face: every encoder token is projected on its own (257 tokens in, 257 out)."""

    def __init__(self, clip_dim: int, cross_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(clip_dim, clip_dim), nn.GELU(), nn.Linear(clip_dim, cross_dim), nn.LayerNorm(cross_dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)


class PerceiverAttention(nn.Module):
    """Latent queries attend to the image tokens and to themselves (the official Resampler block)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, heads * dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, modulation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """modulation: (shift, scale) per sample applied to the normed latents (TimeResampler)."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        if modulation is not None:
            shift, scale = modulation
            latents = latents * (1 + scale[:, None]) + shift[:, None]
        batch, length, _ = latents.shape
        q = self.split_heads(self.to_q(latents))
        k, v = (self.split_heads(t) for t in self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1))
        # The reference scales q and k by dim_head^-1/4 each (more stable in fp16 than scaling once)
        # and takes the softmax in fp32; both are kept so fp16 results match it.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = (weight @ v).permute(0, 2, 1, 3).reshape(batch, length, -1)
        return self.to_out(out)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False))


def learned_queries(num_queries: int, dim: int) -> nn.Parameter:
    """A Resampler's latent queries, (1, num_queries, dim).

    Loading builds on the meta device and adopts the file's values; a random op there would
    import torch's compiler stack (sympy, dynamo: seconds and ~150 MB) for nothing.
    """
    shape = (1, num_queries, dim)
    if torch.get_default_device().type == "meta":
        return nn.Parameter(torch.empty(shape))
    return nn.Parameter(torch.randn(shape) / dim**0.5)


class Perceiver(nn.Module):
    """Latent tokens read the input tokens through depth x (attention + feed-forward), then project out."""

    def __init__(self, dim: int, depth: int, heads: int, embedding_dim: int, output_dim: int, ff_mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim, ff_mult)]) for _ in range(depth))

    def resample(self, latents: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden_states)
        for attention, ff in self.layers:
            latents = attention(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class Resampler(Perceiver):
    """Plus / plus-face: learned queries read all encoder tokens. Portrait-unnorm (FaceID, SDXL):
    the same network reading one token, the raw face embedding."""

    def __init__(self, dim: int, depth: int, heads: int, num_queries: int, embedding_dim: int, output_dim: int, ff_mult: int = 4):
        super().__init__(dim, depth, heads, embedding_dim, output_dim, ff_mult)
        self.latents = learned_queries(num_queries, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.ndim == 2:  # one embedding per reference is one token
            hidden_states = hidden_states[:, None]
        return self.resample(self.latents.repeat(hidden_states.shape[0], 1, 1), hidden_states)


class FaceProjection(nn.Module):
    """FaceID and portrait: a face embedding -> N tokens through a two-layer MLP, each token layer-normed."""

    def __init__(self, face_dim: int, hidden_dim: int, cross_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(nn.Linear(face_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_tokens * cross_dim))
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(face).reshape(face.shape[0], self.num_tokens, -1))


class FacePlusProjection(FaceProjection):
    """FaceID plus / plusv2: the face tokens, refined by a perceiver reading CLIP's hidden states
    of the aligned face crop. plusv2 is the same network with a shortcut: face tokens + scale x refined."""

    def __init__(self, face_dim: int, hidden_dim: int, cross_dim: int, num_tokens: int, perceiver: Perceiver):
        super().__init__(face_dim, hidden_dim, cross_dim, num_tokens)
        self.perceiver_resampler = perceiver

    def forward(self, face: torch.Tensor, clip_hidden_states: torch.Tensor, shortcut_scale: float | None = None) -> torch.Tensor:
        tokens = super().forward(face)
        refined = self.perceiver_resampler.resample(tokens, clip_hidden_states)
        return refined if shortcut_scale is None else tokens + shortcut_scale * refined


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """cos/sin features of the timestep at geometric frequencies, cosines first (the layout the
    InstantX adapter was trained with: diffusers' Timesteps with flip_sin_to_cos, no shift)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(torch.nn.functional.silu(self.linear_1(x)))


class TimeResampler(nn.Module):
    """SD3.5 (InstantX): a Resampler whose inputs and blocks are shifted and scaled by an embedding
    of the diffusion timestep, so the image tokens change along the schedule.

    Layout per block i: `layers.i.0` the perceiver attention, `layers.i.1` the feed-forward (its
    LayerNorm output is modulated), `layers.i.2` (SiLU, Linear) giving the four modulations.
    forward returns the tokens and the timestep embedding, which every joint block's adaptive
    norm of the image tokens also reads.
    """

    def __init__(self, dim: int, depth: int, heads: int, num_queries: int, embedding_dim: int, output_dim: int, timestep_dim: int, ff_mult: int = 4):
        super().__init__()
        self.timestep_dim = timestep_dim
        self.latents = learned_queries(num_queries, dim)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.time_embedding = TimestepEmbedding(timestep_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim, ff_mult), nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim))])
            for _ in range(depth)
        )

    def forward(self, hidden_states: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states (B, tokens, width), timesteps (B,) as the diffusion model receives them."""
        temb = self.time_embedding(sinusoidal_embedding(timesteps, self.timestep_dim).to(hidden_states.dtype))
        latents = self.latents.repeat(hidden_states.shape[0], 1, 1)
        x = self.proj_in(hidden_states) + temb[:, None]
        for attention, ff, modulation in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = modulation(temb).chunk(4, dim=1)
            latents = attention(x, latents, (shift_msa, scale_msa)) + latents
            normed = ff[0](latents) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            latents = ff[3](ff[2](ff[1](normed))) + latents
        return self.norm_out(self.proj_out(latents)), temb


def build_image_projection(spec: AdapterSpec, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate the projection for `spec` on the meta device and adopt the file's tensors.

    Building on meta and assigning avoids initialising (and then overwriting) millions of
    random weights, which dominates load time otherwise.
    """
    with torch.device("meta"):
        if spec.projection == "linear":
            model = ImageProjModel(spec.encoder_width, spec.cross_attention_dim, spec.num_tokens)
        elif spec.projection == "mlp":
            model = MLPProjModel(spec.encoder_width, spec.cross_attention_dim)
        elif spec.projection == "face_mlp":
            model = FaceProjection(spec.face_width, state_dict["proj.0.weight"].shape[0], spec.cross_attention_dim, spec.num_tokens)
        elif spec.projection == "face_plus":
            perceiver = Perceiver(
                dim=state_dict["perceiver_resampler.proj_in.weight"].shape[0],
                depth=spec.resampler_depth,
                heads=spec.resampler_heads,
                embedding_dim=spec.encoder_width,
                output_dim=spec.cross_attention_dim,
                ff_mult=state_dict["perceiver_resampler.layers.0.1.1.weight"].shape[0] // state_dict["perceiver_resampler.proj_in.weight"].shape[0],
            )
            model = FacePlusProjection(spec.face_width, state_dict["proj.0.weight"].shape[0], spec.cross_attention_dim, spec.num_tokens, perceiver)
        else:  # "resampler", "face_resampler", "time_resampler"
            dim = state_dict["proj_in.weight"].shape[0]
            shape = dict(
                dim=dim,
                depth=spec.resampler_depth,
                heads=spec.resampler_heads,
                num_queries=spec.num_tokens,
                embedding_dim=spec.encoder_width,
                output_dim=spec.cross_attention_dim,
                ff_mult=state_dict["layers.0.1.1.weight"].shape[0] // dim,
            )
            if spec.projection == "time_resampler":
                model = TimeResampler(**shape, timestep_dim=state_dict["time_embedding.linear_1.weight"].shape[1])
            else:
                model = Resampler(**shape)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval().requires_grad_(False)
