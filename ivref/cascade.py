"""The cascade: a frozen text encoder and its stage models, sampled base first [IV §2, Fig. 6].

A ``Cascade`` holds the ``CascadeConfig``, the text encoder and one ``VideoUNet`` per
*trained* stage. Stages run in order; a cascade whose later stages have no weights yet
(the toy cascade ships its base stage first) generates through the trained prefix and says so.

On disk (``save_pretrained`` / ``from_pretrained``) a cascade is a folder::

    cascade.json          {"format": 1, "config": CascadeConfig.to_dict(), "stages": [...]}
    <stage>.safetensors   EMA weights of each trained stage, fp16

written atomically file by file, and read back with clear errors for a missing or damaged file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ivref import checkpoint, configs, guidance, samplers, text
from ivref.unet3d import VideoUNet

FORMAT = 1
MANIFEST = "cascade.json"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "toy"


def shipped_dir() -> Path:
    """The folder of the shipped toy cascade: ``$IVREF_WEIGHTS`` if set, else ``data/toy``."""
    return Path(os.environ.get("IVREF_WEIGHTS", SHIPPED_DIR))


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Validate a prompt list: a non-empty list of non-empty strings."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got one string; wrap it: [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompts[{i}]={prompt!r} must be a non-empty string")
    return prompts


@torch.no_grad()
def sample_stage(
    model: VideoUNet,
    stage: configs.StageConfig,
    diffusion: configs.DiffusionConfig,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    steps: int | None = None,
    guidance_w: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample one base stage from text: z_1 ~ N(0, I), then ``steps`` sampler steps to x.

    Guidance is x~ = (1 + w) x_hat(z_t, c) - w x_hat(z_t) [CFG], with dynamic thresholding
    [IMG §2.3] when w > 0. Returns (B, C, F, H, W) clipped to [-1, 1].
    """
    if stage.kind != "base":
        raise ValueError(f"sample_stage samples base stages; stage {stage.name!r} is {stage.kind}")
    steps = stage.sample_steps if steps is None else steps
    w = stage.guidance_w if guidance_w is None else guidance_w
    shape = (text_emb.shape[0], model.cfg.out_channels, stage.num_frames, stage.height, stage.width)
    x_hat_fn = guidance.guided_x_hat_fn(
        model,
        text_emb,
        text_mask,
        w,
        threshold=diffusion.threshold_percentile if w > 0 else None,
    )
    x = samplers.sample(
        x_hat_fn,
        shape,
        steps=steps,
        sampler=diffusion.sampler,
        gamma=diffusion.gamma,
        generator=generator,
        progress=progress,
    )
    return x.clamp(-1.0, 1.0)


class Cascade(nn.Module):
    """Text encoder + trained stage models of one ``CascadeConfig``; ``generate`` runs them."""

    def __init__(
        self,
        cfg: configs.CascadeConfig,
        models: dict[str, VideoUNet],
        encoder: text.TextEncoder | None = None,
    ) -> None:
        super().__init__()
        names = [s.name for s in cfg.stages]
        unknown = set(models) - set(names)
        if unknown:
            raise ValueError(f"models for unknown stages {sorted(unknown)}; stages: {names}")
        trained = [n for n in names if n in models]
        if trained != names[: len(trained)]:
            raise ValueError(f"trained stages {trained} must be a prefix of the cascade {names}")
        if not trained:
            raise ValueError("a Cascade needs at least the base stage's model")
        self.cfg = cfg
        self.models = nn.ModuleDict(models)
        self._encoder = encoder

    @property
    def trained_stages(self) -> list[configs.StageConfig]:
        return [s for s in self.cfg.stages if s.name in self.models]

    @property
    def encoder(self) -> text.TextEncoder:
        if self._encoder is None:
            self._encoder = text.build_encoder(self.cfg.text)
        return self._encoder

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        return_stages: bool = False,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Videos for ``prompts``: (B, C, F, H, W) in [-1, 1], from the last trained stage.

        ``steps`` and ``guidance`` (w) override every stage's defaults; ``seed`` makes the
        result reproducible. With ``return_stages`` also returns every stage's output, base first.
        """
        prompts = check_prompts(prompts)
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps={steps!r} must be a positive integer")
        if guidance is not None and guidance < 0:
            raise ValueError(f"guidance={guidance!r} must be >= 0 (0 = no guidance)")
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # fresh, non-reproducible
        else:
            generator.manual_seed(seed)
        text_emb, text_mask = self.encoder.encode(prompts)
        outputs: list[torch.Tensor] = []
        for stage in self.trained_stages:
            model = self.models[stage.name].eval()
            if stage.kind != "base":
                raise NotImplementedError(f"stage {stage.name!r}: SR sampling is not built yet")
            video = sample_stage(
                model, stage, self.cfg.diffusion, text_emb, text_mask,
                steps=steps, guidance_w=guidance, generator=generator, progress=progress,
            )  # fmt: skip
            outputs.append(video)
        return (outputs[-1], outputs) if return_stages else outputs[-1]

    def save_pretrained(self, dir: str | os.PathLike) -> Path:  # noqa: A002 (the issue's name)
        """Write ``cascade.json`` and one fp16 ``<stage>.safetensors`` per trained stage."""
        directory = Path(dir)
        directory.mkdir(parents=True, exist_ok=True)
        stages = [s.name for s in self.trained_stages]
        for name in stages:
            checkpoint.save_weights(
                directory / f"{name}.safetensors", self.models[name].state_dict()
            )
        manifest = {"format": FORMAT, "config": self.cfg.to_dict(), "stages": stages}
        text_json = json.dumps(manifest, indent=2)
        checkpoint.atomic_write(directory / MANIFEST, lambda tmp: Path(tmp).write_text(text_json))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        dir: str | os.PathLike | None = None,  # noqa: A002 (the public name DESIGN.md gives)
        *,
        encoder: text.TextEncoder | None = None,
    ) -> Cascade:
        """Load a cascade folder; ``None`` loads the toy cascade shipped in ``data/toy``."""
        directory = shipped_dir() if dir is None else Path(dir)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path} not found: a cascade folder holds {MANIFEST} and "
                "<stage>.safetensors files (written by Cascade.save_pretrained)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            cfg = configs.CascadeConfig.from_dict(manifest["config"])
            stages = list(manifest["stages"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{manifest_path} is not a valid cascade manifest: {err}") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT}"
            )
        models = {}
        for name in stages:
            model = VideoUNet(cfg.stage(name).unet)
            checkpoint.load_weights(directory / f"{name}.safetensors", model)
            models[name] = model.eval()
        return cls(cfg, models, encoder)
