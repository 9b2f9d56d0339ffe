"""x / eps / v conversions: definitions, round trips at logSNR -15..15, shape errors."""

import pytest
import torch

from ivref import parameterization as P
from ivref import schedules

D = torch.float64


def _setup(seed=0, batch=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 2, 4, 4, dtype=D, generator=g)
    eps = torch.randn(batch, 3, 2, 4, 4, dtype=D, generator=g)
    logsnr = torch.linspace(-15, 15, batch, dtype=D)
    alpha, sigma = schedules.alpha_sigma(logsnr)
    z_t = schedules.q_sample(x, logsnr, eps)
    return x, eps, z_t, alpha, sigma


def test_v_definition_and_rotation():
    x, eps, z_t, alpha, sigma = _setup()
    v = P.v_from_x_eps(x, eps, alpha, sigma)
    a, s = schedules.expand_to(alpha, x), schedules.expand_to(sigma, x)
    torch.testing.assert_close(v, a * eps - s * x)
    # (z_t, v) is (x, eps) rotated: norms are preserved sample by sample
    torch.testing.assert_close(z_t**2 + v**2, x**2 + eps**2)


def test_every_conversion_recovers_the_truth():
    x, eps, z_t, alpha, sigma = _setup()
    v = P.v_from_x_eps(x, eps, alpha, sigma)
    torch.testing.assert_close(P.x_from_v(z_t, v, alpha, sigma), x)
    torch.testing.assert_close(P.eps_from_v(z_t, v, alpha, sigma), eps)
    torch.testing.assert_close(P.v_from_x(z_t, x, alpha, sigma), v, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(P.v_from_eps(z_t, eps, alpha, sigma), v, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(P.x_from_eps(z_t, eps, alpha, sigma), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(P.eps_from_x(z_t, x, alpha, sigma), eps, rtol=1e-6, atol=1e-6)


def test_round_trips_on_arbitrary_predictions():
    """Round trips hold for any z_t and prediction, not only consistent ones."""
    _, _, z_t, alpha, sigma = _setup(seed=1)
    pred = torch.randn_like(z_t)
    x = P.x_from_v(z_t, pred, alpha, sigma)
    torch.testing.assert_close(P.v_from_x(z_t, x, alpha, sigma), pred, rtol=1e-6, atol=1e-6)
    eps = P.eps_from_v(z_t, pred, alpha, sigma)
    torch.testing.assert_close(P.v_from_eps(z_t, eps, alpha, sigma), pred, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(P.v_from_x_eps(x, eps, alpha, sigma), pred)
    torch.testing.assert_close(P.x_from_eps(z_t, eps, alpha, sigma), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(P.eps_from_x(z_t, x, alpha, sigma), eps, rtol=1e-6, atol=1e-6)


def test_x_from_prediction_dispatch():
    x, eps, z_t, alpha, sigma = _setup(seed=2)
    v = P.v_from_x_eps(x, eps, alpha, sigma)
    for kind, pred in (("v", v), ("eps", eps), ("x", x)):
        out = P.x_from_prediction(z_t, pred, alpha, sigma, kind)
        torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="prediction"):
        P.x_from_prediction(z_t, v, alpha, sigma, "score")


def test_scalar_coefficients_broadcast():
    x, eps, *_ = _setup(seed=3)
    alpha, sigma = schedules.alpha_sigma(torch.tensor(0.7, dtype=D))
    torch.testing.assert_close(P.v_from_x_eps(x, eps, alpha, sigma), alpha * eps - sigma * x)


def test_mismatched_shapes_raise():
    x, eps, z_t, alpha, sigma = _setup()
    with pytest.raises(ValueError, match="v has shape"):
        P.x_from_v(z_t, eps[:, :2], alpha, sigma)
    with pytest.raises(ValueError, match="coef"):
        P.x_from_v(z_t, eps, alpha[:3], sigma[:3])
