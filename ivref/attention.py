"""Attention of the Video U-Net: spatial (frames as batch, text keys/values) and temporal.

Spatial attention mixes the pixels of one frame and reads the text; temporal attention mixes
one pixel's frames, with a learned relative-position bias [VDM §3] in the style of T5
[T5 §2.1] (a scalar per head and clipped distance, without T5's log-spaced buckets).
Both are ``torch.nn.functional.scaled_dot_product_attention``; on CPU the product runs in float32
even under bf16 autocast (bf16 SDPA backward is ~6x slower there; docs/field-notes.md). A call
with more than ``MAX_SEQUENCES`` sequences is split into chunks: CUDA's fused attention fails
for 65,536 or more in one call, which temporal attention reaches at B*H*W >= 65,536.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ivref import layers

MAX_SEQUENCES = 65_535  # sequences (first axis of q, k, v) per fused-attention call


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over (N, heads, tokens, d); fp32 on CPU under autocast.

    ``mask`` is boolean (True = may attend) or an additive float bias, broadcastable to
    (N, heads, L_q, L_k). N above ``MAX_SEQUENCES`` runs in chunks of at most that many
    (each sequence is independent, so the result is the same).
    """
    n = q.shape[0]
    if n <= MAX_SEQUENCES:
        return _attend(q, k, v, mask)
    per_row = mask is not None and mask.ndim == 4 and mask.shape[0] == n
    chunks = []
    for start in range(0, n, MAX_SEQUENCES):
        rows = slice(start, start + MAX_SEQUENCES)
        chunk_mask = mask[rows] if per_row and mask is not None else mask  # per_row: not None
        chunks.append(_attend(q[rows], k[rows], v[rows], chunk_mask))
    return torch.cat(chunks, dim=0)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            mask = mask.float() if mask is not None and mask.is_floating_point() else mask
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return out.to(torch.get_autocast_dtype("cpu"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SpatialAttention(nn.Module):
    """Self-attention over a frame's pixels, text tokens appended to keys/values [IMG App. D.3.1].

    keys = [k(GN(x)) of the H*W pixels ; k_text(LN(c))],  values likewise, masked by text_mask;
    out = x + proj(attention).  Frames are batch, so no frame sees another [VDM §3].
    CHOICE (docs/paper.md §4): the LayerNormed text is concatenated to the keys/values of every
    spatial self-attention. With ``self_attend=False`` it is pure cross-attention (keys/values
    from text only), used at the lowest level of fully convolutional stages [IV §2.3].
    Input x (B*F, C, H, W), ctx (B, L, E), ctx_mask (B, L) bool -> (B*F, C, H, W).
    """

    def __init__(
        self, channels: int, head_dim: int, ctx_dim: int, groups: int, self_attend: bool = True
    ) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.self_attend = self_attend
        self.norm = layers.group_norm(channels, groups)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels) if self_attend else None
        self.ctx_norm = nn.LayerNorm(ctx_dim)
        self.ctx_kv = nn.Linear(ctx_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        b = ctx.shape[0]
        f = n // b
        tokens = rearrange(self.norm(x), "n c h w -> n (h w) c")
        q = rearrange(self.q(tokens), "n s (m d) -> n m s d", m=self.heads)
        ctx_kv = rearrange(
            self.ctx_kv(self.ctx_norm(ctx)), "b l (two m d) -> two b m l d", two=2, m=self.heads
        )
        k, v = (repeat(t, "b m l d -> (b f) m l d", f=f) for t in ctx_kv)
        mask = repeat(ctx_mask, "b l -> (b f) () () l", f=f)
        if self.kv is not None:
            kv = rearrange(self.kv(tokens), "n s (two m d) -> two n m s d", two=2, m=self.heads)
            k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
            mask = torch.cat([mask.new_ones(n, 1, 1, h * w), mask], dim=-1)
        out = rearrange(attend(q, k, v, mask), "n m (h w) d -> n h w (m d)", h=h)
        return x + rearrange(self.proj(out), "n h w c -> n c h w")


class TemporalAttention(nn.Module):
    """Self-attention over one pixel's frames with a relative-position bias [VDM §3, T5 §2.1].

    logits[i, j] = q_i . k_j / sqrt(d) + bias[head, clip(j - i, -D, D)],  D = max_distance.
    CHOICE (docs/paper.md §4): the bias table is initialised randomly (std ``bias_init_std``), not
    to zero: a zero, symmetric bias starts the whole U-Net exactly time-reversal equivariant,
    and from there it learns the direction of motion only slowly (notebook 02). For image
    samples the attention matrix is the identity (each frame attends only to itself,
    out_i = v_i) [IV §2.6, VDM §4].
    Input (B*F, C, H, W) -> same.
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        max_distance: int,
        groups: int,
        bias_init_std: float = 0.5,
    ) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.max_distance = max_distance
        self.norm = layers.group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.rel_bias = nn.Parameter(torch.randn(self.heads, 2 * max_distance + 1) * bias_init_std)

    def relative_bias(self, num_frames: int) -> torch.Tensor:
        """bias[head, i, j] = table[head, clip(j - i, -D, D) + D]: (heads, F, F)."""
        pos = torch.arange(num_frames, device=self.rel_bias.device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance)
        return self.rel_bias[:, rel + self.max_distance]

    def forward(
        self, x: torch.Tensor, num_frames: int, is_image: torch.Tensor | None = None
    ) -> torch.Tensor:
        b = x.shape[0] // num_frames
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "(b f) c h w -> (b h w) f c", f=num_frames)
        q, k, v = rearrange(
            self.qkv(tokens), "n f (three m d) -> three n m f d", three=3, m=self.heads
        )
        bias = rearrange(self.relative_bias(num_frames), "m i j -> () m i j")
        out = attend(q, k, v, bias.to(q.dtype))
        if is_image is not None:  # images: identity attention, so out_i = v_i exactly
            out = torch.where(
                repeat(is_image, "b -> (b h w) () () ()", h=h, w=w), v.to(out.dtype), out
            )
        out = self.proj(rearrange(out, "n m f d -> n f (m d)"))
        return x + rearrange(out, "(b h w) f c -> (b f) c h w", b=b, h=h)
