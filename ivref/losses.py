"""Diffusion training losses: one MSE, four weightings, written in x-space [PD §4, VDM-K].

Every denoising loss is a weighted x-space error, w(logsnr) ||x - x_hat||^2, because the
errors of the three predictions differ only by a per-sample factor (z_t fixed):

  ||eps - eps_hat||^2 = SNR ||x - x_hat||^2      ||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2

with SNR = alpha^2 / sigma^2 = exp(logsnr). The weightings, named as configs.LossWeighting:

  "v"          w = 1 + SNR        v-MSE; CHOICE: the default (docs/paper.md §2) [PD §4]
  "eps"        w = SNR            eps-MSE, the "simple" loss [DDPM]
  "snr_trunc"  w = max(SNR, 1)    truncated SNR [PD §4]
  "x"          w = 1              x-MSE

``diffusion_loss`` returns one loss per sample, shape (B,), so a trainer can mean it,
mask it or reweight it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ivref import parameterization, schedules
from ivref.configs import LossWeighting

WEIGHTINGS: tuple[str, ...] = ("v", "eps", "snr_trunc", "x")


def log_loss_weight(logsnr: torch.Tensor, weighting: LossWeighting = "v") -> torch.Tensor:
    """log w(logsnr) of the x-space weighting ``weighting`` (see the module docstring).

    "v": log(1 + SNR) = softplus(logsnr); "eps": logsnr; "snr_trunc": max(logsnr, 0); "x": 0.
    """
    if weighting == "v":
        return F.softplus(logsnr)
    if weighting == "eps":
        return logsnr
    if weighting == "snr_trunc":
        return logsnr.clamp(min=0.0)
    if weighting == "x":
        return torch.zeros_like(logsnr)
    raise ValueError(f"weighting={weighting!r} is invalid; allowed: {list(WEIGHTINGS)}")


def loss_weight(logsnr: torch.Tensor, weighting: LossWeighting = "v") -> torch.Tensor:
    """x-space weight w(logsnr): loss = w ||x - x_hat||^2 (see the module docstring)."""
    return torch.exp(log_loss_weight(logsnr, weighting))


def _log_x_error_scale(logsnr: torch.Tensor, prediction: str) -> torch.Tensor:
    """log k with ||x - x_hat||^2 = k ||pred - target||^2 at fixed z_t.

    v: k = sigma^2 = sigmoid(-logsnr); eps: k = 1 / SNR; x: k = 1.
    """
    if prediction == "v":
        return -F.softplus(logsnr)
    if prediction == "eps":
        return -logsnr
    if prediction == "x":
        return torch.zeros_like(logsnr)
    raise ValueError(
        f"prediction={prediction!r} is invalid; allowed: {list(parameterization.PREDICTIONS)}"
    )


def diffusion_loss(
    pred: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    logsnr: torch.Tensor,
    *,
    weighting: LossWeighting = "v",
    prediction: parameterization.Prediction = "v",
) -> torch.Tensor:
    """Per-sample weighted denoising loss, shape (B,), for z_t = alpha x + sigma eps.

    loss_b = w(logsnr_b) mean ||x_b - x_hat_b||^2, computed without cancellation as
    loss_b = w(logsnr_b) k(logsnr_b) mean ||pred_b - target_b||^2 where target is the true
    v, eps or x (``prediction``, what the model outputs) and k is the factor that turns
    that error into the x error (v: sigma^2, eps: 1/SNR, x: 1). So the matching pairs are
    plain MSEs: weighting="v" with prediction="v" is mean ||v - v_hat||^2 [PD §4].
    """
    if not (pred.shape == x.shape == eps.shape):
        raise ValueError(
            f"pred {tuple(pred.shape)}, x {tuple(x.shape)} and eps {tuple(eps.shape)} "
            "must have the same shape"
        )
    logsnr = schedules.per_sample(logsnr, x, name="logsnr")  # a float, (B,), (B, 1, 1, 1, 1)
    log_factor = log_loss_weight(logsnr, weighting) + _log_x_error_scale(logsnr, prediction)
    if prediction == "v":
        alpha, sigma = schedules.alpha_sigma(logsnr)
        target = parameterization.v_from_x_eps(x, eps, alpha, sigma)
    else:
        target = eps if prediction == "eps" else x
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    return torch.exp(log_factor) * mse
