"""One readable training loop for one stage of the cascade [VDM §2, IV §2].

Each step: a batch of captioned clips x (B, C, F, H, W) and their cached text embeddings;
text dropped with probability p (an all-False mask row: the null embedding) [CFG];
t ~ U(0, 1), logsnr_t = lambda(t), eps ~ N(0, I), z_t = alpha_t x + sigma_t eps;
loss = mean_b w(logsnr_b) ||x_b - x_hat_b||^2 with the weighting of ``DiffusionConfig.loss``
(v-MSE by default) [PD §4]; AdamW [ADAMW] with linear warm-up and gradient clipping; then
an EMA of the weights [EMA], which is what gets sampled and shipped.

Every random draw (data, t, eps, dropout) comes from generators saved in the checkpoint,
so ``resume`` continues exactly: the next loss equals an uninterrupted run's. Ctrl-C saves
a checkpoint at the end of the current step. ``model_inputs`` is the hook where SR stages
add the conditioning video and its noise augmentation [IV §2.5].

Run: ``ivref train --scale toy --stage base --steps 3000 --out runs/base`` (see cli.py) or
``python -m ivref.train ...`` with the same arguments.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ivref import checkpoint, configs, data, losses, schedules

LOG = "log.jsonl"
CHECKPOINT = "checkpoint"
Evaluator = Callable[["Trainer"], dict[str, float]]


class Dataset(Protocol):
    generator: torch.Generator

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[str], torch.Tensor]: ...


class TextCache:
    """Frozen text embeddings, kept per caption in memory: encode(list[str]) -> (emb, mask).

    Rows are padded to the longest in the batch; padding is masked out. The toy vocabulary
    has 105 captions, so after the first few steps the encoder never runs again.
    """

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = sorted(set(captions) - set(self.rows))
        if new:
            emb, mask = self.encoder.encode(new)
            for i, c in enumerate(new):
                n = max(int(mask[i].nonzero().max()) + 1, 1) if mask[i].any() else 1
                self.rows[c] = (emb[i, :n].float().cpu(), mask[i, :n].cpu())
        length = max(self.rows[c][0].shape[0] for c in captions)
        dim = self.rows[captions[0]][0].shape[1]
        emb = torch.zeros(len(captions), length, dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, c in enumerate(captions):
            e, m = self.rows[c]
            emb[i, : len(e)], mask[i, : len(m)] = e, m
        return emb, mask


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up: lr * min(1, (step + 1) / warmup_steps)."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta [EMA]; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """CHOICE: min(decay, (1 + step) / (10 + step)), so short runs' EMA is not stuck at init."""
    return min(decay, (1 + step) / (10 + step))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a training log (JSONL: one dict per line; loss rows and eval rows)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Trainer:
    """Trains stage ``stage`` of ``config``; writes ``out/log.jsonl`` and ``out/checkpoint/``."""

    def __init__(
        self,
        config: configs.CascadeConfig,
        stage: str,
        out: str | Path,
        *,
        dataset: Dataset | None = None,
        text_encoder: Any = None,
        batch_size: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        checkpoint_every: int = 500,
        evaluate: Evaluator | None = None,
        evaluate_every: int = 0,
        progress: bool = True,
    ) -> None:
        from ivref.unet3d import VideoUNet

        self.config, self.stage = config, config.stage(stage)
        self.train_cfg, self.diffusion = self.stage.train, config.diffusion
        self.out, self.device = Path(out), torch.device(device)
        self.batch_size = batch_size or self.train_cfg.batch_size
        self.checkpoint_every, self.progress = checkpoint_every, progress
        self.evaluate, self.evaluate_every = evaluate, evaluate_every
        if self.stage.kind != "base":
            raise NotImplementedError(
                f"stage {stage!r} is {self.stage.kind!r}: only base stages train so far "
                "(SR conditioning arrives with the super-resolution issue)"
            )
        s = self.stage
        self.data = dataset or data.ToyVideos(
            s.num_frames, s.width, s.height, s.fps, "train", self.train_cfg.image_ratio, seed
        )
        if text_encoder is None:
            from ivref import text

            text_encoder = text.build_encoder(config.text)
        self.text = TextCache(text_encoder)
        with torch.random.fork_rng(devices=[]):  # initial weights from ``seed``; the global
            torch.manual_seed(seed)  # RNG is restored afterwards
            self.model = VideoUNet(s.unet).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.train_cfg.lr, weight_decay=self.train_cfg.weight_decay
        )
        self.generator = torch.Generator().manual_seed(seed + 1)  # t, eps, text dropout
        self.step = 0
        self._stop = False

    # -- one step ---------------------------------------------------------------------

    def model_inputs(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor | None]:
        """Extra keyword inputs of the U-Net for this batch: none for the base stage.

        The SR issue overrides this to return {"cond_video": upsampled, noise-augmented
        low-res x, "aug_logsnr": its level} [IV §2.5].
        """
        return {}

    def loss(
        self, x: torch.Tensor, captions: Sequence[str], is_image: torch.Tensor
    ) -> torch.Tensor:
        """Mean diffusion loss of one batch (see the module docstring); x is (B, C, F, H, W)."""
        g, b = self.generator, x.shape[0]
        emb, mask = self.text.encode(captions)
        drop = torch.rand(b, generator=g) < self.diffusion.text_dropout
        mask = mask & ~drop[:, None]  # all-False row: the learned null text [CFG]
        t = torch.rand(b, generator=g, dtype=torch.float64)
        logsnr = schedules.logsnr_cosine(
            t, self.diffusion.logsnr_min, self.diffusion.logsnr_max
        ).float()
        eps = torch.randn(x.shape, generator=g)
        extra = self.model_inputs(x, g)
        dev = self.device
        x, eps, logsnr = x.to(dev), eps.to(dev), logsnr.to(dev)
        z_t = schedules.q_sample(x, logsnr, eps)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.train_cfg.bf16):
            v_hat = self.model(
                z_t,
                logsnr,
                emb.to(dev),
                mask.to(dev),
                is_image=is_image.to(dev),
                **{k: (v.to(dev) if v is not None else None) for k, v in extra.items()},
            )
        per_sample = losses.diffusion_loss(
            v_hat.float(), x, eps, logsnr, weighting=self.diffusion.loss, prediction="v"
        )
        return per_sample.mean()

    def train_step(self) -> dict[str, float]:
        """Sample a batch, one AdamW step with warm-up and clipping, then the EMA update."""
        x, captions, is_image = self.data.sample(self.batch_size)
        lr = warmup_lr(self.step, self.train_cfg.lr, self.train_cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        loss = self.loss(x, captions, is_image)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.train_cfg.grad_clip
        )
        self.optimizer.step()
        ema_update(self.ema, self.model, ema_decay_at(self.step, self.train_cfg.ema_decay))
        self.step += 1
        return {"loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm)}

    # -- checkpoints and the log ------------------------------------------------------

    def save(self) -> Path:
        """Write out/checkpoint/ (atomically, file by file) at the current step."""
        return checkpoint.save(
            self.out / CHECKPOINT,
            config=self.config,
            stage=self.stage.name,
            step=self.step,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            rng={
                "torch": torch.get_rng_state(),
                "train": self.generator.get_state(),
                "data": self.data.generator.get_state(),
            },
        )

    def resume(self) -> int:
        """Restore everything from out/checkpoint/; the log is cut back to that step."""
        state = checkpoint.load(
            self.out / CHECKPOINT,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            config=self.config,
            stage=self.stage.name,
        )
        for line in state["diff"]:
            print(f"resume: config differs from the checkpoint's: {line}", file=sys.stderr)
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["train"])
        self.data.generator.set_state(state["rng"]["data"])
        self.step = state["step"]
        log = self.out / LOG
        if log.is_file():
            rows = [r for r in read_log(log) if r["step"] <= self.step]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            checkpoint.atomic_write(log, lambda tmp: Path(tmp).write_text(text))
        return self.step

    def _log(self, row: dict[str, Any]) -> None:
        with open(self.out / LOG, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    # -- the loop ---------------------------------------------------------------------

    def fit(self, steps: int) -> list[dict[str, Any]]:
        """Train until ``self.step == steps``; returns this call's log rows. Ctrl-C saves."""
        self.out.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, desc=self.stage.name)
        start, start_step = time.perf_counter(), self.step
        with _save_on_interrupt(self):
            while self.step < steps and not self._stop:
                row = {"step": self.step + 1, **self.train_step()}
                done = self.step - start_step
                row["steps_per_s"] = done / max(time.perf_counter() - start, 1e-9)
                if self.evaluate and self.evaluate_every and self.step % self.evaluate_every == 0:
                    row.update({f"eval_{k}": v for k, v in self.evaluate(self).items()})
                self._log(row)
                rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")
                if self.step % self.checkpoint_every == 0 or self.step == steps:
                    self.save()
        if self._stop:
            self.save()
            bar.write(f"interrupted: checkpoint saved at step {self.step} in {self.out}")
        bar.close()
        return rows


@contextlib.contextmanager
def _save_on_interrupt(trainer: Trainer):
    """First Ctrl-C: finish the step, save, stop. Second Ctrl-C: the usual KeyboardInterrupt."""

    def handler(signum, frame):
        if trainer._stop:
            raise KeyboardInterrupt
        trainer._stop = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def caption_evaluator(
    prompts: Sequence[str] | None = None,
    steps: int | None = None,
    guidance_w: float | None = None,
    seed: int = 0,
) -> Evaluator:
    """An evaluator: sample the EMA model on ``prompts`` and score ``metrics.caption_alignment``.

    Defaults: every caption of the vocabulary once, the stage's sampler settings. The loss
    curve cannot show a model that ignores time's direction; this can (NOTES.md).
    """

    def evaluate(trainer: Trainer) -> dict[str, float]:
        from ivref import cascade, metrics

        chosen = list(prompts) if prompts is not None else list(data.CAPTIONS)
        emb, mask = trainer.text.encode(chosen)
        with torch.autocast(trainer.device.type, torch.bfloat16, enabled=trainer.train_cfg.bf16):
            videos = cascade.sample_stage(
                trainer.ema,
                trainer.stage,
                trainer.diffusion,
                emb.to(trainer.device),
                mask.to(trainer.device),
                steps=steps,
                guidance_w=guidance_w,
                generator=torch.Generator().manual_seed(seed),
            )
        result = metrics.caption_alignment(videos.float().cpu(), chosen)
        return {
            k: result[k] for k in ("color", "shape", "motion", "all") if not math.isnan(result[k])
        }

    return evaluate


if __name__ == "__main__":  # python -m ivref.train ... (torchrun -m ivref.train ...)
    from ivref import cli

    sys.exit(cli.main(["train", *sys.argv[1:]]))
