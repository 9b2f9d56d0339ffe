"""The Video U-Net: shapes per preset stage, time direction, image mode, text, errors, sizes."""

import dataclasses
import math

import pytest
import torch

from ivref import configs, layers, unet3d

CI = configs.preset("ci")


def _inputs(stage, batch=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, length = stage.unet, CI.text.max_length
    shape = (batch, u.in_channels, stage.num_frames, stage.height, stage.width)
    kwargs = {}
    if u.cond_channels:
        kwargs["cond_video"] = torch.randn(batch, u.cond_channels, *shape[2:], generator=g).to(
            dtype
        )
    if u.use_aug_embedding:
        kwargs["aug_logsnr"] = torch.full((batch,), 1.0, dtype=dtype)
    z_t = torch.randn(shape, generator=g).to(dtype)
    text = torch.randn(batch, length, u.text_dim, generator=g).to(dtype)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :7] = True
    return (z_t, torch.zeros(batch, dtype=dtype), text, mask), kwargs


def _model(unet_cfg, seed=0, trained_temporal_convs=False):
    torch.manual_seed(seed)
    model = unet3d.VideoUNet(unet_cfg).double().eval()
    if trained_temporal_convs:  # zero at init (identity over time); give them weights
        for module in model.modules():
            if isinstance(module, layers.TemporalConv):
                torch.nn.init.normal_(module.conv.weight, std=0.1)
    return model


@pytest.mark.parametrize("stage", CI.stages, ids=lambda s: s.name)
def test_output_shape_for_every_ci_stage(stage):
    args, kwargs = _inputs(stage)
    with torch.no_grad():
        out = _model(stage.unet)(*args, **kwargs)
    assert out.shape == args[0].shape


@pytest.mark.parametrize("stage", CI.stages[:2], ids=lambda s: s.name)
def test_knows_the_direction_of_time_at_init(stage):
    # The time-reversal trap (notebook 02, section 3): an equivariant start stalls on direction.
    model = _model(stage.unet)
    (z_t, logsnr, text, mask), kwargs = _inputs(stage)
    rev = {k: v.flip(2) if k == "cond_video" else v for k, v in kwargs.items()}
    with torch.no_grad():
        out = model(z_t, logsnr, text, mask, **kwargs)
        out_rev = model(z_t.flip(2), logsnr, text, mask, **rev).flip(2)
    assert ((out_rev - out).norm() / out.norm()).item() > 0.05


@pytest.mark.parametrize("stage", CI.stages[:2], ids=lambda s: s.name)
def test_image_mode_keeps_frames_independent(stage):
    model = _model(stage.unet, trained_temporal_convs=True)
    (z_t, logsnr, text, mask), kwargs = _inputs(stage)
    z2 = z_t.clone()
    z2[:, :, 1] += torch.randn_like(z2[:, :, 1])  # change frame 1 of both samples
    is_image = torch.tensor([True, False])
    with torch.no_grad():
        out = model(z_t, logsnr, text, mask, is_image=is_image, **kwargs)
        out2 = model(z2, logsnr, text, mask, is_image=is_image, **kwargs)
    changed = (out2 - out).abs().amax(dim=(1, 3, 4)) > 0  # (B, F)
    assert changed[0].tolist() == [f == 1 for f in range(stage.num_frames)]  # exactly
    assert changed[1].all()  # the video sample mixes frames


def test_is_image_must_be_one_bool_per_sample():
    """An int flag was taken (~0 = -1 scaled the temporal branch by -1) and a (1,) flag
    broadcast over the batch; both ran without an error."""
    stage = CI.stages[0]
    model = _model(stage.unet)
    (z_t, logsnr, text, mask), kwargs = _inputs(stage)
    for bad in (torch.tensor([0, 1]), torch.tensor([True]), torch.tensor([[True, False]])):
        with pytest.raises(ValueError, match=r"is_image must be a bool tensor of shape \(2,\)"):
            model(z_t, logsnr, text, mask, is_image=bad, **kwargs)


def test_text_conditions_and_all_false_mask_is_the_null_embedding():
    stage = CI.stages[0]
    model = _model(stage.unet)
    (z_t, logsnr, text, mask), _ = _inputs(stage)
    with torch.no_grad():
        out = model(z_t, logsnr, text, mask)
        other = model(z_t, logsnr, torch.randn_like(text), mask)
        assert (other - out).norm() / out.norm() > 1e-3
        none = torch.zeros_like(mask)
        u1 = model(z_t, logsnr, text, none)
        u2 = model(z_t, logsnr, torch.randn_like(text), none)  # text ignored
        u3 = model(z_t, logsnr, text[:, :3], none[:, :3])  # and its length too
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)
    torch.testing.assert_close(u1, u3)
    assert (u1 - out).norm() / out.norm() > 1e-3


def _sr_model_with_every_scalar():
    """The ci TSR U-Net with a guidance embedding too (log-SNR, augmentation level and w),
    and inputs for it (w = 0)."""
    stage = dataclasses.replace(
        CI.stages[1], unet=dataclasses.replace(CI.stages[1].unet, use_guidance_embedding=True)
    )
    args, kw = _inputs(stage)
    kw["guidance_w"] = torch.zeros(2, dtype=torch.float64)
    return _model(stage.unet), args, kw


def test_conditioning_scalars_change_the_output():
    model, args, kw = _sr_model_with_every_scalar()
    with torch.no_grad():
        out = model(*args, **kw)
        for name in ("aug_logsnr", "guidance_w"):
            assert not torch.allclose(model(*args, **{**kw, name: kw[name] + 2.0}), out)
        assert not torch.allclose(model(*args, **{**kw, "cond_video": -kw["cond_video"]}), out)


def test_backward_with_checkpointing_and_bf16_autocast():
    u = dataclasses.replace(CI.stages[0].unet, checkpointing=True)
    model = unet3d.VideoUNet(u).train()
    (z_t, logsnr, text, mask), _ = _inputs(CI.stages[0], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z_t, logsnr, text, mask)
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: (a[0][0],) + a[1:], r"rank 5"),
        (lambda a: (a[0][:, :2],) + a[1:], r"2 channels.*in_channels=3"),
        (lambda a: (a[0].repeat(1, 1, 4, 1, 1),) + a[1:], r"16 frames.*max_frames=8"),
        (
            lambda a: (a[0][..., :7],) + a[1:],
            r"8x7 must be divisible by the U-Net's downsampling 2",
        ),
        (lambda a: a[:2] + (a[2][..., :8], a[3]), r"text_dim"),
        (lambda a: a[:3] + (a[3].float(),), r"text_mask must be bool"),
        # empty sizes raised ZeroDivisionError (no frames, no videos) or IndexError (no tokens)
        (
            lambda a: (a[0][:, :, :0],) + a[1:],
            r"\(2, 3, 0, 8, 8\) is empty: every size must be at least 1",
        ),
        (lambda a: (a[0][:0], a[1][:0], a[2][:0], a[3][:0]), r"\(0, 3, 4, 8, 8\) is empty"),
        (lambda a: a[:2] + (a[2][:, :0], a[3][:, :0]), r"text_emb has no tokens \(L = 0\)"),
    ],
)
def test_clear_errors(change, match):
    stage = CI.stages[0]
    args, _ = _inputs(stage)
    with pytest.raises(ValueError, match=match):
        _model(stage.unet)(*change(args))


def test_a_non_finite_conditioning_scalar_is_refused_before_it_turns_the_output_to_nan():
    """log-SNR = +inf (clean data, as log(alpha^2 / sigma^2) gives at t = 0) made the whole
    sample's v NaN through the sinusoidal embedding, without a word."""
    model, args, kw = _sr_model_with_every_scalar()
    with torch.no_grad():
        assert torch.isfinite(model(*args, **kw)).all()
        nan = layers.sinusoidal_embedding(torch.tensor([math.inf]), 4)
        assert torch.isnan(nan).any()  # what the check keeps out
        logsnr = args[1].clone()
        logsnr[1] = math.inf
        with pytest.raises(ValueError, match=r"logsnr_t must be finite; got \[inf\] \(the sch"):
            model(args[0], logsnr, *args[2:], **kw)
        with pytest.raises(ValueError, match=r"aug_logsnr must be finite; got \[-inf\]"):
            model(*args, **{**kw, "aug_logsnr": torch.tensor([0.0, -math.inf])})
        with pytest.raises(ValueError, match=r"guidance_w must be finite; got \[nan\]"):
            model(*args, **{**kw, "guidance_w": torch.tensor([math.nan, 0.0])})


def test_inputs_of_another_type_or_dtype_get_a_clear_error():
    """A float log-SNR raised AttributeError ('float' object has no attribute 'shape') and a
    float16 z_t a RuntimeError about Half and Float from deep inside a convolution."""
    stage = CI.stages[0]
    (z_t, logsnr, text, mask), _ = _inputs(stage)
    model = _model(stage.unet)  # float64 weights
    with pytest.raises(TypeError, match=r"logsnr_t must be a torch.Tensor, got float 0.0 "
                       r"\(one value per sample: torch.full\(\(B,\), value\)\)"):  # fmt: skip
        model(z_t, 0.0, text, mask)
    with pytest.raises(TypeError, match="text_mask must be a torch.Tensor, got list"):
        model(z_t, logsnr, text, mask.tolist())
    with pytest.raises(TypeError, match=r"z_t is torch.float16 but the U-Net's weights are "
                       r"torch.float64: cast the input \(z_t.to\(torch.float64\)\)"):  # fmt: skip
        model(z_t.half(), logsnr, text, mask)
    with pytest.raises(TypeError, match="text_emb is torch.float32 but the U-Net's weights"):
        model(z_t, logsnr, text.float(), mask)
    with pytest.raises(TypeError, match="z_t must be a floating-point tensor, got torch.int64"):
        model(z_t.long(), logsnr, text, mask)


@pytest.mark.parametrize("stage", CI.stages, ids=lambda s: s.name)
def test_a_bf16_model_runs_on_bf16_inputs_without_autocast(stage):
    """The log-SNR (and augmentation) features are computed in float32 and given to the
    embedding MLP in its weights' dtype: a model cast to bf16 ran only under autocast."""
    args, kwargs = _inputs(stage, dtype=torch.float32)
    model = _model(stage.unet, trained_temporal_convs=True).float()
    with torch.no_grad():
        want = model(*args, **kwargs)
        model = model.to(torch.bfloat16)
        cast = [a.bfloat16() if a.is_floating_point() and a.ndim > 1 else a for a in args]
        got = model(*cast, **{k: v.bfloat16() if v.ndim > 1 else v for k, v in kwargs.items()})
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()  # bf16: 3 digits


def test_sr_stage_errors_name_the_missing_input():
    stage = CI.stages[1]
    args, kwargs = _inputs(stage)
    model = _model(stage.unet)
    with pytest.raises(ValueError, match="cond_video"):
        model(*args, aug_logsnr=kwargs["aug_logsnr"])
    with pytest.raises(ValueError, match="aug_logsnr.*use_aug_embedding"):
        model(*args, cond_video=kwargs["cond_video"])


# [IV Fig. 6]: parameters per stage (docs/paper.md §1).
FIG6 = {
    "base": 5.6e9,
    "tsr1": 1.7e9,
    "ssr1": 1.4e9,
    "ssr2": 1.2e9,
    "tsr2": 780e6,
    "tsr3": 630e6,
    "ssr3": 340e6,
}


def test_paper_parameter_counts_match_fig6():
    cfg = configs.preset("paper")
    assert cfg.text.dim == 4096
    counts = {s.name: unet3d.count_parameters(s.unet) for s in cfg.stages}
    for name, want in FIG6.items():
        assert abs(counts[name] / want - 1) < 0.10, (name, counts[name], want)
    assert abs(sum(counts.values()) / 11.6e9 - 1) < 0.05


def test_zero_init_temporal_convs_make_an_sr_unet_per_frame_at_init():
    stage = CI.stages[1]  # temporal conv at every level
    model = _model(stage.unet)
    (z_t, logsnr, text, mask), kwargs = _inputs(stage)
    cond = kwargs.pop("cond_video")
    z2 = z_t.clone()
    z2[:, :, 1] += 1.0
    with torch.no_grad():
        out = model(z_t, logsnr, text, mask, cond_video=cond, **kwargs)
        out2 = model(z2, logsnr, text, mask, cond_video=cond, **kwargs)
    changed = (out2 - out).abs().amax(dim=(0, 1, 3, 4)) > 0
    assert changed.tolist() == [f == 1 for f in range(stage.num_frames)]


def test_count_helpers_on_ci():
    stage = CI.stages[0]
    n = sum(p.numel() for p in unet3d.VideoUNet(stage.unet).parameters())
    assert unet3d.count_parameters(stage.unet) == n
    flops = unet3d.count_flops(stage.unet, stage.num_frames, stage.height, stage.width)
    assert flops > 2 * n  # at least one multiply-add per weight per frame
