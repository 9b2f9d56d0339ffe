"""Super-resolution conditioning, shared by training and sampling [IV §2.3, §2.5; CDM].

An SR stage sees its input video (the previous stage's output) resized to its own output
size and concatenated to z_t on channels. Training makes that input from a full-size clip
``x``; sampling gets it from the previous stage. Both go through the same two functions:

- ``low_res(x, stage, previous)``: what the previous stage would have made. Space (SSR):
  an area average over k x k pixel blocks, k = W / W_prev. Time (TSR): frame skipping,
  every k-th frame, k = F / F_prev (frame 2j at fps 2r is frame j at fps r).
- ``upsample(low, stage)``: back to the stage's size. Space: bilinear. Time: each frame
  repeated k times, or (``temporal_cond="blank"``) the kept frames with blank (zero) frames
  between them plus a mask channel, 1 on kept frames [IV §2.3].

Noise conditioning augmentation [IV §2.5, CDM §3]: the conditioning video c is noised as
    c~ = alpha' c + sigma' eps,   alpha'^2 = sigmoid(lambda'),  sigma'^2 = sigmoid(-lambda')
with lambda' drawn at random in training (``train_aug_logsnr``) and fixed at sampling
(``StageConfig.aug_sample_logsnr``); lambda' is given to the model, which learns to undo or
ignore the artefacts of the stage below. At lambda' = +inf, c~ = c. A mask channel is never
noised: it says which frames are real, not what they show.

Layout is (B, C, F, H, W) throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ivref import configs, schedules


def space_factor(stage: configs.StageConfig, previous: configs.StageConfig) -> int:
    """k = W / W_prev of an SSR stage (the config checks it is an integer on both axes)."""
    return stage.width // previous.width


def time_factor(stage: configs.StageConfig, previous: configs.StageConfig) -> int:
    """k = F / F_prev of a TSR stage."""
    return stage.num_frames // previous.num_frames


def _check_factor(factor: int, size: int | None = None, what: str = "") -> None:
    """``factor`` must be an integer >= 1 (that divides ``size``, where given)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor={factor!r} must be an integer >= 1")
    if size is not None and size % factor:
        raise ValueError(f"factor {factor} does not divide the {what} {size}")


def downsample_space(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Area downsampling: each output pixel is the mean of a factor x factor block."""
    _check_factor(factor, video.shape[-2], "height")
    _check_factor(factor, video.shape[-1], "width")
    b = video.shape[0]
    frames = rearrange(video, "b c f h w -> (b f) c h w")
    small = F.avg_pool2d(frames, factor)
    return rearrange(small, "(b f) c h w -> b c f h w", b=b)


def upsample_space(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of every frame to height x width (half-pixel centres)."""
    b = video.shape[0]
    frames = rearrange(video, "b c f h w -> (b f) c h w")
    big = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False)
    return rearrange(big, "(b f) c h w -> b c f h w", b=b)


def skip_frames(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Keep every ``factor``-th frame, starting with the first: frames 0, k, 2k, ..."""
    _check_factor(factor)
    return video[:, :, ::factor]


def repeat_frames(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Each frame ``factor`` times in a row: [a, b] -> [a, a, b, b] for factor 2."""
    _check_factor(factor)
    return video.repeat_interleave(factor, dim=2)


def blank_frames(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Kept frames at 0, k, 2k, ... with zero frames between, plus a mask channel (C + 1).

    The mask is 1 on kept frames and 0 on blanks, so the model can tell a blank from black.
    """
    _check_factor(factor)
    b, c, f, h, w = video.shape
    out = video.new_zeros(b, c + 1, f * factor, h, w)
    out[:, :c, ::factor] = video
    out[:, c, ::factor] = 1.0
    return out


def low_res(
    x: torch.Tensor, stage: configs.StageConfig, previous: configs.StageConfig
) -> torch.Tensor:
    """The previous stage's view of a clip at ``stage``'s size: downsampled in space or time."""
    if stage.kind == "ssr":
        return downsample_space(x, space_factor(stage, previous))
    if stage.kind == "tsr":
        return skip_frames(x, time_factor(stage, previous))
    raise ValueError(f"stage {stage.name!r} is {stage.kind!r}: only SR stages take a low-res input")


def upsample(low: torch.Tensor, stage: configs.StageConfig) -> torch.Tensor:
    """The conditioning video for ``stage`` from a low-res video (B, C, F', H', W')."""
    if low.ndim != 5:
        raise ValueError(f"low-res video must be (B, C, F, H, W); got shape {tuple(low.shape)}")
    _, c, f, h, w = low.shape
    if c != stage.unet.in_channels:  # the previous stage's output has the channels this makes
        raise ValueError(
            f"{stage.kind.upper()} stage {stage.name!r} takes a low-res video of "
            f"{stage.unet.in_channels} channels (the previous stage's output); got shape "
            f"{tuple(low.shape)}"
        )
    if stage.kind == "ssr":  # one whole factor k >= 2 on both axes, as the configs chain
        k = stage.width // w if w and stage.width % w == 0 else 0
        if f != stage.num_frames or k < 2 or (h * k, w * k) != (stage.height, stage.width):
            raise ValueError(
                f"SSR stage {stage.name!r} makes {stage.num_frames} x {stage.width} x "
                f"{stage.height}; its input must have {stage.num_frames} frames and its size "
                f"divided by one whole factor k >= 2 on both axes, got {f} frames of {w} x {h}"
            )
        return upsample_space(low, stage.height, stage.width)
    if stage.kind == "tsr":
        if stage.num_frames % f or f == stage.num_frames or (h, w) != (stage.height, stage.width):
            raise ValueError(
                f"TSR stage {stage.name!r} makes {stage.num_frames} frames of {stage.width} x "
                f"{stage.height}; its input must be {stage.width} x {stage.height} with fewer "
                f"frames, a count dividing {stage.num_frames}, got {f} frames of {w} x {h}"
            )
        k = stage.num_frames // f
        return blank_frames(low, k) if stage.temporal_cond == "blank" else repeat_frames(low, k)
    raise ValueError(f"stage {stage.name!r} is {stage.kind!r}: only SR stages take a low-res input")


def augment(cond: torch.Tensor, aug_logsnr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise conditioning augmentation: c~ = alpha' c + sigma' eps at lambda' (B,) [IV §2.5].

    Only ``noise``'s channels are noised: with a blank-frame mask channel (C = 4 for RGB +
    mask), the first 3.
    lambda' = +inf returns ``cond`` unchanged.
    """
    rgb = noise.shape[1]
    alpha, sigma = schedules.alpha_sigma(schedules.expand_to(aug_logsnr, cond))
    noised = alpha.to(cond.dtype) * cond[:, :rgb] + sigma.to(cond.dtype) * noise
    return torch.cat([noised, cond[:, rgb:]], dim=1) if cond.shape[1] > rgb else noised


def train_aug_logsnr(
    batch: int,
    stage: configs.StageConfig,
    diffusion: configs.DiffusionConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training aug levels lambda' = lambda(t'), t' ~ U(0, stage.aug_train_max_t) (cosine).

    CHOICE: a uniform t' on the same schedule as the diffusion itself, up to
    ``aug_train_max_t``, so the fixed sampling level is inside the trained range.
    """
    t = torch.rand(batch, generator=generator, dtype=torch.float64) * stage.aug_train_max_t
    return schedules.logsnr_cosine(t, diffusion.logsnr_min, diffusion.logsnr_max).float()


def random_crop(
    tensors: list[torch.Tensor],
    size: int,
    align: int = 1,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """The same random size x size window of each (B, C, F, H, W) tensor, one per sample.

    Window corners are multiples of ``align`` (the SR factor, so the window covers whole
    low-res pixels); used to train the fully convolutional SSR on crops [IV §2.3].
    """
    b, _, _, h, w = tensors[0].shape
    if size > min(h, w):
        raise ValueError(f"crop size {size} exceeds the frame ({w} x {h})")
    ys = torch.randint((h - size) // align + 1, (b,), generator=generator) * align
    xs = torch.randint((w - size) // align + 1, (b,), generator=generator) * align
    out = []
    for t in tensors:
        corners = enumerate(zip(ys.tolist(), xs.tolist(), strict=True))
        out.append(torch.stack([t[i, :, :, y : y + size, x : x + size] for i, (y, x) in corners]))
    return out
