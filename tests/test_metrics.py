"""Caption alignment reads rendered ground truth back exactly and shuffled prompts at chance."""

import pytest
import torch

from ivref import data, metrics


def _rendered(num_frames, width, height, fps, seed=0, repeats=2):
    g = torch.Generator().manual_seed(seed)
    prompts = list(data.CAPTIONS) * repeats
    return torch.stack(
        [data.render(p, num_frames, width, height, fps, g) for p in prompts]
    ), prompts


@pytest.mark.parametrize("size", [(8, 16, 16, 3.0), (16, 32, 32, 6.0), (8, 40, 24, 3.0)])
def test_ground_truth_scores_full_marks_at_every_stage_size(size):
    videos, prompts = _rendered(*size)
    result = metrics.caption_alignment(videos, prompts)
    assert result["n"] == len(prompts)
    assert {k: result[k] for k in ("color", "shape", "motion", "all")} == {
        "color": 1.0,
        "shape": 1.0,
        "motion": 1.0,
        "all": 1.0,
    }
    assert all(p["correct"] for p in result["predictions"])


def test_robust_to_mild_noise():
    videos, prompts = _rendered(8, 16, 16, 3.0, seed=1)
    noisy = videos + 0.1 * torch.randn(videos.shape, generator=torch.Generator().manual_seed(2))
    result = metrics.caption_alignment(noisy.clamp(-1, 1), prompts)
    assert result["color"] == 1.0 and result["motion"] == 1.0 and result["shape"] >= 0.97


def test_shuffled_prompts_score_near_chance():
    videos, prompts = _rendered(8, 16, 16, 3.0, seed=3, repeats=3)
    perm = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0)).tolist()
    result = metrics.caption_alignment(videos, [prompts[i] for i in perm])
    # chance: 1/7, 1/3, 1/4, 1/84; 252 samples give a standard error of ~0.03
    assert abs(result["color"] - 1 / 7) < 0.08
    assert abs(result["shape"] - 1 / 3) < 0.1
    assert abs(result["motion"] - 1 / 4) < 0.1
    assert result["all"] < 0.05


def test_predictions_name_what_is_wrong():
    g = torch.Generator().manual_seed(0)
    video = data.render("a blue square moving down", 8, 16, 16, 3.0, g)[None]
    result = metrics.caption_alignment(video, ["a blue circle moving up"])
    pred = result["predictions"][0]
    assert (pred["color"], pred["shape"], pred["motion"]) == ("blue", "square", "down")
    assert result["color"] == 1.0 and result["shape"] == 0.0 and result["motion"] == 0.0
    assert not pred["correct"]


def test_blank_video_is_wrong_and_image_prompts_skip_motion():
    blank = -torch.ones(1, 3, 8, 16, 16)
    result = metrics.caption_alignment(blank, ["a red circle moving left"])
    assert result["all"] == 0.0 and result["predictions"][0]["color"] is None
    still = data.render("a green triangle", 8, 16, 16, 3.0, torch.Generator())[None]
    result = metrics.caption_alignment(still, ["a green triangle"])
    assert result["all"] == 1.0 and result["motion"] != result["motion"]  # NaN: no motion asked


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="outside the toy vocabulary"):
        metrics.caption_alignment(-torch.ones(1, 3, 2, 8, 8), ["a dog"])
    with pytest.raises(ValueError, match="2 prompts for 1 videos"):
        metrics.caption_alignment(-torch.ones(1, 3, 2, 8, 8), ["a red circle"] * 2)


def _renders(prompts, frames, size, fps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([data.render(p, frames, size, size, fps, g) for p in prompts])


def test_motion_progress_passes_renders_and_fails_frame_repetition():
    prompts = [data.caption(*c) for c in data.COMBOS[::3]]
    truth = _renders(prompts, 16, 64, 6.0)
    assert all(metrics.motion_progress(truth, prompts))
    repeated = truth[:, :, ::2].repeat_interleave(2, dim=2)  # stands still every other step
    assert not any(metrics.motion_progress(repeated, prompts))
    backwards = truth.flip(2)  # moving the other way fails too
    assert not any(metrics.motion_progress(backwards, prompts))
    still = _renders(["a red circle"], 16, 64, 6.0)
    assert metrics.motion_progress(still, ["a red circle"]) == [None]


def test_laplacian_energy_is_exact_on_a_ramp_and_drops_with_blur():
    ramp = torch.arange(8.0)[None, None, None, None, :].expand(1, 3, 2, 8, 8) ** 2 / 100
    assert metrics.laplacian_energy(ramp).item() == pytest.approx(2 / 100)  # d2(x^2) = 2
    sharp = _renders(["a red square moving left"], 4, 64, 3.0)
    small = _renders(["a red square moving left"], 4, 16, 3.0)
    blurred = torch.nn.functional.interpolate(small, size=(4, 64, 64), mode="trilinear")
    assert metrics.laplacian_energy(blurred) < 0.5 * metrics.laplacian_energy(sharp)


def test_degenerate_videos_are_not_read_as_aligned():
    """Each scored as aligned before: a shape that vanishes after two frames (every
    attribute), and a still shape under faint noise (motion at chance)."""
    prompts = ["a red circle moving left", "a blue square moving up"]
    truth = _renders(prompts, 16, 64, 6.0)
    vanishing = truth.clone()
    vanishing[:, :, 2:] = -1
    read = metrics.read_videos(vanishing)
    assert [r[1:] for r in read] == [(None, None)] * 2
    assert metrics.caption_alignment(vanishing, prompts)["all"] == 0.0
    frozen = truth[:, :, :1].expand(-1, -1, 16, -1, -1)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.0, 0.02):
        jitter = (frozen + sigma * torch.randn(frozen.shape, generator=g)).clamp(-1, 1)
        assert [r[2] for r in metrics.read_videos(jitter)] == [None, None]
        assert metrics.caption_alignment(jitter, prompts)["motion"] == 0.0


def test_the_slowest_toy_motion_travels_well_over_the_threshold():
    """MIN_TRAVEL sits below what every render travels (0.22 of the shorter side)."""
    slow = data.TRAVEL_RANGE[0] * (8 - 1) / 8  # over 8 frames at the least travel
    assert metrics.MIN_TRAVEL < 0.5 * slow


def test_bad_videos_say_what_is_allowed():
    video, prompts = _rendered(8, 16, 16, 3.0, repeats=1)
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\].*got values in \[0, 255\]"):
        metrics.caption_alignment((video + 1) * 127.5, prompts)
    with pytest.raises(ValueError, match="must be floats in .* got torch.uint8"):
        metrics.caption_alignment(((video + 1) * 127.5).to(torch.uint8), prompts)
    with pytest.raises(ValueError, match=r"no videos to read \(B = 0\)"):
        metrics.caption_alignment(video[:0], [])
    with pytest.raises(
        ValueError, match=r"expected videos \(B, 3, F, H, W\), got \(3, 8, 16, 16\)"
    ):
        metrics.motion_progress(video[0], prompts[:1])


def test_motion_progress_scaled_to_the_frame_passes_renders_of_every_stage_size():
    """Its defaults are pixels of the 64 px, 16-frame videos: at the TSR's 16 x 16, 16
    frames, renders failed (a step there is a quarter as long)."""
    prompts = [data.caption(*c) for c in data.COMBOS[::3]]
    for frames, size in ((16, 16), (16, 32), (16, 64), (8, 16)):
        truth = _renders(prompts, frames, size, 6.0 * frames / 16)
        k = metrics.motion_step_scale(size, size, frames)
        assert all(metrics.motion_progress(truth, prompts, max_back=k, min_step=0.4 * k))
    assert metrics.motion_step_scale(64, 64, 16) == 1.0
    small = _renders(prompts, 16, 16, 6.0)
    assert not all(metrics.motion_progress(small, prompts))  # unscaled: fails the truth


def test_a_cross_fade_passes_motion_progress_as_its_docstring_warns():
    prompts = [data.caption(*c) for c in data.COMBOS[::7]]
    truth = _renders(prompts, 16, 64, 6.0)
    kept = truth[:, :, ::2]
    after = torch.cat([kept[:, :, 1:], kept[:, :, -1:]], dim=2)
    fade = torch.stack([kept, 0.5 * (kept + after)], dim=3).flatten(2, 3)
    assert all(metrics.motion_progress(fade, prompts))


def _components_by_search(mask):
    """Reference labels by breadth-first search: 1 + the largest flat index of each
    8-connected component of one (H, W) mask."""
    h, w = mask.shape
    on = mask.tolist()
    labels = [[0] * w for _ in range(h)]
    seen = set()
    for i in range(h):
        for j in range(w):
            if not on[i][j] or (i, j) in seen:
                continue
            blob, todo = [], [(i, j)]
            seen.add((i, j))
            while todo:
                y, x = todo.pop()
                blob.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        n = (y + dy, x + dx)
                        if 0 <= n[0] < h and 0 <= n[1] < w and on[n[0]][n[1]] and n not in seen:
                            seen.add(n)
                            todo.append(n)
            label = 1 + max(y * w + x for y, x in blob)
            for y, x in blob:
                labels[y][x] = label
    return torch.tensor(labels)


@pytest.mark.parametrize("density", [0.3, 0.5, 0.6])
def test_components_match_a_breadth_first_search(density):
    g = torch.Generator().manual_seed(int(density * 10))
    masks = torch.rand(6, 13, 17, generator=g) < density  # speckled: long, winding blobs
    masks[0] = False
    masks[1, 2:11, 3:9] = True  # one solid blob among the specks
    labels = metrics.components(masks.reshape(2, 3, 13, 17)).reshape(6, 13, 17)
    for mask, got in zip(masks, labels, strict=True):
        assert torch.equal(got, _components_by_search(mask))


def _scene_clip(*scenes, frames=16, size=64, fps=6.0):
    """The brightest of several scenes' renders: shapes on one black frame."""
    clips = [data.render_scene(s, frames, size, size, fps) for s in scenes]
    return torch.stack(clips).amax(0)[None]


def test_a_second_shape_apart_is_counted_and_leaves_nothing_to_read():
    """Before blobs were counted, the pair read as a red triangle moving left (the union's
    best template and centroid) and passed the motion progress check."""
    left = data.Scene("red", "circle", "left", 0.1, (0.4, 0.3), (-0.05, 0.0))
    ghost = data.Scene("red", "circle", "left", 0.1, (0.4, 0.75), (-0.05, 0.0))
    alone, both = _scene_clip(left), _scene_clip(left, ghost)
    assert metrics.read_videos(alone) == [("red", "circle", "left")]
    counts = metrics.shape_counts(metrics.foreground(both))
    assert counts.tolist() == [[2] * 16]
    assert metrics.read_videos(both) == [("red", None, None)]
    prompt = ["a red circle moving left"]
    assert metrics.caption_alignment(both, prompt)["all"] == 0.0
    assert metrics.motion_progress(both, prompt) == [False]
    assert metrics.motion_progress(alone, prompt) == [True]
    ghost_late = both.clone()
    ghost_late[:, :, :8] = alone[:, :, :8]  # the ghost in the second half only
    assert metrics.shape_counts(metrics.foreground(ghost_late)).tolist() == [[1] * 8 + [2] * 8]
    assert metrics.read_videos(ghost_late) == [("red", None, None)]


def test_touching_shapes_are_one_blob_and_specks_are_not_shapes():
    """A speck apart from a square read as a circle before (it pulled the centroid and the
    template off the square); only the largest blob is read now."""
    big = data.Scene("blue", "square", None, 0.15, (0.5, 0.5), (0.0, 0.0))
    touching = data.Scene("blue", "square", None, 0.15, (0.75, 0.5), (0.0, 0.0))
    speck = data.Scene("blue", "square", None, 0.04, (0.1, 0.1), (0.0, 0.0))  # 7% of its area
    late = data.Scene("blue", "square", None, 0.04, (0.9, 0.9), (0.0, 0.0))  # a larger label
    lone = data.Scene("blue", "square", None, 0.3 / 64, (32.5 / 64,) * 2, (0.0, 0.0))  # 1/4 px
    blank = -torch.ones(1, 3, 16, 64, 64)
    for clip, want in (
        (_scene_clip(big, touching), 1),
        (_scene_clip(big, speck), 1),
        (_scene_clip(big, late), 1),
        (_scene_clip(big), 1),
        (_scene_clip(lone), 0),
        (blank, 0),
    ):
        assert metrics.shape_counts(metrics.foreground(clip)).unique().tolist() == [want]
    for clip in (_scene_clip(big, speck), _scene_clip(big, late)):  # the square, not the speck
        assert metrics.read_videos(clip)[0][:2] == ("blue", "square")
    half = data.Scene("blue", "square", None, 0.15 / 2, (0.15, 0.15), (0.0, 0.0))  # 26% (AA)
    assert metrics.shape_counts(metrics.foreground(_scene_clip(big, half))).unique().tolist() == [2]


def _square_frame(x, side, size=64):
    """A white pixel-aligned square, columns x to x + side - 1, on black (3, size, size)."""
    frame = -torch.ones(3, size, size)
    frame[:, 20 : 20 + side, x : x + side] = 1.0
    return frame


@pytest.mark.parametrize("side, step", [(16, 4), (16, 2), (12, 6)])
def test_a_cross_faded_square_misfits_by_its_step_over_its_side(side, step):
    """By hand: the halfway blend of a pixel-aligned square of side L and its copy d px to
    the right has coverage L^2 with half-tone strips d px wide at both ends; the square of
    that area at its centroid (the square drawn halfway) differs from it by 1/2 over 2d x L
    pixels, so the misfit is d L / L^2 = d / L. The square drawn halfway misfits by 0."""
    keys = [_square_frame(4 + j * step, side) for j in range(9)]
    fade, drawn = [], []
    for j, key in enumerate(keys):
        fade.append(key)
        drawn.append(key)
        if j < len(keys) - 1:
            fade.append(0.5 * (key + keys[j + 1]))
            drawn.append(_square_frame(4 + j * step + step // 2, side))
    fade, drawn = torch.stack(fade, 1)[None], torch.stack(drawn, 1)[None]  # 17 frames
    assert metrics.shape_misfit(metrics.foreground(fade))[0, ::2].abs().max() < 1e-6
    assert float(metrics.inbetween_misfit(fade, 2)) == pytest.approx(step / side, abs=1e-6)
    assert float(metrics.inbetween_misfit(drawn, 2)) == pytest.approx(0.0, abs=1e-6)
    assert metrics.read_videos(drawn) == [("white", "square", "right")]
    held = torch.cat([fade[:, :, :15], fade[:, :, 14:15]], dim=2)  # 16 frames: the last held
    assert float(metrics.inbetween_misfit(held, 2)) == pytest.approx(step / side, abs=1e-6)
    held[:, :, 15] = -1.0  # after the last key frame: extrapolated, not in between
    assert float(metrics.inbetween_misfit(held, 2)) == pytest.approx(step / side, abs=1e-6)


def _fade(truth, k=2):
    """Key frames 0, k, 2k, ... kept, the frames between them blended from their two."""
    out = truth.clone()
    for j in range(truth.shape[2]):
        a = j - j % k
        b = min(a + k, truth.shape[2] - 1 - (truth.shape[2] - 1) % k)
        t = (j - a) / k
        out[:, :, j] = (1 - t) * truth[:, :, a] + t * truth[:, :, b]
    return out


@pytest.mark.parametrize("frames, size, fps", [(16, 64, 6.0), (8, 32, 6.0)])
def test_renders_have_solid_inbetweens_and_their_cross_fades_do_not(frames, size, fps):
    """At the sizes where the slowest shape's key frames lie MIN_KEY_STEP px apart (the toy
    cascade's final videos; the ci cascade's) the threshold parts every render from every
    cross-fade of its key frames; frame repetition's in-between frames copy its key frames."""
    assert metrics.slowest_key_step(size, size, frames, 2) >= metrics.MIN_KEY_STEP
    prompts = list(data.CAPTIONS)
    truth = _renders(prompts, frames, size, fps)
    assert (metrics.inbetween_misfit(truth, 2) <= metrics.MAX_INBETWEEN_MISFIT).all()
    assert (metrics.inbetween_misfit(_fade(truth), 2) > metrics.MAX_INBETWEEN_MISFIT).all()
    repeated = truth[:, :, ::2].repeat_interleave(2, dim=2)  # in-betweens copy key frames
    misfit = metrics.shape_misfit(metrics.foreground(repeated))
    copied = misfit[:, 0 : frames - 2 : 2].mean(1) - misfit[:, ::2].mean(1)  # all but the last
    torch.testing.assert_close(metrics.inbetween_misfit(repeated, 2), copied)
    assert (copied.abs() <= metrics.MAX_INBETWEEN_MISFIT).all()


def test_shapes_half_a_pixel_apart_cannot_tell_a_cross_fade_from_motion():
    """At the toy TSR's 16 x 16 (the slowest key frames 0.5 px apart) some cross-fades fall
    below the threshold: the reason cascade_report leaves the check out there."""
    assert metrics.slowest_key_step(16, 16, 16, 2) == 0.5 < metrics.MIN_KEY_STEP
    prompts = [data.caption(*c) for c in data.COMBOS[::5]]
    fade = _fade(_renders(prompts, 16, 16, 6.0))
    assert (metrics.inbetween_misfit(fade, 2) <= metrics.MAX_INBETWEEN_MISFIT).any()


def test_inbetween_misfit_says_what_is_allowed_and_needs_one_shape_per_frame():
    truth = _renders(["a red circle moving left"], 8, 32, 3.0)
    for bad in (1, 8, 2.5):
        with pytest.raises(ValueError, match=r"key_every=.* must be an integer from 2 to 7"):
            metrics.inbetween_misfit(truth, bad)
    blanked = truth.clone()
    blanked[:, :, 3] = -1.0  # the shape vanishes from one frame
    assert metrics.shape_misfit(metrics.foreground(blanked))[0].isnan().tolist() == [
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        False,
    ]
    assert metrics.inbetween_misfit(blanked, 2).isnan().all()
