"""benchmarks/sampling.py and sampling_batch.py at ci size: what their JSON records is checked."""

import json

import pytest

from ivref import configs

from .conftest import load_script


def _load(repo_root):
    return load_script(repo_root / "benchmarks" / "sampling.py")


def test_sampling_benchmark_counts_every_evaluation(repo_root, tmp_path, capsys):
    sampling = _load(repo_root)
    out = tmp_path / "s.json"
    prompts = ["a red circle moving left", "a blue square moving up"]  # one call, as make demo
    argv = ["--scale", "ci", "--repeats", "1", "--prompt", *prompts, "--json", str(out)]
    assert sampling.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == prompts
    cfg = configs.preset("ci")
    for s in cfg.stages:
        teacher = result["teacher"]["stages"][s.name]
        # guided steps run the U-Net twice (conditional + unconditional), unguided once
        per_step = 2 if s.guidance_w > 0 else 1
        assert teacher["evaluations"] == per_step * s.sample_steps
        assert result["distilled"]["stages"][s.name]["evaluations"] == cfg.distill.to_steps
        assert teacher["seconds"] > 0
    total = sum(2 * s.sample_steps for s in cfg.stages) / (len(cfg.stages) * cfg.distill.to_steps)
    assert result["ratio_evaluations"] == total
    assert result["ratio_total"] > 0
    assert "teacher / distilled" in capsys.readouterr().out


def test_sampling_batch_benchmark_times_each_batch_size_on_all_prompts(
    repo_root, tmp_path, capsys, monkeypatch
):
    script = load_script(repo_root / "benchmarks" / "sampling_batch.py")
    calls = []
    real = script.cascade_lib.Cascade.generate

    def spy(self, prompts, **kwargs):
        calls.append((len(prompts), kwargs["batch_size"]))
        return real(self, prompts, **kwargs)

    monkeypatch.setattr(script.cascade_lib.Cascade, "generate", spy)
    out = tmp_path / "b.json"
    argv = ["--scale", "ci", "--prompts", "3", "--batch-sizes", "3", "1", "--json", str(out)]
    assert script.main([*argv, "--repeats", "2"]) == 0
    # a warm-up of one batch per size, then every prompt at each size, a round starting one
    # size later than the last
    assert calls == [(3, 3), (1, 1), (3, 3), (3, 1), (3, 1), (3, 3)]
    result = json.loads(out.read_text())
    assert list(result["rows"]) == ["3", "1"]
    assert result["rows"]["3"]["speed_vs_first"] == 1.0
    first, second = result["rows"]["3"], result["rows"]["1"]
    assert second["speed_vs_first"] == first["wall_s"] / second["wall_s"]
    assert all(row["kernel_s"] >= 0 and row["minor_faults"] >= 0 for row in (first, second))
    assert "| batch size |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompts", "2", "--batch-sizes", "4"], "--batch-sizes 4 is more than --prompts 2"),
        (["--prompts", "4", "--batch-sizes", "2", "2"], "names a size twice"),
        (["--distilled"], "it takes no --checkpoint or --distilled"),
        (["--repeats", "0"], "must be at least 1"),
    ],
)
def test_sampling_batch_benchmark_refuses_rows_it_would_mislabel(repo_root, capsys, argv, message):
    script = load_script(repo_root / "benchmarks" / "sampling_batch.py")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--scale", "ci", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_guidance_detail_benchmark_scores_each_stage_at_each_base_weight(
    repo_root, tmp_path, capsys
):
    from ivref import evaluate, metrics

    script = load_script(repo_root / "benchmarks" / "guidance_detail.py")
    out = tmp_path / "g.json"
    argv = ["--scale", "ci", "--captions", "2", "--weights", "1", "0", "--json", str(out)]
    assert script.main(argv) == 0
    result = json.loads(out.read_text())
    prompts = evaluate.spread_prompts(2)
    assert result["captions"] == prompts and [r["base_w"] for r in result["rows"]] == [1.0, 0.0]
    model = script.random_ci_cascade()  # the same seeded weights: each number recomputed
    for row in result["rows"]:
        _, per_stage = model.generate(
            prompts, seed=0, guidance={"base": row["base_w"]}, return_stages=True
        )
        for stage, videos in zip(model.trained_stages, per_stage, strict=True):
            got = row["stages"][stage.name]
            truth = evaluate.render_eval_clips(stage, prompts, 0)
            assert tuple(got["size"]) == tuple(videos.shape[2:]) == tuple(truth.shape[2:])
            ratio = metrics.laplacian_energy(videos).mean() / metrics.laplacian_energy(truth).mean()
            assert got["detail_vs_renders"] == pytest.approx(float(ratio), rel=1e-5)
            aligned = metrics.caption_alignment(videos, prompts)
            assert all(got[a] == pytest.approx(float(aligned[a])) for a in evaluate.ATTRIBUTES)
    base = [row["stages"]["base"]["detail_vs_renders"] for row in result["rows"]]
    assert base[0] != base[1]  # the weight reached the base stage
    assert "| base w |" in capsys.readouterr().out
