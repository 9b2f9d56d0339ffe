"""What a type checker infers for calls into ivref's public API: `make lint` runs mypy on
this file beside the package ([tool.mypy] files), so a wrong or lost annotation fails there.
Never run (pytest collects test_*.py only, and every call sits in a function no one calls):
it only has to type-check.

assert_type(value, T) fails the check unless mypy infers exactly T for ``value``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from typing_extensions import assert_type

from ivref import cascade, configs, guidance, run_loading, samplers, schedules, text, trainer
from ivref.unet3d import VideoUNet


def generate(model: cascade.Cascade) -> None:
    assert_type(model.generate(["a red circle moving left"]), torch.Tensor)
    videos, per_stage = model.generate(["a red circle moving left"], return_stages=True)
    assert_type(videos, torch.Tensor)
    assert_type(per_stage, list[torch.Tensor])
    flag: bool = bool(len(per_stage))  # not known until run time: either
    assert_type(
        model.generate(["a red circle"], return_stages=flag),
        torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]],
    )
    assert_type(cascade.Cascade.from_pretrained(variant="distilled"), cascade.Cascade)
    assert_type(model.save_pretrained("out", overwrite=True), Path)
    assert_type(cascade.load_shipped(["base"]), cascade.Cascade)


def configs_and_models() -> None:
    cfg = configs.preset("toy")
    assert_type(cfg, configs.CascadeConfig)
    assert_type(cfg.stage("base"), configs.StageConfig)
    assert_type(cfg.replace_stage("base", guidance_w=2.0), configs.CascadeConfig)
    unet = VideoUNet(cfg.stage("base").unet)
    z = torch.randn(1, 3, 4, 16, 16)
    logsnr, emb, mask = torch.zeros(1), torch.zeros(1, 8, 384), torch.ones(1, 8, dtype=torch.bool)
    assert_type(unet.forward(z, logsnr, emb, mask), torch.Tensor)  # unet(...): Any (torch)
    assert_type(text.build_encoder(cfg.text), text.TextEncoder)
    assert_type(text.build_encoder(cfg.text).encode(["x"]), tuple[torch.Tensor, torch.Tensor])


def diffusion_math(unet: VideoUNet, emb: torch.Tensor, mask: torch.Tensor) -> None:
    assert_type(schedules.alpha_sigma(torch.zeros(2)), tuple[torch.Tensor, torch.Tensor])
    x_hat_fn = guidance.guided_x_hat_fn(unet, emb, mask, 1.0)
    assert_type(samplers.sample(x_hat_fn, (1, 3, 4, 16, 16), steps=8), torch.Tensor)


def runs(folder: Path, job: trainer.Trainer) -> None:
    weights = run_loading.load_run(folder)
    assert_type(weights.model, VideoUNet)
    assert_type(weights.step, int)
    assert_type(job.resume(), int)
    assert_type(job.save(), Path | None)  # None: a rank that cannot see rank 0's folder
