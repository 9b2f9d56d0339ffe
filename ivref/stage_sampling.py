"""One stage of the cascade, sampled: ``sample_stage`` [IV §2, §2.5, §2.6].

Its inputs checked (steps, guidance weight, device), an SR stage's conditioning video
upsampled to the stage's size and noise-augmented at lambda' (``superres``), the guidance
weights (per step with oscillating guidance) and their bound for a distilled student, then
the stage's sampler on the model's device. ``cascade.Cascade.generate`` chains the stages;
cascade.py re-exports every public name here.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from typing import cast

import torch
from torch import nn

from ivref import configs, guidance, samplers, superres
from ivref.devices import parse_device as parse_device  # re-exported: cascade.parse_device
from ivref.unet3d import VideoUNet

MAX_STEPS = samplers.MAX_STEPS  # more is almost surely a typo (each step is a forward pass)
MAX_GUIDANCE = guidance.MAX_GUIDANCE  # the largest guidance weight w taken


def check_steps(steps: object, name: str = "steps") -> int:
    """A sampler step count: an integer (NumPy's too) in [1, MAX_STEPS], as an int."""
    integral = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
    if not integral or not 1 <= cast(int, steps) <= MAX_STEPS:
        raise ValueError(f"{name}={steps!r} must be an integer from 1 to {MAX_STEPS}")
    return int(cast(int, steps))  # an Integral (NumPy's too) compares and converts as an int


def check_guidance(w: object, name: str = "guidance") -> float:
    """A guidance weight: a number (NumPy's too) in [0, MAX_GUIDANCE] (0 = the plain
    conditional model), as a float."""
    if (
        isinstance(w, bool)
        or not isinstance(w, numbers.Real)
        or not 0 <= cast(float, w) <= MAX_GUIDANCE
    ):
        raise ValueError(f"{name}={w!r} {guidance.W_ALLOWED}")  # (nan fails the comparison)
    return float(w)


def _check_tensors(**named: object) -> None:
    """Each given argument (not None) is a torch.Tensor; a NumPy array failed deep in torch."""
    for name, value in named.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (torch.from_numpy for an array)")


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter, or buffer if it has none (where its inputs
    must be); a clear error for a model with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is not None:
        return first.device
    raise ValueError(
        f"{type(model).__name__} has no parameters or buffers, so its device is unknown: a "
        "stage model must hold its weights (e.g. a VideoUNet), on the device to sample on"
    )


def stage_guidance(stage: configs.StageConfig, w: float, steps: int) -> float | list[float]:
    """The guidance of one stage: w, or with ``oscillating_guidance`` one weight per step.

    Oscillating [IV §2.6.2]: constant w for the first 10% of steps (at least one), then alternating
    low, w, low, ... with low = min(stage.guidance_low_w, w), so w = 0 is no guidance at all.
    """
    if not stage.oscillating_guidance:
        return w
    return guidance.oscillating_schedule(steps, high=w, low=min(stage.guidance_low_w, w))


@torch.no_grad()
def sample_stage(
    model: VideoUNet,
    stage: configs.StageConfig,
    diffusion: configs.DiffusionConfig,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    cond_video: torch.Tensor | None = None,
    steps: int | None = None,
    guidance_w: float | None = None,
    aug_logsnr: float | None = None,
    generator: samplers.Generators = None,
    noise: torch.Tensor | None = None,
    aug_noise: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample one stage of the cascade: z_1 ~ N(0, I), then ``steps`` sampler steps to x.

    Base stages take only text. SR stages also take ``cond_video``, the video they refine
    (the previous stage's output, (B, 3, F', H', W')): it is upsampled to the stage's size
    (``superres.upsample``) and noise-augmented at lambda' = ``aug_logsnr`` (default
    ``stage.aug_sample_logsnr``; +inf for none) [IV §2.5]. Guidance is
    x~ = (1 + w) x_hat(z_t, c) - w x_hat(z_t) [CFG] (per step with oscillating guidance),
    bounded as ``stage.thresholding`` says [IMG §2.3]: "dynamic" rescales x~ when any w > 0,
    "static" clips it to [-1, 1] at every step, "none" leaves it; a distilled student (its U-Net
    embeds w) makes x~ in one pass [GD]. The sampler is ``stage.sampler`` or
    ``diffusion.sampler``; the ancestral sampler's gamma is ``stage.gamma`` or
    ``diffusion.gamma``; the log-SNR bounds come from ``diffusion``.

    Everything runs on the model's device. ``noise`` (B, C, F, H, W) and ``aug_noise`` are
    drawn from ``generator`` on the CPU when not given, then moved, so a seed gives the same
    video on every device up to float error. ``generator`` may be one per video
    (``samplers.Generators``): a stochastic sampler's noise for video i then comes from
    generator i, so a video does not depend on the others in its batch. Returns
    (B, C, F, H, W) in [-1, 1], on the model's device.
    """
    for name, value, kind in (
        ("stage", stage, configs.StageConfig),
        ("diffusion", diffusion, configs.DiffusionConfig),
    ):
        if not isinstance(value, kind):
            raise TypeError(
                f"{name}={value!r:.60} must be a {kind.__name__} (e.g. cascade.cfg.{name}"
                f"{'(NAME)' if name == 'stage' else ''})"
            )
    _check_tensors(
        text_emb=text_emb, text_mask=text_mask, cond_video=cond_video, noise=noise,
        aug_noise=aug_noise,
    )  # fmt: skip
    samplers.check_generators(generator)
    unet = getattr(model, "cfg", None)
    if isinstance(unet, configs.UNetConfig) and unet.cond_channels != stage.unet.cond_channels:
        raise ValueError(
            f"stage {stage.name!r} ({stage.kind}) takes a U-Net with cond_channels="
            f"{stage.unet.cond_channels}, and this model's has {unet.cond_channels}: give the "
            "stage's own model (cascade.models[NAME] with cascade.cfg.stage(NAME))"
        )
    if isinstance(unet, configs.UNetConfig) and unet.use_guidance_embedding:
        if stage.guidance_w_max is None:  # a warning: a cascade folder of an older ivref
            warnings.warn(  # holds such configs, and samples well at its own steps
                f"this model is a distilled student (its U-Net embeds w), and stage "
                f"{stage.name!r} is configured as an undistilled one (no guidance_w_max): it "
                f"samples at that config's {stage.sample_steps} steps and takes any w, "
                "unchecked against the range it learnt. A student's own stage config holds "
                "them (its cascade's cfg.stage(NAME), or distill.student_config); a distilled "
                "cascade folder exported by an older ivref lacks the range: export it again",
                UserWarning,
                stacklevel=3,
            )
    device = model_device(model)
    weight = next(model.parameters(), None)  # none: a model of buffers only has no weights
    dtype = torch.float32 if weight is None else weight.dtype
    if dtype != torch.float32:
        raise ValueError(
            f"stage {stage.name!r}: the model's weights are {dtype}; sampling takes float32 "
            "weights (model.float()). For bf16 speed keep them float32 and sample under "
            "torch.autocast(device_type, dtype=torch.bfloat16)"
        )
    steps = check_steps(stage.sample_steps if steps is None else steps)
    w = check_guidance(stage.guidance_w if guidance_w is None else guidance_w, "guidance_w")
    guidance.check_text(text_emb, text_mask)  # before B is read from it
    if not text_emb.shape[0]:
        raise ValueError("text_emb holds no prompts (B = 0): give at least one")
    if not bool(torch.isfinite(text_emb).all()):
        raise ValueError("text_emb holds NaN or infinite values: check the text encoder's output")
    text_emb = text_emb.float()  # an encoder run in half precision: the U-Net takes float32
    if noise is not None and not bool(torch.isfinite(noise).all()):
        raise ValueError("noise holds NaN or infinite values")
    b = text_emb.shape[0]
    shape = (b, model.cfg.out_channels, stage.num_frames, stage.height, stage.width)
    kwargs = _sr_inputs(stage, diffusion, cond_video, b, aug_logsnr, aug_noise, generator, device)
    weights, threshold = _bounded_guidance(stage, diffusion, w, steps)
    x_hat_fn = guidance.guided_x_hat_fn(
        model,
        text_emb.to(device),
        text_mask.to(device),
        weights,
        threshold=threshold,
        distilled=model.cfg.use_guidance_embedding,  # a student embeds w: one pass [GD]
        logsnr_min=diffusion.logsnr_min,
        logsnr_max=diffusion.logsnr_max,
        **kwargs,
    )
    if noise is None:
        noise = samplers.randn(shape, generator, torch.float32, "cpu")
    modes = {module: module.training for module in model.modules()}  # each one's, as it was
    model.eval()  # dropout off (a seed gives one video); the caller's modes come back after
    try:
        x = samplers.sample(
            x_hat_fn,
            shape,
            steps=steps,
            sampler=stage.sampler or diffusion.sampler,
            gamma=diffusion.gamma if stage.gamma is None else stage.gamma,
            generator=generator,
            device=device,
            noise=noise.to(device=device, dtype=torch.float32),
            logsnr_min=diffusion.logsnr_min,
            logsnr_max=diffusion.logsnr_max,
            progress=stage.name if progress else False,  # the bar names the stage
        )
    finally:
        for module, training in modes.items():
            module.training = training
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):  # clamp passes NaN
        raise FloatingPointError(
            f"stage {stage.name!r} produced NaN or infinite values at guidance w={w:g} "
            "(damaged weights, or a dtype too narrow for (1 + w) x_hat_c - w x_hat_u); no "
            "video was made"
        )
    return x.clamp(-1.0, 1.0)


def _sr_inputs(
    stage: configs.StageConfig,
    diffusion: configs.DiffusionConfig,
    cond_video: torch.Tensor | None,
    b: int,
    aug_logsnr: float | None,
    aug_noise: torch.Tensor | None,
    generator: samplers.Generators,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """An SR stage's extra model inputs, {cond_video: c~, aug_logsnr: lambda'}, on ``device``
    (none for a base stage): c upsampled to the stage's size, c~ = alpha' c + sigma' eps'."""
    if stage.kind == "base":
        named = {"cond_video": cond_video, "aug_noise": aug_noise, "aug_logsnr": aug_logsnr}
        given = [name for name, value in named.items() if value is not None]
        if given:
            raise ValueError(
                f"stage {stage.name!r} is a base stage: it takes no {', '.join(given)} (the "
                "input video of an SR stage and its noise augmentation)"
            )
        return {}
    if cond_video is None:
        raise ValueError(f"stage {stage.name!r} ({stage.kind}) needs cond_video, its input")
    if cond_video.ndim != 5:
        raise ValueError(
            f"cond_video must be videos (B, C, F, H, W); got shape {tuple(cond_video.shape)}"
            + (": add the batch axis (video[None] for one)" if cond_video.ndim == 4 else "")
        )
    if cond_video.shape[0] != b:
        raise ValueError(f"cond_video holds {cond_video.shape[0]} videos for {b} prompts")
    _check_video_range(cond_video)
    cond = superres.upsample(cond_video.float().to(device), stage)
    level = stage.aug_sample_logsnr if aug_logsnr is None else float(aug_logsnr)
    if math.isnan(level):
        raise ValueError("aug_logsnr=nan; allowed: a log-SNR, or +inf for no augmentation")
    pixels = cond[:, : stage.unet.in_channels]  # noised; a blank-frame mask channel is not
    if aug_noise is None:
        aug_noise = samplers.randn(pixels.shape, generator, torch.float32, "cpu")
    elif not bool(torch.isfinite(aug_noise).all()):
        raise ValueError("aug_noise holds NaN or infinite values")
    elif tuple(aug_noise.shape) != tuple(pixels.shape):  # it would broadcast silently
        raise ValueError(
            f"aug_noise {tuple(aug_noise.shape)}: give one value per pixel of the upsampled "
            f"input video's channels, {tuple(pixels.shape)} (B, C, F, H, W at the stage's size)"
        )
    level_b = torch.full((b,), level, device=device)
    # The model embeds lambda' only inside the range training drew it from (at most
    # logsnr_max, ``superres.train_aug_logsnr``): +inf (no augmentation) embeds as that.
    return {
        "cond_video": superres.augment(cond, level_b, aug_noise.to(device, torch.float32)),
        "aug_logsnr": level_b.clamp(diffusion.logsnr_min, diffusion.logsnr_max),
    }


def check_learnt_guidance(stage: configs.StageConfig, w: float) -> None:
    """A distilled student refuses a w above the range its guidance embedding learnt (the
    largest weight a stage samples at is its w: oscillation's low weight is at most w)."""
    if stage.guidance_w_max is not None and w > stage.guidance_w_max:
        raise ValueError(
            f"guidance w={w} for stage {stage.name!r}: this distilled student learnt guidance "
            f"weights 0 <= w <= {stage.guidance_w_max} only (its teacher sampled with "
            f"w = {stage.guidance_w}); pass a w in that range (per stage: a {{stage name: w}} "
            f"mapping, or --guidance NAME=W) or use the undistilled stage"
        )


def _check_video_range(video: torch.Tensor) -> None:
    """A conditioning video holds floats in [-1, 1], as every stage's output does."""
    if not video.is_floating_point():
        raise ValueError(
            f"cond_video is {video.dtype}; allowed: floats in [-1, 1] (8-bit frames: x / 127.5 - 1)"
        )
    if video.device.type == "meta":  # shapes only (the device tests): no values to check
        return
    lo, hi = (float(v) for v in video.aminmax())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"cond_video spans [{lo:g}, {hi:g}]; allowed: values in [-1, 1] (8-bit frames: "
            "x / 127.5 - 1)"
        )


def _bounded_guidance(
    stage: configs.StageConfig, diffusion: configs.DiffusionConfig, w: float, steps: int
) -> tuple[float | list[float], float | str | None]:
    """(the guidance weight, or one per step, and the thresholding of x~) for ``stage``; a
    distilled student refuses a w above the range it learnt."""
    weights = stage_guidance(stage, w, steps)
    top = max(weights) if isinstance(weights, list) else weights
    check_learnt_guidance(stage, top)
    threshold = {
        "dynamic": diffusion.threshold_percentile if top > 0 else None,
        "static": "static",
        "none": None,
    }[stage.thresholding]
    return weights, threshold
