"""The training loop: exact resume, text dropout, the loss, EMA, warm-up, signals, NaN, logs."""

import dataclasses
import json
import math
import os
import signal
import warnings

import numpy as np
import pytest
import torch

from ivref import checkpoint, configs, files, objectives, schedules, text, train


@pytest.fixture(scope="module")
def encoder():
    return text.build_encoder(configs.preset("ci").text)


def _trainer(tmp_path, encoder, **kwargs):
    kwargs.setdefault("batch_size", 2)
    return train.Trainer(
        configs.preset("ci"), "base", tmp_path, text_encoder=encoder, progress=False, **kwargs
    )


def test_resume_continues_exactly(tmp_path, encoder):
    straight = _trainer(tmp_path / "a", encoder)
    rows = straight.fit(4)
    first = _trainer(tmp_path / "b", encoder, checkpoint_every=2)
    first.fit(2)
    first.fit(3)  # a step past the checkpoint that the resumed run must forget
    resumed = _trainer(tmp_path / "b", encoder, seed=123)  # seed is overridden by the checkpoint
    assert resumed.resume() == 3
    later = resumed.fit(4)
    assert [r["loss"] for r in later] == [rows[3]["loss"]]
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    log = train.read_log(tmp_path / "b")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["loss"] for r in log] == [r["loss"] for r in rows]


def test_numpy_integers_train_as_python_ones(tmp_path, encoder):
    """A seed or count from NumPy (np.random, a sweep over np.arange) was refused as "must be
    an integer"; it trains the same run as the Python int, and its checkpoint saves."""
    given = dict(seed=np.int64(3), batch_size=np.int64(2), checkpoint_every=np.int64(1))
    rows = _trainer(tmp_path / "a", encoder, **given).fit(np.int64(1))
    same = _trainer(tmp_path / "b", encoder, seed=3, batch_size=2).fit(1)
    assert [(r["loss"], r["grad_norm"]) for r in rows] == [
        (r["loss"], r["grad_norm"]) for r in same
    ]
    assert (tmp_path / "a" / "checkpoints" / "step-00000001").is_dir()


def test_resume_from_a_two_step_checkpoint_matches(tmp_path, encoder):
    straight = _trainer(tmp_path / "a", encoder)
    rows = straight.fit(3)
    first = _trainer(tmp_path / "b", encoder, checkpoint_every=2)
    first.fit(2)
    resumed = _trainer(tmp_path / "b", encoder)
    assert resumed.resume() == 2
    assert resumed.fit(3)[0]["loss"] == rows[2]["loss"]


class _Recorder(torch.nn.Module):
    """Stands in for the U-Net: records its inputs and predicts v_hat = 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, z_t, logsnr, emb, mask, **kwargs):
        self.calls.append(dict(z_t=z_t, logsnr=logsnr, emb=emb, mask=mask, **kwargs))
        return torch.zeros_like(z_t) * self.w


def test_loss_is_v_mse_with_text_dropout(tmp_path, encoder):
    trainer = _trainer(tmp_path, encoder)
    trainer.model = _Recorder()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 1, 2, 2, generator=g) * 2 - 1
    captions = ["a red circle moving left", "a blue square"] * 200
    is_image = torch.tensor([False, True] * 200)
    loss = trainer.loss(x, captions, is_image)
    call = trainer.model.calls[0]
    assert torch.equal(call["is_image"], is_image)
    dropped = ~call["mask"].any(1)
    assert abs(dropped.float().mean().item() - 0.1) < 0.05  # p = DiffusionConfig.text_dropout
    full = trainer.text.encode(captions)[1]
    assert torch.equal(call["mask"][~dropped], full[~dropped])
    # independent derivation: v_hat = 0, so loss = mean ||v||^2, v = alpha eps - sigma x
    alpha, sigma = schedules.alpha_sigma(call["logsnr"].double())
    a, s = alpha[:, None, None, None, None], sigma[:, None, None, None, None]
    eps = (call["z_t"].double() - a * x.double()) / s
    v = a * eps - s * x.double()
    assert math.isclose(loss.item(), v.pow(2).mean().item(), rel_tol=1e-4)
    assert call["logsnr"].min() >= -20 and call["logsnr"].max() <= 20


def test_text_cache_pads_and_reuses(encoder):
    cache = train.TextCache(encoder)
    emb, mask = cache.encode(["a red circle", "a white triangle moving down"])
    assert emb.shape[:2] == mask.shape and mask[1].all() and not mask[0].all()
    calls = []
    cache.encoder = type("E", (), {"encode": lambda self, p: calls.append(p)})()
    again = cache.encode(["a white triangle moving down"])
    assert not calls and torch.equal(again[0][0], emb[1])


def test_warmup_and_ema_identities():
    assert [train.warmup_lr(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert train.warmup_lr(0, 0.1, 0) == 0.1
    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    train.ema_update(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight)
    assert train.ema_decay_at(0, 0.999) == 0.1 and train.ema_decay_at(10**6, 0.999) == 0.999


def test_evaluate_callback_logged_and_stop_saves(tmp_path, encoder):
    def evaluate(trainer):
        if trainer.step >= 2:
            trainer.signal = signal.SIGINT  # what the Ctrl-C handler does
        return {"all": trainer.step / 10}

    trainer = _trainer(tmp_path, encoder, evaluate=evaluate, evaluate_every=1, checkpoint_every=99)
    rows = trainer.fit(10)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["eval_all"] == 0.2
    assert trainer.interrupted
    fresh = _trainer(tmp_path, encoder)
    assert fresh.resume() == 2


def test_sigterm_saves_like_ctrl_c(tmp_path, encoder):
    trainer = _trainer(tmp_path, encoder, checkpoint_every=99)

    def evaluate(t):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler ending the job
        return {}

    trainer.evaluate, trainer.evaluate_every = evaluate, 1
    rows = trainer.fit(10)
    assert len(rows) == 1 and trainer.signal == signal.SIGTERM
    assert checkpoint.latest(tmp_path).name == "step-00000001"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_a_non_finite_loss_stops_the_run_and_nothing_non_finite_is_saved(tmp_path, encoder):
    trainer = _trainer(tmp_path, encoder, checkpoint_every=1)
    trainer.fit(1)
    for group in trainer.optimizer.param_groups:  # --lr 1e6: the weights blow up
        group["lr"] = 1e6
    trainer.train_cfg = dataclasses.replace(trainer.train_cfg, lr=1e6, warmup_steps=0)
    with pytest.raises(train.NonFiniteLossError, match=r"at step \d+; the last good checkpoint"):
        trainer.fit(20)
    for path in checkpoint.run_checkpoints(tmp_path):  # whatever was saved is finite
        checkpoint.load_weights(path / "ema.safetensors")
        checkpoint.load_weights(path / "model.safetensors")


def test_skip_mode_skips_non_finite_steps_then_gives_up(tmp_path, encoder):
    trainer = _trainer(tmp_path, encoder, on_nonfinite="skip", checkpoint_every=99)
    real = trainer.objective.loss
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    trainer.objective.loss = sometimes_nan
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    rows = trainer.fit(1)
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.warns(UserWarning, match="non-finite loss .* at step 2.*skipped"):
        rows += trainer.fit(2)
    assert all(map(torch.equal, weights, trainer.model.parameters()))  # the step left no trace
    assert all(p.grad is None for p in trainer.model.parameters())
    rows += trainer.fit(3)
    assert [r.get("skipped", 0) for r in rows] == [0, 1, 0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.ema.parameters(), strict=True))
    trainer.objective.loss = lambda *a, **k: real(*a, **k) * float("nan")
    with pytest.raises(train.NonFiniteLossError, match="10 non-finite steps in a row"):
        with pytest.warns(UserWarning):
            trainer.fit(100)


def test_a_fresh_run_starts_a_new_log(tmp_path, encoder):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    _trainer(tmp_path, encoder).fit(1)
    assert [r["loss"] != 9.0 for r in train.read_log(tmp_path)] == [True]


def test_resume_skips_a_damaged_newest_checkpoint_and_sets_it_aside(tmp_path, encoder, capsys):
    _trainer(tmp_path, encoder, checkpoint_every=1).fit(2)
    newest = checkpoint.latest(tmp_path)
    ema = newest / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the weights
    ema.write_bytes(bytes(data))
    damaged = ema.read_bytes()
    resumed = _trainer(tmp_path, encoder, checkpoint_every=1, keep_checkpoints=1)
    assert resumed.resume() == 1
    err = capsys.readouterr().err
    assert "skipping step-00000002" in err and "kept the damaged step-00000002" in err
    # Set aside whole, under a name the run no longer counts: the next save writes a good
    # step 2 and prunes down to it, instead of keeping the damaged one and deleting step 1.
    (aside,) = (tmp_path / "checkpoints").glob("step-00000002.damaged-*")
    assert (aside / "ema.safetensors").read_bytes() == damaged
    resumed.fit(2)
    assert [p.name for p in checkpoint.run_checkpoints(tmp_path)] == ["step-00000002"]
    assert checkpoint.verify(checkpoint.latest(tmp_path))["step"] == 2
    assert _trainer(tmp_path, encoder).resume() == 2
    with pytest.raises(ValueError, match="not a step-N checkpoint"):
        checkpoint.set_aside(aside)


def test_caption_evaluator_samples_the_ema_and_scores_it(tmp_path, encoder):
    trainer = _trainer(tmp_path, encoder)
    prompts = ["a red circle moving left", "a blue square"]
    scores = train.caption_evaluator(prompts=prompts, steps=2)(trainer)
    assert set(scores) == {"color", "shape", "motion", "all"}  # motion: the one moving prompt
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["motion"] in (0.0, 1.0)


def test_a_signal_right_after_a_save_does_not_write_that_step_again(tmp_path, encoder, monkeypatch):
    saved = []
    real = checkpoint.save_run
    monkeypatch.setattr(
        checkpoint, "save_run", lambda *a, **k: saved.append(k["step"]) or real(*a, **k)
    )

    def evaluate(trainer):
        if trainer.step == 2:
            trainer.signal = signal.SIGTERM
        return {}

    trainer = _trainer(tmp_path, encoder, evaluate=evaluate, evaluate_every=1, checkpoint_every=1)
    trainer.fit(10)
    assert saved == [1, 2] and trainer.signal == signal.SIGTERM


def test_a_full_disk_names_the_last_good_checkpoint_which_resumes_exactly(
    tmp_path, encoder, monkeypatch
):
    import errno

    straight = _trainer(tmp_path / "a", encoder).fit(3)
    trainer = _trainer(tmp_path / "b", encoder, checkpoint_every=1)
    trainer.fit(1)
    stale = tmp_path / "b" / "checkpoints" / ".step-00000009.tmp-0123abcd"  # a killed save's
    stale.mkdir()
    real = checkpoint.write_tensors

    def full(path, tensors, meta=None):
        real(path, tensors, meta)
        if path.name == "ema.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "write_tensors", full)
    with pytest.raises(OSError, match=r"at step 2; the last good checkpoint .*step-00000001' is"):
        trainer.fit(3)
    assert not stale.exists()  # cleared before the save began
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-00000001"]
    monkeypatch.undo()
    resumed = _trainer(tmp_path / "b", encoder)
    assert resumed.resume() == 1
    assert [r["loss"] for r in resumed.fit(3)] == [r["loss"] for r in straight[1:]]


def test_the_last_steps_gradients_are_freed_before_the_next_forward(tmp_path, encoder):
    """A step never holds its forward's activations and the previous step's gradients at once
    (at 45M parameters the gradients alone are 171 MiB); the step itself is unchanged."""
    trainer = _trainer(tmp_path / "a", encoder)
    grads_at_forward = []

    def record(module, args):
        grads_at_forward.append([p.grad is not None for p in module.parameters()])

    trainer.model.register_forward_pre_hook(record)
    trainer.fit(2)
    assert len(grads_at_forward) == 2 and not any(map(any, grads_at_forward))
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)


def test_compiled_training_matches_eager_and_checkpoints_plain_names(tmp_path, encoder):
    """``compile=`` traces forward and backward (here with the ``aot_eager`` backend: dynamo
    and AOTAutograd without code generation, fast on CI) and pads text to one length; the
    losses equal the eager run's, and the checkpoint resumes in an eager trainer."""
    options = {"backend": "aot_eager", "dynamic": False}
    eager = _trainer(tmp_path / "a", encoder).fit(4)
    compiled = _trainer(tmp_path / "b", encoder, compile=options, checkpoint_every=2)
    assert compiled.objective.text.pad_multiple == configs.preset("ci").text.max_length
    rows = compiled.fit(2)
    for a, b in zip(eager[:2], rows, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4)
    names = set(compiled.model.state_dict())
    assert names == set(_trainer(tmp_path / "c", encoder).model.state_dict())
    assert not any("_orig_mod" in n for n in names)
    resumed = _trainer(tmp_path / "b", encoder)  # eager, from the compiled run's checkpoint
    assert resumed.resume() == 2
    later = resumed.fit(4)
    for a, b in zip(eager[2:], later, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3)
    assert train.compile_options(torch.device("cuda")) == {
        "mode": "reduce-overhead",  # CUDA graphs: the toy step is launch-bound on a GPU
        "dynamic": False,
    }
    with pytest.raises(TypeError, match="compile="):
        _trainer(tmp_path / "d", encoder, compile="yes")


def test_a_compiled_stage_compiles_once(tmp_path, encoder):
    """Every step after the first reuses the first step's graphs (an SR stage in float32,
    where a Parameter once reached einops and its type cache forced a second compilation)."""
    cfg = configs.preset("ci")
    trainer = train.Trainer(
        cfg, "tsr", tmp_path, text_encoder=encoder, batch_size=2, progress=False,
        compile={"backend": "aot_eager", "dynamic": False},
    )  # fmt: skip
    trainer.fit(1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        trainer.fit(3)


def test_the_compile_flag_reaches_the_trainer(tmp_path, monkeypatch):
    """``ivref train --compile`` builds a compiled trainer (``aot_eager`` here, for speed)."""
    from ivref import cli

    seen = []

    class Spy(train.Trainer):
        def __init__(self, *args, compile=False, **kwargs):
            seen.append(compile)
            fast = {"backend": "aot_eager", "dynamic": False} if compile is True else compile
            super().__init__(*args, compile=fast, **kwargs)

    monkeypatch.setattr(train, "Trainer", Spy)
    argv = ["train", "--scale", "ci", "--batch-size", "2", "--steps", "1", "--threads", "1"]
    assert cli.main([*argv, "--compile", "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert seen == [True, False]
    assert train.read_log(tmp_path / "a")[0]["step"] == 1


def _bf16_config(on: bool):
    cfg = configs.preset("ci")  # ci trains in float32; the toy stages ask for bf16
    base = dataclasses.replace(
        cfg.stages[0], train=dataclasses.replace(cfg.stages[0].train, bf16=on)
    )
    return dataclasses.replace(cfg, stages=(base, *cfg.stages[1:]))


def _bf16_of_each_step(monkeypatch) -> list[bool]:
    """The bf16 argument of every DiffusionObjective.loss call from now on, in order."""
    seen = []
    real = objectives.DiffusionObjective.loss

    def spy(self, model, batch, generator, device="cpu", bf16=False):
        seen.append(bf16)
        return real(self, model, batch, generator, device, bf16)

    monkeypatch.setattr(objectives.DiffusionObjective, "loss", spy)
    return seen


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_only_where_the_device_computes_bf16_natively(
    tmp_path, encoder, monkeypatch, native
):
    """On a CPU with AVX2 alone a toy base step took 16x as long under bf16 autocast as in
    float32: where bf16 is not native a run asking for it trains in float32 and warns,
    unless bf16=True forces it. The setting reaches the objective's every step."""
    from ivref import devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    seen = _bf16_of_each_step(monkeypatch)

    def build(folder, cfg, **kwargs):
        return train.Trainer(
            cfg, "base", tmp_path / folder, text_encoder=encoder, batch_size=2, progress=False,
            **kwargs,
        )  # fmt: skip

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asked = build("a", _bf16_config(True))
    said = [str(w.message) for w in caught if "bf16 autocast is off" in str(w.message)]
    assert asked.bf16 is native and len(said) == (0 if native else 1)
    asked.fit(1)
    assert seen == [native]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither warns
        assert build("b", _bf16_config(True), bf16=True).bf16 is True
        assert build("c", _bf16_config(False)).bf16 is False
        assert build("d", _bf16_config(True), bf16=False).bf16 is False
    with pytest.raises(TypeError, match=r"bf16='yes'; allowed: None \(the stage's setting\)"):
        build("e", _bf16_config(True), bf16="yes")


def test_the_bf16_flag_forces_autocast_and_its_absence_leaves_it_to_the_device(
    tmp_path, monkeypatch
):
    """A stage that asks for bf16, on a device without it: --bf16 and --no-bf16 force it,
    no flag leaves it off (with a warning), and --resume without a flag keeps what the run
    started with."""
    from ivref import cli, devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    asks = _bf16_config(True)
    monkeypatch.setattr(configs, "preset", lambda name: asks)
    made = []

    class Spy(train.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self.train_cfg.bf16, self.bf16))

    monkeypatch.setattr(train, "Trainer", Spy)
    argv = ["train", "--scale", "ci", "--batch-size", "2", "--threads", "1"]
    assert cli.main([*argv, "--steps", "1", "--bf16", "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--steps", "1", "--no-bf16", "--out", str(tmp_path / "b")]) == 0
    with pytest.warns(UserWarning, match="bf16 autocast is off"):
        assert cli.main([*argv, "--steps", "1", "--out", str(tmp_path / "c")]) == 0
    assert made == [(True, True), (False, False), (True, False)]
    made.clear()
    for run in "ab":
        assert cli.main([*argv, "--steps", "2", "--resume", "--out", str(tmp_path / run)]) == 0
    with pytest.warns(UserWarning, match="bf16 autocast is off"):
        assert cli.main([*argv, "--steps", "2", "--resume", "--out", str(tmp_path / "c")]) == 0
    assert made == [(True, True), (False, False), (True, False)]


@pytest.mark.filterwarnings("ignore:bf16 autocast is off for this run")  # forced=True
@pytest.mark.parametrize("forced", [True, False])
def test_a_library_resume_restores_a_forced_bf16_unless_told_otherwise(
    tmp_path, encoder, monkeypatch, forced
):
    """Trainer(bf16=True/False) is kept in the checkpoints: Trainer(bf16=None).resume() trains
    on as the run started (it used to fall back to the device's default) and says so, while
    a trainer made with a setting of its own keeps it. The restored setting reaches the
    steps."""
    from ivref import devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: not forced)  # the default: !forced
    seen = _bf16_of_each_step(monkeypatch)

    def build(**kwargs):
        return train.Trainer(
            _bf16_config(True), "base", tmp_path / "run", text_encoder=encoder, batch_size=2,
            progress=False, **kwargs,
        )  # fmt: skip

    first = build(bf16=forced)
    first.fit(1)
    first.save()
    resumed = build()
    assert resumed.bf16 is (not forced)  # the device's default before the resume
    said = "on" if forced else "off"
    with pytest.warns(UserWarning, match=f"bf16 autocast is {said} for the rest of this run"):
        resumed.resume()
    assert (resumed.bf16, resumed.bf16_given) == (forced, forced)
    seen.clear()
    resumed.fit(2)
    assert seen == [forced]
    resumed.save()
    again = build()
    with pytest.warns(UserWarning, match=f"bf16 autocast is {said} for the rest of this run"):
        again.resume()  # the resumed run's checkpoint keeps the forced setting too
    assert again.bf16 is forced
    own = build(bf16=not forced)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own.resume()  # its own setting: kept, nothing to say
    assert not [w for w in caught if "bf16 autocast is" in str(w.message)]
    assert own.bf16 is (not forced)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), r"batch_size=0 must be None \(the stage's\) or an integer from 1"),
        (dict(batch_size=2.0), r"batch_size=2.0 must be None"),
        (dict(checkpoint_every=0), r"checkpoint_every=0 must be an integer from 1 to 2\*\*31 - 1"),
        (dict(keep_checkpoints=0), r"keep_checkpoints=0 must be an integer from 1"),
        (dict(evaluate_every=-1), r"evaluate_every=-1 must be an integer from 0"),
        (
            dict(device="bogus"),
            r"device 'bogus' is not a device name; use cpu, cuda, cuda:N or mps",
        ),
        (dict(out="file"), r"out='.*file' is a file; give a folder for the run"),  # was errno 17
    ],
)
def test_bad_trainer_arguments_are_refused_before_anything_is_written(
    tmp_path, encoder, kwargs, message
):
    """Each bad argument fails in the constructor, naming itself and what is allowed (a zero
    ``checkpoint_every`` used to fail mid-run with a ZeroDivisionError)."""
    if kwargs.get("out") == "file":
        (tmp_path / "file").write_text("not a folder")
        kwargs["out"] = tmp_path / "file"
    with pytest.raises(ValueError, match=message):
        _trainer(kwargs.pop("out", tmp_path / "run"), encoder, **kwargs)
    assert not (tmp_path / "run").exists()


def test_a_preset_name_for_the_config_is_refused_with_the_call_that_builds_one(tmp_path):
    """train.Trainer("ci", "tsr", out) raised AttributeError ('str' object has no attribute
    'stage')."""
    with pytest.raises(TypeError, match=r"config must be a configs.CascadeConfig: "
                       r"configs.preset\('ci'\); got 'ci'"):  # fmt: skip
        train.Trainer("ci", "tsr", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fit_refuses_a_negative_step_count(tmp_path, encoder):
    trainer = _trainer(tmp_path, encoder)
    with pytest.raises(ValueError, match=r"steps=-1 must be an integer from 0 to 2\*\*31 - 1"):
        trainer.fit(-1)
    assert trainer.fit(0) == [] and trainer.step == 0


class _OwnStreams(objectives.Objective):
    """A custom objective with no ``data`` attribute: the default one's parts, delegated; it
    subclasses the protocol, which must not lend it a no-op ``reseed``."""

    def __init__(self, inner, reseed=None):
        self.sample, self.loss = inner.sample, inner.loss
        self.rng_state, self.set_rng_state = inner.rng_state, inner.set_rng_state
        if reseed is not None:
            self.reseed = reseed


def test_new_streams_reseed_an_objective_through_its_reseed_method(tmp_path, encoder):
    _trainer(tmp_path, encoder).fit(2)
    seeds, states = [], []
    for _ in range(2):  # the same checkpoint resumed twice: the same new streams
        trainer = _trainer(tmp_path, encoder)
        inner = trainer.objective
        trainer.objective = _OwnStreams(
            inner, lambda s, inner=inner: (seeds.append(s), inner.reseed(s))
        )
        assert trainer.resume(new_streams=True) == 2
        states.append(inner.data.generator.get_state())
    assert len(seeds) == 2 and seeds[0] == seeds[1]
    assert torch.equal(states[0], torch.Generator().manual_seed(seeds[0]).get_state())
    saved = checkpoint.read_rng(checkpoint.latest(tmp_path))["train"]
    assert not torch.equal(trainer.generator.get_state(), saved)  # the noise stream is new too
    assert trainer.fit(3)[0]["step"] == 3


def test_new_streams_are_refused_before_loading_for_an_objective_without_streams(tmp_path, encoder):
    _trainer(tmp_path, encoder).fit(1)
    trainer = _trainer(tmp_path, encoder)
    trainer.objective = _OwnStreams(trainer.objective)
    before = [p.clone() for p in trainer.model.parameters()]
    with pytest.raises(ValueError, match=r"_OwnStreams has no reseed\(seed\) method nor a data"):
        trainer.resume(new_streams=True)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.step == 0


@pytest.mark.parametrize("name", ["train", "torch", "model_rng", "world_size", "rank1/data"])
def test_an_objective_may_not_save_its_streams_under_the_loops_names(tmp_path, encoder, name):
    """Saved side by side in rng.safetensors, one would overwrite the other: an inexact resume."""
    inner = _trainer(tmp_path / "a", encoder).objective
    taken = _OwnStreams(inner)
    taken.rng_state = lambda: {name: inner.data.generator.get_state()}
    with pytest.raises(ValueError, match=rf"_OwnStreams.rng_state\(\) names \['{name}'\]"):
        _trainer(tmp_path / "b", encoder, objective=taken)
    mine = _OwnStreams(inner)
    mine.rng_state = lambda: {"mine": inner.data.generator.get_state()}
    assert _trainer(tmp_path / "c", encoder, objective=mine).objective is mine


def test_a_dataset_that_is_falsy_is_used_not_replaced_by_the_toy_world(tmp_path, encoder):
    """``dataset or toy`` swapped an empty (len 0) dataset for the toy world without a word."""

    class Falsy:
        generator = torch.Generator()

        def __len__(self):
            return 0

        def sample(self, batch_size, generator=None):
            raise RuntimeError("no usable videos")

    mine = Falsy()
    trainer = _trainer(tmp_path, encoder, dataset=mine)
    assert trainer.data is mine
    with pytest.raises(RuntimeError, match="no usable videos"):
        trainer.fit(1)


def test_fit_after_a_signal_trains_on(tmp_path, encoder):
    """In a notebook, Ctrl-C then fit() again: before, the old signal made it return at once."""
    trainer = _trainer(tmp_path, encoder, checkpoint_every=10, evaluate_every=1)
    trainer.evaluate = lambda t: (setattr(t, "signal", signal.SIGINT) if t.step == 2 else 0) or {}
    assert [r["step"] for r in trainer.fit(4)] == [1, 2] and trainer.interrupted
    assert [r["step"] for r in trainer.fit(4)] == [3, 4] and not trainer.interrupted


def test_a_fresh_trainer_refuses_a_folder_with_another_runs_checkpoints(tmp_path, encoder):
    """Its lower-step checkpoints would be pruned at once and its log cut the other run's."""
    _trainer(tmp_path, encoder, checkpoint_every=2).fit(4)
    log = (tmp_path / "log.jsonl").read_text()
    fresh = _trainer(tmp_path, encoder)
    with pytest.raises(
        ValueError, match=r"holds another run's checkpoints \(newest: step-00000004"
    ):
        fresh.fit(2)
    assert (tmp_path / "log.jsonl").read_text() == log
    assert fresh.fit(0) == []  # nothing to train: nothing refused
    assert fresh.resume() == 4 and len(fresh.fit(5)) == 1


def test_evaluator_scores_are_logged_as_numbers_or_refused_by_name(tmp_path, encoder):
    """A 0-d tensor killed the run at json.dumps, after the step and before its checkpoint."""
    trainer = _trainer(tmp_path, encoder, evaluate_every=1)
    trainer.evaluate = lambda t: {"psnr": torch.tensor(21.5), "n": 8}
    (row,) = trainer.fit(1)
    assert (row["eval_psnr"], row["eval_n"]) == (21.5, 8) and type(row["eval_n"]) is int
    assert train.read_log(tmp_path)[-1]["eval_psnr"] == 21.5
    trainer.evaluate = lambda t: {"per_video": torch.ones(3)}
    with pytest.raises(
        TypeError, match="the evaluator's 'per_video' is Tensor .* allowed: a number"
    ):
        trainer.fit(2)


def test_a_run_records_its_text_probe_and_resume_refuses_another_encoder(tmp_path, encoder):
    """The config names the encoder, not its weights: a resume on another T5 at the same
    path trained the model on text unlike its first steps', silently."""
    _trainer(tmp_path, encoder, checkpoint_every=1).fit(1)
    meta = checkpoint.read_config(tmp_path / "checkpoints" / "step-00000001")
    assert meta["extra"]["text_probe"] == text.probe(encoder)
    other = text.TinyT5Encoder(configs.preset("ci").text, seed=1)  # same width
    with pytest.raises(ValueError, match=r"'tiny-t5-d32-seed1' is not the one run '.*' was"):
        _trainer(tmp_path, other).resume()
    assert _trainer(tmp_path, encoder).resume() == 1
    config = tmp_path / "checkpoints" / "step-00000001" / "config.json"
    saved = json.loads(config.read_text())
    saved["extra"]["text_probe"] = [float("nan")]  # JSON's NaN: an edited file, which the
    del saved["digest"]  # digest catches; as a checkpoint saved before digests, this check
    config.write_text(json.dumps(saved))
    with pytest.raises(checkpoint.CheckpointError, match=r"text_probe \[nan\] is damaged"):
        _trainer(tmp_path, encoder).resume()


def test_an_encoder_that_cannot_encode_the_probe_warns_and_the_run_trains_on(tmp_path, encoder):
    """A custom encoder may serve its own captions only; the probe must not end the run."""
    from ivref import data

    base = configs.preset("ci").stage("base")
    heldout = data.ToyVideos(base.num_frames, base.width, base.height, base.fps, split="heldout")

    class OwnCaptionsOnly:
        name, dim, max_length = "own", encoder.dim, encoder.max_length

        def encode(self, prompts):
            unknown = set(prompts) - set(heldout.captions)
            if unknown:
                raise KeyError(f"no embedding for {sorted(unknown)}")
            return encoder.encode(prompts)

    run = _trainer(tmp_path, OwnCaptionsOnly(), dataset=heldout, checkpoint_every=1)
    with pytest.warns(UserWarning, match="could not encode 'a red circle moving left'"):
        run.fit(1)
    assert (
        "text_probe"
        not in checkpoint.read_config(tmp_path / "checkpoints" / "step-00000001")["extra"]
    )
    assert set(run.text.rows) <= set(heldout.captions)  # the probe skipped the trainer's cache


def test_a_run_saved_at_step_0_is_continued_by_its_trainer_and_by_a_resume(tmp_path, encoder):
    """A save before the first step (a signal as fit began) made a run that neither its own
    trainer nor a resume could continue: step 0 was read as "a fresh trainer"."""
    first = _trainer(tmp_path, encoder)
    first.save()
    assert [r["step"] for r in first.fit(2)] == [1, 2]
    _trainer(tmp_path / "b", encoder).save()
    again = _trainer(tmp_path / "b", encoder)
    assert again.resume() == 0 and [r["step"] for r in again.fit(1)] == [1]


def test_a_resume_is_refused_while_another_trainer_holds_the_folder(tmp_path, encoder):
    """resume() cut the log of a run another process was training, without its lock; a
    trainer refused by the lock later trained over the run that had held it."""
    from ivref import files

    _trainer(tmp_path, encoder, checkpoint_every=1).fit(2)
    log = (tmp_path / "log.jsonl").read_text()
    late = _trainer(tmp_path / "late", encoder)
    busy = _subprocess_lock(tmp_path)
    held = _subprocess_lock(tmp_path / "late")
    try:
        with pytest.raises(files.RunLockedError, match="is in use by pid"):
            _trainer(tmp_path, encoder).resume()
        with pytest.raises(files.RunLockedError):
            late.fit(2)
    finally:
        for proc in (busy, held):
            proc.kill()
            proc.wait()
    assert (tmp_path / "log.jsonl").read_text() == log
    _trainer(tmp_path / "late", encoder).fit(3)  # the run that held the folder, saved
    with pytest.raises(ValueError, match="holds another run's checkpoints"):
        late.fit(2)
    assert late.fit(0) == []  # nothing trained: it claims nothing
    with pytest.raises(ValueError, match="holds another run's checkpoints"):
        late.fit(2)
    assert late.resume() == 3
    other = _trainer(tmp_path / "late", encoder)
    assert other.resume() == 3 and len(other.fit(4)) == 1  # another trainer goes on
    with pytest.raises(ValueError, match="newest checkpoint is step-00000004, not step-00000003"):
        late.fit(5)
    missing = tmp_path / "typo"
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in .*typo"):
        _trainer(missing, encoder).resume()
    assert not missing.exists()  # neither the folder nor a lock file was made
    other_folder = tmp_path / "photos"  # an existing folder that holds no run
    other_folder.mkdir()
    (other_folder / "a.jpg").write_bytes(b"x")
    with pytest.raises(checkpoint.CheckpointError, match="nothing to resume: .*photos.* has no"):
        _trainer(other_folder, encoder).resume()
    assert sorted(p.name for p in other_folder.iterdir()) == ["a.jpg"]  # no .lock left there


def _subprocess_lock(folder):
    """Another process holding ``folder``'s run lock until killed."""
    import subprocess
    import sys
    import time

    code = "import sys, time; from ivref import files; files.RunLock(sys.argv[1]).acquire(); "
    code += "print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    time.sleep(0.05)
    return proc


def test_a_killed_re_save_leaves_its_old_copy_which_is_resumed_and_put_back(tmp_path, encoder):
    """Killed between moving step N aside and moving the new copy in, a re-save left only
    .step-N.old-*: resume said there was no checkpoint, and its advice (--force) deleted it."""
    trainer = _trainer(tmp_path, encoder, checkpoint_every=1)
    trainer.fit(2)
    folder = tmp_path / "checkpoints"
    (folder / "step-00000002").rename(folder / ".step-00000002.old-0badc0de")
    assert checkpoint.latest(tmp_path) == folder / ".step-00000002.old-0badc0de"
    resumed = _trainer(tmp_path, encoder, checkpoint_every=1)
    assert resumed.resume() == 2
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001", "step-00000002"]
    assert [r["step"] for r in resumed.fit(3)] == [3]


def test_a_log_row_without_a_step_is_named_and_skipped_steps_in_a_row_are_kept(tmp_path, encoder):
    """A damaged key in a log row crashed --resume as an internal error; the count of
    non-finite steps in a row started again from 0 after a resume."""
    trainer = _trainer(tmp_path, encoder, on_nonfinite="skip", checkpoint_every=99)
    real = trainer.objective.loss
    trainer.objective.loss = lambda *a, **k: real(*a, **k) * float("nan")
    with pytest.warns(UserWarning, match="skipped"):
        trainer.fit(3)
    resumed = _trainer(tmp_path, encoder, on_nonfinite="skip")
    assert resumed.resume() == 3 and resumed._skipped == 3
    log = tmp_path / "log.jsonl"
    log.write_text(log.read_text().replace('"step"', '"stdp"', 1))
    with pytest.raises(ValueError, match=r"log.jsonl': row 1 has no integer 'step'"):
        _trainer(tmp_path, encoder).resume()


def test_an_evaluator_is_checked_before_training_and_one_that_fails_loses_no_steps(
    tmp_path, encoder
):
    """train.caption_evaluator (the factory, not an evaluator) failed only at the first
    evaluation, and since the evaluation ran before that step's save, the steps since the
    last checkpoint were lost with it."""
    with pytest.raises(TypeError, match=r"call it, evaluate=train.caption_evaluator\(\)"):
        _trainer(tmp_path / "a", encoder, evaluate=train.caption_evaluator, evaluate_every=2)
    with pytest.raises(TypeError, match="evaluate=3 must be callable"):
        _trainer(tmp_path / "a", encoder, evaluate=3, evaluate_every=2)
    idle = _trainer(tmp_path / "a", encoder, evaluate_every=2)  # trainer.evaluate may come later
    with pytest.raises(ValueError, match="evaluate_every=2 but no evaluator: give evaluate="):
        idle.fit(2)
    assert not (tmp_path / "a").exists()

    def fails(trainer):
        raise RuntimeError("out of memory while sampling")

    trainer = _trainer(tmp_path / "b", encoder, evaluate=fails, evaluate_every=2)
    trainer.checkpoint_every = 2
    with pytest.raises(RuntimeError, match="out of memory while sampling"):
        trainer.fit(4)
    assert checkpoint.latest(tmp_path / "b").name == "step-00000002"  # saved before evaluating
    again = _trainer(tmp_path / "b", encoder)
    assert again.resume() == 2 and [r["step"] for r in again.fit(3)] == [3]
    assert [r["step"] for r in train.read_log(tmp_path / "b")] == [1, 2, 3]  # row 2 kept


def test_an_evaluator_that_draws_from_the_global_generator_leaves_a_resume_exact(tmp_path, encoder):
    """The checkpoint of a step is saved before its evaluation: the evaluation must not move
    the global random state that the run goes on with. The evaluator draws from a generator
    seeded by the run's own state at its step, whatever the caller's holds, and a resume
    leaves the caller's generator as it was (it put back the one saved with the checkpoint)."""

    def draws(trainer):
        return {"r": float(torch.rand(()))}

    torch.manual_seed(1)
    straight = _trainer(tmp_path / "a", encoder, evaluate=draws, evaluate_every=1).fit(3)
    assert len({r["eval_r"] for r in straight}) == 3  # a new draw at each step
    torch.manual_seed(2)  # another caller's state: the same run
    first = _trainer(tmp_path / "b", encoder, evaluate=draws, evaluate_every=1)
    first.checkpoint_every = 1
    assert [r["eval_r"] for r in first.fit(2)] == [r["eval_r"] for r in straight[:2]]
    torch.manual_seed(3)
    callers = torch.rand(4)
    torch.manual_seed(3)
    again = _trainer(tmp_path / "b", encoder, evaluate=draws, evaluate_every=1)
    again.resume()
    assert torch.equal(torch.rand(4), callers)  # the caller's stream, untouched by the resume
    rows = again.fit(3)
    assert [r["loss"] for r in rows] == [straight[2]["loss"]]
    assert [r["eval_r"] for r in rows] == [straight[2]["eval_r"]]


def test_a_run_killed_while_it_evaluates_gets_the_steps_log_row_back_on_resume(
    tmp_path, encoder, capsys
):
    """The checkpoint of a step is saved before its evaluation, its log row after: a process
    killed while evaluating (SIGKILL, out of memory) left a run whose log lacked that step
    for good. The checkpoint keeps the row (a non-finite loss as null, as the log has it),
    and the resume runs the lost evaluation again: the log is the one of a run that was
    never killed, to the evaluator's draws from torch's global generator."""
    calls = []

    def scores(trainer):
        calls.append(trainer.step)
        return {"r": float(torch.rand(()))}

    def trainer():
        return _trainer(tmp_path, encoder, evaluate=scores, evaluate_every=2, checkpoint_every=2)

    rows = trainer().fit(4)
    log = tmp_path / train.LOG
    files.write_log(log, train.read_log(log)[:-1])  # what a kill during step 4's evaluation left
    capsys.readouterr()
    assert trainer().resume() == 4
    said = capsys.readouterr().err
    assert "resume: step 4's log row came back from its checkpoint" in said
    assert "the evaluation due then runs again now" in said
    restored = train.read_log(log)
    assert restored == rows and list(restored[3])[0] == "step"  # eval_r too, the same draw
    assert calls == [2, 4, 4]
    assert trainer().resume() == 4
    assert train.read_log(log) == restored and "came back" not in capsys.readouterr().err
    assert calls == [2, 4, 4]  # the row is whole: nothing runs again
    files.write_log(log, train.read_log(log)[:-1])
    _trainer(tmp_path, encoder, checkpoint_every=2).resume()  # no evaluator: the row alone
    assert train.read_log(log)[3] == {k: v for k, v in rows[3].items() if k != "eval_r"}
    nan = dict(rows[3], loss=math.nan)
    assert files.finite_row(nan)["loss"] is None and files.finite_row(nan)["step"] == 4


def test_a_resume_under_another_training_config_says_what_changed(tmp_path, encoder):
    """ivref train --resume --lr says 'override lr'; the library switched silently."""
    import dataclasses

    from ivref import trainer_checkpoints

    _trainer(tmp_path, encoder, checkpoint_every=1).fit(1)
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    faster = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=3e-3))
    cfg = dataclasses.replace(cfg, stages=(faster, *cfg.stages[1:]))
    again = train.Trainer(cfg, "base", tmp_path, text_encoder=encoder, batch_size=2, progress=False)
    with pytest.warns(trainer_checkpoints.ConfigChangedWarning, match=r"lr: 0\.\d+ -> 0\.003"):
        assert again.resume() == 1
    same = _trainer(tmp_path, encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same.resume() == 1  # the run's own config: nothing to say


def test_a_resume_with_another_clip_size_dropout_or_batch_says_so(tmp_path, encoder):
    """The stage's own fields (frames, size, frame rate, augmentation level) and the U-Net's
    dropout were not compared on resume, and a Trainer's batch_size was not recorded: the
    run went on under them without a word."""
    import dataclasses

    from ivref import trainer_checkpoints

    cfg = configs.preset("ci")
    run = train.Trainer(cfg, "base", tmp_path, text_encoder=encoder, batch_size=3, progress=False)
    run.checkpoint_every = 1
    run.fit(1)
    base = cfg.stage("base")
    assert run.config.stage("base").train.batch_size == 3 != base.train.batch_size  # recorded
    other = dataclasses.replace(
        base,
        num_frames=base.num_frames + 2,
        unet=dataclasses.replace(base.unet, dropout=0.25, checkpointing=True),
    )
    cfg2 = dataclasses.replace(cfg, stages=(other,))  # later stages would chain on its frames
    again = train.Trainer(cfg2, "base", tmp_path, text_encoder=encoder, progress=False)
    with pytest.warns(trainer_checkpoints.ConfigChangedWarning) as said:
        assert again.resume() == 1
    (message,) = [
        str(w.message) for w in said if w.category is trainer_checkpoints.ConfigChangedWarning
    ]
    assert f"num_frames: {base.num_frames} -> {base.num_frames + 2}" in message
    assert f"unet.dropout: {base.unet.dropout!r} -> 0.25" in message
    assert f"batch_size: 3 -> {base.train.batch_size}" in message
    assert "checkpointing" not in message  # memory, not the result: nothing to say
    same = train.Trainer(cfg, "base", tmp_path, text_encoder=encoder, batch_size=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same.resume() == 1
        quiet = train.Trainer(cfg2, "base", tmp_path, text_encoder=encoder, progress=False)
        assert quiet.resume(announce=False) == 1  # a finished phase loaded for its weights


def test_a_run_resumes_from_its_t5_folder_moved_and_not_from_another_t5(tmp_path):
    """text.path was part of 'the model': a run whose T5 folder moved could not resume (in
    Python, or with ivref train --resume --text-encoder NEW). The encoder's recorded probe
    tells the same encoder from another one."""
    import dataclasses
    import shutil

    from ivref import checkpoint, text, trainer_checkpoints

    ci = configs.preset("ci")

    def t5_at(path, changed=False):
        encoder = text.build_encoder(ci.text)  # a tiny T5, saved as a user's checkpoint
        if changed:
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for weight in encoder.model.parameters():
                    weight.add_(0.5 * torch.randn(weight.shape, generator=g))
        encoder.model.save_pretrained(path)
        encoder.tokenizer.save_pretrained(path)
        t5 = dataclasses.replace(ci.text, encoder="t5", path=str(path))
        return dataclasses.replace(ci, text=t5)

    def trainer(cfg):
        return train.Trainer(cfg, "base", tmp_path / "run", batch_size=2, progress=False)

    run = trainer(t5_at(tmp_path / "t5"))
    run.checkpoint_every = 1
    run.fit(1)
    shutil.move(tmp_path / "t5", tmp_path / "moved")
    moved = dataclasses.replace(
        run.config, text=dataclasses.replace(run.config.text, path=str(tmp_path / "moved"))
    )
    with pytest.warns(trainer_checkpoints.ConfigChangedWarning, match=r"text\.path: '.*t5' ->"):
        assert trainer(moved).resume() == 1
    with pytest.raises(ValueError, match="is not the one run .* was trained with"):
        trainer(t5_at(tmp_path / "other", changed=True)).resume()
    newest = checkpoint.run_checkpoints(tmp_path / "run")[-1] / checkpoint.CONFIG
    meta = json.loads(newest.read_text())
    del meta["extra"]["text_probe"]  # a run saved before probes: nothing tells the encoder
    newest.write_text(json.dumps(meta | {"digest": checkpoint.config_digest(meta)}))
    shutil.copytree(tmp_path / "moved", tmp_path / "again")
    with pytest.raises(checkpoint.ModelMismatchError, match="records no text probe"):
        trainer(
            dataclasses.replace(
                moved, text=dataclasses.replace(moved.text, path=str(tmp_path / "again"))
            )
        ).resume()
    shutil.copytree(tmp_path / "moved", tmp_path / "t5")  # the folder it trained with
    assert trainer(run.config).resume() == 1


def test_a_relative_t5_folder_is_saved_absolute(tmp_path, monkeypatch):
    """A T5 folder given from Python as a relative path was saved as given, so a resume (or
    an export) run from another folder looked for another T5, or none."""
    import dataclasses

    from ivref import text

    ci = configs.preset("ci")
    tiny = text.build_encoder(ci.text)
    (tmp_path / "work").mkdir()
    tiny.model.save_pretrained(tmp_path / "work" / "t5")
    tiny.tokenizer.save_pretrained(tmp_path / "work" / "t5")
    monkeypatch.chdir(tmp_path / "work")
    cfg = dataclasses.replace(ci, text=dataclasses.replace(ci.text, encoder="t5", path="t5"))
    run = train.Trainer(cfg, "base", tmp_path / "run", batch_size=2, progress=False)
    assert run.config.text.path == str((tmp_path / "work" / "t5").resolve())
    run.checkpoint_every = 1
    run.fit(1)
    saved = checkpoint.read_config(checkpoint.latest(tmp_path / "run"))["config"]
    assert saved.text.path == str((tmp_path / "work" / "t5").resolve())
    monkeypatch.chdir(tmp_path)  # elsewhere: the saved config still names the folder
    again = train.Trainer(saved, "base", tmp_path / "run", batch_size=2, progress=False)
    assert again.resume() == 1
    # a run saved before kept 't5' as given, and no probe: resumed as it was, from where it
    # trained, neither a changed-config warning nor a refusal of "another" T5 folder
    newest = checkpoint.run_checkpoints(tmp_path / "run")[-1] / checkpoint.CONFIG
    meta = json.loads(newest.read_text())
    meta["config"]["text"]["path"] = "t5"
    del meta["extra"]["text_probe"]
    newest.write_text(json.dumps(meta | {"digest": checkpoint.config_digest(meta)}))
    monkeypatch.chdir(tmp_path / "work")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = train.Trainer(cfg, "base", tmp_path / "run", batch_size=2, progress=False)
        assert old.resume() == 1


def test_a_text_encoder_the_config_does_not_describe_is_refused(tmp_path):
    """A T5 given to a Trainer whose config says tiny-t5 trained without a word, and the run
    recorded tiny-t5: its export built the wrong encoder (caught only by the probe, with a
    hint the command line refused). A 48-d encoder failed inside the U-Net."""
    import dataclasses

    from ivref import text

    ci = configs.preset("ci")
    tiny = text.build_encoder(ci.text)
    tiny.model.save_pretrained(tmp_path / "t5")
    tiny.tokenizer.save_pretrained(tmp_path / "t5")
    t5 = text.T5Encoder.from_pretrained(tmp_path / "t5", ci.text.max_length)

    def trainer(encoder, cfg=ci):
        return train.Trainer(cfg, "base", tmp_path / "run", text_encoder=encoder, progress=False)

    with pytest.raises(
        ValueError, match=r"a 't5' encoder, but the config's text says encoder='tiny-t5'"
    ):
        trainer(t5)
    longer = text.T5Encoder.from_pretrained(tmp_path / "t5", ci.text.max_length + 16)
    with pytest.raises(
        ValueError, match=r"with max_length=64, but the config's text has max_length=48"
    ):
        trainer(longer)
    wider = dataclasses.replace(ci.text, dim=48)
    other = dataclasses.replace(
        ci,
        text=wider,
        stages=tuple(
            dataclasses.replace(s, unet=dataclasses.replace(s.unet, text_dim=48)) for s in ci.stages
        ),
    )
    with pytest.raises(ValueError, match=r"with dim=32, but the config's text has dim=48"):
        trainer(tiny, other)
    described = dataclasses.replace(ci.text, encoder="t5", path=str(tmp_path / "t5"))
    assert trainer(t5, dataclasses.replace(ci, text=described)).objective is not None
    assert trainer(text.CachedEncoder(tiny, tmp_path / "cache")).objective is not None


def test_a_resume_of_another_model_says_so_once_without_falling_back(tmp_path, encoder, capsys):
    """Another base_channels read as damage: 'resume: skipping step-2: ... saved with a
    different model', then the same error for step 1. Every checkpoint of a run holds the
    same model, so the first says it, and nothing is skipped or set aside."""
    from ivref import checkpoint

    _trainer(tmp_path, encoder, checkpoint_every=1).fit(2)
    wider = configs.preset("ci").replace_stage("base", unet={"base_channels": 32})
    again = train.Trainer(
        wider, "base", tmp_path, text_encoder=encoder, batch_size=2, progress=False
    )
    with pytest.raises(
        checkpoint.ModelMismatchError,
        match=r"step-00000002 was saved with a different model .*base_channels: 16 != 32",
    ):
        again.resume()
    assert "skipping" not in capsys.readouterr().err
    assert [p.name for p in checkpoint.run_checkpoints(tmp_path)] == [
        "step-00000001",
        "step-00000002",
    ]
    assert issubclass(checkpoint.ModelMismatchError, checkpoint.CheckpointError)  # as before


def test_a_refused_resume_leaves_no_trainer_that_fit_would_take_for_the_runs(
    tmp_path, encoder, monkeypatch
):
    """A resume refused after the weights loaded (another process count) left the trainer
    marked as resumed: fit() then trained on from step 0, rewrote the log and pruned the
    run's checkpoints."""
    from ivref import distributed

    _trainer(tmp_path, encoder, checkpoint_every=1).fit(2)
    log = (tmp_path / "log.jsonl").read_text()

    def refused(state, context):
        raise ValueError("this run was trained by 2 process(es) and is resumed by 1")

    monkeypatch.setattr(distributed, "unpack_rng", refused)
    again = _trainer(tmp_path, encoder)
    with pytest.raises(ValueError, match="resumed by 1"):
        again.resume()
    with pytest.raises(ValueError, match="holds another run's checkpoints"):
        again.fit(3)
    assert (tmp_path / "log.jsonl").read_text() == log
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000001",
        "step-00000002",
    ]
