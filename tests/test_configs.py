"""Presets build and validate; every bad value names its field."""

import dataclasses

import pytest

from ivref import config_types, configs


def test_configs_re_exports_the_config_classes_as_the_same_objects():
    """configs.X (the documented name) is config_types.X, so isinstance checks agree."""
    classes = [n for n in dir(config_types) if n.endswith("Config")]
    assert len(classes) == 7, classes
    for name in classes:
        assert getattr(configs, name) is getattr(config_types, name), name
    assert [n for n in configs.__all__ if not hasattr(configs, n)] == []
    assert isinstance(configs.preset("ci").stages[0], config_types.StageConfig)


@pytest.mark.parametrize("name", ["ci", "toy", "paper"])
def test_presets_build_and_round_trip_through_dict(name):
    cfg = configs.preset(name)
    assert cfg.name == name
    assert cfg.stages[0].kind == "base"
    assert configs.CascadeConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'bogus'.*\['ci', 'toy', 'paper'\]"):
        configs.preset("bogus")


def test_toy_preset_has_the_design_sizes():
    # docs/design.md "Scales": base 8x16x16 @3 -> TSR 16x16x16 @6 -> SSR 32 -> SSR 64.
    sizes = [(s.kind, s.num_frames, s.width, s.height, s.fps) for s in configs.preset("toy").stages]
    assert sizes == [
        ("base", 8, 16, 16, 3),
        ("tsr", 16, 16, 16, 6),
        ("ssr", 16, 32, 32, 6),
        ("ssr", 16, 64, 64, 6),
    ]
    last = configs.preset("toy").stages[-1].unet
    assert last.fully_convolutional and not any(last.spatial_attention)


def test_paper_preset_has_the_seven_stages_of_fig6():
    # [IV Fig. 6]: frames x width x height @ fps.
    got = [(s.kind, s.num_frames, s.width, s.height, s.fps) for s in configs.preset("paper").stages]
    assert got == [
        ("base", 16, 40, 24, 3),
        ("tsr", 32, 40, 24, 6),
        ("ssr", 32, 80, 48, 6),
        ("ssr", 32, 320, 192, 6),
        ("tsr", 64, 320, 192, 12),
        ("tsr", 128, 320, 192, 24),
        ("ssr", 128, 1280, 768, 24),
    ]
    assert configs.preset("paper").text.dim == 4096


def _stage(**changes):
    base = configs.preset("ci").stages[0]
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"num_frames": -1}, "num_frames"),
        ({"width": 0}, "width"),
        ({"height": 7}, "height"),  # not divisible by the U-Net's downsampling
        ({"kind": "superres"}, "kind"),
        ({"fps": 0}, "fps"),
        ({"sample_steps": 0}, "sample_steps"),
        ({"guidance_w": -1.0}, "guidance_w"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_stage_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"\.{field}="):
        _stage(**changes)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"base_channels": 0}, "base_channels"),
        ({"channel_mults": ()}, "channel_mults"),
        ({"spatial_attention": (True,)}, "spatial_attention"),
        ({"temporal_mixing": ("attention", "lstm")}, "temporal_mixing"),
        ({"norm_groups": 7}, "norm_groups"),
        ({"head_dim": 5}, "head_dim"),
        ({"dropout": 1.5}, "dropout"),
        ({"cond_channels": -3}, "cond_channels"),
    ],
)
def test_bad_unet_values_name_the_field(changes, field):
    unet = configs.preset("ci").stages[0].unet
    with pytest.raises(ValueError, match=rf"UNetConfig\.{field}="):
        dataclasses.replace(unet, **changes)


def test_fully_convolutional_forbids_spatial_attention():
    unet = configs.preset("ci").stages[0].unet
    with pytest.raises(ValueError, match="fully_convolutional"):
        dataclasses.replace(unet, fully_convolutional=True)


@pytest.mark.parametrize(
    "cls, changes, field",
    [
        (configs.TextConfig, {"encoder": "gpt"}, "encoder"),
        (configs.TextConfig, {"dim": 0}, "dim"),
        (configs.DiffusionConfig, {"logsnr_min": 30.0}, "logsnr_min"),
        (configs.DiffusionConfig, {"loss": "l1"}, "loss"),
        (configs.DiffusionConfig, {"sampler": "euler"}, "sampler"),
        (configs.DiffusionConfig, {"threshold_percentile": 1.5}, "threshold_percentile"),
        (configs.TrainConfig, {"batch_size": 0}, "batch_size"),
        (configs.TrainConfig, {"lr": 0.0}, "lr"),
        (configs.TrainConfig, {"image_ratio": 2.0}, "image_ratio"),
    ],
)
def test_bad_top_level_values_name_the_field(cls, changes, field):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}="):
        cls(**changes)


def test_sr_stage_must_match_previous_output():
    cfg = configs.preset("ci")
    tsr = cfg.stages[1]
    # A TSR stage that also changes the spatial size does not chain onto the base stage.
    bad = dataclasses.replace(tsr, width=16, height=16)
    with pytest.raises(ValueError, match=r"StageConfig\('tsr'\)\.width/height="):
        dataclasses.replace(cfg, stages=(cfg.stages[0], bad))
    ssr = cfg.stages[2]
    bad_frames = dataclasses.replace(ssr, num_frames=4)
    with pytest.raises(ValueError, match=r"StageConfig\('ssr1'\)\.num_frames="):
        dataclasses.replace(cfg, stages=cfg.stages[:2] + (bad_frames,))


def test_cascade_level_checks():
    cfg = configs.preset("ci")
    with pytest.raises(ValueError, match=r"stages\[0\]\.kind="):
        dataclasses.replace(cfg, stages=cfg.stages[1:])
    with pytest.raises(ValueError, match=r"text_dim="):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, dim=64))
    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(cfg, stages=(cfg.stages[0], cfg.stages[0]))


def test_sr_stage_needs_condition_channels():
    sr = configs.preset("ci").stages[1]
    with pytest.raises(ValueError, match=r"unet\.cond_channels="):
        dataclasses.replace(sr, unet=dataclasses.replace(sr.unet, cond_channels=0))


def test_from_dict_rejects_unknown_fields():
    data = configs.preset("ci").to_dict()
    data["stages"][0]["unet"]["wings"] = 2
    with pytest.raises(ValueError, match=r"stages\[0\]\.unet: unknown fields \['wings'\]"):
        configs.CascadeConfig.from_dict(data)


def test_scale_from_env(monkeypatch):
    monkeypatch.setenv("IVREF_SCALE", "ci")
    assert configs.scale_from_env() == "ci"
    monkeypatch.delenv("IVREF_SCALE")
    assert configs.scale_from_env() == "toy"
    monkeypatch.setenv("IVREF_SCALE", "huge")
    with pytest.raises(ValueError, match="IVREF_SCALE='huge'"):
        configs.scale_from_env()
