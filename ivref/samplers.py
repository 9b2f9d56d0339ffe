"""Samplers: DDIM, ancestral and stochastic N-step, and one ``sample`` loop over a time grid.

Every sampler takes a denoiser ``x_hat_fn(z_t, logsnr_t) -> x_hat`` (logsnr_t of shape (B,))
and moves z_t at logsnr_t to z_s at a higher logsnr_s. Time runs from t = 1 (noise) to
t = 0 uniformly, mapped to logsnr by the cosine schedule; the last step goes to
logsnr_s = +inf and returns x_hat itself. A model predicting v becomes an ``x_hat_fn``
with ``parameterization.x_from_v``; guidance wraps it (``guidance.guided_x_hat_fn``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import cast

import torch
from tqdm.auto import tqdm

from ivref import schedules
from ivref.config_types import MAX_STEPS  # re-exported: samplers.MAX_STEPS
from ivref.devices import parse_device

XHatFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS: tuple[str, ...] = ("ddim", "ancestral", "stochastic")
# One generator for the whole batch, or one per batch row (row i's noise from generator i, so
# a video does not depend on the others sampled beside it), or None (torch's global one).
Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generators(generator: object) -> None:
    """``Generators``: None, a torch.Generator, or a sequence of them (one per batch row)."""
    items: list[object]
    if isinstance(generator, Sequence) and not isinstance(generator, str):
        items = list(generator)
    else:
        items = [generator]
    if generator is None or (items and all(isinstance(g, torch.Generator) for g in items)):
        return
    raise TypeError(
        f"generator={generator!r}: give a torch.Generator (e.g. "
        "torch.Generator().manual_seed(0)), one per batch row in a list, or None"
    )


def randn(
    shape: Sequence[int],
    generator: Generators,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """N(0, I) drawn on the generator's device (the CPU for a CPU generator, and torch's
    global CPU generator for None), then moved to ``device`` (None: left there).

    One seeded CPU generator (or ``torch.manual_seed``) thus gives the same noise whatever
    device the model is on; a CUDA tensor cannot be drawn from a CPU generator directly. A
    sequence of generators, one per batch row (shape[0] of them), draws row i from
    generator i.
    """
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(
                f"{len(generator)} generators for a batch of {shape[0]}: give one per row, "
                "or a single generator"
            )
        return torch.stack([randn(shape[1:], g, dtype, device) for g in generator])
    where = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)


def _check_pair(z_t: torch.Tensor, x_hat: torch.Tensor) -> None:
    if z_t.shape != x_hat.shape:
        raise ValueError(
            f"x_hat has shape {tuple(x_hat.shape)}; it must match z_t {tuple(z_t.shape)}"
        )


def ddim_step(
    z_t: torch.Tensor, x_hat: torch.Tensor, logsnr_t: schedules.Coef, logsnr_s: schedules.Coef
) -> torch.Tensor:
    """Deterministic DDIM step t -> s [DDIM, PD §2].

    eps_hat = (z_t - alpha_t x_hat) / sigma_t;  z_s = alpha_s x_hat + sigma_s eps_hat.
    At logsnr_s = +inf (alpha_s = 1, sigma_s = 0) it returns x_hat.
    """
    _check_pair(z_t, x_hat)
    alpha_t, sigma_t = schedules.alpha_sigma(schedules.expand_to(logsnr_t, z_t))
    alpha_s, sigma_s = schedules.alpha_sigma(schedules.expand_to(logsnr_s, z_t))
    eps_hat = (z_t - alpha_t * x_hat) / sigma_t
    return alpha_s * x_hat + sigma_s * eps_hat


def ancestral_step(
    z_t: torch.Tensor,
    x_hat: torch.Tensor,
    logsnr_t: schedules.Coef,
    logsnr_s: schedules.Coef,
    *,
    gamma: float = 0.3,
    generator: Generators = None,
) -> torch.Tensor:
    """Ancestral step t -> s: a draw from q(z_s | z_t, x = x_hat) with interpolated variance.

    With r = exp(logsnr_t - logsnr_s), the mean of eq. 3 and the variance of eq. 4
    [VDM eq. 3, VDM eq. 4]:
      mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat
      var  = (sigma~^2_{s|t})^(1 - gamma) (sigma^2_{t|s})^gamma,
      sigma~^2_{s|t} = (1 - r) sigma_s^2,  sigma^2_{t|s} = (1 - r) sigma_t^2.
    gamma = 0 is the posterior variance, gamma = 1 the forward one. At logsnr_s = +inf it
    returns x_hat (no noise is added on the final step). The variances are computed in
    float32 for half and bfloat16 z_t (in float16 they underflow near logsnr = -20).
    """
    _check_pair(z_t, x_hat)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} is invalid; allowed range [0, 1]")
    lt, ls = schedules.expand_working(logsnr_t, z_t), schedules.expand_working(logsnr_s, z_t)
    mean, _ = schedules.q_posterior(z_t, x_hat, lt, ls)
    _, sigma_s = schedules.alpha_sigma(ls)
    var_s_t = -torch.expm1(lt - ls) * sigma_s**2  # q_posterior's variance, unrounded
    var_t_s = schedules.variance_t_given_s(lt, ls)
    log_var = (1 - gamma) * torch.log(var_s_t) + gamma * torch.log(var_t_s)
    final = torch.isposinf(ls)
    std = torch.where(final, torch.zeros_like(log_var), torch.exp(0.5 * log_var))
    noise = randn(z_t.shape, generator, z_t.dtype, z_t.device)
    return torch.where(final, x_hat, mean + std.to(z_t.dtype) * noise)


def noise_back(
    z_s: torch.Tensor,
    logsnr_s: schedules.Coef,
    logsnr_t: schedules.Coef,
    generator: Generators = None,
) -> torch.Tensor:
    """A draw from q(z_t | z_s) for logsnr_t <= logsnr_s: add noise from time s back to t.

    z_t = (alpha_t / alpha_s) z_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) eps
    [IV §2.7, VDM-K]; the variance is ``schedules.variance_t_given_s``. The coefficients
    are computed in float32 for half and bfloat16 z_s.
    """
    lt, ls = schedules.expand_working(logsnr_t, z_s), schedules.expand_working(logsnr_s, z_s)
    alpha_t, _ = schedules.alpha_sigma(lt)
    alpha_s, _ = schedules.alpha_sigma(ls)
    std = schedules.variance_t_given_s(lt, ls).clamp(min=0).sqrt()
    noise = randn(z_s.shape, generator, z_s.dtype, z_s.device)
    return (alpha_t / alpha_s).to(z_s.dtype) * z_s + std.to(z_s.dtype) * noise


def stochastic_step(
    z_t: torch.Tensor,
    x_hat: torch.Tensor,
    logsnr_t: schedules.Coef,
    logsnr_s: schedules.Coef,
    logsnr_u: schedules.Coef,
    *,
    generator: Generators = None,
) -> torch.Tensor:
    """One step t -> s of the stochastic N-step sampler of distilled models [IV §2.7].

    A DDIM step of twice the size, t -> u (u one step past s), then noise back u -> s:
      z_u = ddim_step(z_t, x_hat, t, u);  z_s ~ q(z_s | z_u)  (``noise_back``).
    When s is the end (logsnr_s = +inf) it is the DDIM step to x_hat; when u would pass the
    end, pass logsnr_u = +inf (z_u = x_hat).
    """
    if bool(torch.isposinf(torch.as_tensor(logsnr_s)).all()):  # on the grid's device: no sync
        return ddim_step(z_t, x_hat, logsnr_t, logsnr_s)
    z_u = ddim_step(z_t, x_hat, logsnr_t, logsnr_u)
    return noise_back(z_u, logsnr_u, logsnr_s, generator)


def logsnr_grid(
    steps: int,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The steps + 1 logsnr values of the uniform grid t = 1, 1 - 1/steps, ..., 1/steps, 0.

    The last value is +inf rather than logsnr_max: the final step returns x_hat.
    """
    integral = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)  # NumPy's
    if not integral or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps={steps!r} is invalid; allowed: an integer from 1 to {MAX_STEPS}")
    steps = int(steps)
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    grid = schedules.logsnr_cosine(t, logsnr_min, logsnr_max)
    grid[-1] = float("inf")
    return grid.to(dtype)


def _check_arguments(  # typed as object: these are the checks of what a caller passed
    x_hat_fn: object,
    shape: object,
    sampler: object,
    gamma: object,
    generator: object,
    dtype: object,
    noise: object,
    progress: object,
) -> None:
    """``sample``'s arguments, each with what is allowed (``steps``: ``logsnr_grid``)."""
    if not callable(x_hat_fn):
        raise TypeError(f"x_hat_fn={x_hat_fn!r:.60} must be callable: (z, logsnr) -> x_hat")
    sizes = list(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else None
    integral = sizes is not None and all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in sizes
    )
    if not sizes or not integral or min(sizes) < 1:
        raise ValueError(
            f"shape={shape!r} must be a sequence of positive integers, batch first, e.g. "
            "(B, C, F, H, W)"
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is invalid; allowed: {list(SAMPLERS)}")
    real = isinstance(gamma, numbers.Real) and not isinstance(gamma, bool)
    if not real or not 0.0 <= cast(float, gamma) <= 1.0:  # (real: a number)
        raise ValueError(f"gamma={gamma!r} is invalid; allowed: a number in [0, 1]")
    check_generators(generator)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype={dtype!r} must be a floating torch.dtype, e.g. torch.float32")
    if noise is not None and not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor of the given shape, got {type(noise)}")
    if noise is not None and noise.device.type != "meta" and not torch.isfinite(noise).all():
        raise ValueError("noise holds NaN or infinite values")
    if not isinstance(progress, bool | str):
        raise TypeError(f"progress={progress!r} must be True, False or a label (str)")


@torch.no_grad()
def sample(
    x_hat_fn: XHatFn,
    shape: Sequence[int],
    *,
    steps: int,
    sampler: str = "ddim",
    gamma: float = 0.3,
    generator: Generators = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    noise: torch.Tensor | None = None,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
    progress: bool | str = False,
) -> torch.Tensor:
    """Draw x from noise z_1 ~ N(0, I) by ``steps`` sampler steps from t=1 to t=0.

    z_{t_0} = noise (or a fresh draw from ``generator``); for i = 0 .. steps - 1:
      x_hat = x_hat_fn(z_{t_i}, logsnr(t_i) as (B,)); z_{t_{i+1}} = step(z, x_hat, ...),
    with t_i = 1 - i / steps and a final step to logsnr = +inf that returns x_hat [DDIM, VDM].
    z is kept in ``dtype`` (an x_hat of another dtype is cast to it); logsnr is given in
    float32 when ``dtype`` is half or bfloat16 (float64 when it is float64), so the grid's
    values stay distinct and on the grid (bfloat16 repeated 60 of 1,024 steps).
    ``sampler``: "ddim" (deterministic), "ancestral" (``gamma`` sets its variance) or
    "stochastic" (the N-step sampler of distilled models, ``stochastic_step``: a DDIM
    step to t_{i+2}, then noise back to t_{i+1}) [IV §2.7]. ``generator``: one, or one per
    batch row (``Generators``); None draws from torch's global generator. ``progress`` shows
    a tqdm bar (a string: its label, e.g. the stage's name; True: the sampler's). Bad
    arguments get a ValueError or TypeError that says what is allowed.
    """
    _check_arguments(x_hat_fn, shape, sampler, gamma, generator, dtype, noise, progress)
    if device is not None:
        device = parse_device(device)
    work = torch.promote_types(dtype, torch.float32)  # a bfloat16 grid of 1,024 steps repeats
    grid = logsnr_grid(steps, logsnr_min, logsnr_max, work)  # values: logsnr stays float32
    shape = tuple(shape)
    if noise is None:
        z = randn(shape, generator, dtype, device)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; it must match shape {shape}")
    else:
        z = noise.to(dtype=dtype, device=device)
    model_grid = grid.to(z.device)  # the steps read the CPU grid: no device sync per step
    label = progress if isinstance(progress, str) else sampler
    for i in tqdm(range(steps), desc=label, disable=not progress, leave=False):
        logsnr_t = model_grid[i].expand(shape[0])  # (B,)
        x_hat = x_hat_fn(z, logsnr_t)
        if i == 0 and (not isinstance(x_hat, torch.Tensor) or x_hat.shape != z.shape):
            got = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
            raise TypeError(
                f"x_hat_fn(z, logsnr) returned {got}; it must return x_hat, a tensor of z's "
                f"shape {tuple(z.shape)}"
            )
        x_hat = x_hat.to(z.dtype)  # a model answering in another dtype: sampling stays in dtype
        if sampler == "ddim":
            z = ddim_step(z, x_hat, grid[i], grid[i + 1])
        elif sampler == "stochastic":
            u = grid[min(i + 2, steps)]
            z = stochastic_step(z, x_hat, grid[i], grid[i + 1], u, generator=generator)
        else:
            z = ancestral_step(z, x_hat, grid[i], grid[i + 1], gamma=gamma, generator=generator)
    return z
