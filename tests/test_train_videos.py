"""``ivref train --videos``: runs on a folder of videos, recorded for --resume, and resumed
exactly (a file dropped mid-run stays dropped)."""

import json
import shutil

import mediapy
import numpy as np
import pytest
import torch

from ivref import cli, configs, text, train, video, video_folder


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
    assert json.loads((out / "data.json").read_text()) == {
        "videos": str(videos.resolve()),
        "index": str((videos / "index.csv").resolve()),
        "fit": "crop",
    }
    assert _train(out, "--resume", "--steps", "3") == 0
    assert _losses(out) == _losses(tmp_path / "straight")  # the same clips, step for step
    moved = videos.rename(tmp_path / "moved")
    capsys.readouterr()
    assert _train(out, "--resume", "--steps", "4") == 2
    assert "give its new place with --videos" in capsys.readouterr().err
    assert _train(out, "--resume", "--steps", "4", "--videos", str(moved)) == 0
    assert "the videos are now in" in capsys.readouterr().err
    assert json.loads((out / "data.json").read_text())["videos"] == str(moved.resolve())
    assert [row["step"] for row in train.read_log(out)] == [1, 2, 3, 4]


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
    assert (out / "data.json").exists() and train.read_log(out)  # --force deleted nothing
    assert _train(out, "--steps", "1", "--force") == 0  # now on the toy world
    assert not (out / "data.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--index", "x.csv"], "--index is for --videos"),
     (["--fit", "squash"], "--fit is for --videos"),
     (["--videos", "missing"], "--videos 'missing' is not a folder of videos"),
     (["--videos", "{videos}", "--eval-every", "1"], "--eval-every scores toy-world captions"),
     (["--videos", "{empty}"], "holds neither of index.csv and index.jsonl"),
     (["--videos", "{videos}", "--index", "none.csv"], "--index 'none.csv' does not exist")],
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
    assert "this run trains on the toy world" in capsys.readouterr().err
    assert _train(on_videos, "--resume", "--steps", "2", "--fit", "squash") == 2
    assert "the run trains with --fit crop" in capsys.readouterr().err
    assert _train(on_videos, "--resume", "--steps", "2", "--eval-every", "1") == 2
    assert "--eval-every scores toy-world captions" in capsys.readouterr().err
    (on_videos / "data.json").write_text('{"videos": 3}')
    assert _train(on_videos, "--resume", "--steps", "2") == 2
    assert "data.json' is damaged" in capsys.readouterr().err


def _decode_fails_for(monkeypatch, name):
    """``name`` keeps a readable header but fails to decode (a file damaged in its middle)."""
    real = mediapy.VideoReader

    class Failing(real):
        def __iter__(self):
            raise RuntimeError("ffmpeg exited with code 1")

    monkeypatch.setattr(
        mediapy,
        "VideoReader",
        lambda path, *a, **k: (Failing if name in str(path) else real)(path, *a, **k),
    )


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
