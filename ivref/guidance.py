"""Classifier-free guidance, dynamic thresholding and the oscillating guidance schedule.

Guidance mixes a conditional and an unconditional prediction of the same model [CFG]:
x~ = (1 + w) x_hat(z_t, c) - w x_hat(z_t), so w = 0 is the plain conditional model.
High w pushes x~ outside the data range [-1, 1]; dynamic thresholding pulls it back per
sample [IMG §2.3]. Imagen Video alternates high and low w in its low-resolution stages
[IV §2.6.2]. ``guided_x_hat_fn`` puts the three together as an ``x_hat_fn`` for
``samplers.sample``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, cast

import torch

from ivref import parameterization, samplers, schedules
from ivref.config_types import MAX_GUIDANCE as MAX_GUIDANCE  # re-exported: the largest w taken
from ivref.config_types import W_ALLOWED


def cfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, w: schedules.Coef) -> torch.Tensor:
    """Classifier-free guidance: (1 + w) pred_cond - w pred_uncond [CFG eq. 6, IV §2.6.1].

    Imagen writes w eps_c + (1 - w) eps_u instead [IMG §2.2, eq. 2] (no guidance at w = 1), as does
    diffusers' ``guidance_scale``: w here = theirs - 1. The same combination holds for x, eps
    and v predictions (each is affine in the others at fixed z_t). ``w`` is a float or
    per-sample (B,).
    """
    if pred_cond.shape != pred_uncond.shape:
        raise ValueError(
            f"pred_uncond has shape {tuple(pred_uncond.shape)}; "
            f"it must match pred_cond {tuple(pred_cond.shape)}"
        )
    w = schedules.expand_to(w, pred_cond)
    return (1 + w) * pred_cond - w * pred_uncond


def _quantile_per_sample(a: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row linear-interpolation quantile of a (B, N) tensor, as torch.quantile, any N."""
    n = a.shape[1]
    pos = q * (n - 1)
    lo, frac = math.floor(pos), pos - math.floor(pos)
    v_lo = a.kthvalue(lo + 1, dim=1).values
    v_hi = a.kthvalue(min(lo + 2, n), dim=1).values
    return v_lo + frac * (v_hi - v_lo)


def dynamic_threshold(x_hat: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Dynamic thresholding of x_hat, per sample [IMG §2.3].

    s = max(1, quantile(|x_hat_b|, percentile)); x_hat_b <- clip(x_hat_b, -s, s) / s.
    The result lies in [-1, 1]; a sample already in [-1, 1] is returned unchanged.
    CHOICE: percentile 0.995 as in [IMG]; quantiles interpolate linearly (torch.quantile).
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile={percentile} is invalid; allowed range (0, 1]")
    s = _quantile_per_sample(x_hat.detach().abs().flatten(1), percentile).clamp(min=1.0)
    s = schedules.expand_to(s, x_hat)
    return torch.maximum(torch.minimum(x_hat, s), -s) / s


def static_threshold(x_hat: torch.Tensor) -> torch.Tensor:
    """Static thresholding: clip x_hat to [-1, 1] [IMG §2.3].

    Dynamic thresholding divides a whole sample by s > 1 as soon as 0.5% of its pixels
    overshoot; on data that sits at +-1 (saturated colours, a black background, as in the
    toy world) that pulls every pixel off its value. Clipping moves only the overshoot.
    """
    return x_hat.clamp(-1.0, 1.0)


def oscillating_schedule(
    steps: int, high: float = 15.0, low: float = 1.0, warmup_frac: float = 0.1
) -> list[float]:
    """Per-step guidance weights: constant ``high`` first, then alternating [IV §2.6.2].

    w[i] = high for i < n_high; after that low, high, low, ... where
    n_high = max(1, round(warmup_frac * steps)), or 0 if ``warmup_frac`` is 0.
    CHOICE: the first 10% of steps are constant high (the paper gives no length), and at
    least the first step, from pure noise, where the layout is set: at 4 or fewer steps
    (distilled samplers) 10% would round to none. The alternation starts with low, right
    after the high warm-up.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; allowed: an integer >= 1")
    steps = int(steps)  # NumPy's integers too
    if not 0.0 <= warmup_frac <= 1.0:
        raise ValueError(f"warmup_frac={warmup_frac} is invalid; allowed range [0, 1]")
    warmup = math.floor(warmup_frac * steps + 0.5)
    if warmup_frac > 0:
        warmup = max(1, warmup)
    return [high if i < warmup or (i - warmup) % 2 == 1 else low for i in range(steps)]


def _step_index(logsnr_t: torch.Tensor, steps: int, logsnr_min: float, logsnr_max: float) -> int:
    """The index i of ``samplers.sample``'s step at logsnr_t (t_i = 1 - i / steps)."""
    t = schedules.t_from_logsnr(logsnr_t[0].double(), logsnr_min, logsnr_max).item()
    i = steps * (1.0 - t)
    if abs(i - round(i)) > 1e-3 or not 0 <= round(i) < steps:
        raise ValueError(
            f"w has {steps} per-step values but logsnr_t={logsnr_t[0].item():.4f} (t={t:.5f}) "
            f"is not on samplers.sample's grid of {steps} steps: pass steps=len(w)"
        )
    return round(i)


def _per_sample(
    value: torch.Tensor | float | None, batch: int, like: torch.Tensor, copies: int = 1
) -> torch.Tensor | None:
    """A float or (B,) ``value`` as a (copies * B,) tensor for the model, or None."""
    if value is None:
        return None
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        value = value.expand(batch)
    return torch.cat([value] * copies)


def _guidance_weights(w: object) -> tuple[float, None] | tuple[None, list[float]]:
    """(w, None) for one weight (a number, NumPy scalar or 0-d tensor), else (None, one weight
    per step); each finite and >= 0, else a ValueError that says what is allowed."""
    allowed = "allowed: a number >= 0, or one per sampling step"
    scalar = isinstance(w, numbers.Real) or (isinstance(w, torch.Tensor) and w.ndim == 0)
    if isinstance(w, torch.Tensor) and not scalar:  # per sample, or per step? a tensor of B
        raise ValueError(  # weights for B = steps videos was taken as one per step
            f"w is a tensor of shape {tuple(w.shape)}; {allowed} as a list (w.tolist()): one "
            "weight for every video of a batch is taken, not one per video (sample each w "
            "on its own)"
        )
    if isinstance(w, bool | str) or not (scalar or isinstance(w, Sequence | torch.Tensor)):
        raise ValueError(f"w={w!r}; {allowed}")
    try:
        values = (  # a Real or 0-d tensor, else a sequence or tensor of them (checked above)
            [float(cast("numbers.Real | torch.Tensor", w))]
            if scalar
            else [float(wi) for wi in cast("Sequence[Any] | torch.Tensor", w)]
        )
    except (TypeError, ValueError):
        raise ValueError(f"w={w!r}; {allowed}") from None
    if not values:
        raise ValueError(f"w is an empty sequence; {allowed}")
    bad = [v for v in values if not 0 <= v <= MAX_GUIDANCE]  # nan fails the comparison
    if bad:
        raise ValueError(f"guidance w={bad[0]} {W_ALLOWED}")
    return (values[0], None) if scalar else (None, values)


def check_text(
    text_emb: torch.Tensor, text_mask: torch.Tensor, cond_video: torch.Tensor | None = None
) -> None:
    """text_emb (B, L, D), text_mask (B, L) of bools and cond_video (B, ...) must agree."""
    if text_mask.dtype != torch.bool:  # said here, in the caller's batch (the U-Net's own
        raise ValueError(  # check sees the guided batch, twice as large)
            f"text_mask must be a bool tensor (True for a real token), got {text_mask.dtype}: "
            "TextEncoder.encode gives it"
        )
    if text_emb.ndim != 3 or tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
        raise ValueError(
            f"text_emb {tuple(text_emb.shape)} and text_mask {tuple(text_mask.shape)} must be "
            "(B, L, D) and (B, L) for the same B prompts and L tokens (TextEncoder.encode)"
        )
    if cond_video is not None and cond_video.ndim != 5:
        raise ValueError(
            f"cond_video must be videos (B, C, F, H, W); got shape {tuple(cond_video.shape)}"
        )
    if cond_video is not None and cond_video.shape[0] != text_emb.shape[0]:
        raise ValueError(
            f"cond_video holds {cond_video.shape[0]} videos but text_emb {text_emb.shape[0]} "
            "rows: give one text row per video"
        )


def guided_x_hat_fn(
    model: torch.nn.Module,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    w: float | Sequence[float],
    *,
    cond_video: torch.Tensor | None = None,
    aug_logsnr: torch.Tensor | float | None = None,
    threshold: float | str | None = 0.995,
    distilled: bool = False,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> samplers.XHatFn:
    """An ``x_hat_fn(z_t, logsnr_t) -> x~`` for ``samplers.sample``: a v-model with guidance.

    One forward on the batch [z_t; z_t] with text_mask [text_mask; all False] (a row of
    all-False mask is unconditional: the model uses its null text embedding), then
      x_hat = alpha z_t - sigma v_hat  (both halves);  x~ = cfg(x_hat_cond, x_hat_uncond, w)
      x~ <- dynamic_threshold(x~, threshold)  for a percentile threshold,
      x~ <- static_threshold(x~)  for threshold="static", unchanged for None [CFG, IMG §2.3].

    ``w`` is a float (or a 0-d tensor), or a list of one value per sampling step (e.g.
    ``oscillating_schedule(steps)``; a longer tensor is refused, as it reads as one per video):
    a sequence's step is found from logsnr_t, assuming ``samplers.sample`` with
    steps=len(w) and the same logsnr bounds (anything else raises ValueError). When the
    step's w is 0 only the conditional half runs. ``cond_video`` and ``aug_logsnr`` (SR
    stages) are passed through to both halves. ``distilled=True`` is for a student that
    embeds w [GD]: a single conditional forward with guidance_w=w and no combination.
    """
    one_w, weights = _guidance_weights(w)
    check_text(text_emb, text_mask, cond_video)
    if threshold not in (None, "static") and not (
        isinstance(threshold, int | float) and 0.0 < threshold <= 1.0
    ):
        raise ValueError(
            f"threshold={threshold!r} is invalid; allowed: a percentile in (0, 1], 'static' or None"
        )

    def x_hat_fn(z_t: torch.Tensor, logsnr_t: torch.Tensor) -> torch.Tensor:
        if weights is None:
            w_t = cast(float, one_w)  # one weight when not one per step (_guidance_weights)
        else:
            w_t = weights[_step_index(logsnr_t, len(weights), logsnr_min, logsnr_max)]
        if z_t.ndim != 5:
            raise ValueError(
                f"z_t must be videos (B, C, F, H, W); got shape {tuple(z_t.shape)}: give "
                "samplers.sample a shape with the batch axis first, (B, C, F, H, W)"
            )
        batch = z_t.shape[0]
        if batch != text_emb.shape[0]:
            raise ValueError(
                f"z_t holds {batch} videos but text_emb {text_emb.shape[0]} rows: give one "
                "text row per video (guidance doubles the batch itself)"
            )
        if distilled or w_t == 0.0:
            kwargs = dict(cond_video=cond_video, aug_logsnr=_per_sample(aug_logsnr, batch, z_t))
            if distilled:
                kwargs["guidance_w"] = z_t.new_full((batch,), w_t)
            v_hat = model(z_t, logsnr_t, text_emb, text_mask, **kwargs)
            alpha, sigma = schedules.alpha_sigma(logsnr_t)
            x_tilde = parameterization.x_from_v(z_t, v_hat, alpha, sigma)
        else:
            z2, logsnr2 = torch.cat([z_t, z_t]), torch.cat([logsnr_t, logsnr_t])
            mask2 = torch.cat([text_mask, torch.zeros_like(text_mask)])
            v_hat = model(
                z2,
                logsnr2,
                torch.cat([text_emb, text_emb]),
                mask2,
                cond_video=None if cond_video is None else torch.cat([cond_video, cond_video]),
                aug_logsnr=_per_sample(aug_logsnr, batch, z_t, copies=2),
            )
            alpha, sigma = schedules.alpha_sigma(logsnr2)
            x_cond, x_uncond = parameterization.x_from_v(z2, v_hat, alpha, sigma).chunk(2)
            x_tilde = cfg(x_cond, x_uncond, w_t)
        if threshold == "static":
            x_tilde = static_threshold(x_tilde)
        elif threshold is not None:
            x_tilde = dynamic_threshold(x_tilde, cast(float, threshold))  # a percentile
        return x_tilde

    return x_hat_fn
