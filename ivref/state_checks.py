"""Does a saved state fit what loads it: the configs' differences that matter, and a state
dict's keys and shapes. Every mismatch is a ``CheckpointError`` naming the file and the
tensors or fields (checkpoint.py re-exports these names)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ivref import configs
from ivref.tensor_files import CheckpointError


def config_diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths where nested dicts / lists differ, e.g. 'stages[0].unet.base_channels: 16 != 32'."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += config_diff(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in config_diff(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


class ModelMismatchError(CheckpointError):
    """A checkpoint that reads, but of another model than the one loading it: not damage,
    so a resume says so at once rather than falling back to an older checkpoint (every
    checkpoint of a run holds the same model)."""


_SAME_WEIGHTS = ("checkpointing", "dropout")  # UNetConfig fields that change no weight's meaning


def check_compatible(
    saved: configs.CascadeConfig, current: configs.CascadeConfig, stage: str, where: str
) -> list[str]:
    """Raise if the stage's U-Net or the text encoder differ; return the other differences.

    The U-Net's ``checkpointing`` (memory, not the result) and ``dropout`` (training alone)
    leave the weights meaning what they meant, and a T5 folder may move (``text.path``; the
    encoder's recorded probe, compared on resume, says whether it is the same encoder): they
    are among the other differences (a resume says which, ``trainer_checkpoints``)."""
    s_stage, c_stage = saved.stage(stage), current.stage(stage)

    def model(unet: configs.UNetConfig) -> dict[str, Any]:
        return {k: v for k, v in unet.__dict__.items() if k not in _SAME_WEIGHTS}

    def encoder(text: configs.TextConfig) -> dict[str, Any]:
        return {k: v for k, v in text.__dict__.items() if k != "path"}

    hard = config_diff(
        {"unet": model(s_stage.unet), "text": encoder(saved.text)},
        {"unet": model(c_stage.unet), "text": encoder(current.text)},
    )
    if hard:
        raise ModelMismatchError(
            f"{where} was saved with a different model for stage {stage!r}: " + "; ".join(hard)
        )
    return config_diff(saved.to_dict(), current.to_dict())


def check_fits(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """``module.state_dict()``, or a CheckpointError naming the file and the tensors unless
    ``state`` has exactly its keys and shapes (a sharded module's: their whole shapes)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{where} does not fit the model: " + ", ".join(parts))
    return own


def load_state_dict_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], where: str
) -> None:
    """module.load_state_dict, but a key or shape mismatch names the file and the tensors."""
    own = check_fits(module, state, where)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
