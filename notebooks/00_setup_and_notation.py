# %% [markdown]
# # 00 · Set-up and notation
#
# **Promise:** after this notebook you can run every other ivref notebook, at any scale,
# and read its symbols and tensor shapes without looking anything up.
#
# **You will learn**
# - the notation shared by the papers, the code and the notebooks (`z_t`, `alpha_t`, `v`, ...);
# - the tensor layout `(B, C, F, H, W)` and the names of its axes;
# - the three scales (`ci`, `toy`, `paper`) and how `IVREF_SCALE` picks one;
# - how to run the notebooks (Jupyter, or headless under pytest as CI does).
#
# **Prerequisites:** Python, a little PyTorch. `make test` (or `make demo`) has created
# `.venv`; start Jupyter with `.venv/bin/jupyter lab notebooks/`.

# %%
import dataclasses

import torch

from ivref import configs

print("torch", torch.__version__)

# %% [markdown]
# ## Notation
#
# Imagen Video [IV] is a cascade of diffusion models in continuous time $t \in [0, 1]$
# [VDM-K]. A clean video $x$ is noised as $z_t = \alpha_t x + \sigma_t \epsilon$ with
# $\alpha_t^2 + \sigma_t^2 = 1$; the log signal-to-noise ratio
# $\lambda_t = \log(\alpha_t^2 / \sigma_t^2)$ falls from $+20$ at $t=0$ to $-20$ at $t=1$
# (ivref's bounds; the papers do not give Imagen Video's).
# The networks predict $v = \alpha_t \epsilon - \sigma_t x$ [PD].
#
# **Coming from DDPM** [DDPM]: there, $t$ counts $1, \dots, T$ discrete steps, $\alpha_t =
# 1 - \beta_t$ is *one step's* factor and $\bar\alpha_t = \prod_{s \le t} \alpha_s$, with
# $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$. Here $t$ is
# continuous, and $\alpha_t$ is already the whole signal scale: this course's $\alpha_t$ is
# DDPM's $\sqrt{\bar\alpha_t}$, its $\sigma_t$ is $\sqrt{1 - \bar\alpha_t}$, its $z_t$ is
# $x_t$, and $\lambda_t = \log(\bar\alpha_t / (1 - \bar\alpha_t))$. Nothing here is a
# per-step factor; sampling (notebook 01) steps between any two times $t > s$.
#
# | paper | code | shape | meaning |
# |---|---|---|---|
# | $x$ | `x` | (B, C, F, H, W) | clean video in [-1, 1] |
# | $\epsilon$ | `eps` | (B, C, F, H, W) | standard Gaussian noise |
# | $z_t$ | `z_t` | (B, C, F, H, W) | noisy video at diffusion time t |
# | $t$ | `t` | (B,) | diffusion time in [0, 1] (never a frame index) |
# | $\lambda_t$ | `logsnr_t` | (B,) | log signal-to-noise ratio |
# | $\alpha_t, \sigma_t$ | `alpha_t, sigma_t` | (B,), broadcast to the video | signal and noise scales |
# | $v$, $\hat v$ | `v`, `v_hat` | (B, C, F, H, W) | velocity target and the network's prediction |
# | $\hat x$ | `x_hat` | (B, C, F, H, W) | the denoised estimate |
# | $w$ | `w` | scalar or (B,) | guidance weight: $(1+w)\hat x_c - w \hat x_\emptyset$ [CFG] |
# | $c$ | `text_emb`, `text_mask` | (B, L, D), (B, L) | frozen text-encoder tokens and their mask |
# | $\lambda'$ | `aug_logsnr` | (B,) | noise-augmentation level of an SR stage's input [IV §2.5] |
# | $f$ | `f`, `num_frames` | | frame index and count |
#
# Axes of a video tensor: **B**atch, **C**hannels (RGB), **F**rames, **H**eight, **W**idth.
# Stage sizes are written frames x width x height, as in [IV Fig. 6]; tensors are (..., F, H, W).

# %%
B, C, F, H, W = 2, 3, 8, 16, 16
x = torch.rand(B, C, F, H, W) * 2 - 1  # a clean video batch in [-1, 1]
logsnr_t = torch.tensor([3.0, -3.0])  # one noise level per sample
alpha_t = torch.sigmoid(logsnr_t).sqrt().view(B, 1, 1, 1, 1)
sigma_t = torch.sigmoid(-logsnr_t).sqrt().view(B, 1, 1, 1, 1)
assert torch.allclose(alpha_t**2 + sigma_t**2, torch.ones(()))
eps = torch.randn_like(x)
z_t = alpha_t * x + sigma_t * eps
print("z_t", tuple(z_t.shape), "(B, C, F, H, W)")

# %% [markdown]
# ## The three scales
#
# One code path serves every size: a *preset* changes the configuration, never the code:
# sizes, widths, step counts, the text encoder and the sampling settings (guidance weight,
# thresholding, sampler), as the table printed below shows.
#
# | preset | purpose | where |
# |---|---|---|
# | `ci` | tests and notebooks in CI | 2-core CPU, each notebook < 2 min |
# | `toy` | learning; the shipped cascade; the demo | one GPU in minutes, a laptop CPU in half an hour to 2.5 hours per stage |
# | `paper` | the seven-stage cascade of [IV Fig. 6] | built and counted on PyTorch's meta device |
#
# What exists for the `paper` preset today: its configs, U-Nets of the paper's parameter counts
# (built without memory on the meta device), training with bf16 autocast and activation
# checkpointing, and training on several processes under `torchrun`, data-parallel (DDP;
# notebook 03 runs two processes on the CPU) or sharded (FSDP). What has not run yet: a
# paper-size stage trained on several GPUs.
#
# Each preset is a function returning a frozen `CascadeConfig`: its stages run base first.


# %%
def stage_table(cfg: configs.CascadeConfig) -> None:
    print(f"{cfg.name}: text encoder {cfg.text.encoder} ({cfg.text.dim}-d)")
    for s in cfg.stages:
        unet = s.unet
        widths = [unet.base_channels * m for m in unet.channel_mults]
        print(
            f"  {s.name:5s} {s.kind:4s} {s.num_frames:3d} x {s.width:4d} x {s.height:3d} "
            f"@ {s.fps:g} fps  widths {widths}  temporal {'/'.join(unet.temporal_mixing)}"
        )


for name in configs.PRESETS:
    stage_table(configs.preset(name))

# %% [markdown]
# ## The cascade's big picture
#
# Why a cascade? One model cannot afford 128 frames of 1280 x 768 pixels. The paper's base
# model makes 16 frames at 40 x 24 and 3 fps (5.3 s); each later stage either doubles the frame
# rate (TSR: 3 -> 6 -> 12 -> 24 fps, so 16 -> 32 -> 64 -> 128 frames over the same 5.3 s) or
# enlarges the frames (SSR: x2, x4, x4 in width and height), each conditioned on the stage
# before and on the text [IV §2.2, Fig. 6]. Stage by stage:

# %%
paper = configs.preset("paper")
prev = None
for s in paper.stages:
    dur = s.num_frames / s.fps
    if prev is None:
        change = "from text"
    else:
        change = f"x{s.num_frames // prev.num_frames} frames, x{s.width // prev.width} size"
    print(f"{s.name:5s} {s.num_frames:3d} x {s.width:4d} x {s.height:3d} @ {s.fps:2g} fps "
          f"({dur:.2f} s)  {change}")  # fmt: skip
    prev = s
assert {round(s.num_frames / s.fps, 2) for s in paper.stages} == {5.33}

# %% [markdown]
# Configs check themselves when they are built: a value that cannot work raises at once and
# names the field. Here a super-resolution stage that does not match the stage before it:

# %%
toy = configs.preset("toy")
try:
    dataclasses.replace(toy, stages=(toy.stages[0], dataclasses.replace(toy.stages[2])))
except ValueError as err:
    print("ValueError:", err)
else:
    raise AssertionError("an SSR stage must keep the base stage's frame count")

# %% [markdown]
# ## Choosing the scale
#
# Every notebook reads the scale from the environment variable `IVREF_SCALE` (default `toy`).
# CI runs them all at `ci`:
#
# ```bash
# IVREF_SCALE=ci .venv/bin/pytest --nbval-lax --nbval-current-env notebooks/*.ipynb
# ```
#
# In Jupyter, set it before the first import, e.g. `%env IVREF_SCALE=ci`.

# %%
scale = configs.scale_from_env()
cfg = configs.preset(scale)
print(f"this run uses the {scale!r} preset: base stage makes", end=" ")
print(f"{cfg.stages[0].num_frames} x {cfg.stages[0].width} x {cfg.stages[0].height} videos")

# %% [markdown]
# ## How the notebooks are kept
#
# - `notebooks/NN_topic.py` (jupytext percent format) is the source you edit; the paired
#   `NN_topic.ipynb` is committed beside it with outputs stripped. After editing the `.py`, run
#   `make sync-notebooks`; a test checks that both carry the same cells.
# - Notebooks are *clients* of the `ivref` package: they write short teaching copies of one
#   idea, check them against the library, then use the library.
#
# ## Summary
# - Videos are `(B, C, F, H, W)`; `t` is diffusion time, `f` a frame.
# - $z_t = \alpha_t x + \sigma_t \epsilon$, $\alpha_t^2 + \sigma_t^2 = 1$, $\lambda_t$ is the log-SNR.
# - `configs.preset("ci" | "toy" | "paper")` gives the cascade; `IVREF_SCALE` picks it.
#
# ## Exercises
# 1. Which stages of `configs.preset("paper")` have no spatial attention, and why might the
#    largest ones do without it? (The paper says only that its last stage is fully
#    convolutional; which middle stages keep spatial attention is ivref's choice. Hint:
#    `s.unet.spatial_attention`; spatial attention over
#    $HW$ pixels costs $O((HW)^2)$ per frame, notebook 02 section 2; and notebook 04, section 4,
#    samples a crop-trained stage at a size it never saw.)
# 2. Make a `toy` variant whose base stage has 16 frames (hint: `dataclasses.replace`); which
#    other stages must change so that the cascade still validates?
# 3. Check numerically that $\lambda_t = \log(\alpha_t^2/\sigma_t^2)$ for the `alpha_t` above.
#    (Hint: `alpha_t` and `sigma_t` are shaped `(B, 1, 1, 1, 1)`; flatten them first.)
#
# Put your answers in the cell below and run the check after it; it says, per exercise,
# whether your answer holds (and stays quiet about the ones you have not tried).

# %%
answer_1 = None  # the names of the paper stages without spatial attention, e.g. ["ssr9"]
answer_2 = None  # your CascadeConfig whose base stage makes 16 frames
answer_3 = None  # your logsnr, shape (B,), computed from alpha_t and sigma_t


# %%
def check(name, answer, holds):
    verdict = "not tried yet" if answer is None else ("holds" if holds(answer) else "does not hold")
    print(f"{name}: {verdict}")


no_spatial = {s.name for s in configs.preset("paper").stages if not any(s.unet.spatial_attention)}
check("exercise 1", answer_1, lambda a: set(a) == no_spatial)
check("exercise 2", answer_2, lambda a: a.stages[0].num_frames == 16 and len(a.stages) >= 2)
check("exercise 3", answer_3, lambda a: torch.allclose(a.flatten(), logsnr_t, atol=1e-5))
check("a wrong answer, for example", ["tsr1"], lambda a: set(a) == no_spatial)

# %% [markdown]
# ## References
# [IV] Imagen Video; [VDM] Video Diffusion Models; [VDM-K] Variational Diffusion Models;
# [PD] Progressive Distillation; [CFG] Classifier-Free Guidance; [DDPM] Denoising Diffusion
# Probabilistic Models. Full entries in REFERENCES.md;
# the equations and every citation in docs/paper.md, the package layout in docs/design.md.
