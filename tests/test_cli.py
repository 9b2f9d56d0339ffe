"""The ivref command: train/resume at ci scale, info tables, clear errors for bad input."""

import dataclasses
import json
from pathlib import Path

import pytest

from ivref import cli, configs, train, trainer_checkpoints, unet3d


def test_info_lists_every_stage_with_meta_device_parameter_counts(capsys):
    assert cli.main(["info", "--scale", "ci"]) == 0
    out = capsys.readouterr().out
    cfg = configs.preset("ci")
    rows = cli.info_rows("ci")
    assert [r["stage"] for r in rows] == [s.name for s in cfg.stages]
    assert rows[0]["size"] == "4 x 8 x 8 @ 3"
    for s, row in zip(cfg.stages, rows, strict=True):  # against the real, built model
        assert row["params"] == sum(p.numel() for p in unet3d.VideoUNet(s.unet).parameters())
        assert s.name in out


def test_info_flops_count_the_presets_text_length(capsys):
    """It counted 64 text tokens whatever the preset's (ci 48, toy 16), and printed the ci
    stages as 0.0 GFLOPs."""
    for scale in ("ci", "toy"):
        cfg = configs.preset(scale)
        rows = cli.info_rows(scale, flops=True)
        for s, row in zip(cfg.stages, rows, strict=True):
            length = cfg.text.max_length
            want = unet3d.count_flops(s.unet, s.num_frames, s.height, s.width, length)
            assert row["gflops"] * 1e9 == want
            default = unet3d.count_flops(s.unet, s.num_frames, s.height, s.width)
            assert want != default  # the text length counts: cross-attention reads it
    assert cli.main(["info", "--scale", "ci", "--flops"]) == 0
    out = capsys.readouterr().out
    assert f"{cli.info_rows('ci', flops=True)[0]['gflops']:.4g}" in out and " 0.0\n" not in out


def test_train_then_resume_continues_the_log(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2"]
    assert cli.main([*args, "--steps", "2", "--checkpoint-every", "1"]) == 0
    saved = json.loads((out / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert saved["step"] == 2 and saved["config"]["stages"][0]["train"]["batch_size"] == 2
    assert cli.main([*args, "--steps", "3"]) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert cli.main([*args, "--steps", "3", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_resume_past_a_damaged_config_says_so_once(tmp_path, capsys):
    """The command read the newest config.json twice (its config, its autocast) and the
    trainer a third time: each said 'resume: skipping', so one damaged file gave three
    lines (from every process under torchrun). The trainer's line alone remains."""
    out = tmp_path / "run"
    args = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2"]
    assert cli.main([*args, "--steps", "2", "--checkpoint-every", "1"]) == 0
    (out / "checkpoints" / "step-00000002" / "config.json").write_text("garbage")
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--steps", "3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert err.count("resume: skipping step-00000002: ") == 1, err
    assert "resuming base from step 1" in err


def test_resume_keeps_the_runs_own_config_and_reports_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    fresh = ["train", "--scale", "ci", "--out", str(out), "--lr", "1e-3", "--batch-size", "4"]
    assert cli.main([*fresh, "--steps", "1"]) == 0
    assert cli.main(["train", "--out", str(out), "--steps", "2", "--resume"]) == 0
    cfg = json.loads((out / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert cfg["config"]["name"] == "ci"  # not the default toy preset
    assert cfg["config"]["stages"][0]["train"]["lr"] == 1e-3
    assert cfg["config"]["stages"][0]["train"]["batch_size"] == 4
    capsys.readouterr()
    argv = ["train", "--out", str(out), "--steps", "3", "--resume", "--lr", "5e-4"]
    assert cli.main(argv) == 0
    assert "override lr: 0.001 -> 0.0005" in capsys.readouterr().err
    cfg = json.loads((out / "checkpoints" / "step-00000003" / "config.json").read_text())
    assert cfg["config"]["stages"][0]["train"]["lr"] == 5e-4
    assert cli.main(["train", "--out", str(out), "--steps", "4", "--resume", "--stage", "tsr"]) == 2
    assert "the run trains 'base'" in capsys.readouterr().err
    # the newest's weights damaged: the resume falls back to step 2, trained at lr 1e-3, and
    # goes on at the newest's 5e-4, which no override note said (the warning was silenced)
    ema = out / "checkpoints" / "step-00000003" / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ema.write_bytes(bytes(data))
    with pytest.warns(trainer_checkpoints.ConfigChangedWarning, match=r"lr: 0\.001 -> 0\.0005"):
        assert cli.main(["train", "--out", str(out), "--steps", "4", "--resume"]) == 0
    assert "resume: skipping step-00000003" in capsys.readouterr().err


def test_resume_goes_on_with_the_runs_own_flags_and_reports_those_given(tmp_path, capsys):
    """--resume needs no flags, yet it dropped the run's --checkpoint-every, --keep-checkpoints,
    --eval-every (and what it evaluates) and --on-nan for their defaults, silently: a resumed
    run stopped evaluating and saved every 500 steps. run_flags.json keeps them."""
    from ivref import run_flags

    out = tmp_path / "run"
    flags = ["--checkpoint-every", "1", "--keep-checkpoints", "3", "--eval-every", "2"]
    flags += ["--eval-samples", "2", "--eval-steps", "2", "--on-nan", "skip"]
    fresh = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2", "--steps", "2"]
    assert cli.main([*fresh, *flags]) == 0
    kept = run_flags.read(out)
    assert kept == {
        "checkpoint_every": 1, "keep_checkpoints": 3, "eval_every": 2, "eval_steps": 2,
        "eval_guidance": None, "eval_samples": 2, "val_index": None, "on_nan": "skip",
        "fsdp": False,
    }  # fmt: skip
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--steps", "4", "--resume"]) == 0
    assert "override" not in capsys.readouterr().err
    evaluated = [r["step"] for r in train.read_log(out) if any(k.startswith("eval_") for k in r)]
    assert evaluated == [2, 4]  # every 2 steps, after the resume too
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000004"]  # every step, 3 kept
    assert run_flags.read(out) == kept
    argv = ["train", "--out", str(out), "--steps", "6", "--resume", "--eval-every", "0"]
    assert cli.main(argv) == 0
    assert "resume: override --eval-every: 2 -> 0" in capsys.readouterr().err
    evaluated = [r["step"] for r in train.read_log(out) if any(k.startswith("eval_") for k in r)]
    off = {"eval_every": 0, "eval_steps": None, "eval_samples": None}  # what it evaluated too
    assert evaluated == [2, 4] and run_flags.read(out) == kept | off
    argv = ["train", "--out", str(out), "--steps", "7", "--resume", "--eval-every", "3"]
    argv += ["--checkpoint-every", "default", "--eval-samples", "2", "--eval-samples", "default"]
    assert cli.main(argv) == 0
    assert "override --checkpoint-every: 1 -> the default (500)" in capsys.readouterr().err
    reset = {"eval_every": 3, "eval_samples": None, "checkpoint_every": 500}  # all captions
    assert run_flags.read(out) == kept | off | reset
    argv = ["train", "--out", str(out), "--steps", "8", "--resume", "--eval-every", "2"]
    assert cli.main([*argv, "--eval-samples", "2"]) == 0
    assert cli.main([*argv[:4], "9", "--resume", "--eval-samples", "default"]) == 0
    assert "override --eval-samples: 2 -> the default (all)" in capsys.readouterr().err
    assert run_flags.read(out)["eval_samples"] is None  # the one way back to "all" on a resume
    with pytest.raises(SystemExit) as stop:  # only the word itself
        cli.main([*argv, "--eval-samples", "defaults"])
    assert stop.value.code == 2
    assert "got 'defaults'; or 'default' for the default" in capsys.readouterr().err
    assert cli.main([*argv[:5], "--resume", "--seed", "5"]) == 0  # no step to train: a note
    assert "resume: --seed 5 is not used: a resume continues the run's own" in (
        capsys.readouterr().err
    )
    (out / run_flags.FILE).write_text("{not json")
    assert cli.main(["train", "--out", str(out), "--steps", "7", "--resume"]) == 2
    assert "run_flags.json' is damaged" in capsys.readouterr().err
    (out / run_flags.FILE).unlink()  # a run from before the file: the defaults, as then
    assert cli.main(["train", "--out", str(out), "--steps", "7", "--resume"]) == 0
    assert run_flags.read(out) == run_flags.DEFAULTS


def test_force_starts_afresh_in_a_used_folder(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2"]
    assert cli.main([*args, "--steps", "2"]) == 0
    assert cli.main([*args, "--steps", "1", "--force"]) == 0
    assert [r["step"] for r in train.read_log(out)] == [1]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]


def test_force_with_a_bad_option_keeps_the_old_run(tmp_path, capsys):
    """--force deleted the old run before the text encoder and the trainer's options were
    checked: a bad one lost it (--fsdp in one process, a text cache that is a file)."""
    out = tmp_path / "run"
    args = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2"]
    assert cli.main([*args, "--steps", "2", "--checkpoint-every", "1"]) == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir()), train.read_log(out)
    (tmp_path / "afile").write_text("")
    for bad in (["--fsdp"], ["--text-cache", str(tmp_path / "afile")]):
        assert cli.main([*args, "--steps", "1", "--force", *bad]) == 2
        assert (
            sorted(p.name for p in (out / "checkpoints").iterdir()),
            train.read_log(out),
        ) == before
    assert "--resume continues the run" in _err(
        cli.main([*args, "--steps", "3", "--resume", "--force"]), capsys
    )


def test_resume_says_when_there_is_nothing_to_train_and_how_to_leave_a_run_without_checkpoints(
    tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2"]
    assert cli.main([*args, "--steps", "2"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--steps", "1", "--resume"]) == 0
    assert "the run is at step 2 already, --steps 1: nothing to train" in capsys.readouterr().err
    assert [r["step"] for r in train.read_log(out)] == [1, 2]
    for p in (out / "checkpoints").iterdir():  # a run that stopped before its first save
        p.rename(tmp_path / p.name)
    (out / "checkpoints").rmdir()
    err = _err(cli.main([*args, "--steps", "2", "--resume"]), capsys)
    assert "drop --resume and add --force to start anew there" in err


def test_train_and_distill_keep_out_of_each_others_folders(tmp_path, capsys):
    """A distillation's last phase is what export and generate read from its folder: a train
    run in it would be hidden, and a distillation in a run's folder would hide the run."""
    from ivref import distill

    run, plan = tmp_path / "run", tmp_path / "plan"
    assert cli.main(["train", "--scale", "ci", "--out", str(run), "--steps", "1"]) == 0
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "none"), "--out", str(run)]
    assert "holds an `ivref train` run" in _err(cli.main(argv), capsys)
    (tmp_path / "afile").write_text("")
    argv[-1] = str(tmp_path / "afile")
    assert "is a file; give a folder for the distillation" in _err(cli.main(argv), capsys)
    plan.mkdir()
    (plan / distill.PLAN).write_text("{}")
    argv = ["train", "--scale", "ci", "--out", str(plan), "--steps", "1", "--force"]
    assert "holds a distillation (distill.json)" in _err(cli.main(argv), capsys)
    argv = ["export", str(plan), "--out", str(tmp_path / "c")]
    assert "does not read back as a distillation plan (KeyError" in _err(cli.main(argv), capsys)


def test_export_refuses_two_runs_of_one_stage(tmp_path, capsys):
    args = ["train", "--scale", "ci", "--batch-size", "2", "--steps", "1", "--out"]
    for name in ("a", "b"):
        assert cli.main([*args, str(tmp_path / name)]) == 0
    argv = ["export", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]
    assert "are both stage 'base': give one run per stage" in _err(cli.main(argv), capsys)
    assert not (tmp_path / "c").exists()


def test_a_display_size_whose_frames_would_not_fit_is_refused_before_sampling(
    tmp_path, capsys, monkeypatch
):
    """The cap on --display-size took one video's size, not the grid's: 9 prompts with
    --stages at 4096 px asked for ~30 GB of frames, after sampling them."""
    from ivref.cascade import Cascade

    def never(*args, **kwargs):
        raise AssertionError("sampled")

    monkeypatch.setattr(Cascade, "generate", never)
    prompts = ["a red circle moving left"] * 9
    argv = ["generate", *prompts, "--out", str(tmp_path / "v.mp4"), "--distilled", "--stages"]
    err = _err(cli.main([*argv, "--display-size", "4096"]), capsys)
    assert "the 9 x 4 grid of 64 x 64 videos, upscaled 64x (--display-size 4096), needs" in err
    assert (
        "; give a smaller --display-size (0: native size), or fewer prompts, or no --stages" in err
    )
    assert cli.main(argv) == 1  # the default size fits: on to sampling
    assert "AssertionError: sampled" in capsys.readouterr().err


def test_prompts_after_out_are_named_as_taken_by_it(tmp_path, capsys):
    argv = ["generate", "--out", str(tmp_path / "a.mp4"), "a red circle moving left"]
    err = _err(cli.main(argv), capsys)
    assert "give one or more prompts (--out took 'a red circle moving left': put the prompts" in err


def _err(code, capsys):
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--scale", "ci", "--stage", "nope", "--steps", "1", "--out", "X"], "stages:"),
        (["train", "--scale", "ci", "--steps", "1", "--out", "X", "--resume"], "no checkpoint"),
        (["generate", "a red circle", "--out", "X/v.avi"], "suffix must be one of"),
        (["generate", "a red circle", "--out", "X/v.mp4", "--checkpoint", "X/none"], "not a dir"),
        (["generate", "a red circle", "--out", "X"], "is a folder"),
        (["generate", "a red circle", "--out", "X/v.mp4", "--device", "foo"], "not a device"),
        (["generate", "a red circle", "--out", "X/v.mp4", "--device", "cuda:7"], "cuda"),
        (["generate", "a red circle", "--out", "X/v.mp4", "--device", "meta"], "holds no data"),
        (["train", "--scale", "ci", "--steps", "1", "--out", "X/r", "--device", "foo"], "device"),
    ],
)
def test_bad_input_is_explained(tmp_path, capsys, argv, message):
    argv = [a.replace("X", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob(".lock"))  # refused before a run lock was written anywhere


def test_argument_errors_are_one_line_then_where_the_options_are(capsys):
    for argv, said in [
        (["train", "--scale", "huge", "--steps", "1", "--out", "x"], "invalid choice: 'huge'"),
        (["train", "--steps", "0", "--out", "x"], "expected a positive integer, got 0"),
        (["generate", "a", "--out", "a.gif", "--nope"], "unrecognized arguments: --nope"),
        ([], "required: command"),
    ]:
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        command = " ".join(["ivref", *argv[:1]])
        lines = capsys.readouterr().err.splitlines()
        assert stop.value.code == 2 and len(lines) == 2, lines  # no usage block above it
        assert lines[0].startswith(f"{command}: error: ") and said in lines[0]
        assert lines[1] == f"(`{command} --help` lists the options)"


def test_generate_from_a_train_run_folder(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    gif = tmp_path / "v.gif"
    argv = ["generate", "a red circle moving left", "a blue square moving up", "--out", str(gif)]
    assert cli.main([*argv, "--checkpoint", str(out), "--steps", "2", "--guidance", "0"]) == 0
    from ivref import video

    frames, fps = video.read_video(gif)
    cfg = configs.preset("ci").stages[0]
    assert frames.shape[1] == cfg.num_frames and fps == pytest.approx(cfg.fps, rel=0.05)
    k = 256 // cfg.width  # nearest upscaling to the default --display-size
    assert frames.shape[-1] == k * (2 * cfg.width + 1)  # two videos side by side in a grid
    mp4 = tmp_path / "v.mp4"
    argv = ["generate", "a red circle moving left", "--out", str(gif), str(mp4)]
    assert cli.main([*argv, "--checkpoint", str(out), "--steps", "2", "--display-size", "0"]) == 0
    a, b = video.read_video(gif)[0], video.read_video(mp4)[0]
    assert a.shape == (3, cfg.num_frames, cfg.height, cfg.width) and a.shape == b.shape


def test_export_writes_a_cascade_that_generates_like_the_run(tmp_path, capsys):
    import torch

    from ivref.cascade import Cascade

    run, folder = tmp_path / "run", tmp_path / "cascade"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    assert cli.main(["export", str(run), "--out", str(folder)]) == 0
    assert (folder / "cascade.json").is_file() and (folder / "base.safetensors").is_file()
    from_run, exported = cli.load_cascade(run), Cascade.from_pretrained(folder)
    prompts = ["a red circle moving left"]
    a = from_run.generate(prompts, seed=0, steps=2, guidance=0.0)
    b = exported.generate(prompts, seed=0, steps=2, guidance=0.0)
    assert torch.allclose(a, b, atol=2e-2)  # fp16 weights: close, not equal
    assert cli.main(["export", str(tmp_path / "nothing"), "--out", str(folder)]) == 2
    assert "not an `ivref train` run folder" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--out", str(folder)]) == 2
    assert "already holds a cascade" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--out", str(folder), "--force"]) == 0


def _base_and_tsr_runs_and_base_cascade(tmp_path):
    """One-step ci runs of base and TSR, and tmp_path/c1: a cascade of the base run."""
    runs = {}
    for stage in ("base", "tsr"):
        runs[stage] = tmp_path / stage
        argv = ["train", "--scale", "ci", "--stage", stage, "--out", str(runs[stage])]
        assert cli.main([*argv, "--batch-size", "2", "--steps", "1"]) == 0
    assert cli.main(["export", str(runs["base"]), "--out", str(tmp_path / "c1")]) == 0
    return runs


def _export_tsr_onto_c1(runs, tmp_path):
    """`ivref export` of the TSR run with the base cascade c1, into c2."""
    return [
        "export",
        str(runs["tsr"]),
        "--base",
        str(tmp_path / "c1"),
        "--out",
        str(tmp_path / "c2"),
    ]


def test_a_second_student_joins_the_first_and_never_replaces_it(tmp_path, capsys):
    """Exporting a second distilled stage the way the first was exported (--base the
    teacher, --force) replaced the first student with its teacher's weights."""
    from ivref import distill
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

    runs = _base_and_tsr_runs_and_base_cascade(tmp_path)
    teacher = Cascade.from_pretrained(tmp_path / "c1")
    student_cfg = distill.student_config(teacher.cfg, "base", 8)
    students = tmp_path / "c1" / "distilled"
    Cascade(student_cfg, {"base": VideoUNet(student_cfg.stage("base").unet)}).save_pretrained(
        students
    )
    kept = (students / "base.safetensors").read_bytes()
    argv = ["export", str(runs["tsr"]), "--out", str(students), "--force"]
    err = _err(cli.main([*argv, "--base", str(tmp_path / "c1")]), capsys)
    assert "holds distilled students for ['base'], which this export would replace" in err
    assert f"give --base {students}" in err
    assert (students / "base.safetensors").read_bytes() == kept  # nothing was written
    assert cli.main([*argv, "--base", str(students)]) == 0
    joined = Cascade.from_pretrained(students)
    assert [s.name for s in joined.trained_stages] == ["base", "tsr"]
    assert joined.models["base"].cfg.use_guidance_embedding  # the student stayed
    assert (students / "base.safetensors").read_bytes() == kept


def test_export_records_the_runs_text_probe_and_refuses_runs_of_two_encoders(tmp_path, capsys):
    from ivref import checkpoint, text

    runs = _base_and_tsr_runs_and_base_cascade(tmp_path)
    probe = text.probe(text.build_encoder(configs.preset("ci").text))
    assert json.loads((tmp_path / "c1" / "cascade.json").read_text())["text_probe"] == probe
    meta_path = runs["tsr"] / "checkpoints" / "step-00000001" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["text_probe"] = [-v for v in probe]  # as if trained with another encoder
    meta_path.write_text(json.dumps(meta | {"digest": checkpoint.config_digest(meta)}))
    argv = _export_tsr_onto_c1(runs, tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "/tsr' was trained with another text encoder than --base" in err
    assert not (tmp_path / "c2").exists()
    meta["extra"]["text_probe"] = "damaged"  # as an ivref that saved it so would have left it
    meta_path.write_text(json.dumps(meta | {"digest": checkpoint.config_digest(meta)}))
    assert cli.main(argv) == 2
    assert "its recorded text_probe 'damaged' is damaged" in capsys.readouterr().err
    meta["extra"]["text_probe"] = probe
    meta_path.write_text(json.dumps(meta | {"digest": checkpoint.config_digest(meta)}))
    base = json.loads((tmp_path / "c1" / "cascade.json").read_text())
    del base["text_probe"], base["digest"]  # a cascade saved before probes or digests
    (tmp_path / "c1" / "cascade.json").write_text(json.dumps(base))
    assert cli.main(argv) == 0
    assert "note: --base '" in capsys.readouterr().err  # unchecked, and said so
    assert json.loads((tmp_path / "c2" / "cascade.json").read_text())["text_probe"] == probe


def test_export_joins_sr_runs_to_a_cascade_and_generate_shows_every_stage(tmp_path):
    runs = _base_and_tsr_runs_and_base_cascade(tmp_path)
    argv = _export_tsr_onto_c1(runs, tmp_path)
    assert cli.main(argv) == 0
    from ivref.cascade import Cascade

    joined = Cascade.from_pretrained(tmp_path / "c2")
    assert [s.name for s in joined.trained_stages] == ["base", "tsr"]
    gif = tmp_path / "stages.gif"
    argv = ["generate", "a red circle moving left", "a blue square moving up", "--out", str(gif)]
    argv += [
        "--checkpoint",
        str(tmp_path / "c2"),
        "--steps",
        "2",
        "--stages",
        "--display-size",
        "0",
    ]
    assert cli.main(argv) == 0
    from ivref import video

    frames, _ = video.read_video(gif)
    tsr = configs.preset("ci").stage("tsr")
    assert frames.shape[1:] == (tsr.num_frames, 2 * tsr.height + 1, 2 * tsr.width + 1)
    assert (
        cli.main(["generate", "a red circle", "--out", str(gif), "--checkpoint", str(runs["tsr"])])
        == 2
    )


def test_evaluate_sweeps_guidance_and_writes_json(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    report = tmp_path / "sweep.json"
    argv = ["evaluate", "--checkpoint", str(run), "--split", "heldout", "--steps", "2"]
    assert cli.main([*argv, "--guidance", "0", "1", "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    rows = saved["sweep"]
    assert [r["w"] for r in rows] == [0.0, 1.0]
    assert all(r["n"] == 8 and 0.0 <= r["all"] <= 1.0 for r in rows)
    settings = saved["settings"]  # what it ran with: enough to run it again
    assert settings["checkpoint"] == str(run) and settings["split"] == "heldout"
    assert settings["samples"] == 8 and settings["seed"] == 0 and settings["repeats"] == 1
    assert settings["guidance"] == [0.0, 1.0] and settings["distilled"] is False
    base = configs.preset("ci").stage("base")
    assert settings["stages"] == {
        "base": {"steps": 2, "sampler": base.sampler, "guidance_w": base.guidance_w}
    }
    assert set(saved) == {"settings", "sweep"}
    assert "split 'heldout'" in capsys.readouterr().out
    assert cli.main([*argv, "--split", "test"]) == 2
    # per stage (NAME=W), and without --guidance every stage at its own w once
    assert cli.main([*argv, "--guidance", "base=1", "--json", str(report)]) == 0
    assert [r["w"] for r in json.loads(report.read_text())["sweep"]] == [{"base": 1.0}]
    assert cli.main([*argv, "--json", str(report)]) == 0
    assert [r["w"] for r in json.loads(report.read_text())["sweep"]] == [None]
    argv[-1] = "base=3"  # per stage; and without --steps each stage's own count
    assert cli.main([*argv, "--json", str(report)]) == 0
    steps_run = lambda: json.loads(report.read_text())["settings"]["stages"]["base"]["steps"]  # noqa: E731
    assert steps_run() == 3
    assert cli.main([*argv[:-2], "--json", str(report)]) == 0
    assert steps_run() == base.sample_steps
    assert "default" in capsys.readouterr().out
    assert cli.main([*argv, "--guidance", "tsr9=1"]) == 2
    assert "unknown stages ['tsr9']" in capsys.readouterr().err
    assert cli.main([*argv, "--until", "tsr"]) == 2  # a base run has no tsr to stop at
    assert "--until 'tsr': the trained stages are ['base']" in capsys.readouterr().err


def test_evaluate_cascade_samples_once_at_default_settings(tmp_path, monkeypatch, capsys):
    from ivref.cascade import Cascade

    run = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    calls = []
    original = Cascade.generate

    def counting(self, prompts, **kwargs):
        calls.append(kwargs.get("guidance"))
        batches.append((len(prompts), kwargs.get("batch_size")))
        return original(self, prompts, **kwargs)

    batches = []
    monkeypatch.setattr(Cascade, "generate", counting)
    report = tmp_path / "cascade.json"
    argv = ["evaluate", "--checkpoint", str(run), "--split", "heldout", "--cascade"]
    assert cli.main([*argv, "--json", str(report)]) == 0
    assert calls == [None]  # one run of the cascade, each stage at its own guidance
    saved = json.loads(report.read_text())
    assert set(saved) == {"settings", "cascade"} and set(saved["cascade"]["stages"]) == {"base"}
    assert saved["cascade"]["n"] == 8
    calls.clear()
    assert cli.main([*argv, "--guidance", "0", "--json", str(report)]) == 0
    assert calls == [None, 0.0]  # the report, then the sweep
    assert [r["w"] for r in json.loads(report.read_text())["sweep"]] == [0.0]
    assert batches == [(8, None)] * 3  # the batch left to generate (default_batch_size)
    batches.clear()
    assert cli.main([*argv, "--guidance", "0", "--batch-size", "3"]) == 0
    assert batches == [(8, 3), (3, 3), (3, 3), (2, 3)]  # the report, then the sweep's calls
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--batch-size", "0"])
    assert stop.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_generate_and_export_from_a_run_use_its_last_complete_checkpoint(tmp_path, capsys):
    import torch

    from ivref import checkpoint
    from ivref.cascade import Cascade

    run = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "2"]
    assert cli.main([*argv, "--checkpoint-every", "1"]) == 0
    first, newest = checkpoint.run_checkpoints(run)
    ema = newest / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:-100])  # a truncated copy
    capsys.readouterr()
    prompts = ["a red circle moving left"]
    from_run = cli.load_cascade(run).generate(prompts, seed=0, steps=2)
    assert "skipping damaged step-00000002" in capsys.readouterr().err
    from_first = cli.load_cascade(first).generate(prompts, seed=0, steps=2)
    assert torch.equal(from_run, from_first)
    assert cli.main(["export", str(run), "--out", str(tmp_path / "c")]) == 0
    assert f"base: {str(run)!r} at step 1 (step-00000001)" in capsys.readouterr().err
    exported = Cascade.from_pretrained(tmp_path / "c").generate(prompts, seed=0, steps=2)
    torch.testing.assert_close(exported, from_first, atol=2e-2, rtol=0)  # fp16 weights


def test_export_names_a_run_still_training_and_the_step_it_takes(tmp_path, capsys):
    import subprocess
    import sys

    from tests.test_files import HOLD

    run = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    assert cli.main(["export", str(run), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert f"base: {str(run)!r} at step 1 (step-00000001)" in err and "still training" not in err
    trainer = subprocess.Popen(  # a trainer at work in the run folder holds its lock
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout.readline().strip() == "held"
        assert cli.main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    finally:
        trainer.kill()
        trainer.wait()
    err = capsys.readouterr().err
    assert f"{str(run)!r} is still training (in use by pid {trainer.pid})" in err
    assert "its newest checkpoint, step 1, is exported" in err
    young = tmp_path / "young"  # a run at work before its first save: named as such
    young.mkdir()
    (young / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    trainer = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(young)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout.readline().strip() == "held"
        assert cli.main(["export", str(young), "--out", str(tmp_path / "c")]) == 2
    finally:
        trainer.kill()
        trainer.wait()
    err = " ".join(capsys.readouterr().err.split())
    assert f"with no checkpoint yet (in use by pid {trainer.pid}: still training)" in err


def test_export_refuses_nan_weights_and_writes_nothing(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from ivref import checkpoint

    run = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    (folder,) = checkpoint.run_checkpoints(run)
    ema = folder / "ema.safetensors"  # as an ivref that saved NaN weights would have left it
    save_file({k: v * float("nan") for k, v in load_file(ema).items()}, ema)
    meta = json.loads((folder / "config.json").read_text())
    meta["manifest"] = checkpoint.file_manifest(folder, list(meta["manifest"]))
    meta["digest"] = checkpoint.config_digest(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "c")]) == 2
    assert "non-finite values (NaN or inf)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_export_reports_and_picks_where_a_runs_sampling_settings_come_from(
    tmp_path, capsys, monkeypatch
):
    import dataclasses

    from ivref.cascade import Cascade

    runs = _base_and_tsr_runs_and_base_cascade(tmp_path)
    assert "note:" not in capsys.readouterr().err  # a fresh run matches its preset
    base = Cascade.from_pretrained(tmp_path / "c1")  # a cascade tuned since the runs started
    tuned = dataclasses.replace(base.cfg.stage("tsr"), guidance_w=2.5, sample_steps=5)
    stages = tuple(tuned if s.name == "tsr" else s for s in base.cfg.stages)
    base.cfg = dataclasses.replace(base.cfg, stages=stages)
    base.save_pretrained(tmp_path / "c1", overwrite=True)
    run_tsr = configs.ci().stage("tsr")

    def export(out, *extra):
        argv = ["export", str(runs["tsr"]), "--base", str(tmp_path / "c1"), "--out", str(out)]
        assert cli.main([*argv, *extra]) == 0
        return Cascade.from_pretrained(out).cfg.stage("tsr"), capsys.readouterr().err

    kept, err = export(tmp_path / "run")  # default: the run's own settings, differences named
    assert (kept.guidance_w, kept.sample_steps) == (run_tsr.guidance_w, run_tsr.sample_steps)
    assert "differ from the base's" in err and "sample_steps" in err and "guidance_w" in err
    assert "--sampling base" in err and "preset's" not in err
    taken, err = export(tmp_path / "from_base", "--sampling", "base")  # not the base run's
    assert (taken.guidance_w, taken.sample_steps) == (2.5, 5)
    assert taken.unet == run_tsr.unet  # the model is still the run's
    assert "differ from the preset's" in err  # the base's values are not the preset's

    changed = dataclasses.replace(configs.ci().stage("tsr"), thresholding="static")
    preset = configs.ci()
    preset = dataclasses.replace(
        preset, stages=tuple(changed if s.name == "tsr" else s for s in preset.stages)
    )
    monkeypatch.setattr(configs, "preset", lambda name: preset)  # the preset changed since
    taken, err = export(tmp_path / "preset", "--sampling", "preset")
    assert taken.thresholding == "static" and taken.guidance_w == run_tsr.guidance_w
    assert (
        cli.main(["export", str(runs["tsr"]), "--out", str(tmp_path / "x"), "--sampling", "base"])
        == 2
    )
    assert "give --base" in capsys.readouterr().err


def test_a_t5_cascade_takes_its_encoder_from_text_encoder(tmp_path, capsys):
    import dataclasses

    from ivref import text
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

    ci = configs.preset("ci")
    t5 = text.build_encoder(ci.text)  # a tiny T5, saved as a user's local checkpoint
    t5.model.save_pretrained(tmp_path / "t5")
    t5.tokenizer.save_pretrained(tmp_path / "t5")
    cfg = dataclasses.replace(ci, text=dataclasses.replace(ci.text, encoder="t5"))
    Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet)}).save_pretrained(tmp_path / "c")
    argv = ["generate", "a red circle", "--checkpoint", str(tmp_path / "c"), "--steps", "1"]
    argv += ["--out", str(tmp_path / "v.gif")]
    assert cli.main(argv) == 2
    assert "pass --text-encoder PATH" in capsys.readouterr().err
    assert cli.main([*argv, "--text-encoder", str(tmp_path / "t5")]) == 0
    assert (tmp_path / "v.gif").is_file()


def test_generate_and_evaluate_take_the_distilled_variant(tmp_path, capsys):
    """--distilled loads the folder's distilled/ cascade: its stage samples its own N steps in
    one pass each; a folder without one, or a train run, gets a clear error."""
    import torch

    from ivref import distill
    from ivref.cascade import Cascade

    cfg = configs.preset("ci")
    torch.manual_seed(0)
    base = cfg.stages[0]
    teacher = Cascade(cfg, {base.name: unet3d.VideoUNet(base.unet).eval()})
    teacher.save_pretrained(tmp_path / "c")
    argv = ["evaluate", "--checkpoint", str(tmp_path / "c"), "--split", "heldout", "--distilled"]
    assert cli.main(argv) == 2
    assert "distilled" in capsys.readouterr().err
    teacher.save_pretrained(tmp_path / "c" / "distilled")  # a teacher where students belong
    assert cli.main(argv) == 2  # it sampled the teacher at its own steps, without a word
    err = capsys.readouterr().err
    assert "holds no distilled student (no stage embeds w)" in err and "distilled --force`" in err
    student_cfg = distill.student_config(cfg, base.name, 2)
    student = distill.with_guidance_embedding(teacher.models[base.name]).eval()
    Cascade(student_cfg, {base.name: student}).save_pretrained(
        tmp_path / "c" / "distilled", overwrite=True
    )
    loaded = cli.load_cascade(tmp_path / "c", distilled=True)
    assert loaded.cfg.stage("base").sample_steps == 2
    assert loaded.models["base"].cfg.use_guidance_embedding
    rows = []
    loaded.models["base"].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    loaded.generate(["a red circle moving left"], seed=0)
    assert rows == [1, 1]  # 2 steps, one pass each at the stage's w = 1 (guided: 2 x 2 rows)
    report = tmp_path / "r.json"
    assert cli.main([*argv, "--guidance", "1", "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert saved["sweep"][0]["n"] == 8 and saved["settings"]["distilled"] is True
    out = tmp_path / "v.gif"
    assert cli.main(["generate", "a red circle moving left", "--out", str(out), "--distilled",
                     "--checkpoint", str(tmp_path / "c")]) == 0  # fmt: skip
    assert out.stat().st_size > 0
    run = tmp_path / "run"
    assert cli.main(["train", "--scale", "ci", "--out", str(run), "--batch-size", "2",
                     "--steps", "1"]) == 0  # fmt: skip
    argv = ["generate", "a red circle", "--out", str(out), "--distilled", "--checkpoint", str(run)]
    assert cli.main(argv) == 2
    assert "--distilled takes a cascade folder" in capsys.readouterr().err
    # students of the first stages only: the video stopped at the base's size, unsaid
    tsr = cfg.stages[1]
    models = {base.name: teacher.models[base.name], tsr.name: unet3d.VideoUNet(tsr.unet).eval()}
    Cascade(cfg, models).save_pretrained(tmp_path / "c", overwrite=True)  # keeps distilled/
    argv[-1] = str(tmp_path / "c")
    assert cli.main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds students of ['base'] only, while the cascade goes on to ['tsr']" in err
    assert f"ivref distill --stage tsr --from {tmp_path / 'c'}" in err
    until = ["evaluate", "--checkpoint", str(tmp_path / "c"), "--split", "heldout"]
    assert cli.main([*until, "--distilled", "--until", "base", "--guidance", "1"]) == 0


def test_a_command_refused_up_front_makes_no_folder(tmp_path, capsys):
    """A typo must not leave an empty run folder (with its lock) that later commands misread."""
    out = tmp_path / "r"
    train = ["train", "--scale", "ci", "--steps", "1", "--out", str(out)]
    assert cli.main([*train, "--stage", "nope"]) == 2
    assert cli.main([*train, "--resume"]) == 2
    assert "does not exist; drop --resume" in capsys.readouterr().err
    assert cli.main(["distill", "--stage", "base", "--out", str(out), "--to-steps", "6"]) == 2
    assert not out.exists()


def test_until_keeps_the_trained_stages_up_to_the_one_named():
    from ivref.cascade import Cascade

    cfg = configs.preset("ci")
    models = {s.name: unet3d.VideoUNet(s.unet) for s in cfg.stages[:3]}
    whole = Cascade(cfg, models)
    upto = cli._until(whole, "tsr")
    assert [s.name for s in upto.trained_stages] == ["base", "tsr"]
    assert upto.models["tsr"] is models["tsr"] and upto.encoder is whole.encoder


def test_a_checkpoint_pruned_while_it_is_read_is_read_again_from_the_new_list(
    tmp_path, monkeypatch, capsys
):
    """Exporting a run that is still training: its trainer may prune the checkpoint between
    verify and load. That read is retried on the checkpoints there are now, not reported as
    damage."""
    import shutil

    from ivref import checkpoint

    run = tmp_path / "run"
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "2"]
    assert cli.main([*argv, "--checkpoint-every", "1"]) == 0
    real, pruned = checkpoint.load_weights, []

    def pruned_first(path, model):
        if not pruned:  # the trainer removes it now
            pruned.append(path.parent.name)
            shutil.rmtree(path.parent)
        return real(path, model)

    monkeypatch.setattr(checkpoint, "load_weights", pruned_first)
    cfg, stage, model = cli.run_stage(run)
    assert pruned == ["step-00000002"] and stage == "base"
    assert "damaged" not in capsys.readouterr().err


def test_every_ivref_command_in_the_readme_parses(repo_root):
    """The README's command lines are what users paste: a renamed or mistyped flag there
    fails here (argparse only; nothing runs)."""
    import re
    import shlex

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", (repo_root / "README.md").read_text(), re.S):
        lines += [ln.strip() for ln in block.splitlines()]
    commands = [shlex.split(ln, comments=True)[1:] for ln in lines if ln.startswith("ivref ")]
    assert len(commands) >= 10  # the command-line section is found
    parser = cli._parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.command == argv[0]


def test_export_names_the_config_fields_that_differ_and_not_a_t5_path():
    """Runs on the same T5 from two folders could not be joined (the path counted), and the
    refusal named no field."""
    from ivref import export

    t5 = configs.TextConfig(encoder="t5", dim=64, max_length=16, path="/models/t5")
    moved = dataclasses.replace(t5, path="/scratch/copy-of/t5")
    assert export._differences(t5, moved) == ""
    unchecked = "path: run '/models/t5', cascade '/scratch/copy-of/t5'"  # a part has no probe
    assert export._differences(t5, moved, with_path=True) == unchecked
    longer = dataclasses.replace(moved, max_length=32)
    assert export._differences(longer, t5) == "max_length: run 32, cascade 16"


def test_a_student_keeps_its_own_sampling_and_says_so_when_another_is_asked(capsys):
    """`--sampling base/preset` was ignored silently for a distilled student."""
    from ivref import distill, export

    teacher = configs.ci()
    student = distill.student_config(teacher, "base", 8)
    own = student.stage("base")
    assert own.guidance_w_max is not None and own.sample_steps == 8
    run = Path("runs") / "distill-base"
    assert export.export_sampling(run, student, "base", teacher, "run") == own
    assert capsys.readouterr().err == ""
    for source in ("base", "preset"):
        assert export.export_sampling(run, student, "base", teacher, source) == own
        err = capsys.readouterr().err
        assert f"{str(run)!r} is a distilled student of stage 'base'" in err
        assert f"--sampling {source} applies to undistilled stages only" in err


def test_a_commands_warnings_are_one_line_each_without_ivrefs_source(repo_root):
    """Python printed a warning as ivref's file and line, then that line's source (two lines
    about ivref's code); the commands print what the warning says, after their name. With
    IVREF_DEBUG=1, Python's own format comes back."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings; from ivref import errors\n"
        "def command(args):\n"
        "    warnings.warn_explicit('skipping x.mp4: file not found', UserWarning,\n"
        "                           errors.__file__, 7)  # as if from ivref's own code\n"
        "    warnings.warn('old flag', FutureWarning)  # from elsewhere: its place is kept\n"
        "    return 0\n"
        "status = errors.run_command('train', command, None)\n"
        "assert warnings.formatwarning is not None\n"
        "print(status, warnings.formatwarning.__module__)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    env.pop("IVREF_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stderr == (
        "ivref train: warning: skipping x.mp4: file not found\n"
        "ivref train: FutureWarning from <string>:5: old flag\n"
    )
    assert done.stdout == "0 warnings\n"  # Python's format again after the command
    env["IVREF_DEBUG"] = "1"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "errors.py:7: UserWarning: skipping x.mp4: file not found\n" in done.stderr


def test_help_is_plain_text_and_names_defaults(capsys):
    """`ivref --help` showed the module doc's reST markup (``train``), and options with a
    default (--seed 0, --display-size 256) did not say it."""
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "The ivref command: train, distill" in top
    assert '    ivref generate "a red circle moving left" --out out.mp4' in top  # lines kept
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "--seed SEED video i uses seed + i (default: 0)" in text
    assert "0: off (default: 256)" in text
    assert "(default: each stage's own)" in text and "own) (default" not in text  # said once
    assert "--distilled use distilled weights --device" in text  # a flag: no default shown


def test_python_dash_m_ivref_is_the_ivref_command(tmp_path, capsys):
    """Before, `python -m ivref` failed: no ivref.__main__ (the README names `ivref` only)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ivref", "info", "--scale", "ci"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert cli.main(["info", "--scale", "ci"]) == 0
    assert done.stdout == capsys.readouterr().out  # the same command, the same table
    bad = subprocess.run([sys.executable, "-m", "ivref", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr


def test_a_reader_that_goes_away_ends_a_command_quietly_as_sigpipe_would(tmp_path):
    """`ivref info | head -1` printed 'ivref info: error: Broken pipe' and exit status 1."""
    import subprocess
    import sys

    code = (
        "import sys; from ivref import errors\n"
        "sys.exit(errors.run_command('info', lambda a: [print('x' * 999) for _ in range(9999)]"
        " and 0, None))"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert reader.stdout.read(10) == b"x" * 10
    reader.stdout.close()  # as head does after its line
    status = reader.wait(timeout=60)
    assert (status, reader.stderr.read()) == (141, b"")


def test_sigterm_outside_training_removes_what_a_command_was_writing(tmp_path, capsys):
    """SIGTERM killed `ivref generate` while it wrote its video, leaving the hidden temporary
    file; a Ctrl-C that killed ffmpeg first was reported as 'error: RuntimeError: Error
    writing' naming that file, with exit status 1."""
    import os
    import signal

    from ivref import errors, files

    before = signal.getsignal(signal.SIGTERM)

    def writer(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a video")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the writer")

    def generate(args):
        files.atomic_write(tmp_path / "v.gif", writer, suffix=".gif")
        return 0

    assert errors.run_command("generate", generate, None) == 143
    assert capsys.readouterr().err == "ivref generate: stopped by SIGTERM\n"
    assert list(tmp_path.iterdir()) == []  # no .v.gif.*.gif left

    def writer_whose_ffmpeg_died(tmp):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # mediapy saw its ffmpeg die of the same Ctrl-C first
            raise RuntimeError(f"Error writing {tmp!r}") from None

    def interrupted(args):
        files.atomic_write(tmp_path / "v.gif", writer_whose_ffmpeg_died, suffix=".gif")
        return 0

    assert errors.run_command("generate", interrupted, None) == 130
    assert capsys.readouterr().err == "ivref generate: interrupted\n"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # put back


def test_info_describes_a_cascade_folder_as_it_samples(tmp_path, capsys):
    """`ivref info` knew the presets alone: what a shipped or exported cascade samples with
    (steps, sampler, guidance, the weights a student takes) could not be seen."""
    assert cli.main(["info", "--distilled"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(preset 'toy'): text encoder minilm (384-d), distilled")
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert list(rows) == ["base", "tsr", "ssr1", "ssr2"]
    assert rows["base"][10:12] == ["8", "stochastic"] and "(w <= 0.5)" in out[2]
    assert "(w = 0 only)" in out[3]  # the SR students learnt w = 0 alone
    assert cli.main(["info", "--checkpoint", "data/toy"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "distilled" not in out[0] and out[2].split()[10:12] == ["64", "ddim"]
    assert cli.main(["info", "--checkpoint", str(tmp_path)]) == 2
    assert "cascade.json not found" in capsys.readouterr().err
    assert cli.main(["info", "--scale", "ci", "--distilled"]) == 2
    assert "give one or the other" in capsys.readouterr().err


def test_generate_samples_up_to_a_stage_at_steps_per_stage(tmp_path, capsys, monkeypatch):
    """`ivref generate` had no --until (evaluate had) and one --steps for every stage; the
    library takes both (Cascade.generate(steps={name: n}), a cascade of the first stages)."""
    from ivref.cascade import Cascade

    asked = []
    real = Cascade.generate
    monkeypatch.setattr(
        Cascade, "generate", lambda self, *a, **k: asked.append(k["steps"]) or real(self, *a, **k)
    )
    out = tmp_path / "v.gif"
    argv = ["generate", "a red circle moving left", "--distilled", "--out", str(out)]
    assert cli.main([*argv, "--until", "tsr", "--steps", "base=2,tsr=1"]) == 0
    assert asked == [{"base": 2, "tsr": 1}] and out.is_file()
    err = capsys.readouterr().err
    assert "((1, 3, 16, 16, 16) at 6 fps)" in err  # the TSR stage's video
    assert "ssr1:" not in err and "tsr:" in err  # the timings of the stages sampled
    assert cli.main([*argv, "--until", "base", "--steps", "tsr=2"]) == 2
    assert "--steps names ['tsr'], which --until base leaves out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv, "--steps", "base=1,"])
    assert "an empty entry between commas" in capsys.readouterr().err


def test_train_resume_takes_a_moved_t5_folder_and_records_it_whole(tmp_path, monkeypatch, capsys):
    """A run whose T5 folder moved resumes with --text-encoder NEW (the path was part of
    'the model', and the resume refused), and the folder is recorded as an absolute path,
    so its cascade loads from any working folder."""
    import dataclasses
    import json
    import shutil

    from ivref import checkpoint, text, train

    ci = configs.preset("ci")
    encoder = text.build_encoder(ci.text)  # a tiny T5, saved as a user's checkpoint
    encoder.model.save_pretrained(tmp_path / "t5")
    encoder.tokenizer.save_pretrained(tmp_path / "t5")
    cfg = dataclasses.replace(
        ci, text=dataclasses.replace(ci.text, encoder="t5", path=str(tmp_path / "t5"))
    )
    run = train.Trainer(cfg, "base", tmp_path / "run", batch_size=2, progress=False)
    run.checkpoint_every = 1
    run.fit(1)
    shutil.move(tmp_path / "t5", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--out", "run", "--steps", "2", "--resume", "--text-encoder", "moved"]
    assert cli.main(argv) == 0
    said = capsys.readouterr().err
    assert f"resume: override text.path: {tmp_path / 't5'} -> {tmp_path / 'moved'}" in said
    newest = checkpoint.run_checkpoints(tmp_path / "run")[-1]
    saved = json.loads((newest / checkpoint.CONFIG).read_text())["config"]["text"]["path"]
    assert saved == str(tmp_path / "moved")


def test_generate_notes_a_student_sampled_at_other_steps_than_it_learnt(tmp_path, capsys):
    """--steps 16 on a student distilled to 8 steps ran silently."""
    from ivref import distill
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

    student = distill.student_config(configs.ci(), "base", 8)
    Cascade(student, {"base": VideoUNet(student.stage("base").unet)}).save_pretrained(
        tmp_path / "s"
    )
    argv = ["generate", "a red circle moving left", "--checkpoint", str(tmp_path / "s")]
    argv += ["--out", str(tmp_path / "v.gif")]
    for steps, said in ((["--steps", "2"], True), (["--steps", "base=8"], False), ([], False)):
        assert cli.main([*argv, *steps]) == 0
        err = capsys.readouterr().err
        note = "note: stage 'base' is a student distilled to sample in 8 steps; --steps "
        note += "samples it in 2"
        assert (note in err) is said, err
