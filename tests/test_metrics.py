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
