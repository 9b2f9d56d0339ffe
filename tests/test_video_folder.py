"""Folders of real captioned videos: decoding, frame rates, starts, bad files and indexes."""

import contextlib
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch

from ivref import data, video, video_files, video_folder
from tests.test_train_videos import _decode_fails_for


def test_the_folder_class_is_also_reachable_from_data():
    assert data.VideoTextFolder is video_folder.VideoTextFolder


def _write_counting_clip(path, n, fps=12.0):
    """n frames of 16x16 gray whose level encodes the frame index: 20 * k."""
    frames = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 20, 16, 1)
    video.write_video(path, np.broadcast_to(frames, (n, 16, 16, 3)).copy(), fps=fps)


@pytest.mark.parametrize("frames_read", [None, 12, 2])
def test_a_decode_leaves_no_pipe_open(tmp_path, frames_read, monkeypatch):
    """imageio-ffmpeg closed the pipes of an ffmpeg it stopped, not of one that had ended:
    every whole decode left two, each a ResourceWarning when collected (18 in a 10-step
    training run)."""
    import gc
    import itertools
    import subprocess

    closing = video_files._close_pipes
    seen = []  # the process it found in imageio-ffmpeg's reader (its local name may change)
    monkeypatch.setattr(video_files, "_close_pipes", lambda p: (seen.append(p), closing(p)))
    _write_counting_clip(tmp_path / "clip.mp4", 12)
    gc.collect()  # what earlier tests left is collected now, not counted below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoding = video_files.decode_from(tmp_path / "clip.mp4", 0, 12.0)
        frames = list(itertools.islice(decoding, frames_read))  # None: to the end
        decoding.close()
        del decoding
        gc.collect()
    assert len(frames) == (frames_read or 12)
    assert len(seen) == 1 and isinstance(seen[0], subprocess.Popen)
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_video_text_folder_decodes_resamples_and_skips_bad_files(tmp_path):
    _write_counting_clip(tmp_path / "good.mp4", 12)
    _write_counting_clip(tmp_path / "short.mp4", 3)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    rows = [
        ("good.mp4", "a gray square"),
        ("short.mp4", "too short"),
        ("broken.mp4", "unreadable"),
        ("missing.mp4", "missing"),
    ]
    index = tmp_path / "index.jsonl"
    index.write_text("\n".join(json.dumps({"path": p, "caption": c}) for p, c in rows))
    with pytest.warns(UserWarning, match="skipping"):
        ds = video_folder.VideoTextFolder(
            tmp_path, index, num_frames=4, width=8, height=8, fps=4.0, random_start=False
        )
    assert len(ds) == 1
    reasons = dict(ds.skipped)
    assert set(reasons) == {"short.mp4", "broken.mp4", "missing.mp4"}
    assert "too short" in reasons["short.mp4"] and "unreadable" in reasons["broken.mp4"]
    videos, captions, is_image = ds.sample(2, torch.Generator().manual_seed(0))
    assert videos.shape == (2, 3, 4, 8, 8) and captions == ["a gray square"] * 2
    assert not is_image.any()
    # 12 fps -> 4 fps keeps source frames 0, 3, 6, 9: levels 0, 60, 120, 180
    levels = (videos[0].mean((0, 2, 3)) + 1) * 127.5
    torch.testing.assert_close(levels, torch.tensor([0.0, 60, 120, 180]), atol=6, rtol=0)


def test_files_probed_at_once_give_the_folder_probed_one_by_one(tmp_path):
    """``workers`` probes run at once (each an ffmpeg process decoding its file): the same
    items, skips in index order, warnings and digest as one at a time."""
    for k in range(6):
        _write_counting_clip(tmp_path / f"v{k}.mp4", 4 + 2 * k)  # v0 (4 frames) too short
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    names = ["v0.mp4", "broken.mp4", "v1.mp4", "missing.mp4", "v2.mp4", "v3.mp4", "v4.mp4"]
    index = tmp_path / "index.csv"
    index.write_text("path,caption\n" + "".join(f"{n},clip {n}\n" for n in names))
    folders, said = {}, {}
    for workers in (1, 3):
        with pytest.warns(UserWarning) as caught:
            folders[workers] = video_folder.VideoTextFolder(
                tmp_path, index, num_frames=6, width=8, height=8, fps=12.0, workers=workers
            )
        said[workers] = [str(w.message) for w in caught]
    one, three = folders[1], folders[3]
    assert [p.name for p, *_ in one.items] == ["v1.mp4", "v2.mp4", "v3.mp4", "v4.mp4"]
    assert [n for p, _, _, n in one.items] == [6, 8, 10, 12]
    assert one.items == three.items and one.skipped == three.skipped and said[1] == said[3]
    assert [name for name, _ in one.skipped] == ["v0.mp4", "broken.mp4", "missing.mp4"]
    assert torch.equal(one.state_dict()["digest"], three.state_dict()["digest"])


def test_video_text_folder_reads_csv_and_rejects_bad_index(tmp_path):
    _write_counting_clip(tmp_path / "a.mp4", 8)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 2, 16, 16, fps=6.0)
    assert len(ds) == 1 and not ds.skipped
    (tmp_path / "bad.csv").write_text("file,text\na.mp4,hello\n")
    with pytest.raises(ValueError, match="'path' and 'caption'"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "bad.csv", 2, 16, 16, fps=6.0)
    with pytest.raises(FileNotFoundError):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "nope.csv", 2, 16, 16, fps=6.0)
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4", "caption": "hello"}\n{"path": a.mp4\n')
    with pytest.raises(ValueError, match=r"bad.jsonl' line 2 is not JSON \(Expecting value\)"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "bad.jsonl", 2, 16, 16, fps=6.0)


def test_video_text_folder_skips_low_frame_rates_and_bad_captions_and_reads_a_bom(tmp_path):
    """A 2 fps source for a 4 fps clip would repeat frames (a TSR stage would learn to repeat);
    captions must be non-empty strings; Excel writes CSV with a byte-order mark."""
    _write_counting_clip(tmp_path / "good.mp4", 12)
    _write_counting_clip(tmp_path / "slow.mp4", 12, fps=2.0)
    rows = [("good.mp4", "a gray square"), ("slow.mp4", "slow"), ("good.mp4", " "),
            ("good.mp4", 5), ("good.mp4", None)]  # fmt: skip
    index = tmp_path / "index.jsonl"
    index.write_text("\n".join(json.dumps({"path": p, "caption": c}) for p, c in rows))
    with pytest.warns(UserWarning, match="skipping"):
        ds = video_folder.VideoTextFolder(tmp_path, index, num_frames=4, width=8, height=8, fps=4.0)
    assert len(ds) == 1
    assert "2 fps is below the clip's 4 fps: frames would repeat" in ds.skipped[0][1]
    assert [r.split(":")[0] for _, r in ds.skipped[1:]] == [
        "caption ' '",
        "caption 5",
        "caption None",
    ]
    (tmp_path / "bom.csv").write_bytes("path,caption\ngood.mp4,hello\n".encode("utf-8-sig"))
    assert len(video_folder.VideoTextFolder(tmp_path, tmp_path / "bom.csv", 4, 8, 8, fps=4.0)) == 1


def test_a_folder_with_no_usable_video_is_an_error_not_an_empty_dataset(tmp_path):
    """Empty, a Trainer given it trained on the toy world instead (``dataset or toy``)."""
    (tmp_path / "index.csv").write_text("path,caption\nmissing.mp4,hello\n")
    with pytest.warns(UserWarning, match="skipping"):
        with pytest.raises(ValueError, match=r"no usable videos .* \[\('missing.mp4', 'file not"):
            video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    (tmp_path / "empty.csv").write_text("path,caption\n")
    with pytest.raises(ValueError, match="no usable videos .*the index is empty"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "empty.csv", 4, 8, 8, fps=4.0)


def test_a_clip_is_decoded_only_up_to_its_last_frame(tmp_path, monkeypatch):
    """A long source is not read whole for a short clip (a 1080p minute: gigabytes a sample)."""
    _write_counting_clip(tmp_path / "long.mp4", 60)
    (tmp_path / "index.csv").write_text("path,caption\nlong.mp4,hello\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    decoded = []
    real = video_folder.decode_from

    def counting(*args):
        for frame in real(*args):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(video_folder, "decode_from", counting)
    clip, _ = ds.load(0)
    assert len(decoded) == 10  # source frames 0, 3, 6, 9 of 60
    levels = (clip.mean((0, 2, 3)) + 1) * 127.5
    torch.testing.assert_close(levels, torch.tensor([0.0, 60, 120, 180]), atol=6, rtol=0)


def test_clips_start_anywhere_that_fits_and_each_start_is_drawn(tmp_path):
    """Before, every clip was its file's first seconds: a long source taught only its opening."""
    _write_counting_clip(tmp_path / "a.mp4", 13)  # 4 frames @ 4 fps span 10 of 12 fps: 4 starts
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    assert ds.starts(0) == 4
    videos, _, _ = ds.sample(24, torch.Generator().manual_seed(0))
    levels = (videos.mean((1, 3, 4)) + 1) * 127.5 / 20  # frame index of each clip frame
    starts = levels[:, 0].round()
    torch.testing.assert_close(
        levels, starts[:, None] + torch.tensor([0.0, 3, 6, 9]), atol=0.3, rtol=0
    )
    assert set(starts.tolist()) == {0.0, 1.0, 2.0, 3.0}
    again, _, _ = ds.sample(24, torch.Generator().manual_seed(0))
    assert torch.equal(again, videos)  # the start comes from the generator: resumable
    clip, _ = ds.load(0, start=3)
    assert (clip.mean((0, 2, 3))[-1] + 1) * 127.5 / 20 == pytest.approx(12, abs=0.3)
    with pytest.raises(ValueError, match="start=4 for a.mp4: allowed 0 to 3"):
        ds.load(0, start=4)


@pytest.mark.parametrize(
    ("shape", "aspect", "kept"),
    [((2, 4, 8, 3), 1.0, (slice(None), slice(2, 6))),  # wide: the middle columns
     ((2, 8, 4, 3), 1.0, (slice(2, 6), slice(None))),  # tall: the middle rows
     ((2, 4, 8, 3), 2.0, (slice(None), slice(None))),  # already 2:1
     ((2, 9, 16, 3), 0.5, (slice(None), slice(6, 10)))],  # 16:9 to 1:2 (4.5 rounds to 4)
)  # fmt: skip
def test_center_crop_keeps_the_largest_centred_window(shape, aspect, kept):
    frames = np.arange(np.prod(shape)).reshape(shape)
    rows, cols = kept
    np.testing.assert_array_equal(video_folder.center_crop(frames, aspect), frames[:, rows, cols])


def test_a_wide_source_is_cropped_not_stretched_for_a_square_clip(tmp_path):
    """Squashed, a 2:1 source made every circle an ellipse half as wide."""
    frames = np.zeros((8, 16, 32, 3), np.uint8)
    frames[:, :, :8] = frames[:, :, 24:] = 255  # white outer quarters, black centre half
    video.write_video(tmp_path / "wide.mp4", frames, fps=12.0)
    (tmp_path / "index.csv").write_text("path,caption\nwide.mp4,hello\n")
    index = tmp_path / "index.csv"
    crop = video_folder.VideoTextFolder(tmp_path, index, 2, 8, 8, fps=4.0, random_start=False)
    squash = video_folder.VideoTextFolder(tmp_path, index, 2, 8, 8, fps=4.0, fit="squash")
    level = {
        name: (ds.load(0)[0].mean() + 1) / 2 for name, ds in [("crop", crop), ("squash", squash)]
    }
    assert level["crop"] < 0.05  # the black centre only
    assert level["squash"] == pytest.approx(0.5, abs=0.05)  # all of it, narrowed
    with pytest.raises(ValueError, match="fit='stretch'; allowed: 'crop'"):
        video_folder.VideoTextFolder(tmp_path, index, 2, 8, 8, fps=4.0, fit="stretch")


def test_a_trainer_trains_on_a_folder_of_videos(tmp_path):
    """The README's recipe at ci size: the folder is the dataset, any captions."""
    from ivref import configs, train

    for name in ("a.mp4", "b.mp4"):
        _write_counting_clip(tmp_path / name, 24)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,a gray fade\nb.mp4,another fade\n")
    cfg = configs.preset("ci")
    base = cfg.stage("base")
    clips = video_folder.VideoTextFolder(
        tmp_path, tmp_path / "index.csv", base.num_frames, base.width, base.height, base.fps
    )
    trainer = train.Trainer(cfg, "base", tmp_path / "run", dataset=clips, batch_size=2,
                            progress=False)  # fmt: skip
    rows = trainer.fit(2)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert set(trainer.text.rows) <= {"a gray fade", "another fade"}


def test_a_file_shorter_than_its_header_keeps_its_frames_and_a_broken_one_is_dropped(
    tmp_path, monkeypatch
):
    """Before, the first start past the real end dropped the whole file for the run. Each is
    named by its path in the index (two a.mp4 in two subfolders were both 'a.mp4')."""
    (tmp_path / "sub").mkdir()
    _write_counting_clip(tmp_path / "sub" / "a.mp4", 13)
    (tmp_path / "index.csv").write_text("path,caption\nsub/a.mp4,hello\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    path, caption, fps, n = ds.items[0]
    ds.items[0] = (path, caption, fps, 20)  # as a variable-frame-rate header may claim
    with pytest.warns(UserWarning, match="sub/a.mp4 ends after 13 of the 20 frames its header"):
        assert ds.load(0, start=8) is None
    assert ds.starts(0) == 4 and not ds.skipped  # kept, with the starts that fit
    videos, _, _ = ds.sample(8, torch.Generator().manual_seed(0))
    assert videos.shape[0] == 8

    def broken(*args, **kwargs):
        raise RuntimeError("ffmpeg exited with code 1")

    monkeypatch.setattr(video_folder, "decode_from", broken)
    with pytest.warns(UserWarning, match="skipping 'sub/a.mp4': decode failed"):
        with pytest.raises(RuntimeError, match="no usable videos"):
            ds.sample(1, torch.Generator().manual_seed(0))
    assert ds.items == [] and ds.skipped[-1][0] == "sub/a.mp4"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(num_frames=0), "num_frames=0 must be a positive integer"),
     (dict(width=8.0), "width=8.0 must be a positive integer"),
     (dict(fps=0.0), "fps=0.0 must be a positive finite number"),
     (dict(fps=float("nan")), "fps=nan must be a positive finite number"),
     (dict(seed=None), "seed=None must be an integer from 0 to 2\\*\\*63 - 1"),
     (dict(seed=-1), "seed=-1 must be an integer"),
     (dict(seed=2**70), "seed=1180591620717411303424 must be an integer"),
     (dict(random_start="no"), "random_start='no'; allowed: True or False")],
)  # fmt: skip
def test_clip_sizes_are_checked_before_any_file_is_read(tmp_path, kwargs, message):
    """num_frames=0 failed with an IndexError inside the first file's probe, fps=0 divided."""
    _write_counting_clip(tmp_path / "a.mp4", 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    sizes = dict(num_frames=4, width=8, height=8, fps=4.0) | kwargs
    with pytest.raises(ValueError, match=message):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", **sizes)


def test_a_bad_batch_size_or_clip_number_is_named(tmp_path):
    """sample(0) failed in torch.stack, load(-1) read the last file, load(10) an IndexError."""
    _write_counting_clip(tmp_path / "a.mp4", 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, 4.0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"batch_size={bad!r} must be a positive integer"):
            ds.sample(bad)
    for bad in (-1, 1, 10, 0.0):
        with pytest.raises(ValueError, match=rf"clip {bad!r}: allowed 0 to 0"):
            ds.load(bad)
    clip, caption = ds.load(0)
    assert clip.shape == (3, 4, 8, 8) and caption == "hello"
    import numpy as np  # NumPy's integers are integers too

    assert torch.equal(ds.load(np.int64(0))[0], clip)
    assert ds.sample(np.int32(1), torch.Generator().manual_seed(0))[0].shape == (1, 3, 4, 8, 8)
    state = ds.state_dict()
    for bad in (torch.tensor([2, 0]), torch.tensor([0, 1, 0])):
        with pytest.raises(ValueError, match="'clips' is two 0/1 values"):
            ds.load_state_dict(state | {"clips": bad})
    squash = video_folder.VideoTextFolder(
        tmp_path, tmp_path / "index.csv", 4, 8, 8, 4.0, fit="squash"
    )
    with pytest.raises(ValueError, match="cut its clips with fit='crop', random_start=True"):
        squash.load_state_dict(state)
    squash.load_state_dict({k: v for k, v in state.items() if k != "clips"})  # saved before it
    seeded = video_folder.VideoTextFolder(
        tmp_path, tmp_path / "index.csv", 4, 8, 8, 4.0, np.int64(3)
    )
    assert seeded.generator.initial_seed() == 3


def test_sample_goes_on_after_the_callers_own_load_skipped_a_file(tmp_path, monkeypatch):
    """A load that skipped a file left it in the list; sample then failed on it every time."""
    for name in ("a.mp4", "b.mp4"):
        _write_counting_clip(tmp_path / name, 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,first\nb.mp4,second\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    _decode_fails_for(monkeypatch, "a.mp4")
    with pytest.warns(UserWarning, match="skipping 'a.mp4'"):
        assert ds.load(0) is None  # the caller checks its files one by one
    monkeypatch.undo()
    _, captions, _ = ds.sample(6, torch.Generator().manual_seed(0))
    assert captions == ["second"] * 6 and len(ds) == 1


def test_parallel_decoding_draws_the_same_clips_and_drops_the_same_files(tmp_path, monkeypatch):
    """workers is speed only: the clips follow from the generator and the files alone."""
    for k, name in enumerate("abcd"):
        frames = (10 * k + 4 * np.arange(24, dtype=np.uint8))[:, None, None, None]
        frames = np.broadcast_to(frames, (24, 16, 16, 3)).copy()
        video.write_video(tmp_path / f"{name}.mp4", frames, fps=12.0)
    (tmp_path / "index.csv").write_text(
        "path,caption\n" + "".join(f"{n}.mp4,clip {n}\n" for n in "abcd")
    )
    _decode_fails_for(monkeypatch, "c.mp4")  # its header reads, its frames do not
    batches = {}
    for workers in (1, 3):
        ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0,
                                          workers=workers)  # fmt: skip
        g = torch.Generator().manual_seed(7)
        with pytest.warns(UserWarning, match="skipping 'c.mp4'"):
            batches[workers] = [ds.sample(6, g) for _ in range(3)]
        assert [item[1] for item in ds.items] == ["clip a", "clip b", "clip d"]
        assert ds.state_dict()["items"][:, 0].tolist() == [0, 1, 3]
    for (v1, t1, _), (v3, t3, _) in zip(batches[1], batches[3], strict=True):
        assert torch.equal(v1, v3) and t1 == t3
    assert len({c for _, texts, _ in batches[1] for c in texts}) == 3  # every good file drawn
    with pytest.raises(ValueError, match="workers=0 must be a positive integer"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0, workers=0)


@pytest.mark.parametrize("fps", [12.0, 29.97])
def test_a_seek_gives_the_same_frames_as_decoding_from_the_first(tmp_path, fps):
    """Starting late used to decode every frame before the start; ffmpeg now seeks to the
    keyframe before it (here one every 5 frames), frame-exact."""
    import mediapy

    frames = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "noise.mp4"
    video.ensure_ffmpeg()
    mediapy.write_video(path, frames, fps=fps, ffmpeg_args=["-g", "5"])
    n, src_fps = video_folder.probe(path)
    every = np.stack(list(video_folder.decode_from(path, 0, src_fps)))  # no seek
    assert n == 40 and src_fps == fps
    for start in range(0, 40, 3):
        got = np.stack(list(video_folder.decode_from(path, start, src_fps)))
        assert got.shape == (40 - start, 16, 16, 3)
        np.testing.assert_array_equal(got, every[start:])


def test_a_seek_in_a_file_with_audio_does_not_repeat_its_first_frame(tmp_path):
    """With an audio track, ffmpeg's constant-rate output repeated the first frame after a
    seek (every later frame one late), until frames passed through as decoded."""
    import subprocess

    import imageio_ffmpeg

    path = tmp_path / "with_audio.mp4"
    lavfi = ["-f", "lavfi", "-i"]
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", *lavfi,
         "testsrc2=rate=24:size=32x32", *lavfi, "sine", "-t", "3", "-c:v", "libx264",
         "-g", "12", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    every = np.stack(list(video_folder.decode_from(path, 0, 24.0)))
    assert len(every) == 72
    for start in range(1, 60, 4):
        got = np.stack(list(video_folder.decode_from(path, start, 24.0)))
        np.testing.assert_array_equal(got, every[start:])


def test_files_damaged_part_way_or_shorter_than_said_give_the_same_clips_at_any_worker_count(
    tmp_path, monkeypatch
):
    """Decoded at once, the draws of one file used to race: which outcome was written last,
    and whether a later draw still ran, depended on the worker count and thread timing."""
    for name in "abc":
        frames = np.broadcast_to(np.arange(48, dtype=np.uint8)[:, None, None, None] * 5,
                                 (48, 16, 16, 3)).copy()  # fmt: skip
        video.write_video(tmp_path / f"{name}.mp4", frames, fps=12.0)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,a\nb.mp4,b\nc.mp4,c\n")
    real = video_folder.decode_from

    def damaged(path, start, src_fps):  # b fails from frame 30 on
        with contextlib.closing(real(path, start, src_fps)) as frames:
            for k, frame in enumerate(frames, start=start):
                if "b.mp4" in str(path) and k >= 30:
                    raise RuntimeError("ffmpeg exited with code 1")
                yield frame

    monkeypatch.setattr(video_folder, "decode_from", damaged)
    runs = {}
    for workers, prefetch in ((1, False), (4, False), (1, True), (3, True)):
        ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0,
                                          workers=workers, prefetch=prefetch)  # fmt: skip
        path, caption, fps, _ = ds.items[2]
        ds.items[2] = (path, caption, fps, 200)  # c's header claims more than its 48 frames
        g = torch.Generator().manual_seed(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = [ds.sample(8, g) for _ in range(4)]
        warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        runs[workers, prefetch] = (batches, list(ds.skipped), ds.items, warned)
    b1, skipped1, items1, warned1 = runs[1, False]
    for other, (b, skipped, items, warned) in runs.items():
        for (v1, t1, _), (v, t, _) in zip(b1, b, strict=True):
            assert torch.equal(v1, v) and t1 == t, other
        assert (skipped, items, warned) == (skipped1, items1, warned1), other
    assert [p for p, _ in skipped1] == ["b.mp4"] and items1[-1][3] == 48  # c shrank to its frames
    assert sum("ends after 48 of the 200" in w for w in warned1) == 1  # once, as one by one


def test_prefetch_leaves_the_folder_and_generator_as_they_are_and_follows_another_generator(
    tmp_path, monkeypatch
):
    """The next batch decodes ahead from a copy of the generator: a checkpoint between
    batches saves what it would without prefetch, and a batch drawn from another generator
    is decoded anew."""
    for name in "ab":
        _write_counting_clip(tmp_path / f"{name}.mp4", 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,first\nb.mp4,second\n")
    folders = [video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0,
                                            prefetch=p) for p in (False, True)]  # fmt: skip
    gens = [torch.Generator().manual_seed(1) for _ in folders]
    other = [torch.Generator().manual_seed(2) for _ in folders]
    seen = []
    for ds, g, h in zip(folders, gens, other, strict=True):
        first = ds.sample(3, g)[0]
        state = (g.get_state(), ds.state_dict()["items"])  # a checkpoint, with a batch ahead
        seen.append((first, state, ds.sample(3, h)[0], ds.sample(3, g)[0]))
    (a1, (ga, ia), a2, a3), (b1, (gb, ib), b2, b3) = seen
    assert torch.equal(ga, gb) and torch.equal(ia, ib)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(a3, b3)
    plain_next = folders[0].sample(3, gens[0])[0]
    folders[1]._ahead._thread.join()  # the next batch decoded ahead ...
    _decode_fails_for(monkeypatch, ".mp4")  # ... is used: nothing decodes now
    assert torch.equal(folders[1].sample(3, gens[1])[0], plain_next)
    with pytest.raises(ValueError, match="prefetch='yes'; allowed: True or False"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0,
                                     prefetch="yes")  # fmt: skip


def test_a_decode_ahead_that_is_not_wanted_stops_before_its_next_clip(tmp_path, monkeypatch):
    """It went on decoding its whole batch beside the batch decoded anew (twice the ffmpeg
    processes for a batch)."""
    import threading
    import time

    for name in "ab":
        _write_counting_clip(tmp_path / f"{name}.mp4", 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,first\nb.mp4,second\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0,
                                      prefetch=True)  # fmt: skip
    real, readers = video_folder.VideoTextFolder._read, []

    def slow(self, item, start):
        if threading.current_thread() is not threading.main_thread():
            readers.append(threading.current_thread())
            time.sleep(0.2)
        return real(self, item, start)

    monkeypatch.setattr(video_folder.VideoTextFolder, "_read", slow)
    for unwanted in ("another generator", "a restored state"):
        ds.sample(8, torch.Generator().manual_seed(0))  # 8 clips now decode ahead
        ahead = ds._ahead
        if unwanted == "another generator":
            ds.sample(1, torch.Generator().manual_seed(5))  # other draws: decoded anew
        else:
            ds.load_state_dict(ds.state_dict())
        ahead._thread.join(timeout=30)
        assert sum(t is ahead._thread for t in readers) <= 2, unwanted  # not all 8


def test_a_process_that_exits_while_a_batch_decodes_ahead_exits_cleanly(tmp_path, repo_root):
    """The prefetch thread was a daemon: stopped by the exit inside a torch call, it aborted
    the process ('terminate called without an active exception', status -6; 2 runs in 5 of
    the benchmark's --tiny). Here the decode ahead is a torch loop that outlasts the script."""
    import os
    import subprocess
    import sys

    for name in "ab":
        _write_counting_clip(tmp_path / f"{name}.mp4", 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,first\nb.mp4,second\n")
    code = f"""
import torch
from ivref import video_folder

def busy(self, items, draws, stop=None):  # the decode ahead: torch work until after the exit begins
    x = torch.randn(384, 384)
    for _ in range(300):
        x = torch.tanh(x @ x)
    return [("failed", "busy")] * len(draws)

video_folder.VideoTextFolder._read_all = busy  # one worker: only the decode ahead calls it
ds = video_folder.VideoTextFolder({str(tmp_path)!r}, {str(tmp_path / "index.csv")!r}, 4, 8, 8,
                                  fps=4.0, prefetch=True)
ds.sample(2)  # returns with the next batch decoding ahead; the script ends here
"""
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-500:]


def _ffmpeg_write(path, frames, rate, *vf):
    """Raw RGB frames (N, H, W, 3) to an H.264 file at ffmpeg rate string ``rate``."""
    import subprocess

    import imageio_ffmpeg

    video.ensure_ffmpeg()
    n, h, w, _ = frames.shape
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", rate, "-i", "-"]
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *raw, *vf,
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "50", str(path)],
        input=frames.tobytes(), check=True,
    )  # fmt: skip


def test_a_variable_rate_matroska_file_and_a_name_with_a_colon_are_read(tmp_path, monkeypatch):
    """A variable-rate MKV or WebM (a screen recording) has no rate in ffmpeg's description,
    only its time base ("48 tbr, 1k tbn"): it was skipped as unreadable. A relative name with
    a colon ("take:2.mp4") was given to ffmpeg as is and read as a protocol."""
    import subprocess

    import imageio_ffmpeg

    frames = np.repeat(np.arange(24, dtype=np.uint8)[:, None, None, None] * 10, 16, 1)
    _ffmpeg_write(tmp_path / "even.mp4", np.broadcast_to(frames, (24, 16, 16, 3)).copy(), "12")
    for name in ("vfr.mkv", "vfr.webm"):  # every third frame on time, the others 20 ms late
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i",
             str(tmp_path / "even.mp4"), "-vf", "setpts='(N/12+if(mod(N,3),0.02,0))/TB'",
             "-fps_mode", "passthrough", str(tmp_path / name)],
            check=True,
        )  # fmt: skip
        n, fps = video_files.probe(tmp_path / name)
        # the mean rate: 24 frames over the file's duration, its last frame's time (23/12 s)
        # plus its 20 ms (23 is not a multiple of 3), as Matroska ends it
        assert n == 24 and fps == pytest.approx(24 / (23 / 12 + 0.02), rel=0.01)
    (tmp_path / "take:2.mp4").write_bytes((tmp_path / "even.mp4").read_bytes())
    (tmp_path / "index.csv").write_text("path,caption\ntake:2.mp4,a\nvfr.mkv,b\nvfr.webm,c\n")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        folder = video_folder.VideoTextFolder(".", "index.csv", 4, 16, 16, fps=6.0)
    assert len(folder) == 3 and folder.load(0, start=2)[0].shape == (3, 4, 16, 16)


def test_a_name_in_another_unicode_normalization_is_found_and_a_captionless_row_not_probed(
    tmp_path, monkeypatch
):
    """Files copied from macOS keep names in NFD ("é" as e + combining accent) where an index
    written elsewhere has NFC: they were skipped as 'file not found'. A row without a usable
    caption was probed all the same (a process per file) before it was skipped."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café.mp4")
    _write_counting_clip(tmp_path / nfd, 12)
    _write_counting_clip(tmp_path / "b.mp4", 12)
    nfc = unicodedata.normalize("NFC", "café.mp4")
    assert nfc != nfd
    (tmp_path / "index.csv").write_text(f"path,caption\n{nfc},a cafe\nb.mp4,\n", "utf-8")
    probed = []
    real_probe = video_folder.probe
    monkeypatch.setattr(
        video_folder, "probe", lambda path: probed.append(path.name) or real_probe(path)
    )
    with pytest.warns(UserWarning, match="skipping 'b.mp4': caption ''"):
        folder = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    assert probed == [nfd] and [item[0].name for item in folder.items] == [nfd]
    assert folder.load(0)[0].shape == (3, 4, 8, 8)
    assert list(folder.probes) == [nfc]  # kept under the index's spelling, as the digest is
    state = folder.state_dict()  # a run from before, which skipped the file: another digest
    state["digest"] = state["digest"] + 1
    with pytest.raises(ValueError, match="Note: since 2026-12-07 ivref reads files it skipped"):
        folder.load_state_dict(state)


@pytest.mark.parametrize(
    ("printed", "exact"),
    [(23.98, 24000 / 1001), (29.97, 30000 / 1001), (14.99, 15000 / 1001), (7.99, 8000 / 1001),
     (59.94, 60000 / 1001), (25.0, 25.0), (12.0, 12.0), (12.5, 12.5), (0.5, 0.5)],
)  # fmt: skip
def test_a_frame_rate_printed_to_two_decimals_is_made_exact(printed, exact):
    assert video_folder.exact_fps(printed) == exact


def test_a_late_seek_in_a_23_976_fps_file_lands_on_its_frame(tmp_path):
    """ffmpeg prints 24000/1001 fps as 23.98; seeking by that rate landed one frame early
    from about frame 3,000 on (the error grows by a frame every ~6,000)."""
    n, bits = 3100, 12
    index = np.arange(n)[:, None] >> np.arange(bits)[None, :] & 1  # (n, bits): frame k's bits
    frames = np.repeat(np.repeat(index.astype(np.uint8) * 255, 8, 1)[:, None, :, None], 8, 1)
    _ffmpeg_write(tmp_path / "ntsc.mp4", np.repeat(frames, 3, 3), "24000/1001")
    (tmp_path / "index.csv").write_text("path,caption\nntsc.mp4,counting\n")
    ds = video_folder.VideoTextFolder(
        tmp_path, tmp_path / "index.csv", 3, 8 * bits, 8, fps=12.0, fit="squash"
    )
    assert ds.items[0][2] == 24000 / 1001
    for start in (5, 3050):
        clip, _ = ds.load(0, start)
        blocks = clip[:, :, :, :].mean((0, 2)).reshape(3, bits, 8).mean(-1) > 0  # (F, bits)
        got = [int((b.long() << torch.arange(bits)).sum()) for b in blocks]
        assert got == [start + round(k * (24000 / 1001) / 12) for k in range(3)]


def test_non_square_pixels_are_shown_as_a_player_shows_them(tmp_path):
    """A 16 x 16 picture stored with pixels twice as wide as tall shows 32 x 16: a square
    clip of it is the middle half of its columns. Read as stored, the clip held all of them."""
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    frames[:, :, 4:12, 1] = 255  # green middle half of the stored columns; black sides
    _ffmpeg_write(tmp_path / "sar.mp4", frames, "12", "-vf", "setsar=2/1")
    (tmp_path / "index.csv").write_text("path,caption\nsar.mp4,green\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 2, 8, 8, fps=4.0)
    clip, _ = ds.load(0)
    green = (clip[1] + 1) / 2  # (F, H, W)
    assert green.min() > 0.8  # green everywhere: the cropped display is the middle half
    shown = np.stack(list(video_folder.decode_from(tmp_path / "sar.mp4", 0, 12.0)))
    assert shown.shape == (8, 16, 32, 3)


def test_a_decode_that_fails_once_is_tried_again_not_dropped_and_a_start_must_be_a_frame(
    tmp_path, monkeypatch
):
    """A passing failure (ffmpeg not started on a busy machine) dropped a good file for the
    rest of the run, and the drop was saved in its checkpoints."""
    _write_counting_clip(tmp_path / "a.mp4", 12)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    real, calls = video_folder.decode_from, []

    def fails_once(*args):
        calls.append(args[1])
        if len(calls) == 1:
            raise OSError("Resource temporarily unavailable")
        return real(*args)

    monkeypatch.setattr(video_folder, "decode_from", fails_once)
    clip, caption = ds.load(0, 0)
    assert clip.shape == (3, 4, 8, 8) and caption == "hello" and not ds.skipped
    assert calls == [0, 0] and ds.starts(0) == 3
    with pytest.raises(ValueError, match=r"start=1.5 must be an integer"):
        ds.load(0, 1.5)
    assert ds.load(0, np.int64(1)) is not None


def test_an_index_is_read_as_utf8_with_line_numbers_and_captions_a_tokenizer_can_read(tmp_path):
    """U+2028 in a JSON caption split its line in two; a non-UTF-8 file, a long CSV field and
    a null path escaped as raw errors; a caption holding half an emoji passed every check,
    then stopped training when it was first drawn."""
    _write_counting_clip(tmp_path / "a.mp4", 8)
    rows = [{"path": "a.mp4", "caption": "line\u2028separator \u00e9"}, {"path": "a.mp4",
            "caption": "cut emoji \ud83d"}]  # fmt: skip
    jsonl = tmp_path / "index.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:1]).encode()
        + b"\n" + json.dumps(rows[1]).encode()
    )  # fmt: skip
    with pytest.warns(UserWarning, match="holds a lone surrogate"):
        ds = video_folder.VideoTextFolder(tmp_path, jsonl, 2, 8, 8, fps=6.0)
    assert [c for _, c, _, _ in ds.items] == ["line\u2028separator \u00e9"]
    assert "lone surrogate" in ds.skipped[0][1]
    for name, content, message in (
        ("latin1.csv", "path,caption\na.mp4,caf\u00e9\n".encode("latin-1"),
         r"latin1.csv' line 2 is not UTF-8 text"),
        ("huge.csv", b"path,caption\na.mp4," + b"a" * (1 << 24 | 1) + b"\n",
         r"huge.csv' line \d: not CSV \(field larger than field limit"),
        ("null.jsonl", b'\n{"path": null, "caption": "x"}\n',
         r"null.jsonl' line 2: path None must be a non-empty string"),
        ("fields.csv", b"path,text\na.mp4,x\n",
         r"fields.csv' line 1: the header names the columns \['path', 'text'\]; a CSV index"),
        ("fields.jsonl", b'{"path": "a.mp4"}\n', r"fields.jsonl' line 1: needs fields 'path'"),
    ):  # fmt: skip
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            video_folder.VideoTextFolder(tmp_path, tmp_path / name, 2, 8, 8, fps=6.0)
    (tmp_path / "crlf.csv").write_bytes(b'path,caption\r\na.mp4,"two lines\r\nof caption"\r\n')
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "crlf.csv", 2, 8, 8, fps=6.0)
    assert ds.items[0][1] == "two lines\r\nof caption"  # as before: the folder's digest keeps
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfpath,caption\na.mp4,caf\xe9\n")
    with pytest.raises(ValueError, match=r"bom.csv' line 2 is not UTF-8 text \(.* at byte 25\)"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "bom.csv", 2, 8, 8, fps=6.0)
    (tmp_path / "cr.jsonl").write_bytes(
        b'{"path": "a.mp4", "caption": "one"}\r{"path": "a.mp4", "caption": "two"}\r\n\r'
    )  # old Mac line ends, CRLF
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "cr.jsonl", 2, 8, 8, fps=6.0)
    assert [c for _, c, _, _ in ds.items] == ["one", "two"]
    long = "a" * 200_000  # over csv's default field limit of 128 KiB
    (tmp_path / "long.csv").write_text(f"path,caption\na.mp4,{long}\n", encoding="utf-8")
    ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "long.csv", 2, 8, 8, fps=6.0)
    assert ds.items[0][1] == long


def test_an_unreadable_file_is_skipped_with_ffmpegs_reason_not_its_banner(tmp_path):
    import subprocess

    import imageio_ffmpeg

    video.ensure_ffmpeg()
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "sine",
         "-t", "1", str(tmp_path / "audio.mp4")],
        check=True,
    )  # fmt: skip
    _write_counting_clip(tmp_path / "a.mp4", 8)
    (tmp_path / "index.csv").write_text("path,caption\naudio.mp4,sound\na.mp4,ok\n")
    with pytest.warns(UserWarning, match="skipping 'audio.mp4'"):
        ds = video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 2, 8, 8, fps=6.0)
    reason = dict(ds.skipped)["audio.mp4"]
    assert reason.startswith("unreadable (") and "ffmpeg version" not in reason, reason


@pytest.mark.parametrize(
    "rel, reason",
    [
        ("a.mp4", None),
        ("./sub/../a.mp4", None),  # stays inside
        ("../a.mp4", "above the folder"),
        ("sub/../../a.mp4", "above the folder"),
        ("/etc/passwd", "an absolute path"),
        ("C:\\videos\\a.mp4", "an absolute path"),  # a Windows drive, on any system
        ("C:/videos/a.mp4", "an absolute path"),
        ("\\videos\\a.mp4", "an absolute path"),  # Windows reads it from the drive's root
        ("\\\\server\\share\\a.mp4", "an absolute path"),
    ],
)
def test_where_an_index_path_may_point(rel, reason):
    got = video_folder.outside_reason(rel)
    assert got == reason if reason is None else got.startswith(reason)


def test_an_index_path_outside_the_folder_is_skipped_though_its_file_is_a_video(tmp_path):
    """Before, an absolute path (or ../) was read wherever it led: a run whose folder moved
    then kept reading the old place, and the folder's digest did not follow the file."""
    folder, outside = tmp_path / "videos", tmp_path / "elsewhere.mp4"
    folder.mkdir()
    _write_counting_clip(folder / "in.mp4", 12)
    _write_counting_clip(outside, 12)
    rows = ["in.mp4,inside", f"{outside},absolute", "../elsewhere.mp4,above"]
    (folder / "index.csv").write_text("path,caption\n" + "\n".join(rows) + "\n")
    odd = [{"path": "in.mp4", "caption": "inside"}, {"path": "a\u0000.mp4", "caption": "nul"}]
    (folder / "odd.jsonl").write_text("\n".join(json.dumps(r) for r in odd))
    with pytest.warns(UserWarning, match=re.escape(r"skipping 'a\x00.mp4': file not found")):
        video_folder.VideoTextFolder(folder, folder / "odd.jsonl", 4, 8, 8, fps=4.0)  # no crash
    with pytest.warns(UserWarning) as said:
        ds = video_folder.VideoTextFolder(folder, folder / "index.csv", 4, 8, 8, fps=4.0, workers=2)
    assert [str(w.message).split(": ")[1] for w in said] == [
        f"skipping {str(outside)!r}",
        "skipping '../elsewhere.mp4'",
    ]
    state = ds.state_dict()  # as a run saved it when it still read those two files
    state["digest"] = state["digest"] + 1
    with pytest.raises(ValueError, match=r"2 of its index paths lie outside the folder \(e.g."):
        ds.load_state_dict(state)
    assert [caption for _, caption, _, _ in ds.items] == ["inside"]
    assert [(rel, reason.split(":")[0]) for rel, reason in ds.skipped] == [
        (str(outside), "an absolute path"),
        ("../elsewhere.mp4", "above the folder ('..')"),
    ]


def test_probes_kept_from_an_earlier_folder_are_reused_only_for_unchanged_files(
    tmp_path, monkeypatch
):
    """Probing decodes every file; a folder given an earlier one's ``probes`` probes only the
    files changed since (size or modification time) and those it has no valid entry for,
    and is the same folder: items, skips and digest."""
    for name, n in (("a.mp4", 12), ("b.mp4", 16), ("c.mp4", 3)):  # c: too short, yet probed
        _write_counting_clip(tmp_path / name, n)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,a\nb.mp4,b\nc.mp4,c\n")
    probed = []
    real_probe = video_folder.probe
    monkeypatch.setattr(
        video_folder, "probe", lambda path: probed.append(path.name) or real_probe(path)
    )

    def make(probes=None, workers=1):
        with pytest.warns(UserWarning, match="too short"):
            return video_folder.VideoTextFolder(
                tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0, probes=probes, workers=workers
            )

    first = make()
    assert sorted(probed) == ["a.mp4", "b.mp4", "c.mp4"] and set(first.probes) == set(probed)
    assert first.probes["b.mp4"]["frames"] == 16 and first.probes["b.mp4"]["fps"] == 12.0
    probed.clear()
    again = make(json.loads(json.dumps(first.probes)), workers=2)  # as a JSON file keeps them
    assert probed == []
    assert again.items == first.items and again.skipped == first.skipped
    assert again.state_dict()["digest"] == first.state_dict()["digest"]
    assert again.probes == first.probes
    _write_counting_clip(tmp_path / "b.mp4", 20)  # changed in place: probed again
    damaged = dict(first.probes)  # c's entry holds: c is not probed
    damaged["a.mp4"] = dict(first.probes["a.mp4"], frames=-1)  # not trusted: probed again
    changed = make(damaged)
    assert sorted(probed) == ["a.mp4", "b.mp4"]
    assert changed.probes["b.mp4"]["frames"] == 20 and changed.probes["a.mp4"]["frames"] == 12
    assert changed.state_dict()["digest"] != first.state_dict()["digest"]  # b has more frames
    probed.clear()
    before = (tmp_path / "a.mp4").stat()
    (tmp_path / "a.mp4").write_bytes((tmp_path / "a.mp4").read_bytes())  # rewritten in place,
    os.utime(tmp_path / "a.mp4", ns=(before.st_atime_ns, before.st_mtime_ns))  # time set back
    assert (tmp_path / "a.mp4").stat().st_ctime_ns != before.st_ctime_ns
    make(changed.probes)
    assert probed == ["a.mp4"]
    with pytest.raises(ValueError, match=r"probes=list: give a mapping \{path: entry\}"):
        video_folder.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, 4.0, probes=[])


@pytest.mark.parametrize(
    "entry, reused",
    [
        ({}, (12, 12.0)),
        ({"fps": 24}, (12, 24.0)),
        ({"size": 11}, None),  # another size
        ({"mtime_ns": 6}, None),  # touched since
        ({"ino": 8}, None),  # another file in its place (a copy that kept size and time)
        ({"ino": None}, None),  # an entry from before the inode was kept
        ({"ctime_ns": 4}, None),  # written since, its modification time set back
        ({"ctime_ns": None}, None),  # an entry from before the status-change time was kept
        ({"frames": "12"}, None),
        ({"frames": True}, None),
        ({"frames": -1}, None),
        ({"fps": 0}, None),
        ({"fps": float("nan")}, None),
        ({"fps": None}, None),
    ],
)
def test_a_kept_probe_is_used_only_where_it_is_whole_and_the_file_unchanged(entry, reused):
    stat = type("Stat", (), {"st_size": 10, "st_mtime_ns": 5, "st_ctime_ns": 9, "st_ino": 7})()
    whole = {"size": 10, "mtime_ns": 5, "ctime_ns": 9, "ino": 7, "frames": 12, "fps": 12.0}
    kept = {k: v for k, v in (whole | entry).items() if v is not None}
    assert video_folder.reused_probe(kept, stat) == reused
    assert video_folder.reused_probe([10, 5, 7, 12, 12.0], stat) is None  # not a mapping
