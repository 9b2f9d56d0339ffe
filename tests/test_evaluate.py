"""Alignment sweeps: real rendered videos score 100%, shuffled ones do not; bad input errors."""

import math

import pytest
import torch

from ivref import configs, data, distributed, evaluate, metrics, train
from ivref.cascade import Cascade
from ivref.unet3d import VideoUNet


class RenderingCascade(Cascade):
    """A stand-in whose 'samples' are the toy world's own renders of each prompt."""

    def __init__(self, shuffle: bool = False):
        cfg = configs.preset("ci")
        super().__init__(cfg, {"base": VideoUNet(cfg.stages[0].unet)})
        self.shuffle, self.calls = shuffle, []

    def generate(self, prompts, *, seed=None, steps=None, guidance=None, **kwargs):
        self.calls.append((len(prompts), seed, guidance))
        prompts = list(reversed(prompts)) if self.shuffle else list(prompts)
        g = torch.Generator().manual_seed(seed)
        return torch.stack([data.render(p, 8, 16, 16, 3.0, generator=g) for p in prompts])


def test_split_prompts():
    assert len(evaluate.split_prompts("heldout")) == len(data.HELDOUT)
    assert evaluate.split_prompts("all", repeats=2) == list(data.CAPTIONS) * 2
    with pytest.raises(ValueError, match="allowed"):
        evaluate.split_prompts("test")


def test_alignment_of_ground_truth_is_perfect_and_batched_with_distinct_seeds():
    fake = RenderingCascade()
    prompts = evaluate.split_prompts("train")[:10]
    result = evaluate.alignment(fake, prompts, guidance=2.0, seed=5, batch_size=4)
    assert result == {"color": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0, "n": 10}
    # generate draws video j of a call from seed + j: batches start at seed + their first index
    assert fake.calls == [(4, 5, 2.0), (4, 9, 2.0), (2, 13, 2.0)]
    fake.calls.clear()  # the largest seed wraps, as generate wraps seed + i
    evaluate.alignment(fake, prompts, seed=evaluate.MAX_SEED, batch_size=4)
    assert [c[1] for c in fake.calls] == [evaluate.MAX_SEED, 3, 7]


def test_alignment_leaves_the_batch_to_generate_unless_given():
    batches = []

    class Recording(RenderingCascade):
        def generate(self, prompts, **kwargs):
            batches.append((len(prompts), kwargs["batch_size"]))
            return super().generate(prompts, **kwargs)

    prompts = evaluate.split_prompts("train")[:10]
    evaluate.alignment(Recording(), prompts, seed=5)
    assert batches == [(10, None)]  # one call: generate splits by default_batch_size
    batches.clear()
    evaluate.guidance_sweep(Recording(), prompts, [0.0], batch_size=4)
    assert batches == [(4, 4), (4, 4), (2, 4)]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="must be None or a positive integer"):
            evaluate.alignment(RenderingCascade(), prompts, batch_size=bad)


def test_alignment_samples_what_one_generate_call_does_whatever_the_batch(monkeypatch):
    """Every video its own seed (seed + i): identical prompts give distinct videos, and the
    scored videos are those of one generate call."""
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    model = Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet).eval()})
    scored = []
    real = evaluate.metrics.caption_alignment
    monkeypatch.setattr(
        evaluate.metrics, "caption_alignment", lambda v, p: scored.append(v) or real(v, p)
    )
    prompts = ["a red circle moving left"] * 4
    evaluate.alignment(model, prompts, steps=2, seed=3, batch_size=2)
    (videos,) = scored
    assert all(not torch.equal(videos[i], videos[i + 1]) for i in range(3))
    torch.testing.assert_close(videos, model.generate(prompts, seed=3, steps=2), atol=1e-5, rtol=0)


def test_sweep_rows_and_a_wrong_pairing_scores_lower():
    prompts = evaluate.split_prompts("heldout")
    rows = evaluate.guidance_sweep(RenderingCascade(shuffle=True), prompts, [0.0, 1.0])
    assert [r["w"] for r in rows] == [0.0, 1.0]
    assert all(r["all"] < 0.5 for r in rows)
    table = evaluate.format_table(rows)
    assert table.splitlines()[0].split()[:5] == ["w", "color", "shape", "motion", "all"]
    with pytest.raises(ValueError, match="guidances is empty"):
        evaluate.guidance_sweep(RenderingCascade(), prompts, [])


def test_sweep_rows_label_per_stage_and_default_settings():
    fake = RenderingCascade()
    rows = evaluate.guidance_sweep(fake, ["a red circle"], [{"base": 2.0}, None])
    assert [r["w"] for r in rows] == [{"base": 2.0}, None]
    assert [c[2] for c in fake.calls] == [{"base": 2.0}, None]
    assert [line.split()[0] for line in evaluate.format_table(rows).splitlines()[1:]] == [
        "base=2",
        "default",
    ]


def test_spread_prompts_are_distinct_and_even_over_every_word():
    """37 i mod 84 gave shapes in runs of four: 8 prompts held no triangle."""
    from collections import Counter

    from ivref import data

    assert evaluate.spread_prompts(None) is None and evaluate.spread_prompts(84) is None
    assert len(set(evaluate.spread_prompts(83) + [None])) == 84
    for n in range(1, 84):
        prompts = evaluate.spread_prompts(n)
        assert len(prompts) == len(set(prompts)) == n
        for i, words in enumerate((data.COLORS, data.SHAPES, data.MOTIONS)):
            counts = Counter(data.parse_caption(p)[i] for p in prompts)
            assert max(counts.values()) - min(counts.values()) <= 1
            assert set(counts) == set(words) or n < len(words)
    assert {data.parse_caption(p)[1] for p in evaluate.spread_prompts(8)} == set(data.SHAPES)


class StagedRenderingCascade(RenderingCascade):
    """Every stage's 'samples' are renders at that stage's size; counts generate calls."""

    def generate(self, prompts, *, seed=None, return_stages=False, **kwargs):
        self.calls.append(len(prompts))
        self.timings = {"base": 1.5}
        videos = [evaluate.render_eval_clips(s, prompts, seed) for s in self.trained_stages]
        return (videos[-1], videos) if return_stages else videos[-1]


def test_cascade_report_scores_given_outputs_without_sampling_again():
    fake = StagedRenderingCascade()
    prompts = evaluate.split_prompts("heldout")
    sampled = evaluate.cascade_report(fake, prompts, seed=2)
    _, outputs = fake.generate(prompts, seed=2, return_stages=True)
    assert fake.calls == [len(prompts)] * 2
    given = evaluate.cascade_report(fake, prompts, seed=2, outputs=outputs)
    assert fake.calls == [len(prompts)] * 2  # no third generate
    assert given == sampled and given["timings_s"] == {"base": 1.5}
    assert given["stages"]["base"]["all"] == 1.0
    with pytest.raises(ValueError, match="one .* batch per trained stage"):
        evaluate.cascade_report(fake, prompts, outputs=outputs * 2)


def test_ivref_evaluate_samples_at_the_steps_it_is_given_and_shows_its_progress(
    monkeypatch, capsys
):
    """`ivref evaluate --cascade --steps 2` sampled every stage at its own steps (the flag went
    unused, silently), and no evaluation showed a progress bar (55 minutes for all captions)."""
    from ivref import cli

    asked = []

    class Recording(StagedRenderingCascade):
        def generate(self, prompts, **kwargs):
            asked.append({k: kwargs.get(k) for k in ("steps", "progress")})
            return super().generate(prompts, **kwargs)

    monkeypatch.setattr(cli, "load_cascade", lambda *args: Recording())
    argv = ["evaluate", "--split", "heldout", "--steps", "2", "--batch-size", "64"]
    assert cli.main([*argv, "--cascade"]) == 0
    assert cli.main([*argv, "--guidance", "0"]) == 0
    assert asked == [{"steps": 2, "progress": True}] * 2
    capsys.readouterr()
    fake = StagedRenderingCascade()
    _, outputs = fake.generate(["a red circle moving left"], seed=0, return_stages=True)
    with pytest.raises(ValueError, match="steps=2 with outputs: the videos are sampled already"):
        evaluate.cascade_report(fake, ["a red circle moving left"], outputs=outputs, steps=2)


def test_cascade_report_ending_at_the_tsr_stage_passes_its_renders():
    """Its motion check used pixels of 64 px, 16-frame videos at every size: renders ending
    at the toy TSR (16 x 16, 16 frames) passed 4%."""
    toy = configs.preset("toy")
    fake = StagedRenderingCascade()
    models = {s.name: VideoUNet(s.unet) for s in toy.stages[:2]}
    Cascade.__init__(fake, toy, models)
    prompts = evaluate.split_prompts("heldout")
    final = evaluate.cascade_report(fake, prompts, seed=0)["final"]
    assert final["motion_progress_renders"] == final["motion_progress"] == 1.0
    assert final["motion_progress_repeated"] == 0.0 and final["motion_progress_blend"] == 1.0
    assert "solid_inbetweens" not in final  # key frames 0.5 px apart at 16 x 16: left out
    text = evaluate.format_cascade_report(
        {"n": 1, "seed": 0, "stages": {}, "timings_s": {}, "final": final}
    )
    assert "cross-fade 100.0%" in text and "in-between" not in text


def test_cascade_report_of_renders_through_the_toy_cascade_tells_a_cross_fade_apart():
    """Renders interpolate: they pass motion progress and have solid in-between frames; frame
    repetition fails the first check, a cross-fade the second."""
    toy = configs.preset("toy")
    fake = StagedRenderingCascade()
    Cascade.__init__(fake, toy, {s.name: VideoUNet(s.unet) for s in toy.stages})
    prompts = evaluate.split_prompts("heldout")
    final = evaluate.cascade_report(fake, prompts, seed=0)["final"]
    assert final["motion_progress"] == final["motion_progress_blend"] == 1.0
    assert final["motion_progress_repeated"] == 0.0
    assert final["solid_inbetweens"] == final["solid_inbetweens_renders"] == 1.0
    assert final["solid_inbetweens_repeated"] == 1.0 and final["solid_inbetweens_blend"] == 0.0
    assert final["interpolates"] == 1.0
    assert abs(final["inbetween_misfit"]) <= metrics.MAX_INBETWEEN_MISFIT
    lines = evaluate.format_cascade_report(
        {"n": 1, "seed": 0, "stages": {}, "timings_s": {}, "final": final}
    ).splitlines()
    assert lines[2] == (
        "  motion progress 100.0% (renders 100.0%, frame repetition 0.0%, cross-fade 100.0%)"
    )
    assert lines[3].startswith(
        "  solid in-between frames 100.0% (renders 100.0%, frame repetition 100.0%, "
        "cross-fade 0.0%); their misfit minus the key frames', mean "
    )
    assert lines[4] == "  interpolates (both) 100.0%"


def test_cascade_report_fails_a_final_stage_that_cross_fades():
    """Outputs whose in-between frames blend their key frames pass motion progress (as the
    metric's docstring warns) and fail the in-between check, so they do not interpolate."""
    toy = configs.preset("toy")
    fake = StagedRenderingCascade()
    Cascade.__init__(fake, toy, {s.name: VideoUNet(s.unet) for s in toy.stages})
    prompts = evaluate.split_prompts("heldout")
    _, outputs = fake.generate(prompts, seed=0, return_stages=True)
    outputs[-1] = evaluate.key_frame_baselines(outputs[-1], 2)[1]
    final = evaluate.cascade_report(fake, prompts, seed=0, outputs=outputs)["final"]
    assert final["motion_progress"] == 1.0
    assert final["solid_inbetweens"] == 0.0 and final["interpolates"] == 0.0
    assert final["inbetween_misfit"] > metrics.MAX_INBETWEEN_MISFIT
    with pytest.raises(ValueError, match="batch_size=4 with outputs"):
        evaluate.cascade_report(fake, prompts, outputs=outputs, batch_size=4)


def test_key_frame_baselines_repeat_and_blend_every_kth_frame():
    video = torch.arange(9.0).reshape(1, 1, 9, 1, 1).expand(1, 3, 9, 2, 2)  # frame j holds j
    repeated, blend = evaluate.key_frame_baselines(video, 4)  # key frames 0, 4, 8
    assert repeated[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 4, 4, 4, 4, 8]
    assert blend[0, 0, :, 0, 0].tolist() == list(range(9))  # a straight line, blended back
    kept = video[:, :, ::2]  # k = 2: the halfway blend, the last key frame held
    after = torch.cat([kept[:, :, 1:], kept[:, :, -1:]], dim=2)
    halfway = torch.stack([kept, 0.5 * (kept + after)], dim=3).flatten(2, 3)[:, :, :9]
    assert torch.equal(evaluate.key_frame_baselines(video, 2)[1], halfway)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_share_gives_every_row_once_in_equal_parts(n, world):
    parts = [distributed.share(n, distributed.Context(r, world)) for r in range(world)]
    assert {len(rows) for rows, _ in parts} == {-(-n // world)}  # equal forwards on every rank
    assert [i for rows, real in parts for i in rows[:real]] == list(range(n))
    assert all(i == n - 1 for rows, real in parts for i in rows[real:])  # padding
    with pytest.raises(ValueError, match="n=0 rows"):
        distributed.share(0, distributed.Context(0, world))


@pytest.mark.parametrize("stage", ["base", "ssr1"])  # ssr1: the ancestral sampler draws per step
def test_stage_samples_are_the_same_split_between_two_ranks(stage, tmp_path, monkeypatch):
    """Each rank's share, sampled alone, equals its rows of one process's samples: every
    video has its own noise. The gather is simulated: each rank keeps its own part."""
    cfg = configs.preset("ci")
    trainer = train.Trainer(cfg, stage, tmp_path, batch_size=2, progress=False)
    prompts = evaluate.split_prompts("train")[:5]
    whole, truth = evaluate.stage_samples(trainer, prompts, steps=3, seed=4)
    s = cfg.stage(stage)
    assert whole.shape == (5, 3, s.num_frames, s.height, s.width)
    assert (truth is None) == (stage == "base")
    monkeypatch.setattr(distributed, "gather", lambda obj, context: [obj])
    parts = []
    for rank in range(2):
        trainer.context = distributed.Context(rank, 2)
        parts.append(evaluate.stage_samples(trainer, prompts, steps=3, seed=4)[0])
    assert [len(p) for p in parts] == [3, 2]  # rank 1 sampled a padding row and dropped it
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-5)
    again = evaluate.stage_samples(trainer, prompts, steps=3, seed=5)[0]
    assert not torch.allclose(again, parts[1])  # the seed matters


def test_psnr_refuses_videos_of_two_shapes():
    """A batch of one broadcast against B videos and returned B numbers."""
    x = torch.zeros(3, 3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"two shapes: \(3, 3, 2, 4, 4\) and \(1, 3, 2, 4, 4\)"):
        evaluate.psnr(x, x[:1])
    assert evaluate.psnr(x, x + 0.5).tolist() == pytest.approx([10 * math.log10(4 / 0.25)] * 3)
