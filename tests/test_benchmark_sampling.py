"""benchmarks/sampling.py at ci size: the JSON it writes counts evaluations exactly."""

import json

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
