"""The toy world: vocabulary, splits, determinism, geometry."""

import math

import pytest
import torch

from ivref import data


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
