"""Data-parallel training under torchrun: two CPU processes (gloo) against a re-derivation,
and sharded (FSDP) training against data-parallel.

The two-process runs are real ``torchrun`` launches of ``ivref train`` at ci scale (~10 s
each). What they must equal is worked out here in one process, from the library's parts:
each rank's batch and noise from its own streams, the gradients averaged, clipped, one AdamW
step, the EMA.
"""

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ivref import (
    checkpoint,
    configs,
    distill,
    distributed,
    errors,
    evaluate,
    objectives,
    run_flags,
    text,
    train,
)
from ivref.cascade import Cascade
from ivref.unet3d import VideoUNet

STEPS, BATCH, WORLD = 3, 4, 2
ARGS = ["--scale", "ci", "--stage", "base", "--batch-size", str(BATCH), "--no-bf16"]
EVAL_STEP = STEPS - 1  # a step trains after it: under FSDP the next step crashed once
EVAL = ["--eval-every", str(EVAL_STEP), "--eval-samples", "5", "--eval-steps", "2"]  # 3 + 2


def _torchrun(*args, timeout=180, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD}", "-m", "ivref.train", *ARGS, *args]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-process run of STEPS steps, a checkpoint after every step."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    _torchrun("--steps", str(STEPS), "--out", str(out), "--checkpoint-every", "1",
              "--keep-checkpoints", str(STEPS), *EVAL)  # fmt: skip
    return out


def _state(run_dir, step, part):
    return load_file(run_dir / checkpoint.CHECKPOINTS / f"step-{step:08d}" / f"{part}.safetensors")


def _config():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    cfg, stage, _ = train.build_config(parser.parse_args([*ARGS, "--steps", "1", "--out", "x"]))
    return cfg, stage


def test_two_processes_take_the_averaged_gradient_step(run, tmp_path):
    """Rank r's loss on its own B/2 samples; the mean of both ranks' gradients, clipped;
    AdamW; EMA: the checkpoints of the 2-process run, step by step."""
    cfg, stage = _config()
    train_cfg = cfg.stage(stage).train
    encoder = text.build_encoder(cfg.text)
    ranks = [
        train.Trainer(
            cfg,
            stage,
            tmp_path / f"rank{r}",
            text_encoder=encoder,
            progress=False,
            batch_size=BATCH // WORLD,
            seed=distributed.stream_seed(0, r),
        )
        for r in range(WORLD)
    ]  # fmt: skip; their objectives and generators are rank r's streams
    model = train.Trainer(cfg, stage, tmp_path / "m", text_encoder=encoder, progress=False).model
    ema = copy.deepcopy(model)
    params = list(model.parameters())
    adamw = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    log = train.read_log(run)
    captions = []
    for step in range(STEPS):
        for group in adamw.param_groups:
            group["lr"] = train.learning_rate(step, train_cfg, STEPS)
        losses, grads = [], []
        for r in ranks:
            batch = r.objective.sample(BATCH // WORLD)
            captions.append(batch.captions)
            loss = r.objective.loss(model.train(), batch, r.generator, torch.device("cpu"))
            grads.append(torch.autograd.grad(loss, params))
            losses.append(loss.item())
        for p, *g in zip(params, *grads, strict=True):
            p.grad = sum(g) / WORLD
        norm = torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        adamw.step()
        train.ema_update(ema, model, train.ema_decay_at(step, train_cfg.ema_decay))
        assert log[step]["loss"] == pytest.approx(sum(losses) / WORLD, rel=1e-5)
        assert log[step]["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
        for part, module in (("model", model), ("ema", ema)):
            saved = _state(run, step + 1, part)
            for name, value in module.state_dict().items():
                torch.testing.assert_close(saved[name], value, rtol=1e-5, atol=1e-6)
    assert captions[0] != captions[1]  # the ranks drew different samples


def test_resume_with_two_processes_continues_exactly(run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / checkpoint.CHECKPOINTS / f"step-{STEPS:08d}")
    _torchrun("--steps", str(STEPS), "--out", str(again), "--resume")
    for part in ("model", "ema", "optimizer"):
        straight, resumed = _state(run, STEPS, part), _state(again, STEPS, part)
        assert straight.keys() == resumed.keys()
        for name, value in straight.items():
            assert torch.equal(value, resumed[name]), (part, name)
    assert train.read_log(again) == train.read_log(run)[:-1] + train.read_log(again)[-1:]
    assert train.read_log(again)[-1]["loss"] == train.read_log(run)[-1]["loss"]


@pytest.mark.parametrize("lagging", ["0", "1"])
def test_every_rank_resumes_from_the_checkpoint_rank_0_picks(run, tmp_path, repo_root, lagging):
    """Each rank listed the checkpoints itself: one whose listing lagged (a shared file
    system) resumed an older step than the others, and the replicas trained apart unseen;
    then rank 0 picked, but each rank still set aside "newer" checkpoints from its own
    listing, and the ranks' collectives no longer paired."""
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / checkpoint.CHECKPOINTS / f"step-{STEPS:08d}")
    lagging = tmp_path / "lagging.py"
    lagging.write_text(
        "import os, sys\n"
        "from ivref import checkpoint, train\n"
        f"if os.environ['RANK'] == '{lagging}':  # it does not see the newest checkpoint yet\n"
        "    listed = checkpoint.run_checkpoints\n"
        "    checkpoint.run_checkpoints = lambda run: listed(run)[:-1]\n"
        "sys.exit(train.main())\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={WORLD}", str(lagging), *ARGS, "--steps", str(STEPS),
               "--out", str(again), "--resume"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    for part in ("model", "ema", "optimizer"):
        straight, resumed = _state(run, STEPS, part), _state(again, STEPS, part)
        for name, value in straight.items():
            assert torch.equal(value, resumed[name]), (part, name)


def test_two_processes_draw_their_own_clips_from_a_folder_of_videos(tmp_path):
    """Every rank seeded its folder alike would train on the same clips, N times over."""
    from tests.test_train_videos import _folder

    videos, out = _folder(tmp_path / "videos"), tmp_path / "run"
    _torchrun("--steps", "1", "--out", str(out), "--videos", str(videos))
    rng = _state(out, 1, "rng")
    assert not torch.equal(rng["data"], rng["rank1/data"])  # two streams
    assert torch.equal(rng["data.digest"], rng["rank1/data.digest"])  # of one folder
    assert rng["data.items"].shape == rng["rank1/data.items"].shape == (3, 2)


def test_one_process_refuses_to_resume_a_two_process_run(run, tmp_path, capsys):
    again = tmp_path / "again"
    shutil.copytree(run, again)
    status = train.main([*ARGS, "--steps", str(STEPS + 1), "--out", str(again), "--resume"])
    assert status == 2
    err = capsys.readouterr().err
    assert "trained by 2 process(es) and is resumed by 1" in err
    assert "resume it with 2 processes in all (torchrun --nproc_per_node=2 on one node)" in err
    assert "add --new-streams" in err


def test_new_streams_resume_the_weights_exactly_with_another_process_count(run, tmp_path):
    """One process resumes the 2-process run with new streams: weights, EMA, optimizer and
    step are the checkpoint's; the streams are seeded from the checkpoint, alike on every
    resume and unlike the run's own."""
    cfg, stage = _config()
    resumed = []
    for name in ("a", "b"):
        shutil.copytree(run, tmp_path / name)
        trainer = train.Trainer(cfg, stage, tmp_path / name, progress=False)
        assert trainer.resume(new_streams=True) == STEPS
        resumed.append(trainer)
    fresh = train.Trainer(cfg, stage, tmp_path / "fresh", progress=False)
    for part, module in (("model", resumed[0].model), ("ema", resumed[0].ema)):
        saved = _state(run, STEPS, part)
        assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())
    moments = _state(run, STEPS, "optimizer")
    state = resumed[0].optimizer.state_dict()["state"]
    assert all(torch.equal(state[int(k.split(".")[1])][k.split(".")[2]], v)
               for k, v in moments.items())  # fmt: skip
    a, b = resumed
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert torch.equal(a.data.generator.get_state(), b.data.generator.get_state())
    assert not torch.equal(a.generator.get_state(), fresh.generator.get_state())
    assert not torch.equal(a.data.generator.get_state(), fresh.data.generator.get_state())
    rows = a.fit(STEPS + 1)
    assert len(rows) == 1 and rows[0]["step"] == STEPS + 1
    assert [r["step"] for r in train.read_log(tmp_path / "a")] == list(range(1, STEPS + 2))


def test_two_processes_resume_a_one_process_run_with_new_streams(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*ARGS, "--steps", "1", "--out", str(out)]) == 0
    done = _torchrun("--steps", "2", "--out", str(out), "--resume", "--new-streams")
    assert "new data, noise and dropout streams for 2 process(es) (the run was trained by 1)" in (
        done.stderr
    )
    assert [r["step"] for r in train.read_log(out)] == [1, 2]
    rng = checkpoint.read_rng(checkpoint.latest(out))
    assert distributed.saved_world_size(rng) == 2 and "rank1/train" in rng


def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path):
    """Both stop after the same step, by the signal that one was given: the other said
    SIGTERM (exit status 143 beside 130), and each printed its own stop message."""
    out = tmp_path / "run"
    launcher = _torchrun("--steps", "100000", "--out", str(out), "--checkpoint-every", "1000",
                         wait=False)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(train.read_log(out) if (out / train.LOG).is_file() else []) < 3:
            assert time.monotonic() < deadline and launcher.poll() is None, "no steps logged"
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                  text=True).stdout.split()  # fmt: skip
        assert len(children) == WORLD
        os.kill(int(children[-1]), signal.SIGINT)  # one worker only (a Ctrl-C reaches all)
        output = launcher.communicate(timeout=120)[0].decode()
    finally:
        launcher.kill()
    assert "SIGINT: checkpoint saved at step" in output, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("ivref train: stopped")]
    assert len(said) == 1 and said[0].startswith("ivref train: stopped by SIGINT at step")
    assert f"traceback : {said[0]}" in output  # torchrun's summary shows rank 0's line
    assert "stopped by SIGTERM" not in output and "(rank" not in output
    last = checkpoint.latest(out)
    log = train.read_log(out)
    assert int(last.name.removeprefix("step-")) == log[-1]["step"] < 100000
    assert checkpoint.verify(last)["step"] == log[-1]["step"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """The run of ``run``, with the model, gradients, AdamW state and EMA sharded (FSDP2)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    done = _torchrun("--steps", str(STEPS), "--out", str(out), "--checkpoint-every", "1",
                     "--keep-checkpoints", str(STEPS), "--fsdp", *EVAL)  # fmt: skip
    assert "returned a view tensor" not in done.stdout + done.stderr  # FSDP2's warning
    return out


def _assert_close_states(a, b, parts=("model", "ema", "optimizer"), step=STEPS, atol=1e-6):
    for part in parts:
        sa, sb = _state(a, step, part), _state(b, step, part)
        assert sa.keys() == sb.keys()
        for name, value in sa.items():
            torch.testing.assert_close(sb[name], value, rtol=1e-5, atol=atol, msg=part + name)


def test_sharded_training_takes_the_same_steps_as_ddp(run, fsdp_run):
    """FSDP reduce-scatters what DDP all-reduces: the same losses, norms, weights, EMA and
    AdamW moments, to float rounding; its checkpoints have one process's layout."""
    for a, b in zip(train.read_log(run), train.read_log(fsdp_run), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    for step in range(1, STEPS + 1):
        _assert_close_states(run, fsdp_run, step=step)
    meta = checkpoint.read_config(checkpoint.latest(fsdp_run))
    assert json.loads((checkpoint.latest(fsdp_run) / "optimizer.json").read_text()) == json.loads(
        (checkpoint.latest(run) / "optimizer.json").read_text()
    )
    assert meta["step"] == STEPS


def test_sharded_resume_continues_exactly(fsdp_run, tmp_path, capsys):
    """--resume keeps --fsdp (run_flags.json): a stage that fits only sharded went on
    unsharded before, unsaid; one process resuming it is told of --no-fsdp."""
    again = tmp_path / "again"
    shutil.copytree(fsdp_run, again)
    shutil.rmtree(again / checkpoint.CHECKPOINTS / f"step-{STEPS:08d}")
    assert json.loads((again / "run_flags.json").read_text())["fsdp"] is True
    capsys.readouterr()
    assert train.main([*ARGS, "--steps", str(STEPS), "--out", str(again), "--resume"]) == 2
    assert "(on a resume of a sharded run: --no-fsdp)" in capsys.readouterr().err
    done = _torchrun("--steps", str(STEPS), "--out", str(again), "--resume")  # no --fsdp
    assert "override" not in done.stdout + done.stderr
    for part in ("model", "ema", "optimizer"):
        straight, resumed = _state(fsdp_run, STEPS, part), _state(again, STEPS, part)
        for name, value in straight.items():
            assert torch.equal(value, resumed[name]), (part, name)


def test_a_ddp_run_resumes_sharded(run, tmp_path):
    """A checkpoint is a checkpoint: DDP's step 2 resumed with --fsdp reaches DDP's step 3."""
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / checkpoint.CHECKPOINTS / f"step-{STEPS:08d}")
    _torchrun("--steps", str(STEPS), "--out", str(again), "--resume", "--fsdp")
    _assert_close_states(run, again)


@pytest.mark.parametrize("fixture", ["run", "fsdp_run"])
def test_the_ranks_share_the_evaluation_and_score_like_one_process(fixture, request, tmp_path):
    """Both ranks sampled their share of the 5 prompts (rank 0 alone would wait for rank 1
    forever in the gather); the logged scores are one process's of the same EMA."""
    run_dir = request.getfixturevalue(fixture)
    cfg, stage = _config()
    trainer = train.Trainer(cfg, stage, tmp_path, progress=False)
    trainer.ema.load_state_dict(_state(run_dir, EVAL_STEP, "ema"))
    prompts = evaluate.spread_prompts(5)
    scores = evaluate.stage_evaluator(prompts=prompts, steps=2)(trainer)
    logged = {row["step"]: row for row in train.read_log(run_dir)}
    assert sorted(logged) == list(range(1, STEPS + 1))  # and it trained on after evaluating
    evaluated = [step for step, row in logged.items() if any("eval_" in k for k in row)]
    assert evaluated == [EVAL_STEP]
    assert {k.removeprefix("eval_"): v for k, v in logged[EVAL_STEP].items() if "eval_" in k} == (
        scores
    )
    assert set(scores) >= {"color", "shape", "all"}


def test_fsdp_needs_several_processes(tmp_path, capsys):
    with pytest.raises(ValueError, match="fsdp=True shards the model between processes"):
        train.Trainer(configs.preset("ci"), "base", tmp_path, fsdp=True, text_encoder=object())
    status = train.main([*ARGS, "--steps", "1", "--out", str(tmp_path / "r"), "--fsdp"])
    assert status == 2
    assert "start it with torchrun --nproc_per_node=N" in capsys.readouterr().err


COMPILED_WORKER = """
import argparse, sys, torch
from ivref import distributed, train

parser = argparse.ArgumentParser()
train.add_arguments(parser)
args = parser.parse_args(sys.argv[1:])
cfg, stage, _ = train.build_config(args)
distributed.init_from_env(torch.device("cpu"))
trainer = train.Trainer(cfg, stage, args.out, progress=False, checkpoint_every=args.steps,
                        compile={"backend": "aot_eager", "dynamic": False})
trainer.fit(args.steps)
del trainer  # collected before the group goes (distributed.shutdown)
distributed.shutdown()
"""


def test_a_compiled_step_under_ddp_matches_the_eager_run(run, tmp_path):
    """The model compiled in place (aot_eager: the graph capture, no code generation), then
    wrapped in DDP: the same losses and weights as the eager 2-process run."""
    script = tmp_path / "worker.py"
    script.write_text(COMPILED_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD}", str(script), *ARGS, "--steps", str(STEPS)]
    command += ["--out", str(tmp_path / "run")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    eager, compiled = train.read_log(run), train.read_log(tmp_path / "run")
    for a, b in zip(eager, compiled, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for name, value in _state(run, STEPS, "model").items():
        torch.testing.assert_close(_state(tmp_path / "run", STEPS, "model")[name], value)


def test_pack_and_unpack_rng_states():
    states = [{"torch": torch.tensor([r, 1], dtype=torch.uint8), "data": torch.ones(2) * r}
              for r in range(3)]  # fmt: skip
    packed = distributed.pack_rng(states)
    ranks = [f"rank{r}/{k}" for r in (1, 2) for k in ("torch", "data")]
    assert sorted(packed) == sorted(["torch", "data", *ranks, distributed.WORLD_SIZE_KEY])
    for r in range(3):
        unpacked = distributed.unpack_rng(packed, distributed.Context(r, 3, r))
        assert unpacked.keys() == states[r].keys()
        for k, v in states[r].items():
            assert torch.equal(unpacked[k], v)
    assert distributed.pack_rng(states[:1]) == states[0]  # one process: as it always was
    with pytest.raises(ValueError, match="trained by 3 process.*resumed by 2"):
        distributed.unpack_rng(packed, distributed.Context(0, 2, 0))


def test_stream_seeds_are_distinct_and_rank_zero_keeps_the_seed():
    for seed in (0, 7, 2**63 - 1):
        seeds = [distributed.stream_seed(seed, r) for r in range(64)]
        assert seeds[0] == seed
        assert len(set(seeds)) == 64
        assert all(0 <= s < 2**63 for s in seeds)


def test_the_global_batch_must_split_evenly(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "current", lambda: distributed.Context(0, 2, 0))
    cfg = configs.preset("ci")
    with pytest.raises(ValueError, match="batch_size=3 must be a multiple of the 2 processes"):
        train.Trainer(cfg, "base", tmp_path, batch_size=3, text_encoder=object())


def test_a_global_batch_that_does_not_split_makes_no_run_folder(tmp_path, capsys):
    """Under torchrun the refusal came after the run lock had made --out (an empty folder
    holding .lock); every rank now refuses before it."""
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([*ARGS[:-3], "--batch-size", "3", "--steps", "1", "--out",
                              str(tmp_path / "run")])  # fmt: skip
    run_flags.settle(args)
    with pytest.raises(errors.CLIError, match="--batch-size 3 must be a multiple of the 2 proc"):
        train._train(args, torch.device("cpu"), distributed.Context(0, 2, 0))
    assert not (tmp_path / "run").exists()


def test_single_process_context_and_no_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.current() == distributed.Context(0, 1, 0)
    assert not distributed.launched_by_torchrun()
    assert distributed.init_from_env(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched_by_torchrun()
    with pytest.raises(ValueError, match="under torchrun; allowed: cpu or cuda"):
        distributed.init_from_env(torch.device("meta"))


@pytest.fixture(scope="module")
def ci_teacher(tmp_path_factory):
    """A ci cascade with a base stage of random weights, saved as a teacher folder."""
    cfg = configs.preset("ci")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = Cascade(cfg, {"base": VideoUNet(cfg.stage("base").unet).eval()})
    path = tmp_path_factory.mktemp("teacher") / "cascade"
    teacher.save_pretrained(path)
    return path


def _distil(teacher, out, *args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD}", "-m", "ivref.cli", "distill", "--stage", "base"]
    command += ["--from", str(teacher), "--out", str(out), "--batch-size", str(BATCH)]
    command += ["--guided-steps", "2", "--halving-steps", "1", "--checkpoint-every", "1"]
    command += ["--no-bf16", *args]  # float32: DDP and FSDP then agree to float rounding
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ddp_distilled(ci_teacher, tmp_path_factory):
    """``torchrun ... ivref distill`` of the ci base stage: every phase, two processes."""
    return _distil(ci_teacher, tmp_path_factory.mktemp("distil") / "d")


def test_two_processes_distil_every_phase_on_their_own_streams(ci_teacher, ddp_distilled):
    """``torchrun ... ivref distill``: every phase trains, and the first step's logged loss is
    the mean of each rank's distillation loss on its own data and draws."""
    out = ddp_distilled
    record = json.loads((out / distill.PLAN).read_text())
    for folder, length in zip(record["phases"], record["phase_steps"], strict=True):
        assert [r["step"] for r in train.read_log(out / folder)] == list(range(1, length + 1))
        assert checkpoint.read_config(checkpoint.latest(out / folder))["step"] == length
    teacher = Cascade.from_pretrained(ci_teacher)
    steps, phase = record["teacher_steps"], record["phases"][0]
    assert phase == "guided"
    cfg = distill.student_config(teacher.cfg, "base", steps, BATCH, record["w_max"], record["bf16"])
    stage = cfg.stage("base")
    student = distill.with_guidance_embedding(teacher.models["base"], 0)
    losses = []
    for r in range(WORLD):
        stream = distributed.stream_seed(0, r)
        data = objectives.toy_dataset(stage, stream)
        base = objectives.DiffusionObjective(
            cfg, stage, data, objectives.TextCache(teacher.encoder)
        )
        objective = distill.DistillObjective(
            base, teacher.models["base"], phase, steps, cfg.distill
        )
        generator = torch.Generator().manual_seed(stream + 1)
        batch = objective.sample(BATCH // WORLD)
        losses.append(objective.loss(student.train(), batch, generator, "cpu", record["bf16"]))
    logged = train.read_log(out / phase)[0]["loss"]
    assert logged == pytest.approx((sum(losses) / WORLD).item(), rel=1e-5)


def test_sharded_distillation_takes_the_same_steps(ci_teacher, ddp_distilled, tmp_path, capsys):
    """--fsdp: each phase's student sharded, the next teacher its EMA gathered whole on every
    rank: every phase logs DDP's losses, and every phase ends at DDP's weights. A plain
    --resume keeps --fsdp (it went on unsharded), so one process is told of --no-fsdp."""
    from ivref import cli

    out = _distil(ci_teacher, tmp_path / "d", "--fsdp")
    assert json.loads((out / run_flags.FILE).read_text())["fsdp"] is True
    assert cli.main(["distill", "--out", str(out), "--resume"]) == 2
    assert "(on a resume of a sharded run: --no-fsdp)" in capsys.readouterr().err
    record = json.loads((out / distill.PLAN).read_text())
    assert len(record["phases"]) >= 2  # a gathered EMA taught at least one phase
    for folder, length in zip(record["phases"], record["phase_steps"], strict=True):
        logs = train.read_log(ddp_distilled / folder), train.read_log(out / folder)
        assert [r["step"] for r in logs[1]] == list(range(1, length + 1))
        for a, b in zip(*logs, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        # A phase's first AdamW step divides each gradient by its own size, so rounding in
        # the tiniest gradients (the reduction orders differ) moves weights by up to ~2e-6.
        _assert_close_states(ddp_distilled / folder, out / folder, ("model", "ema"), length, 1e-5)
    # a resume refused once it loads (one process, two processes' streams) keeps the flags
    for folder in record["phases"][1:]:
        shutil.rmtree(out / folder)
    shutil.rmtree(out / "guided" / "checkpoints" / "step-00000002")  # guided: at step 1
    capsys.readouterr()
    assert cli.main(["distill", "--out", str(out), "--resume", "--no-fsdp"]) == 2
    assert "trained by 2 process(es) and is resumed by 1" in capsys.readouterr().err
    assert json.loads((out / run_flags.FILE).read_text())["fsdp"] is True


def test_sharded_distillation_needs_several_processes(ci_teacher, tmp_path, capsys):
    from ivref import cli

    argv = ["distill", "--stage", "base", "--from", str(ci_teacher), "--out", str(tmp_path / "d")]
    assert cli.main([*argv, "--fsdp"]) == 2
    assert "start it with torchrun --nproc_per_node=N" in capsys.readouterr().err
    assert not (tmp_path / "d" / distill.PLAN).exists()  # refused before anything was written


FAILING_ON_RANK_0 = """
import sys, torch
from ivref import distributed, errors

def work(device, context):
    if context.rank == 0:
        raise ValueError("a bad input that rank 0 alone saw")
    distributed.barrier(context)  # rank 1 waits for a peer that has gone
    return 0

sys.exit(errors.run_command("train", lambda args: distributed.run_in_group(
    torch.device("cpu"), work), None))
"""


def test_each_process_names_its_rank_in_an_error_and_one_failing_in_a_collective_says_why(
    tmp_path,
):
    """Under torchrun each process printed 'ivref train: error: ...': the same line twice
    for a bad input, and rank 1's gloo 'Connection closed by peer' read as the cause."""
    script = tmp_path / "fail.py"
    script.write_text(FAILING_ON_RANK_0)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD}", str(script)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("ivref train")]
    assert "ivref train (rank 0 of 2): error: a bad input that rank 0 alone saw" in said, said
    (other,) = [line for line in said if line.startswith("ivref train (rank 1 of 2): error: ")]
    assert other.endswith(
        "(this process failed talking to the others: one of them may have stopped first, "
        "and its own message, with its rank, says why)"
    )


def test_a_stop_and_an_error_are_worded_for_the_process_that_says_them(monkeypatch, capsys):
    """One process: as ever. Rank 1 of 2: its error names its rank, and a stop (agreed by
    every process, rank 0 says it) is not said again."""

    def stopped(args):
        raise errors.Interrupted(signal.SIGINT, "stopped by SIGINT at step 3")

    def refused(args):
        raise errors.CLIError("--lr -1 must be positive")

    assert errors.run_command("train", stopped, None) == 130
    assert errors.run_command("train", refused, None) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ivref train: stopped by SIGINT at step 3",
        "ivref train: error: --lr -1 must be positive",
    ]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert errors.run_command("train", stopped, None) == 130
    assert errors.run_command("train", refused, None) == 2

    def interrupted(args):  # a Ctrl-C outside training: not agreed, each stopped one says so
        raise KeyboardInterrupt

    assert errors.run_command("train", interrupted, None) == 130
    assert capsys.readouterr().err.splitlines() == [
        "ivref train (rank 1 of 2): error: --lr -1 must be positive",
        "ivref train (rank 1 of 2): interrupted",
    ]
    assert not errors.in_collective(torch.OutOfMemoryError("CUDA out of memory"))


def test_under_torchrun_every_message_names_its_process_and_a_sigterm_says_who_sends_it(
    monkeypatch, capsys
):
    """Warnings and argparse errors said no rank, DDP's gloo failures got no hint that a
    peer may have stopped first, and a rank that torchrun stopped because another failed
    said only 'stopped by SIGTERM', as if someone had stopped the run."""
    from ivref import arguments

    def terminated(args):
        raise errors.Stopped(signal.SIGTERM)

    assert errors.run_command("train", terminated, None) == 143
    assert capsys.readouterr().err == "ivref train: stopped by SIGTERM\n"  # one process
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert errors.run_command("train", terminated, None) == 143
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("ivref train (rank 1 of 2): stopped by SIGTERM (torchrun sends ")
    assert "another process's message, with its rank, says why" in lines[0]
    said = errors.warning_format("train")("skipping 'v2.gif'", UserWarning, errors.__file__, 1)
    assert said == "ivref train (rank 1 of 2): warning: skipping 'v2.gif'\n"
    parser = arguments.Parser(prog="ivref train")
    parser.add_argument("--steps", type=int)
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "x"])
    assert capsys.readouterr().err.startswith("ivref train (rank 1 of 2): error: argument --steps")
    gloo = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    )
    assert errors.in_collective(gloo)  # raised in DDP's hooks or the autograd engine
    assert not errors.in_collective(RuntimeError("no usable videos under 'v'"))
    ddp = os.sep.join(["", "site", "torch", "nn", "parallel", "distributed.py"])
    code = "def call(f):\n    return f()\ndef sync():\n    raise RuntimeError('rebuild failed')\n"
    space: dict = {}
    exec(compile(code, ddp, "exec"), space)  # stands in for DDP's forward, which runs the model

    def model():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")  # the model's own

    call, sync = space["call"], space["sync"]
    for work, collective in ((lambda: call(model), False), (sync, True)):
        with pytest.raises(RuntimeError) as caught:
            work()
        assert errors.in_collective(caught.value) is collective


def test_torchruns_summary_of_a_failure_shows_each_process_line_not_a_link(
    monkeypatch, capsys, tmp_path
):
    """torchrun's summary (its "Root Cause" block, printed last) said 'To enable traceback
    see: <docs link>' for a process that had said its error in one line: that line is now in
    the process's error file, read here by torch's own ProcessFailure, as torchrun reads it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ivref import arguments

    def refused(args):
        raise ValueError("--lr -1 must be positive")

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert errors.run_command("train", refused, None) == 2  # not under torchrun's agent:
    assert not error_file.exists()  # no error file named, none written
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    assert errors.run_command("train", refused, None) == 2
    line = "ivref train (rank 1 of 2): error: --lr -1 must be positive"
    assert capsys.readouterr().err.splitlines() == [line, line]  # stderr is as before
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file=str(error_file))
    summary = ChildFailedError("ivref", {1: failure}).format_msg()
    assert f"traceback : {line}\n" in summary and "To enable traceback" not in summary
    parser = arguments.Parser(prog="ivref train")  # argparse's refusals too
    parser.add_argument("--steps", type=int)
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "x"])
    said = capsys.readouterr().err.splitlines()
    assert said[0].startswith("ivref train (rank 1 of 2): error: argument --steps")
    assert said[1] == "(`ivref train --help` lists the options)"
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file=str(error_file))
    assert f"traceback : {said[0]}\n" in ChildFailedError("ivref", {1: failure}).format_msg()

    def stopped(args):  # agreed by every process: rank 0 alone prints it, each records it
        raise errors.Interrupted(signal.SIGINT, "stopped by SIGINT at step 3")

    assert errors.run_command("train", stopped, None) == 130
    assert capsys.readouterr().err == ""
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=130, error_file=str(error_file))
    summary = ChildFailedError("ivref", {1: failure}).format_msg()
    assert "traceback : ivref train: stopped by SIGINT at step 3\n" in summary
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "gone" / "error.json"))
    assert errors.run_command("train", refused, None) == 2  # unwritable: stderr alone
    assert capsys.readouterr().err == line + "\n"


def test_a_processs_line_is_one_write_so_two_processes_lines_do_not_run_together(monkeypatch):
    """Python's stderr is unbuffered: print() wrote the line, then its newline, and under
    torchrun another process's line landed in between (two lines run together as one)."""
    import io

    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.calls = []

        def write(self, text):
            self.calls.append(text)
            return super().write(text)

    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert errors.run_command("train", _refused, None) == 2
    assert stderr.calls == ["ivref train (rank 1 of 2): error: --lr -1 must be positive\n"]


def _refused(args):
    raise ValueError("--lr -1 must be positive")


def test_a_run_folder_another_run_holds_stops_every_process_in_one_way(tmp_path):
    """Rank 0 said the folder was in use (its lock), while rank 1, past a lock it does not
    take, said 'already holds a run; pass --resume ... --force (deleting its log ...)'."""
    from ivref import files

    out = tmp_path / "run"
    _torchrun("--steps", "1", "--out", str(out))
    with files.RunLock(out):  # another job trains there
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={WORLD}", "-m", "ivref.train", *ARGS]
        command += ["--steps", "2", "--out", str(out)]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("ivref train")]
    assert any(
        line.startswith("ivref train (rank 0 of 2): error: run folder")
        and "is in use by pid" in line
        for line in said
    ), said
    assert (
        "ivref train (rank 1 of 2): error: stopped with rank 0, which could not start the "
        "work (its own message says why)" in said
    ), said
    assert not any("already holds a run" in line for line in said), said


def test_a_signal_the_process_ignores_stays_ignored_while_a_command_runs():
    """A job started in the background without job control ignores SIGINT: the command's
    handler made a Ctrl-C meant for its parent stop it."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seen = []
        errors.run_command("info", lambda args: seen.append(signal.getsignal(signal.SIGINT)), None)
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_distillation_stopped_under_torchrun_names_the_command_that_continues_it(
    ci_teacher, tmp_path
):
    """The stop message of a distillation under torchrun, said once: the same number of
    processes resumes it (a plain ``ivref distill --resume`` is refused for another)."""
    out = tmp_path / "d"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD}", "-m", "ivref.cli", "distill", "--stage", "base"]
    command += ["--from", str(ci_teacher), "--out", str(out), "--batch-size", str(BATCH)]
    command += ["--guided-steps", "100000", "--halving-steps", "1", "--checkpoint-every", "1000"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (
            len(train.read_log(out / "guided") if (out / "guided" / train.LOG).is_file() else [])
            < 2
        ):
            assert time.monotonic() < deadline and launcher.poll() is None, "no steps logged"
            time.sleep(0.2)
        os.kill(launcher.pid, signal.SIGINT)  # torchrun passes it on to every process
        output = launcher.communicate(timeout=120)[0].decode()
    finally:
        launcher.kill()
    said = f"ivref distill: stopped early; continue with: torchrun --nproc_per_node={WORLD} "
    said += f"-m ivref.cli distill --out {out} --resume"
    assert output.count(said) == 1, output[-3000:]


def test_the_torchrun_command_that_continues_a_run_has_its_nodes(monkeypatch):
    """Four processes on two nodes continue as two per node on each node; the message gave
    --nproc_per_node=4, which on each of the two nodes starts eight."""
    four = distributed.Context(rank=0, world_size=4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.torchrun_command(four, "-m x") == "torchrun --nproc_per_node=4 -m x"
    for local in ("4", "3", "many"):  # one node, or a layout it cannot tell
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert distributed.torchrun_command(four, "-m x") == "torchrun --nproc_per_node=4 -m x"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.torchrun_command(four, "-m x") == (
        "torchrun --nnodes=2 --nproc_per_node=2 -m x (on each of the 2 nodes, with the "
        "rendezvous options, such as --rdzv-endpoint, it started with)"
    )


def test_shutdown_collects_cycles_before_the_group_goes(monkeypatch):
    """What holds the group's threads (DDP, FSDP state), left in a reference cycle, is freed
    while the group and the interpreter still stand: at exit its destructor aborted runs."""
    import gc
    import weakref

    class Holder:
        pass

    held = Holder()
    held.me = held  # a cycle: only the garbage collector frees it
    alive = weakref.ref(held)
    del held
    seen = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: seen.append(alive()))
    gc.disable()  # no automatic collection may free it first
    try:
        distributed.shutdown()
    finally:
        gc.enable()
    assert seen == [None]
