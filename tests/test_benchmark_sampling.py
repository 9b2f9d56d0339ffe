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
    assert sampling.main(["--scale", "ci", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
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
