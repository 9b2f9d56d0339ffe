"""Stage objectives: what each SR model is shown, the loss it gets, crops, and a short run."""

import math
import re

import pytest
import torch

from ivref import cascade, configs, objectives, schedules, superres, text, train

from .conftest import DeviceSpy


@pytest.fixture(scope="module")
def encoder():
    return text.build_encoder(configs.preset("ci").text)


class _Recorder(torch.nn.Module):
    """Stands in for the U-Net: records its inputs and predicts v_hat = 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, z_t, logsnr, emb, mask, **kwargs):
        self.calls.append(dict(z_t=z_t, logsnr=logsnr, emb=emb, mask=mask, **kwargs))
        return torch.zeros_like(z_t) * self.w


def _objective(name, encoder):
    cfg = configs.preset("ci")
    stage = cfg.stage(name)
    dataset = objectives.toy_dataset(stage, seed=0)
    return objectives.DiffusionObjective(cfg, stage, dataset, objectives.TextCache(encoder))


@pytest.mark.parametrize("name", ["tsr", "ssr1"])
def test_sr_model_sees_the_noised_upsampled_low_res_clip(name, encoder):
    obj = _objective(name, encoder)
    batch = obj.sample(64)
    model = _Recorder()
    loss = obj.loss(model, batch, torch.Generator().manual_seed(0))
    call = model.calls[0]
    x = batch.x.double()
    clean = superres.upsample(superres.low_res(x, obj.stage, obj.previous), obj.stage)
    assert call["cond_video"].shape == x.shape == call["z_t"].shape
    # undo the augmentation with the recorded level: what is left is unit Gaussian noise
    alpha, sigma = schedules.alpha_sigma(call["aug_logsnr"].double())
    a, s = alpha[:, None, None, None, None], sigma[:, None, None, None, None]
    eps_aug = (call["cond_video"].double() - a * clean) / s
    assert abs(eps_aug.mean().item()) < 0.02 and abs(eps_aug.std().item() - 1) < 0.02
    t_aug = schedules.t_from_logsnr(call["aug_logsnr"].double())
    assert t_aug.max() <= obj.stage.aug_train_max_t + 1e-6
    # the loss is the v-MSE of the target video (v_hat = 0, so loss = mean ||v||^2)
    alpha, sigma = schedules.alpha_sigma(call["logsnr"].double())
    a, s = alpha[:, None, None, None, None], sigma[:, None, None, None, None]
    eps = (call["z_t"].double() - a * x) / s
    assert math.isclose(loss.item(), (a * eps - s * x).pow(2).mean().item(), rel_tol=1e-4)


def test_crop_trained_stage_crops_target_and_condition_alike(encoder):
    obj = _objective("ssr2", encoder)
    stage = obj.stage
    x = obj.sample(4).x
    clean = superres.upsample(superres.low_res(x, stage, obj.previous), stage)
    crop, cond = obj.conditioning(x, torch.Generator().manual_seed(3))
    size, align = stage.train.crop_size, objectives.crop_alignment(stage, obj.previous)
    assert crop.shape[-2:] == cond.shape[-2:] == (size, size)
    assert align % (stage.width // obj.previous.width) == 0
    assert align % stage.unet.downsample_factor == 0
    for i in range(4):
        windows = [
            (y, xx)
            for y in range(0, stage.height - size + 1)
            for xx in range(0, stage.width - size + 1)
            if torch.equal(crop[i], x[i, :, :, y : y + size, xx : xx + size])
        ]
        assert windows and all(y % align == 0 and xx % align == 0 for y, xx in windows)
        y, xx = windows[0]
        assert torch.equal(cond[i], clean[i, :, :, y : y + size, xx : xx + size])


@pytest.mark.parametrize("name", ["tsr", "ssr1", "ssr2"])
def test_each_sr_stage_trains_a_few_steps_and_samples_its_size(tmp_path, encoder, name):
    cfg = configs.preset("ci")
    trainer = train.Trainer(cfg, name, tmp_path, text_encoder=encoder, batch_size=2, progress=False)
    rows = trainer.fit(3)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    stage, previous = trainer.stage, objectives.previous_stage(cfg, trainer.stage)
    emb, mask = trainer.text.encode(["a red circle moving left"])
    low = torch.rand(1, 3, previous.num_frames, previous.height, previous.width) * 2 - 1
    video = cascade.sample_stage(
        trainer.ema, stage, cfg.diffusion, emb, mask, cond_video=low, steps=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert video.shape == (1, 3, stage.num_frames, stage.height, stage.width)
    assert video.abs().max() <= 1


def test_fully_convolutional_stage_runs_larger_than_it_trained(encoder):
    """ssr2 trains on 16 x 16 crops; the same weights run at 32 x 32 and at 48 x 64."""
    from ivref.unet3d import VideoUNet

    cfg = configs.preset("ci")
    stage = cfg.stage("ssr2")
    assert stage.unet.fully_convolutional and stage.train.crop_size == 16
    model = VideoUNet(stage.unet).eval()
    emb, mask = encoder.encode(["a red circle moving left"])
    for h, w in ((16, 16), (32, 32), (48, 64)):
        z = torch.randn(1, 3, stage.num_frames, h, w)
        with torch.no_grad():
            v = model(z, torch.zeros(1), emb, mask, cond_video=z, aug_logsnr=torch.zeros(1))
        assert v.shape == z.shape and torch.isfinite(v).all()


def _meta_unet(stage):
    from ivref.unet3d import VideoUNet

    with torch.device("meta"):
        return VideoUNet(stage.unet)


@pytest.mark.parametrize("name", ["base", "tsr", "ssr1", "ssr2"])
@pytest.mark.parametrize("kind", ["diffusion", "distill"])
def test_batches_painted_on_the_models_device_never_meet_a_cpu_tensor(name, kind, encoder):
    """CI has no GPU: the data and the model on the meta device, where mixing devices raises
    as on CUDA. The clips are painted there, every draw comes from the CPU generator and is
    moved, so the loss (and the distillation teacher's target) runs wholly on the device."""
    cfg = configs.preset("ci")
    stage = cfg.stage(name)
    dataset = objectives.toy_dataset(stage, seed=0, device="meta")
    obj = objectives.DiffusionObjective(cfg, stage, dataset, objectives.TextCache(encoder))
    batch = obj.sample(3)
    assert batch.x.device.type == "meta"
    assert batch.x.shape == (3, 3, stage.num_frames, stage.height, stage.width)
    model = DeviceSpy(_meta_unet(stage))
    if kind == "distill":
        from ivref import distill

        teacher = DeviceSpy(_meta_unet(stage))
        obj = distill.DistillObjective(obj, teacher, "guided", 4, cfg.distill)
        model.inner = distill.with_guidance_embedding(model.inner)
    loss = obj.loss(model, batch, torch.Generator().manual_seed(0), device="meta")
    assert loss.device.type == "meta" and loss.shape == ()
    assert model.seen and set(model.seen) == {"meta"}


def test_text_padded_to_a_multiple_changes_no_output(encoder):
    """Compiled training pads text to one length: the padding is masked, so the U-Net's output
    is the same as with the shortest padding, and the pooled text too."""
    from ivref.unet3d import VideoUNet

    captions = ["a red circle", "a white triangle moving down"]
    short = objectives.TextCache(encoder).encode(captions)
    padded = objectives.TextCache(encoder, pad_multiple=16).encode(captions)
    assert padded[0].shape[1] % 16 == 0 and padded[0].shape[1] > short[0].shape[1]
    n = short[0].shape[1]
    assert torch.equal(padded[0][:, :n], short[0]) and torch.equal(padded[1][:, :n], short[1])
    assert not padded[1][:, n:].any() and not padded[0][:, n:].any()
    stage = configs.preset("ci").stage("base")
    torch.manual_seed(0)
    model = VideoUNet(stage.unet).eval()
    z = torch.randn(2, 3, stage.num_frames, stage.height, stage.width)
    logsnr = torch.tensor([-2.0, 3.0])
    with torch.no_grad():
        a, b = model(z, logsnr, *short), model(z, logsnr, *padded)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for bad in (0, -16, 1.5, True):
        with pytest.raises(ValueError, match="pad_multiple"):
            objectives.TextCache(encoder, pad_multiple=bad)


def test_a_dataset_of_another_clip_size_is_refused_naming_both_shapes(encoder):
    """Clips of another stage's size (here the next stage's frames and size) would train."""
    cfg = configs.preset("ci")
    base, tsr = cfg.stage("base"), cfg.stage("tsr")
    ssr1 = objectives.toy_dataset(cfg.stage("ssr1"), seed=0)
    with pytest.raises(ValueError, match=r"the dataset makes clips at 6 fps; stage 'base' "
                       r"trains on 4 frames at 3 fps"):  # fmt: skip
        objectives.DiffusionObjective(cfg, base, ssr1, objectives.TextCache(encoder))

    class NoRate:  # the same clips from a dataset that does not say its frame rate
        sample = ssr1.sample

    wrong = objectives.DiffusionObjective(cfg, base, NoRate(), objectives.TextCache(encoder))
    want = (2, 3, base.num_frames, base.height, base.width)
    with pytest.raises(ValueError, match=rf"stage 'base' trains on .* = {re.escape(str(want))}"):
        wrong.sample(2)
    assert _objective("tsr", encoder).sample(2).x.shape == (
        2,
        3,
        tsr.num_frames,
        tsr.height,
        tsr.width,
    )


def test_the_text_cache_keeps_the_recently_used_rows_within_its_bytes(encoder):
    """A real caption set grew the in-memory cache without bound (2 MiB a caption at T5-XXL)."""
    unbounded, small = objectives.TextCache(encoder), objectives.TextCache(encoder, max_bytes=1)
    batches = [["a red circle", "a blue square"], ["a green triangle"], ["a red circle"] * 2]
    for batch in batches:
        for got, want in zip(small.encode(batch), unbounded.encode(batch), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert list(small.rows) == sorted(set(batch))  # the batch's rows only: over max_bytes
    assert small.bytes == sum(e.nbytes + m.nbytes for e, m in small.rows.values())
    assert len(unbounded.rows) == 3
    roomy = objectives.TextCache(encoder, max_bytes=2**20)
    for batch in batches:
        roomy.encode(batch)
    assert list(roomy.rows) == ["a blue square", "a green triangle", "a red circle"]  # by use
    with pytest.raises(ValueError, match="max_bytes=0 must be a positive integer"):
        objectives.TextCache(encoder, max_bytes=0)
