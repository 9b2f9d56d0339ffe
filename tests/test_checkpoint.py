"""Checkpoints round-trip exactly, write atomically, and fail loudly on bad files."""

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ivref import checkpoint, configs


def _trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    ema = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
    return model, ema, opt


def _save(tmp_path, model, ema, opt, cfg=None):
    g = torch.Generator().manual_seed(7)
    return checkpoint.save(
        tmp_path / "ckpt",
        config=cfg or configs.preset("ci"),
        stage="base",
        step=3,
        model=model,
        ema=ema,
        optimizer=opt,
        rng={"torch": torch.get_rng_state(), "data": g.get_state()},
        extra={"log_rows": 3},
    )


def test_round_trip_restores_everything_exactly(tmp_path):
    model, ema, opt = _trained()
    path = _save(tmp_path, model, ema, opt)
    assert not [p for p in path.iterdir() if p.name.startswith(".")]  # no temp files left
    model2, ema2, opt2 = _trained(seed=1)
    out = checkpoint.load(path, model=model2, ema=ema2, optimizer=opt2, config=configs.preset("ci"))
    assert out["step"] == 3 and out["extra"] == {"log_rows": 3} and out["diff"] == []
    for a, b in [(model, model2), (ema, ema2)]:
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    groups = [json.loads(json.dumps(s["param_groups"])) for s in (s1, s2)]  # betas: tuple/list
    assert groups[0] == groups[1]
    for i in s1["state"]:
        for key in s1["state"][i]:
            assert torch.equal(s1["state"][i][key], s2["state"][i][key])
    g = torch.Generator()
    g.set_state(out["rng"]["data"])
    assert torch.equal(
        torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(7))
    )
    # one more optimizer step from both gives identical weights
    for m, o in [(model, opt), (model2, opt2)]:
        o.zero_grad()
        m(torch.ones(2, 4)).sum().backward()
        o.step()
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True)
    )


def test_truncated_file_is_named(tmp_path):
    path = _save(tmp_path, *_trained())
    target = path / "ema.safetensors"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match=r"ema\.safetensors.*corrupted.*bytes"):
        checkpoint.load(path, model=_trained()[0], ema=_trained()[1], optimizer=_trained()[2])


def test_missing_file_and_missing_directory_are_named(tmp_path):
    path = _save(tmp_path, *_trained())
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"optimizer\.safetensors.*missing"):
        checkpoint.verify(path)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.verify(tmp_path / "nowhere")
    (path / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match=r"config\.json.*corrupted"):
        checkpoint.verify(path)


def test_shape_and_config_mismatches_are_explained(tmp_path):
    path = _save(tmp_path, *_trained())
    wide = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.Linear(9, 2))
    with pytest.raises(
        checkpoint.CheckpointError, match=r"model\.safetensors.*0\.weight.*\(8, 4\)"
    ):
        checkpoint.load(path, model=wide, ema=wide, optimizer=torch.optim.AdamW(wide.parameters()))
    ci = configs.preset("ci")
    other_unet = dataclasses.replace(ci.stages[0].unet, base_channels=32)
    other = dataclasses.replace(
        ci, stages=(dataclasses.replace(ci.stages[0], unet=other_unet),) + ci.stages[1:]
    )
    with pytest.raises(checkpoint.CheckpointError, match="unet.base_channels: 16 != 32"):
        checkpoint.load(
            path, model=_trained()[0], ema=_trained()[1], optimizer=_trained()[2], config=other
        )
    lr = dataclasses.replace(
        ci,
        stages=(
            dataclasses.replace(
                ci.stages[0], train=dataclasses.replace(ci.stages[0].train, lr=1e-3)
            ),
        )
        + ci.stages[1:],
    )
    out = checkpoint.load(
        path, model=_trained()[0], ema=_trained()[1], optimizer=_trained()[2], config=lr
    )
    assert out["diff"] == ["stages[0].train.lr: 0.0003 != 0.001"]


def test_fp16_weights_round_trip(tmp_path):
    model = _trained()[0]
    path = checkpoint.save_weights(tmp_path / "w.safetensors", model.state_dict())
    state = checkpoint.load_weights(path)
    assert all(v.dtype == torch.float16 for v in state.values())
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    checkpoint.load_weights(path, fresh)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(a.half().float(), b)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.load_weights(tmp_path / "bad.safetensors")


def _ckpt_state(model, ema, opt, cfg=None):
    return dict(
        config=cfg or configs.preset("ci"),
        stage="base",
        model=model,
        ema=ema,
        optimizer=opt,
        rng={"torch": torch.get_rng_state()},
    )


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    model, ema, opt = _trained()
    good = checkpoint.save(tmp_path / "ckpt", step=3, **_ckpt_state(model, ema, opt))
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    real = checkpoint.write_tensors
    calls = []

    def full_disk(path, tensors, meta=None):
        calls.append(path.name)
        if len(calls) == 3:  # the disk fills up at the third file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, tensors, meta)

    monkeypatch.setattr(checkpoint, "write_tensors", full_disk)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(tmp_path / "ckpt", step=4, **_ckpt_state(model, ema, opt))
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind
    assert checkpoint.verify(good)["step"] == 3


def test_save_run_keeps_the_newest_and_latest_finds_it(tmp_path):
    model, ema, opt = _trained()
    assert checkpoint.latest(tmp_path) is None
    for step in (1, 2, 3):
        checkpoint.save_run(tmp_path, step=step, keep=2, **_ckpt_state(model, ema, opt))
    names = [p.name for p in checkpoint.run_checkpoints(tmp_path)]
    assert names == ["step-00000002", "step-00000003"]
    assert checkpoint.latest(tmp_path).name == "step-00000003"
    # a half-written folder (a crash before the rename) never counts as a checkpoint
    (tmp_path / "checkpoints" / ".step-00000004.tmp-ab12").mkdir()
    (tmp_path / "checkpoints" / "step-00000005").mkdir()  # no config.json: incomplete
    assert checkpoint.latest(tmp_path).name == "step-00000003"


def test_a_checkpoint_that_could_not_be_found_or_read_back_is_never_written(tmp_path):
    """A negative step made "step--0000001", which latest() never lists; an unknown stage
    saved fine and failed when read."""
    model, ema, opt = _trained()
    with pytest.raises(ValueError, match=r"step=-1 must be an integer >= 0"):
        checkpoint.save_run(tmp_path, step=-1, keep=2, **_ckpt_state(model, ema, opt))
    state = _ckpt_state(model, ema, opt) | {"stage": "nope"}
    with pytest.raises(ValueError, match=r"no stage 'nope' in cascade 'ci'"):
        checkpoint.save_run(tmp_path, step=1, keep=2, **state)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_non_finite_weights_are_never_saved_or_loaded(tmp_path):
    model, ema, opt = _trained()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(checkpoint.NonFiniteError, match=r"0\.weight"):
        checkpoint.save(tmp_path / "ckpt", step=1, **_ckpt_state(model, ema, opt))
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(checkpoint.NonFiniteError, match="non-finite"):
        checkpoint.save_weights(tmp_path / "w.safetensors", model.state_dict())
    big = {"w": torch.full((2,), 1e6)}  # finite in fp32, inf in fp16
    with pytest.raises(checkpoint.NonFiniteError, match="after the cast"):
        checkpoint.save_weights(tmp_path / "w.safetensors", big)
    from safetensors.torch import save_file

    save_file({"w": torch.tensor([float("inf")])}, str(tmp_path / "inf.safetensors"))
    with pytest.raises(checkpoint.NonFiniteError):
        checkpoint.load_weights(tmp_path / "inf.safetensors")


def test_what_a_killed_save_leaves_is_named_and_cleared(tmp_path):
    model, ema, opt = _trained()
    folder = tmp_path / "checkpoints"
    assert (
        checkpoint.remove_stale(tmp_path) == []
        and checkpoint.incomplete_checkpoints(tmp_path) == []
    )
    (folder / "step-00000001").mkdir(parents=True)  # no config.json: never finished
    assert checkpoint.incomplete_checkpoints(tmp_path) == [folder / "step-00000001"]
    assert "step-00000001 in checkpoints/ lack config.json" in checkpoint.no_checkpoint_message(
        tmp_path
    )
    checkpoint.save_run(tmp_path, step=2, **_ckpt_state(model, ema, opt))
    tmp = folder / ".step-00000003.tmp-0a1b2c3d"  # killed while writing step 3
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half")
    old = folder / ".step-00000002.old-0a1b2c3d"  # killed while re-saving step 2: a whole copy
    os.replace(folder / "step-00000002", old)
    assert checkpoint.remove_stale(tmp_path) == [tmp]
    assert checkpoint.verify(folder / "step-00000002")["step"] == 2  # moved back
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001", "step-00000002"]


def test_a_prune_killed_while_deleting_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """save_run deleted an old checkpoint in place: a kill part-way left step-N holding
    some of its files and no config.json, which nothing ever removed. It is renamed out of
    the run's checkpoints first; remove_stale clears what a killed delete leaves, and the
    temporary files of killed atomic writes in the run folder (the log's, the flags')."""
    model, ema, opt = _trained()
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save_run(tmp_path, step=step, keep=2, **_ckpt_state(model, ema, opt))
    real = shutil.rmtree

    def killed_half_way(path, **kwargs):  # deletes config.json, then the process dies
        (Path(path) / checkpoint.CONFIG).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_run(tmp_path, step=3, keep=2, **_ckpt_state(model, ema, opt))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real)
    assert checkpoint.incomplete_checkpoints(tmp_path) == []  # no step-1 without config.json
    assert [p.name for p in checkpoint.run_checkpoints(tmp_path)] == ["step-00000002",
                                                                      "step-00000003"]  # fmt: skip
    (gone,) = [p for p in folder.iterdir() if p.name.startswith(".step-00000001.gone-")]
    left = tmp_path / ".log.jsonl.k2x_9a0q.tmp"  # a killed write of the log
    left.write_text("{")
    (tmp_path / ".notes.tmp").write_text("kept")  # not ivref's temporary name
    assert sorted(checkpoint.remove_stale(tmp_path)) == sorted([left, gone])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "checkpoints"]
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002", "step-00000003"]


def test_a_streamed_checkpoint_is_the_same_checkpoint(tmp_path):
    """A plain model and optimizer saved through sharded_state's streams (one whole tensor
    at a time) read back exactly as saved directly; a NaN stops the save before it lands."""
    from ivref import sharded_state

    model, ema, opt = _trained()
    direct = _save(tmp_path / "a", model, ema, opt)
    streamed = _save(
        tmp_path / "b",
        sharded_state.streamed_state(model, "model weights"),
        sharded_state.streamed_state(ema, "EMA weights"),
        sharded_state.streamed_optimizer_state(opt),
    )
    a, b = checkpoint.read(direct), checkpoint.read(streamed)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, entry in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in entry.items())
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    with pytest.raises(checkpoint.NonFiniteError, match=r"model weights: .* \['1.bias'\]"):
        _save(tmp_path / "c", sharded_state.streamed_state(model, "model weights"), ema, opt)
    assert not (tmp_path / "c" / "ckpt").exists() and list((tmp_path / "c").iterdir()) == []


def test_a_saved_optimizer_state_that_does_not_fit_is_named(tmp_path):
    """What a sharded resume checks on rank 0 before any tensor moves."""
    from ivref import sharded_state

    model, ema, opt = _trained()
    opened = checkpoint.open_checkpoint(_save(tmp_path, model, ema, opt))
    where = "optimizer.safetensors"
    sharded_state.check_optimizer_fits(opt, opened["optimizer"], opened["optimizer_json"], where)
    other = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    wider = torch.optim.AdamW(other.parameters())
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit: state.0.exp_avg: file"):
        sharded_state.check_optimizer_fits(
            wider, opened["optimizer"], opened["optimizer_json"], where
        )
    fewer = torch.optim.AdamW(other[0].parameters())
    with pytest.raises(checkpoint.CheckpointError, match="4 parameters saved, 2 in the optimizer"):
        sharded_state.check_optimizer_fits(
            fewer, opened["optimizer"], opened["optimizer_json"], where
        )


def test_a_flipped_bit_in_config_json_makes_it_a_damaged_checkpoint(tmp_path):
    """config.json was the one file nothing checked: a flipped bit changed the step or a
    learning rate unseen, or a damaged key crashed the resume instead of falling back to
    the checkpoint before (which a CheckpointError does)."""
    run = tmp_path / "run"
    model, ema, opt = _trained()
    for step in (1, 2):
        checkpoint.save_run(
            run, step=step, config=configs.preset("ci"), stage="base", model=model, ema=ema,
            optimizer=opt, rng={"torch": torch.get_rng_state()},
        )  # fmt: skip
    path = run / "checkpoints" / "step-00000002" / "config.json"
    good = path.read_text()
    meta = checkpoint.read_config(path.parent)
    assert meta["step"] == 2 and len(meta["digest"]) == 64
    for old, new, message in (
        ('"step": 2', '"step": 3', "does not match its digest"),
        ('"lr": 0.0003', '"lr": 1.0003', "does not match its digest"),
        ('"extra"', '"dxtra"', "its keys are"),
        ('"digest"', '"digesu"', "its keys are"),
        ('"format": 1', '"format": 3', "does not match its digest"),  # not another version
    ):
        assert old in good, old
        path.write_text(good.replace(old, new, 1))
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.read_config(path.parent)
    undigested = json.loads(good)  # as saved before digests: the fields are still checked
    del undigested["digest"]
    for change, message in (
        ({"step": 3}, "step 3 in a folder named step-00000002"),
        ({"step": "2"}, "step '2' is not a count of steps"),
        ({"manifest": {}}, r"its manifest lists \[\], not the files"),
        ({"manifest": undigested["manifest"] | {"rng.safetensors": {"bytes": 1}}},
         "manifest entry for rng.safetensors"),
        ({"extra": []}, "extra is not as saved"),
        ({"format": 2}, r"format 2, expected 1 \(saved by another version of ivref\)"),
    ):  # fmt: skip
        path.write_text(json.dumps(undigested | change))
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.read_config(path.parent)
    path.write_text(json.dumps(undigested))
    assert checkpoint.read_config(path.parent)["step"] == 2  # an old checkpoint still reads


def test_tied_weights_are_saved_under_each_name_and_load_back_tied(tmp_path):
    """A model with one parameter under two names trained, then lost its steps at the first
    save on the CPU: safetensors refuses tensors that share memory."""
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    tied[1].weight = tied[0].weight  # one tensor, two names
    opt = torch.optim.AdamW(tied.parameters())
    path = checkpoint.save(
        tmp_path / "ckpt", config=configs.preset("ci"), stage="base", step=1, model=tied,
        ema=tied, optimizer=opt, rng={"torch": torch.get_rng_state()},
    )  # fmt: skip
    again = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    again[1].weight = again[0].weight
    checkpoint.load(path, model=again, ema=again, optimizer=torch.optim.AdamW(again.parameters()))
    assert torch.equal(again[0].weight, tied[0].weight) and again[1].weight is again[0].weight
