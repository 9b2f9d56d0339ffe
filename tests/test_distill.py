"""Distillation: PD targets land on two teacher steps, oracle students keep the data
distribution, the guided loss vanishes at the guided teacher, and a ci stage distils end to end."""

import argparse
import dataclasses
import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from ivref import (
    cascade,
    checkpoint,
    cli,
    configs,
    distill,
    distill_plan,
    errors,
    files,
    objectives,
    run_flags,
    samplers,
    schedules,
    text,
    train,
)
from ivref.cascade import Cascade
from ivref.unet3d import VideoUNet


def _linear_teacher(seed=0):
    """Any teacher: x_hat = tanh(A z) * c(logsnr), a smooth nonlinear map, float64."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64) / 3

    def teacher(z, logsnr):
        scale = torch.sigmoid(torch.as_tensor(logsnr, dtype=z.dtype)).reshape(-1, 1)
        return torch.tanh(z @ a) * (0.5 + scale)

    return teacher


def test_one_student_step_with_the_target_lands_on_two_teacher_steps():
    teacher = _linear_teacher()
    z_t = torch.randn(5, 6, dtype=torch.float64)
    for n in (1, 2, 8, 64):
        for i in (1, n // 2 + 1, n):
            t = torch.full((5,), i / n, dtype=torch.float64)
            x_target = distill.pd_target(teacher, z_t, t, 1.0 / n)
            lt = schedules.logsnr_cosine(t)
            mid = schedules.logsnr_cosine(t - 0.5 / n)
            end = schedules.logsnr_cosine(t - 1.0 / n) if i > 1 else torch.full_like(t, math.inf)
            z_mid = samplers.ddim_step(z_t, teacher(z_t, lt), lt, mid)
            z_end = samplers.ddim_step(z_mid, teacher(z_mid, mid), mid, end)
            student = samplers.ddim_step(z_t, x_target, lt, end)
            torch.testing.assert_close(student, z_end, rtol=0, atol=1e-9)
            if i == 1:  # the last student step: the target is the teacher's x_hat at t'
                torch.testing.assert_close(x_target, teacher(z_mid, mid), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "t, dt, message",
    [
        (0.5, 0.0, r"dt=0\.0 is invalid; allowed: a step size in \(0, 1\]"),
        (0.5, math.nan, r"dt=nan is invalid"),
        (0.5, -0.25, r"dt=-0\.25 is invalid"),
        (0.5, True, r"dt=True is invalid"),
        (0.5, 2.0, r"dt=2\.0 is invalid"),
        (0.25, 0.5, r"t spans \[0\.25, 0\.25\]; allowed: student times in \[dt, 1\] = \[0\.5, 1\]"),
        (1.5, 0.5, r"t spans \[1\.5, 1\.5\]"),
    ],
)
def test_pd_target_refuses_a_step_that_cannot_be(t, dt, message):
    """Each gave an all-NaN target, or (dt < 0) a finite step backwards, without a word."""
    z_t = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        distill.pd_target(_linear_teacher(), z_t, torch.full((3,), t, dtype=torch.float64), dt)


def _gaussian_oracle(mu, s):
    """E[x | z_t] for x ~ N(mu, s^2) per dimension: mu + alpha s^2 (z - alpha mu) / var_z."""

    def teacher(z, logsnr):
        alpha, sigma = schedules.alpha_sigma(torch.as_tensor(logsnr, dtype=z.dtype))
        alpha, sigma = alpha.reshape(-1, 1), sigma.reshape(-1, 1)
        return mu + alpha * s**2 * (z - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    return teacher


def _student_of(teacher, n):
    """The exact student of ``teacher`` for n steps: x_hat(z, t) = pd_target(teacher, z, t, 1/n)."""

    def student(z, logsnr):
        t = schedules.t_from_logsnr(torch.as_tensor(logsnr, dtype=torch.float64))
        t = (t * n).round() / n  # the student is only ever asked on its own grid
        return distill.pd_target(teacher, z, t.expand(z.shape[0]), 1.0 / n)

    return student


def test_twice_distilled_oracle_keeps_the_data_distribution():
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    s = torch.tensor([0.1, 1.0, 0.5, 0.3], dtype=torch.float64)
    oracle = _gaussian_oracle(mu, s)
    student = _student_of(_student_of(oracle, 128), 64)  # 256 teacher steps -> 128 -> 64
    noise = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kwargs = dict(noise=noise, dtype=torch.float64)
    x64 = samplers.sample(student, noise.shape, steps=64, **kwargs)
    x256 = samplers.sample(oracle, noise.shape, steps=256, **kwargs)
    torch.testing.assert_close(x64, x256, rtol=0, atol=1e-8)  # the same map from noise to data
    torch.testing.assert_close(x64.mean(0), mu, rtol=0, atol=0.02)
    torch.testing.assert_close(x64.std(0), s, rtol=0.03, atol=0)
    plain = samplers.sample(oracle, noise.shape, steps=64, **kwargs)  # undistilled, 64 steps
    assert (plain.std(0) / s - 1).abs().max() > 0.08  # DDIM alone shrinks the narrow dimension


@pytest.mark.parametrize("weighting", ["snr_trunc", "v", "x"])
def test_x_loss_is_the_weighted_x_error_computed_in_v_space(weighting):
    """x_loss = w(lambda) ||x~ - x_hat||^2 with x_hat = alpha z_t - sigma v_hat [PD §4]:
    checked against the x-space error in float64, w = max(SNR, 1), 1 + SNR or 1."""
    g = torch.Generator().manual_seed(0)
    z_t, v_hat, x_target = (torch.randn(4, 3, 2, 5, 5, generator=g, dtype=torch.float64)
                            for _ in range(3))  # fmt: skip
    logsnr = torch.tensor([-6.0, -0.5, 0.7, 9.0], dtype=torch.float64)
    alpha, sigma = logsnr.sigmoid().sqrt(), (-logsnr).sigmoid().sqrt()
    x_hat = alpha.view(-1, 1, 1, 1, 1) * z_t - sigma.view(-1, 1, 1, 1, 1) * v_hat
    snr = logsnr.exp()
    w = {"snr_trunc": snr.clamp(min=1.0), "v": 1.0 + snr, "x": torch.ones_like(snr)}[weighting]
    expected = w * (x_target - x_hat).pow(2).flatten(1).mean(1)
    got = distill.x_loss(v_hat, z_t, x_target, logsnr, weighting)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)  # v_hat is taken in float32


def test_noise_back_has_the_stated_variance():
    ls, lt = torch.tensor(3.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    z_s = torch.full((200000, 1), 0.7, dtype=torch.float64)
    z_t = samplers.noise_back(z_s, ls, lt, torch.Generator().manual_seed(0))
    alpha_t, sigma_t = schedules.alpha_sigma(lt)
    alpha_s, sigma_s = schedules.alpha_sigma(ls)
    var = sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2  # [IV §2.7]
    assert abs(z_t.mean().item() - (alpha_t / alpha_s * 0.7).item()) < 3e-3
    assert abs(z_t.var().item() / var.item() - 1) < 0.01
    torch.testing.assert_close(var, schedules.variance_t_given_s(lt, ls))
    # and a draw from x ~ data noised to s, then noised back to t, is distributed as q(z_t | x)
    x = torch.full((200000, 1), 0.3, dtype=torch.float64)
    z_s = alpha_s * x + sigma_s * torch.randn(x.shape, dtype=torch.float64)
    z_t = samplers.noise_back(z_s, ls, lt)
    assert abs(z_t.std().item() - sigma_t.item()) < 0.01 * sigma_t.item()


def test_stochastic_sampler_is_exact_for_a_point_mass():
    """With the exact x_hat of a point mass, every step lands on q(z_s | x): x at the end."""
    x = torch.tensor([[0.3, -0.8]], dtype=torch.float64).expand(1000, 2)
    out = samplers.sample(
        lambda z, l: x, x.shape, steps=8, sampler="stochastic", dtype=torch.float64
    )
    torch.testing.assert_close(out, x)
    one = samplers.sample(
        lambda z, l: x, x.shape, steps=1, sampler="stochastic", dtype=torch.float64
    )
    torch.testing.assert_close(one, x)


class _TextModel(torch.nn.Module):
    """v = z * a + b * (text present): conditional and unconditional predictions differ."""

    def __init__(self, guided_student=False):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.7))
        self.student = guided_student

    def v(self, z, mask):
        has_text = mask.any(1).to(z.dtype).reshape(-1, 1, 1, 1, 1)
        return z * self.a + self.b * has_text

    def forward(self, z, logsnr, emb, mask, guidance_w=None, **kwargs):
        if not self.student:
            return self.v(z, mask)
        w = guidance_w.reshape(-1, 1, 1, 1, 1)
        return (1 + w) * self.v(z, mask) - w * self.v(z, torch.zeros_like(mask))


def test_guided_phase_loss_is_zero_when_the_student_is_the_guided_teacher():
    cfg = configs.preset("ci")
    stage = cfg.stage("base")
    encoder = text.build_encoder(cfg.text)
    base = objectives.DiffusionObjective(
        cfg, stage, objectives.toy_dataset(stage), objectives.TextCache(encoder)
    )
    obj = distill.DistillObjective(base, _TextModel(), "guided", 16, cfg.distill)
    batch = obj.sample(8)
    g = torch.Generator().manual_seed(0)
    assert obj.loss(_TextModel(guided_student=True), batch, g).item() < 1e-10
    g = torch.Generator().manual_seed(0)
    assert obj.loss(_TextModel(guided_student=False), batch, g).item() > 1e-3


def test_a_fresh_student_equals_its_teacher_for_every_w():
    cfg = configs.preset("ci").stage("tsr").unet
    teacher = VideoUNet(cfg).eval()
    student = distill.with_guidance_embedding(teacher).eval()
    assert student.cfg.use_guidance_embedding and student.training is False
    z = torch.randn(2, 3, 8, 8, 8)
    emb, mask = torch.randn(2, 5, cfg.text_dim), torch.ones(2, 5, dtype=torch.bool)
    kw = dict(cond_video=z, aug_logsnr=torch.zeros(2))
    with torch.no_grad():
        want = teacher(z, torch.zeros(2), emb, mask, **kw)
        for w in (0.0, 1.0, 4.0):
            got = student(z, torch.zeros(2), emb, mask, guidance_w=torch.full((2,), w), **kw)
            torch.testing.assert_close(got, want)
    assert any(p.requires_grad for p in student.parameters())


def test_the_w_embedding_is_drawn_from_the_seed_alone():
    """One seed, one student, whatever the global RNG holds; the global RNG is left as it was."""
    teacher = VideoUNet(configs.preset("ci").stage("base").unet)
    state = torch.get_rng_state()
    a = distill.with_guidance_embedding(teacher, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    b = distill.with_guidance_embedding(teacher, seed=3)
    c = distill.with_guidance_embedding(teacher, seed=4)
    first = "w_emb.mlp.0.weight"
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_plan_halves_down_to_the_target_or_explains():
    assert distill.plan(64, 8) == [
        ("guided", "guided", 64),
        ("halve-0064-0032", "progressive", 32),
        ("halve-0032-0016", "progressive", 16),
        ("halve-0016-0008", "progressive", 8),
    ]
    assert distill.plan(8, 8) == [("guided", "guided", 8)]
    with pytest.raises(ValueError, match=r"to_steps=6.*allowed: \[64, 32, 16, 8, 4, 2, 1\]"):
        distill.plan(64, 6)
    # a teacher that samples unguided has no guided phase; halving nothing is an error
    assert distill.plan(32, 8, guided=False) == [
        ("halve-0032-0016", "progressive", 16),
        ("halve-0016-0008", "progressive", 8),
    ]
    with pytest.raises(ValueError, match=r"nothing to distil; allowed: \[4, 2, 1\]"):
        distill.plan(8, 8, guided=False)


@pytest.mark.slow
def test_a_ci_stage_distils_to_four_steps_end_to_end(tmp_path, capsys):
    phases = ["guided", "halve-0008-0004"]
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:2]})
    teacher.save_pretrained(tmp_path / "cascade")
    argv = ["distill", "--stage", "tsr", "--from", str(tmp_path / "cascade"), "--out"]
    argv += [
        str(tmp_path / "d"),
        "--guided-steps",
        "3",
        "--halving-steps",
        "2",
        "--batch-size",
        "2",
        "--bf16",  # the ci preset trains without autocast; the student may differ
    ]
    assert cli.main(argv) == 0
    said = capsys.readouterr().err  # where its students go: the teacher's distilled/ folder
    students = tmp_path / "cascade" / "distilled"
    hint = f"--base {tmp_path / 'cascade'} --out {students}"
    assert f"export it with: ivref export {tmp_path / 'd'} {hint}" in said
    assert json.loads((tmp_path / "d" / "distill.json").read_text())["bf16"] is True
    assert not cfg.stage("tsr").train.bf16
    assert all(cli.run_stage(tmp_path / "d" / p)[0].stage("tsr").train.bf16 for p in phases)
    assert [p.name for p in sorted((tmp_path / "d").iterdir()) if p.name != ".lock"] == [
        "distill.json",
        *phases,
        "run_flags.json",
    ]
    assert cli.main(argv) == 2  # a second run into the same folder needs --resume
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 0  # finished phases are loaded, not retrained
    said = capsys.readouterr().err  # their streams are not used: no note of new ones
    assert "new data, noise and dropout streams" not in said and "resume" not in said.lower()
    shutil.rmtree(tmp_path / "d" / phases[-1])  # a resume needs no flags: the plan has them
    assert cli.main(["distill", "--out", str(tmp_path / "d"), "--resume"]) == 0
    assert cli.run_stage(tmp_path / "d" / phases[-1])[0].stage("tsr").train.batch_size == 2
    plan = (tmp_path / "d" / "distill.json").read_text()
    longer = [*argv, "--resume", "--guided-steps", "4"]  # would retrain one phase, not the next
    assert cli.main(longer) == 2
    assert "phase_steps: saved [3, 2], now [4, 2]" in capsys.readouterr().err
    assert (tmp_path / "d" / "distill.json").read_text() == plan  # the plan is left as it was
    typo = [a if a != str(tmp_path / "d") else str(tmp_path / "dd") for a in argv]
    assert cli.main([*typo, "--resume"]) == 2  # before, it started a new distillation there
    assert "holds no distillation (distill.json is missing)" in capsys.readouterr().err
    assert not (tmp_path / "dd").exists()
    argv = ["export", str(tmp_path / "d"), "--base", str(tmp_path / "cascade")]
    assert cli.main([*argv, "--out", str(tmp_path / "cascade" / "distilled")]) == 0
    joining = f"--base {students} --out {students} --force"  # the next joins the students
    assert distill._export_hint(tmp_path / "d2", tmp_path / "cascade").endswith(joining)
    student = Cascade.from_pretrained(tmp_path / "cascade", variant="distilled")
    stage = student.cfg.stage("tsr")
    assert stage.sample_steps == 4 and stage.sampler == "stochastic"
    assert student.models["tsr"].cfg.use_guidance_embedding
    video = student.generate(["a red circle moving left"], seed=0)
    assert video.shape == (1, 3, stage.num_frames, stage.height, stage.width)
    # into another cascade's distilled/ folder: its tsr is not the student's teacher
    torch.manual_seed(1)
    other = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:2]})
    other.save_pretrained(tmp_path / "other")
    argv = ["export", str(tmp_path / "d"), "--base", str(tmp_path / "other")]
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(tmp_path / "other" / "distilled")]) == 2
    said = capsys.readouterr().err
    assert "distilled stage 'tsr' from other weights than those of the cascade" in said
    assert f"(its teacher: {str(tmp_path / 'cascade')!r})" in said
    assert not (tmp_path / "other" / "distilled").exists()
    assert cli.main([*argv, "--out", str(tmp_path / "mixed")]) == 0  # elsewhere: the user's call
    said = " ".join(capsys.readouterr().err.split())  # but said, and its teacher recorded
    assert "distilled stage 'tsr' from other weights than --base" in said
    assert "joins a student of one cascade to the stages of another" in said
    # the students record their teacher's weight file; replacing it in the parent is said
    parent = json.loads((tmp_path / "cascade" / "cascade.json").read_text())
    distilled = json.loads((tmp_path / "cascade" / "distilled" / "cascade.json").read_text())
    shas = {n: parent["files"][f"{n}.safetensors"]["sha256"] for n in ("base", "tsr")}
    assert distilled["teachers"] == shas  # the student's, and the base copied beside it
    mixed = json.loads((tmp_path / "mixed" / "cascade.json").read_text())
    assert mixed["teachers"] == {"tsr": shas["tsr"]}  # its teacher, wherever it is copied
    shutil.copytree(tmp_path / "mixed", tmp_path / "other" / "distilled")  # by hand, later
    with pytest.warns(UserWarning, match=r"the stages \['tsr'\] were distilled from \(or copi"):
        Cascade.from_pretrained(tmp_path / "other", variant="distilled")  # it was silent
    run = ["train", "--scale", "ci", "--stage", "tsr", "--steps", "1", "--batch-size", "2"]
    assert cli.main([*run, "--out", str(tmp_path / "tsr")]) == 0
    argv = ["export", str(tmp_path / "tsr"), "--base", str(tmp_path / "cascade")]
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(tmp_path / "cascade"), "--force"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "distilled' holds stages ['tsr'] distilled from (or copied from) the weights" in said
    with pytest.warns(UserWarning, match=r"the stages \['tsr'\] were distilled from \(or copi"):
        Cascade.from_pretrained(tmp_path / "cascade", variant="distilled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the parent itself loads without a word
        Cascade.from_pretrained(tmp_path / "cascade")
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(tmp_path / "cascade"), "--distilled"]) == 0
    shown = capsys.readouterr().out  # info said nothing of either
    assert "copied from the cascade above, not distilled: base" in shown
    assert "stale: tsr (distilled from, or copied from, weights the cascade above" in shown


def test_the_objective_leaves_the_callers_teacher_as_it_was():
    """Building and using a DistillObjective neither freezes nor switches the caller's module."""
    cfg = configs.preset("ci")
    stage = cfg.stage("base")
    cache = objectives.TextCache(text.build_encoder(cfg.text))
    base = objectives.DiffusionObjective(cfg, stage, objectives.toy_dataset(stage), cache)
    torch.manual_seed(0)
    teacher = VideoUNet(stage.unet).train()
    obj = distill.DistillObjective(base, teacher, "guided", 16, cfg.distill)
    student = distill.with_guidance_embedding(teacher)
    loss = obj.loss(student, obj.sample(2), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(m.training for m in teacher.modules())


def test_reseeding_a_distillation_objective_reseeds_its_stages_data():
    """``--resume --new-streams`` of a distillation: the stage's data stream starts anew."""
    cfg = configs.preset("ci")
    stage = cfg.stage("base")
    cache = objectives.TextCache(text.build_encoder(cfg.text))
    base = objectives.DiffusionObjective(cfg, stage, objectives.toy_dataset(stage, 1), cache)
    obj = distill.DistillObjective(base, VideoUNet(stage.unet), "guided", 16, cfg.distill)
    obj.sample(2)
    obj.reseed(5)
    assert torch.equal(
        base.data.generator.get_state(), torch.Generator().manual_seed(5).get_state()
    )
    assert torch.equal(obj.rng_state()["data"], torch.Generator().manual_seed(5).get_state())


@pytest.mark.slow
def test_an_unguided_stage_skips_the_guided_phase_and_refuses_guidance(tmp_path, capsys):
    """A teacher sampled at w = 0 distils by halvings only; its student learnt w = 0 alone and
    says so: sampling it at w = 0 works, a guided call fails with what is allowed."""
    cfg = configs.preset("ci")
    stages = tuple(
        dataclasses.replace(s, guidance_w=0.0) if s.name == "ssr1" else s for s in cfg.stages
    )
    cfg = dataclasses.replace(cfg, stages=stages)
    torch.manual_seed(0)
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:3]})
    out = tmp_path / "d"
    teacher.models["ssr1"].train()  # the caller's mode, which the distillation leaves alone
    result = distill.distill_stage(  # NumPy's integers as Python's (the seed crashed)
        teacher, "ssr1", out, halving_steps=np.int64(2), batch_size=np.int64(2), progress=False,
        seed=np.int64(0),
    )  # fmt: skip
    assert teacher.models["ssr1"].training
    record = json.loads((out / distill.PLAN).read_text())
    assert record["phases"] == ["halve-0008-0004"] and record["w_max"] == 0.0
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == [
        "distill.json",
        "halve-0008-0004",
    ]
    stage = result.config.stage("ssr1")
    assert stage.guidance_w_max == 0.0 and stage.sample_steps == 4
    student = Cascade(result.config, {**teacher.models, "ssr1": result.model.eval()})
    low = torch.rand(1, 3, 8, 8, 8) * 2 - 1
    emb, mask = student.encoder.encode(["a red circle moving left"])
    args = (result.model, stage, cfg.diffusion, emb, mask)
    video = cascade.sample_stage(*args, cond_video=low, generator=torch.Generator())
    assert video.shape == (1, 3, 8, 16, 16)
    with pytest.raises(ValueError, match=r"learnt guidance weights 0 <= w <= 0.0 only"):
        cascade.sample_stage(*args, cond_video=low, guidance_w=1.0)
    # started from Python without source=: a CLI resume took the shipped teacher and listed
    # some forty differences, never saying that --from was the way
    assert cli.main(["distill", "--out", str(out), "--resume"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "was distilled from a teacher that is not the shipped cascade's 'ssr1'" in said
    assert "give that cascade with --from DIR" in said


def test_a_tsr_student_trains_on_videos_even_from_a_config_saved_with_images():
    cfg = configs.preset("ci")
    tsr = cfg.stage("tsr")
    imaged = dataclasses.replace(tsr, train=dataclasses.replace(tsr.train, image_ratio=0.2))
    old = dataclasses.replace(
        cfg, stages=tuple(imaged if s.name == "tsr" else s for s in cfg.stages)
    )
    student = distill.student_config(old, "tsr", 4).stage("tsr")
    assert student.train.image_ratio == 0
    objectives.toy_dataset(student)  # the teacher's own config would be refused here


def test_the_draws_of_an_unguided_distillation_hold_w_at_zero():
    ci = configs.preset("ci")  # its base unguided (w = 0): a student may then learn w = 0 alone
    stages = tuple(
        dataclasses.replace(s, guidance_w=0.0) if s.name == "base" else s for s in ci.stages
    )
    cfg = dataclasses.replace(ci, stages=stages)
    cache = objectives.TextCache(text.build_encoder(cfg.text))
    teacher = distill.with_guidance_embedding(VideoUNet(cfg.stage("base").unet)).eval()
    g = torch.Generator().manual_seed(0)
    for w_max, want in ((0.0, 0.0), (None, cfg.distill.w_max)):
        student_cfg = distill.student_config(cfg, "base", 4, w_max=w_max)
        stage = student_cfg.stage("base")
        data = objectives.toy_dataset(stage)
        base = objectives.DiffusionObjective(student_cfg, stage, data, cache)
        obj = distill.DistillObjective(base, teacher, "progressive", 4, cfg.distill)
        w = obj._draws(obj.sample(64), g)["w"]
        assert w.min() >= 0 and w.max() <= want and (w.max() > 0) == (want > 0)


@pytest.mark.parametrize("name", configs.PRESETS)
def test_every_preset_distils_its_guided_stages_over_the_weights_they_sample_at(name):
    """A student learns w in [0, w_max]: the stage's own weights (both oscillating ones) must
    lie inside, or the distilled stage could not be sampled at its defaults."""
    cfg = configs.preset(name)
    for stage in cfg.stages:
        weights = [stage.guidance_w] + [stage.guidance_low_w] * stage.oscillating_guidance
        assert max(weights) <= cfg.distill.w_max, (stage.name, weights, cfg.distill.w_max)


def test_distilling_below_the_stages_own_guidance_weight_is_refused(tmp_path):
    cfg = configs.preset("ci")  # its TSR samples at w = 2 and 0.5, oscillating
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, w_max=1.5))
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:2]})
    with pytest.raises(ValueError, match=r"w_max=1.5 is below the guidance weight 2 .*>= 2"):
        distill.distill_stage(teacher, "tsr", tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_halving_steps_take_one_count_for_all_or_one_per_halving():
    phases = distill.plan(64, 8)  # guided, then 64 -> 32 -> 16 -> 8
    assert distill.halving_lengths(phases, 400) == [400, 400, 400]
    assert distill.halving_lengths(phases, (300, 400, 600)) == [300, 400, 600]
    with pytest.raises(ValueError, match=r"one for each of the 3 halvings \(halve-0064-0032, "):
        distill.halving_lengths(phases, [600, 1000])
    with pytest.raises(ValueError, match=r"halving_steps=\[600, 0, 9\]: give one positive"):
        distill.halving_lengths(phases, [600, 0, 9])
    with pytest.raises(ValueError, match=r"\[2, 2\]: this plan has no halvings .*drop halving"):
        distill.halving_lengths(distill.plan(64, 64), [2, 2])  # it said: "each of the 0 ()"
    assert distill.step_counts("600") == 600
    assert distill.step_counts("600,1000") == [600, 1000]
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, got ''"):
        distill.step_counts("600,")


def test_distill_refuses_a_list_of_halving_steps_of_the_wrong_length(tmp_path, capsys):
    cfg = configs.preset("ci")
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:2]})
    teacher.save_pretrained(tmp_path / "cascade")
    argv = ["distill", "--stage", "tsr", "--from", str(tmp_path / "cascade")]
    argv += ["--out", str(tmp_path / "d"), "--halving-steps", "2,2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "halving_steps=[2, 2]" in err and "one for each of the 1 halving (halve-0008-0004)" in err
    )
    assert not (tmp_path / "d" / "distill.json").exists()


def test_distilling_a_student_names_the_teacher_folder_to_give(tmp_path, capsys):
    cfg = configs.preset("ci")
    Cascade(cfg, {"base": VideoUNet(cfg.stage("base").unet)}).save_pretrained(tmp_path / "mc")
    student_cfg = distill.student_config(cfg, "base", 8)
    student = VideoUNet(student_cfg.stage("base").unet)
    Cascade(student_cfg, {"base": student}).save_pretrained(tmp_path / "mc" / "distilled")
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "mc" / "distilled")]
    assert cli.main([*argv, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "is already distilled (it embeds w): give --from the undistilled cascade" in err
    assert f"(e.g. --from {tmp_path / 'mc'})" in err


def test_a_given_bf16_reaches_every_phase_and_none_leaves_it_to_the_device(tmp_path, monkeypatch):
    from ivref import devices, trainer

    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    used = []
    real_init = trainer.Trainer.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        used.append((self.train_cfg.bf16, self.bf16))

    monkeypatch.setattr(trainer.Trainer, "__init__", spy)
    ci = configs.preset("ci")  # its base trains in float32; here it asks for bf16
    base = dataclasses.replace(
        ci.stages[0], train=dataclasses.replace(ci.stages[0].train, bf16=True)
    )
    cfg = dataclasses.replace(ci, stages=(base, *ci.stages[1:]))
    torch.manual_seed(0)
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:1]})
    kwargs = dict(guided_steps=1, halving_steps=1, batch_size=2, progress=False)
    distill.distill_stage(teacher, "base", tmp_path / "a", bf16=True, **kwargs)
    assert used and set(used) == {(True, True)}  # given: on, though not native here
    used.clear()
    with pytest.warns(UserWarning, match="bf16 autocast is off"):  # the plan's, not native
        distill.distill_stage(teacher, "base", tmp_path / "b", **kwargs)
    assert used and set(used) == {(True, False)}
    for run in "ab":
        assert json.loads((tmp_path / run / distill.PLAN).read_text())["bf16"] is True
    # a library resume without bf16 keeps what the run started with, in every phase, those
    # that start after the resume too (they have no checkpoint of their own to restore from)
    used.clear()
    last = distill_plan.read_plan(tmp_path / "a")["phases"][-1]
    shutil.rmtree(tmp_path / "a" / last)  # its last phase not started yet
    distill.distill_stage(teacher, "base", tmp_path / "a", resume=True, **kwargs)
    assert used and set(used) == {(True, True)}
    assert distill_plan.read_plan(tmp_path / "a")["bf16_given"] is True
    # ivref distill --resume without the flag: forced where the run was, else the device's
    for run, given, saved in (("a", True, True), ("b", None, None), ("old", None, False)):
        plan = distill_plan.read_plan(tmp_path / ("a" if run == "old" else run))
        if run == "old":  # a plan written before bf16_given was kept: its bf16, as before
            plan = {k: v for k, v in plan.items() if k != "bf16_given"} | {"bf16": False}
        assert plan.get("bf16_given", "absent") == (given if run != "old" else "absent")
        names = ("stage", "to_steps", "source", "guided_steps", "halving_steps", "bf16")
        args = argparse.Namespace(out=tmp_path / run, batch_size=None, seed=None)
        vars(args).update(dict.fromkeys(names))
        distill_plan.resume_arguments(args, plan)
        assert args.bf16 is saved
    # a library resume of a plan written before bf16_given was kept: its bf16, as the CLI's
    plan = distill_plan.read_plan(tmp_path / "b")
    plan.pop("bf16_given")
    (tmp_path / "b" / distill.PLAN).write_text(json.dumps(plan))
    shutil.rmtree(tmp_path / "b" / last)
    used.clear()
    distill.distill_stage(teacher, "base", tmp_path / "b", resume=True, **kwargs)
    assert used and set(used) == {(True, True)}


@pytest.mark.slow
def test_compiled_distillation_matches_eager(tmp_path, monkeypatch):
    """``compile=``: the student's step and the teacher's forward are compiled (``aot_eager``
    here: dynamo and AOTAutograd without code generation) and every phase's losses equal
    the eager run's; ``ivref distill --compile`` passes the option on."""
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:1]})
    compiled_teachers = []
    real_objective = distill.DistillObjective

    def spy(base, teacher, *args):
        compiled_teachers.append(isinstance(teacher, torch._dynamo.eval_frame.OptimizedModule))
        assert base.text.pad_multiple == (cfg.text.max_length if compiled_teachers[-1] else 1)
        return real_objective(base, teacher, *args)

    monkeypatch.setattr(distill, "DistillObjective", spy)
    kwargs = dict(guided_steps=2, halving_steps=2, batch_size=2, progress=False)
    eager = distill.distill_stage(teacher, "base", tmp_path / "a", **kwargs)
    options = {"backend": "aot_eager", "dynamic": False}
    compiled = distill.distill_stage(teacher, "base", tmp_path / "b", compile=options, **kwargs)
    phases = json.loads((tmp_path / "b" / distill.PLAN).read_text())["phases"]
    assert phases[0] == "guided" and len(phases) >= 2
    assert compiled_teachers == [False] * len(phases) + [True] * len(phases)
    for phase in phases:
        a, b = (train.read_log(tmp_path / run / phase) for run in "ab")
        assert len(a) == len(b) == 2
        for row_a, row_b in zip(a, b, strict=True):
            # the loss is a small difference (student - teacher ~ 3e-2 at init): the rounding
            # that text padding changes is ~1e-3 of it
            assert math.isclose(row_a["loss"], row_b["loss"], rel_tol=1e-2), phase
    state_a, state_b = eager.model.state_dict(), compiled.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        torch.testing.assert_close(state_b[name], value, rtol=1e-3, atol=1e-4)
    with pytest.raises(TypeError, match=r"compile='yes'; allowed: True, False or a dict"):
        distill.distill_stage(teacher, "base", tmp_path / "c", compile="yes", **kwargs)

    seen = []

    def record(*args, compile=False, **kwargs):
        seen.append(compile)
        return distill.Distilled(compiled.config, compiled.model)

    monkeypatch.setattr(distill, "distill_stage", record)
    teacher.save_pretrained(tmp_path / "cascade")
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade")]
    for flag in (["--compile"], []):
        assert cli.main([*argv, "--out", str(tmp_path / f"cli{len(seen)}"), *flag]) == 0
    assert seen == [True, False]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(to_steps=0), r"to_steps=0 must be None \(the distill config's\) or an integer"),
        (dict(guided_steps=-1), r"guided_steps=-1 must be None"),
        (dict(halving_steps=0), r"halving_steps=0 must be None"),
        (dict(batch_size=0), r"batch_size=0 must be None \(the stage's\)"),
        (dict(checkpoint_every=0), r"checkpoint_every=0 must be an integer from 1"),
        (dict(device="bogus"), r"device 'bogus' is not a device name"),
        (dict(stage="tsr"), r"stage='tsr': the cascade's trained stages are \['base'\]"),
        (dict(halving_steps="4"), r"halving_steps='4' must be an int, or a list of one int"),
        (dict(teacher_cascade="runs/c"), r"teacher_cascade='runs/c' must be a trained cascade"),
    ],
)
def test_bad_distill_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    """A zero or negative count was read as "the default" or trained nothing, silently; a
    folder for the cascade, an untrained stage and a string of steps met AttributeError,
    KeyError and "halving_steps=['4']"."""
    cfg = configs.preset("ci")
    teacher = Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages[:1]})
    args = {"teacher_cascade": teacher, "stage": "base"} | kwargs
    kind = (
        TypeError if "must be an int, or" in message or "trained cascade" in message else ValueError
    )
    with pytest.raises(kind, match=message):
        distill.distill_stage(out=tmp_path / "d", progress=False, **args)
    assert not (tmp_path / "d").exists()
    with pytest.raises(TypeError, match=r"bf16='yes'; allowed: None \(the stage's setting\)"):
        distill.distill_stage(teacher, "base", tmp_path / "d", progress=False, bf16="yes")
    assert not (tmp_path / "d").exists()


def _save_ci_base_teacher(path, image_ratio=0.0):
    """A ci cascade of a fresh base stage (seed 0) saved at ``path``, to distil from;
    ``image_ratio``: the base stage's training config's (the toy base's is 0.2)."""
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, image_ratio=image_ratio))
    cfg = dataclasses.replace(cfg, stages=(base, *cfg.stages[1:]))
    torch.manual_seed(0)
    Cascade(cfg, {"base": VideoUNet(cfg.stage("base").unet).eval()}).save_pretrained(path)


def test_new_streams_on_resume_are_announced_once_by_the_phase_that_trains_on(tmp_path, capsys):
    """``ivref distill --resume --new-streams`` loads every finished phase for its student and
    resumes the unfinished one: only that one takes new streams that are used, and the note
    saying so was printed once per phase. The resume keeps the run's --checkpoint-every (and
    --fsdp: test_distributed), which it dropped for the default; 'default' puts it back."""
    _save_ci_base_teacher(tmp_path / "cascade")
    out = tmp_path / "d"
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade"), "--out", str(out)]
    argv += ["--guided-steps", "1", "--halving-steps", "2", "--batch-size", "2"]
    argv += ["--checkpoint-every", "1", "--to-steps", "8"]
    assert cli.main(argv) == 0
    phases = json.loads((out / distill.PLAN).read_text())["phases"]
    shutil.rmtree(out / phases[-1] / "checkpoints" / "step-00000002")  # unfinished
    capsys.readouterr()
    resumed = ["distill", "--out", str(out), "--resume", "--new-streams"]
    resumed += ["--checkpoint-every", "default"]
    assert cli.main(resumed) == 0  # no --from, steps or batch: the plan's and run_flags.json's
    err = capsys.readouterr().err
    assert err.count("resume: new data, noise and dropout streams") == 1
    assert f"resuming base {phases[-1]} from step 1" in err  # which phase, and where
    assert f"resuming base {phases[0]}" not in err  # a finished phase is loaded, not resumed
    assert "resume: override --checkpoint-every: 1 -> the default (100)" in err
    assert [row["step"] for row in train.read_log(out / phases[-1])] == [1, 2]
    assert json.loads((out / run_flags.FILE).read_text()) == {
        "checkpoint_every": 100,
        "fsdp": False,
    }


def test_a_teacher_trained_on_videos_distils_on_them_and_resumes_only_on_them(
    tmp_path, capsys, monkeypatch
):
    """`ivref distill --videos`: every phase draws its clips from the folder (decoded, not
    painted), each from the same start, the run records the videos so --resume needs no
    flags, a phase distilled again on resume sees the same clips, and other data is refused:
    the toy world, other videos, another --fit; a changed folder goes on with --new-streams.
    Its students record image_ratio 0 (a teacher that trained with images in the toy world
    gave them its own, though videos are all they see); on the toy world they keep it."""
    from ivref import train_videos, video_folder
    from tests.test_train_videos import _folder

    _save_ci_base_teacher(tmp_path / "cascade", image_ratio=0.2)
    videos, out = _folder(tmp_path / "videos"), tmp_path / "d"
    decoded = []
    real_decode = video_folder.decode_from
    monkeypatch.setattr(
        video_folder,
        "decode_from",
        lambda path, *a, **k: decoded.append((path, *a)) or real_decode(path, *a, **k),
    )

    def distil(out, *extra):
        argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade"), "--out"]
        argv += [str(out), "--guided-steps", "2", "--halving-steps", "1", "--batch-size", "2"]
        return cli.main([*argv, "--to-steps", "8", *extra])

    assert distil(out, "--videos", str(videos)) == 0
    kept = json.loads((out / "video_probes.json").read_text())  # for the next start (resume)
    assert sorted(kept) == ["a.mp4", "b.mp4", "c.mp4"]
    phases = json.loads((out / distill.PLAN).read_text())["phases"]
    assert len(phases) == 2 and len(decoded) == 2 * 3  # 2 + 1 steps of 2 clips, all decoded
    assert decoded[4:] == decoded[:2]  # the halving's first batch: the guided phase's first
    assert json.loads((out / train_videos.VIDEOS).read_text())["videos"] == str(videos.resolve())

    def image_ratios(out):
        saved = [checkpoint.read_config(checkpoint.latest(out / phase)) for phase in phases]
        return [meta["config"].stage("base").train.image_ratio for meta in saved]

    assert image_ratios(out) == [0.0, 0.0]

    def losses(phase):
        return [(row["step"], row["loss"], row["grad_norm"]) for row in train.read_log(phase)]

    halving = losses(out / phases[1])
    shutil.rmtree(out / phases[1])  # distilled again on resume, from the same clips
    assert distil(out, "--resume") == 0
    assert losses(out / phases[1]) == halving
    capsys.readouterr()
    toy = tmp_path / "toy"
    assert distil(toy) == 0  # the toy world
    assert image_ratios(toy) == [0.2, 0.2]
    assert distil(toy, "--resume", "--videos", str(videos)) == 2
    assert "was distilled on the toy world; resume it without --videos" in capsys.readouterr().err
    other = _folder(tmp_path / "other", names=("a", "b"))
    assert distil(out, "--resume", "--videos", str(other)) == 2
    assert "other') holds other files or captions" in capsys.readouterr().err
    (out / train_videos.VIDEOS).unlink()  # a lost record: the toy world is not the plan's data
    assert distil(out, "--resume") == 2
    assert "was distilled on a folder of videos, and none is given" in capsys.readouterr().err
    assert distil(out, "--resume", "--videos", str(videos), "--fit", "squash") == 2
    assert "data_fit: saved ['crop', True], now ['squash', True]" in capsys.readouterr().err
    moved = videos.rename(tmp_path / "moved")
    assert distil(out, "--resume", "--videos", str(moved)) == 0
    assert "the run reads the videos in" in capsys.readouterr().err
    (moved / "c.mp4").unlink()  # the same folder, changed: it goes on as it is with new streams
    shutil.rmtree(out / phases[1])
    assert distil(out, "--resume") == 2
    assert "--new-streams goes on with it as it is now" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="the videos differ from those it was distilled on"):
        assert distil(out, "--resume", "--new-streams") == 0
    assert distil(out, "--resume") == 0  # and on: finished phases are loaded for their students


def test_a_resume_with_another_batch_seed_or_teacher_is_refused_and_a_damaged_end_not_exported(
    tmp_path, capsys
):
    """Each changed the phases still to train without a word; a truncated last checkpoint
    let export ship the phase's previous, unfinished student."""
    cfg = configs.preset("ci")
    lr = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, lr=5e-2))
    base = cfg.stage("base")  # how the teacher samples and trained: no phase reads them
    resampled = dataclasses.replace(
        base, thresholding="static", train=dataclasses.replace(base.train, lr=1.0)
    )
    sampling = dataclasses.replace(cfg, stages=(resampled, *cfg.stages[1:]))
    teachers = (("cascade", 0, cfg), ("other", 1, cfg), ("cascade_lr", 0, lr))
    for name, seed, config in (*teachers, ("cascade_sampling", 0, sampling)):
        torch.manual_seed(seed)  # cascade_lr: cascade's weights, another recipe
        Cascade(config, {"base": VideoUNet(cfg.stage("base").unet).eval()}).save_pretrained(
            tmp_path / name
        )
    out = tmp_path / "d"

    def distil(*extra, source="cascade"):
        argv = ["distill", "--stage", "base", "--from", str(tmp_path / source), "--out", str(out)]
        argv += ["--guided-steps", "2", "--halving-steps", "1", "--to-steps", "8"]
        return cli.main([*argv, "--batch-size", "2", "--checkpoint-every", "1", *extra])

    assert distil() == 0
    capsys.readouterr()
    for extra, changed in (
        (["--batch-size", "3"], "batch_size: saved 2, now 3"),
        (["--seed", "5"], "seed: saved 0, now 5"),
    ):
        assert distil(*extra, "--resume") == 2
        assert changed in capsys.readouterr().err
    assert distil("--resume", source="other") == 2
    assert "teacher: saved" in capsys.readouterr().err
    assert distil("--resume", source="cascade_lr") == 2  # trained the rest at another lr
    assert f"distill.lr: saved {cfg.distill.lr}, now 0.05" in capsys.readouterr().err
    (tmp_path / "cascade").rename(tmp_path / "moved")  # a resume with no flags: the plan's
    assert cli.main(["distill", "--out", str(out), "--resume"]) == 2  # folder is gone
    assert "(kept in its distill.json), which is not there now; give --from" in (
        capsys.readouterr().err
    )
    (tmp_path / "moved").rename(tmp_path / "cascade")
    assert distil("--resume", source="cascade_sampling") == 0  # the same recipe
    plan = json.loads((out / distill.PLAN).read_text())
    old = {k: v for k, v in plan.items() if k not in distill.ADDED_LATER}
    (out / distill.PLAN).write_text(json.dumps(old))  # a plan written before they were kept
    assert cli.main(["distill", "--out", str(out), "--resume"]) == 2  # they cannot be guessed
    assert "was written before it kept --batch-size, --seed; give them" in capsys.readouterr().err
    assert cli.main(["distill", "--out", str(out), "--resume", "--to-steps", "16"]) == 2
    assert "another plan (to_steps: saved 8, now 16)" in capsys.readouterr().err
    assert distil("--seed", "5", "--resume") == 0
    last = sorted((out / plan["phases"][-1] / "checkpoints").iterdir())[-1]
    ema = last / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    assert cli.main(["export", str(out), "--out", str(tmp_path / "x")]) == 2
    assert "its last checkpoint is damaged" in capsys.readouterr().err
    assert not (tmp_path / "x" / "cascade.json").exists()


@pytest.mark.parametrize("damaged", ["ema.safetensors", "config.json"])
def test_a_damaged_end_of_a_finished_phase_is_trained_again_as_it_was(tmp_path, capsys, damaged):
    """A finished phase is loaded with new streams (they are not used); where its last
    checkpoint was damaged, the resume fell back to the one before and trained the last
    steps on those new streams, silently: other weights in that phase and every later one
    (the next phase, resumed midway, then learnt from two teachers)."""
    from safetensors.torch import load_file

    _save_ci_base_teacher(tmp_path / "cascade")

    def distil(out, *extra):
        argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade")]
        argv += ["--out", str(out), "--guided-steps", "3", "--halving-steps", "3"]
        argv += ["--to-steps", "8", "--batch-size", "2", "--checkpoint-every", "1", *extra]
        return cli.main(argv)

    assert distil(tmp_path / "whole") == 0
    phases = json.loads((tmp_path / "whole" / distill.PLAN).read_text())["phases"]
    shutil.copytree(tmp_path / "whole", tmp_path / "again")
    guided_end = tmp_path / "again" / phases[0] / "checkpoints" / "step-00000003"
    part = guided_end / damaged
    part.write_bytes(part.read_bytes()[:100])  # the guided phase's last checkpoint, damaged
    shutil.rmtree(tmp_path / "again" / phases[-1] / "checkpoints" / "step-00000003")
    capsys.readouterr()
    assert cli.main(["distill", "--out", str(tmp_path / "again"), "--resume"]) == 0
    said = capsys.readouterr().err
    assert said.count("skipping step-00000003") == 1, said  # it fell back, and said so once
    for phase in phases:
        whole, again = (
            load_file(checkpoint.run_checkpoints(tmp_path / run / phase)[-1] / "ema.safetensors")
            for run in ("whole", "again")
        )
        assert whole.keys() == again.keys()
        assert all(torch.equal(whole[k], again[k]) for k in whole), phase


def test_a_finished_distillation_goes_on_to_fewer_steps_and_only_to_fewer(tmp_path, capsys):
    """The base stage was taken past the paper's 8 steps by resuming its finished 8-step
    distillation with a smaller --to-steps; the plan checks refused that as another plan."""
    _save_ci_base_teacher(tmp_path / "cascade")
    out = tmp_path / "d"
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade"), "--out", str(out)]
    argv += ["--guided-steps", "2", "--halving-steps", "1", "--batch-size", "2"]
    assert cli.main([*argv, "--to-steps", "8"]) == 0
    first = json.loads((out / distill.PLAN).read_text())
    unfinished = dict(first, phase_steps=[2, 3])  # as if its last phase stopped at step 1
    (out / distill.PLAN).write_text(json.dumps(unfinished))
    export = ["export", "--base", str(tmp_path / "cascade"), "--out"]
    assert cli.main([*export, str(tmp_path / "x"), str(out / "halve-0016-0008")]) == 2
    err = capsys.readouterr().err  # a phase given alone exported its half-trained student
    assert "is phase halve-0016-0008 of the distillation in" in err
    assert "not finished (step 1 of 3): continue it with `ivref distill --out" in err
    with files.RunLock(out):  # still distilling: a resume would meet the lock
        assert cli.main([*export, str(tmp_path / "x"), str(out / "halve-0016-0008")]) == 2
    err = capsys.readouterr().err
    assert "not finished (step 1 of 3): it is still training (in use by this process" in err
    assert cli.main([*export, str(tmp_path / "y"), str(out / "guided")]) == 0  # finished
    (out / distill.PLAN).write_text(json.dumps(first))
    ema = sorted((out / "halve-0016-0008" / "checkpoints").iterdir())[-1] / "ema.safetensors"
    whole = ema.read_bytes()
    ema.write_bytes(whole[:100])  # finished, but its last checkpoint is damaged
    assert cli.main([*export, str(tmp_path / "z"), str(out / "halve-0016-0008")]) == 2
    assert "the last checkpoint of phase halve-0016-0008 is damaged" in capsys.readouterr().err
    ema.write_bytes(whole)
    done = {f: sorted((out / f / "checkpoints").iterdir())[-1] for f in first["phases"]}
    kept = {f: (last / "ema.safetensors").read_bytes() for f, last in done.items()}
    stray = out / "halve-0008-0004"  # another distillation's phase (here: a copy)
    shutil.copytree(out / "halve-0016-0008", stray)
    assert cli.main(["distill", "--out", str(out), "--resume", "--to-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "holds the phase folders ['halve-0008-0004'] of another distillation" in err
    shutil.rmtree(stray)
    assert cli.main(["distill", "--out", str(out), "--resume", "--to-steps", "4"]) == 0
    plan = json.loads((out / distill.PLAN).read_text())
    assert plan["phases"] == [*first["phases"], "halve-0008-0004"]
    assert plan["to_steps"] == 4 and plan["phase_steps"] == [2, 1, 1]
    for folder, ema in kept.items():  # the finished phases are not trained again
        assert sorted((out / folder / "checkpoints").iterdir())[-1] == done[folder]
        assert (done[folder] / "ema.safetensors").read_bytes() == ema
    assert distill.final_phase(out) == out / "halve-0008-0004"  # what export takes
    capsys.readouterr()
    assert cli.main(["distill", "--out", str(out), "--resume", "--to-steps", "8"]) == 2
    refused = "(to_steps: saved 4, now 8) (a resume may go on to fewer steps"
    assert refused in capsys.readouterr().err
    argv2 = ["distill", "--out", str(out), "--resume", "--to-steps", "2"]
    assert cli.main([*argv2, "--halving-steps", "3"]) == 2  # the finished halvings ran 1 step
    assert "phase_steps: saved [2, 1, 1], now [2, 3, 3, 3]" in capsys.readouterr().err
    uneven = tmp_path / "uneven"  # halvings of two lengths: the new ones cannot be guessed
    argv3 = [*argv[:6], str(uneven), *argv[7:]]
    assert cli.main([*argv3, "--halving-steps", "1,2", "--to-steps", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["distill", "--out", str(uneven), "--resume", "--to-steps", "1"]) == 2
    assert "one count per halving, the planned ones first (e.g. 1,2,2,2)" in capsys.readouterr().err


def test_nothing_is_written_or_resumed_that_a_later_check_would_refuse(tmp_path, capsys):
    """A bad seed left a plan that refused the corrected command; a start without --videos
    kept another start's record of videos; phases left without their plan were resumed on a
    new teacher unchecked; a damaged only checkpoint was said to be resumable."""
    from ivref import train_videos

    cfg = configs.preset("ci")
    torch.manual_seed(0)
    teacher = Cascade(cfg, {"base": VideoUNet(cfg.stage("base").unet).eval()})
    teacher.save_pretrained(tmp_path / "cascade")
    out = tmp_path / "d"
    run = dict(guided_steps=1, halving_steps=1, to_steps=8, batch_size=2, progress=False)
    for bad in (-1, True, 2**63):
        with pytest.raises(ValueError, match="must be an integer from 0 to 2\\*\\*63 - 1"):
            distill.distill_stage(teacher, "base", out, seed=bad, **run)
        assert not (out / distill.PLAN).exists()
    out.mkdir()
    (out / train_videos.VIDEOS).write_text("{}")  # left by a start that failed
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade"), "--out", str(out)]
    argv += ["--guided-steps", "1", "--halving-steps", "1", "--to-steps", "8", "--batch-size", "2"]
    assert cli.main(argv) == 0
    assert not (out / train_videos.VIDEOS).exists()
    assert cli.main(["distill", "--out", str(out), "--resume"]) == 0
    (out / distill.PLAN).unlink()
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "holds the phase folders ['guided', 'halve-0016-0008'] of a distillation" in (
        capsys.readouterr().err
    )
    shutil.rmtree(out / "guided")
    shutil.move(out / "halve-0016-0008", out / "halve-0008-0004")  # not this plan's phase,
    assert cli.main(argv) == 2  # but a continuation to 4 steps would adopt it, finished
    assert "holds the phase folders ['halve-0008-0004'] of a distillation" in (
        capsys.readouterr().err
    )
    shutil.rmtree(out)
    assert cli.main(argv) == 0
    last = next((out / "halve-0016-0008" / "checkpoints").iterdir())
    (last / "ema.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="it is the phase's only one: delete"):
        distill.final_phase(out)
    compiled = torch.compile(teacher.models["base"])  # a wrapper: the same weights, named anew
    assert distill.teacher_digest(compiled) == distill.teacher_digest(teacher.models["base"])


def test_a_teachers_digest_is_hashed_once_while_its_weights_stay_and_anew_when_they_move(
    monkeypatch,
):
    """``ivref distill`` checks its plan, then ``distill_stage`` again, each hashing every
    teacher weight (tens of seconds at the paper's size); any in-place write to a weight
    (``load_state_dict``, an optimizer step) must still give the new weights' digest."""
    hashed = []
    real = distill_plan.hashlib.sha256
    monkeypatch.setattr(distill_plan.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    torch.manual_seed(0)
    teacher = VideoUNet(configs.preset("ci").stage("base").unet)
    first = distill.teacher_digest(teacher)
    assert distill.teacher_digest(teacher) == first and len(hashed) == 1
    teacher.load_state_dict(teacher.state_dict())  # the same weights, written again
    assert distill.teacher_digest(teacher) == first and len(hashed) == 2
    with torch.no_grad():
        next(teacher.parameters()).add_(1.0)
    moved = distill.teacher_digest(teacher)
    assert moved != first and len(hashed) == 3
    other = VideoUNet(configs.preset("ci").stage("base").unet)
    other.load_state_dict(teacher.state_dict())  # another module of the same weights
    assert distill.teacher_digest(other) == moved and len(hashed) == 4


def test_a_progressive_phase_teaches_exactly_the_pd_target_on_the_students_grid():
    """The phase's own draws and target (t on the grid i/N, dt = 1/N), not pd_target alone: a
    student that predicts pd_target(teacher, z_t, t, 1/N) exactly has zero loss, and the
    teacher itself, which lands elsewhere in one step, does not."""
    from ivref import parameterization

    torch.manual_seed(0)
    cfg, n = configs.preset("ci"), 4

    class Teacher(torch.nn.Module):  # any smooth w-conditioned v-predictor will do
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.tensor(0.3))

        def forward(self, z, logsnr, emb, mask, guidance_w=None, is_image=None):
            level, w = logsnr.view(-1, 1, 1, 1, 1), guidance_w.view(-1, 1, 1, 1, 1)
            return torch.tanh(z * self.p * (1 + 0.1 * w)) + 0.05 * torch.sin(level) * z

    teacher = Teacher()

    class ExactStudent(torch.nn.Module):  # the v whose x is the target at its grid time
        def forward(self, z, logsnr, emb, mask, guidance_w=None, is_image=None):
            t = (schedules.t_from_logsnr(logsnr.double()) * n).round() / n

            def x_hat(zz, level):
                a, s = schedules.alpha_sigma(schedules.expand_to(level, zz))
                v = teacher(zz, level.expand(zz.shape[0]), emb, mask, guidance_w=guidance_w)
                return parameterization.x_from_v(zz, v, a, s)

            x = distill.pd_target(x_hat, z, t, 1.0 / n)
            a, s = schedules.alpha_sigma(schedules.expand_to(logsnr, z))
            return (a * z - x) / s  # v from x: x = alpha z - sigma v

    cache = objectives.TextCache(text.build_encoder(cfg.text))
    student_cfg = distill.student_config(cfg, "base", n)
    stage = student_cfg.stage("base")
    base = objectives.DiffusionObjective(student_cfg, stage, objectives.toy_dataset(stage), cache)
    obj = distill.DistillObjective(base, teacher, "progressive", n, cfg.distill)
    batch = obj.sample(16)
    exact = obj.loss(ExactStudent(), batch, torch.Generator().manual_seed(0)).item()
    other = obj.loss(teacher, batch, torch.Generator().manual_seed(0)).item()
    assert exact < 1e-9 and other > 1e-3, (exact, other)


@pytest.mark.parametrize("steps", [[2, 0], [2, 1.5], [2, True], [2, "3"]])
def test_a_plan_with_a_step_count_no_phase_can_train_is_damaged(tmp_path, steps):
    """A hand-edited distill.json planning 0 steps for a phase without checkpoints made
    `ivref export` of that phase fail with Python's TypeError (its missing checkpoint read
    as a path) instead of a word about the file."""
    record = {"phases": ["guided", "halve-0016-0008"], "phase_steps": steps}
    (tmp_path / distill.PLAN).write_text(json.dumps(record))
    with pytest.raises(errors.CLIError, match=r"does not read back as a distillation plan"):
        distill_plan.read_plan(tmp_path)
    with pytest.raises(errors.CLIError, match=r"phase_steps .*: a phase trains a whole number"):
        distill_plan.read_plan(tmp_path)
    (tmp_path / "halve-0016-0008").mkdir()  # its phase cannot be judged finished: refused
    with pytest.raises(errors.CLIError, match=r"does not read back as a distillation plan"):
        distill_plan.check_phase_finished(tmp_path / "halve-0016-0008")
