"""benchmarks/unet_step.py, train_throughput.py and plot.py at --tiny size: well-formed JSON.

Each runs in a subprocess as a user runs it (~20 s of CPU for both; the generous timeout is
for a busy machine). No wall-clock assertions: only that every
expected key is there, with positive numbers.
"""

import json
import os
import subprocess
import sys

import pytest


def _run(repo_root, script, *args):
    env = dict(os.environ, PYTHONPATH=str(repo_root), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(repo_root / "benchmarks" / script), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_unet_step_tiny_writes_ratios(repo_root, tmp_path):
    out = tmp_path / "unet_step.json"
    stdout = _run(repo_root, "unet_step.py", "--tiny", "--device", "cpu", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["benchmark"] == "unet_step" and result["device"] == "cpu"
    models = result["sizes"]["base"]["models"]
    assert "ivref" in models
    for kind, row in models.items():
        for key in ("params", "train_ms", "sample_ms", "peak_mib"):
            assert row[key] > 0, (kind, key)
        if kind != "ivref":  # a peer is within 15% of ivref's size and has its ratios
            assert abs(row["config"]["error"]) <= 0.15
            assert row["params"] == row["config"]["params"]
            for key in ("train_ratio", "sample_ratio", "memory_ratio"):
                assert row[key] > 0
    assert "parameters ivref" in stdout


@pytest.mark.slow
def test_train_throughput_tiny_and_plot(repo_root, tmp_path):
    out = tmp_path / "throughput.json"
    _run(repo_root, "train_throughput.py", "--tiny", "--device", "cpu", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train_throughput" and result["scale"] == "ci"
    assert result["matmul"]["bf16_gflop_per_s"] > 0 and result["matmul"]["fp32_gflop_per_s"] > 0
    assert set(result["stages"]) == {"base", "tsr", "ssr1", "ssr2"}
    for row in result["stages"].values():
        for key in ("steps_per_s", "step_gflop", "gflop_per_s", "fraction_of_bf16_matmul"):
            assert row[key] > 0
    png = tmp_path / "plot.png"
    _run(repo_root, "plot.py", str(out), "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
