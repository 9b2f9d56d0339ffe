"""Cosine log-SNR schedule, alpha/sigma, q(z_t | x) and the posterior q(z_s | z_t, x)."""

import math

import pytest
import torch

from ivref import schedules

D = torch.float64


def test_endpoints_and_midpoint():
    lam = schedules.logsnr_cosine(torch.tensor([0.0, 0.5, 1.0], dtype=D))
    torch.testing.assert_close(lam, torch.tensor([20.0, 0.0, -20.0], dtype=D), atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_times_keep_the_schedule_to_its_ends(dtype):
    """tan(a t + b) near pi / 2 in float16 gave logsnr(1) = -15.3 (bfloat16: -15.25)."""
    t = torch.tensor([0.0, 0.02, 0.5, 0.98, 1.0], dtype=dtype)
    lam = schedules.logsnr_cosine(t)
    exact = schedules.logsnr_cosine(t.double())  # the same (rounded) times, in float64
    assert lam.dtype == dtype and lam[0] == 20 and lam[-1] == -20
    torch.testing.assert_close(lam.double(), exact, atol=0.02 * 20 * 2**-7, rtol=2**-7)
    back = schedules.t_from_logsnr(exact.to(dtype))
    assert back.dtype == dtype
    torch.testing.assert_close(back.double(), t.double(), atol=2e-3, rtol=0)
    whole = torch.tensor([0, 1])  # integers give floats, as before (not cast back to int)
    assert schedules.logsnr_cosine(whole).tolist() == [20.0, -20.0]
    assert schedules.t_from_logsnr(torch.tensor([0])).is_floating_point()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_alpha_sigma_and_posterior_keep_the_noisy_end(dtype):
    """In float16, alpha at logsnr = -20 (4.5e-5) underflowed to 0, and the posterior's
    r alpha_s / alpha_t became r x inf: a NaN mean, and an ancestral sampler giving inf."""
    lam = torch.tensor([-20.0, -10.0, 0.0, 20.0])
    alpha, sigma = schedules.alpha_sigma(lam.to(dtype))
    exact = torch.sigmoid(lam.double()).sqrt()  # alpha^2 = sigmoid(logsnr), independently
    assert alpha.dtype == sigma.dtype == dtype
    torch.testing.assert_close(alpha.double(), exact, rtol=2**-7, atol=0)
    torch.testing.assert_close(
        sigma.double(), torch.sigmoid(-lam.double()).sqrt(), rtol=2**-7, atol=0
    )
    g = torch.Generator().manual_seed(5)
    z_t, x = torch.randn(2, 3, 1, 2, 2, 2, generator=g).to(dtype)
    lt, ls = torch.tensor([-20.0, -20.0, -3.0]), torch.tensor([-1.76, 20.0, 4.0])
    mean, var = schedules.q_posterior(z_t, x, lt.to(dtype), ls.to(dtype))
    want_mean, want_var = schedules.q_posterior(z_t.double(), x.double(), lt, ls)
    assert mean.dtype == var.dtype == dtype
    torch.testing.assert_close(mean.double(), want_mean, rtol=2**-6, atol=2**-10)
    torch.testing.assert_close(var.double(), want_var, rtol=2**-6, atol=1e-7)  # 2e-9: a float16 0
    var_ts = schedules.variance_t_given_s(lt.to(dtype), ls.to(dtype))
    torch.testing.assert_close(
        var_ts.double(),
        schedules.variance_t_given_s(lt.double(), ls.double()),
        rtol=2**-7,
        atol=1e-7,
    )


def test_posterior_given_pure_noise_is_the_prior_of_z_s():
    """logsnr_t = -inf: z_t says nothing of x, so q(z_s | z_t, x) = q(z_s | x) =
    N(alpha_s x, sigma_s^2) (the old r alpha_s / alpha_t form gave 0 x inf = NaN)."""
    g = torch.Generator().manual_seed(6)
    z_t, x = torch.randn(2, 2, 3, 2, 2, 2, dtype=D, generator=g)
    ls = torch.tensor([-4.0, 2.5], dtype=D)
    mean, var = schedules.q_posterior(z_t, x, float("-inf"), ls)
    alpha_s, sigma_s = torch.sigmoid(ls).sqrt(), torch.sigmoid(-ls).sqrt()
    torch.testing.assert_close(mean, alpha_s.view(-1, 1, 1, 1, 1) * x, atol=1e-15, rtol=0)
    torch.testing.assert_close(var.reshape(-1), sigma_s**2, atol=1e-15, rtol=0)


def test_t_from_logsnr_stays_in_the_unit_interval_beyond_the_bounds():
    """The inverse is clipped as the schedule clips t: the sampler's final logsnr = +inf
    gave t = -2.9e-5, and -inf gave 1.00003."""
    lam = torch.tensor([float("-inf"), -25.0, -20.0, 0.0, 20.0, 25.0, float("inf")], dtype=D)
    t = schedules.t_from_logsnr(lam)
    torch.testing.assert_close(t, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=D))
    inside = torch.linspace(-19.9, 19.9, 11, dtype=D)  # inside: still the exact inverse
    torch.testing.assert_close(schedules.logsnr_cosine(schedules.t_from_logsnr(inside)), inside)


def test_custom_bounds_endpoints():
    lam = schedules.logsnr_cosine(torch.tensor([0.0, 1.0], dtype=D), -10.0, 14.0)
    torch.testing.assert_close(lam, torch.tensor([14.0, -10.0], dtype=D), atol=1e-9, rtol=0)


def test_strictly_decreasing():
    lam = schedules.logsnr_cosine(torch.linspace(0, 1, 1001, dtype=D))
    assert (lam.diff() < 0).all()


def test_clipped_outside_unit_interval():
    lam = schedules.logsnr_cosine(torch.tensor([-0.1, 1.1], dtype=D))
    assert lam.tolist() == [20.0, -20.0]


def test_matches_closed_form():
    t = torch.rand(100, dtype=D)
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    torch.testing.assert_close(schedules.logsnr_cosine(t), -2 * torch.log(torch.tan(a * t + b)))


def test_t_from_logsnr_inverts():
    t = torch.linspace(0, 1, 257, dtype=D)
    back = schedules.t_from_logsnr(schedules.logsnr_cosine(t))
    torch.testing.assert_close(back, t, atol=1e-12, rtol=0)
    lam = torch.linspace(-19.5, 19.5, 50, dtype=D)
    torch.testing.assert_close(schedules.logsnr_cosine(schedules.t_from_logsnr(lam)), lam)


def test_alpha_sigma_identities():
    lam = torch.linspace(-20, 20, 101, dtype=D)
    alpha, sigma = schedules.alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam), atol=1e-15, rtol=0)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam)
    a_inf, s_inf = schedules.alpha_sigma(torch.tensor(float("inf"), dtype=D))
    assert a_inf.item() == 1.0 and s_inf.item() == 0.0


def test_expand_to_shapes_and_errors():
    x = torch.zeros(3, 2, 4, 5, 5)
    assert schedules.expand_to(torch.ones(3), x).shape == (3, 1, 1, 1, 1)
    assert schedules.expand_to(2.0, x).shape == ()
    with pytest.raises(ValueError, match="coef"):
        schedules.expand_to(torch.ones(2), x)


def test_q_sample_is_alpha_x_plus_sigma_eps():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 2, 4, 4, dtype=D, generator=g).unbind(0)[0:2]
    x = x.unsqueeze(0).expand(2, -1, -1, -1, -1).clone()
    eps = eps.unsqueeze(0).expand(2, -1, -1, -1, -1).clone()
    lam = torch.tensor([-3.0, 4.0], dtype=D)
    z = schedules.q_sample(x, lam, eps)
    for b in range(2):
        a, s = schedules.alpha_sigma(lam[b])
        torch.testing.assert_close(z[b], a * x[b] + s * eps[b])
    with pytest.raises(ValueError, match="eps"):
        schedules.q_sample(x, lam, eps[:1])


def test_posterior_matches_gaussian_conditioning():
    """q(z_s | z_t, x) by Bayes: z_t | z_s ~ N((alpha_t/alpha_s) z_s, sigma^2_{t|s})."""
    lt, ls = torch.tensor(-1.5, dtype=D), torch.tensor(2.5, dtype=D)
    at, st = schedules.alpha_sigma(lt)
    as_, ss = schedules.alpha_sigma(ls)
    a_ts = at / as_
    var_ts = st**2 - a_ts**2 * ss**2
    post_var = 1 / (1 / ss**2 + a_ts**2 / var_ts)
    g = torch.Generator().manual_seed(1)
    z_t, x = torch.randn(2, 1, 3, 2, 2, 2, dtype=D, generator=g)
    post_mean = post_var * (as_ * x / ss**2 + a_ts * z_t / var_ts)
    mean, var = schedules.q_posterior(z_t, x, lt, ls)
    torch.testing.assert_close(mean, post_mean)
    torch.testing.assert_close(var, post_var)
    torch.testing.assert_close(schedules.variance_t_given_s(lt, ls), var_ts)


def test_posterior_at_infinite_logsnr_is_x():
    g = torch.Generator().manual_seed(2)
    z_t, x = torch.randn(2, 2, 3, 2, 2, 2, dtype=D, generator=g)
    mean, var = schedules.q_posterior(z_t, x, torch.tensor([1.0, -4.0], dtype=D), float("inf"))
    torch.testing.assert_close(mean, x)
    assert (var == 0).all()


def test_bad_bounds_raise():
    with pytest.raises(ValueError, match="logsnr_min"):
        schedules.logsnr_cosine(0.5, logsnr_min=5.0, logsnr_max=1.0)


@pytest.mark.parametrize(
    "form",
    [
        lambda c: c,  # (B,)
        lambda c: c.reshape(-1, 1, 1, 1, 1),  # already broadcast, as other libraries pass it
        lambda c: c[:1].reshape(1, 1, 1, 1, 1),  # one value for the batch, broadcast
        lambda c: c[:1],  # (1,)
        lambda c: c[0],  # 0-d tensor
        lambda c: float(c[0]),  # Python float
    ],
    ids=["(B,)", "(B,1,1,1,1)", "(1,1,1,1,1)", "(1,)", "0-d", "float"],
)
def test_every_per_sample_form_gives_the_same_result_in_float64(form):
    from ivref import losses, parameterization, samplers

    g = torch.Generator().manual_seed(4)
    x, eps = torch.randn(2, 3, 2, 2, 4, 4, dtype=D, generator=g)
    lam = torch.tensor([-3.0, 4.0, 0.5], dtype=D)
    if torch.as_tensor(form(lam)).numel() == 1:
        lam = lam[:1].expand(3)  # a single value stands for every sample
    alpha, sigma = schedules.alpha_sigma(lam)
    z_t = schedules.q_sample(x, form(lam), eps)
    want = alpha[:, None, None, None, None] * x + sigma[:, None, None, None, None] * eps
    torch.testing.assert_close(z_t, want, atol=1e-15, rtol=0)
    v = parameterization.v_from_x_eps(x, eps, form(alpha), form(sigma))
    torch.testing.assert_close(parameterization.x_from_v(z_t, v, form(alpha), form(sigma)), x)
    torch.testing.assert_close(parameterization.eps_from_v(z_t, v, form(alpha), form(sigma)), eps)
    torch.testing.assert_close(samplers.ddim_step(z_t, x, form(lam), float("inf")), x)
    mean, var = schedules.q_posterior(z_t, x, form(lam), form(lam) + 1.0)
    ref_mean, ref_var = schedules.q_posterior(z_t, x, lam, lam + 1.0)
    torch.testing.assert_close(mean, ref_mean, atol=1e-15, rtol=0)
    torch.testing.assert_close(var.expand_as(x), ref_var.expand_as(x), atol=1e-15, rtol=0)
    per = losses.diffusion_loss(v, x, eps, form(lam))
    torch.testing.assert_close(per, losses.diffusion_loss(v, x, eps, lam))
    assert schedules.per_sample(form(lam), x).shape == (3,)


@pytest.mark.parametrize(
    "shape", [(2,), (3, 1), (3, 1, 1, 1), (2, 1, 1, 1, 1), (3, 1, 1, 1, 1, 1), (3, 2, 9, 1, 1)]
)
def test_shapes_that_do_not_broadcast_per_sample_are_explained(shape):
    x = torch.zeros(3, 2, 4, 5, 5)
    with pytest.raises(ValueError, match=r"alpha has shape .*allowed: a float, a 0-d tensor"):
        schedules.expand_to(torch.ones(shape), x, name="alpha")


def test_per_sample_refuses_a_coefficient_that_varies_inside_a_sample():
    x = torch.zeros(3, 2, 4, 5, 5)
    assert schedules.expand_to(torch.ones(1, 2, 1, 1, 1), x).shape == (1, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="logsnr has shape .*one value per sample"):
        schedules.per_sample(torch.ones(1, 2, 1, 1, 1), x, name="logsnr")
