"""The toy world: vocabulary, splits, determinism, geometry, and real-video folders."""

import json
import math

import numpy as np
import pytest
import torch

from ivref import data, video


def test_vocabulary_is_the_design_cards():
    assert len(data.CAPTIONS) == 7 * 3 * 4 == len(set(data.CAPTIONS))
    assert "a red circle moving left" in data.CAPTIONS
    for text in data.CAPTIONS:
        assert data.caption(*data.parse_caption(text)) == text
    assert data.parse_caption("a cyan square") == ("cyan", "square", None)


@pytest.mark.parametrize(
    "bad", ["a purple circle moving left", "a red hexagon", "a red circle moving sideways", "red"]
)
def test_parse_caption_rejects_words_outside_the_vocabulary(bad):
    with pytest.raises(ValueError, match="outside the toy vocabulary"):
        data.parse_caption(bad)


def test_heldout_split_is_disjoint_and_leaves_every_value_in_training():
    train, held = set(data.SPLITS["train"]), set(data.SPLITS["heldout"])
    assert not train & held and train | held == set(data.COMBOS)
    assert 0.05 <= len(held) / len(data.COMBOS) <= 0.15
    for axis, values in enumerate((data.COLORS, data.SHAPES, data.MOTIONS)):
        assert {c[axis] for c in train} == set(values)
    seen = set(data.ToyVideos(1, 8, 8, split="train").sample(1000)[1])
    assert seen == {data.caption(*c) for c in train}
    assert set(data.ToyVideos(2, 8, 8, split="heldout").sample(100)[1]) <= set(
        data.caption(*c) for c in held
    )


def test_sample_contract_and_determinism():
    ds = data.ToyVideos(num_frames=4, width=16, height=8, fps=3.0, image_ratio=0.5, seed=3)
    videos, captions, is_image = ds.sample(6)
    assert videos.shape == (6, 3, 4, 8, 16) and videos.dtype == torch.float32
    assert videos.min() >= -1 and videos.max() <= 1 and len(captions) == 6
    assert is_image.dtype == torch.bool and is_image.shape == (6,)
    for text, img in zip(captions, is_image.tolist(), strict=True):
        assert (data.parse_caption(text)[2] is None) == img
    again = data.ToyVideos(4, 16, 8, 3.0, image_ratio=0.5, seed=3).sample(6)
    assert torch.equal(again[0], videos) and again[1] == captions
    other = data.ToyVideos(4, 16, 8, 3.0, image_ratio=0.5, seed=4).sample(6)
    assert not torch.equal(other[0], videos)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(ds.sample(3, g1)[0], data.ToyVideos(4, 16, 8, seed=0).sample(3, g2)[0])


def test_image_ratio_extremes():
    assert not data.ToyVideos(2, 8, 8, image_ratio=0.0).sample(20)[2].any()
    videos, captions, is_image = data.ToyVideos(4, 16, 16, image_ratio=1.0).sample(5)
    assert is_image.all() and all(data.parse_caption(c)[2] is None for c in captions)
    # an image pack holds independent stills: no two frames alike
    frames = videos[0].transpose(0, 1).flatten(1)
    assert torch.cdist(frames, frames).add(torch.eye(4) * 1e9).min() > 0


@pytest.mark.parametrize("shape,area", [("circle", math.pi), ("square", 4.0), ("triangle", 2.0)])
def test_coverage_integrates_to_the_analytic_area(shape, area):
    """Sum of anti-aliased coverage / S^2 = area of the shape (r^2 * {pi, 4, 2})."""
    r = torch.tensor([0.2, 0.25], dtype=torch.float64)
    centers = torch.tensor([[0.5, 0.5], [0.413, 0.577]], dtype=torch.float64)
    cov = data.coverage(shape, centers, r, 32, 32)
    assert ((cov > 0) & (cov < 1)).any(), "edges are anti-aliased"
    measured = cov.double().sum((1, 2)) / 32**2
    # supersampling places each edge to within 1 / (2 * SUPERSAMPLE) px: <= 4% of 12.8 px here
    torch.testing.assert_close(measured, area * r**2, rtol=0.04, atol=0)


def test_scenes_stay_in_frame_and_move_as_captioned():
    g = torch.Generator().manual_seed(0)
    for text in data.CAPTIONS:
        clip = data.render(text, 8, 48, 32, fps=3.0, generator=g)
        c = (clip.max(0).values + 1) / 2  # (F, H, W) coverage
        area = c.sum((1, 2))  # constant: the shape is never clipped by the frame
        torch.testing.assert_close(area, area.mean().expand(8), rtol=0.03, atol=0)
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
        cx, cy = (c * xs).sum((1, 2)) / area, (c * ys).sum((1, 2)) / area
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        want = data.MOTIONS[data.parse_caption(text)[2]]
        travel = dx * want[0] + dy * want[1]
        assert 32 * data.TRAVEL_RANGE[0] * 7 / 8 - 0.5 < travel < 32 * data.TRAVEL_RANGE[1]
        assert (
            abs(dx * want[1] + dy * want[0]) < 0.15
        )  # no sideways drift (beyond sub-pixel sampling)


def test_same_scene_at_every_stage_frame_rate_and_size():
    """Frame k at 3 fps is frame 2k at 6 fps; a 4x larger render pools back to the small one."""
    scene = data.random_scene("a red triangle moving up", 16, 16, 8 / 3, torch.Generator())
    base = data.render_scene(scene, 8, 16, 16, 3.0)
    tsr = data.render_scene(scene, 16, 16, 16, 6.0)
    torch.testing.assert_close(tsr[:, ::2], base, rtol=0, atol=1e-6)
    big = data.render_scene(scene, 8, 64, 64, 3.0)
    pooled = torch.nn.functional.avg_pool2d(big.transpose(0, 1), 4).transpose(0, 1)
    assert (pooled - base).abs().mean() < 0.01


def _write_counting_clip(path, n, fps=12.0):
    """n frames of 16x16 gray whose level encodes the frame index: 20 * k."""
    frames = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 20, 16, 1)
    video.write_video(path, np.broadcast_to(frames, (n, 16, 16, 3)).copy(), fps=fps)


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
        ds = data.VideoTextFolder(
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


def test_video_text_folder_reads_csv_and_rejects_bad_index(tmp_path):
    _write_counting_clip(tmp_path / "a.mp4", 8)
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    ds = data.VideoTextFolder(tmp_path, tmp_path / "index.csv", 2, 16, 16, fps=6.0)
    assert len(ds) == 1 and not ds.skipped
    (tmp_path / "bad.csv").write_text("file,text\na.mp4,hello\n")
    with pytest.raises(ValueError, match="'path' and 'caption'"):
        data.VideoTextFolder(tmp_path, tmp_path / "bad.csv", 2, 16, 16, fps=6.0)
    with pytest.raises(FileNotFoundError):
        data.VideoTextFolder(tmp_path, tmp_path / "nope.csv", 2, 16, 16, fps=6.0)
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4", "caption": "hello"}\n{"path": a.mp4\n')
    with pytest.raises(ValueError, match=r"bad.jsonl' line 2 is not JSON \(Expecting value\)"):
        data.VideoTextFolder(tmp_path, tmp_path / "bad.jsonl", 2, 16, 16, fps=6.0)


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
        ds = data.VideoTextFolder(tmp_path, index, num_frames=4, width=8, height=8, fps=4.0)
    assert len(ds) == 1
    assert "2 fps is below the clip's 4 fps: frames would repeat" in ds.skipped[0][1]
    assert [r.split(":")[0] for _, r in ds.skipped[1:]] == [
        "caption ' '",
        "caption 5",
        "caption None",
    ]
    (tmp_path / "bom.csv").write_bytes("path,caption\ngood.mp4,hello\n".encode("utf-8-sig"))
    assert len(data.VideoTextFolder(tmp_path, tmp_path / "bom.csv", 4, 8, 8, fps=4.0)) == 1


def test_a_folder_with_no_usable_video_is_an_error_not_an_empty_dataset(tmp_path):
    """Empty, a Trainer given it trained on the toy world instead (``dataset or toy``)."""
    (tmp_path / "index.csv").write_text("path,caption\nmissing.mp4,hello\n")
    with pytest.warns(UserWarning, match="skipping"):
        with pytest.raises(ValueError, match=r"no usable videos .* \[\('missing.mp4', 'file not"):
            data.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    (tmp_path / "empty.csv").write_text("path,caption\n")
    with pytest.raises(ValueError, match="no usable videos .*the index is empty"):
        data.VideoTextFolder(tmp_path, tmp_path / "empty.csv", 4, 8, 8, fps=4.0)


def test_a_clip_is_decoded_only_up_to_its_last_frame(tmp_path, monkeypatch):
    """A long source is not read whole for a short clip (a 1080p minute: gigabytes a sample)."""
    import mediapy

    _write_counting_clip(tmp_path / "long.mp4", 60)
    (tmp_path / "index.csv").write_text("path,caption\nlong.mp4,hello\n")
    ds = data.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
    decoded = []
    real = mediapy.VideoReader.__iter__

    def counting(reader):
        for frame in real(reader):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(mediapy.VideoReader, "__iter__", counting)
    clip, _ = ds.load(0)
    assert len(decoded) == 10  # source frames 0, 3, 6, 9 of 60
    levels = (clip.mean((0, 2, 3)) + 1) * 127.5
    torch.testing.assert_close(levels, torch.tensor([0.0, 60, 120, 180]), atol=6, rtol=0)


def test_clips_start_anywhere_that_fits_and_each_start_is_drawn(tmp_path):
    """Before, every clip was its file's first seconds: a long source taught only its opening."""
    _write_counting_clip(tmp_path / "a.mp4", 13)  # 4 frames @ 4 fps span 10 of 12 fps: 4 starts
    (tmp_path / "index.csv").write_text("path,caption\na.mp4,hello\n")
    ds = data.VideoTextFolder(tmp_path, tmp_path / "index.csv", 4, 8, 8, fps=4.0)
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
