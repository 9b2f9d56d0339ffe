"""The weights shipped in data/toy: what data/README.md says about them holds."""

import dataclasses
import json

import torch

from ivref import cascade, configs, metrics

PROMPTS = [
    "a red circle moving left",
    "a green square moving up",
    "a yellow triangle moving right",
    "a cyan circle moving down",
]


def test_the_shipped_cascade_is_the_toy_preset_and_fits_the_size_budget(repo_root):
    teacher = cascade.Cascade.from_pretrained(repo_root / "data" / "toy")  # checksums verified
    toy = configs.toy()
    assert [s.name for s in teacher.trained_stages] == [s.name for s in toy.stages]
    assert teacher.cfg == toy
    assert teacher.trained_on == {s.name: "toy" for s in toy.stages}  # what evaluate trusts
    size = sum(p.stat().st_size for p in (repo_root / "data").rglob("*") if p.is_file())
    assert size < 40 * 2**20, f"data/ holds {size / 2**20:.1f} MB; the budget is 40 MB"


def test_every_shipped_stage_has_an_eight_step_student(repo_root):
    folder = repo_root / "data" / "toy"
    teacher = cascade.Cascade.from_pretrained(folder)
    student = cascade.Cascade.from_pretrained(folder, variant="distilled")
    assert [s.name for s in student.trained_stages] == [s.name for s in teacher.trained_stages]
    assert student.trained_on == teacher.trained_on  # distilled on the toy world, too
    listed = json.loads((folder / "cascade.json").read_text())["files"]
    assert student.teachers == {n: listed[f"{n}.safetensors"]["sha256"] for n in student.models}
    for t_stage in teacher.trained_stages:
        s_stage = student.cfg.stage(t_stage.name)
        assert student.models[t_stage.name].cfg.use_guidance_embedding
        assert (s_stage.sample_steps, s_stage.sampler) == (8, "stochastic")
        same = ("kind", "num_frames", "width", "height", "fps", "guidance_w", "thresholding")
        assert all(getattr(s_stage, f) == getattr(t_stage, f) for f in same)
        # a student learnt the weights its teacher was guided with: U(0, w_max), or w = 0 only
        want = teacher.cfg.distill.w_max if t_stage.guidance_w > 0 else 0.0
        assert s_stage.guidance_w_max == want


def test_the_base_student_draws_its_captions_in_eight_single_passes(repo_root):
    student = cascade.Cascade.from_pretrained(repo_root / "data" / "toy", variant="distilled")
    stage, model = student.cfg.stage("base"), student.models["base"]
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    emb, mask = student.encoder.encode(PROMPTS)
    with torch.no_grad():
        videos = cascade.sample_stage(
            model,
            stage,
            student.cfg.diffusion,
            emb,
            mask,
            generator=torch.Generator().manual_seed(0),
        )
    assert calls == [len(PROMPTS)] * 8  # 8 steps, one pass each (no unconditional pass)
    assert metrics.caption_alignment(videos, PROMPTS)["all"] == 1.0
    plain = dataclasses.replace(stage, sampler="ddim")  # the student also runs under DDIM
    videos = cascade.sample_stage(
        model, plain, student.cfg.diffusion, emb, mask, generator=torch.Generator().manual_seed(0)
    )
    assert metrics.caption_alignment(videos, PROMPTS)["all"] == 1.0
