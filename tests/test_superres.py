"""SR conditioning: exact resampling identities, augmentation, crops, and the toy world's timing."""

import dataclasses

import pytest
import torch

from ivref import configs, data, schedules, superres


def _video(b=2, c=3, f=4, h=8, w=8, seed=0):
    return torch.rand(b, c, f, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_frame_skipping_and_repetition_are_exact():
    x = _video(f=6)
    low = superres.skip_frames(x, 2)
    assert torch.equal(low, x[:, :, [0, 2, 4]])
    up = superres.repeat_frames(low, 2)
    assert up.shape == x.shape
    for k in range(6):
        assert torch.equal(up[:, :, k], x[:, :, 2 * (k // 2)])
    assert torch.equal(superres.skip_frames(up, 2), low)  # repeat then skip is the identity


def test_blank_frames_carry_a_mask_channel():
    low = _video(f=3)
    out = superres.blank_frames(low, 2)
    assert out.shape == (2, 4, 6, 8, 8)
    assert torch.equal(out[:, :3, ::2], low) and torch.all(out[:, :3, 1::2] == 0)
    assert torch.all(out[:, 3, ::2] == 1) and torch.all(out[:, 3, 1::2] == 0)


def test_area_downsampling_is_the_block_mean_and_bilinear_keeps_constants():
    x = _video(h=8, w=8).double()
    small = superres.downsample_space(x, 2)
    manual = (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2]) / 4
    torch.testing.assert_close(small, manual)
    const = torch.full((1, 3, 2, 4, 4), 0.25, dtype=torch.float64)
    up = superres.upsample_space(const, 16, 16)
    torch.testing.assert_close(up, torch.full((1, 3, 2, 16, 16), 0.25, dtype=torch.float64))
    # half-pixel centres: output pixels 2i, 2i+1 sample the input at i -/+ 1/4, so the mean of
    # each 2x2 block of a 2x bilinear upsampling is the [1/8, 3/4, 1/8] filter on each axis
    means = superres.downsample_space(superres.upsample_space(x, 16, 16), 2)
    rows = 0.125 * x[..., :-2, :] + 0.75 * x[..., 1:-1, :] + 0.125 * x[..., 2:, :]
    both = 0.125 * rows[..., :-2] + 0.75 * rows[..., 1:-1] + 0.125 * rows[..., 2:]
    torch.testing.assert_close(means[..., 1:-1, 1:-1], both)


def test_augmentation_is_the_identity_at_infinite_logsnr_and_has_the_stated_moments():
    cond = _video(b=4).double()
    noise = torch.randn(cond.shape, dtype=torch.float64)
    inf = torch.full((4,), float("inf"), dtype=torch.float64)
    assert torch.equal(superres.augment(cond, inf, noise), cond)
    level = torch.tensor([-2.0, 0.0, 1.0986, 5.0], dtype=torch.float64)
    alpha, sigma = schedules.alpha_sigma(level)
    got = superres.augment(cond, level, noise)
    want = alpha[:, None, None, None, None] * cond + sigma[:, None, None, None, None] * noise
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # SNR 3 (the sampling level): alpha'^2 = 3/4, sigma'^2 = 1/4
    assert abs(alpha[2].item() ** 2 - 0.75) < 1e-4 and abs(sigma[2].item() - 0.5) < 1e-4
    masked = superres.blank_frames(cond[:, :, :2], 2)
    out = superres.augment(masked, level, torch.randn(masked[:, :3].shape, dtype=torch.float64))
    assert torch.equal(out[:, 3], masked[:, 3])  # the mask is never noised


def test_training_levels_span_the_configured_range():
    stage = configs.preset("toy").stage("tsr")
    diffusion = configs.DiffusionConfig()
    levels = superres.train_aug_logsnr(20000, stage, diffusion, torch.Generator().manual_seed(0))
    t = schedules.t_from_logsnr(levels.double(), diffusion.logsnr_min, diffusion.logsnr_max)
    assert 0 <= t.min() < 0.01 and 0.49 < t.max() <= stage.aug_train_max_t + 1e-6
    assert abs(t.mean().item() - stage.aug_train_max_t / 2) < 0.01
    sample_t = schedules.t_from_logsnr(torch.tensor(stage.aug_sample_logsnr, dtype=torch.float64))
    assert float(sample_t) < stage.aug_train_max_t  # sampling happens inside the trained range


def test_low_res_and_upsample_follow_the_stage_kind():
    cfg = configs.preset("ci")
    base, tsr, ssr1 = cfg.stages[:3]
    x = _video(f=tsr.num_frames, h=tsr.height, w=tsr.width)
    low = superres.low_res(x, tsr, base)
    assert low.shape == (2, 3, base.num_frames, base.height, base.width)
    assert superres.upsample(low, tsr).shape == x.shape
    blank = dataclasses.replace(
        tsr, temporal_cond="blank", unet=dataclasses.replace(tsr.unet, cond_channels=4)
    )
    assert superres.upsample(low, blank).shape == (2, 4, *x.shape[2:])
    y = _video(f=ssr1.num_frames, h=ssr1.height, w=ssr1.width)
    low = superres.low_res(y, ssr1, tsr)
    assert low.shape == (2, 3, tsr.num_frames, tsr.height, tsr.width)
    assert superres.upsample(low, ssr1).shape == y.shape
    with pytest.raises(ValueError, match="must have 8 frames"):
        superres.upsample(low[:, :, :4], ssr1)
    for wrong in (low[..., :4], y):  # 8 x 4 stretched unevenly; 16 x 16 upsampled by 1
        with pytest.raises(ValueError, match="one whole factor k >= 2 on both axes"):
            superres.upsample(wrong, ssr1)
    with pytest.raises(ValueError, match="with fewer frames"):  # a TSR input already at F
        superres.upsample(x, tsr)
    with pytest.raises(ValueError, match=r"takes a low-res video of 3 channels \(the previous "
                       r"stage's output\); got shape \(2, 1, 8, 8, 8\)"):  # fmt: skip
        superres.upsample(low[:, :1], ssr1)  # was reported at the U-Net, upsampled and doubled
    with pytest.raises(ValueError, match="only SR stages"):
        superres.low_res(x, base, base)


def test_toy_world_frame_skipping_gives_the_base_stage_clip():
    """A TSR clip (16 @ 6 fps) skipped to every other frame is the base clip (8 @ 3 fps)."""
    toy = configs.preset("toy")
    base, tsr = toy.stages[:2]
    scene = data.random_scene(
        "a red circle moving left", 16, 16, 8 / 3, torch.Generator().manual_seed(1)
    )
    fast = data.render_scene(scene, tsr.num_frames, tsr.width, tsr.height, tsr.fps)
    slow = data.render_scene(scene, base.num_frames, base.width, base.height, base.fps)
    torch.testing.assert_close(superres.low_res(fast[None], tsr, base)[0], slow)


def test_random_crop_takes_the_same_aligned_window_from_every_tensor():
    x = torch.arange(2 * 1 * 1 * 16 * 16, dtype=torch.float32).reshape(2, 1, 1, 16, 16)
    y = x * 10
    g = torch.Generator().manual_seed(0)
    cx, cy = superres.random_crop([x, y], 8, align=4, generator=g)
    assert cx.shape == (2, 1, 1, 8, 8) and torch.equal(cy, cx * 10)
    for i in range(2):
        corner = int(cx[i, 0, 0, 0, 0])
        row, col = divmod(corner - i * 256, 16)
        assert row % 4 == 0 and col % 4 == 0
        assert torch.equal(cx[i, 0, 0], x[i, 0, 0, row : row + 8, col : col + 8])
    with pytest.raises(ValueError, match="exceeds the frame"):
        superres.random_crop([x], 32)


def test_resampling_factors_are_checked():
    """A factor below 1 (a zero step, an empty video) or one that does not divide the frame
    (area averaging would drop the last rows silently) is refused, naming what was wrong."""
    clip = torch.zeros(1, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="factor 3 does not divide the height 8"):
        superres.downsample_space(clip, 3)
    for op in (superres.skip_frames, superres.repeat_frames, superres.blank_frames):
        with pytest.raises(ValueError, match=r"factor=0 must be an integer >= 1"):
            op(clip, 0)
    assert superres.downsample_space(clip, 4).shape == (1, 3, 4, 2, 2)
