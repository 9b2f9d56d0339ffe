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
import dataclasses
import time

import matplotlib.pyplot as plt
import torch
from einops import rearrange

from ivref import attention, configs, data, layers, schedules, text, unet3d

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
# Frames then mix in exactly two kinds of layer: **temporal attention** (each pixel attends
# over its own $F$ frames) and **temporal convolution** (kernel 3 over frames, residual branch
# initialised to zero: our CHOICE). Everything else, GroupNorm included, works per frame. The
# paper uses attention in the base and convolutions in the SR stages [IV §2.3]; `ivref`'s toy
# base also has a temporal convolution at its top (full-resolution) level, where attention
# over frames would be the costliest. One ResBlock plus one temporal conv from `ivref.layers`:

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
# **plus the LayerNormed text tokens**: Imagen brings the text in by attention over its tokens
# [IMG §2.5]; putting pixels and text in one softmax is our CHOICE. So
# $\mathrm{softmax}(q k^\top / \sqrt{d})$ is $HW \times (HW + L)$. Temporal attention: the
# queries are one pixel's $F$ frames; the logits get a learned bias indexed by the frame
# distance, $b_{\text{head}}[\mathrm{clip}(j - i, -D, D)]$. [VDM §3] asks for relative
# positions, as learned *vectors* added to the keys and values after Shaw et al. [SHAW]; this
# scalar-per-head table is the simpler form of T5 [T5 §2.1], with one entry per clipped
# distance where T5 groups distances into log-spaced buckets (our CHOICE). A teaching copy of
# temporal attention, checked against `attention.TemporalAttention`:

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
axes[0].imshow(logits.softmax(-1)[0].detach().numpy(), cmap="viridis")
axes[0].set(title="spatial: 16 pixels x (16 pixels + 5 text)", xlabel="key", ylabel="query")
axes[1].imshow(w[0, 0].detach().numpy(), cmap="viridis")
axes[1].set(title="temporal: one pixel, 6 x 6 frames", xlabel="key frame", ylabel="query frame")
axes[2].imshow(tatt.relative_bias(frames)[0].detach().numpy(), cmap="coolwarm")
axes[2].set(title="relative bias b[clip(j - i)] (head 0)", xlabel="j", ylabel="i")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### The whole U-Net at a glance
#
# Every block of the base U-Net with the shape it takes and returns, traced by forward hooks.
# Activations live as `(b f) c h w`: frames ride in the batch, so only the channels and the
# pixel grid change on the way down and up. Each `SpaceTimeBlock` is a ResBlock (which adds
# the conditioning vector: the embedded noise level $\lambda_t$ plus the pooled text, plus
# the frame-position embedding; in SR stages also the embedded augmentation level
# $\lambda'$, and in distilled students the guidance weight $w$), then spatial attention
# over pixels and text (`S`, where configured), then temporal mixing (`T:att` or `T:conv`).
# On the way up each block first concatenates the skip from the matching level (`+skip`).

# %%
trace_unet = unet3d.VideoUNet(BASE.unet).eval()
trace, handles = [], []


def describe(module):
    if not isinstance(module, unet3d.SpaceTimeBlock):
        return type(module).__name__
    mix = {attention.TemporalAttention: "T:att", layers.TemporalConv: "T:conv"}
    parts = ["Res", "S" if module.spatial is not None else "", mix.get(type(module.temporal), "")]
    return "+".join(p for p in parts if p)


for part in ("down", "mid", "up"):
    for i, module in enumerate(getattr(trace_unet, part)):
        tag = f"{part}[{i}]"
        handles.append(module.register_forward_hook(
            lambda m, inp, out, tag=tag: trace.append((tag, describe(m), inp[0].shape, out.shape))
        ))  # fmt: skip
B0, F0 = 2, BASE.num_frames
with torch.no_grad():
    v_trace = trace_unet(
        torch.randn(B0, 3, F0, BASE.height, BASE.width),
        torch.zeros(B0),
        torch.randn(B0, CFG.text.max_length, BASE.unet.text_dim),
        torch.ones(B0, CFG.text.max_length, dtype=torch.bool),
    )
for h in handles:
    h.remove()
print(f"z_t {(B0, 3, F0, BASE.height, BASE.width)} (B, C, F, H, W) -> (b f) = {B0 * F0} images")
for tag, kind, shape_in, shape_out in trace:
    skip = " +skip" if tag.startswith("up") and kind.startswith("Res") else ""  # cat first
    print(f"{tag:8} {kind + skip:18} {tuple(shape_in)} -> {tuple(shape_out)}")
print("v_hat", tuple(v_trace.shape))
assert v_trace.shape == (B0, 3, F0, BASE.height, BASE.width)
assert all(o[0] == B0 * F0 for *_, o in trace)  # frames are never down- or upsampled

# %% [markdown]
# The two padded text tokens get zero weight; the bias is a Toeplitz matrix (constant along
# diagonals), so attention depends on *how far apart* two frames are, not where they are.
# Move the clipping distance $D$: frames further apart than $D$ share one bias value. (The
# cell draws $D = 2$ first; the slider under it redraws it when the notebook runs in Jupyter.
# Nothing below depends on it.)

# %%
import ipywidgets


def show_bias(max_distance=2, frames=12):
    att = attention.TemporalAttention(16, head_dim=8, max_distance=max_distance, groups=4)
    bias = att.relative_bias(frames)[0].detach()
    distinct = len(torch.unique(bias))
    plt.figure(figsize=(3.2, 3))
    plt.imshow(bias.numpy(), cmap="coolwarm")
    plt.title(f"D = {max_distance}: {distinct} distinct values", fontsize=9)
    plt.xlabel("key frame j")
    plt.ylabel("query frame i")
    plt.show()
    return distinct


assert show_bias(2, 12) == 5  # distances clipped to -2..2
ipywidgets.interact(
    show_bias,
    max_distance=ipywidgets.IntSlider(value=2, min=0, max=11),
    frames=ipywidgets.IntSlider(value=12, min=2, max=16),
)

# %% [markdown]
# ## 3. The direction of time
#
# If the bias were symmetric (e.g. initialised to zero) and every other op worked per frame,
# the U-Net would *start* **time-reversal equivariant**: $f(\mathrm{rev}(z)) =
# \mathrm{rev}(f(z))$, so at step 0 it cannot prefer "moving left" to "moving right". `ivref`
# breaks the symmetry twice: a random relative bias and a learned frame-position embedding in
# the per-frame conditioning (a CHOICE that departs from [VDM §3]'s reason for relative
# positions: not depending on absolute frame time). Measure the equivariance gap of the base
# U-Net at init:

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
# Is a symmetric start a trap training can never leave? Not quite. Zero the bias and the frame
# embedding, and the gap is float rounding. The *gradient* there has a part that breaks the
# symmetry: time reversal acts on the parameters as a map $P$ (flip the bias table's distance
# axis, the frame embedding's frame axis, a temporal conv's kernel), and at a symmetric point
# the gradient on the reversed batch, *captions unchanged*, is $P g$. So
# $g_{\text{anti}} = (g - Pg)/2$ is what moves the net off the symmetric point, and on the
# batch plus that reversal it is exactly zero. That pair is a check of $P$, not data: a clip
# of "moving left" played backwards moves right, so the reversal that belongs to the toy
# world swaps the caption's direction too (left and right, up and down). Then the two halves
# no longer cancel: the caption's word is the one thing in the loss that tells the two
# directions of time apart.


# %%
def symmetric_copy(unet):
    sym = unet3d.VideoUNet(BASE.unet)
    sym.load_state_dict(unet.state_dict())
    with torch.no_grad():
        sym.frame_pos.zero_()
        for m in sym.modules():
            if isinstance(m, attention.TemporalAttention):
                m.rel_bias.zero_()
            if isinstance(m, layers.TemporalConv):
                m.conv.weight.zero_()
    return sym


def reverse_param(sym, name, g, f):  # P: what time reversal does to a parameter (or None)
    tconvs = {
        n + ".conv.weight" for n, m in sym.named_modules() if isinstance(m, layers.TemporalConv)
    }
    if name == "frame_pos":
        return torch.cat([g[:f].flip(0), g[f:]])
    if name.endswith("rel_bias"):
        return g.flip(-1)
    if name in tconvs:  # rows are [W_0; W_1; W_2]: reversal swaps W_0 and W_2
        return rearrange(rearrange(g, "(k o) ... -> k o ...", k=3).flip(0), "k o ... -> (k o) ...")
    return None


sym = symmetric_copy(unet).eval()
with torch.no_grad():
    fz = sym(z_t, logsnr, temb, tmask)
    sym_gap = (sym(z_t.flip(2), logsnr, temb, tmask).flip(2) - fz).norm() / fz.norm()
print(f"symmetric start: equivariance gap {sym_gap:.1e}")
assert sym_gap < 1e-5

# %% [markdown]
# Now one real captioned batch of the toy world, the v-MSE of notebook 01, and the ratio
# $\lVert g_{\text{anti}}\rVert / \lVert g_{\text{sym}}\rVert$ over the parameters that
# $P$ moves, for the batch alone, for the batch plus its reversal with the captions
# unchanged, and for the batch plus its reversal with their directions swapped:

# %%
encoder = text.build_encoder(CFG.text)
world = data.ToyVideos(BASE.num_frames, BASE.width, BASE.height, BASE.fps, seed=0)
gen = torch.Generator().manual_seed(0)


def a_batch(b):
    x, caps, _ = world.sample(b, gen)
    return (
        x,
        caps,
        torch.rand(b, generator=gen, dtype=torch.float64),
        torch.randn(x.shape, generator=gen),
    )


def anti_sym(x, caps, t, eps):  # (g - Pg)/2 and (g + Pg)/2 of the v-MSE
    emb, mask = encoder.encode(caps)
    lam = schedules.logsnr_cosine(t).float()
    a, s = (schedules.expand_to(c, x) for c in schedules.alpha_sigma(lam))
    loss = (sym(a * x + s * eps, lam, emb, mask) - (a * eps - s * x)).pow(2).mean()
    sym.zero_grad()
    loss.backward()
    g = {
        n: p.grad
        for n, p in sym.named_parameters()
        if reverse_param(sym, n, p, BASE.num_frames) is not None
    }
    pg = {n: reverse_param(sym, n, v, BASE.num_frames) for n, v in g.items()}
    return (torch.cat([(g[n] - pg[n]).flatten() / 2 for n in g]),
            torch.cat([(g[n] + pg[n]).flatten() / 2 for n in g]))  # fmt: skip


def played_backwards(caption):  # the toy world's caption of a clip played backwards
    swap = {"left": "right", "right": "left", "up": "down", "down": "up"}
    return " ".join(swap.get(word, word) for word in caption.split())


def ratio(pair):
    return float(pair[0].norm() / pair[1].norm())


x, caps, t, eps = a_batch(16)
x2, t2, eps2 = torch.cat([x, x.flip(2)]), torch.cat([t, t]), torch.cat([eps, eps.flip(2)])
frac = ratio(anti_sym(x, caps, t, eps))
frac_kept = ratio(anti_sym(x2, caps + caps, t2, eps2))
frac_swapped = ratio(anti_sym(x2, caps + [played_backwards(c) for c in caps], t2, eps2))
print("antisymmetric / symmetric gradient:")
print(f"  one batch of 16                                {frac:.1e}")
print(f"  + its reversal, captions unchanged             {frac_kept:.1e}")
print(f"  + its reversal, directions swapped (toy world) {frac_swapped:.1e}")
assert frac_kept < 1e-4  # float rounding: the gradient on the reversed half is P g
assert 10 * frac_kept < frac_swapped < frac / 3  # the caption's push: real, yet small

# %% [markdown]
# So one step leaves the symmetric point: the start is not a prison. But nearly all of the
# push is noise: a batch holds more clips moving one way than the other, and its gradient
# follows them. The push that survives in expectation, the caption's, is the swapped pair's:
# a small fraction of one batch's. Averaged over batches (which is what a larger batch does)
# the antisymmetric part shrinks roughly as $1/\sqrt{\text{batches}}$, and the parts from
# independent batches point in nearly unrelated directions:

# %%
antis = torch.stack([anti_sym(*a_batch(8))[0] for _ in range(8)])
shrink = antis.mean(0).norm() / antis.norm(dim=1).mean()
unit = antis / antis.norm(dim=1, keepdim=True)
cos = (unit @ unit.T)[~torch.eye(8, dtype=torch.bool)]
print(f"|mean of 8 batches| / mean |one batch| = {shrink:.2f} (1/sqrt(8) = {8**-0.5:.2f})")
print(f"cosine between batches: mean {cos.mean():+.2f}, max {cos.max():+.2f}")
assert shrink < 0.7

# %% [markdown]
# That is why a symmetric start stalls rather than fails outright: the only push towards
# *a* direction of time is the caption's, which at the symmetric point is a small part of
# each batch's noise (the pair above), so the net takes many steps to find it, and motion
# stays near a coin flip while color and shape are learned. A toy run from a zero bias
# reached 46% motion accuracy: the share of its samples whose shape moves the way the
# caption says (notebook 03 measures it with `metrics.caption_alignment`). It read the
# axis from the caption and guessed the sign; chance over the four directions is 25% (see
# docs/field-notes.md). Random initial biases and a frame embedding hand it a direction
# from step 0.

# %% [markdown]
# ## 4. Temporal convolution vs attention: cost as frames grow
#
# Attention over $F$ frames costs $O(F^2)$ per pixel; a kernel-3 convolution $O(F)$. [IV §2.3]
# uses temporal attention only in the base model (16 frames, 40x24) and temporal convolutions
# in the SR stages, which run at up to 128 frames and 1280x768 pixels; its stated reasons are
# memory and that attention there brought no gain in early experiments. Measured here on CPU,
# one block, 64 channels at 8x8 pixels:


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
# The curves stay close at small $F$ and attention pulls away only at many frames (the
# printed ratio grows with $F$), and that is the lesson: per pixel, temporal attention costs
# $8C^2F$ FLOPs for its projections (q, k, v, out) and $4CF^2$ for $qk^\top$ and the weighted
# sum; the quadratic term only catches up with the projections at $F = 2C$ (128 frames at
# 64 channels). A kernel-3 conv costs $6C^2F$. Counted, attention is 1.33x a conv at any
# small $F$ and 2.67x at $F = 2C$; timed, the ratio is lower throughout (near 1x, or below
# it, at small $F$), because a FLOP is not a millisecond: attention's projections are large
# matrix products, which a CPU runs near its peak, while a temporal conv of 64 channels
# runs well below it. How the ratio grows with $F$ is the count's. Memory differs more: the attention
# weights (the softmax probabilities, activations rather than parameters) are
# $\text{heads} \times F^2$ numbers per pixel. Counted (not timed) up to 512 frames:

# %%
C_, HEADS = 64, 2
frames_all = torch.tensor([8, 16, 32, 64, 128, 256, 512], dtype=torch.float64)
flops = {
    "attention": 8 * C_**2 * frames_all + 4 * C_ * frames_all**2,
    "conv": 6 * C_**2 * frames_all,
}
memory = {"attention": 4 * C_ * frames_all + HEADS * frames_all**2, "conv": 4 * C_ * frames_all}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3))
for name in flops:
    ax1.loglog(frames_all, flops[name], "o-", label=name)
    ax2.loglog(frames_all, memory[name], "o-", label=name)
ax1.axvline(2 * C_, color="gray", ls=":", label="F = 2C")
ax1.set(xlabel="frames F", ylabel="FLOPs per pixel", title=f"one block, C = {C_}")
ax2.set(xlabel="frames F", ylabel="activations per pixel", title=f"{HEADS} heads")
ax1.legend()
plt.show()
quad = 4 * C_ * frames_all**2 / (8 * C_**2 * frames_all)
print(
    {int(f): round(q.item(), 2) for f, q in zip(frames_all, quad, strict=True)},
    "quadratic / projections",
)
assert quad[frames_all == 2 * C_].item() == 1.0
attn_gb = HEADS * 128**2 * 320 * 192 * 2 / 1e9  # bf16 probabilities of one layer, one clip
print(
    f"one attention layer at 128 frames x 320 x 192 would hold {attn_gb:.0f} GB of attention "
    "probabilities (activations, not parameters)"
)

# %% [markdown]
# ## 5. Joint image-video training by masking
#
# [IV §2.6] trains on images too, packed as the frames of a video-length sample. For such a
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
assert not torch.equal(cond[0], cond[1])  # the prompt reaches the output
assert torch.equal(null[0], null[1])  # the null embedding does not depend on the prompt
assert not torch.equal(cond[0], null[0])  # and differs from a prompt's

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
#   frames mix only in temporal attention and temporal convolution (the paper: attention in
#   the base, convolution in the SR stages; our toy base adds a conv at its top level).
# - Temporal attention carries a relative-position bias (T5-style); randomised at init,
#   together with a frame-position embedding, so the net tells forwards from backwards from
#   step 0. A symmetric start is not a trap by itself, but the symmetry-breaking gradient is
#   mostly batch noise (the captions' push is small beside it), so training from it stalls.
# - Attention's quadratic cost in frames shows late (at $F = 2C$); its memory, and no gain in
#   early experiments, are the reasons the paper gives for convolutions in the SR stages.
# - Images train alongside videos by masking temporal mixing to the identity.
# - Text enters pooled (every ResBlock) and token by token (spatial attention); an all-False
#   mask selects the learned null embedding.
#
# ## Exercises
#
# 1. Zero the relative bias and the frame-position embedding of a fresh U-Net and measure the
#    time-reversal gap of section 3 again. What do you expect, and why? (Hint:
#    `symmetric_copy` in section 3 does this and zeroes the temporal convs too; is that needed
#    at init?)
# 2. Extend the cost plot of section 4 with a spatial attention block at 16x16: which grows
#    faster with frames, and why does frames-as-batch make it linear? (Hint: time
#    `attention.SpatialAttention(64, 32, ctx_dim=8, groups=8)` on `(F, 64, 16, 16)` inputs; the
#    check wants the time at 2F over the time at F.)
# 3. Change `BASE.unet` to temporal convs everywhere; how do the parameter count and the
#    forward time change? (Hint: `dataclasses.replace(BASE.unet, temporal_mixing=...)` and
#    `unet3d.count_parameters`.)
# 4. Replace mean pooling of text by attention pooling in `VideoUNet._text` (a subclass) and
#    check that section 6's assertions still hold. (Hint: keep the all-False mask path: the
#    null embedding must not depend on the prompt.)

# %%
answer_1 = None  # the gap ||f(rev z) - rev f(z)|| / ||f(z)|| of your symmetric U-Net
answer_2 = None  # spatial-attention forward time at 2F frames / time at F frames
answer_3 = None  # parameter count of the base U-Net with temporal convs at every level
answer_4 = None  # an instance of your VideoUNet subclass, built from BASE.unet


# %%
def check(name, answer, holds):
    verdict = "not tried yet" if answer is None else ("holds" if holds(answer) else "does not hold")
    print(f"{name}: {verdict}")


def pools_its_own_way_and_keeps_section_6(model):
    """A VideoUNet subclass with its own _text, for which section 6's assertions hold."""
    if not isinstance(model, unet3d.VideoUNet) or type(model)._text is unet3d.VideoUNet._text:
        return False  # the library's own pooling: nothing was replaced
    e, m = encoder.encode(["a red circle moving left", "a blue square moving up"])
    z2 = z_t[:1].expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        cond, null = model.eval()(z2, logsnr, e, m), model(z2, logsnr, e, torch.zeros_like(m))
    return (
        not torch.equal(cond[0], cond[1])
        and torch.equal(null[0], null[1])
        and not torch.equal(cond[0], null[0])
    )


n_conv = len(BASE.unet.channel_mults)
conv_cfg = dataclasses.replace(BASE.unet, temporal_mixing=("conv",) * n_conv)
check("exercise 1", answer_1, lambda a: float(a) < 1e-5)
check("exercise 2", answer_2, lambda a: 1.4 < float(a) < 2.8)  # linear in F, with timing noise
check("exercise 3", answer_3, lambda a: a == unet3d.count_parameters(conv_cfg))
check("exercise 4", answer_4, pools_its_own_way_and_keeps_section_6)

# %% [markdown]
# ## References
#
# [VDM] Video Diffusion Models, §3 (space-time factorised U-Net). [IV] Imagen Video, §2.3
# (architectures), §2.6 (joint training) and Fig. 6. [IMG] Imagen, §2.5 (text in attention).
# [T5] §2.1 (scalar relative-position biases); [SHAW] relative position representations.
# [CFG] classifier-free guidance. Full entries in REFERENCES.md; the equations and every
# citation in docs/paper.md.
