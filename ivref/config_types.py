"""What a configuration is: the frozen dataclasses of a cascade and their checks.

``UNetConfig``, ``TextConfig``, ``DiffusionConfig``, ``TrainConfig``, ``DistillConfig``,
``StageConfig`` and ``CascadeConfig``. Every invalid value raises ``ValueError`` at
construction, naming the field and what is allowed, so a bad config fails before any tensor is
allocated. ``CascadeConfig.to_dict`` / ``from_dict`` are the JSON form written beside
checkpoints. The presets built from these classes are in ``ivref.configs``, which re-exports
every name here: ``configs.StageConfig`` is this module's ``StageConfig``.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ivref import config_checks as checks
from ivref import stage_checks

StageKind = Literal["base", "tsr", "ssr"]
TemporalMixing = Literal["attention", "conv"]
LossWeighting = Literal["v", "eps", "snr_trunc", "x"]
SamplerName = Literal["ddim", "ancestral", "stochastic"]
LRDecay = Literal["none", "linear"]
TemporalCond = Literal["repeat", "blank"]
Thresholding = Literal["dynamic", "static", "none"]
TextEncoderName = Literal["tiny-t5", "minilm", "t5"]

STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_STEPS = 10_000  # more sampler steps is almost surely a typo (each is a forward pass)
# The paper samples at w <= 15 [IV §2.6]; far larger weights only saturate x~, and past float32's
# range (1 + w) x_hat_c - w x_hat_u is NaN: more is almost surely a typo.
MAX_GUIDANCE = 1000.0
W_ALLOWED = f"must be a number from 0 (no guidance) to {MAX_GUIDANCE:g}"


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
        checks.annotated_types(self, o)
        checks.positive(
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
            checks.fail(o, "cond_channels", self.cond_channels, "must be an integer >= 0")
        levels = len(self.channel_mults)
        if levels < 1 or any(not isinstance(m, int) or m < 1 for m in self.channel_mults):
            checks.fail(
                o, "channel_mults", self.channel_mults, "must be a non-empty tuple of ints >= 1"
            )
        for name in ("spatial_attention", "temporal_mixing"):
            value = getattr(self, name)
            if len(value) != levels:
                checks.fail(
                    o, name, value, f"needs one entry per level ({levels}, as channel_mults)"
                )
        for mixing in self.temporal_mixing:
            checks.literal(o, "temporal_mixing", mixing, TemporalMixing)
        if self.fully_convolutional and any(self.spatial_attention):
            checks.fail(
                o,
                "spatial_attention",
                self.spatial_attention,
                "must be all False when "
                "fully_convolutional=True (the fully convolutional stage has no spatial attention)",
            )
        if self.base_channels % 2:  # the embeddings of log-SNR, lambda' and w: cos/sin pairs
            checks.fail(
                o, "base_channels", self.base_channels, "must be even (sinusoidal embeddings)"
            )
        any_attention = any(self.spatial_attention) or "attention" in self.temporal_mixing
        deepest = self.base_channels * self.channel_mults[-1]
        for mult in self.channel_mults:
            width = self.base_channels * mult
            if width % self.norm_groups:
                checks.fail(
                    o, "norm_groups", self.norm_groups, f"must divide every width ({width})"
                )
            # the middle block attends (to itself and the text, or to the text alone) at the
            # deepest width whatever the flags say: heads = width / head_dim must be whole
            if (any_attention or width == deepest) and width % self.head_dim:
                where = "every width" if any_attention else "the middle block's width"
                checks.fail(o, "head_dim", self.head_dim, f"must divide {where} ({width})")
        if not 0.0 <= self.dropout < 1.0:
            checks.fail(o, "dropout", self.dropout, "must be in [0, 1)")

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
        checks.annotated_types(self, "TextConfig")
        checks.literal("TextConfig", "encoder", self.encoder, TextEncoderName)
        checks.positive("TextConfig", dim=self.dim, max_length=self.max_length)
        if self.path is not None and self.encoder != "t5":  # it was ignored: tiny-t5 was built
            checks.fail(
                "TextConfig",
                "path",
                self.path,
                f"a checkpoint folder is for encoder 't5'; encoder {self.encoder!r} is built "
                "in and takes no path: set encoder='t5' (with dim its width), or path=None",
            )


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
        checks.annotated_types(self, o)
        checks.finite(o, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)
        if not self.logsnr_min < self.logsnr_max:
            checks.fail(
                o, "logsnr_min", self.logsnr_min, f"must be < logsnr_max ({self.logsnr_max})"
            )
        checks.literal(o, "loss", self.loss, LossWeighting)
        checks.literal(o, "sampler", self.sampler, SamplerName)
        if not 0.0 <= self.gamma <= 1.0:
            checks.fail(o, "gamma", self.gamma, "must be in [0, 1]")
        if not 0.0 <= self.text_dropout < 1.0:
            checks.fail(o, "text_dropout", self.text_dropout, "must be in [0, 1)")
        if not 0.0 < self.threshold_percentile <= 1.0:
            checks.fail(o, "threshold_percentile", self.threshold_percentile, "must be in (0, 1]")


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
        checks.annotated_types(self, o)
        checks.positive(o, batch_size=self.batch_size)
        checks.finite(o, lr=self.lr, weight_decay=self.weight_decay, grad_clip=self.grad_clip)
        if not self.lr > 0:
            checks.fail(o, "lr", self.lr, "must be > 0")
        if self.weight_decay < 0:
            checks.fail(o, "weight_decay", self.weight_decay, "must be >= 0")
        if self.warmup_steps < 0:
            checks.fail(o, "warmup_steps", self.warmup_steps, "must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            checks.fail(o, "ema_decay", self.ema_decay, "must be in [0, 1)")
        if not self.grad_clip > 0:
            checks.fail(o, "grad_clip", self.grad_clip, "must be > 0")
        if not 0.0 <= self.image_ratio <= 1.0:
            checks.fail(o, "image_ratio", self.image_ratio, "must be in [0, 1]")
        if self.crop_size is not None:
            checks.positive(o, crop_size=self.crop_size)
        checks.literal(o, "lr_decay", self.lr_decay, LRDecay)


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
        checks.annotated_types(self, o)
        checks.positive(
            o,
            to_steps=self.to_steps,
            guided_steps=self.guided_steps,
            halving_steps=self.halving_steps,
        )
        if not 0 <= self.w_max <= MAX_GUIDANCE:  # the largest w a student may learn (no nan)
            checks.fail(o, "w_max", self.w_max, W_ALLOWED)
        checks.finite(o, lr=self.lr)
        if not self.lr > 0:
            checks.fail(o, "lr", self.lr, "must be > 0")
        checks.literal(o, "loss", self.loss, LossWeighting)


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
        self._check_values()
        stage_checks.check_against_unet(self)

    def _check_values(self) -> None:
        """Each field on its own: names, literals, counts and weights."""
        o = f"StageConfig({self.name!r})" if isinstance(self.name, str) else "StageConfig"
        checks.annotated_types(self, o)
        if not STAGE_NAME.fullmatch(self.name):
            checks.fail(
                "StageConfig",
                "name",
                self.name,
                "must be a plain identifier (letters, digits, _; not starting with a digit): "
                "it names files in cascade folders",
            )
        checks.literal(o, "kind", self.kind, StageKind)
        checks.literal(o, "temporal_cond", self.temporal_cond, TemporalCond)
        checks.literal(o, "thresholding", self.thresholding, Thresholding)
        if self.sampler is not None:
            checks.literal(o, "sampler", self.sampler, SamplerName)
        if self.gamma is not None and not (
            isinstance(self.gamma, int | float)
            and not isinstance(self.gamma, bool)
            and 0.0 <= self.gamma <= 1.0
        ):
            checks.fail(
                o, "gamma", self.gamma, "must be in [0, 1] (or null: the diffusion config's)"
            )
        checks.positive(
            o,
            num_frames=self.num_frames,
            width=self.width,
            height=self.height,
            sample_steps=self.sample_steps,
        )
        checks.finite(o, fps=self.fps)
        if not self.fps > 0:
            checks.fail(o, "fps", self.fps, "must be > 0")
        if self.sample_steps > MAX_STEPS:
            checks.fail(o, "sample_steps", self.sample_steps, f"must be at most {MAX_STEPS}")
        for name in ("guidance_w", "guidance_low_w", "guidance_w_max"):
            value = getattr(self, name)
            if name == "guidance_w_max" and value is None:
                continue
            if not (isinstance(value, int | float) and 0 <= value <= MAX_GUIDANCE):  # no nan
                checks.fail(o, name, value, W_ALLOWED)
        if self.guidance_w_max is not None and self.guidance_w > self.guidance_w_max:
            checks.fail(
                o,
                "guidance_w",
                self.guidance_w,
                f"must be <= guidance_w_max ({self.guidance_w_max}, the largest weight this "
                "distilled stage learnt): its default would be refused at sampling",
            )
        if not (isinstance(self.aug_sample_logsnr, int | float) and self.aug_sample_logsnr > -50):
            checks.fail(o, "aug_sample_logsnr", self.aug_sample_logsnr, "must be a number > -50")
        if not 0.0 < self.aug_train_max_t <= 1.0:
            checks.fail(o, "aug_train_max_t", self.aug_train_max_t, "must be in (0, 1]")


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
        checks.annotated_types(self, o)
        if not self.stages:
            checks.fail(o, "stages", self.stages, "needs at least the base stage")
        if self.stages[0].kind != "base":
            checks.fail(o, "stages[0].kind", self.stages[0].kind, "the first stage must be 'base'")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            checks.fail(o, "stages", names, "stage names must be unique")
        for i, stage in enumerate(self.stages):
            if i > 0 and stage.kind == "base":
                checks.fail(o, f"stages[{i}].kind", "base", "only the first stage is 'base'")
            if stage.unet.text_dim != self.text.dim:
                checks.fail(
                    o,
                    f"stages[{i}].unet.text_dim",
                    stage.unet.text_dim,
                    f"must equal text.dim ({self.text.dim})",
                )
            if i > 0:
                stage_checks.check_stage_chain(self.stages[i - 1], stage)
            stage_checks.warn_untrained_aug_level(stage, self.diffusion)

    def stage(self, name: str) -> StageConfig:
        """The stage called ``name``; raises ValueError listing the stage names."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(
            f"no stage {name!r} in cascade {self.name!r}; stages: {[s.name for s in self.stages]}"
        )

    def replace_stage(self, name: str, **changes: Any) -> CascadeConfig:
        """A copy whose stage ``name`` has ``changes`` (StageConfig fields); ``unet=`` and
        ``train=`` may be a dict of the fields to change in the stage's own UNetConfig or
        TrainConfig, e.g. ``cfg.replace_stage("base", num_frames=6, unet={"dropout": 0.1})``.
        The whole cascade is checked again: a later stage that no longer chains on the
        changed one (its frames, size or frame rate) is a ValueError naming it."""
        old = self.stage(name)  # a ValueError listing the stage names
        for part in ("unet", "train"):
            if isinstance(changes.get(part), dict):
                changes[part] = _replaced(getattr(old, part), changes[part])
        new = _replaced(old, changes)
        return dataclasses.replace(
            self, stages=tuple(new if s.name == name else s for s in self.stages)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (written beside checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeConfig:
        """Inverse of ``to_dict``; raises ValueError on unknown or missing fields."""
        return _build(cls, data, "CascadeConfig")


def _replaced(config: Any, changes: dict[str, Any]) -> Any:
    """``dataclasses.replace``, with an unknown field named with the ones there are."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(
            f"{type(config).__name__} has no field {unknown[0]!r}; its fields: {names}"
        )
    return dataclasses.replace(config, **changes)


def _drop_unused_path(text: dict[str, Any], where: str) -> None:
    """A saved text config with a ``path`` on a built-in encoder: ivref once accepted that and
    ignored the path (the built-in encoder was used), so such a config, in a checkpoint or a
    cascade folder, is loaded without it, with a warning; ``TextConfig`` itself refuses one."""
    encoder, path = text.get("encoder", "tiny-t5"), text.get("path")
    if path is None or encoder == "t5" or encoder not in get_args(TextEncoderName):
        return  # (an unknown encoder: TextConfig names the allowed ones)
    warnings.warn(
        f"{where}.path {path!r} is dropped: encoder {encoder!r} is built in and takes no path "
        "(the path was never used); if that folder holds the T5 you meant, set encoder='t5'",
        stacklevel=2,
    )
    text["path"] = None


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
        elif name == "stages" and isinstance(value, (list, tuple)):
            kwargs[name] = tuple(
                _build(StageConfig, s, f"{where}.stages[{i}]") for i, s in enumerate(value)
            )
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    if cls is TextConfig:
        _drop_unused_path(kwargs, where)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None
