"""The cascade: save/load round trip, generation shape/range/determinism, clear errors."""

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ivref import cascade as cascade_lib
from ivref import checkpoint, configs, guidance, samplers, superres, text
from ivref.cascade import Cascade, check_prompts
from ivref.unet3d import VideoUNet

from .conftest import DeviceSpy


@pytest.fixture(scope="module")
def ci_cascade():
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    return Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet).eval()})


def test_generate_shape_range_and_seed(ci_cascade):
    base = ci_cascade.cfg.stages[0]
    video = ci_cascade.generate(
        ["a red circle moving left", "a blue square moving up"], seed=3, steps=3
    )
    assert video.shape == (2, 3, base.num_frames, base.height, base.width)
    assert video.min() >= -1 and video.max() <= 1
    again = ci_cascade.generate(
        ["a red circle moving left", "a blue square moving up"], seed=3, steps=3
    )
    assert torch.equal(video, again)
    other = ci_cascade.generate(
        ["a red circle moving left", "a blue square moving up"], seed=4, steps=3
    )
    assert not torch.equal(video, other)


def test_return_stages_lists_every_trained_stage(ci_cascade):
    final, stages = ci_cascade.generate(
        ["a red circle moving left"], seed=0, steps=2, return_stages=True
    )
    assert len(stages) == len(ci_cascade.trained_stages) == 1
    assert stages[-1] is final


def test_guidance_zero_runs_one_pass_and_differs_from_guided(ci_cascade):
    prompts = ["a green triangle moving right"]
    plain = ci_cascade.generate(prompts, seed=1, steps=2, guidance=0.0)
    guided = ci_cascade.generate(prompts, seed=1, steps=2, guidance=3.0)
    assert not torch.allclose(plain, guided)


def test_save_and_load_round_trip(ci_cascade, tmp_path):
    ci_cascade.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "cascade.json").read_text())
    assert manifest["stages"] == ["base"] and manifest["format"] == 2
    assert set(manifest["files"]) == {"base.safetensors"}
    torch.manual_seed(5)
    callers = torch.rand(3)
    torch.manual_seed(5)
    loaded = Cascade.from_pretrained(tmp_path, encoder=ci_cascade.encoder)
    assert torch.equal(torch.rand(3), callers)  # building the U-Nets drew from it
    assert loaded.cfg == ci_cascade.cfg
    for name, tensor in ci_cascade.models["base"].state_dict().items():
        # Shipped weights are fp16: the round trip equals the fp16 rounding, exactly.
        expected = tensor.half().to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.models["base"].state_dict()[name], expected), name
    a = ci_cascade.generate(["a red circle moving left"], seed=0, steps=2)
    b = loaded.generate(["a red circle moving left"], seed=0, steps=2)
    assert torch.allclose(a, b, atol=2e-2)


def test_a_re_saved_cascade_keeps_its_unchanged_files_byte_for_byte(tmp_path):
    """A distilled student records its teacher by the sha256 of the teacher's file: a save
    that rewrote unchanged weights into other bytes (a stage name added to the files'
    metadata did) would call every student of a re-exported cascade stale. The shipped
    cascade, loaded and saved again, is the same files."""
    from ivref import shipped

    for name in ["cascade.json", *(f"{s}.safetensors" for s in cascade_lib.TOY_TRAIN_STEPS)]:
        shutil.copy(shipped.SHIPPED_DIR / name, tmp_path / name)
    before = json.loads((tmp_path / "cascade.json").read_text())["files"]
    Cascade.from_pretrained(tmp_path).save_pretrained(tmp_path, overwrite=True)
    assert json.loads((tmp_path / "cascade.json").read_text())["files"] == before


def test_another_t5_at_the_trained_path_is_an_error_not_wrong_videos(ci_cascade, tmp_path):
    """cascade.json names the T5 by its path only: another checkpoint of the same width
    there (v1.1 and Flan T5-XXL are both 4096-d) ran silently on text the stages never saw."""
    tiny = text.build_encoder(ci_cascade.cfg.text)
    t5 = tmp_path / "t5"
    tiny.model.save_pretrained(t5)
    tiny.tokenizer.save_pretrained(t5)
    t5_text = dataclasses.replace(ci_cascade.cfg.text, encoder="t5", path=str(t5))
    cfg = dataclasses.replace(ci_cascade.cfg, text=t5_text)
    trained = Cascade(cfg, dict(ci_cascade.models.items()))
    prompts = ["a red circle moving left"]
    video = trained.generate(prompts, seed=0, steps=2)  # builds the encoder: its probe is saved
    trained.save_pretrained(tmp_path / "c")
    recorded = json.loads((tmp_path / "c" / "cascade.json").read_text())["text_probe"]
    assert recorded == text.probe(tiny)
    same = Cascade.from_pretrained(tmp_path / "c")
    assert same.text_probe == recorded
    torch.testing.assert_close(same.generate(prompts, seed=0, steps=2), video, atol=2e-2, rtol=0)
    with torch.no_grad():  # another checkpoint, same config and width
        tiny.model.encoder.final_layer_norm.weight.mul_(2.0)
    tiny.model.save_pretrained(t5)
    swapped = Cascade.from_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match=r"^text encoder 't5-t5-\w+' is not the one this cascade"):
        swapped.generate(prompts, seed=0, steps=2)
    other = text.TinyT5Encoder(ci_cascade.cfg.text, seed=1)  # given explicitly: checked too
    with pytest.raises(ValueError, match="is not the one this cascade was trained with"):
        Cascade.from_pretrained(tmp_path / "c", encoder=other).generate(prompts, seed=0, steps=2)
    manifest = json.loads((tmp_path / "c" / "cascade.json").read_text())
    manifest["text_probe"] = ["x"]
    del manifest["digest"]  # edited by hand, the edit kept (the digest would refuse it)
    (tmp_path / "c" / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"not a valid cascade manifest: text_probe \['x'\]"):
        Cascade.from_pretrained(tmp_path / "c")


def test_a_cascade_without_a_recorded_probe_checks_nothing(ci_cascade, tmp_path):
    plain = Cascade(ci_cascade.cfg, dict(ci_cascade.models.items()))  # encoder never built
    plain.save_pretrained(tmp_path)
    assert "text_probe" not in json.loads((tmp_path / "cascade.json").read_text())
    other = text.TinyT5Encoder(ci_cascade.cfg.text, seed=1)
    loaded = Cascade.from_pretrained(tmp_path, encoder=other)
    assert loaded.text_probe is None
    loaded.generate(["a red circle moving left"], seed=0, steps=1)  # nothing to check against
    with pytest.raises(ValueError, match="text_probe=\\['x'\\]: give text.probe"):
        Cascade(ci_cascade.cfg, dict(ci_cascade.models.items()), text_probe=["x"])


def test_missing_folder_and_corrupted_files_say_what_is_wrong(ci_cascade, tmp_path):
    with pytest.raises(FileNotFoundError, match="cascade.json"):
        Cascade.from_pretrained(tmp_path / "nowhere")
    ci_cascade.save_pretrained(tmp_path)
    weights = tmp_path / "base.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="base.safetensors.*sha256 differs"):
        Cascade.from_pretrained(tmp_path)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="base.safetensors.*corrupted"):
        Cascade.from_pretrained(tmp_path)
    (tmp_path / "cascade.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid cascade manifest"):
        Cascade.from_pretrained(tmp_path)


def test_a_newer_format_is_named_before_its_config_is_read(ci_cascade, tmp_path):
    """A format-3 manifest whose config has a field this ivref does not know failed on the
    field ('unexpected ... field'), not on the format."""
    ci_cascade.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "cascade.json").read_text())
    manifest["format"] = 3
    manifest["config"]["stages"][0]["a_field_of_ivref_3"] = 1
    manifest["digest"] = checkpoint.config_digest(manifest)
    (tmp_path / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(
        cascade_lib.ManifestFormatError,
        match=r"format 3; this ivref reads formats 1 and 2 \(a newer",
    ):
        Cascade.from_pretrained(tmp_path)
    for found, shown in ((None, "None"), ("2", "'2'"), (True, "True"), (1.0, "1.0"), (3.0, "3.0")):
        manifest["format"] = found  # 1.0 took format 1's path: no file checked
        manifest["digest"] = checkpoint.config_digest(manifest)
        (tmp_path / "cascade.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=f"format {shown}; this ivref reads .*edited by hand"):
            Cascade.from_pretrained(tmp_path)
    del manifest["format"]
    manifest["digest"] = checkpoint.config_digest(manifest)
    (tmp_path / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no format entry; this ivref reads formats 1 and 2"):
        Cascade.from_pretrained(tmp_path)
    manifest["format"] = 3  # its digest is one without a format: damaged, or another digest
    (tmp_path / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(cascade_lib.ManifestFormatError, match="format 3 and content that does not"):
        Cascade.from_pretrained(tmp_path)
    manifest["format"] = 2
    manifest["config"]["stages"][0]["guidance_w"] = math.nan  # no digest can be made of it
    (tmp_path / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="its content does not match its digest"):
        Cascade.from_pretrained(tmp_path)
    (tmp_path / "cascade.json").write_text("[2]")
    with pytest.raises(ValueError, match="not a valid cascade manifest: it holds list"):
        Cascade.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "files", [None, "x", {}, {"base.safetensors": "x"}, {"base.safetensors": {"bytes": 1}}]
)
def test_a_hand_edited_manifest_without_the_file_list_is_named(ci_cascade, tmp_path, files):
    """No stage file may load unverified; the error names the manifest, not an internal bug."""
    ci_cascade.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "cascade.json").read_text())
    if files is None:
        del manifest["files"]
    else:
        manifest["files"] = files
    del manifest["digest"]  # edited by hand, the edit kept (the digest would refuse it)
    (tmp_path / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"'files' must give the bytes and sha256 of every stage"):
        Cascade.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "prompts, message",
    [
        ("a red circle", "one string"),
        ([], "empty"),
        (["ok", ""], r"prompts\[1\]"),
        ([3], r"prompts\[0\]"),
        (None, "got NoneType"),
        ({"a red circle": 1}, "got dict"),
        ({"a red circle"}, "got set"),
    ],
)
def test_bad_prompts(prompts, message):
    with pytest.raises(ValueError, match=message):
        check_prompts(prompts)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps=0 must be an integer from 1"),
        (dict(steps=10**9), "steps=1000000000 must be an integer from 1 to 10000"),
        (dict(guidance=-1.0), r"guidance=-1.0 must be a number from 0 \(no guidance\) to 1000"),
        (dict(guidance=float("nan")), "guidance=nan must be a number from 0"),
        (dict(guidance=float("inf")), "guidance=inf must be a number from 0"),
        (dict(guidance=1e300), "guidance=1e\\+300 must be a number from 0"),
        (dict(guidance={"nope": 1.0}), r"unknown stages \['nope'\]; stages: \['base'\]$"),
        (dict(steps={"base": 0}), r"steps\['base'\]=0 must be an integer from 1"),
        (dict(guidance={"base": -2}), r"guidance\['base'\]=-2 must be a number from 0"),
        (dict(seed=2**64), "seed=18446744073709551616 must be an integer from 0 to 2\\*\\*63"),
        (dict(seed=-1), "seed=-1"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_bad_generate_arguments(ci_cascade, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ci_cascade.generate(["a red circle moving left"], **kwargs)


def test_unknown_stage_names_list_the_stages_in_cascade_order():
    """They were listed as a set, in another order every run."""
    stages = configs.preset("ci").stages
    with pytest.raises(ValueError) as err:
        cascade_lib._per_stage({"bse": 1, "ssr9": 2}, stages, "steps")
    assert str(err.value) == (
        "steps names unknown stages ['bse', 'ssr9']; stages: ['base', 'tsr', 'ssr1', 'ssr2']"
    )


def test_numpy_steps_and_weights_are_taken_as_python_numbers(ci_cascade):
    import numpy as np  # installed with ivref's dependencies (matplotlib, mediapy)

    prompt = ["a red circle moving left"]
    want = ci_cascade.generate(prompt, seed=0, steps=2, guidance=0.5)
    for steps, w in [(np.int64(2), np.float32(0.5)), (np.int32(2), np.float64(0.5))]:
        got = ci_cascade.generate(prompt, seed=0, steps=steps, guidance=w)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    got = ci_cascade.generate(
        prompt, seed=np.int64(0), steps=2, guidance=0.5, batch_size=np.int32(1)
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert type(ci_cascade.last_seed) is int
    with pytest.raises(ValueError, match=r"steps=.*2\.0\)? must be an integer"):
        ci_cascade.generate(prompt, steps=np.float64(2.0))
    with pytest.raises(ValueError, match=r"seed=.*-1\)? must be an integer from 0"):
        ci_cascade.generate(prompt, seed=np.int64(-1))


def test_models_must_be_a_prefix_of_the_stages():
    cfg = configs.preset("ci")
    with pytest.raises(ValueError, match="prefix"):
        Cascade(cfg, {"tsr": VideoUNet(cfg.stages[1].unet)})
    with pytest.raises(ValueError, match="unknown stages"):
        Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet), "zz": VideoUNet(cfg.stages[0].unet)})


def test_trained_stage_names_are_plain_identifiers(tmp_path, ci_cascade):
    ci_cascade.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "cascade.json").read_text())
    manifest["config"]["stages"][0]["name"] = "../../elsewhere/base"
    manifest["stages"] = ["../../elsewhere/base"]
    del manifest["digest"]  # edited by hand, the edit kept (the digest would refuse it)
    (tmp_path / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="plain identifier"):
        Cascade.from_pretrained(tmp_path)


def test_overwriting_keeps_the_folders_other_files_and_drops_the_old_stages(full_cascade, tmp_path):
    folder = tmp_path / "c"
    full_cascade.save_pretrained(folder)  # four stages
    (folder / "base_log.jsonl").write_text('{"step": 1}\n')
    full_cascade.save_pretrained(folder / "distilled")
    base_only = Cascade(full_cascade.cfg, {"base": full_cascade.models["base"]})
    base_only.save_pretrained(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "base.safetensors", "base_log.jsonl", "cascade.json", "distilled",
    ]  # fmt: skip
    assert [s.name for s in Cascade.from_pretrained(folder).trained_stages] == ["base"]
    assert len(Cascade.from_pretrained(folder, variant="distilled").trained_stages) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no folder left beside it


def test_an_interrupted_overwrite_leaves_the_old_cascade_whole(full_cascade, tmp_path, monkeypatch):
    """export --force onto data/toy (the remake flow), killed halfway: before, the stage files
    written so far no longer matched the old manifest and the old weights were gone."""
    folder = tmp_path / "c"
    full_cascade.save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real, written = cascade_lib.checkpoint.save_weights, []

    def dies_on_the_second(path, state):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real(path, state)

    monkeypatch.setattr(cascade_lib.checkpoint, "save_weights", dies_on_the_second)
    torch.manual_seed(1)  # other weights than the saved ones
    other = Cascade(full_cascade.cfg, {s.name: VideoUNet(s.unet) for s in full_cascade.cfg.stages})
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    Cascade.from_pretrained(folder)  # verifies every file against the manifest


def test_an_overwrite_killed_between_its_renames_is_finished_on_load(
    full_cascade, tmp_path, monkeypatch
):
    """Killed after the old folder moved aside but before the new one moved in: the folder
    was missing, with both copies beside it, until someone renamed them back by hand."""
    folder = tmp_path / "c"
    Cascade(full_cascade.cfg, {"base": full_cascade.models["base"]}).save_pretrained(folder)
    real = os.replace

    def dies_moving_the_new_one_in(src, dst):
        if Path(src).name.startswith(".c.new-"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(cascade_lib.files.os, "replace", dies_moving_the_new_one_in)
    with pytest.raises(KeyboardInterrupt):
        full_cascade.save_pretrained(folder, overwrite=True)
    monkeypatch.undo()
    assert not folder.exists()
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == [".c.new", ".c.old"]
    with pytest.raises(FileNotFoundError, match="holds a cascade but no distilled variant"):
        Cascade.from_pretrained(folder, variant="distilled")  # repaired first: it has none
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # (it looked only inside c/distilled)
    loaded = Cascade.from_pretrained(folder)  # the swap is finished; verifies every file
    assert len(loaded.trained_stages) == 4  # the new cascade, whole
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def _pid(alive: bool):
    """(pid, process): a process still running (kill it after), or the pid of one that ended."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if not alive:
        child.kill()
        child.wait()
    return child.pid, child


def test_a_later_overwrite_clears_what_killed_writers_left(full_cascade, tmp_path):
    folder, (dead, _), (pid, writer) = tmp_path / "c", _pid(alive=False), _pid(alive=True)
    full_cascade.save_pretrained(folder)
    full_cascade.save_pretrained(tmp_path / f".c.old-{dead}-0a1b2c3d")  # killed removing it
    (tmp_path / f".c.new-{dead}-1a1b2c3d").mkdir()  # killed while writing
    writing = tmp_path / f".c.new-{pid}-2a1b2c3d"  # another process, writing now
    writing.mkdir()
    try:
        full_cascade.save_pretrained(folder, overwrite=True)
    finally:
        writer.kill()
        writer.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [writing.name, "c"]


def test_a_swap_in_progress_is_left_to_its_writer_and_the_cli_finishes_a_killed_one(
    full_cascade, tmp_path, capsys
):
    """A reader that completed a running writer's swap made the writer's own rename fail."""
    from ivref import cli

    folder, (pid, writer) = tmp_path / "c", _pid(alive=True)
    full_cascade.save_pretrained(tmp_path / f".c.old-{pid}-0a1b2c3d")
    full_cascade.save_pretrained(tmp_path / f".c.new-{pid}-0a1b2c3d")
    try:
        with pytest.raises(FileNotFoundError, match="cascade.json not found"):
            Cascade.from_pretrained(folder)  # between its renames: not ours to finish
        assert not folder.exists() and len(list(tmp_path.iterdir())) == 2
    finally:
        writer.kill()
        writer.wait()
    argv = ["generate", "a red circle moving left", "--checkpoint", str(folder)]
    argv += ["--out", str(tmp_path / "v.gif"), "--steps", "1"]
    assert cli.main(argv) == 0, capsys.readouterr().err  # killed: generate finishes the swap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "v.gif"]


def test_save_refuses_to_overwrite_a_cascade(ci_cascade, tmp_path):
    ci_cascade.save_pretrained(tmp_path)
    with pytest.raises(FileExistsError, match="already holds a cascade"):
        ci_cascade.save_pretrained(tmp_path)
    ci_cascade.save_pretrained(tmp_path, overwrite=True)
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(FileExistsError, match="'.*a_file' is a file; save_pretrained writes a"):
        ci_cascade.save_pretrained(tmp_path / "a_file", overwrite=True)
    assert (tmp_path / "a_file").read_text() == "mine"
    mine = tmp_path / "mine"  # a folder with a file of the name a stage's weights take
    mine.mkdir()
    (mine / "base.safetensors").write_text("my precious weights")
    with pytest.raises(FileExistsError, match=r"holds \['base.safetensors'\] but no cascade"):
        ci_cascade.save_pretrained(mine)
    assert (mine / "base.safetensors").read_text() == "my precious weights"


@pytest.fixture(scope="module")
def full_cascade():
    """The whole ci cascade (base, TSR, SSR, crop-trained SSR) with seeded random weights."""
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    models = {s.name: VideoUNet(s.unet).eval() for s in cfg.stages}
    for model in models.values():  # fp16-representable, so a saved copy is the same model
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    return Cascade(cfg, models)


def test_a_weight_a_student_never_learnt_is_refused_before_any_stage_samples(full_cascade):
    """A distilled SR student that learnt only w = 0 (its teacher sampled unguided): one w for
    every stage fails up front, naming the per-stage form; w for the base alone samples."""
    cfg = full_cascade.cfg
    tsr = dataclasses.replace(cfg.stages[1], guidance_w=0.0, guidance_w_max=0.0)
    cfg = dataclasses.replace(cfg, stages=(cfg.stages[0], tsr))
    models = {s.name: full_cascade.models[s.name] for s in cfg.stages}
    student = Cascade(cfg, models, full_cascade.encoder)
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in models.values()]
    try:
        with pytest.raises(ValueError, match=r"stage 'tsr'.*0 <= w <= 0.0.*mapping"):
            student.generate(["a red circle moving left"], seed=0, steps=2, guidance=1.0)
        assert calls == []  # refused before the base stage ran
        video = student.generate(
            ["a red circle moving left"], seed=0, steps=2, guidance={"base": 1}
        )
        assert video.shape[2] == tsr.num_frames and calls
    finally:
        for hook in hooks:
            hook.remove()


def test_the_whole_cascade_runs_every_stage_in_order(full_cascade):
    prompts = ["a red circle moving left", "a blue square moving up"]
    final, stages = full_cascade.generate(prompts, seed=0, steps=2, return_stages=True)
    shapes = [tuple(v.shape) for v in stages]
    want = [(2, 3, s.num_frames, s.height, s.width) for s in full_cascade.cfg.stages]
    assert shapes == want and final is stages[-1]
    assert all(v.abs().max() <= 1 for v in stages)
    assert set(full_cascade.timings) == {s.name for s in full_cascade.cfg.stages}


def test_save_load_round_trip_gives_identical_samples(full_cascade, tmp_path):
    full_cascade.save_pretrained(tmp_path)
    loaded = Cascade.from_pretrained(tmp_path, encoder=full_cascade.encoder)
    prompts = ["a white triangle moving down"]
    a = full_cascade.generate(prompts, seed=5, steps={"base": 3, "tsr": 2, "ssr1": 2, "ssr2": 2})
    b = loaded.generate(prompts, seed=5, steps={"base": 3, "tsr": 2, "ssr1": 2, "ssr2": 2})
    assert torch.equal(a, b)


def test_each_video_depends_only_on_its_own_seed(full_cascade):
    prompts = ["a red circle moving left", "a green square moving up", "a cyan circle moving down"]
    together = full_cascade.generate(prompts, seed=7, steps=2)
    alone = full_cascade.generate(prompts[1:2], seed=8, steps=2)
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)
    batched = full_cascade.generate(prompts, seed=7, steps=2, batch_size=2)
    torch.testing.assert_close(together, batched, atol=1e-5, rtol=0)


def test_oscillating_guidance_is_used_where_the_stage_asks(full_cascade):
    tsr = full_cascade.cfg.stage("tsr")
    assert tsr.oscillating_guidance
    weights = cascade_lib.stage_guidance(tsr, 2.0, 10)
    assert weights == [2.0, 0.5, 2.0, 0.5, 2.0, 0.5, 2.0, 0.5, 2.0, 0.5]
    assert cascade_lib.stage_guidance(tsr, 0.0, 4) == [0.0] * 4  # w = 0: no guidance at all
    assert cascade_lib.stage_guidance(full_cascade.cfg.stage("ssr1"), 2.0, 4) == 2.0
    base = full_cascade.generate(["a red circle moving left"], seed=0, steps=2, return_stages=True)
    inputs = base[1][0]
    g = torch.Generator().manual_seed(0)
    emb, mask = full_cascade.encoder.encode(["a red circle moving left"])
    model, diffusion = full_cascade.models["tsr"], full_cascade.cfg.diffusion
    kwargs = dict(cond_video=inputs, steps=4, generator=g)
    oscillating = cascade_lib.sample_stage(model, tsr, diffusion, emb, mask, **kwargs)
    g.manual_seed(0)
    constant = dataclasses.replace(tsr, oscillating_guidance=False)
    plain = cascade_lib.sample_stage(model, constant, diffusion, emb, mask, **kwargs)
    assert not torch.allclose(oscillating, plain)


def test_every_tensor_reaching_the_model_is_on_the_models_device():
    """CI has no GPU: put the models on the meta device, where mixing devices fails as on CUDA.

    Any input left on the CPU (noise, text, the conditioning video, the log-SNR grid) either
    trips the spy or makes a meta/CPU op raise, as "Expected all tensors to be on the same
    device" would on a GPU.
    """
    cfg = configs.preset("ci")
    stages = {s.name: dataclasses.replace(s, oscillating_guidance=False) for s in cfg.stages}
    cfg = dataclasses.replace(cfg, stages=tuple(stages.values()))
    with torch.device("meta"):
        models = {n: DeviceSpy(VideoUNet(s.unet)) for n, s in stages.items()}
    encoder = text.build_encoder(cfg.text)
    emb, mask = encoder.encode(["a red circle moving left"])
    video = None
    for stage in cfg.stages:
        video = cascade_lib.sample_stage(
            models[stage.name], stage, cfg.diffusion, emb, mask, cond_video=video,
            steps=2, guidance_w=1.0, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert video.device.type == "meta"
        assert video.shape == (1, 3, stage.num_frames, stage.height, stage.width)
    assert all(spy.seen and set(spy.seen) == {"meta"} for spy in models.values())


def test_non_finite_output_is_an_error_not_a_black_video(ci_cascade):
    model = ci_cascade.models["base"]
    original = model.out_conv.bias.detach().clone()
    with torch.no_grad():
        model.out_conv.bias.fill_(float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="stage 'base' produced NaN"):
            ci_cascade.generate(["a red circle moving left"], seed=0, steps=2)
    finally:
        with torch.no_grad():
            model.out_conv.bias.copy_(original)


def test_the_largest_guidance_weight_taken_does_not_overflow(ci_cascade):
    """Weights past float32's range made NaN videos after all the sampling work; they are now
    refused first, and the bound itself samples finite videos even unthresholded."""
    cfg = ci_cascade.cfg
    base = dataclasses.replace(cfg.stage("base"), thresholding="none")
    unbounded = Cascade(
        dataclasses.replace(cfg, stages=(base, *cfg.stages[1:])),
        dict(ci_cascade.models.items()),
        ci_cascade.encoder,
    )
    w = cascade_lib.MAX_GUIDANCE
    video = unbounded.generate(["a red circle moving left"], seed=0, steps=2, guidance=w)
    assert bool(torch.isfinite(video).all())
    with pytest.raises(ValueError, match=r"guidance=1e\+300 must be a number from 0"):
        unbounded.generate(["a red circle moving left"], seed=0, steps=2, guidance=1e300)


def test_the_default_batch_is_smaller_where_the_last_stage_runs_on_the_cpu():
    cfg = configs.preset("toy")  # last stage: 16 x 64 x 64 = 2**16 output voxels per video
    last = cfg.stages[-1]
    assert last.num_frames * last.height * last.width == 2**16
    torch.manual_seed(0)
    model = Cascade(cfg, {s.name: VideoUNet(s.unet) for s in cfg.stages})
    assert cascade_lib.CPU_BATCH_VOXELS == 2**18 and cascade_lib.GPU_BATCH_VOXELS == 2**21
    assert model.default_batch_size() == 4
    model.models["base"].to("meta")  # only the last stage's device counts
    assert model.default_batch_size() == 4
    model.models[last.name].to("meta")  # not the CPU: a GPU's larger batches
    assert model.default_batch_size() == 32


def test_a_model_without_weights_has_no_device_and_says_so():
    """next(model.parameters()) raised a bare StopIteration for such a model."""
    from ivref import stage_sampling

    class Weightless(nn.Module):
        def forward(self, z, *args, **kwargs):
            return torch.zeros_like(z)

    with pytest.raises(ValueError, match="Weightless has no parameters or buffers"):
        stage_sampling.model_device(Weightless())
    holder = Weightless()
    holder.register_buffer("scale", torch.ones(1, device="meta"))
    assert stage_sampling.model_device(holder).type == "meta"  # a buffer tells it
    cfg = configs.preset("ci")
    base = cfg.stages[0]
    emb, mask = torch.zeros(2, 3, cfg.text.dim), torch.ones(2, 3, dtype=torch.bool)
    kwargs = dict(steps=2, guidance_w=0.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="Weightless has no parameters or buffers"):
        stage_sampling.sample_stage(Weightless(), base, cfg.diffusion, emb, mask, **kwargs)
    holder.scale, holder.cfg = torch.ones(1), base.unet  # on the CPU: samples (zeros)
    out = stage_sampling.sample_stage(holder, base, cfg.diffusion, emb, mask, **kwargs)
    assert out.shape == (2, 3, base.num_frames, base.height, base.width)
    model = Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet)})
    model.models["base"] = Weightless()
    with pytest.raises(ValueError, match="has no parameters or buffers"):
        model.default_batch_size()


@pytest.mark.slow
def test_a_thousand_prompts_are_sampled_and_encoded_in_batches(ci_cascade):
    prompts = [f"a red circle moving left {i}" for i in range(1000)]
    limit = ci_cascade.default_batch_size()
    assert limit < 1000  # so one batch would be wrong
    forward_batches, encoded = [], []
    model = ci_cascade.models["base"]
    hook = model.register_forward_pre_hook(lambda m, args: forward_batches.append(len(args[0])))
    encoder = ci_cascade.encoder
    real_encode = encoder.encode
    encoder.encode = lambda ps: encoded.append(len(ps)) or real_encode(ps)
    try:
        video = ci_cascade.generate(prompts, seed=11, steps=1, guidance=0.0)
    finally:
        hook.remove()
        del encoder.encode
    base = ci_cascade.cfg.stages[0]
    assert video.shape == (1000, 3, base.num_frames, base.height, base.width)
    assert max(forward_batches) <= limit and sum(forward_batches) == 1000
    assert max(encoded) <= limit and sum(encoded) == 1000
    last = ci_cascade.generate(prompts[-1:], seed=11 + 999, steps=1, guidance=0.0)
    torch.testing.assert_close(video[-1:], last, atol=1e-5, rtol=0)


class _InputSpy(torch.nn.Module):
    """Wraps a U-Net and records every value of one keyword input it is given."""

    def __init__(self, model, name):
        super().__init__()
        self.inner, self.cfg, self.name, self.seen = model, model.cfg, name, []

    def forward(self, *args, **kwargs):
        self.seen.append(kwargs[self.name].clone())
        return self.inner(*args, **kwargs)


def test_no_augmentation_embeds_the_highest_level_training_saw():
    """lambda' = +inf leaves the input clean and embeds logsnr_max, not a value never trained."""
    cfg = configs.preset("ci")
    stage, d = cfg.stage("ssr1"), cfg.diffusion
    torch.manual_seed(0)
    spy = _InputSpy(VideoUNet(stage.unet).eval(), "aug_logsnr")
    emb, mask = text.build_encoder(cfg.text).encode(["a red circle moving left"])
    low = torch.rand(1, 3, stage.num_frames, stage.height // 2, stage.width // 2) * 2 - 1
    for level, want in ((float("inf"), d.logsnr_max), (-1e3, d.logsnr_min), (1.5, 1.5)):
        spy.seen.clear()
        cascade_lib.sample_stage(
            spy, stage, d, emb, mask, cond_video=low, steps=2, guidance_w=0.0, aug_logsnr=level
        )
        assert all(torch.equal(a, torch.full_like(a, want)) for a in spy.seen), (level, spy.seen)
    drawn = superres.train_aug_logsnr(10_000, stage, d, torch.Generator().manual_seed(0))
    assert d.logsnr_min <= drawn.min() and drawn.max() <= d.logsnr_max  # what training saw


def test_sample_stage_names_what_is_wrong_in_the_callers_terms():
    """A float mask was said as 'text_mask must be bool of shape (2, 16)' for a batch of 1
    (the guided batch the U-Net sees), a TSR model given the base stage asked for a
    cond_video, and a stage or diffusion config of another type raised AttributeError."""
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    torch.manual_seed(0)
    model = VideoUNet(base.unet).eval()
    emb, mask = text.build_encoder(cfg.text).encode(["a red circle moving left"])
    d = cfg.diffusion
    with pytest.raises(ValueError, match=r"text_mask must be a bool tensor .* got torch.float32"):
        cascade_lib.sample_stage(model, base, d, emb, mask.float(), steps=1)
    tsr_model = VideoUNet(cfg.stage("tsr").unet).eval()
    with pytest.raises(ValueError, match=r"stage 'base' \(base\) takes a U-Net with cond_chan"):
        cascade_lib.sample_stage(tsr_model, base, d, emb, mask, steps=1)
    with pytest.raises(TypeError, match=r"stage='base' must be a StageConfig"):
        cascade_lib.sample_stage(model, "base", d, emb, mask, steps=1)
    with pytest.raises(TypeError, match=r"diffusion=None must be a DiffusionConfig"):
        cascade_lib.sample_stage(model, base, None, emb, mask, steps=1)


def test_sampling_augments_the_pixels_and_keeps_a_blank_frame_mask_exact():
    """A one-channel TSR with blank frames (cond: pixel + mask): sampling noised channels
    0-2 whatever in_channels was, which is the mask's and nothing of a fourth colour channel;
    training noises x's channels (objectives.py), so sampling must as well."""
    cfg = configs.preset("ci")
    tsr = cfg.stage("tsr")
    unet = dataclasses.replace(tsr.unet, in_channels=1, out_channels=1, cond_channels=2)
    stage = dataclasses.replace(tsr, unet=unet, temporal_cond="blank")
    torch.manual_seed(0)
    spy = _InputSpy(VideoUNet(unet).eval(), "cond_video")
    emb, mask = text.build_encoder(cfg.text).encode(["a red circle moving left"])
    low = torch.rand(1, 1, stage.num_frames // 2, stage.height, stage.width) * 2 - 1
    cascade_lib.sample_stage(
        spy, stage, cfg.diffusion, emb, mask, cond_video=low, steps=2, guidance_w=0.0,
        aug_logsnr=0.0,
    )  # fmt: skip
    clean = superres.upsample(low, stage)
    for cond in spy.seen:
        assert torch.equal(cond[:, 1], clean[:, 1])  # the mask: 1, 0, 1, 0, ... exactly
        assert torch.equal(cond[0, 1, :, 0, 0], torch.tensor([1.0, 0.0] * (stage.num_frames // 2)))
        assert (cond[:, 0] - clean[:, 0]).abs().mean() > 0.3  # lambda' = 0: half noise


def test_a_missing_cascade_says_where_the_shipped_weights_are(tmp_path, monkeypatch):
    """Installed from a wheel, the package has no data/toy: loading the shipped cascade named
    only the missing path, under site-packages."""
    from ivref import shipped

    monkeypatch.delenv("IVREF_WEIGHTS", raising=False)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "site-packages" / "data" / "toy")
    with pytest.raises(FileNotFoundError, match=r"data/toy/cascade.json not found") as err:
        Cascade.from_pretrained()
    assert "only an editable install (pip install -e) finds: point IVREF_WEIGHTS" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:  # a folder the user named: just the path
        Cascade.from_pretrained(tmp_path)
    assert "IVREF_WEIGHTS" not in str(err.value)
    monkeypatch.setenv("IVREF_WEIGHTS", "")  # set but empty: unset (it was the current folder)
    assert shipped.shipped_dir() == shipped.SHIPPED_DIR
    with pytest.raises(FileNotFoundError, match="site-packages/data/toy/cascade.json") as err:
        Cascade.from_pretrained()
    assert "only an editable install (pip install -e) finds" in str(err.value)


def test_load_shipped_names_the_commands_that_make_a_missing_stage(
    ci_cascade, tmp_path, monkeypatch
):
    ci_cascade.save_pretrained(tmp_path)
    monkeypatch.setenv("IVREF_WEIGHTS", str(tmp_path))
    assert cascade_lib.load_shipped(["base"]).trained_stages[0].name == "base"
    with pytest.raises(
        FileNotFoundError, match=r"stage\(s\) \['tsr'\].*\n.*ivref train .*--stage tsr"
    ):
        cascade_lib.load_shipped(["base", "tsr"])
    with pytest.raises(
        FileNotFoundError, match=r"no distilled weights.*\n.*ivref distill --stage base"
    ):
        cascade_lib.load_shipped(["base"], variant="distilled")
    ci_cascade.save_pretrained(tmp_path / "distilled")  # an undistilled copy is not a student
    with pytest.raises(FileNotFoundError, match=r"ivref export runs/distill-base") as err:
        cascade_lib.load_shipped(["base"], variant="distilled")
    students = tmp_path / "distilled"  # it exists: the students in it are kept (its --base)
    assert f"--base {students} --out {students} --force" in str(err.value)
    assert f"--from {tmp_path} " in str(err.value)  # the folder in use, not data/toy


def test_load_shipped_of_no_stages_from_an_empty_folder_says_what_is_missing(
    ci_cascade, tmp_path, monkeypatch
):
    """Asked for no particular stage, from a folder without a cascade, it returned None
    (annotated: a Cascade) and the caller failed later on None."""
    monkeypatch.setenv("IVREF_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cascade.json"):
        cascade_lib.load_shipped([])
    ci_cascade.save_pretrained(tmp_path)
    assert isinstance(cascade_lib.load_shipped([]), cascade_lib.Cascade)


def test_load_shipped_names_the_commands_that_remake_a_damaged_cascade(
    ci_cascade, tmp_path, monkeypatch
):
    """A damaged shipped folder raised its error alone: no way back was named. The fold it
    names replaces the folder without reading it (an `export --base` of the damaged folder
    fails on the same damage), and works on a damaged folder."""
    from ivref import cli, tensor_files

    folder = tmp_path / "toy"
    ci_cascade.save_pretrained(folder)
    monkeypatch.setenv("IVREF_WEIGHTS", str(folder))
    weights = folder / "base.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(tensor_files.CheckpointError, match="corrupted") as err:
        cascade_lib.load_shipped(["base"])
    message = str(err.value)
    assert f"the cascade in {folder} is damaged: restore it" in message
    runs = " ".join(f"runs/{name}" for name in cascade_lib.TOY_TRAIN_STEPS)
    assert "ivref train --scale toy --stage ssr2" in message  # every stage, not those asked
    assert f"ivref export {runs} --out {folder} --force" in message  # no --base
    with pytest.raises(ValueError, match="variant='distiled'; allowed") as err:
        cascade_lib.load_shipped(["base"], variant="distiled")
    assert "is damaged" not in str(err.value)
    ci_cascade.save_pretrained(folder / "distilled")
    (folder / "distilled" / "base.safetensors").write_bytes(b"")
    with pytest.raises(tensor_files.CheckpointError, match="is damaged: restore it") as err:
        cascade_lib.load_shipped(["base"], variant="distilled")
    students = " ".join(f"runs/distill-{name}" for name in cascade_lib.TOY_TRAIN_STEPS)
    assert str(err.value).endswith(f"ivref export {students} --out {folder}/distilled --force")
    run = tmp_path / "run"  # the fold, with one ci run: it replaces the damaged cascade
    argv = ["train", "--scale", "ci", "--out", str(run), "--batch-size", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    assert cli.main(["export", str(run), "--out", str(folder), "--force"]) == 0
    assert cascade_lib.load_shipped(["base"]).trained_stages[0].name == "base"
    (folder / "cascade.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"not a valid cascade manifest(.|\n)*--stage base"):
        cascade_lib.load_shipped(["base"])
    manifest = json.loads((tmp_path / "toy" / "distilled" / "cascade.json").read_text())
    manifest["format"] = 3
    manifest["digest"] = checkpoint.config_digest(manifest)
    (folder / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(cascade_lib.ManifestFormatError, match="upgrade ivref") as err:
        cascade_lib.load_shipped(["base"])
    assert "is damaged" not in str(err.value) and "restore it" not in str(err.value)
    manifest["format"] = 4  # its digest is format 3's: damaged, or a newer ivref's digest
    (folder / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(cascade_lib.ManifestFormatError, match="damaged, or written by") as err:
        cascade_lib.load_shipped(["base"])
    assert "\nif it is damaged, restore it" in str(err.value)


@pytest.mark.parametrize("mode", ["dynamic", "static", "none"])
def test_sample_stage_bounds_x_hat_as_the_stage_asks(full_cascade, monkeypatch, mode):
    """The x_hat_fn sample_stage hands the sampler: rescaled, clipped or raw [IMG §2.3]."""
    stage = dataclasses.replace(full_cascade.cfg.stage("base"), thresholding=mode)
    model, diffusion = full_cascade.models["base"], full_cascade.cfg.diffusion
    emb, mask = full_cascade.encoder.encode(["a red circle moving left"])
    seen = {}

    def record(x_hat_fn, shape, **kwargs):
        seen["fn"] = x_hat_fn
        return torch.zeros(shape)

    monkeypatch.setattr(cascade_lib.samplers, "sample", record)
    z = 3.0 * torch.randn(1, 3, stage.num_frames, stage.height, stage.width)
    logsnr = torch.full((1,), 2.0)
    raw = guidance.guided_x_hat_fn(model, emb, mask, 30.0, threshold=None)(z, logsnr)
    assert raw.abs().max() > 1.0  # w = 30 overshoots, so each mode shows
    expected = {
        "dynamic": guidance.dynamic_threshold(raw, diffusion.threshold_percentile),
        "static": raw.clamp(-1.0, 1.0),
        "none": raw,
    }[mode]
    cascade_lib.sample_stage(model, stage, diffusion, emb, mask, guidance_w=30.0, steps=2)
    torch.testing.assert_close(seen["fn"](z, logsnr), expected, atol=1e-5, rtol=0)
    if mode == "dynamic":  # no guidance, nothing to rescale: the raw conditional x_hat
        cascade_lib.sample_stage(model, stage, diffusion, emb, mask, guidance_w=0.0, steps=2)
        cond = guidance.guided_x_hat_fn(model, emb, mask, 0.0, threshold=None)(z, logsnr)
        torch.testing.assert_close(seen["fn"](z, logsnr), cond, atol=1e-5, rtol=0)


def test_sample_stage_names_text_of_another_batch_in_the_callers_terms(full_cascade):
    """Not the U-Net's doubled guided batch: the caller's B, before anything runs."""
    base = full_cascade.cfg.stages[0]
    emb, mask = full_cascade.encoder.encode(["a red circle moving left", "a blue square"])
    with pytest.raises(ValueError, match=r"text_emb \(2, \d+, 32\) and text_mask \(1, \d+\)"):
        cascade_lib.sample_stage(
            full_cascade.models["base"], base, full_cascade.cfg.diffusion, emb, mask[:1]
        )


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: c.masked_fill(c > 0.5, float("nan")), r"spans \[.*nan"),
        (lambda c: ((c + 1) * 127.5).to(torch.uint8), "is torch.uint8; allowed: floats"),
        (lambda c: (c + 1) * 127.5, r"spans \[0, 255\]; allowed: values in \[-1, 1\]"),
        (lambda c: c[0], r"add the batch axis \(video\[None\] for one\)"),  # "3 videos"
    ],
)
def test_sample_stage_refuses_a_cond_video_outside_minus_one_to_one(full_cascade, change, says):
    """NaN, 8-bit or 0..255 input would come out as a NaN or washed-out video, not an error."""
    stage = full_cascade.cfg.stage("tsr")
    base = full_cascade.cfg.stages[0]
    emb, mask = full_cascade.encoder.encode(["a red circle moving left"])
    cond = torch.linspace(-1, 1, 3 * base.num_frames * base.height * base.width)
    cond = cond.reshape(1, 3, base.num_frames, base.height, base.width)
    model, diffusion = full_cascade.models["tsr"], full_cascade.cfg.diffusion
    with pytest.raises(ValueError, match=says):
        cascade_lib.sample_stage(model, stage, diffusion, emb, mask, cond_video=change(cond))
    with pytest.raises(ValueError, match="aug_logsnr=nan"):
        cascade_lib.sample_stage(
            model, stage, diffusion, emb, mask, cond_video=cond, aug_logsnr=float("nan"), steps=1
        )
    out = cascade_lib.sample_stage(model, stage, diffusion, emb, mask, cond_video=cond, steps=1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("stage_sampler", "stage_gamma", "expected"),
    [
        (None, None, ("ddim", 0.3)),
        ("ancestral", None, ("ancestral", 0.3)),
        ("ancestral", 0.0, ("ancestral", 0.0)),
    ],
)
def test_sample_stage_takes_sampler_and_gamma_from_the_stage_else_the_diffusion_config(
    full_cascade, monkeypatch, stage_sampler, stage_gamma, expected
):
    base = full_cascade.cfg.stage("base")
    stage = dataclasses.replace(base, sampler=stage_sampler, gamma=stage_gamma)
    diffusion = dataclasses.replace(full_cascade.cfg.diffusion, sampler="ddim", gamma=0.3)
    emb, mask = full_cascade.encoder.encode(["a red circle moving left"])
    seen = {}

    def record(x_hat_fn, shape, **kwargs):
        seen.update(kwargs)
        return torch.zeros(shape)

    monkeypatch.setattr(cascade_lib.samplers, "sample", record)
    model = full_cascade.models["base"]
    cascade_lib.sample_stage(model, stage, diffusion, emb, mask, steps=2)
    assert (seen["sampler"], seen["gamma"]) == expected


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), True, "0"])
def test_a_stage_gamma_outside_0_1_is_refused(gamma):
    stage = configs.ci().stage("ssr1")
    says = "must be a number" if isinstance(gamma, bool | str) else r"must be in \[0, 1\]"
    with pytest.raises(ValueError, match=rf"StageConfig\('ssr1'\)\.gamma=.* {says}"):
        dataclasses.replace(stage, gamma=gamma)


def test_a_model_built_from_another_unet_config_is_refused_before_it_could_be_saved(tmp_path):
    """save_pretrained records the cascade's config beside the weights: a model of another
    shape would save fine and never load again."""
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    wider = VideoUNet(dataclasses.replace(base.unet, base_channels=2 * base.unet.base_channels))
    with pytest.raises(ValueError, match=r"models\['base'\] was built from another UNetConfig"):
        cascade_lib.Cascade(cfg, {"base": wider})
    right = cascade_lib.Cascade(cfg, {"base": VideoUNet(base.unet)})
    right.save_pretrained(tmp_path / "c")
    assert cascade_lib.Cascade.from_pretrained(tmp_path / "c").models["base"].cfg == base.unet


def test_sample_stage_refuses_inputs_that_would_fail_deep_or_broadcast_silently():
    """A bf16 model (mixed dtypes deep in a layer), NaN text (a NaN video), and augmentation
    noise of another shape (it broadcast: one value per channel, or channel 0 noised alone)."""
    cfg = configs.preset("ci")
    base, tsr = cfg.stage("base"), cfg.stage("tsr")
    encoder = text.build_encoder(cfg.text)
    emb, mask = encoder.encode(["a red circle moving left", "a blue square"])
    run = dict(steps=1, generator=torch.Generator().manual_seed(0))
    model = VideoUNet(base.unet).eval()
    with pytest.raises(ValueError, match="weights are torch.bfloat16; sampling takes float32"):
        cascade_lib.sample_stage(model.to(torch.bfloat16), base, cfg.diffusion, emb, mask, **run)
    with pytest.raises(ValueError, match="text_emb holds NaN"):
        cascade_lib.sample_stage(model.float(), base, cfg.diffusion, emb * math.nan, mask, **run)
    low = torch.zeros(2, 3, base.num_frames, base.height, base.width)
    want = (2, 3, tsr.num_frames, tsr.height, tsr.width)
    model = VideoUNet(tsr.unet).eval()
    for bad in ((2, 3, 1, 1, 1), (1, 1, *want[2:]), (2, 3, *low.shape[2:])):
        with pytest.raises(
            ValueError, match=rf"aug_noise {re.escape(str(bad))}: .* {re.escape(str(want))}"
        ):
            cascade_lib.sample_stage(
                model,
                tsr,
                cfg.diffusion,
                emb,
                mask,
                cond_video=low,
                aug_noise=torch.randn(bad),
                **run,
            )
    out = cascade_lib.sample_stage(
        model, tsr, cfg.diffusion, emb, mask, cond_video=low, aug_noise=torch.randn(want), **run
    )
    assert out.shape == want


def test_an_encoder_that_is_not_one_or_of_another_width_is_refused(ci_cascade):
    cfg, models = ci_cascade.cfg, dict(ci_cascade.models.items())
    with pytest.raises(ValueError, match="encoder='minilm' is not a text encoder"):
        Cascade(cfg, models, "minilm")  # a name: str.encode would have run on the prompts
    wider = text.TinyT5Encoder(dataclasses.replace(cfg.text, dim=2 * cfg.text.dim))
    with pytest.raises(
        ValueError, match=rf"{2 * cfg.text.dim}-wide embeddings; .* text.dim={cfg.text.dim}"
    ):
        Cascade(cfg, models, wider)
    assert Cascade(cfg, models, ci_cascade.encoder).encoder is ci_cascade.encoder


def test_a_flipped_bit_in_cascade_json_is_refused_and_a_manifest_without_a_digest_loads(
    ci_cascade, tmp_path
):
    """The weights were verified but their config was not: a flipped bit in a guidance
    weight or a step count changed every video unseen."""
    ci_cascade.save_pretrained(tmp_path)
    path = tmp_path / "cascade.json"
    good = path.read_text()
    assert len(json.loads(good)["digest"]) == 64
    assert '"guidance_w": 1.0' in good
    path.write_text(good.replace('"guidance_w": 1.0', '"guidance_w": 3.0', 1))
    with pytest.raises(ValueError, match="does not match its digest: damaged, or edited by hand"):
        Cascade.from_pretrained(tmp_path)
    old = json.loads(good)
    del old["digest"]  # as saved before digests were kept
    path.write_text(json.dumps(old))
    assert Cascade.from_pretrained(tmp_path).cfg == ci_cascade.cfg


def test_sample_stage_runs_in_eval_mode_and_gives_the_model_its_mode_back():
    """A model left in train mode with dropout gave two videos for one seed (and drew from
    torch's global generator); generate left every model in eval mode afterwards."""
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    emb, mask = text.build_encoder(cfg.text).encode(["a red circle moving left"])
    torch.manual_seed(0)
    model = VideoUNet(dataclasses.replace(base.unet, dropout=0.5)).train()

    def draw():
        g = torch.Generator().manual_seed(0)
        return cascade_lib.sample_stage(model, base, cfg.diffusion, emb, mask, steps=3, generator=g)

    model.text_norm.eval()  # a caller's mixed modes come back as they were
    first, before = draw(), torch.get_rng_state()
    assert torch.equal(draw(), first) and torch.equal(torch.get_rng_state(), before)
    assert model.training and not model.text_norm.training
    assert all(m.training for m in model.modules() if m is not model.text_norm)
    stages = {s.name: VideoUNet(s.unet).train() for s in cfg.stages[:2]}
    two = Cascade(cfg, stages)
    two.generate(["a red circle moving left"], seed=0, steps=1)
    assert all(m.training for m in two.models.values())


def test_step_noise_without_a_generator_comes_from_the_cpu_generator_on_every_device():
    """With generator=None the noise was drawn from the model device's own global generator,
    so torch.manual_seed gave other videos on a GPU than on the CPU."""
    torch.manual_seed(0)
    on_cpu, after_cpu = samplers.randn((2, 3), None, torch.float32, "cpu"), torch.get_rng_state()
    torch.manual_seed(0)
    on_meta = samplers.randn((2, 3), None, torch.float32, "meta")  # stands for another device
    assert on_meta.device.type == "meta"
    assert torch.equal(torch.get_rng_state(), after_cpu)  # drawn from the CPU's, then moved
    assert on_cpu.shape == on_meta.shape


def test_sample_stage_refuses_wrong_kinds_of_input_and_takes_half_precision_text():
    cfg = configs.preset("ci")
    base, ssr = cfg.stage("base"), cfg.stage("ssr1")
    emb, mask = text.build_encoder(cfg.text).encode(["a red circle moving left"])
    model = VideoUNet(base.unet).eval()
    run = dict(steps=1, generator=torch.Generator().manual_seed(0))
    d = cfg.diffusion
    want = cascade_lib.sample_stage(model, base, d, emb, mask, **run)
    run["generator"] = torch.Generator().manual_seed(0)
    as_double = cascade_lib.sample_stage(model, base, d, emb.double(), mask, **run)
    torch.testing.assert_close(as_double, want)  # cast to the U-Net's float32
    with pytest.raises(TypeError, match="generator=0: give a torch.Generator"):
        cascade_lib.sample_stage(model, base, d, emb, mask, steps=1, generator=0)
    with pytest.raises(TypeError, match="text_emb must be a torch.Tensor"):
        cascade_lib.sample_stage(model, base, d, emb.numpy(), mask, steps=1)
    with pytest.raises(ValueError, match="holds no prompts"):
        cascade_lib.sample_stage(model, base, d, emb[:0], mask[:0], steps=1)
    with pytest.raises(ValueError, match="base stage: it takes no aug_noise, aug_logsnr"):
        cascade_lib.sample_stage(
            model, base, d, emb, mask, steps=1, aug_noise=torch.zeros(7), aug_logsnr=math.nan
        )
    with pytest.raises(ValueError, match="noise holds NaN"):
        cascade_lib.sample_stage(
            model, base, d, emb, mask, steps=1, noise=torch.full((1, 3, 4, 8, 8), math.nan)
        )
    with pytest.raises(ValueError, match=r"guidance_w=1e\+38 must be a number from 0 .* to 1000"):
        cascade_lib.sample_stage(model, base, d, emb, mask, steps=1, guidance_w=1e38)
    sr = VideoUNet(ssr.unet).eval()
    for low in (torch.zeros(1, 3, 8, 8, 4), torch.zeros(1, 3, 8, 16, 16)):  # 2 x 4; 1 x 1
        with pytest.raises(ValueError, match="divided by one whole factor k >= 2 on both axes"):
            cascade_lib.sample_stage(sr, ssr, d, emb, mask, cond_video=low, steps=1)


def test_a_non_finite_video_is_an_error_where_it_is_made():
    """clamp(-1, 1) passed NaN on as a video; sample_stage now names the stage."""
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    emb, mask = text.build_encoder(cfg.text).encode(["a red circle moving left"])
    model = VideoUNet(base.unet).eval()
    with torch.no_grad():
        model.out_conv.bias.fill_(math.nan)  # damaged weights
    stage = dataclasses.replace(base, thresholding="none")
    with pytest.raises(FloatingPointError, match="stage 'base' produced NaN or infinite values"):
        cascade_lib.sample_stage(model, stage, cfg.diffusion, emb, mask, steps=2)


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (cascade_lib.check_trained_on, {"base": "toy", "tsr": {"videos": "/v"}}, {"base": "web"}),
        (cascade_lib.check_teachers, {"base": "ab" * 32}, {"base": "AB" * 32}),
        (cascade_lib.check_teachers, {"tsr": "0" * 64}, {"ssr9": "0" * 64}),  # no such stage
        (cascade_lib.check_teachers, {"base": "0" * 64}, ["base"]),
    ],
)
def test_a_cascades_per_stage_records_are_checked(check, good, bad):
    stages = ["base", "tsr"]
    assert check(good, stages) == good and check(None, stages) == {}
    with pytest.raises(ValueError, match=r"for stages of the cascade \['base', 'tsr'\], or None"):
        check(bad, stages)


def test_a_student_under_an_undistilled_stage_config_is_sampled_with_a_warning(ci_cascade):
    """Sampled with its teacher's stage config, a distilled student ran the teacher's steps
    and sampler and took any w, past the range it learnt, without a word. (A warning, not an
    error: distilled cascade folders of an older ivref hold such configs and sample well.)"""
    from ivref import distill

    student = distill.with_guidance_embedding(ci_cascade.models["base"]).eval()
    emb, mask = ci_cascade.encoder.encode(["a red circle moving left"])
    teachers = ci_cascade.cfg.stage("base")
    with pytest.warns(UserWarning, match=r"configured as an undistilled one .* takes any w"):
        cascade_lib.sample_stage(
            student, teachers, ci_cascade.cfg.diffusion, emb, mask, guidance_w=9.0
        )
    own = distill.student_config(ci_cascade.cfg, "base", 4).stage("base")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own config: no warning
        cascade_lib.sample_stage(student, own, ci_cascade.cfg.diffusion, emb, mask)
