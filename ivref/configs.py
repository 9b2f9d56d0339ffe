"""The three cascade presets, ``ci``, ``toy`` and ``paper``, and the names to choose them.

One code path serves every scale; a preset changes only the configuration: sizes, widths,
step counts, the text encoder and the sampling settings (docs/design.md "Scales").
``CascadeConfig.replace_stage`` makes your own from one. Presets are functions, never
files: JSON is written beside checkpoints as an output (see ``to_dict`` / ``from_dict``),
never read as a source of defaults.

The dataclasses the presets are made of, with their checks, live in ``ivref.config_types``;
this module re-exports them, so ``configs.StageConfig`` and ``configs.preset("toy")`` are
imported from one place.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal, TypedDict, get_args

from ivref.config_types import (  # re-exported: configs.X is the class every caller uses
    CascadeConfig,
    DiffusionConfig,
    DistillConfig,
    LossWeighting,
    LRDecay,
    SamplerName,
    StageConfig,
    StageKind,
    TemporalCond,
    TemporalMixing,
    TextConfig,
    TextEncoderName,
    Thresholding,
    TrainConfig,
    UNetConfig,
)

__all__ = [
    "CascadeConfig", "DiffusionConfig", "DistillConfig", "LossWeighting", "LRDecay",
    "PRESETS", "PresetName", "SAMPLING_FIELDS", "SamplerName", "StageConfig", "StageKind",
    "TemporalCond", "TemporalMixing", "TextConfig", "TextEncoderName", "Thresholding",
    "TrainConfig", "UNetConfig", "ci", "paper", "preset", "sampling_differences",
    "scale_from_env", "toy", "with_sampling",
]  # fmt: skip

PresetName = Literal["ci", "toy", "paper"]
PRESETS: tuple[str, ...] = get_args(PresetName)


class _SRSettings(TypedDict, total=False):
    """StageConfig fields that a preset's SR stages share, passed as ``**``: sampling steps,
    sampler and training augmentation level (a stage may set other fields beside them)."""

    sample_steps: int
    aug_train_max_t: float
    sampler: SamplerName | None
    gamma: float | None


class _ToySRSettings(_SRSettings, total=False):
    """``_SRSettings`` and the guidance and thresholding, shared too in the toy's SR stages."""

    guidance_w: float
    thresholding: Thresholding


class _UNetSettings(TypedDict, total=False):
    """UNetConfig's fields that all of the paper's U-Nets share (``**``-passed)."""

    head_dim: int
    text_dim: int
    norm_groups: int
    checkpointing: bool


def _sr_unet(base: UNetConfig, **changes: Any) -> UNetConfig:
    return dataclasses.replace(
        base, cond_channels=base.in_channels, use_aug_embedding=True, **changes
    )


def ci() -> CascadeConfig:
    """Tiny cascade for tests and notebooks in CI (2-core CPU): 4 x 8 x 8 -> 8 x 32 x 32."""
    text = TextConfig(encoder="tiny-t5", dim=32, max_length=48)
    base_unet = UNetConfig(
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        spatial_attention=(False, True),
        temporal_mixing=("attention", "attention"),
        head_dim=16,
        text_dim=text.dim,
        max_frames=8,
        relative_max_distance=8,
        norm_groups=8,
    )
    sr = _sr_unet(base_unet, temporal_mixing=("conv", "conv"))
    train = TrainConfig(batch_size=8, warmup_steps=20, ema_decay=0.99, bf16=False)
    sr_train = dataclasses.replace(train, image_ratio=0.0)
    sr_sampling: _SRSettings = dict(sample_steps=8, aug_train_max_t=0.5)
    # the SSR stages sample as the toy's do (ancestral sampler, gamma 0)
    ssr_sampling: _SRSettings = {**sr_sampling, "sampler": "ancestral", "gamma": 0.0}
    stages = (
        StageConfig("base", "base", 4, 8, 8, 3, base_unet, train, sample_steps=16),
        StageConfig(
            "tsr",
            "tsr",
            8,
            8,
            8,
            6,
            sr,
            sr_train,
            oscillating_guidance=True,  # exercised in tests: a constant w would hide it
            guidance_w=2.0,
            guidance_low_w=0.5,
            **sr_sampling,
        ),
        StageConfig("ssr1", "ssr", 8, 16, 16, 6, sr, sr_train, **ssr_sampling),
        StageConfig(
            "ssr2",
            "ssr",
            8,
            32,
            32,
            6,
            _sr_unet(
                base_unet,
                temporal_mixing=("conv", "conv"),
                spatial_attention=(False, False),
                fully_convolutional=True,
            ),
            dataclasses.replace(sr_train, crop_size=16),
            **ssr_sampling,
        ),
    )
    distill = DistillConfig(to_steps=4, guided_steps=20, halving_steps=20)
    return CascadeConfig("ci", text, DiffusionConfig(), stages, distill)


def toy() -> CascadeConfig:
    """The shipped toy cascade (docs/design.md): 8 x 16 x 16 @ 3 fps -> 16 x 64 x 64 @ 6 fps."""
    text = TextConfig(encoder="minilm", dim=384, max_length=16)
    base_unet = UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 4),
        num_res_blocks=1,  # 3.4M params: ~1.4x cheaper than 2 blocks; enough (docs/field-notes.md)
        spatial_attention=(False, False, True),
        temporal_mixing=("conv", "attention", "attention"),
        head_dim=32,
        text_dim=text.dim,
        max_frames=16,
        relative_max_distance=8,
    )
    sr = _sr_unet(base_unet, channel_mults=(1, 2, 2), temporal_mixing=("conv", "conv", "conv"))
    train = TrainConfig(batch_size=32, warmup_steps=200, ema_decay=0.999, image_ratio=0.2)
    # CHOICE: TSR trains on videos only (an image pack has no motion to interpolate); the
    # training aug level stops at t' = 0.5 (the sampling level, SNR 3, is t' = 0.33).
    # CHOICE, measured (docs/design.md "Thresholding and guidance in the toy world"): no dynamic
    # thresholding anywhere, since toy pixels sit at +-1 and rescaling greys them (base
    # background -0.79 instead of -1; SR error vs truth 15x); no guidance in the SR stages,
    # which match guided quality from their input video at half the passes.
    sr_sampling: _ToySRSettings = dict(
        sample_steps=32, aug_train_max_t=0.5, guidance_w=0.0, thresholding="none"
    )
    # CHOICE, measured (docs/design.md "Sampling the spatial SR stages"): the SSR stages sample
    # with the ancestral sampler at the posterior variance (gamma 0): less excess detail than
    # DDIM (SSR 64 alone: 119% -> 116% of the renders' |Laplacian|) and closer to the truth
    # (PSNR +0.6 dB), at the same number of passes.
    ssr_sampling: _ToySRSettings = {**sr_sampling, "sampler": "ancestral", "gamma": 0.0}
    stages = (
        # CHOICE, measured (docs/design.md "How much guidance the toy base stage gets"): w =
        # 0.25. Guidance hardens the base's edges and the SR stages carry that on: the final
        # videos' detail was 130% of the renders' at w = 1, 123% at 0.25, 119% at 0.
        StageConfig(
            "base",
            "base",
            8,
            16,
            16,
            3,
            base_unet,
            train,
            sample_steps=64,
            guidance_w=0.25,
            thresholding="none",
        ),
        StageConfig(
            "tsr",
            "tsr",
            16,
            16,
            16,
            6,
            sr,
            dataclasses.replace(train, batch_size=16, image_ratio=0.0),
            **sr_sampling,
        ),
        StageConfig(
            "ssr1",
            "ssr",
            16,
            32,
            32,
            6,
            sr,
            dataclasses.replace(train, batch_size=16),
            **ssr_sampling,
        ),
        StageConfig(
            "ssr2",
            "ssr",
            16,
            64,
            64,
            6,
            _sr_unet(
                base_unet,
                base_channels=16,
                channel_mults=(1, 2, 2),
                temporal_mixing=("conv", "conv", "conv"),
                spatial_attention=(False, False, False),
                fully_convolutional=True,
                head_dim=16,
            ),
            dataclasses.replace(train, batch_size=8, crop_size=32),
            **ssr_sampling,
        ),
    )
    # CHOICE, measured (docs/design.md "Distillation in the toy world"): the base samples at
    # w = 0.25, so its student learns w in [0, 0.5], twice that weight. The narrower the
    # range, the closer the guided student stays to its teacher: at w = 0.25 a 300-step
    # guided phase with w_max = 0.5 lands 7.6 dB closer than with w_max = 1, and that one
    # 6.7 dB closer than with w_max = 2. A student asked for w above what it learnt fails
    # with an error that names its range.
    distill = DistillConfig(w_max=0.5)
    return CascadeConfig("toy", text, DiffusionConfig(), stages, distill)


def paper() -> CascadeConfig:
    """The seven-stage cascade of [IV Fig. 6]; widths chosen to match its parameter counts.

    Sizes and fps are from [IV Fig. 6], temporal ops from [IV §2.3, Fig. 7] (docs/paper.md §1);
    the text encoder is T5-XXL, 4096-d [IV §2.2]. Widths and depths are not published: they are
    chosen so that each stage's parameter count is within 10% of the figure's
    (tests/test_unet3d.py checks it).

    Sampling settings, each marked by its source:
    - sample_steps: CHOICE, 256 for the base and 128 for every SR stage (undistilled); the
      distilled students use 8 per stage, which is the paper's [IV §2.7].
    - guidance_w: CHOICE, 5 in the three stages up to 80 x 48 (with oscillation) and 3 above.
      The paper reports other numbers: a constant weight of 6 in its distillation comparison
      [IV Table 1] and oscillating 15 / 1 for large weights [IV §2.6.2], both in the same
      (1 + w) form as ivref. Our oscillation alternates guidance_w with guidance_low_w.
    - oscillating_guidance only in stages at or below 80 x 48: the paper's [IV §2.6.2].

    CHOICE: widths/depths (base_channels x (1, 2, 4, 4[, 4]), num_res_blocks) and the count
    of ``unet3d.count_parameters`` against [IV Fig. 6]:

    | stage | base_channels | res blocks | params | Fig. 6 | error |
    |---|---|---|---|---|---|
    | base | 832 | 2 | 5.60B | 5.6B | +0.0% |
    | tsr1 | 448 | 2 | 1.59B | 1.7B | -6.4% |
    | ssr1 | 320 | 4 | 1.34B | 1.4B | -4.0% |
    | ssr2 | 384 | 2 | 1.17B | 1.2B | -2.5% |
    | tsr2 | 256 | 4 | 726M | 780M | -6.9% |
    | tsr3 | 256 | 3 | 586M | 630M | -7.0% |
    | ssr3 | 192 | 2 | 350M | 340M | +2.9% |
    | total | | | 11.37B | 11.6B | -2.0% |
    """
    text = TextConfig(encoder="t5", dim=4096, max_length=128)
    common: _UNetSettings = dict(text_dim=text.dim, head_dim=64, norm_groups=32, checkpointing=True)
    train = TrainConfig(
        batch_size=128, lr=3e-4, warmup_steps=10_000, ema_decay=0.9999, image_ratio=0.2
    )
    # CHOICE: the TSR stages train on videos only, as the toy's: an image pack has no motion
    # to interpolate (the TSR objective refuses image_ratio > 0, objectives.py)
    video_train = dataclasses.replace(train, image_ratio=0.0)
    base = UNetConfig(
        base_channels=832,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=2,
        spatial_attention=(False, True, True, True),
        temporal_mixing=("attention", "attention", "attention", "attention"),
        max_frames=16,
        relative_max_distance=16,
        **common,
    )

    def sr(
        width: int, depth: int, mults: tuple[int, ...], attention: bool, frames: int
    ) -> UNetConfig:
        return UNetConfig(
            base_channels=width,
            channel_mults=mults,
            num_res_blocks=depth,
            spatial_attention=tuple(attention and i > 0 for i in range(len(mults))),
            temporal_mixing=tuple("conv" for _ in mults),
            fully_convolutional=not attention,
            cond_channels=3,
            use_aug_embedding=True,
            max_frames=frames,
            relative_max_distance=16,
            **common,
        )

    stages = (
        StageConfig(
            "base",
            "base",
            16,
            40,
            24,
            3,
            base,
            train,
            sample_steps=256,  # CHOICE (see docstring)
            guidance_w=5.0,  # CHOICE; paper: constant 6 or 15/1
            oscillating_guidance=True,  # [IV §2.6.2]
        ),
        StageConfig(
            "tsr1",
            "tsr",
            32,
            40,
            24,
            6,
            sr(448, 2, (1, 2, 4, 4), True, 32),
            video_train,
            sample_steps=128,  # CHOICE
            guidance_w=5.0,  # CHOICE; paper: constant 6 or 15/1
            oscillating_guidance=True,  # [IV §2.6.2]
        ),
        StageConfig(
            "ssr1",
            "ssr",
            32,
            80,
            48,
            6,
            sr(320, 4, (1, 2, 4, 4), True, 32),
            train,
            sample_steps=128,  # CHOICE
            guidance_w=5.0,  # CHOICE; paper: constant 6 or 15/1
            oscillating_guidance=True,  # [IV §2.6.2]
        ),
        StageConfig(
            "ssr2",
            "ssr",
            32,
            320,
            192,
            6,
            sr(384, 2, (1, 2, 4, 4), True, 32),
            train,
            sample_steps=128,  # CHOICE
            guidance_w=3.0,  # CHOICE
        ),
        StageConfig(
            "tsr2",
            "tsr",
            64,
            320,
            192,
            12,
            sr(256, 4, (1, 2, 4, 4), False, 64),
            video_train,
            sample_steps=128,  # CHOICE
            guidance_w=3.0,  # CHOICE
        ),
        StageConfig(
            "tsr3",
            "tsr",
            128,
            320,
            192,
            24,
            sr(256, 3, (1, 2, 4, 4), False, 128),
            video_train,
            sample_steps=128,  # CHOICE
            guidance_w=3.0,  # CHOICE
        ),
        StageConfig(
            "ssr3",
            "ssr",
            128,
            1280,
            768,
            24,
            sr(192, 2, (1, 2, 4, 4, 4), False, 128),
            dataclasses.replace(train, crop_size=256),
            sample_steps=128,  # CHOICE
            guidance_w=3.0,  # CHOICE
        ),
    )
    # CHOICE: the students learn w up to 6, the paper's constant weight, which covers ours (5).
    return CascadeConfig("paper", text, DiffusionConfig(), stages, DistillConfig(w_max=6.0))


# The stage fields only sampling reads: a trained model's weights do not depend on them, so a
# cascade may change them without retraining (``ivref export --sampling``).
SAMPLING_FIELDS: tuple[str, ...] = (
    "sample_steps",
    "guidance_w",
    "oscillating_guidance",
    "guidance_low_w",
    "aug_sample_logsnr",
    "sampler",
    "gamma",
    "thresholding",
)


def sampling_differences(stage: StageConfig, other: StageConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (stage's value, other's value)} for each of SAMPLING_FIELDS where they differ."""
    pairs = {f: (getattr(stage, f), getattr(other, f)) for f in SAMPLING_FIELDS}
    return {f: pair for f, pair in pairs.items() if pair[0] != pair[1]}


def with_sampling(stage: StageConfig, source: StageConfig) -> StageConfig:
    """``stage`` (its U-Net and training) with ``source``'s sampling settings (SAMPLING_FIELDS)."""
    return dataclasses.replace(stage, **{f: getattr(source, f) for f in SAMPLING_FIELDS})


def preset(name: str) -> CascadeConfig:
    """The cascade preset ``name``: "ci", "toy" or "paper"."""
    builders = {"ci": ci, "toy": toy, "paper": paper}
    if name not in builders:
        raise ValueError(f"unknown preset {name!r}; allowed presets: {list(PRESETS)}")
    return builders[name]()


def scale_from_env(default: str = "toy") -> str:
    """The scale notebooks run at: ``IVREF_SCALE`` (validated; case and surrounding spaces
    do not matter, so ``CI`` is ``ci``), else ``default`` (also where it is set but blank,
    as ``IVREF_SCALE= jupyter lab`` sets it)."""
    given = os.environ.get("IVREF_SCALE", "")
    name = given.strip().lower() or default
    if name not in PRESETS:
        raise ValueError(f"IVREF_SCALE={given!r} is not a preset; allowed: {list(PRESETS)}")
    return name
