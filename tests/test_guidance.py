"""Classifier-free guidance, dynamic thresholding, oscillating schedule, guided_x_hat_fn."""

import pytest
import torch

from ivref import guidance, samplers, schedules
from ivref import parameterization as P

D = torch.float64


class FakeVideoUNet(torch.nn.Module):
    """Stands in for VideoUNet's forward contract; v depends on whether the text is masked.

    Conditional rows (any mask True) predict v = 0.5 z_t + c(text) and unconditional rows
    v = 0.5 z_t; every call is recorded so tests can count forwards and check the batch.
    """

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(
        self, z_t, logsnr_t, text_emb, text_mask, *, cond_video=None, aug_logsnr=None, **kw
    ):
        self.calls.append(
            dict(
                z_t=z_t,
                logsnr_t=logsnr_t,
                text_mask=text_mask,
                cond_video=cond_video,
                aug_logsnr=aug_logsnr,
                **kw,
            )
        )
        assert logsnr_t.shape == (z_t.shape[0],) and text_emb.shape[0] == z_t.shape[0]
        cond = text_mask.any(dim=1).to(z_t.dtype).reshape(-1, 1, 1, 1, 1)
        c = text_emb.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        out = 0.5 * z_t + cond * c
        if cond_video is not None:
            out = out + 0.1 * cond_video
        return out


def _inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(batch, 3, 2, 4, 4, dtype=D, generator=g)
    text_emb = torch.randn(batch, 5, 8, dtype=D, generator=g)
    text_mask = torch.ones(batch, 5, dtype=torch.bool)
    logsnr_t = torch.full((batch,), -1.0, dtype=D)
    return z_t, text_emb, text_mask, logsnr_t


def _x_hat(model, z_t, logsnr_t, text_emb, mask):
    alpha, sigma = schedules.alpha_sigma(logsnr_t)
    return P.x_from_v(z_t, model(z_t, logsnr_t, text_emb, mask), alpha, sigma)


def test_cfg_formula_and_w_zero():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(2, 3, 3, 2, 4, 4, dtype=D, generator=g)
    torch.testing.assert_close(guidance.cfg(c, u, 0.0), c)
    torch.testing.assert_close(guidance.cfg(c, u, 2.5), 3.5 * c - 2.5 * u)
    w = torch.tensor([0.0, 1.0, 4.0], dtype=D)
    out = guidance.cfg(c, u, w)
    for b in range(3):
        torch.testing.assert_close(out[b], (1 + w[b]) * c[b] - w[b] * u[b])
    with pytest.raises(ValueError, match="pred_uncond"):
        guidance.cfg(c, u[:2], 1.0)


def test_dynamic_threshold_bounds_and_scales_per_sample():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, 8, 8, dtype=D, generator=g) * torch.tensor(
        [0.1, 1, 3, 10.0], dtype=D
    ).reshape(-1, 1, 1, 1, 1)
    out = guidance.dynamic_threshold(x)
    assert out.abs().max() <= 1.0
    for b in range(4):
        s = torch.quantile(x[b].abs().flatten(), 0.995).clamp(min=1.0)
        torch.testing.assert_close(out[b], x[b].clamp(-s, s) / s)
    torch.testing.assert_close(out[0], x[0])  # already inside [-1, 1]: unchanged


def test_dynamic_threshold_identity_inside_unit_box():
    x = torch.rand(3, 3, 2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.testing.assert_close(guidance.dynamic_threshold(x, 0.9), x, rtol=0, atol=0)


def test_dynamic_threshold_percentile_one_is_max_scaling():
    x = torch.randn(2, 3, 2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(3)) * 4
    out = guidance.dynamic_threshold(x, 1.0)
    m = x.abs().flatten(1).max(1).values.clamp(min=1).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(out, x / m)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5])
def test_dynamic_threshold_rejects_bad_percentile(p):
    with pytest.raises(ValueError, match="percentile"):
        guidance.dynamic_threshold(torch.zeros(1, 3, 1, 2, 2), p)


def test_oscillating_schedule_warmup_then_alternation():
    w = guidance.oscillating_schedule(64, high=15.0, low=1.0, warmup_frac=0.1)
    assert len(w) == 64 and w[:6] == [15.0] * 6
    assert w[6::2] == [1.0] * 29 and w[7::2] == [15.0] * 29
    assert guidance.oscillating_schedule(4, 7.0, 2.0, 0.0) == [2.0, 7.0, 2.0, 7.0]
    assert guidance.oscillating_schedule(3, 7.0, 2.0, 1.0) == [7.0] * 3
    with pytest.raises(ValueError, match="steps"):
        guidance.oscillating_schedule(0)
    with pytest.raises(ValueError, match="warmup_frac"):
        guidance.oscillating_schedule(10, warmup_frac=1.5)


def test_oscillating_schedule_starts_high_even_at_few_steps():
    """10% of 4 or fewer steps rounds to none, but the first step (pure noise, where the layout
    is set) is still guided at the high weight [IV §2.6.2]; only warmup_frac=0 skips it."""
    expected = {1: [7.0], 2: [7.0, 2.0], 3: [7.0, 2.0, 7.0], 4: [7.0, 2.0, 7.0, 2.0]}
    for steps, weights in expected.items():
        assert guidance.oscillating_schedule(steps, 7.0, 2.0) == weights
    assert guidance.oscillating_schedule(8, 7.0, 2.0)[:3] == [7.0, 2.0, 7.0]  # round(0.8) = 1


def test_guided_w_zero_is_the_conditional_model_in_one_pass():
    model = FakeVideoUNet()
    z_t, emb, mask, logsnr_t = _inputs()
    fn = guidance.guided_x_hat_fn(model, emb, mask, 0.0, threshold=None)
    out = fn(z_t, logsnr_t)
    assert len(model.calls) == 1 and model.calls[0]["z_t"].shape[0] == 2
    torch.testing.assert_close(out, _x_hat(model, z_t, logsnr_t, emb, mask))


def test_guided_batches_cond_and_uncond_in_one_forward():
    model = FakeVideoUNet()
    z_t, emb, mask, logsnr_t = _inputs()
    cond_video = torch.randn_like(z_t)
    fn = guidance.guided_x_hat_fn(
        model, emb, mask, 3.0, cond_video=cond_video, aug_logsnr=1.1, threshold=None
    )
    out = fn(z_t, logsnr_t)
    assert len(model.calls) == 1
    call = model.calls[0]
    assert call["z_t"].shape[0] == 4
    assert call["text_mask"][:2].all() and not call["text_mask"][2:].any()
    torch.testing.assert_close(call["cond_video"], torch.cat([cond_video, cond_video]))
    torch.testing.assert_close(call["aug_logsnr"], torch.full((4,), 1.1, dtype=D))
    alpha, sigma = schedules.alpha_sigma(logsnr_t)
    v = FakeVideoUNet()
    x_c = P.x_from_v(z_t, v(z_t, logsnr_t, emb, mask, cond_video=cond_video), alpha, sigma)
    x_u = P.x_from_v(z_t, v(z_t, logsnr_t, emb, ~mask, cond_video=cond_video), alpha, sigma)
    torch.testing.assert_close(out, 4.0 * x_c - 3.0 * x_u)


def test_guided_thresholding_bounds_an_over_guided_sample():
    model = FakeVideoUNet()
    z_t, emb, mask, logsnr_t = _inputs()
    emb = emb + 1.0  # a strong conditional signal, so that w = 30 overshoots
    raw = guidance.guided_x_hat_fn(model, emb, mask, 30.0, threshold=None)(z_t, logsnr_t)
    assert raw.abs().max() > 1.0
    out = guidance.guided_x_hat_fn(model, emb, mask, 30.0)(z_t, logsnr_t)
    torch.testing.assert_close(out, guidance.dynamic_threshold(raw))
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("steps, dtype", [(10, D), (256, torch.bfloat16)])
def test_per_step_w_follows_the_sampler_grid(steps, dtype):
    """With w from oscillating_schedule, step i of samplers.sample uses w[i]. In bfloat16
    the sampler's logsnr was rounded off the grid (-10.1875), and 256 weights for 256 steps
    were refused as not on the grid."""
    w = guidance.oscillating_schedule(steps, high=5.0, low=0.0)
    model = FakeVideoUNet()
    z_t, emb, mask, _ = _inputs()
    fn = guidance.guided_x_hat_fn(model, emb.to(dtype), mask, w, threshold=None)
    samplers.sample(fn, z_t.shape, steps=steps, noise=z_t, dtype=dtype)
    batch_sizes = [c["z_t"].shape[0] for c in model.calls]
    assert batch_sizes == [2 if wi == 0.0 else 4 for wi in w]


def test_per_step_w_of_the_wrong_length_raises():
    z_t, emb, mask, _ = _inputs()
    fn = guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, [1.0] * 5)
    with pytest.raises(ValueError, match="steps=len"):
        samplers.sample(fn, z_t.shape, steps=8, noise=z_t, dtype=D)


def test_a_tensor_of_weights_is_refused_not_read_as_one_per_step():
    """Two videos and w = tensor([1, 5]) looks like a weight per video; with steps=2 it was
    silently taken as one per step."""
    z_t, emb, mask, _ = _inputs()
    w = torch.tensor([1.0, 5.0])
    with pytest.raises(ValueError, match=r"w is a tensor of shape \(2,\).*as a list"):
        guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, w)
    fn = guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, w.tolist(), threshold=None)
    samplers.sample(fn, z_t.shape, steps=2, noise=z_t, dtype=D)  # a list: per step
    one = guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, torch.tensor(2.0))  # 0-d: one w
    assert one(z_t, torch.zeros(z_t.shape[0], dtype=D)).shape == z_t.shape


def test_distilled_is_one_conditional_pass_with_w_embedded():
    model = FakeVideoUNet()
    z_t, emb, mask, logsnr_t = _inputs()
    out = guidance.guided_x_hat_fn(model, emb, mask, 2.0, distilled=True, threshold=None)(
        z_t, logsnr_t
    )
    assert len(model.calls) == 1
    torch.testing.assert_close(model.calls[0]["guidance_w"], torch.full((2,), 2.0, dtype=D))
    torch.testing.assert_close(out, _x_hat(FakeVideoUNet(), z_t, logsnr_t, emb, mask))


def test_guided_rejects_bad_arguments():
    _, emb, mask, _ = _inputs()
    with pytest.raises(ValueError, match="threshold"):
        guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, 1.0, threshold=2.0)
    with pytest.raises(ValueError, match="w is an empty"):
        guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, [])
    for w in (float("nan"), -1.0, [1.0, float("inf")], 1e38):
        with pytest.raises(ValueError, match=r"must be a number from 0 \(no guidance\) to 1000"):
            guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, w)
    for w in ("1", True, None, {"base": 1.0}):
        with pytest.raises(ValueError, match="allowed: a number >= 0, or one per sampling step"):
            guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, w)


def test_guided_names_text_of_another_batch_by_the_callers_count():
    """Before, the model's own shape error counted the doubled guided batch (2B)."""
    z_t, emb, mask, logsnr = _inputs(batch=2)
    fn = guidance.guided_x_hat_fn(FakeVideoUNet(), emb[:1], mask[:1], 1.0)
    with pytest.raises(ValueError, match="z_t holds 2 videos but text_emb 1 rows"):
        fn(z_t, logsnr)
    with pytest.raises(ValueError, match=r"text_emb \(2, 5, 8\) and text_mask \(2, 4\)"):
        guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask[:, :4], 1.0)
    three = z_t.new_zeros(3, *z_t.shape[1:])
    with pytest.raises(ValueError, match="cond_video holds 3 videos but text_emb 2 rows"):
        guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, 1.0, cond_video=three)
    # one video without its batch axis was counted as C videos
    with pytest.raises(ValueError, match=r"cond_video must be videos \(B, C, F, H, W\); got"):
        guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, 1.0, cond_video=three[0])
    fn = guidance.guided_x_hat_fn(FakeVideoUNet(), emb[:1], mask[:1], 1.0)
    with pytest.raises(ValueError, match=r"give samplers.sample a shape with the batch axis"):
        fn(z_t[0], logsnr[:1])


def test_guided_takes_numpy_and_0d_tensor_weights_as_floats():
    import numpy as np  # installed with ivref's dependencies (matplotlib, mediapy)

    z_t, emb, mask, logsnr_t = _inputs()
    want = guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, 1.5)(z_t, logsnr_t)
    for w in (np.float32(1.5), np.float64(1.5), torch.tensor(1.5)):
        got = guidance.guided_x_hat_fn(FakeVideoUNet(), emb, mask, w)(z_t, logsnr_t)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_static_threshold_moves_only_the_overshoot_where_dynamic_moves_everything():
    """Saturated data (every pixel at +-1, as in the toy world) with 1% of pixels at 1.2."""
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(1, 3, 2, 10, 10, generator=g) < 0.5, -1.0, 1.0).to(D)
    x.view(-1)[:6] = 1.2  # 6 of 600 values overshoot: above the 99.5th percentile's share
    clipped = guidance.static_threshold(x)
    torch.testing.assert_close(clipped, x.clamp(-1.0, 1.0), rtol=0, atol=0)
    inside = x.abs() <= 1.0
    assert torch.equal(clipped[inside], x[inside])  # static: in-range pixels untouched
    dynamic = guidance.dynamic_threshold(x)
    s = torch.quantile(x.abs().flatten(), 0.995)
    assert s > 1.0
    torch.testing.assert_close(dynamic[inside], x[inside] / s)  # dynamic: all of them pulled in
