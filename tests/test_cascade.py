"""The cascade: save/load round trip, generation shape/range/determinism, clear errors."""

import json

import pytest
import torch

from ivref import configs
from ivref.cascade import Cascade, check_prompts
from ivref.unet3d import VideoUNet


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
    assert manifest["stages"] == ["base"]
    loaded = Cascade.from_pretrained(tmp_path, encoder=ci_cascade.encoder)
    assert loaded.cfg == ci_cascade.cfg
    for name, tensor in ci_cascade.models["base"].state_dict().items():
        # Shipped weights are fp16: the round trip equals the fp16 rounding, exactly.
        expected = tensor.half().to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.models["base"].state_dict()[name], expected), name
    a = ci_cascade.generate(["a red circle moving left"], seed=0, steps=2)
    b = loaded.generate(["a red circle moving left"], seed=0, steps=2)
    assert torch.allclose(a, b, atol=2e-2)


def test_missing_folder_and_corrupted_files_say_what_is_wrong(ci_cascade, tmp_path):
    with pytest.raises(FileNotFoundError, match="cascade.json"):
        Cascade.from_pretrained(tmp_path / "nowhere")
    ci_cascade.save_pretrained(tmp_path)
    weights = tmp_path / "base.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="base.safetensors"):
        Cascade.from_pretrained(tmp_path)
    (tmp_path / "cascade.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid cascade manifest"):
        Cascade.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "prompts, message",
    [
        ("a red circle", "one string"),
        ([], "empty"),
        (["ok", ""], r"prompts\[1\]"),
        ([3], r"prompts\[0\]"),
    ],
)
def test_bad_prompts(prompts, message):
    with pytest.raises(ValueError, match=message):
        check_prompts(prompts)


def test_bad_generate_arguments(ci_cascade):
    with pytest.raises(ValueError, match="steps=0"):
        ci_cascade.generate(["a red circle moving left"], steps=0)
    with pytest.raises(ValueError, match="guidance=-1"):
        ci_cascade.generate(["a red circle moving left"], guidance=-1.0)


def test_models_must_be_a_prefix_of_the_stages():
    cfg = configs.preset("ci")
    with pytest.raises(ValueError, match="prefix"):
        Cascade(cfg, {"tsr": VideoUNet(cfg.stages[1].unet)})
    with pytest.raises(ValueError, match="unknown stages"):
        Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet), "zz": VideoUNet(cfg.stages[0].unet)})
