"""Frozen configuration dataclasses and the three presets: ``ci``, ``toy`` and ``paper``.

One code path serves every scale; a preset changes only sizes and step counts (docs/design.md
"Scales"). Presets are functions, never files: JSON is written beside checkpoints as an
output (see ``to_dict`` / ``from_dict``), never read as a source of defaults.

Every invalid value raises ``ValueError`` at construction, naming the field and what is
allowed, so a bad config fails before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

StageKind = Literal["base", "tsr", "ssr"]
TemporalMixing = Literal["attention", "conv"]
LossWeighting = Literal["v", "eps", "snr_trunc", "x"]
SamplerName = Literal["ddim", "ancestral", "stochastic"]
LRDecay = Literal["none", "linear"]
TemporalCond = Literal["repeat", "blank"]
Thresholding = Literal["dynamic", "static", "none"]
TextEncoderName = Literal["tiny-t5", "minilm", "t5"]
PresetName = Literal["ci", "toy", "paper"]

PRESETS: tuple[str, ...] = get_args(PresetName)
STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fail(owner: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{owner}.{name}={value!r} is invalid: {allowed}")


def _check_positive(owner: str, **fields: Any) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(owner, name, value, "must be a positive integer")


def _check_literal(owner: str, name: str, value: Any, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        _fail(owner, name, value, f"allowed values are {list(allowed)}")


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of one Video U-Net [VDM §3, IV §2.3]; per-level tuples run from the top level down."""

    in_channels: int = 3  # channels of z_t (RGB video)
    out_channels: int = 3  # channels of the prediction (v by default)
    cond_channels: int = 0  # channels of the upsampled low-res video (SR stages), 0 for base
    base_channels: int = 32  # width of the top level
    channel_mults: tuple[int, ...] = (1, 2, 4)  # width multiplier per level; len = levels
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    spatial_attention: tuple[bool, ...] = (False, False, True)  # per level [IMG App. F]
    temporal_mixing: tuple[TemporalMixing, ...] = ("conv", "attention", "attention")  # per level
    fully_convolutional: bool = False  # no spatial attention anywhere; text by cross-attention
    head_dim: int = 32  # channels per attention head
    text_dim: int = 32  # width of the text embeddings it takes (encoder's dim)
    max_frames: int = 16  # size of the learned frame-position embedding table
    relative_max_distance: int = 16  # temporal relative-position bias clips |j - i| here [VDM]
    use_aug_embedding: bool = False  # embed the noise-augmentation level lambda' (SR) [IV §2.5]
    use_guidance_embedding: bool = False  # embed the guidance weight w (distilled) [GD]
    norm_groups: int = 8  # GroupNorm groups; must divide every level's width
    dropout: float = 0.0  # dropout inside ResBlocks
    checkpointing: bool = False  # activation checkpointing per block (paper scale)

    def __post_init__(self) -> None:
        o = "UNetConfig"
        _check_positive(
            o,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            base_channels=self.base_channels,
            num_res_blocks=self.num_res_blocks,
            head_dim=self.head_dim,
            text_dim=self.text_dim,
            max_frames=self.max_frames,
            relative_max_distance=self.relative_max_distance,
            norm_groups=self.norm_groups,
        )
        if not isinstance(self.cond_channels, int) or self.cond_channels < 0:
            _fail(o, "cond_channels", self.cond_channels, "must be an integer >= 0")
        levels = len(self.channel_mults)
        if levels < 1 or any(not isinstance(m, int) or m < 1 for m in self.channel_mults):
            _fail(o, "channel_mults", self.channel_mults, "must be a non-empty tuple of ints >= 1")
        for name in ("spatial_attention", "temporal_mixing"):
            value = getattr(self, name)
            if len(value) != levels:
                _fail(o, name, value, f"needs one entry per level ({levels}, as channel_mults)")
        for mixing in self.temporal_mixing:
            _check_literal(o, "temporal_mixing", mixing, TemporalMixing)
        if self.fully_convolutional and any(self.spatial_attention):
            _fail(
                o,
                "spatial_attention",
                self.spatial_attention,
                "must be all False when "
                "fully_convolutional=True (the fully convolutional stage has no spatial attention)",
            )
        for mult in self.channel_mults:
            width = self.base_channels * mult
            if width % self.norm_groups:
                _fail(o, "norm_groups", self.norm_groups, f"must divide every width ({width})")
            if (any(self.spatial_attention) or "attention" in self.temporal_mixing) and (
                width % self.head_dim
            ):
                _fail(o, "head_dim", self.head_dim, f"must divide every width ({width})")
        if not 0.0 <= self.dropout < 1.0:
            _fail(o, "dropout", self.dropout, "must be in [0, 1)")

    @property
    def downsample_factor(self) -> int:
        """Frame width and height must be divisible by this (one 2x downsample per level)."""
        return 2 ** (len(self.channel_mults) - 1)


@dataclass(frozen=True)
class TextConfig:
    """The frozen text encoder [IV §2.2]; docs/design.md "Text encoders"."""

    encoder: TextEncoderName = "tiny-t5"  # tiny-t5 (ci, seeded), minilm (toy), t5 (local path)
    dim: int = 32  # embedding width D it returns
    max_length: int = 48  # tokens kept; longer prompts are truncated with a warning
    path: str | None = None  # local checkpoint directory (encoder="t5")

    def __post_init__(self) -> None:
        _check_literal("TextConfig", "encoder", self.encoder, TextEncoderName)
        _check_positive("TextConfig", dim=self.dim, max_length=self.max_length)


@dataclass(frozen=True)
class DiffusionConfig:
    """The shared diffusion process and its defaults [VDM §2]; docs/paper.md §2-3."""

    logsnr_min: float = -20.0  # lambda(1), cosine schedule end
    logsnr_max: float = 20.0  # lambda(0), cosine schedule start
    loss: LossWeighting = "v"  # CHOICE: v-MSE (docs/paper.md §2)
    sampler: SamplerName = "ddim"  # default sampler
    gamma: float = 0.3  # ancestral variance interpolation [VDM eq. 4]
    text_dropout: float = 0.1  # CHOICE: null text probability in training [CFG]
    threshold_percentile: float = 0.995  # dynamic thresholding [IMG §2.3]

    def __post_init__(self) -> None:
        o = "DiffusionConfig"
        if not self.logsnr_min < self.logsnr_max:
            _fail(o, "logsnr_min", self.logsnr_min, f"must be < logsnr_max ({self.logsnr_max})")
        _check_literal(o, "loss", self.loss, LossWeighting)
        _check_literal(o, "sampler", self.sampler, SamplerName)
        if not 0.0 <= self.gamma <= 1.0:
            _fail(o, "gamma", self.gamma, "must be in [0, 1]")
        if not 0.0 <= self.text_dropout < 1.0:
            _fail(o, "text_dropout", self.text_dropout, "must be in [0, 1)")
        if not 0.0 < self.threshold_percentile <= 1.0:
            _fail(o, "threshold_percentile", self.threshold_percentile, "must be in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """One stage's training recipe; defaults follow [VDM App. A] where it gives numbers."""

    batch_size: int = 32  # videos per step
    lr: float = 3e-4  # AdamW learning rate [VDM App. A]
    warmup_steps: int = 200  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float = 0.999  # CHOICE: 0.9999 [VDM] is for 100k+ steps; toy runs are short
    grad_clip: float = 1.0  # global gradient-norm clip
    image_ratio: float = 0.0  # fraction of samples that are images (joint training) [IV §2.6]
    crop_size: int | None = None  # train on random crops of this many output pixels [IV §2.3]
    bf16: bool = True  # bf16 autocast (attention kept in fp32 on CPU)
    lr_decay: LRDecay = "none"  # "linear": lr anneals to 0 at the run's last step [PD]

    def __post_init__(self) -> None:
        o = "TrainConfig"
        _check_positive(o, batch_size=self.batch_size)
        if not self.lr > 0:
            _fail(o, "lr", self.lr, "must be > 0")
        if self.warmup_steps < 0:
            _fail(o, "warmup_steps", self.warmup_steps, "must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            _fail(o, "ema_decay", self.ema_decay, "must be in [0, 1)")
        if not self.grad_clip > 0:
            _fail(o, "grad_clip", self.grad_clip, "must be > 0")
        if not 0.0 <= self.image_ratio <= 1.0:
            _fail(o, "image_ratio", self.image_ratio, "must be in [0, 1]")
        if self.crop_size is not None:
            _check_positive(o, crop_size=self.crop_size)
        _check_literal(o, "lr_decay", self.lr_decay, LRDecay)


@dataclass(frozen=True)
class DistillConfig:
    """Guided then progressive distillation of every stage [GD, PD, IV §2.7]."""

    to_steps: int = 8  # sampling steps of the final student (8 per stage in [IV §2.7])
    # Guided phase: w ~ U(0, w_max) [GD]; must cover every weight a distilled stage samples at.
    w_max: float = 4.0
    guided_steps: int = 600  # training steps of the guided phase (student learns w)
    halving_steps: int = 400  # training steps per halving of the sampling steps
    lr: float = 1e-4  # annealed linearly to 0 in every phase, no EMA [PD]
    loss: LossWeighting = "snr_trunc"  # max(SNR, 1) ||x~ - x_hat||^2 [PD §4]

    def __post_init__(self) -> None:
        o = "DistillConfig"
        _check_positive(
            o,
            to_steps=self.to_steps,
            guided_steps=self.guided_steps,
            halving_steps=self.halving_steps,
        )
        if not (math.isfinite(self.w_max) and self.w_max >= 0):
            _fail(o, "w_max", self.w_max, "must be a finite number >= 0")
        if not self.lr > 0:
            _fail(o, "lr", self.lr, "must be > 0")
        _check_literal(o, "loss", self.loss, LossWeighting)


@dataclass(frozen=True)
class StageConfig:
    """One model of the cascade: what it makes (frames x width x height @ fps) and its U-Net."""

    name: str  # unique within the cascade, e.g. "base", "tsr1", "ssr2"
    kind: StageKind  # base (text -> video), tsr (frames x2), ssr (space up)
    num_frames: int  # F of the output
    width: int  # W of the output
    height: int  # H of the output
    fps: float  # frame rate of the output
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample_steps: int = 64  # sampling steps (undistilled)
    guidance_w: float = 1.0  # default guidance weight w (x~ = (1+w) cond - w uncond)
    oscillating_guidance: bool = False  # alternate guidance_w and guidance_low_w [IV §2.6.2]
    guidance_low_w: float = 1.0  # the low weight of oscillating guidance (15 / 1 in [IV])
    aug_sample_logsnr: float = 1.0986  # CHOICE: sampling aug SNR 3 -> log(3) [IV §2.5]
    aug_train_max_t: float = 1.0  # CHOICE: training aug level t' ~ U(0, this) [IV §2.5]
    temporal_cond: TemporalCond = "repeat"  # TSR input: repeated frames, or blanks + mask
    sampler: SamplerName | None = None  # None: DiffusionConfig.sampler; distilled: stochastic
    gamma: float | None = None  # the ancestral sampler's variance; None: DiffusionConfig.gamma
    # A distilled student: the largest w its guidance embedding learnt (0 when its teacher
    # sampled unguided); None for an undistilled stage, which takes any w
    guidance_w_max: float | None = None
    # x_hat bounds while sampling [IMG §2.3]: dynamic (percentile rescaling, only when w > 0),
    # static (clip to [-1, 1] at every step) or none
    thresholding: Thresholding = "dynamic"

    def __post_init__(self) -> None:
        o = f"StageConfig({self.name!r})"
        if not isinstance(self.name, str) or not STAGE_NAME.fullmatch(self.name):
            _fail(
                "StageConfig",
                "name",
                self.name,
                "must be a plain identifier (letters, digits, _; not starting with a digit): "
                "it names files in cascade folders",
            )
        _check_literal(o, "kind", self.kind, StageKind)
        _check_literal(o, "temporal_cond", self.temporal_cond, TemporalCond)
        _check_literal(o, "thresholding", self.thresholding, Thresholding)
        if self.sampler is not None:
            _check_literal(o, "sampler", self.sampler, SamplerName)
        if self.gamma is not None and not (
            isinstance(self.gamma, int | float)
            and not isinstance(self.gamma, bool)
            and 0.0 <= self.gamma <= 1.0
        ):
            _fail(o, "gamma", self.gamma, "must be in [0, 1] (or null: the diffusion config's)")
        _check_positive(
            o,
            num_frames=self.num_frames,
            width=self.width,
            height=self.height,
            sample_steps=self.sample_steps,
        )
        if not self.fps > 0:
            _fail(o, "fps", self.fps, "must be > 0")
        for name in ("guidance_w", "guidance_low_w", "guidance_w_max"):
            value = getattr(self, name)
            if name == "guidance_w_max" and value is None:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                _fail(o, name, value, "must be a finite number >= 0 (0 = no guidance)")
        if not (isinstance(self.aug_sample_logsnr, int | float) and self.aug_sample_logsnr > -50):
            _fail(o, "aug_sample_logsnr", self.aug_sample_logsnr, "must be a number > -50")
        if not 0.0 < self.aug_train_max_t <= 1.0:
            _fail(o, "aug_train_max_t", self.aug_train_max_t, "must be in (0, 1]")
        factor = self.unet.downsample_factor
        size = self.train.crop_size
        for name, value in (("width", self.width), ("height", self.height), ("crop_size", size)):
            if value is not None and value % factor:
                _fail(
                    o,
                    name,
                    value,
                    f"must be divisible by the U-Net's downsampling {factor} "
                    f"(2 ** (len(channel_mults) - 1))",
                )
        if self.num_frames > self.unet.max_frames:
            _fail(
                o,
                "num_frames",
                self.num_frames,
                f"must be <= unet.max_frames ({self.unet.max_frames})",
            )
        blank = self.kind == "tsr" and self.temporal_cond == "blank"
        want_cond = 0 if self.kind == "base" else self.unet.in_channels + blank
        if self.unet.cond_channels != want_cond:
            _fail(
                o,
                "unet.cond_channels",
                self.unet.cond_channels,
                f"must be {want_cond} for a {self.kind} stage"
                + (" (RGB + the blank-frame mask)" if blank else ""),
            )
        if self.temporal_cond == "blank" and self.kind != "tsr":
            _fail(o, "temporal_cond", self.temporal_cond, "'blank' is for TSR stages only")
        if self.kind != "base" and not self.unet.use_aug_embedding:
            _fail(o, "unet.use_aug_embedding", False, "SR stages need the augmentation embedding")
        if self.train.crop_size is not None and (
            self.kind != "ssr" or self.train.crop_size > min(self.width, self.height)
        ):
            _fail(
                o,
                "train.crop_size",
                self.train.crop_size,
                "only SSR stages crop, to at most min(width, height)",
            )


def _check_stage_chain(previous: StageConfig, stage: StageConfig) -> None:
    """An SR stage's input is the previous stage's output, changed only along its own axis."""
    o = f"StageConfig({stage.name!r})"
    same_space = (stage.width, stage.height) == (previous.width, previous.height)
    if stage.kind == "tsr":
        if not same_space:
            _fail(
                o,
                "width/height",
                (stage.width, stage.height),
                f"a TSR stage keeps the previous stage's size {(previous.width, previous.height)}",
            )
        if stage.num_frames % previous.num_frames or stage.num_frames == previous.num_frames:
            _fail(
                o,
                "num_frames",
                stage.num_frames,
                f"a TSR stage multiplies the previous stage's {previous.num_frames} frames",
            )
    elif stage.kind == "ssr":
        if stage.num_frames != previous.num_frames:
            _fail(
                o,
                "num_frames",
                stage.num_frames,
                f"an SSR stage keeps the previous stage's {previous.num_frames} frames",
            )
        if same_space or stage.width % previous.width or stage.height % previous.height:
            _fail(
                o,
                "width/height",
                (stage.width, stage.height),
                f"an SSR stage multiplies the previous size {(previous.width, previous.height)}",
            )


@dataclass(frozen=True)
class CascadeConfig:
    """The whole cascade: a text encoder, shared diffusion settings and stages, base first."""

    name: str  # preset name or a user's label
    text: TextConfig
    diffusion: DiffusionConfig
    stages: tuple[StageConfig, ...]
    distill: DistillConfig = field(default_factory=DistillConfig)  # [GD, PD, IV §2.7]

    def __post_init__(self) -> None:
        o = "CascadeConfig"
        if not self.stages:
            _fail(o, "stages", self.stages, "needs at least the base stage")
        if self.stages[0].kind != "base":
            _fail(o, "stages[0].kind", self.stages[0].kind, "the first stage must be 'base'")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            _fail(o, "stages", names, "stage names must be unique")
        for i, stage in enumerate(self.stages):
            if i > 0 and stage.kind == "base":
                _fail(o, f"stages[{i}].kind", "base", "only the first stage is 'base'")
            if stage.unet.text_dim != self.text.dim:
                _fail(
                    o,
                    f"stages[{i}].unet.text_dim",
                    stage.unet.text_dim,
                    f"must equal text.dim ({self.text.dim})",
                )
            if i > 0:
                _check_stage_chain(self.stages[i - 1], stage)

    def stage(self, name: str) -> StageConfig:
        """The stage called ``name``; raises ValueError listing the stage names."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(
            f"no stage {name!r} in cascade {self.name!r}; stages: {[s.name for s in self.stages]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (written beside checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeConfig:
        """Inverse of ``to_dict``; raises ValueError on unknown or missing fields."""
        return _build(cls, data, "CascadeConfig")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; allowed {sorted(fields)}")
    nested = {
        "text": TextConfig,
        "diffusion": DiffusionConfig,
        "unet": UNetConfig,
        "train": TrainConfig,
        "distill": DistillConfig,
    }
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in nested:
            kwargs[name] = _build(nested[name], value, f"{where}.{name}")
        elif name == "stages":
            kwargs[name] = tuple(
                _build(StageConfig, s, f"{where}.stages[{i}]") for i, s in enumerate(value)
            )
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------


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
    sr_sampling = dict(sample_steps=8, aug_train_max_t=0.5)
    ssr_sampling = dict(sr_sampling, sampler="ancestral", gamma=0.0)  # as the toy's SSR stages
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
    sr_sampling = dict(sample_steps=32, aug_train_max_t=0.5, guidance_w=0.0, thresholding="none")
    # CHOICE, measured (docs/design.md "Sampling the spatial SR stages"): the SSR stages sample
    # with the ancestral sampler at the posterior variance (gamma 0): less excess detail than
    # DDIM (SSR 64 alone: 119% -> 116% of the renders' |Laplacian|) and closer to the truth
    # (PSNR +0.6 dB), at the same number of passes.
    ssr_sampling = dict(sr_sampling, sampler="ancestral", gamma=0.0)
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
    # CHOICE, measured (docs/design.md "Distillation in the toy world"): the base sampled at
    # w = 1 then (0.25 now) and loses shapes at w = 3 (93% vs 100%), so its student learns w
    # in [0, 2]. Against w_max = 4, the same 300-step guided phase lands 6 dB closer to the
    # teacher.
    distill = DistillConfig(w_max=2.0)
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
    common = dict(text_dim=text.dim, head_dim=64, norm_groups=32, checkpointing=True)
    train = TrainConfig(
        batch_size=128, lr=3e-4, warmup_steps=10_000, ema_decay=0.9999, image_ratio=0.2
    )
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
            temporal_mixing=("conv",) * len(mults),
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
            train,
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
            train,
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
            train,
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
    """The scale notebooks run at: ``IVREF_SCALE`` (validated), else ``default``."""
    name = os.environ.get("IVREF_SCALE", default)
    if name not in PRESETS:
        raise ValueError(f"IVREF_SCALE={name!r} is not a preset; allowed: {list(PRESETS)}")
    return name
