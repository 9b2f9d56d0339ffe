# %% [markdown]
# # 02 · The Video U-Net and its text
#
# **Promise:** by the end you can say what every block of Imagen Video's denoiser sees, why it
# is built space-time separable, and how text and "no text" reach it, checked on `ivref`'s own
# `VideoUNet`.
#
# **You will build / learn**
# - a 2-D U-Net block turned space-time separable: 1x3x3 convs, frames as batch;
# - what spatial attention (pixels + text) and temporal attention (frames) attend to;
# - the relative-position bias, and why the net must tell the direction of time at init;
# - the cost of temporal convolution vs temporal attention as the number of frames grows;
# - joint image-video training by masking, text conditioning and the learned null embedding;
# - the seven U-Nets of the paper cascade against [IV Fig. 6].
#
# **Prerequisites:** notebook 01 (v-prediction, guidance). Runs in < 2 min at `IVREF_SCALE=ci`.

# %%
import time

import matplotlib.pyplot as plt
import torch
from einops import rearrange

from ivref import attention, configs, layers, text, unet3d

SCALE = configs.scale_from_env()
CFG = configs.preset(SCALE)
BASE = CFG.stages[0]
torch.manual_seed(0)
torch.set_num_threads(2)
print(SCALE, "base stage:", BASE.num_frames, "x", BASE.width, "x", BASE.height)

# %% [markdown]
# ## 1. From a 2-D block to a space-time separable one
#
# A video $x \in \mathbb{R}^{B \times C \times F \times H \times W}$. [VDM §3] keeps an image
# U-Net's 3x3 convolutions but applies them to each frame: a $1 \times 3 \times 3$ 3-D
# convolution. That is exactly a 2-D conv with frames folded into the batch,
# `(b f) c h w`, which is how `ivref` stores activations. Here is the teaching copy, checked
# against `Conv3d`:

# %%
conv2d = torch.nn.Conv2d(4, 6, 3, padding=1).double()
conv3d = torch.nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)).double()
with torch.no_grad():
    conv3d.weight.copy_(rearrange(conv2d.weight, "o i h w -> o i () h w"))
    conv3d.bias.copy_(conv2d.bias)


def per_frame_conv(x):  # (B, C, F, H, W)
    y = conv2d(rearrange(x, "b c f h w -> (b f) c h w"))
    return rearrange(y, "(b f) c h w -> b c f h w", b=x.shape[0])


x = torch.randn(2, 4, 5, 8, 8, dtype=torch.float64)
torch.testing.assert_close(per_frame_conv(x), conv3d(x))
print("1x3x3 Conv3d == per-frame Conv2d")

# %% [markdown]
# Frames then mix in exactly two places: **temporal attention** (each pixel attends over its
# own $F$ frames) and **temporal convolution** (kernel 3 over frames, residual branch
# initialised to zero, PAPER.md §2). Everything else, GroupNorm included, works per frame.
# One ResBlock plus one temporal conv from `ivref.layers`:

# %%
block = layers.ResBlock(8, 8, emb_dim=16, groups=4)
tconv = layers.TemporalConv(8, groups=4)
h = torch.randn(2 * 5, 8, 8, 8)  # (b f) c h w with b=2, f=5
out = tconv(block(h, torch.randn(2 * 5, 16)), num_frames=5)
print(out.shape, "| temporal conv at init is the identity:", torch.equal(tconv(h, 5), h))

# %% [markdown]
# ## 2. What spatial and temporal attention see
#
# Spatial attention: the queries are one frame's $HW$ pixels, the keys are those pixels
# **plus the LayerNormed text tokens** [IMG App.], so
# $\mathrm{softmax}(q k^\top / \sqrt{d})$ is $HW \times (HW + L)$. Temporal attention: the
# queries are one pixel's $F$ frames; the logits get a learned bias indexed by the frame
# distance, $b_{\text{head}}[\mathrm{clip}(j - i, -D, D)]$ [SHAW, VDM §3]. A teaching copy
# of temporal attention, checked against `attention.TemporalAttention`:

# %%
tatt = attention.TemporalAttention(16, head_dim=8, max_distance=4, groups=4).double()
frames = 6
x = torch.randn(frames, 16, 3, 3, dtype=torch.float64)  # one video, (b f) c h w


def temporal_attention_weights(att, x, f):
    tokens = rearrange(att.norm(x), "(b f) c h w -> (b h w) f c", f=f)
    q, k, v = rearrange(att.qkv(tokens), "n f (three m d) -> three n m f d", three=3, m=att.heads)
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + att.relative_bias(f)
    return logits.softmax(-1), v  # (pixels, heads, F, F)


w, v = temporal_attention_weights(tatt, x, frames)
mine = tatt.proj(rearrange(w @ v, "n m f d -> n f (m d)"))
mine = x + rearrange(mine, "(h w) f c -> f c h w", h=3)
torch.testing.assert_close(mine, tatt(x, frames))
print("teaching copy == TemporalAttention; weights", tuple(w.shape))

# %%
satt = attention.SpatialAttention(16, head_dim=8, ctx_dim=12, groups=4).double()
img, ctx = torch.randn(1, 16, 4, 4, dtype=torch.float64), torch.randn(1, 5, 12, dtype=torch.float64)
ctx_mask = torch.tensor([[True, True, True, False, False]])
q = satt.q(rearrange(satt.norm(img), "n c h w -> n (h w) c"))[..., :16]
k_pix = satt.kv(rearrange(satt.norm(img), "n c h w -> n (h w) c"))[..., :16]
k_txt = satt.ctx_kv(satt.ctx_norm(ctx))[..., :16]
logits = q @ torch.cat([k_pix, k_txt], 1).transpose(-1, -2) / 4.0  # one 16-d "head" for the map
logits[..., 16:][~ctx_mask[:, None, :].expand(-1, 16, -1)] = float("-inf")
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].imshow(logits.softmax(-1)[0].detach(), cmap="viridis")
axes[0].set(title="spatial: 16 pixels x (16 pixels + 5 text)", xlabel="key", ylabel="query")
axes[1].imshow(w[0, 0].detach(), cmap="viridis")
axes[1].set(title="temporal: one pixel, 6 x 6 frames", xlabel="key frame", ylabel="query frame")
axes[2].imshow(tatt.relative_bias(frames)[0].detach(), cmap="coolwarm")
axes[2].set(title="relative bias b[clip(j - i)] (head 0)", xlabel="j", ylabel="i")
plt.tight_layout()
plt.show()

# %% [markdown]
# The two padded text tokens get zero weight; the bias is a Toeplitz matrix (constant along
# diagonals), so attention depends on *how far apart* two frames are, not where they are.
#
# ## 3. The direction of time
#
# If the bias were symmetric (e.g. initialised to zero) and every other op worked per frame,
# the whole U-Net would be **time-reversal equivariant**: $f(\mathrm{rev}(z)) =
# \mathrm{rev}(f(z))$ exactly, for every weight reachable by training from there. It could
# never learn "moving left" from "moving right" (measured: 46% in NOTES.md). `ivref` breaks
# the symmetry twice: a random relative bias and a learned frame-position embedding in the
# per-frame conditioning. Measure the equivariance gap of the base U-Net at init:

# %%
unet = unet3d.VideoUNet(BASE.unet).eval()
L, D = CFG.text.max_length, BASE.unet.text_dim
z_t = torch.randn(2, 3, BASE.num_frames, BASE.height, BASE.width)
logsnr, temb, tmask = torch.zeros(2), torch.randn(2, L, D), torch.ones(2, L, dtype=torch.bool)
with torch.no_grad():
    fz = unet(z_t, logsnr, temb, tmask)
    gap = (unet(z_t.flip(2), logsnr, temb, tmask).flip(2) - fz).norm() / fz.norm()
print(f"||f(rev z) - rev f(z)|| / ||f(z)|| = {gap:.3f}")
assert gap > 0.05

# %% [markdown]
# ## 4. Temporal convolution vs attention: cost as frames grow
#
# Attention over $F$ frames costs $O(F^2)$ per pixel; a kernel-3 convolution $O(F)$. That is
# why [IV] uses temporal attention only in the base model (16 frames, 40x24) and temporal
# convolutions in the SR stages, which run at up to 128 frames. Measured here on CPU, one
# block, 64 channels at 8x8 pixels:


# %%
def forward_ms(module, f, reps=3):
    x = torch.randn(f, 64, 8, 8)
    with torch.no_grad():
        module(x, f)
        start = time.perf_counter()
        for _ in range(reps):
            module(x, f)
    return 1000 * (time.perf_counter() - start) / reps


frame_counts = [8, 16, 32, 64, 128] if SCALE == "ci" else [8, 16, 32, 64, 128, 256]
conv_ms = [forward_ms(layers.TemporalConv(64, 8), f) for f in frame_counts]
attn_ms = [forward_ms(attention.TemporalAttention(64, 32, 16, 8), f) for f in frame_counts]
plt.figure(figsize=(5, 3))
plt.loglog(frame_counts, conv_ms, "o-", label="temporal conv (k=3)")
plt.loglog(frame_counts, attn_ms, "s-", label="temporal attention")
plt.xlabel("frames F")
plt.ylabel("forward ms (CPU)")
plt.legend()
plt.show()
print(
    {f: round(a / c, 1) for f, a, c in zip(frame_counts, attn_ms, conv_ms, strict=True)},
    "attn / conv",
)

# %% [markdown]
# ## 5. Joint image-video training by masking
#
# [IV §2.4] trains on images too, packed as the frames of a video-length sample. For such a
# sample (`is_image=True`) temporal attention is masked to the identity (each frame attends
# only to itself) and temporal-conv branches are bypassed, so its frames never mix. Change
# frame 1 and see which output frames move:

# %%
for module in unet.modules():  # give the zero-initialised temporal convs some weight
    if isinstance(module, layers.TemporalConv):
        torch.nn.init.normal_(module.conv.weight, std=0.1)
z2 = z_t.clone()
z2[:, :, 1] += 1.0
is_image = torch.tensor([True, False])
with torch.no_grad():
    a = unet(z_t, logsnr, temb, tmask, is_image=is_image)
    b = unet(z2, logsnr, temb, tmask, is_image=is_image)
changed = (b - a).abs().amax(dim=(1, 3, 4))  # (B, F)
print("image sample, frames changed:", (changed[0] > 0).int().tolist())
print("video sample, frames changed:", (changed[1] > 0).int().tolist())
assert (changed[0] > 0).tolist() == [f == 1 for f in range(BASE.num_frames)]

# %% [markdown]
# ## 6. Text conditioning and the null embedding
#
# The frozen encoder turns a prompt into token embeddings and a mask, padded to a fixed
# length. They enter the U-Net twice: mean-pooled into the per-frame conditioning vector
# (scale-shift GroupNorm in every ResBlock), and as keys/values of spatial attention. A row
# of `text_mask` that is all False means "no text": the U-Net swaps in its **learned null
# embedding** — the unconditional model of classifier-free guidance [CFG].

# %%
encoder = text.build_encoder(CFG.text)
emb, mask = encoder.encode(["a red circle moving left", "a blue square moving up"])
print(encoder.name, tuple(emb.shape), "tokens used:", mask.sum(1).tolist())
unet = unet3d.VideoUNet(BASE.unet).eval()
z1 = z_t[:1].expand(2, -1, -1, -1, -1)
with torch.no_grad():
    cond = unet(z1, logsnr, emb, mask)
    null = unet(z1, logsnr, emb, torch.zeros_like(mask))
print("prompt 0 vs prompt 1:", f"{(cond[0] - cond[1]).norm() / cond[0].norm():.3f}")
print("null for both prompts identical:", torch.equal(null[0], null[1]))
print("cond vs null:", f"{(cond[0] - null[0]).norm() / cond[0].norm():.3f}")

# %% [markdown]
# ## 7. The paper cascade's seven U-Nets
#
# Built on PyTorch's meta device (shapes only, no memory), the `paper` preset's U-Nets
# against the parameter counts of [IV Fig. 6]; widths and depths are our CHOICE (see the
# `configs.paper()` docstring) since the paper does not publish them.

# %%
FIG6 = [5.6e9, 1.7e9, 1.4e9, 1.2e9, 780e6, 630e6, 340e6]
paper = configs.preset("paper")
print(f"{'stage':6} {'F x W x H':>15} {'temporal':>9} {'ours':>8} {'Fig. 6':>8} {'error':>6}")
total = 0
for stage, want in zip(paper.stages, FIG6, strict=True):
    n = unet3d.count_parameters(stage.unet)
    total += n
    size = f"{stage.num_frames}x{stage.width}x{stage.height}"
    print(
        f"{stage.name:6} {size:>15} {stage.unet.temporal_mixing[0]:>9} "
        f"{n / 1e9:7.2f}B {want / 1e9:7.2f}B {100 * (n / want - 1):+5.1f}%"
    )
print(f"total {total / 1e9:.2f}B vs 11.6B ({100 * (total / 11.6e9 - 1):+.1f}%)")

# %% [markdown]
# ## Summary
#
# - The Video U-Net is a 2-D U-Net whose convs, norms and spatial attention work per frame;
#   frames mix only in temporal attention (base) or temporal convolution (SR stages).
# - Temporal attention carries a relative-position bias; randomised at init, together with a
#   frame-position embedding, so the net can tell forwards from backwards.
# - Images train alongside videos by masking temporal mixing to the identity.
# - Text enters pooled (every ResBlock) and token by token (spatial attention); an all-False
#   mask selects the learned null embedding.
#
# ## Exercises
#
# 1. Zero the relative bias and the frame-position embedding of a fresh U-Net and measure the
#    time-reversal gap of section 3 again. What do you expect, and why?
# 2. Extend the cost plot of section 4 with a spatial attention block at 16x16: which grows
#    faster with frames, and why does frames-as-batch make it linear?
# 3. Change `BASE.unet` to temporal convs everywhere; how do the parameter count and the
#    forward time change?
# 4. Replace mean pooling of text by attention pooling in `VideoUNet._text` and check that
#    section 6's assertions still hold.
#
# ## References
#
# [VDM] Video Diffusion Models, §3 (space-time factorised U-Net). [IV] Imagen Video, §2.3-2.4
# and Fig. 6. [IMG] Imagen, App. (text in attention). [SHAW] relative position
# representations. [CFG] classifier-free guidance. Full entries in REFERENCES.md.
