"""Video I/O: exact uint8 conversion, grid layout, mp4/gif round trips, atomic writes."""

import matplotlib
import numpy as np
import pytest
import torch

from ivref import data, video

matplotlib.use("Agg")


def test_to_uint8_maps_the_range_exactly():
    v = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]).reshape(1, 1, 1, 6).expand(3, 1, 1, 6)
    frames = video.to_uint8(v)
    assert frames.shape == (1, 1, 6, 3) and frames.dtype == np.uint8
    assert frames[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255, 255]
    batch = torch.rand(1, 3, 4, 5, 6) * 2 - 1
    assert video.to_uint8(batch).shape == (4, 5, 6, 3)
    back = video.from_uint8(video.to_uint8(batch))
    assert (back - batch[0]).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="one video"):
        video.to_uint8(torch.zeros(2, 3, 1, 4, 4))


def test_grid_places_each_video_in_its_cell():
    videos = torch.arange(5.0)[:, None, None, None, None].expand(5, 3, 2, 4, 6) / 10
    tiled = video.grid(videos, ncols=3, pad=1)
    assert tiled.shape == (3, 2, 2 * 5 - 1, 3 * 7 - 1)
    for i in range(6):
        r, k = divmod(i, 3)
        cell = tiled[:, :, r * 5 : r * 5 + 4, k * 7 : k * 7 + 6]
        assert torch.all(cell == (i / 10 if i < 5 else -1.0))
    assert torch.all(tiled[:, :, 4] == -1) and torch.all(tiled[:, :, :, 6] == -1)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_then_read_round_trip(tmp_path, suffix):
    clip = data.render("a yellow square moving right", 6, 16, 16, 3.0, torch.Generator())
    path = video.write_video(tmp_path / f"clip{suffix}", clip, fps=3.0)
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]  # no temp file left
    back, fps = video.read_video(path)
    assert back.shape == clip.shape
    assert (back - clip).abs().mean() < 0.05  # lossy codecs, but the same picture
    assert fps == pytest.approx(3.0, rel=0.05)


def test_write_rejects_other_suffixes_and_odd_sizes_still_write(tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4"):
        video.write_video(tmp_path / "clip.avi", torch.zeros(3, 2, 8, 8), fps=3)
    assert not list(tmp_path.iterdir())
    batch = torch.zeros(3, 3, 2, 7, 9)  # a batch is tiled; odd sizes are padded for h264
    back, _ = video.read_video(video.write_video(tmp_path / "grid.mp4", batch, fps=3))
    assert back.shape[1] == 2 and back.shape[2] % 2 == 0 and back.shape[3] % 2 == 0
    with pytest.raises(FileNotFoundError):
        video.read_video(tmp_path / "absent.mp4")


def test_uint8_frames_are_written_as_pixels_from_numpy_and_torch(tmp_path):
    """A torch uint8 tensor (F, H, W, 3) was taken for a [-1, 1] video: 3 frames of 16 x 16
    became a 16-frame white clip of 3 x 16 pixels (gif: lossless, so exact here)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (8, 3)).astype(np.uint8)  # few colours: a gif keeps them
    frames = palette[rng.integers(0, 8, (3, 16, 16))]
    for given in (frames, torch.from_numpy(frames)):
        back, _ = video.read_video(video.write_video(tmp_path / "u8.gif", given, fps=6))
        assert back.shape == (3, 3, 16, 16)
        assert np.array_equal(video.to_uint8(back), frames)
    with pytest.raises(ValueError, match=r"uint8 frames must be \(F, H, W, 3\), got \(3, 16, 16\)"):
        video.write_video(tmp_path / "x.gif", frames[..., 0], fps=6)
    with pytest.raises(ValueError, match="takes a float video in \\[-1, 1\\]; got uint8"):
        video.to_uint8(torch.from_numpy(frames))


def test_write_video_writes_through_a_symbolic_link(tmp_path):
    """ivref generate --out link.gif replaced the link with a file of its own."""
    (tmp_path / "kept").mkdir()
    target, link = tmp_path / "kept" / "v.gif", tmp_path / "link.gif"
    link.symlink_to(target)  # dangling until written
    video.write_video(link, torch.zeros(3, 2, 8, 8), fps=6)
    assert link.is_symlink() and video.read_video(target)[0].shape == (3, 2, 8, 8)


def test_write_video_explains_empty_videos_and_bad_rates(tmp_path):
    with pytest.raises(ValueError, match=r"the video is empty: frames \(F, H, W, 3\) of \(0, 8, 8"):
        video.write_video(tmp_path / "e.gif", torch.zeros(3, 0, 8, 8), fps=6)
    with pytest.raises(TypeError, match="fps='6' must be a number"):
        video.write_video(tmp_path / "e.gif", torch.zeros(3, 2, 8, 8), fps="6")
    for fps in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            video.write_video(tmp_path / "e.gif", torch.zeros(3, 2, 8, 8), fps=fps)
    assert not list(tmp_path.iterdir())


def test_show_and_plot_losses():
    html = video.show(torch.zeros(2, 3, 2, 8, 8), ["a", "b"], return_html=True)
    assert html.count("<img") == 2 or html.count("<video") == 2
    log = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(50)] + [{"step": 49, "eval": 0.5}]
    ax = video.plot_losses(log, keys=("loss", "eval"), smooth=10)
    assert len(ax.lines) == 3  # raw loss, smoothed loss, one eval point


def test_upscale_and_stage_grid_repeat_pixels_and_frames_exactly():
    small = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    big = video.upscale(small, 3)
    assert big.shape == (2, 3, 4, 24, 24) and torch.equal(big[..., ::3, ::3], small)
    assert torch.equal(video.upscale(small, np.int64(3)), big)  # NumPy's integers too
    assert torch.equal(video.grid(small, ncols=np.int64(1)), video.grid(small, ncols=1))
    assert video.display_factor(64, 64, 256) == 4 and video.display_factor(300, 20, 256) == 1
    base = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    tsr = torch.rand(2, 3, 8, 8, 8) * 2 - 1
    ssr = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    tiled = video.stage_grid([base, tsr, ssr], pad=1)
    assert tiled.shape == (3, 8, 2 * 17 - 1, 3 * 17 - 1)
    assert torch.equal(tiled[:, ::2, :16:2, :16:2], base[0])  # row 0, column 0, nearest
    assert torch.equal(tiled[:, :, 17:33, 34:50], ssr[1])  # row 1, column 2
    with pytest.raises(ValueError, match="does not divide"):
        video.stage_grid([torch.zeros(1, 3, 3, 8, 8), ssr[:1]])


def test_bad_videos_and_grids_get_a_clear_error(tmp_path):
    """A NaN video is refused, not written black; an empty batch or bad layout is named; a
    file ffmpeg cannot read says so in one line."""
    nan = torch.zeros(1, 3, 2, 4, 4)
    nan[0, 0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"holds 1 non-finite values \(NaN or inf\)"):
        video.write_video(tmp_path / "v.mp4", nan, fps=6)
    assert not (tmp_path / "v.mp4").exists()
    with pytest.raises(ValueError, match="grid\\(\\) got an empty batch"):
        video.grid(torch.zeros(0, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="ncols=0 must be None"):
        video.grid(torch.zeros(2, 3, 2, 4, 4), ncols=0)
    with pytest.raises(ValueError, match="pad=-1 must be an integer >= 0"):
        video.grid(torch.zeros(2, 3, 2, 4, 4), pad=-1)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"'.*broken.mp4' is not a readable video \(ffmpeg: "):
        video.read_video(broken)


@pytest.fixture
def fresh_ffmpeg_check():
    """Forget which ffmpeg was checked (and given to mediapy), before and after the test."""
    from ivref import video_files

    def clear():
        video_files.ffmpeg_exe.cache_clear()
        video.ensure_ffmpeg.cache_clear()

    clear()
    yield
    clear()


def test_reading_works_with_an_ffmpeg_that_has_no_vsync(tmp_path, monkeypatch, fresh_ffmpeg_check):
    """imageio-ffmpeg 0.8 ships FFmpeg 9, which refuses -vsync; mediapy's reader passed it, so
    every read failed there. A stand-in ffmpeg that refuses it as FFmpeg 9 does: writing,
    reading and a folder of videos still work."""
    import imageio_ffmpeg

    from ivref import video_files

    real = imageio_ffmpeg.get_ffmpeg_exe()
    fake = tmp_path / "ffmpeg9"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do if [ "$a" = -vsync ]; then\n'
        "  echo \"Unrecognized option 'vsync'.\" >&2; exit 8; fi; done\n"
        f'exec "{real}" "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))
    assert video_files.ffmpeg_exe() == str(fake)
    clip = data.render("a red circle moving left", 8, 16, 16, 6.0, torch.Generator())
    path = video.write_video(tmp_path / "clip.mp4", clip, fps=6)
    back, fps = video.read_video(path)
    assert back.shape == clip.shape and fps == 6.0 and (back - clip).abs().mean() < 0.05
    assert video_files.probe(path) == (8, 6.0)


def test_probe_reads_frame_counts_and_rates_as_the_file_holds_them(tmp_path):
    """The count is every decoded frame; the rate is the header's: 29.97 for 30000/1001, and
    for a GIF ffmpeg's reading of its frame delays (read back with Pillow): whole hundredths
    of a second, which at 6 fps alternate 16 and 17 (6 fps on average), read as the shortest."""
    from PIL import Image

    from ivref import video_files

    frames = np.random.default_rng(0).integers(0, 256, (13, 16, 16, 3), dtype=np.uint8)
    ntsc = video.write_video(tmp_path / "ntsc.mp4", frames, fps=30000 / 1001)
    assert video_files.probe(ntsc) == (13, 29.97)
    assert video_files.exact_fps(29.97) == 30000 / 1001
    gif = video.write_video(tmp_path / "six.gif", frames, fps=6)
    with Image.open(gif) as image:
        delays_ms = []
        for k in range(image.n_frames):
            image.seek(k)
            delays_ms.append(image.info["duration"])
    assert sorted(set(delays_ms)) == [160, 170] and sum(delays_ms[:12]) == 2000  # 12 at 6 fps
    assert video_files.probe(gif) == (13, 1000 / min(delays_ms))
    text = tmp_path / "text.mp4"
    text.write_text("not a video")
    with pytest.raises(video_files.VideoProbeError, match="Invalid data"):
        video_files.probe(text)


@pytest.mark.parametrize(
    "version, too_old",
    [("4.2.2", True), ("5.0.1", True), ("5.1", False), ("7.0.2-static", False),
     ("n9.0.2-17-g2a571b6068-20260930", False), ("N-113421-gabcdef", False)],
)  # fmt: skip
def test_an_ffmpeg_too_old_to_read_with_is_named(
    tmp_path, monkeypatch, fresh_ffmpeg_check, version, too_old
):
    """imageio-ffmpeg before 0.6 ships FFmpeg 4.2, which has no -fps_mode: reading says so
    (not that the file is unreadable); a version from a git build is taken as new."""
    import imageio_ffmpeg

    from ivref import video_files

    path = video.write_video(tmp_path / "clip.mp4", torch.zeros(3, 2, 8, 8), fps=3)
    video_files.ffmpeg_exe.cache_clear()
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_version", lambda: version)
    if too_old:
        with pytest.raises(RuntimeError, match=f"ffmpeg {version} at .* is too old: .*5.1 .*"
                           r"imageio-ffmpeg>=0.6"):  # fmt: skip
            video.read_video(path)
    else:
        assert video.read_video(path)[0].shape == (3, 2, 8, 8)
