"""A sharded (FSDP) model's checkpoint state, moved one tensor at a time.

Under ``--fsdp`` each of N processes holds 1/N of every weight, AdamW moment and EMA
tensor. A checkpoint is still written in the one-process layout (checkpoint.py), so it loads
anywhere. Gathering the whole state on rank 0 first would take 16 bytes a parameter of its
host memory, about 90 GB for the paper's 5.6B base stage; here no process ever holds more
than one whole tensor of it:

    save    every rank all-gathers tensor k (``DTensor.full_tensor``); rank 0 writes its
            bytes to the file (``tensor_files.Streamed``) and drops it; then tensor k + 1
    resume  rank 0 reads tensor k from the file (``tensor_files.TensorFile``); it is scattered
            so that each rank keeps its own shard (``distribute_tensor``); then k + 1

Every rank goes through the tensors in the same order, so the collectives pair up.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from ivref import tensor_files
from ivref.distributed import Context, broadcast


def _whole(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (collective: every rank must call it), or ``value``."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def _specs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}  # a DTensor's: whole


def unsharded(module: torch.nn.Module, plain: torch.nn.Module) -> torch.nn.Module:
    """``plain``, an unsharded module of sharded ``module``'s architecture, given its whole
    weights on every rank (each all-gathers them); every rank must call it."""
    with torch.no_grad():
        plain.load_state_dict({k: _whole(v) for k, v in module.state_dict().items()})
    return plain


def streamed_state(module: torch.nn.Module, what: str) -> tensor_files.Streamed:
    """``module``'s state dict, whole tensor by whole tensor, for ``checkpoint.save``.

    Each tensor is checked for NaN and inf as it is gathered, on every rank alike, so all
    raise ``tensor_files.NonFiniteError`` (naming ``what``) at the same tensor."""
    local = module.state_dict()

    def take(name: str) -> torch.Tensor:
        value = _whole(local[name])
        tensor_files.check_finite({name: value}, what)
        return value

    return tensor_files.Streamed(_specs(local), take)


def streamed_optimizer_state(optimizer: torch.optim.Optimizer) -> tensor_files.Streamed:
    """An optimizer's state over sharded parameters, whole tensor by whole tensor, in the
    one-process layout (``state.<index>.<key>`` tensors; param groups and other values in
    ``json``)."""
    tensors, meta = tensor_files.optimizer_split(optimizer.state_dict())
    return tensor_files.Streamed(_specs(tensors), lambda name: _whole(tensors[name]), meta)


def _scatter(
    full: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Rank 0's whole ``full`` (None on the others; ``like``'s shape, in ``dtype``, default
    ``like``'s) placed like ``like``: this rank's shard of it when ``like`` is a DTensor
    (scattered from rank 0), else all of it (broadcast)."""
    dtype = dtype or like.dtype
    device = like.to_local().device if isinstance(like, DTensor) else like.device
    if full is None:
        full = torch.empty(like.shape, dtype=dtype, device=device)
    else:
        full = full.to(device=device, dtype=dtype)
    if isinstance(like, DTensor):
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=0)
    dist.broadcast(full, src=0)
    return full


@torch.no_grad()
def load_state(module: torch.nn.Module, source: tensor_files.TensorFile | None) -> None:
    """Rank 0's tensors (``source``, checked to fit; None on the other ranks) into a sharded
    ``module``: each rank keeps its shard of every parameter, and every buffer whole."""
    for name, local in module.state_dict().items():
        value = _scatter(source.get(name) if source is not None else None, local)
        target = local.to_local() if isinstance(local, DTensor) else local
        target.copy_(value.to_local() if isinstance(value, DTensor) else value)


def check_optimizer_fits(
    optimizer: torch.optim.Optimizer,
    source: tensor_files.TensorFile,
    meta: dict[str, Any],
    where: str,
) -> None:
    """A ``tensor_files.CheckpointError`` unless the saved optimizer state (``source`` and its
    json ``meta``) has this optimizer's parameter count and each moment its parameter's shape."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = sum(len(group["params"]) for group in meta["param_groups"])
    bad = (
        [f"{saved} parameters saved, {len(params)} in the optimizer"]
        if saved != len(params)
        else []
    )
    for name, shape in source.shapes.items():
        index = int(name.split(".")[1])
        if index >= len(params) or (shape and shape != tuple(params[index].shape)):
            bad.append(f"{name}: file {shape}")
    if bad:
        raise tensor_files.CheckpointError(f"{where} does not fit: " + "; ".join(bad[:5]))


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    source: tensor_files.TensorFile | None,
    meta: dict[str, Any] | None,
    context: Context,
) -> None:
    """Rank 0's optimizer state (``source`` and its json ``meta``, checked by
    ``check_optimizer_fits``; None on the others) into an optimizer over sharded parameters:
    each rank keeps its shard of every moment, and every scalar (AdamW's step) whole."""
    specs = {k: (source.dtypes[k], s) for k, s in source.shapes.items()} if source else None
    specs, meta = broadcast((specs, meta), context)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors = {}
    for name, (dtype, shape) in specs.items():
        param = params[int(name.split(".")[1])]
        device = param.to_local().device if isinstance(param, DTensor) else param.device
        like = param if shape == tuple(param.shape) else torch.empty(shape, device=device)
        full = source.get(name) if source is not None else None
        tensors[name] = _scatter(full, like, dtype)
    optimizer.load_state_dict(tensor_files.optimizer_join(tensors, meta))
