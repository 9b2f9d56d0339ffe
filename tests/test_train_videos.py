"""``ivref train --videos``: runs on a folder of videos, recorded for --resume, and resumed
exactly (a file dropped mid-run stays dropped)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from ivref import cli, configs, objectives, text, train, train_videos, video, video_folder


def _clip(path, n=16, fps=12.0, level=0):
    """n frames of 16x16 gray, frame k at level + 12 k."""
    frames = (level + 12 * np.arange(n, dtype=np.uint8))[:, None, None, None]
    video.write_video(path, np.broadcast_to(frames, (n, 16, 16, 3)).copy(), fps=fps)


def _folder(root, names=("a", "b", "c")):
    root.mkdir()
    for k, name in enumerate(names):
        _clip(root / f"{name}.mp4", level=10 * k)
    rows = "".join(f"{name}.mp4,clip {name}\n" for name in names)
    (root / "index.csv").write_text("path,caption\n" + rows)
    return root


def _train(out, *extra):
    argv = ["train", "--scale", "ci", "--out", str(out), "--batch-size", "2", *extra]
    return cli.main([*argv, "--checkpoint-every", "1"])


def _losses(out):
    return [row["loss"] for row in train.read_log(out)]


def test_a_run_on_videos_records_them_and_resumes_exactly_without_flags(tmp_path, capsys):
    videos = _folder(tmp_path / "videos")
    assert _train(tmp_path / "straight", "--videos", str(videos), "--steps", "3") == 0
    out = tmp_path / "run"
    assert _train(out, "--videos", str(videos), "--steps", "2") == 0
    assert json.loads((out / train_videos.VIDEOS).read_text()) == {
        "videos": str(videos.resolve()),
        "index": str((videos / "index.csv").resolve()),
        "fit": "crop",
    }
    assert _train(out, "--resume", "--steps", "3") == 0
    assert _losses(out) == _losses(tmp_path / "straight")  # the same clips, step for step
    moved = videos.rename(tmp_path / "moved")
    capsys.readouterr()
    assert _train(out, "--resume", "--steps", "4") == 2
    assert "are gone; if they moved, give their new place with --videos" in capsys.readouterr().err
    assert _train(out, "--resume", "--steps", "4", "--videos", str(moved)) == 0
    assert "the videos are now in" in capsys.readouterr().err
    assert json.loads((out / train_videos.VIDEOS).read_text())["videos"] == str(moved.resolve())
    assert [row["step"] for row in train.read_log(out)] == [1, 2, 3, 4]


@pytest.mark.parametrize("stage", ["tsr", "ssr2"])
def test_super_resolution_stages_train_on_videos_too(tmp_path, stage):
    """SR stages make their low-resolution input from the clip itself (frames skipped, or
    downsampled), so any folder of videos trains every stage; ssr2 on random crops."""
    videos = _folder(tmp_path / "videos")
    out = tmp_path / "run"
    flags = ["--stage", stage, "--videos", str(videos), "--decode-workers", "2"]
    val = ["--val-index", str(videos / "index.csv"), "--eval-every", "2"]
    with pytest.warns(UserWarning, match="also in the training index"):
        assert _train(out, *flags, *val, "--steps", "2") == 0
    assert [row["step"] for row in train.read_log(out)] == [1, 2]
    assert all(math.isfinite(loss) for loss in _losses(out))
    assert math.isfinite(train.read_log(out)[-1]["eval_val_loss"])  # SR inputs made alike


def test_a_prefetching_run_resumes_on_the_clips_of_a_plain_one(tmp_path):
    """--prefetch and --decode-workers change when clips are decoded, never which."""
    videos = _folder(tmp_path / "videos")
    assert _train(tmp_path / "plain", "--videos", str(videos), "--steps", "3") == 0
    out, fast = tmp_path / "run", ["--prefetch", "--decode-workers", "2"]
    assert _train(out, "--videos", str(videos), *fast, "--steps", "2") == 0
    assert _train(out, "--resume", *fast, "--steps", "3") == 0
    assert _losses(out) == _losses(tmp_path / "plain")


def test_held_out_videos_log_a_validation_loss_that_leaves_training_as_it_was(tmp_path):
    """--eval-every scored toy-world captions only, so a run on videos had no held-out
    number; the validation loss draws from its own fixed generator."""
    videos = _folder(tmp_path / "videos", names=("a", "b", "c", "d"))
    (videos / "val.csv").write_text("path,caption\nd.mp4,clip d\nc.mp4,clip c\n")
    (videos / "index.csv").write_text("path,caption\na.mp4,clip a\nb.mp4,clip b\n")
    plain, evaluated, again = tmp_path / "plain", tmp_path / "evaluated", tmp_path / "again"
    assert _train(plain, "--videos", str(videos), "--steps", "3") == 0
    val = ["--val-index", str(videos / "val.csv"), "--eval-every", "1"]
    assert _train(evaluated, "--videos", str(videos), *val, "--steps", "3") == 0
    assert _train(again, "--videos", str(videos), *val, "--steps", "2") == 0
    assert _train(again, "--resume", *val, "--steps", "3") == 0
    assert _losses(evaluated) == _losses(plain)  # the training streams are untouched
    scores = [row["eval_val_loss"] for row in train.read_log(evaluated)]
    assert len(scores) == 3 and all(math.isfinite(v) and v > 0 for v in scores)
    assert [row["eval_val_loss"] for row in train.read_log(again)] == scores  # deterministic
    assert len(set(scores)) == 3  # ... and it follows the weights


def test_a_resume_keeps_evaluating_its_held_out_videos_where_they_moved_or_stops_when_told(
    tmp_path, capsys
):
    """The run's --val-index is kept for --resume (run_flags.json): a folder that moved takes
    its held-out index along, --eval-every 0 stops the evaluation without asking for the
    index, and a resume that fails keeps the run's flags as they were."""
    from ivref import run_flags

    videos = _folder(tmp_path / "videos", names=("a", "b", "c", "d"))
    (videos / "val.csv").write_text("path,caption\nd.mp4,clip d\n")
    (videos / "index.csv").write_text("path,caption\na.mp4,clip a\nb.mp4,clip b\n")
    out = tmp_path / "run"
    val = ["--val-index", str(videos / "val.csv"), "--eval-every", "1"]
    assert _train(out, "--videos", str(videos), *val, "--steps", "1") == 0
    moved = tmp_path / "moved"
    shutil.move(videos, moved)
    capsys.readouterr()  # a plain resume is told the videos moved, not of a --val-index
    assert _train(out, "--resume", "--steps", "2") == 2  # it never gave
    assert "are gone; if they moved, give their new place with --videos" in (
        capsys.readouterr().err
    )
    kept = (out / train_videos.VIDEOS).read_bytes()
    (out / train_videos.VIDEOS).unlink()  # a lost record: the kept --val-index says why
    assert _train(out, "--resume", "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "the run evaluates held-out videos (--val-index" in err and "is gone" in err
    (out / train_videos.VIDEOS).write_bytes(kept)
    assert _train(out, "--resume", "--videos", str(moved), "--steps", "2") == 0
    assert [r["step"] for r in train.read_log(out) if "eval_val_loss" in r] == [1, 2]
    assert run_flags.read(out)["val_index"] == str(moved.resolve() / "val.csv")
    capsys.readouterr()
    assert _train(out, "--resume", "--eval-every", "0", "--steps", "3") == 0
    assert "--eval-every: 1 -> 0" in capsys.readouterr().err
    assert [r["step"] for r in train.read_log(out) if "eval_val_loss" in r] == [1, 2]
    assert run_flags.read(out)["val_index"] is None  # nothing evaluated: nothing to keep
    before = (out / run_flags.FILE).read_text()
    (moved / "index.csv").write_text("path,caption\nc.mp4,another clip\n")
    argv = ["--resume", "--keep-checkpoints", "5", "--steps", "4"]
    assert _train(out, *argv) == 2  # the index changed: the checkpoint refuses it
    assert "changed since it was saved" in capsys.readouterr().err
    assert (out / run_flags.FILE).read_text() == before


def test_the_validation_loss_does_not_depend_on_the_batch_and_bad_held_out_videos_fail_first(
    tmp_path, capsys, monkeypatch
):
    """Clips were evaluated in groups of the local batch, one generator a group: another
    --batch-size or process count gave another number for the same weights. A held-out
    index of broken files failed only at the first evaluation, after a checkpoint's worth
    of training was lost. Clips past KEPT_BYTES are decoded at each evaluation (all were
    kept in memory: 1.5 GB a clip at the paper's last stage), to the same number."""
    videos = _folder(tmp_path / "videos", names=("a", "b", "c", "d"))
    (videos / "val.csv").write_text("path,caption\nc.mp4,clip c\nd.mp4,clip d\n")
    (videos / "index.csv").write_text("path,caption\na.mp4,clip a\nb.mp4,clip b\n")
    cfg = configs.preset("ci")
    record = {"videos": str(videos), "index": str(videos / "index.csv"), "fit": "crop"}
    evaluate = train_videos.validation_evaluator(
        record, videos / "val.csv", cfg.stage("base"), None
    )
    trainer = train.Trainer(cfg, "base", tmp_path / "t", batch_size=4, progress=False)
    numbers = set()
    for local in (4, 2, 1):
        trainer.local_batch_size = local
        numbers.add(evaluate(trainer)["val_loss"])
    assert len(numbers) == 1
    monkeypatch.setattr(train_videos, "KEPT_BYTES", 1)  # none kept: each decoded again
    again = train_videos.validation_evaluator(record, videos / "val.csv", cfg.stage("base"), None)
    assert {again(trainer)["val_loss"]} == numbers
    (videos / "d.mp4").unlink()
    with pytest.raises(ValueError, match="d.mp4 decoded when training started and does not now"):
        again(trainer)
    (videos / "val2.csv").write_text("path,caption\n./a.mp4,clip a\n")  # a.mp4, spelt anew
    with pytest.warns(UserWarning, match=r"1 held-out file\(s\) .* also in the training index"):
        train_videos.validation_evaluator(record, videos / "val2.csv", cfg.stage("base"), None)
    (videos / "broken.csv").write_text("path,caption\nmissing.mp4,gone\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipping 'missing.mp4'"):
        assert _train(out, "--videos", str(videos), "--val-index", str(videos / "broken.csv"),
                      "--eval-every", "1", "--steps", "2") == 2  # fmt: skip
    assert "--val-index" in (err := capsys.readouterr().err) and "no usable videos" in err
    assert not (out / "log.jsonl").exists()  # before any step


def test_force_removes_the_old_runs_videos_record_but_keeps_the_run_for_bad_videos(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert _train(out, "--videos", str(_folder(tmp_path / "videos")), "--steps", "1") == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.csv").write_text("path,caption\nmissing.mp4,a clip\n")
    with pytest.warns(UserWarning, match="skipping 'missing.mp4'"):
        assert _train(out, "--steps", "1", "--force", "--videos", str(broken)) == 2
    assert "no usable videos" in capsys.readouterr().err
    assert (out / train_videos.VIDEOS).exists() and train.read_log(out)  # --force deleted nothing
    assert _train(out, "--steps", "1", "--force") == 0  # now on the toy world
    assert not (out / train_videos.VIDEOS).exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--index", "x.csv"], "--index is for --videos"),
     (["--fit", "squash"], "--fit is for --videos"),
     (["--decode-workers", "2"], "--decode-workers is for --videos"),
     (["--prefetch"], "--prefetch is for --videos"),
     (["--videos", "missing"], "--videos 'missing' does not exist: give the folder of videos"),
     (["--videos", "{videos}", "--eval-every", "1"], "give their index with --val-index FILE"),
     (["--videos", "{videos}", "--val-index", "{videos}/index.csv"], "--val-index is read every"),
     (["--val-index", "x.csv"], "--val-index is for --videos"),
     (["--videos", "{videos}", "--val-index", "val.txt", "--eval-every", "1"],
      "--val-index 'val.txt': give a .csv"),
     (["--videos", "{videos}", "--val-index", "{videos}/index.csv", "--eval-every", "1",
       "--eval-steps", "4"], "--eval-steps sets the toy world's caption scores"),
     (["--videos", "{empty}"], "holds neither of index.csv and index.jsonl"),
     (["--videos", "{videos}", "--index", "none.csv"], "--index 'none.csv' does not exist"),
     (["--videos", "{videos}", "--index", "list.txt"], "give a .csv (path,caption) or .jsonl")],
)  # fmt: skip
def test_bad_video_flags_are_refused_before_the_run_folder_is_made(
    tmp_path, monkeypatch, capsys, flags, message
):
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path / "videos")
    (tmp_path / "empty").mkdir()
    flags = [f.format(videos="videos", empty="empty") for f in flags]
    assert _train(tmp_path / "run", "--steps", "1", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_flags_that_name_other_videos(tmp_path, capsys):
    toy, on_videos = tmp_path / "toy", tmp_path / "on_videos"
    videos = _folder(tmp_path / "videos")
    assert _train(toy, "--steps", "1") == 0
    assert _train(on_videos, "--videos", str(videos), "--steps", "1") == 0
    capsys.readouterr()
    assert _train(toy, "--resume", "--steps", "2", "--videos", str(videos)) == 2
    assert "holds no state of a dataset like this run's VideoTextFolder" in capsys.readouterr().err
    assert not (toy / train_videos.VIDEOS).exists()  # nothing recorded for a refused resume
    assert _train(on_videos, "--resume", "--steps", "2", "--fit", "squash") == 2
    assert "the run trains with --fit crop" in capsys.readouterr().err
    assert _train(on_videos, "--resume", "--steps", "2", "--eval-every", "1") == 2
    assert "give their index with --val-index FILE" in capsys.readouterr().err
    (on_videos / train_videos.VIDEOS).write_text('{"videos": 3}')
    assert _train(on_videos, "--resume", "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "is damaged (not an object of strings" in err
    assert "give them again with --videos FOLDER" in err and "--force" not in err
    assert _train(on_videos, "--resume", "--steps", "2", "--videos", str(videos)) == 0
    assert json.loads((on_videos / train_videos.VIDEOS).read_text())["fit"] == "crop"


def test_a_lost_record_refuses_the_toy_world_and_takes_the_videos_again(tmp_path, capsys):
    """Before, a video run whose record was lost resumed on the toy world without a word."""
    videos = _folder(tmp_path / "videos")
    assert _train(tmp_path / "straight", "--videos", str(videos), "--steps", "3") == 0
    out = tmp_path / "run"
    assert _train(out, "--videos", str(videos), "--steps", "2") == 0
    (out / train_videos.VIDEOS).unlink()
    capsys.readouterr()
    assert _train(out, "--resume", "--steps", "3") == 2
    assert "give the run its videos (ivref train --resume --videos FOLDER" in (
        capsys.readouterr().err
    )
    squash = ["--resume", "--steps", "3", "--videos", str(videos), "--fit", "squash"]
    assert _train(out, *squash) == 2  # the same files, other clips: the record said crop
    assert "the saved data state cut its clips with fit='crop'" in capsys.readouterr().err
    assert _train(out, "--resume", "--steps", "3", "--videos", str(videos)) == 0
    assert _losses(out) == _losses(tmp_path / "straight")
    assert json.loads((out / train_videos.VIDEOS).read_text())["videos"] == str(videos.resolve())
    assert _train(out, "--resume", "--steps", "4", "--new-streams") == 0  # the record is back


def test_new_streams_go_from_the_toy_world_onto_videos_but_not_back(tmp_path, capsys):
    videos, toy = _folder(tmp_path / "videos"), tmp_path / "toy"
    assert _train(toy, "--steps", "1") == 0
    flags = ["--resume", "--new-streams", "--steps", "2"]
    assert _train(toy, *flags, "--videos", str(videos)) == 0  # a toy-world start, then videos
    (toy / train_videos.VIDEOS).unlink()
    capsys.readouterr()
    assert _train(toy, *flags[:-1], "3") == 2
    assert "but this run's dataset is ToyVideos" in capsys.readouterr().err


def test_a_record_left_by_a_run_that_never_stepped_does_not_hold_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    train_videos.write(out, {"videos": "x", "index": "x/index.csv", "fit": "crop"})
    assert _train(out, "--steps", "1") == 0  # a toy-world run: the stale record goes
    assert not (out / train_videos.VIDEOS).exists()


def test_a_moved_folder_keeps_an_index_that_lives_elsewhere(tmp_path):
    videos = _folder(tmp_path / "videos")
    index = (videos / "index.csv").rename(tmp_path / "index.csv")
    out = tmp_path / "run"
    assert _train(out, "--videos", str(videos), "--index", str(index), "--steps", "1") == 0
    moved = videos.rename(tmp_path / "moved")
    assert _train(out, "--resume", "--steps", "2", "--videos", str(moved)) == 0
    saved = json.loads((out / train_videos.VIDEOS).read_text())
    assert saved["videos"] == str(moved.resolve()) and saved["index"] == str(index.resolve())


class _StatefulToy:
    """The toy world with a state of its own, to check what a checkpoint may hold."""

    def __init__(self, state):
        self.toy, self.state = objectives.toy_dataset(configs.preset("ci").stage("base")), state
        self.generator = self.toy.generator

    def sample(self, batch_size, generator=None):
        return self.toy.sample(batch_size, generator)

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize(
    ("state", "error", "message"),
    [({"a/b": torch.zeros(1)}, ValueError, "allowed: any other names without '/'"),
     ({"n": 3}, TypeError, "gives {'data.n': 'int'}: a checkpoint saves tensors only")],
)  # fmt: skip
def test_a_datasets_state_is_checked_when_the_trainer_is_built(tmp_path, state, error, message):
    """A name with '/' was dropped on resume (read as another process's); an int failed
    only when the first checkpoint was written, after training had begun."""
    with pytest.raises(error, match=message):
        train.Trainer(configs.preset("ci"), "base", tmp_path, dataset=_StatefulToy(state))


def _decode_fails_for(monkeypatch, name):
    """``name`` keeps a readable header but fails to decode (a file damaged in its middle)."""
    real = video_folder.decode_from

    def decode_from(path, *args):
        if name in str(path):
            raise RuntimeError("ffmpeg exited with code 1")
        return real(path, *args)

    monkeypatch.setattr(video_folder, "decode_from", decode_from)


def test_a_file_dropped_mid_run_stays_dropped_on_resume(tmp_path, monkeypatch):
    """Before, a resume probed the folder anew and drew among all its files again, so the
    clips after the checkpoint differed from those of the run without a stop."""
    videos = _folder(tmp_path / "videos")
    _decode_fails_for(monkeypatch, "b.mp4")
    cfg, encoder = configs.preset("ci"), text.build_encoder(configs.preset("ci").text)
    base = cfg.stage("base")

    def trainer(out, **kwargs):
        clips = video_folder.VideoTextFolder(
            videos, videos / "index.csv", base.num_frames, base.width, base.height, base.fps
        )
        return train.Trainer(cfg, "base", out, dataset=clips, text_encoder=encoder,
                             batch_size=2, progress=False, **kwargs)  # fmt: skip

    with pytest.warns(UserWarning, match="skipping 'b.mp4'"):
        straight = trainer(tmp_path / "straight")
        rows = straight.fit(6)
        first = trainer(tmp_path / "run", checkpoint_every=3)
        first.fit(3)
    assert [path for path, _ in first.data.skipped] == ["b.mp4"]  # dropped before the save
    resumed = trainer(tmp_path / "run")
    assert len(resumed.data) == 3  # probed anew: b's header reads
    assert resumed.resume() == 3 and len(resumed.data) == 2
    assert [r["loss"] for r in resumed.fit(6)] == [r["loss"] for r in rows[3:]]


def test_a_folder_at_another_frame_rate_than_the_stage_is_refused(tmp_path):
    """Its clips have the stage's shape, so a folder made at 24 fps for a 3 fps stage trained
    on motion 8x too fast, and a later resume blamed the folder for having changed."""
    videos = _folder(tmp_path / "videos")
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    clips = video_folder.VideoTextFolder(
        videos, videos / "index.csv", base.num_frames, base.width, base.height, 2 * base.fps
    )
    said = f"the dataset makes clips at {2 * base.fps:g} fps; stage 'base' trains on "
    said += f"{base.num_frames} frames at {base.fps:g} fps"
    with pytest.raises(ValueError, match=said):
        train.Trainer(cfg, "base", tmp_path / "run", dataset=clips, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_data_state_refuses_a_changed_folder_and_follows_a_moved_one(tmp_path, monkeypatch):
    videos = _folder(tmp_path / "videos")
    clips = video_folder.VideoTextFolder(videos, videos / "index.csv", 4, 8, 8, fps=3.0)
    _decode_fails_for(monkeypatch, "b.mp4")
    with pytest.warns(UserWarning, match="skipping 'b.mp4'"):
        assert clips.load(1) is None
    monkeypatch.undo()
    clips.sample(8, torch.Generator().manual_seed(0))  # draws b, and drops it
    state = clips.state_dict()
    assert state["items"].tolist() == [[0, 16], [2, 16]]
    moved = shutil.copytree(videos, tmp_path / "elsewhere")
    again = video_folder.VideoTextFolder(moved, moved / "index.csv", 4, 8, 8, fps=3.0)
    again.load_state_dict(state)
    assert [item[1] for item in again.items] == ["clip a", "clip c"]
    assert again.items[1][0] == moved / "c.mp4"
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(clips.sample(4, g1)[0], again.sample(4, g2)[0])
    with open(moved / "index.csv", "a") as index:
        index.write("a.mp4,a new caption\n")
    changed = video_folder.VideoTextFolder(moved, moved / "index.csv", 4, 8, 8, fps=3.0)
    with pytest.raises(ValueError, match="changed since it was saved .* new streams"):
        changed.load_state_dict(state)
    with pytest.raises(ValueError, match="holds 'items'"):
        changed.load_state_dict({"items": torch.zeros(3)})


def test_a_cascade_records_what_its_stages_trained_on_and_its_commands_say_so(tmp_path, capsys):
    """A cascade exported from a run on videos did not say so: `ivref distill` without
    --videos distilled it on the toy world, and `ivref evaluate` scored it on toy captions,
    both without a word. cascade.json now records each stage's data (trained_on)."""
    import json

    from ivref.cascade import Cascade

    videos = _folder(tmp_path / "videos")
    assert _train(tmp_path / "on-videos", "--videos", str(videos), "--steps", "1") == 0
    assert _train(tmp_path / "on-toy", "--steps", "1") == 0
    for run, want in (("on-videos", {"videos": str(videos.resolve())}), ("on-toy", "toy")):
        out = tmp_path / f"cascade-{run}"
        assert cli.main(["export", str(tmp_path / run), "--out", str(out)]) == 0
        assert json.loads((out / "cascade.json").read_text())["trained_on"] == {"base": want}
        assert Cascade.from_pretrained(out).trained_on == {"base": want}
    capsys.readouterr()
    quick = ["--split", "heldout", "--steps", "1"]
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "cascade-on-toy"), *quick]) == 0
    assert "were trained on videos" not in capsys.readouterr().err
    for where in ("cascade-on-videos", "on-videos"):  # the cascade, and the run itself
        assert cli.main(["evaluate", "--checkpoint", str(tmp_path / where), *quick]) == 0
        assert "note: stage(s) ['base'] were trained on videos" in capsys.readouterr().err
    argv = ["distill", "--stage", "base", "--from", str(tmp_path / "cascade-on-videos")]
    argv += ["--guided-steps", "1", "--halving-steps", "1", "--batch-size", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "d")]) == 0
    said = capsys.readouterr().err
    assert f"was trained on the videos in {str(videos.resolve())!r}; without --videos" in said
    assert cli.main([*argv, "--out", str(tmp_path / "d2"), "--videos", str(videos)]) == 0
    assert "without --videos" not in capsys.readouterr().err
    student = tmp_path / "cascade-on-videos" / "distilled"
    argv = ["export", str(tmp_path / "d2"), "--base", str(tmp_path / "cascade-on-videos")]
    assert cli.main([*argv, "--out", str(student)]) == 0
    assert Cascade.from_pretrained(student).trained_on == {
        "base": {"videos": str(videos.resolve())}
    }


def test_resume_with_another_index_names_it_and_takes_a_copy_or_new_streams(tmp_path, capsys):
    """Before, --index naming another index on a resume got the checkpoint's "the videos
    under ... changed since it was saved", though nothing had changed but the flag."""
    videos = _folder(tmp_path / "videos")
    out = tmp_path / "run"
    assert _train(out, "--videos", str(videos), "--steps", "1") == 0
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("path,caption\na.mp4,clip a\nb.mp4,clip b\n")
    capsys.readouterr()
    assert _train(out, "--resume", "--steps", "2", "--index", str(fewer)) == 2
    err = capsys.readouterr().err
    assert f"--index {str(fewer)!r} lists other files or captions than the run's index" in err
    assert "drop --index to go on with the run's own, or add --new-streams" in err
    assert "changed since" not in err
    copy = tmp_path / "copy.jsonl"  # the same rows in another file and format: the same data
    rows = (json.dumps({"path": f"{n}.mp4", "caption": f"clip {n}"}) for n in "abc")
    copy.write_text("\n".join(rows) + "\n")
    assert _train(out, "--resume", "--steps", "2", "--index", str(copy)) == 0
    assert f"resume: their index is now {str(copy.resolve())!r}\n" in capsys.readouterr().err
    assert json.loads((out / train_videos.VIDEOS).read_text())["index"] == str(copy.resolve())
    assert _train(out, "--resume", "--steps", "3", "--index", str(fewer), "--new-streams") == 0
    assert json.loads((out / train_videos.VIDEOS).read_text())["index"] == str(fewer.resolve())
    assert [row["step"] for row in train.read_log(out)] == [1, 2, 3]


def test_a_resume_reuses_what_the_run_probed_of_its_videos_and_held_out_videos(
    tmp_path, monkeypatch
):
    """Probing decodes every file, at every start: a resume of a run on a large folder
    spent minutes on it. The run keeps what it probed (video_probes.json)."""
    from ivref import probe_cache

    videos = _folder(tmp_path / "videos", names=("a", "b", "c"))
    (videos / "index.csv").write_text("path,caption\na.mp4,clip a\nb.mp4,clip b\n")
    (videos / "val.csv").write_text("path,caption\nc.mp4,clip c\n")
    probed = []
    real_probe = video_folder.probe
    monkeypatch.setattr(video_folder, "probe", lambda p: probed.append(p.name) or real_probe(p))
    out, val = tmp_path / "run", ["--val-index", str(videos / "val.csv"), "--eval-every", "1"]
    assert _train(out, "--videos", str(videos), *val, "--steps", "1") == 0
    assert sorted(probed) == ["a.mp4", "b.mp4", "c.mp4"]
    kept = json.loads((out / probe_cache.FILE).read_text())
    assert {k: v["frames"] for k, v in kept.items()} == {"a.mp4": 16, "b.mp4": 16, "c.mp4": 16}
    probed.clear()
    assert _train(out, "--resume", "--steps", "2") == 0
    assert probed == []  # nothing decoded to probe
    (out / probe_cache.FILE).write_text("[1, 2")  # a damaged cache: probed afresh, remade
    with pytest.warns(UserWarning, match="video_probes.json' is damaged .*probing the videos"):
        assert _train(out, "--resume", "--steps", "3") == 0
    assert sorted(probed) == ["a.mp4", "b.mp4", "c.mp4"]
    assert json.loads((out / probe_cache.FILE).read_text()) == kept
    assert [row["step"] for row in train.read_log(out)] == [1, 2, 3]


def test_a_run_on_videos_records_no_joint_image_training_and_refuses_an_image_ratio(
    tmp_path, capsys
):
    """The toy base trains on 20% still-image packs; a folder of videos gives none, yet the
    run's config said image_ratio=0.2 and --image-ratio 0.5 was taken without a word."""
    import argparse

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    toy = ["--scale", "toy", "--stage", "base", "--steps", "1", "--out", str(tmp_path / "r")]
    cfg, _, _ = train.build_config(parser.parse_args(toy))
    assert cfg.stage("base").train.image_ratio == 0.2  # the toy world's joint training
    on_videos = [*toy, "--videos", str(tmp_path)]
    cfg, _, _ = train.build_config(parser.parse_args(on_videos))
    assert cfg.stage("base").train.image_ratio == 0.0
    videos = _folder(tmp_path / "videos")
    assert (
        _train(tmp_path / "run", "--videos", str(videos), "--image-ratio", "0.5", "--steps", "1")
        == 2
    )
    assert "--image-ratio 0.5 with --videos: a folder of videos gives videos alone" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()
    assert _train(tmp_path / "run", "--videos", str(videos), "--steps", "1") == 0
    assert _train(tmp_path / "run", "--resume", "--image-ratio", "0.5", "--steps", "2") == 2
    assert "--image-ratio 0.5 with --videos" in capsys.readouterr().err  # on a resume too
