"""benchmarks/distill_fidelity.py at ci size: what it writes is consistent and complete."""

import json

import pytest

from ivref import configs

from .conftest import load_script


def _load(repo_root):
    return load_script(repo_root / "benchmarks" / "distill_fidelity.py")


def test_fidelity_benchmark_reports_every_chosen_stage(repo_root, tmp_path, capsys):
    bench = _load(repo_root)
    out = tmp_path / "f.json"
    argv = ["--scale", "ci", "--prompts", "2", "--stages", "base", "ssr1", "--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    cfg = configs.preset("ci")
    assert list(result["stages"]) == ["base", "ssr1"] and len(result["prompts"]) == 2
    for name, r in result["stages"].items():
        assert r["steps"] == cfg.distill.to_steps
        assert r["reference_steps"] == 2 * cfg.stage(name).sample_steps
        db = r["psnr_db"]
        assert r["gain_db"] == pytest.approx(db["student"] - db["teacher_at_n"])
        assert all(0 < v < 100 for v in db.values())
    assert "| ssr1 | 4 |" in capsys.readouterr().out
    assert [r["guidance_w"] for r in result["stages"].values()] == [
        cfg.stage(n).guidance_w for n in ("base", "ssr1")
    ]  # each teacher's own w
    assert bench.main([*argv[:-2], "--stages", "base", "--guidance", "0.5"]) == 0
    assert "| base | 4 | 0.5 |" in capsys.readouterr().out


def test_fidelity_benchmark_refuses_a_stage_that_is_not_distilled(repo_root):
    bench = _load(repo_root)
    with pytest.raises(SystemExit):
        bench.main(["--scale", "ci", "--stages", "nope"])


def test_fidelity_benchmark_scores_every_phase_of_a_run(repo_root, tmp_path, capsys):
    import torch

    from ivref import distill
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

    bench = _load(repo_root)
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    base = cfg.stage("base")
    Cascade(cfg, {"base": VideoUNet(base.unet).eval()}).save_pretrained(tmp_path / "c")
    teacher = Cascade.from_pretrained(tmp_path / "c")
    distill.distill_stage(
        teacher, "base", tmp_path / "d", to_steps=8, guided_steps=2, halving_steps=2,
        batch_size=2, progress=False,
    )  # fmt: skip
    out = tmp_path / "p.json"
    argv = ["--phases", str(tmp_path / "d"), "--checkpoint", str(tmp_path / "c")]
    assert bench.main([*argv, "--prompts", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["stages"]
    assert [(k, r["steps"]) for k, r in rows.items()] == [
        ("base guided", base.sample_steps),
        ("base halve-0016-0008", 8),
    ]
    assert "| base guided | 16 |" in capsys.readouterr().out
