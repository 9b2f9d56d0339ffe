"""Checkpoints: safetensors weights + JSON config, written atomically, loaded with clear errors.

A training checkpoint is a directory:

    config.json           the CascadeConfig, the stage trained, the step, and a manifest
                          (size + sha256 of every other file); written last
    model.safetensors     model weights (fp32)
    ema.safetensors       EMA weights [EMA]
    optimizer.safetensors optimizer tensors (AdamW moments [ADAMW]); its non-tensor state
    optimizer.json        (param groups, hyper-parameters) as JSON
    rng.safetensors       RNG states (torch CPU, the data generator, ...) as uint8 tensors

Every file goes to a temporary name in the same directory, then ``os.replace``: a crash
leaves the previous file whole. The manifest is written last, so a directory whose files do
not match it (a crash between files, a truncated copy) is reported by name, never half
loaded. Nothing is unpickled: tensors load with safetensors, the rest is JSON.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ivref import configs

FORMAT = 1
CONFIG = "config.json"
TENSOR_FILES = ("model", "ema", "optimizer", "rng")


@functools.cache
def _umask() -> int:
    """The process umask, read once on the first write (os.umask can only read by setting)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, or does not fit the model / config at hand."""


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp"
) -> Path:
    """Call write(tmp) on a temporary path in path's directory, then rename it onto path.

    ``suffix`` ends the temporary name (writers such as ffmpeg pick the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_json(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")

    atomic_write(path, write)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupted: {err}") from None


# ---------------------------------------------------------------------------------------
# Optimizer state as tensors + JSON (no pickle)
# ---------------------------------------------------------------------------------------


def _optimizer_split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() -> (tensors "state.{i}.{key}", JSON-able remainder)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for i, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{i}.{key}"] = value
            else:
                scalars.setdefault(str(i), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, i, key = name.split(".", 2)
        state.setdefault(int(i), {})[key] = value
    for i, entry in meta["scalars"].items():
        state.setdefault(int(i), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------


def save(
    directory: str | os.PathLike,
    *,
    config: configs.CascadeConfig,
    stage: str,
    step: int,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a complete training checkpoint into ``directory`` (atomically, file by file).

    ``rng`` maps names to RNG states (``torch.get_rng_state()``, ``generator.get_state()``);
    ``extra`` is JSON-able trainer state (e.g. the loss log's length).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = _optimizer_split(optimizer.state_dict())
    _write_tensors(directory / "model.safetensors", model.state_dict())
    _write_tensors(directory / "ema.safetensors", ema.state_dict())
    _write_tensors(directory / "optimizer.safetensors", opt_tensors)
    _write_json(directory / "optimizer.json", opt_meta)
    _write_tensors(directory / "rng.safetensors", rng)
    files = [f"{n}.safetensors" for n in TENSOR_FILES] + ["optimizer.json"]
    manifest = {
        f: {"bytes": (directory / f).stat().st_size, "sha256": _sha256(directory / f)}
        for f in files
    }
    _write_json(
        directory / CONFIG,
        {
            "format": FORMAT,
            "stage": stage,
            "step": step,
            "config": config.to_dict(),
            "extra": extra or {},
            "manifest": manifest,
        },
    )
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint, parsed; ``config`` becomes a CascadeConfig."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        meta = json.loads(path.read_text())
        meta["config"] = configs.CascadeConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupted: {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r}: format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def verify(directory: str | os.PathLike) -> dict[str, Any]:
    """Check every file against config.json's manifest (size, then sha256); returns the config."""
    directory = Path(directory)
    meta = read_config(directory)
    for name, want in meta["manifest"].items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is corrupted: {size} bytes, "
                f"the manifest in {CONFIG} says {want['bytes']} (truncated or overwritten?)"
            )
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is corrupted: its sha256 differs from {CONFIG}"
            )
    return meta


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths where nested dicts / lists differ, e.g. 'stages[0].unet.base_channels: 16 != 32'."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _diff(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def check_compatible(
    saved: configs.CascadeConfig, current: configs.CascadeConfig, stage: str, where: str
) -> list[str]:
    """Raise if the stage's U-Net or the text encoder differ; return the other differences."""
    s_stage, c_stage = saved.stage(stage), current.stage(stage)
    hard = _diff(
        {"unet": s_stage.unet.__dict__, "text": saved.text.__dict__},
        {"unet": c_stage.unet.__dict__, "text": current.text.__dict__},
    )
    if hard:
        raise CheckpointError(
            f"{where} was saved with a different model for stage {stage!r}: " + "; ".join(hard)
        )
    return _diff(saved.to_dict(), current.to_dict())


def load_state_dict_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], where: str
) -> None:
    """module.load_state_dict, but a key or shape mismatch names the file and the tensors."""
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
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load(
    directory: str | os.PathLike,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: configs.CascadeConfig | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    """Restore model, EMA and optimizer in place; returns {step, rng, extra, config, stage, diff}.

    Verifies the manifest first; with ``config``, the saved stage's U-Net and text encoder
    must match (``diff`` lists any other differences, e.g. a changed learning rate).
    """
    directory = Path(directory)
    meta = verify(directory)
    stage = stage or meta["stage"]
    if stage != meta["stage"]:
        raise CheckpointError(f"{str(directory)!r} holds stage {meta['stage']!r}, not {stage!r}")
    diff = check_compatible(meta["config"], config, stage, str(directory)) if config else []
    load_state_dict_strict(
        model, _read_tensors(directory / "model.safetensors"), str(directory / "model.safetensors")
    )
    load_state_dict_strict(
        ema, _read_tensors(directory / "ema.safetensors"), str(directory / "ema.safetensors")
    )
    opt_meta = json.loads((directory / "optimizer.json").read_text())
    opt_state = _optimizer_join(_read_tensors(directory / "optimizer.safetensors"), opt_meta)
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"{str(directory / 'optimizer.json')!r} does not fit: {err}"
        ) from None
    return {
        "step": meta["step"],
        "rng": _read_tensors(directory / "rng.safetensors"),
        "extra": meta["extra"],
        "config": meta["config"],
        "stage": stage,
        "diff": diff,
    }


# ---------------------------------------------------------------------------------------
# Shipped weights
# ---------------------------------------------------------------------------------------


def save_weights(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype | None = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write weights to one safetensors file, floats cast to ``dtype`` (fp16 to ship); atomic."""
    cast = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        for k, v in state_dict.items()
    }
    _write_tensors(Path(path), cast, metadata)
    return Path(path)


def load_weights(
    path: str | os.PathLike, module: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Read a safetensors weights file; with ``module``, load it in (cast to its dtypes, strict)."""
    state = _read_tensors(Path(path))
    if module is not None:
        load_state_dict_strict(module, state, str(path))
    return state
