"""The four loss weightings: per-sample shape, x-space identities, edge logSNRs."""

import pytest
import torch

from ivref import losses, schedules
from ivref import parameterization as P

D = torch.float64


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 2, 4, 4, dtype=D, generator=g)
    eps = torch.randn(6, 3, 2, 4, 4, dtype=D, generator=g)
    logsnr = torch.tensor([-15.0, -4.0, -0.5, 0.0, 3.0, 12.0], dtype=D)
    alpha, sigma = schedules.alpha_sigma(logsnr)
    z_t = schedules.q_sample(x, logsnr, eps)
    v_hat = torch.randn(6, 3, 2, 4, 4, dtype=D, generator=g)
    return x, eps, logsnr, alpha, sigma, z_t, v_hat


def _mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def test_v_loss_is_v_mse():
    x, eps, logsnr, alpha, sigma, z_t, v_hat = _batch()
    loss = losses.diffusion_loss(v_hat, x, eps, logsnr)
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, _mse(v_hat, P.v_from_x_eps(x, eps, alpha, sigma)))


@pytest.mark.parametrize("weighting", ["v", "eps", "snr_trunc", "x"])
def test_every_weighting_is_its_weight_times_x_mse(weighting):
    x, eps, logsnr, alpha, sigma, z_t, v_hat = _batch(1)
    x_hat = P.x_from_v(z_t, v_hat, alpha, sigma)
    snr = torch.exp(logsnr)
    weight = {"v": 1 + snr, "eps": snr, "snr_trunc": snr.clamp(min=1), "x": torch.ones(6, dtype=D)}
    torch.testing.assert_close(losses.loss_weight(logsnr, weighting), weight[weighting])
    loss = losses.diffusion_loss(v_hat, x, eps, logsnr, weighting=weighting)
    torch.testing.assert_close(loss, weight[weighting] * _mse(x_hat, x), rtol=1e-7, atol=0)


def test_eps_weighting_is_eps_mse():
    x, eps, logsnr, alpha, sigma, z_t, v_hat = _batch(2)
    loss = losses.diffusion_loss(v_hat, x, eps, logsnr, weighting="eps")
    torch.testing.assert_close(loss, _mse(P.eps_from_v(z_t, v_hat, alpha, sigma), eps))


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_prediction_kinds_agree_on_the_same_x_hat(prediction):
    """The loss depends only on x_hat: the same x_hat given as v, eps or x gives one loss."""
    x, eps, logsnr, alpha, sigma, z_t, v_hat = _batch(3)
    convert = {
        "v": lambda: v_hat,
        "eps": lambda: P.eps_from_v(z_t, v_hat, alpha, sigma),
        "x": lambda: P.x_from_v(z_t, v_hat, alpha, sigma),
    }
    ref = losses.diffusion_loss(v_hat, x, eps, logsnr, weighting="snr_trunc")
    out = losses.diffusion_loss(
        convert[prediction](), x, eps, logsnr, weighting="snr_trunc", prediction=prediction
    )
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)


def test_matching_pairs_are_plain_mse():
    x, eps, logsnr, *_ = _batch(4)
    g = torch.Generator().manual_seed(9)
    pred = torch.randn(x.shape, dtype=D, generator=g)
    kw = dict(weighting="eps", prediction="eps")
    torch.testing.assert_close(losses.diffusion_loss(pred, x, eps, logsnr, **kw), _mse(pred, eps))
    kw = dict(weighting="x", prediction="x")
    torch.testing.assert_close(losses.diffusion_loss(pred, x, eps, logsnr, **kw), _mse(pred, x))


def test_exact_prediction_gives_zero_and_finite_at_extremes():
    x, eps, _, *_ = _batch(5)
    logsnr = torch.tensor([-20.0, -20.0, 20.0, 20.0, 0.0, 0.0], dtype=D)
    alpha, sigma = schedules.alpha_sigma(logsnr)
    v = P.v_from_x_eps(x, eps, alpha, sigma)
    for weighting in losses.WEIGHTINGS:
        loss = losses.diffusion_loss(v, x, eps, logsnr, weighting=weighting)
        assert torch.isfinite(loss).all() and loss.abs().max() == 0


def test_errors_name_the_argument():
    x, eps, logsnr, *_, v_hat = _batch()
    with pytest.raises(ValueError, match="weighting"):
        losses.diffusion_loss(v_hat, x, eps, logsnr, weighting="l1")
    with pytest.raises(ValueError, match="prediction"):
        losses.diffusion_loss(v_hat, x, eps, logsnr, prediction="score")
    with pytest.raises(ValueError, match="same shape"):
        losses.diffusion_loss(v_hat[:, :2], x, eps, logsnr)
    with pytest.raises(ValueError, match="logsnr"):
        losses.diffusion_loss(v_hat, x, eps, logsnr[:3])


def test_gradient_flows_to_prediction():
    x, eps, logsnr, *_, v_hat = _batch()
    v_hat = v_hat.clone().requires_grad_(True)
    losses.diffusion_loss(v_hat, x, eps, logsnr).mean().backward()
    assert v_hat.grad is not None and v_hat.grad.abs().sum() > 0
