"""What one training step optimises: a stage's batch and its loss, plugged into ``trainer.Trainer``.

The loop (optimizer, EMA, checkpoints, resume, Ctrl-C) lives in trainer.py and knows nothing
about diffusion; an *objective* turns a batch into a scalar loss for a model:

    objective.sample(batch_size) -> Batch(x, captions, is_image)    # data, own generator
    objective.loss(model, batch, generator, device, bf16) -> loss   # every other draw from
                                                                     # the loop's generator
    objective.rng_state() / set_rng_state(state) / reseed(seed)     # its own streams, saved
                                                                     # and resumed
``DiffusionObjective`` serves every stage kind [VDM §2, IV §2]:

    text dropped with probability p (all-False mask row: the learned null) [CFG]
    t ~ U(0, 1), logsnr_t = lambda(t), eps ~ N(0, I), z_t = alpha_t x + sigma_t eps
    SR stages: c = upsample(low_res(x)), c~ = alpha' c + sigma' eps', lambda' random [IV §2.5]
    crop-trained SSR: x and c cropped to the same random window first [IV §2.3]
    loss = mean_b w(logsnr_b) ||x_b - x_hat_b||^2, v-MSE by default [PD §4]

Distillation (distill.py) is another objective with a frozen teacher inside.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

from ivref import configs, data, losses, schedules, superres


@dataclass
class Batch:
    """Clips at a stage's output size (B, C, F, H, W) in [-1, 1], captions, image flags (B,)."""

    x: torch.Tensor
    captions: list[str]
    is_image: torch.Tensor


class Dataset(Protocol):
    """What a ``DiffusionObjective`` trains on: the toy world (data.py) or a folder of videos
    (video_folder.py). ``generator`` is saved in every checkpoint. Optional, and so not a
    method here: ``state_dict()`` -> {name: tensor} (names without '/') and
    ``load_state_dict(state)``, what else a resume needs (``VideoTextFolder``: the files
    still in use), saved beside the generator as ``data.<name>``."""

    generator: torch.Generator

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[str], torch.Tensor]: ...


class _StatefulDataset(Dataset, Protocol):
    """A ``Dataset`` with the optional state of its own (see ``Dataset``)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class Objective(Protocol):
    """The stage-specific half of a training step (see the module docstring).

    Optional, and so not a method of this protocol (a subclass would inherit a no-op):
    ``reseed(seed)`` starts the objective's own streams (its data) anew from ``seed``, for a
    run resumed with another number of processes (``Trainer.resume(new_streams=True)``).
    Without it the trainer reseeds ``objective.data.generator``, or refuses new streams.
    ``rng_state()`` names are the objective's own: the loop saves its states beside them
    under ``trainer_checkpoints.LOOP_RNG_NAMES``, and names with '/' (other processes'
    ``rank<r>/...``), which it refuses; the values are tensors.
    """

    def sample(self, batch_size: int) -> Batch: ...

    def loss(
        self,
        model: torch.nn.Module,
        batch: Batch,
        generator: torch.Generator,
        device: torch.device,
        bf16: bool,
    ) -> torch.Tensor: ...

    def rng_state(self) -> dict[str, torch.Tensor]: ...

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None: ...


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (off inside when not ``enabled``). A device with no autocast
    (``meta``, where the tests catch tensors left on another device) runs without it."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class TextCache:
    """Frozen text embeddings, kept per caption in memory: encode(list[str]) -> (emb, mask).

    Rows are padded to the longest in the batch, rounded up to a multiple of
    ``pad_multiple`` (a compiled model then sees one text length); padding is masked out, so
    it changes no output. The toy vocabulary has 105 captions, so after the first few steps
    the encoder never runs again. A real caption set may not fit: beyond ``max_bytes`` of
    rows the least recently used captions are dropped (encoded again when they return).
    """

    def __init__(self, encoder: Any, pad_multiple: int = 1, max_bytes: int = 2**30) -> None:
        for name, value in (("pad_multiple", pad_multiple), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.encoder, self.pad_multiple, self.max_bytes = encoder, pad_multiple, max_bytes
        self.rows: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.bytes = 0  # held by ``rows``

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = sorted(set(captions) - set(self.rows))
        for c in set(captions) - set(new):
            self.rows.move_to_end(c)  # recently used
        if new:
            emb, mask = self.encoder.encode(new)
            for i, c in enumerate(new):
                n = max(int(mask[i].nonzero().max()) + 1, 1) if mask[i].any() else 1
                self.rows[c] = (emb[i, :n].float().cpu(), mask[i, :n].cpu())
                self.bytes += self.rows[c][0].nbytes + self.rows[c][1].nbytes
        length = max(self.rows[c][0].shape[0] for c in captions)
        length = -(-length // self.pad_multiple) * self.pad_multiple
        dim = self.rows[captions[0]][0].shape[1]
        emb = torch.zeros(len(captions), length, dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, c in enumerate(captions):
            e, m = self.rows[c]
            emb[i, : len(e)], mask[i, : len(m)] = e, m
        while self.bytes > self.max_bytes and len(self.rows) > len(set(captions)):
            _, (e, m) = self.rows.popitem(last=False)  # the least recently used
            self.bytes -= e.nbytes + m.nbytes
        return emb, mask


def previous_stage(
    config: configs.CascadeConfig, stage: configs.StageConfig
) -> configs.StageConfig | None:
    """The stage whose output ``stage`` takes as input (None for the base stage)."""
    names = [s.name for s in config.stages]
    i = names.index(stage.name)
    return config.stages[i - 1] if i > 0 else None


def crop_alignment(stage: configs.StageConfig, previous: configs.StageConfig) -> int:
    """Crop corners fall on multiples of this: whole low-res pixels and whole U-Net strides."""
    return math.lcm(superres.space_factor(stage, previous), stage.unet.downsample_factor)


class DiffusionObjective:
    """The denoising loss of one cascade stage, base or SR (see the module docstring)."""

    def __init__(
        self,
        config: configs.CascadeConfig,
        stage: configs.StageConfig,
        dataset: Dataset,
        text: TextCache,
    ) -> None:
        self.config, self.stage, self.diffusion = config, stage, config.diffusion
        self.previous = previous_stage(config, stage)
        fps = getattr(dataset, "fps", None)  # a dataset that says its rate (VideoTextFolder)
        if fps is not None and not math.isclose(float(fps), stage.fps, rel_tol=1e-9):
            raise ValueError(  # the clip shapes would fit, at another speed of motion
                f"the dataset makes clips at {fps:g} fps; stage {stage.name!r} trains on "
                f"{stage.num_frames} frames at {stage.fps:g} fps: make it at the stage's rate "
                "(VideoTextFolder(..., fps=stage.fps))"
            )
        self.data, self.text = dataset, text

    def sample(self, batch_size: int) -> Batch:
        """A batch from the dataset, whose clips must be the stage's (B, C, F, H, W)."""
        x, captions, is_image = self.data.sample(batch_size)
        s = self.stage
        want = (batch_size, s.unet.in_channels, s.num_frames, s.height, s.width)
        if tuple(x.shape) != want or len(captions) != batch_size:
            raise ValueError(
                f"the dataset gave clips of shape {tuple(x.shape)} with {len(captions)} captions; "
                f"stage {s.name!r} trains on (B, C, F, H, W) = {want}, one caption each: make "
                "its clips at the stage's frames and size (SR stages: their output size)"
            )
        if s.kind == "tsr" and bool(is_image.any()):
            raise ValueError(
                f"the dataset gave image packs to TSR stage {s.name!r}: a TSR stage trains on "
                "videos only (an image pack's frames are unrelated stills, no motion to "
                "interpolate)"
            )
        return Batch(x, list(captions), is_image)

    def conditioning(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(target x, clean conditioning video c or None); crops both for a crop-trained SSR."""
        if self.previous is None:
            return x, None
        cond = superres.upsample(superres.low_res(x, self.stage, self.previous), self.stage)
        size = self.stage.train.crop_size
        if size is not None and size < min(self.stage.width, self.stage.height):
            align = crop_alignment(self.stage, self.previous)
            x, cond = superres.random_crop([x, cond], size, align, generator)
        return x, cond

    def augmented(
        self, x: torch.Tensor, cond: torch.Tensor | None, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The SR inputs of one step: {cond_video: c~, aug_logsnr: lambda'} (none for a base
        stage), lambda' and noise shaped like ``x`` drawn from ``generator``, moved to x's
        device."""
        if cond is None:
            return {}
        aug = superres.train_aug_logsnr(x.shape[0], self.stage, self.diffusion, generator)
        aug = aug.to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return {"cond_video": superres.augment(cond, aug, noise), "aug_logsnr": aug}

    def loss(
        self,
        model: torch.nn.Module,
        batch: Batch,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        bf16: bool = False,
    ) -> torch.Tensor:
        """Mean diffusion loss of one batch (module docstring); every draw from ``generator``."""
        g, device = generator, torch.device(device)
        # the clips may come painted on the device already; every draw is on the CPU
        # generator (the same numbers on every device) and moved
        x, cond = self.conditioning(batch.x.to(device), g)
        b = x.shape[0]
        emb, mask = self.text.encode(batch.captions)
        drop = torch.rand(b, generator=g) < self.diffusion.text_dropout
        mask = mask & ~drop[:, None]  # all-False row: the learned null text [CFG]
        t = torch.rand(b, generator=g, dtype=torch.float64)
        d = self.diffusion
        logsnr = schedules.logsnr_cosine(t, d.logsnr_min, d.logsnr_max).float().to(device)
        eps = torch.randn(x.shape, generator=g).to(device)
        extra = self.augmented(x, cond, g)
        z_t = schedules.q_sample(x, logsnr, eps)
        with bf16_autocast(device, bf16):
            v_hat = model(
                z_t,
                logsnr,
                emb.to(device),
                mask.to(device),
                is_image=batch.is_image.to(device),
                **extra,
            )
        per_sample = losses.diffusion_loss(
            v_hat.float(), x, eps, logsnr, weighting=d.loss, prediction="v"
        )
        return per_sample.mean()

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The data's generator, and a dataset's own ``state_dict()`` where it has one
        (``VideoTextFolder``: the files still in use) as ``data.<name>``."""
        state = {"data": self.data.generator.get_state()}
        if callable(getattr(self.data, "state_dict", None)):
            own = cast(_StatefulDataset, self.data).state_dict()
            state |= {f"data.{k}": v for k, v in own.items()}
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        own = check_data_state(self.data, state)
        self.data.generator.set_state(state["data"])
        if own:  # (check_data_state refused a dataset without load_state_dict)
            cast(_StatefulDataset, self.data).load_state_dict(own)

    def reseed(self, seed: int) -> None:
        self.data.generator.manual_seed(seed)


def check_data_state(
    data: Any, state: dict[str, torch.Tensor], new_streams: bool = False
) -> dict[str, torch.Tensor]:
    """The dataset's own part of a checkpoint's ``state`` (its ``data.<name>`` entries),
    or a ValueError where the checkpoint and ``data`` are of different kinds: a run on a
    folder of videos resumed on the toy world, or the other way round, would continue on
    other data without a word. ``new_streams``: a run may go on from the toy world onto
    videos (new data is what it asks for), but not from videos onto the toy world."""
    own = {k.removeprefix("data."): v for k, v in state.items() if k.startswith("data.")}
    stateful = callable(getattr(data, "load_state_dict", None))
    if own and not stateful:
        raise ValueError(
            f"the checkpoint holds the state of a dataset with its own state (a folder of "
            f"videos: {sorted(own)}), but this run's dataset is {type(data).__name__}: give "
            "the run its videos (ivref train --resume --videos FOLDER; in Python, "
            "Trainer(dataset=VideoTextFolder(...)))"
        )
    if stateful and not own and not new_streams:
        raise ValueError(
            f"the checkpoint holds no state of a dataset like this run's "
            f"{type(data).__name__}: the run was trained on other data (the toy world, or "
            "by an earlier ivref, which did not save it); resume it on its own data, or with "
            "new streams "
            "(Trainer.resume(new_streams=True), ivref train --resume --new-streams)"
        )
    return own


def toy_dataset(
    stage: configs.StageConfig, seed: int = 0, device: torch.device | str = "cpu"
) -> data.ToyVideos:
    """The toy world at a stage's output size and frame rate, its train split, painted on
    ``device``. A TSR stage trains on videos only: an image pack's frames are unrelated
    stills, so each inserted frame would be conditioned on another image. (Checked here,
    where images are made, not in ``StageConfig``: configs saved before the paper preset's
    TSR stages dropped ``image_ratio=0.2`` still load.)"""
    if stage.kind == "tsr" and stage.train.image_ratio > 0:
        raise ValueError(
            f"StageConfig({stage.name!r}).train.image_ratio={stage.train.image_ratio} is "
            "invalid: must be 0 for a TSR stage: an image pack's frames are unrelated stills, "
            "so each inserted frame would be conditioned on another image"
        )
    return data.ToyVideos(
        stage.num_frames,
        stage.width,
        stage.height,
        stage.fps,
        "train",
        stage.train.image_ratio,
        seed,
        device,
    )
