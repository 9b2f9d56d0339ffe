"""Presets build and validate; every bad value names its field."""

import dataclasses
import math
import warnings

import pytest
import torch

from ivref import config_types, configs, samplers


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
        ({"guidance_w": 3.0, "guidance_w_max": 2.0}, "guidance_w"),  # above what it learnt
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


def test_unet_values_that_would_fail_in_the_forward_are_refused():
    """Both configs used to validate, then fail inside the first forward: the middle block
    attends whatever the per-level flags say, and the embeddings take cos/sin pairs."""
    from ivref.unet3d import VideoUNet

    no_attention = dict(channel_mults=(1,), spatial_attention=(False,), temporal_mixing=("conv",))
    unet = configs.UNetConfig(base_channels=48, head_dim=16, **no_attention)  # 3 heads: fine
    z = torch.zeros(1, 3, 2, 4, 4)
    out = VideoUNet(unet)(z, torch.zeros(1), torch.zeros(1, 2, 32), torch.ones(1, 2).bool())
    assert out.shape == z.shape
    with pytest.raises(ValueError, match=r"head_dim=32 .*the middle block's width \(48\)"):
        configs.UNetConfig(base_channels=48, head_dim=32, **no_attention)
    with pytest.raises(ValueError, match=r"base_channels=9 .*even"):
        configs.UNetConfig(base_channels=9, head_dim=9, norm_groups=3, **no_attention)


def test_fully_convolutional_forbids_spatial_attention():
    unet = configs.preset("ci").stages[0].unet
    with pytest.raises(ValueError, match="fully_convolutional"):
        dataclasses.replace(unet, fully_convolutional=True)


@pytest.mark.parametrize(
    "cls, changes, field",
    [
        (configs.TextConfig, {"encoder": "gpt"}, "encoder"),
        (configs.TextConfig, {"dim": 0}, "dim"),
        (configs.TextConfig, {"path": "my_t5"}, "path"),  # tiny-t5 was built: path ignored
        (configs.TextConfig, {"encoder": "minilm", "dim": 384, "path": "my_t5"}, "path"),
        (configs.DiffusionConfig, {"logsnr_min": 30.0}, "logsnr_min"),
        (configs.DiffusionConfig, {"loss": "l1"}, "loss"),
        (configs.DiffusionConfig, {"sampler": "euler"}, "sampler"),
        (configs.DiffusionConfig, {"threshold_percentile": 1.5}, "threshold_percentile"),
        (configs.TrainConfig, {"batch_size": 0}, "batch_size"),
        (configs.TrainConfig, {"lr": 0.0}, "lr"),
        (configs.TrainConfig, {"image_ratio": 2.0}, "image_ratio"),
        (configs.DistillConfig, {"w_max": 5000.0}, "w_max"),  # past what sampling takes
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


def test_sr_stage_chain_keeps_time_and_scales_space_evenly():
    """Each passed validation: a TSR at the base's fps trained on 1.5 fps clips for a 3 fps
    input, and an SSR of 2 x 4 conditioned on 4 x 8 frames where the previous stage gave 8 x 8."""
    cfg = configs.preset("ci")
    base, tsr, ssr = cfg.stages[:3]
    with pytest.raises(ValueError, match=r"StageConfig\('tsr'\)\.fps=3 .*2 x .* 3 fps \(6\)"):
        dataclasses.replace(cfg, stages=(base, dataclasses.replace(tsr, fps=3)))
    with pytest.raises(ValueError, match=r"StageConfig\('ssr1'\)\.fps=12 .*keeps .* 6 fps"):
        dataclasses.replace(cfg, stages=(base, tsr, dataclasses.replace(ssr, fps=12)))
    uneven = dataclasses.replace(ssr, width=32, height=16)
    with pytest.raises(ValueError, match=r"ssr1'\)\.width/height=\(32, 16\) .*same whole factor"):
        dataclasses.replace(cfg, stages=(base, tsr, uneven))


def test_an_untrained_sampling_aug_level_warns():
    """lambda' = ln 3 at sampling lies outside what aug_train_max_t = 0.05 trains on
    (lambda(0.05) from the cosine schedule): a warning names both; the presets give none."""
    import warnings

    from ivref import schedules

    cfg = configs.preset("toy")
    low = schedules.logsnr_cosine(0.05, cfg.diffusion.logsnr_min, cfg.diffusion.logsnr_max)
    ssr = dataclasses.replace(cfg.stages[2], aug_train_max_t=0.05)
    with pytest.warns(
        UserWarning, match=rf"ssr1.*aug_train_max_t=0.05 reaches lambda' = {low:.4g}"
    ):
        dataclasses.replace(cfg, stages=(*cfg.stages[:2], ssr, cfg.stages[3]))
    assert float(low) > ssr.aug_sample_logsnr
    with pytest.warns(UserWarning, match=r"aug_train_max_t=0.5 reaches lambda' = 0\)"):
        cfg.replace_stage("ssr1", aug_train_max_t=0.5, aug_sample_logsnr=-1.0)  # not "-0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("ci", "toy", "paper"):
            configs.preset(name)


def test_cascade_level_checks():
    cfg = configs.preset("ci")
    with pytest.raises(ValueError, match=r"stages\[0\]\.kind="):
        dataclasses.replace(cfg, stages=cfg.stages[1:])
    with pytest.raises(ValueError, match=r"text_dim="):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, dim=64))
    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(cfg, stages=(cfg.stages[0], cfg.stages[0]))


def test_a_stage_predicts_v_in_z_ts_channels():
    base = configs.preset("ci").stages[0]
    with pytest.raises(ValueError, match=r"unet\.out_channels=6 .*must equal unet\.in_channels"):
        dataclasses.replace(base, unet=dataclasses.replace(base.unet, out_channels=6))


def test_sr_stage_needs_condition_channels():
    sr = configs.preset("ci").stages[1]
    with pytest.raises(ValueError, match=r"unet\.cond_channels="):
        dataclasses.replace(sr, unet=dataclasses.replace(sr.unet, cond_channels=0))


def test_tsr_stages_train_on_videos_only():
    """An image pack's frames are unrelated stills: a TSR stage would learn inserted frames
    conditioned on another image. Every preset's TSR stages train on videos; SSR stages may
    train on images (each frame's low-res view is its own)."""
    for name in ("ci", "toy", "paper"):
        for stage in configs.preset(name).stages:
            assert stage.kind != "tsr" or stage.train.image_ratio == 0, (name, stage.name)
    assert configs.preset("paper").stage("ssr1").train.image_ratio == 0.2
    from ivref import objectives

    tsr = configs.preset("ci").stage("tsr")
    imaged = dataclasses.replace(tsr, train=dataclasses.replace(tsr.train, image_ratio=0.2))
    with pytest.raises(ValueError, match=r"train\.image_ratio=0\.2.*must be 0 for a TSR stage"):
        objectives.toy_dataset(imaged)  # where images are made: no training on them
    from ivref import data, text

    packs = data.ToyVideos(tsr.num_frames, tsr.width, tsr.height, tsr.fps, image_ratio=1.0)
    cfg = configs.preset("ci")
    objective = objectives.DiffusionObjective(
        cfg, tsr, packs, objectives.TextCache(text.build_encoder(cfg.text))
    )
    with pytest.raises(ValueError, match="gave image packs to TSR stage 'tsr'"):
        objective.sample(2)  # a dataset of the caller's own
    # a config saved when the paper preset's TSR stages had image_ratio=0.2 still loads
    old = configs.preset("paper").to_dict()
    for stage in old["stages"]:
        if stage["kind"] == "tsr":
            stage["train"]["image_ratio"] = 0.2
    assert configs.CascadeConfig.from_dict(old).stage("tsr1").train.image_ratio == 0.2


BOOL_FIELDS = [
    (configs.TrainConfig, "bf16"),
    (configs.UNetConfig, "use_guidance_embedding"),
    (configs.UNetConfig, "use_aug_embedding"),
    (configs.UNetConfig, "checkpointing"),
    (configs.UNetConfig, "fully_convolutional"),
]


@pytest.mark.parametrize("cls, field", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_bool_fields_take_only_bools(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}=.*must be true or false"):
        cls(**{field: value})


@pytest.mark.parametrize("value", ["false", 0])
def test_stage_bool_field_takes_only_bools(value):
    with pytest.raises(ValueError, match=r"StageConfig\('base'\)\.oscillating_guidance="):
        _stage(oscillating_guidance=value)


def test_from_dict_refuses_a_string_for_a_bool():
    """A string "false" in a hand-edited config.json counted as true: guidance oscillated."""
    data = configs.preset("toy").to_dict()
    data["stages"][0]["oscillating_guidance"] = "false"
    with pytest.raises(
        ValueError,
        match=r"StageConfig\('base'\)\.oscillating_guidance='false' is invalid: "
        r"must be true or false \(a bool\), not str",
    ):
        configs.CascadeConfig.from_dict(data)
    data["stages"][0]["oscillating_guidance"] = False
    assert configs.CascadeConfig.from_dict(data) == configs.preset("toy")


@pytest.mark.parametrize(
    "cls, changes, field",
    [
        (configs.TrainConfig, {"lr": "1e-3"}, "lr"),
        (configs.TrainConfig, {"batch_size": 8.0}, "batch_size"),
        (configs.TrainConfig, {"batch_size": True}, "batch_size"),
        (configs.TrainConfig, {"warmup_steps": "20"}, "warmup_steps"),
        (configs.TrainConfig, {"weight_decay": True}, "weight_decay"),
        (configs.TrainConfig, {"crop_size": "64"}, "crop_size"),
        (configs.DiffusionConfig, {"gamma": "0.3"}, "gamma"),
        (configs.DiffusionConfig, {"logsnr_min": None}, "logsnr_min"),
        (configs.DistillConfig, {"w_max": "4"}, "w_max"),
        (configs.TextConfig, {"path": 5}, "path"),
        (configs.TextConfig, {"dim": 32.0}, "dim"),
        (configs.UNetConfig, {"dropout": "0.1"}, "dropout"),
        (configs.UNetConfig, {"channel_mults": [1, 2, 4]}, "channel_mults"),
    ],
)
def test_wrong_types_name_the_field(cls, changes, field):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{field}=.*, not "):
        cls(**changes)


def test_wrong_typed_number_from_dict_names_the_field():
    data = configs.preset("toy").to_dict()
    data["stages"][0]["train"]["lr"] = "1e-3"
    with pytest.raises(ValueError, match=r"TrainConfig\.lr='1e-3' is invalid: must be a number"):
        configs.CascadeConfig.from_dict(data)


def test_wrong_typed_stage_fields_name_the_field():
    with pytest.raises(ValueError, match=r"StageConfig\('base'\)\.fps='3' .*a number, not str"):
        _stage(fps="3")
    with pytest.raises(ValueError, match=r"StageConfig\('base'\)\.unet=\{\} .*a UNetConfig"):
        _stage(unet={})
    with pytest.raises(ValueError, match=r"StageConfig\.name=5 .*a string, not int"):
        _stage(name=5)
    cfg = configs.preset("ci")
    with pytest.raises(ValueError, match=r"CascadeConfig\.stages\[1\]=.*a StageConfig, not dict"):
        dataclasses.replace(cfg, stages=(cfg.stages[0], {}))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"channel_mults": (1, "2", 4)}, r"channel_mults\[1\]"),
        ({"channel_mults": (1, 2, 4.0)}, r"channel_mults\[2\]"),
        ({"spatial_attention": ("false", False, True)}, r"spatial_attention\[0\]"),
    ],
)
def test_tuple_elements_are_named_by_index(changes, field):
    with pytest.raises(ValueError, match=rf"UNetConfig\.{field}="):
        configs.UNetConfig(**changes)


def test_none_is_accepted_where_the_annotation_allows_it():
    assert configs.TrainConfig(crop_size=None).crop_size is None
    assert configs.TextConfig(path=None).path is None
    assert configs.TextConfig(encoder="t5", dim=512, path="my_t5").path == "my_t5"
    stage = _stage(sampler=None, gamma=None, guidance_w_max=None)
    assert (stage.sampler, stage.gamma, stage.guidance_w_max) == (None, None, None)
    with pytest.raises(ValueError, match=r"UNetConfig\.dropout=None"):
        configs.UNetConfig(dropout=None)


@pytest.mark.parametrize(
    "cls, changes, field",
    [
        (configs.TrainConfig, {"weight_decay": math.nan}, "weight_decay"),
        (configs.TrainConfig, {"weight_decay": math.inf}, "weight_decay"),
        (configs.TrainConfig, {"weight_decay": -1}, "weight_decay"),
        (configs.TrainConfig, {"lr": math.inf}, "lr"),
        (configs.TrainConfig, {"grad_clip": math.inf}, "grad_clip"),
        (configs.DistillConfig, {"lr": math.inf}, "lr"),
        (configs.DiffusionConfig, {"logsnr_max": math.inf}, "logsnr_max"),
        (configs.DiffusionConfig, {"logsnr_min": -math.inf}, "logsnr_min"),
        (configs.DiffusionConfig, {"logsnr_max": math.nan}, "logsnr_max"),
    ],
)
def test_non_finite_and_negative_values_name_the_field(cls, changes, field):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}="):
        cls(**changes)


@pytest.mark.parametrize("fps", [math.inf, math.nan])
def test_stage_fps_must_be_finite(fps):
    with pytest.raises(ValueError, match=r"StageConfig\('base'\)\.fps=.*finite"):
        _stage(fps=fps)


def test_sample_steps_are_capped_at_the_samplers_max_steps():
    assert samplers.MAX_STEPS is config_types.MAX_STEPS
    assert _stage(sample_steps=config_types.MAX_STEPS).sample_steps == config_types.MAX_STEPS
    with pytest.raises(ValueError, match=r"\.sample_steps=10001 is invalid: must be at most 10000"):
        _stage(sample_steps=config_types.MAX_STEPS + 1)


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
    for spelled in ("CI", " Ci\n"):  # as a shell or a .env file may give it
        monkeypatch.setenv("IVREF_SCALE", spelled)
        assert configs.scale_from_env() == "ci"
    monkeypatch.setenv("IVREF_SCALE", " ")  # set but blank: as if unset
    assert configs.scale_from_env() == "toy"
    monkeypatch.setenv("IVREF_SCALE", "huge")
    with pytest.raises(ValueError, match=r"IVREF_SCALE='huge' is not a preset; allowed: \['ci'"):
        configs.scale_from_env()


def test_replace_stage_changes_one_stage_and_checks_the_cascade_again():
    """The one-call way to a custom configuration: the stage's own fields, and dicts for its
    U-Net and training config (three nested dataclasses.replace calls otherwise)."""
    toy = configs.preset("toy")
    mine = toy.replace_stage("ssr2", sample_steps=32, unet={"dropout": 0.1}, train={"lr": 5e-4})
    new, old = mine.stage("ssr2"), toy.stage("ssr2")
    assert (new.sample_steps, new.unet.dropout, new.train.lr) == (32, 0.1, 5e-4)
    assert new.unet == dataclasses.replace(old.unet, dropout=0.1)  # the rest as it was
    assert new.train == dataclasses.replace(old.train, lr=5e-4)
    assert [s for s in mine.stages if s.name != "ssr2"] == [
        s for s in toy.stages if s.name != "ssr2"
    ]
    assert toy.stage("ssr2") == old  # a copy: the preset is unchanged
    with pytest.raises(ValueError, match=r"StageConfig\('tsr'\)\.num_frames=16 is invalid"):
        toy.replace_stage("base", num_frames=6)  # the TSR stage no longer doubles it
    alone = dataclasses.replace(toy, stages=toy.stages[:1]).replace_stage("base", num_frames=6)
    assert alone.stage("base").num_frames == 6
    with pytest.raises(ValueError, match=r"StageConfig has no field 'frames'; its fields: \["):
        toy.replace_stage("base", frames=6)
    with pytest.raises(ValueError, match=r"UNetConfig has no field 'width'"):
        toy.replace_stage("base", unet={"width": 3})
    with pytest.raises(ValueError, match=r"no stage 'sr' in cascade 'toy'; stages: \['base'"):
        toy.replace_stage("sr", sample_steps=8)
    with pytest.raises(ValueError, match=r"UNetConfig\.dropout=1\.5 is invalid"):
        toy.replace_stage("base", unet={"dropout": 1.5})  # each value checked as ever


def test_a_saved_config_with_a_path_its_builtin_encoder_never_used_still_loads():
    """ivref once accepted text.path on a built-in encoder (and built that encoder, ignoring
    the path); once TextConfig refused such a path, checkpoints and cascade folders saved
    with one no longer loaded. Loading drops the path with a warning; building one refuses."""
    saved = configs.preset("ci").to_dict()
    saved["text"]["path"] = "/old/minilm"
    with pytest.warns(UserWarning, match=r"CascadeConfig\.text\.path '/old/minilm' is dropped"):
        cfg = configs.CascadeConfig.from_dict(saved)
    assert cfg == configs.preset("ci")  # the config it always meant
    t5 = dict(saved, text=dict(saved["text"], encoder="t5"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a T5's path is its own: kept, no warning
        assert configs.CascadeConfig.from_dict(t5).text.path == "/old/minilm"
    with pytest.raises(ValueError, match="a checkpoint folder is for encoder 't5'"):
        configs.TextConfig(encoder="tiny-t5", path="/old/minilm")
