"""The continuous-time cosine log-SNR schedule, alpha/sigma, q(z_t | x) and its posterior.

Time t runs over [0, 1]: t = 0 is clean data (logsnr = logsnr_max), t = 1 is pure noise
(logsnr = logsnr_min) [VDM §2, VDM-K]. Everything downstream (conversions, losses,
samplers) takes logsnr rather than t, so any schedule can be swapped in by mapping t to
logsnr. Per-sample coefficients are floats, (B,) tensors or tensors already broadcast as
(B, 1, 1, 1, 1); ``expand_to`` shapes any of them against a video (B, C, F, H, W): the one
helper for that, used everywhere (``per_sample`` flattens them to (B,)).
"""

from __future__ import annotations

import math

import torch

Coef = torch.Tensor | float


def expand_to(coef: Coef, x: torch.Tensor, *, name: str = "coef") -> torch.Tensor:
    """Per-sample ``coef`` shaped to broadcast against x (B, C, F, H, W), in x's dtype and device.

    Accepted: a float or 0-d tensor (one value for all), shape (B,) or (1,) (one value per
    sample, reshaped to (B, 1, 1, 1, 1)), or a tensor with x.ndim dims that already broadcasts
    against x without enlarging it, such as (B, 1, 1, 1, 1) (returned as is). Any x.ndim >= 1.
    ``name`` is what an error calls ``coef``.
    """
    coef = torch.as_tensor(coef, dtype=x.dtype, device=x.device)
    if coef.ndim == 0:
        return coef
    if coef.ndim == 1 and coef.shape[0] in (1, x.shape[0]):
        return coef.reshape(-1, *([1] * (x.ndim - 1)))
    dims = zip(coef.shape, x.shape, strict=False)
    if coef.ndim != x.ndim or any(c not in (1, n) for c, n in dims):
        b, ones = x.shape[0], ", 1" * (x.ndim - 1)
        raise ValueError(
            f"{name} has shape {tuple(coef.shape)}, which does not broadcast per sample against "
            f"x of shape {tuple(x.shape)}; allowed: a float, a 0-d tensor, shape ({b},), or "
            f"a shape of {x.ndim} dims each 1 or x's, e.g. ({b}{ones})"
        )
    return coef


def per_sample(coef: Coef, x: torch.Tensor, *, name: str = "coef") -> torch.Tensor:
    """``coef`` as one value per sample of x, shape (B,).

    Takes any shape ``expand_to`` takes whose only non-1 dim is the batch: a float, a 0-d
    tensor, (B,), (1,) or (B, 1, 1, 1, 1).
    """
    coef = expand_to(coef, x, name=name)
    if coef.ndim and any(n != 1 for n in coef.shape[1:]):
        raise ValueError(
            f"{name} has shape {tuple(coef.shape)}; one value per sample is needed: a float, "
            f"shape ({x.shape[0]},) or ({x.shape[0]}{', 1' * (x.ndim - 1)})"
        )
    return coef.reshape(-1).expand(x.shape[0]) if coef.ndim else coef.expand(x.shape[0])


def _tensor(value: torch.Tensor | float) -> torch.Tensor:
    """A tensor as is; a Python number as a 0-d tensor of the default dtype."""
    return value if torch.is_tensor(value) else torch.tensor(value, dtype=torch.get_default_dtype())


_HALF = (torch.float16, torch.bfloat16)


def _working(value: torch.Tensor) -> torch.Tensor:
    """``value`` in float32 where it is half or bfloat16: tan(a t + b) near pi / 2 and
    exp(-logsnr / 2) at the schedule's ends need float32's precision (in float16 logsnr(1)
    came out as -15.3, not -20); results are cast back to the half dtype (``_given``)."""
    return value.float() if value.dtype in _HALF else value


def _given(result: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """``result`` in ``given``'s dtype where that is half or bfloat16; as it is otherwise
    (an integer ``t`` gives floats, as torch's own functions do)."""
    return result.to(given.dtype) if given.dtype in _HALF else result


def _ab(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    if not logsnr_min < logsnr_max:
        raise ValueError(f"logsnr_min={logsnr_min} must be < logsnr_max={logsnr_max}")
    b = math.atan(math.exp(-logsnr_max / 2))
    a = math.atan(math.exp(-logsnr_min / 2)) - b
    return a, b


def logsnr_cosine(
    t: torch.Tensor | float, logsnr_min: float = -20.0, logsnr_max: float = 20.0
) -> torch.Tensor:
    """Cosine log-SNR schedule lambda(t) in [logsnr_min, logsnr_max], t clipped to [0, 1].

    logsnr = -2 log tan(a t + b), b = arctan(exp(-logsnr_max / 2)),
    a = arctan(exp(-logsnr_min / 2)) - b, so logsnr(0) = logsnr_max, logsnr(1) = logsnr_min
    [CFG §2]. With the default symmetric bounds logsnr(0.5) = 0. Half and bfloat16 ``t``
    is computed in float32 and the result given in its dtype.
    """
    a, b = _ab(logsnr_min, logsnr_max)
    given = _tensor(t)
    t = _working(given).clamp(0.0, 1.0)
    logsnr = -2.0 * torch.log(torch.tan(a * t + b))
    return _given(logsnr.clamp(logsnr_min, logsnr_max), given)


def t_from_logsnr(
    logsnr: torch.Tensor | float, logsnr_min: float = -20.0, logsnr_max: float = 20.0
) -> torch.Tensor:
    """Inverse of ``logsnr_cosine``: t = (arctan(exp(-logsnr / 2)) - b) / a, clipped to
    [0, 1] as logsnr_cosine clips t: a logsnr beyond the bounds (the sampler's final +inf)
    gives t = 0 or 1, not a time outside [0, 1]. Half and bfloat16 are computed in float32,
    as there."""
    a, b = _ab(logsnr_min, logsnr_max)
    given = _tensor(logsnr)
    logsnr = _working(given)
    return _given(((torch.atan(torch.exp(-logsnr / 2)) - b) / a).clamp(0.0, 1.0), given)


def alpha_sigma(logsnr: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) with alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr) [VDM §2, CFG §2].

    So alpha^2 + sigma^2 = 1 (variance preserving) and alpha^2 / sigma^2 = exp(logsnr) = SNR.
    logsnr = +inf gives (1, 0): clean data. Half and bfloat16 are computed in float32 (in
    float16, alpha at logsnr = -20 came out as 0, not 4.5e-5) and given in their dtype.
    """
    given = _tensor(logsnr)
    logsnr = _working(given)
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
    return _given(alpha, given), _given(sigma, given)


def expand_working(coef: Coef, x: torch.Tensor, *, name: str = "coef") -> torch.Tensor:
    """``expand_to(coef, x)``, but in float32 where x is half or bfloat16: the dtype that
    coefficients built from logsnr are computed in before they meet x."""
    if x.dtype not in _HALF:
        return expand_to(coef, x, name=name)
    shape_of_x = x.new_zeros((), dtype=torch.float32).expand(x.shape)  # no memory
    return expand_to(coef, shape_of_x, name=name)


def q_sample(x: torch.Tensor, logsnr: Coef, eps: torch.Tensor) -> torch.Tensor:
    """Forward process: z_t = alpha_t x + sigma_t eps, a draw from q(z_t | x) [VDM §2]."""
    if x.shape != eps.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)}; it must match x {tuple(x.shape)}")
    alpha, sigma = alpha_sigma(expand_to(logsnr, x))
    return alpha * x + sigma * eps


def q_posterior(
    z_t: torch.Tensor, x: torch.Tensor, logsnr_t: Coef, logsnr_s: Coef
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(z_s | z_t, x) for logsnr_s > logsnr_t [VDM eq. 3, VDM-K].

    With r = exp(logsnr_t - logsnr_s):
      mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x
      var  = (1 - r) sigma_s^2            (sigma~^2_{s|t}; a (B, 1, 1, 1, 1) tensor)
    z_t's coefficient is computed as (alpha_t / alpha_s) (sigma_s / sigma_t)^2, the same
    number [VDM-K] without a division by alpha_t, which vanishes at logsnr_t = -inf. So
    logsnr_s = +inf gives mean = x and var = 0, and logsnr_t = -inf gives mean = alpha_s x
    and var = sigma_s^2 (z_t is pure noise). Half and bfloat16 are computed in float32.
    """
    if z_t.shape != x.shape:
        raise ValueError(f"x has shape {tuple(x.shape)}; it must match z_t {tuple(z_t.shape)}")
    logsnr_t, logsnr_s = expand_working(logsnr_t, z_t), expand_working(logsnr_s, z_t)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    one_minus_r = -torch.expm1(logsnr_t - logsnr_s)
    z_coef = (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2  # = r alpha_s / alpha_t
    mean = z_coef.to(z_t.dtype) * z_t + (one_minus_r * alpha_s).to(z_t.dtype) * x
    return mean, (one_minus_r * sigma_s**2).to(z_t.dtype)


def variance_t_given_s(logsnr_t: Coef, logsnr_s: Coef) -> torch.Tensor:
    """sigma^2_{t|s} = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 = (1 - r) sigma_t^2 [VDM-K].

    The variance of q(z_t | z_s), with r = exp(logsnr_t - logsnr_s) as in ``q_posterior``.
    Half and bfloat16 are computed in float32 and given in logsnr_t's dtype.
    """
    given = _tensor(logsnr_t)
    logsnr_t, logsnr_s = _working(given), _working(_tensor(logsnr_s))
    _, sigma_t = alpha_sigma(logsnr_t)
    return _given(-torch.expm1(logsnr_t - logsnr_s) * sigma_t**2, given)
