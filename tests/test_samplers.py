"""DDIM and ancestral samplers: diffusers cross-check, Gaussian oracle, edge cases, errors."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from ivref import parameterization as P
from ivref import samplers, schedules

D = torch.float64
MU, S = 0.3, 0.5  # Gaussian data x ~ N(MU, S^2), per element


def gaussian_oracle(z_t, logsnr_t):
    """Exact E[x | z_t] for x ~ N(MU, S^2) [VDM-K]:

    x_hat = MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (z_t - alpha MU).
    """
    alpha, sigma = schedules.alpha_sigma(schedules.expand_to(logsnr_t, z_t))
    return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (z_t - alpha * MU)


def _diffusers_on_cosine(num_train=1000):
    t = torch.arange(1, num_train + 1, dtype=D) / num_train
    acp = torch.sigmoid(schedules.logsnr_cosine(t))
    betas = 1 - acp / torch.cat([torch.ones(1, dtype=D), acp[:-1]])
    return DDIMScheduler(
        num_train_timesteps=num_train,
        trained_betas=betas.tolist(),
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
    )


def test_ddim_step_matches_diffusers_v_prediction():
    sched = _diffusers_on_cosine()
    sched.set_timesteps(25)
    acp = sched.alphas_cumprod.to(D)
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(2, 3, 2, 4, 4, dtype=D, generator=g)
    timesteps = sched.timesteps.tolist()
    for i, step in enumerate(timesteps):
        v = torch.randn(z_t.shape, dtype=D, generator=g)
        ours_lt = torch.log(acp[step] / (1 - acp[step]))
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        ours_ls = float("inf") if prev is None else torch.log(acp[prev] / (1 - acp[prev]))
        alpha, sigma = schedules.alpha_sigma(ours_lt)
        x_hat = P.x_from_v(z_t, v, alpha, sigma)
        ours = samplers.ddim_step(z_t, x_hat, ours_lt, ours_ls)
        theirs = sched.step(v, step, z_t, eta=0.0).prev_sample
        err = (ours - theirs).norm() / theirs.norm()
        assert err < 1e-5, (i, step, err.item())
        z_t = ours
    assert prev is None  # the last step was the final one, to x_hat


def test_ddim_step_to_infinite_logsnr_returns_x_hat():
    g = torch.Generator().manual_seed(1)
    z_t, x_hat = torch.randn(2, 3, 3, 2, 4, 4, dtype=D, generator=g)
    torch.testing.assert_close(samplers.ddim_step(z_t, x_hat, 1.5, float("inf")), x_hat)


def test_ddim_step_with_true_x_stays_on_the_noise_direction():
    """z_t = alpha_t x + sigma_t eps and x_hat = x give z_s = alpha_s x + sigma_s eps."""
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 2, 3, 2, 4, 4, dtype=D, generator=g)
    lt, ls = torch.tensor([-6.0, 0.3], dtype=D), torch.tensor([-1.0, 7.0], dtype=D)
    z_s = samplers.ddim_step(schedules.q_sample(x, lt, eps), x, lt, ls)
    torch.testing.assert_close(z_s, schedules.q_sample(x, ls, eps))


def test_ancestral_step_moments():
    """Many draws from one step match the mean and the gamma-interpolated variance."""
    lt, ls, gamma = torch.tensor(-1.0, dtype=D), torch.tensor(1.0, dtype=D), 0.4
    z_t = torch.full((200, 1, 1, 10, 10), 0.7, dtype=D)
    x_hat = torch.full_like(z_t, -0.2)
    g = torch.Generator().manual_seed(3)
    z_s = samplers.ancestral_step(z_t, x_hat, lt, ls, gamma=gamma, generator=g)
    mean, var_s_t = schedules.q_posterior(z_t[:1], x_hat[:1], lt, ls)
    var = var_s_t ** (1 - gamma) * schedules.variance_t_given_s(lt, ls) ** gamma
    n = z_s.numel()
    assert abs(z_s.mean() - mean.flatten()[0]) < 5 * var.sqrt() / n**0.5
    assert abs(z_s.var() / var - 1) < 5 * (2 / n) ** 0.5


def test_ancestral_gamma_zero_is_the_posterior_and_final_step_is_x_hat():
    g = torch.Generator().manual_seed(4)
    z_t, x_hat = torch.randn(2, 3, 3, 2, 4, 4, dtype=D, generator=g)
    for gamma in (0.0, 1.0):
        out = samplers.ancestral_step(z_t, x_hat, 2.0, float("inf"), gamma=gamma, generator=g)
        torch.testing.assert_close(out, x_hat)
    a = samplers.ancestral_step(z_t, x_hat, -2.0, 3.0, gamma=0.0, generator=torch.Generator())
    mean, var = schedules.q_posterior(z_t, x_hat, -2.0, 3.0)
    noise = torch.randn(z_t.shape, dtype=D, generator=torch.Generator())
    torch.testing.assert_close(a, mean + var.sqrt() * noise)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "stochastic"])
def test_gaussian_oracle_reproduces_the_data_distribution(sampler):
    """With the exact denoiser for N(MU, S^2) every sampler reproduces MU and S (the
    stochastic one too: its last step returns x_hat, so only the steps before it can be
    wrong, and a wrong noise-back step shows here).

    Tolerance: 5 Monte Carlo standard errors plus the discretisation error at 512 steps
    (< 2e-3 in the std, measured against 64..256 steps where it shrinks ~1/steps).
    """
    n = 40000
    g = torch.Generator().manual_seed(5)
    x = samplers.sample(
        gaussian_oracle, (n // 100, 1, 1, 10, 10), steps=512, sampler=sampler, generator=g, dtype=D
    )
    assert abs(x.mean().item() - MU) < 5 * S / n**0.5
    assert abs(x.std().item() - S) < 5 * S / (2 * n) ** 0.5 + 2e-3


def test_few_step_ddim_shrinks_the_gaussian():
    """A coarse grid under-disperses (the oracle test is not vacuous): std at 4 steps << S."""
    g = torch.Generator().manual_seed(6)
    x = samplers.sample(gaussian_oracle, (200, 1, 1, 10, 10), steps=4, generator=g, dtype=D)
    assert x.std().item() < 0.8 * S


def test_single_step_returns_x_hat_of_the_noise():
    seen = []

    def x_hat_fn(z, logsnr_t):
        seen.append(logsnr_t.clone())
        return torch.tanh(z)

    noise = torch.randn(3, 3, 2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(7))
    out = samplers.sample(x_hat_fn, noise.shape, steps=1, noise=noise, dtype=D)
    torch.testing.assert_close(out, torch.tanh(noise))
    assert len(seen) == 1 and seen[0].shape == (3,) and seen[0].tolist() == [-20.0] * 3


def test_grid_is_uniform_in_t():
    grid = samplers.logsnr_grid(8)
    assert grid[-1] == float("inf")
    t = schedules.t_from_logsnr(grid[:-1])
    torch.testing.assert_close(t, torch.linspace(1, 1 / 8, 8, dtype=D), atol=1e-12, rtol=0)


def test_same_generator_seed_same_sample():
    def run():
        g = torch.Generator().manual_seed(11)
        return samplers.sample(
            gaussian_oracle, (2, 3, 2, 4, 4), steps=5, sampler="ancestral", generator=g
        )

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="steps"):
        samplers.sample(gaussian_oracle, (1, 3, 1, 2, 2), steps=0)
    with pytest.raises(ValueError, match="sampler"):
        samplers.sample(gaussian_oracle, (1, 3, 1, 2, 2), steps=2, sampler="euler")
    with pytest.raises(ValueError, match="gamma"):
        samplers.sample(gaussian_oracle, (1, 3, 1, 2, 2), steps=2, gamma=1.5)
    with pytest.raises(ValueError, match="noise"):
        samplers.sample(gaussian_oracle, (1, 3, 1, 2, 2), steps=2, noise=torch.zeros(2, 3, 1, 2, 2))
    with pytest.raises(ValueError, match="x_hat"):
        samplers.ddim_step(torch.zeros(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 1), 0.0, 1.0)


@pytest.mark.parametrize(
    "change, error, match",
    [  # each raised an AttributeError, IndexError or RuntimeError from inside, or passed
        ({"generator": 0}, TypeError, r"generator=0: give a torch.Generator"),
        ({"dtype": "float32"}, TypeError, r"dtype='float32' must be a floating torch.dtype"),
        ({"dtype": torch.int64}, TypeError, r"must be a floating torch.dtype"),
        ({"noise": [[0.0]]}, TypeError, r"noise must be a torch.Tensor"),
        ({"noise": torch.full((1, 3, 1, 2, 2), math.nan)}, ValueError, r"noise holds NaN"),
        ({"shape": 5}, ValueError, r"shape=5 must be a sequence of positive integers"),
        ({"shape": ()}, ValueError, r"shape=\(\) must be a sequence of positive integers"),
        ({"shape": (0, 3)}, ValueError, r"shape=\(0, 3\) must be"),
        ({"shape": (1.0, 3)}, ValueError, r"shape=\(1.0, 3\) must be"),
        ({"gamma": "0.3"}, ValueError, r"gamma='0.3' is invalid; allowed: a number in \[0, 1\]"),
        ({"x_hat_fn": "model"}, TypeError, r"x_hat_fn='model' must be callable"),
        ({"x_hat_fn": lambda z, logsnr: None}, TypeError, r"returned NoneType; it must return"),
        ({"x_hat_fn": lambda z, logsnr: z[0]}, TypeError, r"returned \(3, 1, 2, 2\); it must"),
        ({"progress": 1}, TypeError, r"progress=1 must be True, False or a label"),
    ],
)
def test_bad_arguments_say_what_is_allowed(change, error, match):
    args = {"x_hat_fn": gaussian_oracle, "shape": (1, 3, 1, 2, 2), "steps": 2} | change
    with pytest.raises(error, match=match):
        samplers.sample(args.pop("x_hat_fn"), args.pop("shape"), **args)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_cpu_generator_drives_a_model_on_another_device(sampler):
    """Noise comes from the CPU generator and is moved to the model's device (a CUDA model
    with a CPU generator failed in the stochastic sampler's noise-back step): the model only
    ever sees tensors on its own device, here "meta", which CI can run."""
    seen = []

    def on_meta(z_t, logsnr_t):
        seen.append(z_t.device.type)
        return torch.zeros_like(z_t)

    g = torch.Generator().manual_seed(0)
    x = samplers.sample(on_meta, (1, 3, 2, 4, 4), steps=3, sampler=sampler, generator=g,
                        device="meta")  # fmt: skip
    assert x.device.type == "meta" and x.shape == (1, 3, 2, 4, 4)
    assert seen == ["meta"] * 3


def test_a_device_that_is_not_usable_here_is_named_not_a_torch_internal_error(monkeypatch):
    run = dict(steps=1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError, match="'banana' is not a device name; use cpu, cuda, cuda:N or mps"
    ):
        samplers.sample(gaussian_oracle, (1, 3, 1, 2, 2), device="banana", **run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:0': CUDA is not available here"):
        samplers.sample(gaussian_oracle, (1, 3, 1, 2, 2), device="cuda:0", **run)


def test_noise_is_drawn_on_the_generator_device_then_moved():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    moved = samplers.randn((2, 3), g1, torch.float32, "meta")
    assert moved.device.type == "meta"
    # the generator advanced as a CPU draw of that shape does: the next draws agree
    torch.randn((2, 3), generator=g2)
    torch.testing.assert_close(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_one_generator_per_row_makes_each_row_independent_of_its_batch(sampler):
    """Row i's noise (start and every step) comes from generator i alone: sampled beside
    other rows or alone, it is the same sample."""

    def per_row(x, logsnr):  # a denoiser acting on each row alone
        return torch.tanh(x) * 0.5

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    shape = (1, 3, 2, 4, 4)
    batch = samplers.sample(per_row, (3, *shape[1:]), steps=4, sampler=sampler,
                            generator=gens(1, 2, 3))  # fmt: skip
    alone = samplers.sample(per_row, shape, steps=4, sampler=sampler, generator=gens(2))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    reordered = samplers.sample(per_row, (2, *shape[1:]), steps=4, sampler=sampler,
                                generator=gens(2, 9))  # fmt: skip
    torch.testing.assert_close(reordered[0:1], alone, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="2 generators for a batch of 3: give one per row"):
        samplers.sample(per_row, (3, *shape[1:]), steps=2, generator=gens(1, 2))


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "stochastic"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_follows_the_float32_run(sampler, dtype, monkeypatch):
    """In float16 the ancestral sampler returned inf: the posterior divided by alpha at
    logsnr = -20, which underflowed to 0. Each sampler now follows its float32 run to within
    half precision (the same draws: made in float32, then rounded)."""
    draw = samplers.randn
    monkeypatch.setattr(
        samplers,
        "randn",
        lambda shape, gen, d, device: draw(shape, gen, torch.float32, device).to(d),
    )

    def x_hat_fn(z, logsnr):
        return 0.3 * z

    shape, seed = (2, 1, 2, 3, 3), 7
    runs = {}
    for d in (torch.float32, dtype):
        gen = torch.Generator().manual_seed(seed)
        runs[d] = samplers.sample(x_hat_fn, shape, steps=8, sampler=sampler, dtype=d, generator=gen)
    half = runs[dtype]
    assert half.dtype == dtype and bool(torch.isfinite(half).all())
    torch.testing.assert_close(half.float(), runs[torch.float32], rtol=0, atol=0.02)


def test_half_precision_sampling_gives_the_model_the_grid_in_float32():
    """A bfloat16 grid of 1,024 steps held 60 repeated logsnr values (steps that did
    nothing); the model now gets each grid value in float32, and z stays in the sampling
    dtype even where the model answers in another."""
    seen = []

    def x_hat_fn(z, logsnr):
        seen.append(logsnr)
        return (0.3 * z).double()  # a model answering in float64

    steps = 1024
    out = samplers.sample(x_hat_fn, (2, 1, 1, 2, 2), steps=steps, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    given = torch.stack([lam[0] for lam in seen])
    assert given.dtype == torch.float32 and len(given.unique()) == steps
    torch.testing.assert_close(given, samplers.logsnr_grid(steps)[:-1].float(), rtol=0, atol=0)
