"""Conversions between the three things a denoiser can predict: x, eps and v [PD §4].

With z_t = alpha x + sigma eps and alpha^2 + sigma^2 = 1, picture (x, eps) on a circle:
z_t = (cos phi) x + (sin phi) eps with alpha = cos phi, sigma = sin phi. Then
v = d z_t / d phi = alpha eps - sigma x, the angular velocity, and (z_t, v) is (x, eps)
rotated by phi. Every conversion is one rotation (or half of one) [PD §4]:

  x = alpha z_t - sigma v        eps = sigma z_t + alpha v       v = alpha eps - sigma x

Names say what a function returns and takes. alpha and sigma are floats, 0-d tensors,
per-sample (B,) tensors or (B, 1, 1, 1, 1) ones; ``schedules.expand_to`` broadcasts them.
"""

from __future__ import annotations

from typing import Literal

import torch

from ivref import schedules

Prediction = Literal["v", "eps", "x"]
PREDICTIONS: tuple[str, ...] = ("v", "eps", "x")


def _check(name: str, a: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if a.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}; it must match {ref_name} {tuple(ref.shape)}"
        )


def _coefs(
    like: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> tuple[torch.Tensor, torch.Tensor]:
    return schedules.expand_to(alpha, like), schedules.expand_to(sigma, like)


def v_from_x_eps(
    x: torch.Tensor, eps: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """v = alpha eps - sigma x [PD §4]."""
    _check("eps", eps, "x", x)
    alpha, sigma = _coefs(x, alpha, sigma)
    return alpha * eps - sigma * x


def x_from_v(
    z_t: torch.Tensor, v: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """x = alpha z_t - sigma v [PD §4]."""
    _check("v", v, "z_t", z_t)
    alpha, sigma = _coefs(z_t, alpha, sigma)
    return alpha * z_t - sigma * v


def eps_from_v(
    z_t: torch.Tensor, v: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """eps = sigma z_t + alpha v [PD §4]."""
    _check("v", v, "z_t", z_t)
    alpha, sigma = _coefs(z_t, alpha, sigma)
    return sigma * z_t + alpha * v


def x_from_eps(
    z_t: torch.Tensor, eps: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """x = (z_t - sigma eps) / alpha; ill-conditioned as alpha -> 0 (pure noise) [DDPM]."""
    _check("eps", eps, "z_t", z_t)
    alpha, sigma = _coefs(z_t, alpha, sigma)
    return (z_t - sigma * eps) / alpha


def eps_from_x(
    z_t: torch.Tensor, x: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """eps = (z_t - alpha x) / sigma; ill-conditioned as sigma -> 0 (clean data)."""
    _check("x", x, "z_t", z_t)
    alpha, sigma = _coefs(z_t, alpha, sigma)
    return (z_t - alpha * x) / sigma


def v_from_x(
    z_t: torch.Tensor, x: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """v = (alpha z_t - x) / sigma (v_from_x_eps with eps = eps_from_x)."""
    _check("x", x, "z_t", z_t)
    alpha, sigma = _coefs(z_t, alpha, sigma)
    return (alpha * z_t - x) / sigma


def v_from_eps(
    z_t: torch.Tensor, eps: torch.Tensor, alpha: schedules.Coef, sigma: schedules.Coef
) -> torch.Tensor:
    """v = (eps - sigma z_t) / alpha (v_from_x_eps with x = x_from_eps)."""
    _check("eps", eps, "z_t", z_t)
    alpha, sigma = _coefs(z_t, alpha, sigma)
    return (eps - sigma * z_t) / alpha


def x_from_prediction(
    z_t: torch.Tensor,
    pred: torch.Tensor,
    alpha: schedules.Coef,
    sigma: schedules.Coef,
    prediction: Prediction = "v",
) -> torch.Tensor:
    """x_hat from a model output ``pred`` that predicts ``prediction`` ("v", "eps" or "x")."""
    if prediction == "v":
        return x_from_v(z_t, pred, alpha, sigma)
    if prediction == "eps":
        return x_from_eps(z_t, pred, alpha, sigma)
    if prediction == "x":
        _check("pred", pred, "z_t", z_t)
        return pred
    raise ValueError(f"prediction={prediction!r} is invalid; allowed: {list(PREDICTIONS)}")
