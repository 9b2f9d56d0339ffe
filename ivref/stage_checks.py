"""Checks of a stage's fields against each other: its sizes and kind against its U-Net, and an
SR stage against the stage before it. ``StageConfig`` and ``CascadeConfig`` run them when
built (config_types.py); each failure names the field, its value and what is allowed. Also
a stage's model against its config (``Cascade``)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

from ivref import config_checks as checks
from ivref import schedules


def check_against_unet(stage: Any) -> None:
    """A ``StageConfig``'s sizes and kind against its U-Net's levels, frames and inputs."""
    o = f"StageConfig({stage.name!r})"
    factor = stage.unet.downsample_factor
    size = stage.train.crop_size
    for name, value in (("width", stage.width), ("height", stage.height), ("crop_size", size)):
        if value is not None and value % factor:
            checks.fail(
                o,
                name,
                value,
                f"must be divisible by the U-Net's downsampling {factor} "
                f"(2 ** (len(channel_mults) - 1))",
            )
    if stage.num_frames > stage.unet.max_frames:
        checks.fail(
            o,
            "num_frames",
            stage.num_frames,
            f"must be <= unet.max_frames ({stage.unet.max_frames})",
        )
    if stage.unet.out_channels != stage.unet.in_channels:
        checks.fail(
            o,
            "unet.out_channels",
            stage.unet.out_channels,
            f"must equal unet.in_channels ({stage.unet.in_channels}): the U-Net predicts v, "
            "which has z_t's shape",
        )
    blank = stage.kind == "tsr" and stage.temporal_cond == "blank"
    want_cond = 0 if stage.kind == "base" else stage.unet.in_channels + blank
    if stage.unet.cond_channels != want_cond:
        checks.fail(
            o,
            "unet.cond_channels",
            stage.unet.cond_channels,
            f"must be {want_cond} for a {stage.kind} stage"
            + (" (RGB + the blank-frame mask)" if blank else ""),
        )
    if stage.temporal_cond == "blank" and stage.kind != "tsr":
        checks.fail(o, "temporal_cond", stage.temporal_cond, "'blank' is for TSR stages only")
    if stage.kind != "base" and not stage.unet.use_aug_embedding:
        checks.fail(o, "unet.use_aug_embedding", False, "SR stages need the augmentation embedding")
    if stage.train.crop_size is not None and (
        stage.kind != "ssr" or stage.train.crop_size > min(stage.width, stage.height)
    ):
        checks.fail(
            o,
            "train.crop_size",
            stage.train.crop_size,
            "only SSR stages crop, to at most min(width, height)",
        )


def check_stage_chain(previous: Any, stage: Any) -> None:
    """An SR stage's input is the previous stage's output, changed only along its own axis."""
    o = f"StageConfig({stage.name!r})"
    same_space = (stage.width, stage.height) == (previous.width, previous.height)
    if stage.kind == "tsr":
        if not same_space:
            checks.fail(
                o,
                "width/height",
                (stage.width, stage.height),
                f"a TSR stage keeps the previous stage's size {(previous.width, previous.height)}",
            )
        if stage.num_frames % previous.num_frames or stage.num_frames == previous.num_frames:
            checks.fail(
                o,
                "num_frames",
                stage.num_frames,
                f"a TSR stage multiplies the previous stage's {previous.num_frames} frames",
            )
        k = stage.num_frames // previous.num_frames  # frame j at fps r is frame kj at fps kr
        if not math.isclose(stage.fps, k * previous.fps, rel_tol=1e-9):
            checks.fail(
                o,
                "fps",
                stage.fps,
                f"must be {k} x the previous stage's {previous.fps} fps ({k * previous.fps}): "
                f"a TSR stage with {k}x the frames covers the same seconds",
            )
    elif stage.kind == "ssr":
        if stage.num_frames != previous.num_frames:
            checks.fail(
                o,
                "num_frames",
                stage.num_frames,
                f"an SSR stage keeps the previous stage's {previous.num_frames} frames",
            )
        if same_space or stage.width % previous.width or stage.height % previous.height:
            checks.fail(
                o,
                "width/height",
                (stage.width, stage.height),
                f"an SSR stage multiplies the previous size {(previous.width, previous.height)}",
            )
        if stage.width // previous.width != stage.height // previous.height:
            checks.fail(
                o,
                "width/height",
                (stage.width, stage.height),
                f"an SSR stage scales width and height of {(previous.width, previous.height)} "
                "by the same whole factor (its conditioning is downsampled by one factor)",
            )
        if stage.fps != previous.fps:
            checks.fail(
                o, "fps", stage.fps, f"an SSR stage keeps the previous stage's {previous.fps} fps"
            )


def warn_untrained_aug_level(stage: Any, diffusion: Any) -> None:
    """Warn when an SR stage's sampling augmentation level lambda' is noisier than any level
    it trains on, lambda(aug_train_max_t) (its network never saw such inputs). A warning, not
    an error: training with little augmentation is a fair experiment."""
    if stage.kind == "base":
        return
    lowest = 0.0 + float(  # 0.0 + : -0.0 would print as "-0"
        schedules.logsnr_cosine(stage.aug_train_max_t, diffusion.logsnr_min, diffusion.logsnr_max)
    )
    if stage.aug_sample_logsnr < lowest - 1e-9:
        warnings.warn(
            f"StageConfig({stage.name!r}): aug_sample_logsnr={stage.aug_sample_logsnr:g} is "
            f"noisier than any level it trains on (aug_train_max_t={stage.aug_train_max_t:g} "
            f"reaches lambda' = {lowest:.4g}); raise aug_train_max_t or aug_sample_logsnr",
            stacklevel=4,
        )


def check_model_config(name: str, got: Any, want: Any) -> None:
    """A stage's model must be built from its stage's ``UNetConfig`` (a model with no
    ``cfg``, e.g. a wrapper, is taken as it is)."""
    if type(got) is not type(want) or got == want:  # want: a UNetConfig
        return
    differ = [
        f"{f.name}: model {getattr(got, f.name)!r}, stage {getattr(want, f.name)!r}"
        for f in dataclasses.fields(want)
        if getattr(got, f.name) != getattr(want, f.name)
    ]
    raise ValueError(
        f"models[{name!r}] was built from another UNetConfig than stage {name!r} of the cascade "
        f"config ({'; '.join(differ)}): build it as VideoUNet(cfg.stage({name!r}).unet), or "
        "give the config it was trained with"
    )
