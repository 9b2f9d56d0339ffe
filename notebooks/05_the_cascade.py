# %% [markdown]
# # 05 · The cascade
#
# **Promise:** by the end you can run one prompt through every stage of a video cascade,
# see what each stage adds, choose guidance per stage, and say what each stage costs.
#
# **You will build / learn**
# - the cascaded sampler as a 15-line loop over `cascade.sample_stage`, checked against
#   `Cascade.generate`;
# - one prompt through every stage, side by side, with each stage's frames x size x fps;
# - how to tell temporal SR that interpolates from a cross-fade;
# - guidance per stage, and oscillating guidance;
# - the cost of each stage: U-Net evaluations, FLOPs (`unet3d.count_flops`) and time;
# - an interactive panel (prompt, guidance, steps, seed) that regenerates with the cascade.
#
# **Prerequisites:** notebooks 01 (guidance), 03 (the base stage), 04 (super-resolution).
# Runs in about a minute at `IVREF_SCALE=ci` (a tiny cascade trained here for a few steps,
# so its videos are rough); `toy` (the default) loads the shipped cascade from `data/toy`.

# %%
import dataclasses
import tempfile
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython import display

from ivref import cascade, configs, evaluate, metrics, text, train, unet3d, video

SCALE = configs.scale_from_env()
SMALL = SCALE == "ci"
torch.set_num_threads(min(2, torch.get_num_threads()))  # honours OMP_NUM_THREADS on busy machines
if SMALL:  # every ci stage trained for a few steps (the same Trainer as notebook 03)
    CFG = configs.preset("ci")
    ENCODER = text.build_encoder(CFG.text)
    RUNS = tempfile.TemporaryDirectory(prefix="ivref-nb05-")  # removed when the kernel exits
    models = {}
    for stage, n in zip(CFG.stages, (80, 40, 20, 20), strict=True):
        trainer = train.Trainer(
            CFG, stage.name, f"{RUNS.name}/{stage.name}", text_encoder=ENCODER, batch_size=8,
            seed=0, progress=False, checkpoint_every=10**9,
        )  # fmt: skip
        trainer.fit(n)
        models[stage.name] = trainer.ema.eval()
    C = cascade.Cascade(CFG, models, ENCODER)
else:  # the shipped toy cascade; a clear error names the commands for any missing stage
    C = cascade.load_shipped(["base", "tsr", "ssr1", "ssr2"])
print(f"{C.cfg.name} cascade: {[s.name for s in C.trained_stages]}")

# %% [markdown]
# ## 1. The cascaded sampler
#
# Imagen Video is a chain of diffusion models [IV §2.2, Fig. 6]: a base model samples a
# short, small, low-frame-rate video from text; each following stage raises the frame rate
# (TSR) or the size (SSR; 2x or 4x in the paper, 2x in the toy cascade), conditioned on the stage below's output and on the same text
# [CDM §3]. The frozen text encoder runs once. In code, the whole cascade is a loop:


# %%
def my_generate(model, prompt, seed):
    """Every stage's video for one prompt: base from text, then each SR stage from the last."""
    g = torch.Generator().manual_seed(seed)
    emb, mask = model.encoder.encode([prompt])  # text, encoded once
    videos, previous = [], None
    for stage in model.trained_stages:
        shape = (1, 3, stage.num_frames, stage.height, stage.width)
        noise = torch.randn(shape, generator=g)  # z_1 of this stage
        aug_noise = torch.randn(shape, generator=g) if stage.kind != "base" else None
        previous = cascade.sample_stage(
            model.models[stage.name], stage, model.cfg.diffusion, emb, mask,
            cond_video=previous, noise=noise, aug_noise=aug_noise, generator=g,
        )  # fmt: skip
        videos.append(previous)
    return videos


prompt = "a yellow triangle moving right"
mine = my_generate(C, prompt, seed=0)
final, stages = C.generate([prompt], seed=0, return_stages=True)
for a, b in zip(mine, stages, strict=True):
    torch.testing.assert_close(a, b)
print("teaching copy == Cascade.generate for every stage")

# %% [markdown]
# ## 2. One prompt through every stage
#
# Each stage's output at its own frames x size x fps, then all of them side by side,
# brought to the last stage's frames and size by *nearest* repetition (`video.stage_grid`),
# so you see each stage's pixels and frame steps as they are.

# %%
for stage, out in zip(C.trained_stages, stages, strict=True):
    _, _, f, h, w = out.shape
    print(f"{stage.name:5} {stage.kind:4} {f:2} frames x {w:2} x {h:2} @ {stage.fps:g} fps "
          f"({f / stage.fps:.2f} s), {C.timings[stage.name]:5.2f} s to sample")  # fmt: skip
last = C.trained_stages[-1]
names = " | ".join(s.name for s in C.trained_stages)
video.show(video.stage_grid(stages)[None], captions=[f"{prompt}: {names}"], fps=last.fps,
           width=4 * 128)  # fmt: skip

# %% [markdown]
# Read it column by column: the base stage decides *what* happens (color, shape, direction),
# TSR fills in the frames between, and the SSR stages sharpen edges without moving anything.
# The caption reader agrees (or not) at every stage:

# %%
for stage, out in zip(C.trained_stages, stages, strict=True):
    p = metrics.caption_alignment(out, [prompt])["predictions"][0]
    print(f"{stage.name:5} read as: {p['color']} {p['shape']} moving {p['motion']}")

# %% [markdown]
# ### Does TSR interpolate, or cross-fade?
#
# Frames 0, 2, 4, ... of the final video descend from the base stage's frames (TSR was
# given them: its *key frames*); the frames between are TSR's own. Two cheap fakes could
# fill them: repeat each key frame, or blend its two neighbours (a cross-fade). Repetition
# stands still every other step, which `metrics.motion_progress` catches (no step back
# beyond 1 px, 80% of steps advancing 0.4 px, in pixels of the 64 px, 16-frame videos).
# A cross-fade passes that check: its centroid lands halfway. It is caught by shape
# instead: a blended frame holds two faint overlapping copies, which no single circle,
# square or triangle explains. `metrics.shape_misfit` measures how far each frame is from
# one solid shape: the L1 distance between its largest blob of foreground and the best
# template of the same area and centroid, over the blob's coverage.
# `metrics.inbetween_misfit` is the mean misfit of the frames between key frames minus
# that of the key frames. For a shape of size $L$ whose key frames lie $d$ pixels apart, a
# cross-fade misfits by about $d / L$ more (exactly, for a square moving an even number of
# pixels along pixel edges; the tests derive it): about 0.06 for the toy world's slowest,
# largest shape. On the renders of the 168 evaluation videos at 64 x 64, their cross-fades
# exceed by 0.051 or more, the renders themselves by at most 0.013.
# `evaluate.cascade_report` counts a video as interpolated when it passes the motion check
# and its excess is at most `metrics.MAX_INBETWEEN_MISFIT` (0.03, half of 0.06). A cascade
# trained for a few steps (`IVREF_SCALE=ci`) may have frames without one clear shape: its
# misfit prints as `nan`.

# %%
k = last.num_frames // C.trained_stages[0].num_frames  # frames per key frame: 2
repeated, faded = evaluate.key_frame_baselines(final, k)
scale = metrics.motion_step_scale(last.width, last.height, last.num_frames)
for label, v in (("the cascade", final), ("key frames repeated", repeated),
                 ("key frames cross-faded", faded)):  # fmt: skip
    excess = float(metrics.inbetween_misfit(v, k)[0])
    moves = metrics.motion_progress(v, [prompt], max_back=scale, min_step=0.4 * scale)[0]
    print(f"{label:23} motion progress {'passes' if moves else 'fails '}, in-between misfit "
          f"{excess:+.3f} over the key frames'")  # fmt: skip
j = k * (last.num_frames // (2 * k))  # a key frame mid-clip
frames = (j, j + 1, j + k)  # key, in-between, key
fig, axes = plt.subplots(2, 3, figsize=(6, 4.2))
for row, (label, v) in enumerate((("the cascade", final), ("cross-fade", faded))):
    for ax, f in zip(axes[row], frames, strict=True):
        ax.imshow(
            ((v[0, :, f].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest"
        )
        ax.set_title(f"{label}: frame {f}" + (" (TSR's)" if f % k else ""), fontsize=8)
        ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Guidance per stage, and oscillating guidance
#
# Every stage has its own guidance weight $w$ in $\tilde x = (1 + w)\hat x(z_t, c) -
# w\,\hat x(z_t)$ [CFG, IV §2.6.1]; `generate(guidance=...)` takes one value for all stages
# or a `{stage: w}` mapping. Large $w$ pushes $\hat x$ outside the data range; dynamic
# thresholding pulls it back (`StageConfig.thresholding`; the toy preset turns it off, as
# toy pixels sit at $\pm 1$, notebook 03). At large $w$ that still left artefacts, so
# [IV §2.6.2] *oscillates*: a constant high $w$ for the first steps, then alternating a low
# and the high weight (`guidance.oscillating_schedule`, used for stages whose config sets
# `oscillating_guidance`). The paper does so in its low-resolution stages (the base, the
# first TSR and the SSR stage up to 80 x 48, as `configs.paper()` does) and guides the
# larger ones with a constant weight.

# %%
stage = C.trained_stages[1]
steps = stage.sample_steps
osc = dataclasses.replace(stage, oscillating_guidance=True, guidance_low_w=1.0)
fig, ax = plt.subplots(figsize=(7, 2.5))
ax.step(range(steps), cascade.stage_guidance(osc, 3.0, steps), where="post", label="oscillating")
ax.axhline(3.0, color="gray", ls=":", label="constant w = 3")
ax.set(xlabel="sampling step", ylabel="w", title=f"{stage.name}: guidance per step")
ax.legend()
plt.show()

# %% [markdown]
# Six settings from the same noise: no guidance anywhere; the shipped setting (guidance at
# the base stage only); a high $w = 3$ at the base only, at the SR stages only, and at every
# stage; and $w = 3$ everywhere with the low-resolution stages oscillating between 3 and 1.
# The paper oscillates its stages up to 80 x 48, the first three of its seven [IV §2.6.2];
# the toy cascade has no size that matches, so here the three smallest of its four stages
# oscillate (every stage but the last, a mapping of ours). Beside each, what the caption reader sees
# in the final video and how far it moved from the unguided one (PSNR: higher is closer).


# %%
def with_oscillation(model, on):
    """The same models under a config whose stages but the last oscillate (or not) between
    w and 1 (the paper's stages up to 80 x 48 oscillate, its larger ones do not; the toy
    cascade's three smallest stand in for them)."""
    last_name = model.trained_stages[-1].name
    new = [
        s
        if s.name == last_name
        else dataclasses.replace(s, oscillating_guidance=on, guidance_low_w=1)
        for s in model.cfg.stages
    ]
    return cascade.Cascade(dataclasses.replace(model.cfg, stages=tuple(new)), model.models,
                           model.encoder)  # fmt: skip


stage_names = [s.name for s in C.trained_stages]
base_w = C.trained_stages[0].guidance_w
only = lambda w, chosen: {n: (w if n in chosen else 0.0) for n in stage_names}  # noqa: E731
settings = {
    "no guidance": (False, 0.0),
    f"shipped: base w = {base_w:g}": (False, only(base_w, ["base"])),
    "w = 3 at the base only": (False, only(3.0, ["base"])),
    "w = 3 at the SR stages only": (False, only(3.0, stage_names[1:])),
    "w = 3 everywhere": (False, 3.0),
    "w = 3, oscillating": (True, 3.0),
}  # fmt: skip
finals = {}
for label, (on, w) in settings.items():
    finals[label] = with_oscillation(C, on).generate([prompt], seed=0, guidance=w)
    p = metrics.caption_alignment(finals[label], [prompt])["predictions"][0]
    gap = evaluate.psnr(finals[label], finals["no guidance"]).item()
    gap = f"{gap:5.1f} dB from no guidance" if label != "no guidance" else "the reference"
    print(f"{label:28} read as {p['color']} {p['shape']} moving {p['motion']}; {gap}")
video.show(torch.cat(list(finals.values())), captions=list(finals), fps=last.fps, width=160)

# %% [markdown]
# In the toy world guidance acts mostly at the base stage, which decides the content: at
# `toy`, $w = 3$ at the base alone moves the final video about as far from the unguided one
# as $w = 3$ everywhere (17.8 against 17.6 dB), while $w = 3$ at the SR stages alone moves
# it much less (27.6 dB): they see a conditioning video that already fixes the content.
# That is why the toy preset's SR stages sample with $w = 0$: one U-Net pass per step
# instead of two, at the same error against ground truth (docs/design.md). Oscillating
# lands a little closer to the unguided video (18.7 dB), as it guides less on average; with
# thresholding off and toy pixels at $\pm 1$ there are no artefacts here for it to remove,
# so this demo shows the mechanism, not its benefit. Distance is all this table measures
# (the caption reader reads every setting right for this prompt): it says where guidance
# acts, not which video is better. The base's $w$ was measured too: guidance buys a
# little motion alignment (97.6% at $w = 0$, 98.8% at $w = 0.25$, 100% at $w = 1$, on 168
# samples of the base alone) and hardens the edges that the SR stages then sharpen, so the
# shipped $w = 0.25$ is the largest weight measured whose final videos stay within 25% of
# the renders' fine detail (docs/design.md). Measure here before trusting a setting
# (exercise 2).
#
# ## 4. What each stage costs
#
# Per video, a stage costs (sampling steps) x (U-Net passes per step: 2 with guidance, the
# conditional and the unconditional half, 1 without or for a distilled student [GD]) x
# (FLOPs of one pass). `unet3d.count_flops` counts one pass on the meta device (matmuls,
# convolutions, attention; nothing is allocated). The measured seconds come from
# `Cascade.timings` of a `generate` run.

# %%
emb, _ = C.encoder.encode([prompt])
total_s = sum(C.timings.values())  # of section 2's generate (section 3 used other Cascades)
rows = []
for s in C.trained_stages:
    passes = 1 if s.guidance_w == 0 or C.models[s.name].cfg.use_guidance_embedding else 2
    flops = unet3d.count_flops(C.models[s.name].cfg, s.num_frames, s.height, s.width, emb.shape[1])
    rows.append((s, passes, s.sample_steps * passes, flops))
print(f"{'stage':6} {'out':>14} {'params':>8} {'GFLOP/pass':>11} {'steps':>6} {'passes':>7} "
      f"{'evals':>6} {'GFLOP':>8} {'seconds':>8}")  # fmt: skip
for s, passes, evals, flops in rows:
    params = sum(p.numel() for p in C.models[s.name].parameters())
    size = f"{s.num_frames}x{s.width}x{s.height}"
    print(f"{s.name:6} {size:>14} {params / 1e6:7.2f}M {flops / 1e9:11.3f} {s.sample_steps:6} "
          f"{passes:7} {evals:6} {evals * flops / 1e9:8.1f} {C.timings[s.name]:8.2f}")  # fmt: skip
print(f"whole cascade, one video: {sum(r[2] for r in rows)} U-Net evaluations, "
      f"{sum(r[2] * r[3] for r in rows) / 1e9:.1f} GFLOP, {total_s:.1f} s")  # fmt: skip

# %%
fig, (ax_f, ax_t) = plt.subplots(1, 2, figsize=(10, 3))
labels = [s.name for s, *_ in rows]
ax_f.bar(labels, [r[2] * r[3] / 1e9 for r in rows], color="tab:purple")
ax_f.set(ylabel="GFLOP per video", title="compute per stage (counted)")
ax_t.bar(labels, [C.timings[n] for n in labels], color="tab:orange")
ax_t.set(ylabel="seconds", title="time per stage (measured, this machine)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The two SSR stages take two thirds of the compute at `toy`: they run on the most pixels,
# and a convolution's cost grows with them. The toy ssr2 was built narrow (0.35M
# parameters) to offset its 4x pixels, so a pass costs no more than ssr1's; the base, with
# two passes per guided step, takes a quarter. The measured seconds follow the counts only
# roughly: small models on small frames run well below the CPU's peak rate. That is why
# [IV §2.7] distils every stage down to 8 steps and one pass (notebook 06), and why the
# paper's last SSR stage is convolution-only. `ivref info --scale paper
# --flops` prints the parameters and GFLOP per U-Net pass of the paper's seven stages.
#
# ## 5. Try it: an interactive panel
#
# Change the prompt (the toy vocabulary: 7 colors, 3 shapes, 4 motions, e.g. "a magenta
# square moving down"), the base stage's guidance weight (the SR stages keep their own, as in
# the shipped setting), the sampling steps of every stage and the seed, then press
# *generate*. It needs a live kernel; nothing below depends on it.

# %%
prompt_box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="420px"))
w_slider = widgets.FloatSlider(value=base_w, min=0.0, max=5.0, step=0.25, description="base w")
steps_slider = widgets.IntSlider(value=8 if SMALL else 32, min=1, max=128, description="steps")
seed_box = widgets.IntText(value=0, description="seed")
button, out = widgets.Button(description="generate"), widgets.Output()


def regenerate(_=None):
    with out:
        display.clear_output(wait=True)
        began = time.perf_counter()
        _, videos = C.generate([prompt_box.value], seed=seed_box.value, steps=steps_slider.value,
                               guidance={"base": w_slider.value}, return_stages=True)  # fmt: skip
        print(f"{time.perf_counter() - began:.1f} s; stages: {names}")
        video.show(video.stage_grid(videos)[None], fps=last.fps, width=4 * 128)


button.on_click(regenerate)
display.display(widgets.VBox([prompt_box, widgets.HBox([w_slider, steps_slider]),
                              widgets.HBox([seed_box, button]), out]))  # fmt: skip

# %% [markdown]
# ## Summary
#
# - The cascade is a loop: encode the text once, sample the base from text, then each SR
#   stage from the stage below's output (upsampled and noise-augmented) and the same text.
# - Each stage adds one thing: the base stage content and motion, TSR the frames between,
#   SSR the detail; `video.stage_grid` shows them side by side.
# - TSR interpolates when its in-between frames move the shape (`motion_progress`) *and*
#   hold one solid shape like the key frames (`inbetween_misfit`): a cross-fade passes the
#   first check and fails the second.
# - Guidance is per stage (`generate(guidance={stage: w})`), constant or oscillating.
# - Cost per video = steps x passes x FLOPs per pass; the SSR stages take most of it.

# %% [markdown]
# ## Exercises
#
# 1. Sample 12 prompts (`evaluate.spread_prompts(12)`) through the cascade and score each
#    stage with `evaluate.cascade_report(C, prompts, outputs=...)`: does any SR stage lose
#    caption alignment the base stage had?
# 2. Sweep the base stage's $w$ with the SR stages at $w = 0$, then the SR stages' $w$ with
#    the base fixed. Which stage's guidance changes caption alignment?
# 3. Halve the steps of one stage at a time. Which stage tolerates it best, and how much
#    time does each halving save?
# 4. Count FLOPs at 2x the last stage's size (`unet3d.count_flops`): how does the cost grow?
#
#
# Each answer can be checked below. The checks of 1 and 4 recompute the answer (1 runs the
# cascade on the 12 prompts, minutes at `toy`); 2 and 3 are sweeps whose outcome is yours to
# judge, so their checks test only that your results cover what the exercise asks.

# %%
answer_1 = None  # True if some SR stage scores a lower "all" than the base on the 12 prompts
answer_2 = None  # {stage name: {w: "all" score}}: the base's sweep and at least one SR stage's
answer_3 = None  # {stage name: seconds saved by halving that stage's steps}, every stage
answer_4 = None  # FLOPs of one pass of the last stage at 2x its size / at its size


# %%
def check(name, answer, holds):
    verdict = "not tried yet" if answer is None else ("holds" if holds(answer) else "does not hold")
    print(f"{name}: {verdict}")


def an_sr_stage_loses():
    prompts = evaluate.spread_prompts(12)
    report = evaluate.cascade_report(C, prompts, seed=0)["stages"]
    return any(report[s.name]["all"] < report["base"]["all"] for s in C.trained_stages[1:])


def flops_growth():
    last = C.trained_stages[-1]
    cfg, f = C.models[last.name].cfg, last.num_frames
    return unet3d.count_flops(cfg, f, 2 * last.height, 2 * last.width) / unet3d.count_flops(
        cfg, f, last.height, last.width
    )


def two_sweeps(sweeps):
    names = [s.name for s in C.trained_stages]
    scores = [v for by_w in sweeps.values() for v in by_w.values()]
    return ("base" in sweeps and any(n in sweeps for n in names[1:])
            and all(len(by_w) >= 2 for by_w in sweeps.values()) and all(0 <= v <= 1 for v in scores))  # fmt: skip


check("exercise 1", answer_1, lambda a: bool(a) == an_sr_stage_loses())
check("exercise 2", answer_2, two_sweeps)
check("exercise 3", answer_3,
      lambda a: sorted(a) == sorted(s.name for s in C.trained_stages) and min(a.values()) > 0)  # fmt: skip
check("exercise 4", answer_4, lambda a: abs(float(a) / flops_growth() - 1) < 0.05)

# %% [markdown]
# ## References
#
# [IV] Imagen Video, §2.2 and Fig. 6 (the cascade), §2.6.1-2 (guidance, oscillating
# guidance), §2.7 (distillation for speed). [CDM] Cascaded Diffusion Models, §3. [CFG]
# Classifier-Free Guidance. [GD] On Distillation of Guided Diffusion Models. Full entries
# in REFERENCES.md.
