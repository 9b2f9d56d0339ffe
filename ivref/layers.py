"""Building blocks of the Video U-Net: scalar embeddings, the ResBlock, temporal conv, resampling.

Every spatial op here works on frames as batch, ``(b f) c h w`` [VDM §3]: a 1x3x3 conv of the
paper is a 2-D 3x3 conv applied to each frame, and GroupNorm normalises each frame on its own
(so no statistic mixes frames: the image-mode exactness of [IV §2.6] depends on it). Only
``TemporalConv`` (here) and ``TemporalAttention`` (attention.py) mix frames.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style features of a scalar per sample: (B,) -> (B, dim) [DDPM App. B].

    emb = [cos(x * f_k), sin(x * f_k)],  f_k = max_period ** (-k / (dim / 2)),  k = 0..dim/2-1.
    Used for logsnr_t, the augmentation level lambda' [IV §2.5] and the guidance weight w [GD];
    callers scale the input so its useful range spans a few radians at the lowest frequency.
    CHOICE: DDPM's frequencies divide by dim/2 - 1 and put sin first; an MLP follows, so the
    difference is immaterial. ``dim`` must be even and at least 2.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim={dim!r} is invalid; allowed: an even int >= 2 (cos and sin halves)")
    half = dim // 2
    dtype = torch.promote_types(x.dtype, torch.float32)
    k = torch.arange(half, device=x.device, dtype=dtype)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = x.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedding(nn.Module):
    """A scalar per sample -> sinusoidal features -> 2-layer SiLU MLP: (B,) -> (B, emb_dim).

    CHOICE: the input is multiplied by ``scale`` first (log-SNR in [-20, 20] -> scale 50 maps it
    to [-1000, 1000], the range DDPM's integer timesteps span).
    """

    def __init__(self, features: int, emb_dim: int, scale: float) -> None:
        super().__init__()
        self.features, self.scale = features, scale
        self.mlp = nn.Sequential(
            nn.Linear(features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(x * self.scale, self.features)  # float32 or wider
        first = cast(nn.Linear, self.mlp[0])  # Sequential's items are typed as Module
        return self.mlp(features.to(first.weight.dtype))  # a bf16 model takes bf16


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups that divide ``channels``."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """Per-frame residual block with scale-shift conditioning [IMG §2.5, VDM §3].

    h = conv1(SiLU(GN(x)));  h = conv2(dropout(SiLU(GN(h) * (1 + scale) + shift)))
    out = skip(x) + h
    where (scale, shift) = Linear(SiLU(emb_f)) and emb_f is the per-frame conditioning (log-SNR,
    pooled text, frame position, ...). Convs are 3x3 on frames (the paper's 1x3x3).
    Input (B*F, C_in, H, W), emb (B*F, E) -> (B*F, C_out, H, W).
    """

    def __init__(
        self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb_f: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(F.silu(emb_f)), "n (two c) -> two n c () ()", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ShiftSum(torch.autograd.Function):
    """y[:, f] = z[:, f, 1] + z[:, f-1, 0] + z[:, f+1, 2], zero beyond the clip's ends.

    z (B, F, 3, ...) holds W_0 h, W_1 h, W_2 h for every frame; y (B, F, ...) is the temporal
    conv. Written out by hand because autograd's version of the slices and shifts allocates a
    zero-filled z-sized gradient per slice and copies into it (the profiler puts those at ~9%
    of a toy base training step on CPU; timed, up to 8% at the TSR: docs/benchmarks.md); here
    the backward writes each part of the gradient once:
    dz[:, f, 1] = dy[:, f],  dz[:, f, 0] = dy[:, f+1],  dz[:, f, 2] = dy[:, f-1].
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: torch.Tensor) -> torch.Tensor:
        y = z[:, :, 1].clone()
        y[:, 1:] += z[:, :-1, 0]  # W_0 h[f-1]
        y[:, :-1] += z[:, 1:, 2]  # W_2 h[f+1]
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> torch.Tensor:
        dz = dy.new_empty((dy.shape[0], dy.shape[1], 3, *dy.shape[2:]))
        dz[:, :, 1] = dy
        dz[:, :-1, 0] = dy[:, 1:]
        dz[:, -1, 0] = 0
        dz[:, 1:, 2] = dy[:, :-1]
        dz[:, 0, 2] = 0
        return dz


class TemporalConv(nn.Module):
    """Residual temporal convolution over frames: x + conv_f(SiLU(GN(x))) [IV §2.3].

    conv_f(h)[f] = W_0 h[f-1] + W_1 h[f] + W_2 h[f+1] + bias   (kernel 3, zero padding)
    CHOICE (docs/paper.md §4): kernel 3, centred, and the branch initialised to zero so the block
    starts as the identity over time. Computed as one 1x1 conv to 3C channels and two frame
    shifts, which needs no (b h w) c f transpose. For image samples (``video_mask`` 0) the
    branch is multiplied by 0: their frames stay independent [IV §2.6]. The norm is per frame
    (GroupNorm on ``(b f) c h w``), so it does not mix frames either.
    Input (B*F, C, H, W) -> same.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.conv = nn.Conv2d(channels, 3 * channels, 1, bias=False)  # [W_0; W_1; W_2]
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.zeros_(self.conv.weight)

    def forward(
        self, x: torch.Tensor, num_frames: int, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = self.conv(F.silu(self.norm(x)))
        bf, _, h, w = z.shape
        z = z.reshape(bf // num_frames, num_frames, 3, -1, h, w)  # channels (k c): a view
        # the bias in z's dtype: a float32 bias would promote a bf16 (autocast) branch and the
        # whole residual stream after it to float32, and every later conv would cast it back
        # (indexing, not einops: einops on a Parameter grows its type cache after
        # torch.compile has traced, and the guard on it costs a second compilation)
        y = ShiftSum.apply(z) + self.bias.to(z.dtype)[:, None, None]
        if video_mask is not None:  # (B,) 1.0 for videos, 0.0 for images
            y = y * rearrange(video_mask.to(y.dtype), "b -> b () () () ()")
        return x + rearrange(y, "b f c h w -> (b f) c h w")


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 conv per frame; frames are kept [VDM §3]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour then a 3x3 conv per frame [VDM §3]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
