"""Measure a cascade on the toy world: caption alignment per guidance weight and per split.

The toy stand-in for the CLIP-score-vs-guidance curves of [IMG §4] and [IV Table 1]: sample
every prompt of a split with the same seeds, read the videos back with
``metrics.caption_alignment``, and report per-attribute and all-three accuracy. Used to pick a
stage's default guidance weight by measurement (docs/field-notes.md: large w distorts shapes here).
``score_fields`` turns an evaluator's scores into a training log's ``eval_*`` fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ivref import cascade, data, distributed, metrics, objectives, superres
from ivref.cascade import Cascade
from ivref.config_checks import is_integer

ATTRIBUTES = ("color", "shape", "motion", "all")
MAX_SEED = cascade.MAX_SEED  # video i's seed wraps past it, as in Cascade.generate


def spread_prompts(n: int | None) -> list[str] | None:
    """``n`` distinct captions spread over the vocabulary, or None (n omitted or >= 84): all.

    Caption i = (color i mod 7, shape i mod 3, motion i mod 4) for i = 0 .. n - 1: 7, 3 and 4
    are pairwise coprime, so the first 84 are every caption once (Chinese remainder
    theorem), each word's count differs from another's of its kind by at most one, and any
    n >= 7 names every color, shape and motion.
    """
    if n is None or n >= len(data.CAPTIONS):
        return None
    colors, motions = list(data.COLORS), list(data.MOTIONS)
    return [
        data.caption(colors[i % len(colors)], data.SHAPES[i % 3], motions[i % len(motions)])
        for i in range(n)
    ]


def split_prompts(split: str, repeats: int = 1) -> list[str]:
    """Every caption of ``split`` ("train", "heldout" or "all") ``repeats`` times, in order."""
    if split not in data.SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {list(data.SPLITS)}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    return [data.caption(*combo) for combo in data.SPLITS[split]] * repeats


@torch.no_grad()
def alignment(
    cascade: Cascade,
    prompts: Sequence[str],
    *,
    guidance: float | Mapping[str, float] | None = None,
    steps: int | Mapping[str, int] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Caption alignment of ``cascade.generate(prompts)``: accuracies in [0, 1] and ``n``.

    Video i is drawn from seed ``seed + i``, as one ``generate`` call draws it, whatever
    ``batch_size`` (prompts sampled together; None: the cascade's ``default_batch_size``):
    so every video has its own noise, and a sweep over ``guidance`` sees the same starting
    noise at every w. ``guidance`` is one weight for every stage, a {stage name: w} mapping,
    or None (each stage's own); ``steps`` likewise. ``progress``: ``generate``'s bars.
    """
    if batch_size is not None and (not is_integer(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be None or a positive integer")
    prompts = list(prompts)
    size = max(len(prompts), 1) if batch_size is None else int(batch_size)  # None: generate's
    videos = [
        cascade.generate(
            prompts[i : i + size],
            seed=(seed + i) % (MAX_SEED + 1),
            steps=steps,
            guidance=guidance,
            batch_size=batch_size,
            progress=progress,
        )
        for i in range(0, max(len(prompts), 1), size)  # no prompts: generate says so
    ]
    result = metrics.caption_alignment(torch.cat(videos), prompts)
    return {key: float(result[key]) for key in ATTRIBUTES} | {"n": len(prompts)}


def guidance_sweep(
    cascade: Cascade,
    prompts: Sequence[str],
    guidances: Sequence[float | Mapping[str, float] | None],
    *,
    steps: int | Mapping[str, int] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``alignment`` at each guidance setting, one row each, labelled by ``"w"``: a weight for
    every stage (w), {stage name: w} (w for those stages, the others at their own), or None
    (every stage at its own; ``"w"`` is then None). ``steps``, ``batch_size`` and
    ``progress``: as ``alignment``'s."""
    if not guidances:
        raise ValueError("guidances is empty; give at least one weight w >= 0")
    rows: list[dict[str, Any]] = []
    for w in guidances:
        label = dict(w) if isinstance(w, Mapping) else None if w is None else float(w)
        scores = alignment(
            cascade, prompts, guidance=w, steps=steps, seed=seed, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        rows.append({"w": label} | scores)
    return rows


def format_table(rows: Sequence[dict[str, float]], first: str = "w") -> str:
    """A plain-text table of sweep rows, accuracies as percentages."""
    lines = [f"{first:>8} " + " ".join(f"{a:>7}" for a in ATTRIBUTES) + "       n"]
    for row in rows:
        cells = " ".join(f"{100 * row[a]:>6.1f}%" for a in ATTRIBUTES)
        lines.append(f"{_label(row[first]):>8} {cells} {int(row['n']):>7}")
    return "\n".join(lines)


def _label(value: Any) -> str:
    """A table's first cell: a {stage: w} setting as ``stage=w``, None as ``default``."""
    if isinstance(value, Mapping):
        return " ".join(f"{name}={w:g}" for name, w in value.items())
    return "default" if value is None else str(value)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per video of two (B, C, F, H, W) batches in [-1, 1], in dB.

    PSNR = 10 log10(peak^2 / MSE) with peak = 2 (the range of [-1, 1]). Identical videos
    give 126 dB (the MSE is floored at 1e-12), not inf.
    """
    if x.shape != y.shape:  # a batch of 1 broadcast silently against B videos
        raise ValueError(f"psnr of videos of two shapes: {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def render_eval_clips(stage: Any, prompts: Sequence[str], seed: int = 0) -> torch.Tensor:
    """Ground-truth toy clips of ``prompts`` at a stage's size and frame rate (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [data.render(p, stage.num_frames, stage.width, stage.height, stage.fps, g) for p in prompts]
    )


def video_generators(seed: int, rows: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per video: row i's noise comes from stream i of ``seed``
    (``distributed.stream_seed(seed, i)``), whatever batch or process samples it."""
    return [torch.Generator().manual_seed(distributed.stream_seed(seed, i)) for i in rows]


def stage_samples(
    trainer: Any,
    prompts: Sequence[str],
    *,
    steps: int | None = None,
    guidance_w: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples of ``trainer``'s EMA model for ``prompts``, and the truth SR stages refine.

    Base stages sample from text. SR stages refine the low-res view of ground-truth clips
    (``render_eval_clips``, then ``superres.low_res``), which are returned beside the samples
    (None for a base stage). Video i draws all its noise from its own generator
    (``video_generators``), so a video does not depend on how the prompts are split. With
    several processes (torchrun) every rank must call this: each samples its
    ``distributed.share`` of the prompts, and every rank gets all the videos back, on the
    CPU, (len(prompts), C, F, H, W) in [-1, 1]. The sampler runs under the run's bf16
    autocast, as its training steps do (faster; U-Net outputs rounded to bf16), so scores
    logged during training can differ slightly from those of the same weights sampled in
    float32 by ``Cascade.generate`` or ``ivref evaluate``.
    """
    prompts = list(prompts)
    stage, device, context = trainer.stage, trainer.device, trainer.context
    rows, real = distributed.share(len(prompts), context)
    emb, mask = trainer.text.encode([prompts[i] for i in rows])
    cond, truth = None, None
    previous = objectives.previous_stage(trainer.config, stage)
    if previous is not None:
        truth = render_eval_clips(stage, prompts, seed)
        cond = superres.low_res(truth[rows], stage, previous)
    with objectives.bf16_autocast(device, trainer.bf16):  # the steps' own autocast
        videos = cascade.sample_stage(
            trainer.ema,
            stage,
            trainer.diffusion,
            emb,
            mask,
            cond_video=cond,
            steps=steps,
            guidance_w=guidance_w,
            generator=video_generators(seed, rows),
        )
    return distributed.gather_rows(videos.float().cpu(), real, context), truth


def stage_evaluator(
    prompts: Sequence[str] | None = None,
    steps: int | None = None,
    guidance_w: float | None = None,
    seed: int = 0,
) -> Callable[[Any], dict[str, float]]:
    """An evaluator for ``trainer.Trainer``: sample its EMA model and score the samples.

    Base stages are scored by caption alignment; SR stages, which refine the low-res view of
    ground-truth clips and so are judged alone, also by the PSNR of their samples against
    the truth (``psnr``). Defaults: every caption once, the stage's sampler settings. The
    loss curve cannot show a model that ignores time's direction; caption alignment can.

    It is marked ``distributed.on_every_rank``: with several processes every rank samples its
    share of the prompts (``stage_samples``), so N processes evaluate about N times faster
    and none waits idle for the others; the scores are those of one process.
    """

    @distributed.on_every_rank
    def evaluate(trainer: Any) -> dict[str, float]:
        chosen = list(prompts) if prompts is not None else list(data.CAPTIONS)
        videos, truth = stage_samples(
            trainer, chosen, steps=steps, guidance_w=guidance_w, seed=seed
        )
        result = metrics.caption_alignment(videos, chosen)
        scores = {k: result[k] for k in ATTRIBUTES if not math.isnan(result[k])}
        if truth is not None:
            scores["psnr"] = float(psnr(videos, truth).mean())
        return scores

    return evaluate


def cascade_report(
    cascade_model: Cascade,
    prompts: Sequence[str],
    seed: int = 0,
    outputs: Sequence[torch.Tensor] | None = None,
    batch_size: int | None = None,
    steps: int | Mapping[str, int] | None = None,
    progress: bool = False,
) -> dict:
    """Score every stage of one ``generate`` run, and the final videos against the toy world.

    Per stage: caption alignment (same seeds for all). Final videos: the fraction whose
    shape advances frame after frame (``metrics.motion_progress``: temporal SR moves the
    shape rather than repeating frames; its thresholds scaled to the last stage's size), the
    fraction whose in-between frames are as solid as their key frames
    (``metrics.inbetween_misfit`` at most ``metrics.MAX_INBETWEEN_MISFIT``: temporal SR
    interpolates rather than cross-fades), the fraction passing both (``interpolates``; like
    motion progress, of the videos whose caption names a motion), and their mean
    |Laplacian| (``metrics.laplacian_energy``: spatial SR adds detail). Beside them:
    toy-world renders at the final size and baselines, frame repetition of the key frames, a
    cross-fade between them, and trilinear upsampling of renders at the base
    stage's size. Key frames are every k-th, k = the cascade's frame-rate factor (final frames
    / base frames); the in-between checks are left out where k < 2 or where the slowest
    shape's key frames lie less than ``metrics.MIN_KEY_STEP`` pixels apart (there they cannot
    tell a cross-fade from motion: e.g. at the toy TSR's 16 x 16).
    ``outputs``: every stage's videos of a ``generate(prompts, seed=seed, return_stages=True)``
    already run (its ``timings`` are reported); None samples them here, ``batch_size`` at a
    time (None: the cascade's ``default_batch_size``), with ``generate``'s ``steps`` (None:
    each stage's own) and ``progress``.
    """
    prompts = list(prompts)
    stages = cascade_model.trained_stages
    given = {"batch_size": batch_size, "steps": steps}
    for name, value in given.items() if outputs is not None else ():
        if value is not None:
            raise ValueError(
                f"{name}={value!r} with outputs: the videos are sampled already; give {name} "
                "to sample them here (outputs=None), or neither"
            )
    if outputs is None:
        _, outputs = cascade_model.generate(
            prompts, seed=seed, return_stages=True, batch_size=batch_size, steps=steps,
            progress=progress,
        )  # fmt: skip
    elif len(outputs) != len(stages) or any(len(v) != len(prompts) for v in outputs):
        raise ValueError(
            f"outputs must hold one (B={len(prompts)}, ...) batch per trained stage "
            f"({[s.name for s in stages]}); got {len(outputs)} batches"
        )
    report: dict[str, Any] = {"n": len(prompts), "seed": seed, "stages": {}}
    for stage, videos in zip(stages, outputs, strict=True):
        result = metrics.caption_alignment(videos, prompts)
        report["stages"][stage.name] = {k: float(result[k]) for k in ATTRIBUTES}
    report["timings_s"] = {s.name: cascade_model.timings.get(s.name, math.nan) for s in stages}
    last, first = stages[-1], stages[0]
    truth = render_eval_clips(last, prompts, seed)
    small = render_eval_clips(first, prompts, seed)
    k = max(1, last.num_frames // first.num_frames)  # key frames: every k-th
    repeated, blend = key_frame_baselines(truth, max(k, 2))
    trilinear = torch.nn.functional.interpolate(
        small, size=(last.num_frames, last.height, last.width), mode="trilinear"
    )
    scale = metrics.motion_step_scale(last.width, last.height, last.num_frames)

    def passed(videos: torch.Tensor) -> list[bool | None]:  # thresholds in pixels of this size
        return metrics.motion_progress(videos, prompts, max_back=scale, min_step=0.4 * scale)

    def advancing(videos: torch.Tensor) -> float:  # (not ``progress``: the parameter's name)
        return _fraction(passed(videos))

    energy = float(metrics.laplacian_energy(truth).mean())
    moved = passed(outputs[-1])
    final = {
        "motion_progress": _fraction(moved),
        "motion_progress_renders": advancing(truth),
        "motion_progress_repeated": advancing(repeated),
        "motion_progress_blend": advancing(blend),  # a cross-fade passes too (docstring)
    }
    key_step = metrics.slowest_key_step(last.width, last.height, last.num_frames, k)
    if k >= 2 and last.num_frames > k and key_step >= metrics.MIN_KEY_STEP:

        def solid(videos: torch.Tensor) -> list[bool]:  # NaN (not one shape): False
            return (metrics.inbetween_misfit(videos, k) <= metrics.MAX_INBETWEEN_MISFIT).tolist()

        excess = metrics.inbetween_misfit(outputs[-1], k)
        whole = (excess <= metrics.MAX_INBETWEEN_MISFIT).tolist()
        both = [None if m is None else m and w for m, w in zip(moved, whole, strict=True)]
        final |= {
            "solid_inbetweens": _fraction(whole),
            "solid_inbetweens_renders": _fraction(solid(truth)),
            "solid_inbetweens_repeated": _fraction(solid(repeated)),
            "solid_inbetweens_blend": _fraction(solid(blend)),
            "inbetween_misfit": float(excess.nanmean()),
            "interpolates": _fraction(both),
        }
    report["final"] = final | {
        "laplacian_ratio": float(metrics.laplacian_energy(outputs[-1]).mean()) / energy,
        "laplacian_ratio_trilinear": float(metrics.laplacian_energy(trilinear).mean()) / energy,
    }
    return report


def key_frame_baselines(truth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a temporal SR stage that does not interpolate would make of videos (B, C, F, H, W)
    from their key frames 0, k, 2k, ...: each key frame repeated k times, and a cross-fade
    (1 - t) a + t b between neighbouring key frames a and b, t = j / k at the j-th frame
    after a (the last key frame is held)."""
    kept = truth[:, :, ::k]
    repeated = kept.repeat_interleave(k, dim=2)[:, :, : truth.shape[2]]
    after = torch.cat([kept[:, :, 1:], kept[:, :, -1:]], dim=2)  # the next key frame
    t = torch.arange(k, dtype=truth.dtype, device=truth.device) / k
    blend = (1 - t[:, None, None]) * kept[:, :, :, None] + t[:, None, None] * after[:, :, :, None]
    return repeated, blend.flatten(2, 3)[:, :, : truth.shape[2]]


def _fraction(passed: Sequence[bool | None]) -> float:
    """The fraction of True among the videos checked (None: not checked, e.g. no motion)."""
    checked = [p for p in passed if p is not None]
    return sum(checked) / max(len(checked), 1)


def format_cascade_report(report: dict) -> str:
    """A plain-text view of ``cascade_report``."""
    lines = [f"per stage, {report['n']} videos (seed {report['seed']}):"]
    for name, row in report["stages"].items():
        cells = " ".join(f"{a} {100 * row[a]:5.1f}%" for a in ATTRIBUTES)
        lines.append(f"  {name:<8} {cells}  {report['timings_s'][name]:7.1f} s")
    f = report["final"]

    def beside(name: str) -> str:  # the check on renders and baselines, as far as recorded
        named = {"renders": "renders", "repeated": "frame repetition", "blend": "cross-fade"}
        return ", ".join(
            f"{label} {100 * f[f'{name}_{key}']:.1f}%"
            for key, label in named.items()
            if f"{name}_{key}" in f
        )

    lines.append("final videos:")
    lines.append(  # reports written before the cross-fade baseline have none: beside() skips it
        f"  motion progress {100 * f['motion_progress']:.1f}% ({beside('motion_progress')})"
    )
    if "solid_inbetweens" in f:  # cascades that raise the frame rate, reports since it
        lines.append(
            f"  solid in-between frames {100 * f['solid_inbetweens']:.1f}% "
            f"({beside('solid_inbetweens')}); their misfit minus the key frames', mean "
            f"{f['inbetween_misfit']:+.4f}"
        )
        lines.append(f"  interpolates (both) {100 * f['interpolates']:.1f}%")
    lines.append(
        f"  |Laplacian| {100 * f['laplacian_ratio']:.0f}% of renders (trilinear upsampling "
        f"{100 * f['laplacian_ratio_trilinear']:.0f}%)"
    )
    return "\n".join(lines)


def score_fields(scores: Any) -> dict[str, float]:
    """An evaluator's {name: number} as log fields ``eval_<name>`` (0-d tensors and NumPy
    scalars as floats); anything else is refused before the row is written."""
    if not isinstance(scores, dict):
        raise TypeError(f"the evaluator returned {type(scores).__name__}; allowed: {{name: value}}")
    fields: dict[str, float] = {}
    for name, value in scores.items():
        if isinstance(value, int) and not isinstance(value, bool):  # counts stay integers
            fields[f"eval_{name}"] = value
            continue
        try:
            fields[f"eval_{name}"] = float(value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
            raise TypeError(
                f"the evaluator's {name!r} is {type(value).__name__} {str(value)[:40]!r}; "
                "allowed: a number (a float, int, NumPy scalar or one-value tensor)"
            ) from None
    return fields
