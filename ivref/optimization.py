"""The optimiser's schedules: learning-rate warm-up and decay, and the EMA of the weights.

``Trainer`` (trainer.py) sets ``learning_rate(step, ...)`` on AdamW [ADAMW] before each step
and, after it, moves the EMA copy [EMA] toward the weights with ``ema_update``; the EMA is
what gets sampled and shipped. Distillation's students use the same loop.
"""

from __future__ import annotations

import torch

from ivref import configs


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up: lr * min(1, (step + 1) / warmup_steps)."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr


def learning_rate(step: int, cfg: configs.TrainConfig, total: int | None = None) -> float:
    """Warm-up, then constant or (``lr_decay="linear"``) lr * (1 - step / total) [PD]."""
    lr = warmup_lr(step, cfg.lr, cfg.warmup_steps)
    if cfg.lr_decay == "linear" and total:
        lr *= max(0.0, 1.0 - step / total)
    return lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta [EMA]; buffers are copied."""
    ema_params: list[torch.Tensor] = list(ema.parameters())  # _foreach_lerp_ takes Tensors
    params = list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)  # one kernel
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """CHOICE: min(decay, (1 + step) / (10 + step)), so short runs' EMA is not stuck at init."""
    return min(decay, (1 + step) / (10 + step))
