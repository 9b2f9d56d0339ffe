"""Checkpoints: safetensors weights + JSON config, written whole, loaded with clear errors.

A training checkpoint is a folder:

    config.json           the CascadeConfig, the stage trained, the step, and a manifest
                          (size + sha256 of every other file), with a sha256 of its own
                          content; written last
    model.safetensors     model weights (fp32)
    ema.safetensors       EMA weights [EMA]
    optimizer.safetensors optimizer tensors (AdamW moments [ADAMW]); its non-tensor state
    optimizer.json        (param groups, hyper-parameters) as JSON
    rng.safetensors       RNG states (torch CPU, the data generator, ...) as uint8 tensors;
                          a dataset's own state (``data.*``: a video folder's files in use)

``save`` writes the whole folder under a temporary name beside its target and renames it
into place only when every file is on disk, so a folder under its final name is always
complete. A training run keeps its checkpoints as ``<run>/checkpoints/step-00000500/``;
``save_run`` adds one and prunes the oldest only after the new one is whole, so a crash or a
full disk mid-save never costs the last good checkpoint. ``verify`` checks every file
against the manifest and names the damaged one. Nothing is unpickled: tensors load with
safetensors, the rest is JSON. Non-finite weights are refused on save and on load. The files
themselves are written and read by tensor_files.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, overload

import torch

from ivref import configs
from ivref.files import fsync_dir, remove_temporary
from ivref.state_checks import (
    ModelMismatchError,
    check_compatible,
    check_fits,
    load_state_dict_strict,
)
from ivref.tensor_files import (
    CheckpointError,
    NonFiniteError,
    Streamed,
    TensorFile,
    check_finite,
    file_manifest,
    optimizer_join,
    optimizer_split,
    read_tensors,
    verify_files,
    write_json,
    write_tensors,
)

__all__ = [  # with the file helpers of tensor_files.py that callers know from here
    "FORMAT", "CONFIG", "TENSOR_FILES", "CHECKPOINTS", "LEGACY", "CheckpointError",
    "ModelMismatchError",
    "NonFiniteError", "Streamed", "TensorFile", "check_finite", "file_manifest",
    "optimizer_join", "optimizer_split", "verify_files", "save", "run_checkpoints",
    "incomplete_checkpoints", "no_checkpoint_message", "remove_stale", "set_aside", "latest",
    "step_name",
    "save_run",
    "is_checkpoint", "read_config", "verify", "check_compatible", "check_fits",
    "load_state_dict_strict", "read", "open_checkpoint", "read_rng", "load", "save_weights",
    "load_weights",
]  # fmt: skip

FORMAT = 1
CONFIG = "config.json"
TENSOR_FILES = ("model", "ema", "optimizer", "rng")
FILES = (*(f"{n}.safetensors" for n in TENSOR_FILES), "optimizer.json")  # in the manifest
# config.json's keys ("digest": absent in checkpoints saved before it was kept)
CONFIG_KEYS = frozenset({"format", "stage", "step", "config", "extra", "manifest", "digest"})
CHECKPOINTS = "checkpoints"  # <run>/checkpoints/step-XXXXXXXX/
LEGACY = "checkpoint"  # the single, overwritten-in-place folder of ivref 0.1 runs
RUN_LOG = "log.jsonl"  # a run's training log (trainer.LOG)


def run_parts(run: str | os.PathLike) -> list[Path]:
    """What a train run writes into its folder: its log and checkpoints (what ``ivref train
    --force`` deletes; a folder holding none of them holds no run)."""
    run = Path(run)
    return [run / RUN_LOG, run / CHECKPOINTS, run / LEGACY]


_STEP_DIR = re.compile(r"^step-(\d+)$")
# left by a killed ``save`` (tmp, old) or a killed prune (gone)
_STALE = re.compile(r"^\.(step-\d+)\.(tmp|old|gone)-[0-9a-f]+$")


# ---------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------


@overload
def _state_dict(obj: Streamed) -> Streamed: ...
@overload
def _state_dict(
    obj: torch.nn.Module | Mapping[str, torch.Tensor],
) -> Mapping[str, torch.Tensor]: ...
@overload
def _state_dict(obj: torch.optim.Optimizer | Mapping[str, Any]) -> Mapping[str, Any]: ...
def _state_dict(obj: Any) -> Mapping[str, Any] | Streamed:
    return obj if isinstance(obj, (Mapping, Streamed)) else obj.state_dict()


def save(
    directory: str | os.PathLike,
    *,
    config: configs.CascadeConfig,
    stage: str,
    step: int,
    model: torch.nn.Module | Mapping[str, torch.Tensor] | Streamed,
    ema: torch.nn.Module | Mapping[str, torch.Tensor] | Streamed,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | Streamed,
    rng: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a complete training checkpoint as the folder ``directory``, all or nothing.

    The files go into a temporary sibling folder, the manifest last; only then is that folder
    renamed to ``directory`` (an existing one is moved aside first and removed after). On
    any error the temporary folder is removed and ``directory`` is as it was. ``rng`` maps
    names to RNG states; ``extra`` is JSON-able trainer state. Non-finite weights raise
    ``NonFiniteError`` before anything is written. ``model``, ``ema`` and ``optimizer`` may
    be given as their state dicts, or as ``Streamed`` tensors written one at a time (a
    sharded model's: the optimizer's param groups in its ``json``), checked as they come.
    """
    directory = Path(directory)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} must be an integer >= 0 (the steps trained)")
    config.stage(stage)  # a ValueError naming the stages there are: it would not read back
    model_state, ema_state = _state_dict(model), _state_dict(ema)
    for state, what in ((model_state, "model weights"), (ema_state, "EMA weights")):
        if not isinstance(state, Streamed):
            check_finite(state, f"{what} at step {step}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        opt_tensors: Mapping[str, torch.Tensor] | Streamed
        if isinstance(optimizer, Streamed):
            opt_tensors, opt_meta = optimizer, optimizer.json
        else:
            opt_tensors, opt_meta = optimizer_split(_state_dict(optimizer))
        write_tensors(tmp / "model.safetensors", model_state)
        write_tensors(tmp / "ema.safetensors", ema_state)
        write_tensors(tmp / "optimizer.safetensors", opt_tensors)
        write_json(tmp / "optimizer.json", opt_meta)
        write_tensors(tmp / "rng.safetensors", rng)
        meta = {
            "format": FORMAT,
            "stage": stage,
            "step": step,
            "config": config.to_dict(),
            "extra": extra or {},
            "manifest": file_manifest(tmp, list(FILES)),
        }
        write_json(tmp / CONFIG, meta | {"digest": config_digest(meta)})
        fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
        try:
            os.replace(tmp, directory)
        except BaseException:  # the old copy back under its name (a kill here leaves it as
            if old is not None and not directory.exists():  # .old, which run_checkpoints
                os.replace(old, directory)  # lists and remove_stale moves back)
            raise
        fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# ---------------------------------------------------------------------------------------
# Checkpoints of a training run
# ---------------------------------------------------------------------------------------


def run_checkpoints(run: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first (a legacy ``checkpoint/`` first).

    A folder appears under its final name only once whole (``save``), so every folder listed
    is complete unless it was damaged afterwards (``verify`` tells). A re-save of step N
    killed between its two renames leaves the complete old copy as ``.step-N.old-*`` and no
    ``step-N``: that copy is listed as step N (and ``remove_stale`` puts it back).
    """
    run = Path(run)
    found: dict[int, Path] = {}
    legacy = run / LEGACY
    if (legacy / CONFIG).is_file():
        found[-1] = legacy
    folder = run / CHECKPOINTS
    if folder.is_dir():
        aside: dict[int, Path] = {}
        for child in sorted(folder.iterdir()):
            if not (child / CONFIG).is_file():
                continue
            if match := _STEP_DIR.match(child.name):
                found[int(match.group(1))] = child
            elif (stale := _STALE.match(child.name)) and stale.group(2) == "old":
                aside[int(stale.group(1).removeprefix("step-"))] = child
        found = aside | found  # a step's own folder first
    return [found[step] for step in sorted(found)]


def incomplete_checkpoints(run: str | os.PathLike) -> list[Path]:
    """Checkpoint folders of a run that lack their manifest (config.json), oldest first.

    Such a folder was never finished (a crash before ``save`` renamed it into place) or was
    damaged since; ``run_checkpoints`` skips it.
    """
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(
        child
        for child in folder.iterdir()
        if _STEP_DIR.match(child.name) and child.is_dir() and not (child / CONFIG).is_file()
    )


def no_checkpoint_message(run: str | os.PathLike) -> str:
    """Why a run has no usable checkpoint, naming folders that lack their manifest."""
    broken = incomplete_checkpoints(run)
    if not broken:
        return f"{str(run)!r} has no checkpoint (no {CHECKPOINTS}/step-*/{CONFIG})"
    names = ", ".join(p.name for p in broken)
    return (
        f"{str(run)!r} has no complete checkpoint: {names} in {CHECKPOINTS}/ lack {CONFIG}, "
        "the manifest written last, so they were never finished or were damaged since"
    )


def remove_stale(run: str | os.PathLike) -> list[Path]:
    """Clear what a killed save, prune or atomic write left in a run; returns the paths removed.

    A temporary ``.step-N.tmp-*`` folder is removed, and so is a ``.step-N.gone-*`` one (a
    prune killed while deleting it, ``save_run``). A ``.step-N.old-*`` folder (a killed
    re-save of step N) is moved back to ``step-N`` if that is missing, else removed. The
    temporary files of killed atomic writes in the run folder itself (its log, its flags:
    ``files.remove_temporary``) go too. Call it only while holding the run's lock
    (``files.RunLock``).
    """
    removed = remove_temporary(run)
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return removed
    for child in sorted(folder.iterdir()):
        match = _STALE.match(child.name)
        if not match or not child.is_dir():
            continue
        final = folder / match.group(1)
        if match.group(2) == "old" and not final.exists() and (child / CONFIG).is_file():
            os.replace(child, final)
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def step_name(path: str | os.PathLike) -> str:
    """A checkpoint folder's name as its step's: ``step-N`` for ``step-N`` and for the
    ``.step-N.old-*`` copy of a killed re-save (``run_checkpoints`` lists it as step N)."""
    match = _STALE.match(Path(path).name)
    return match.group(1) if match else Path(path).name


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged checkpoint ``step-N`` to ``step-N.damaged-<hex>`` beside it; returns
    the new path. Nothing is deleted, and the run no longer counts it as a checkpoint: it is
    neither resumed from nor kept in place of a good one when ``save_run`` prunes."""
    path = Path(path)
    if not (_STEP_DIR.match(path.name) or _STALE.match(path.name)):
        raise ValueError(f"{str(path)!r} is not a step-N checkpoint folder")
    target = path.with_name(f"{path.name}.damaged-{uuid.uuid4().hex[:8]}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def latest(run: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None if it has none."""
    found = run_checkpoints(run)
    return found[-1] if found else None


def save_run(run: str | os.PathLike, *, step: int, keep: int = 2, **state: Any) -> Path:
    """Save ``<run>/checkpoints/step-<step>/`` (see ``save``), then keep only the newest ``keep``.

    Older checkpoints are removed only after the new one is complete, each renamed out of
    the run's checkpoints first (``.step-N.gone-*``, which ``remove_stale`` clears), so a
    kill while deleting one never leaves a half-deleted ``step-N``.
    """
    if keep < 1:
        raise ValueError(f"keep={keep} must be >= 1 (the newest checkpoint is always kept)")
    path = save(Path(run) / CHECKPOINTS / f"step-{step:08d}", step=step, **state)
    for old in run_checkpoints(run)[:-keep]:
        if old.name != LEGACY:
            gone = old.with_name(f".{step_name(old)}.gone-{uuid.uuid4().hex[:8]}")
            os.replace(old, gone)
            shutil.rmtree(gone, ignore_errors=True)
    return path


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one checkpoint folder (it holds ``config.json``)."""
    return (Path(path) / CONFIG).is_file()


def config_digest(meta: dict[str, Any]) -> str:
    """sha256 of config.json's content but its own "digest", as canonical JSON."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _digest_differs(meta: dict[str, Any]) -> bool:
    """Whether a config.json's content no longer matches its recorded digest."""
    try:
        return meta["digest"] != config_digest(meta)
    except (TypeError, ValueError):  # not JSON that a digest was made of: damaged too
        return True


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint, parsed and checked; ``config`` becomes a CascadeConfig.

    Its digest must match its content (a flipped bit in the step or a learning rate would
    otherwise pass), and its fields must have their types: the step that of its folder's
    name, the manifest every file of ``FILES``. Any fault is a CheckpointError, so a run
    resumes from the checkpoint before it."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupted: {err}") from None
    other = isinstance(meta, dict) and meta.get("format") not in (FORMAT, None)
    if other and not ("digest" in meta and _digest_differs(meta)):  # a flipped bit: damaged
        raise CheckpointError(
            f"{str(path)!r}: format {meta.get('format')!r}, expected {FORMAT} (saved by "
            "another version of ivref)"
        )
    try:
        _check_fields(meta, Path(directory).name)
        meta["config"] = configs.CascadeConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupted: {err}") from None
    return meta


def _check_fields(meta: Any, folder: str) -> None:
    """A ValueError naming the first field of a parsed config.json that is not as saved."""
    if not isinstance(meta, dict) or not meta.keys() <= CONFIG_KEYS:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"its keys are {keys}, allowed: {sorted(CONFIG_KEYS)}")
    if "digest" in meta and _digest_differs(meta):
        raise ValueError("its content does not match its digest (edited or damaged)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
    step, match = meta.get("step"), _STEP_DIR.match(folder)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step {step!r} is not a count of steps")
    if match and int(match.group(1)) != step:
        raise ValueError(f"step {step} in a folder named {folder}")
    if not isinstance(meta.get("stage"), str) or not isinstance(meta.get("extra"), dict):
        raise ValueError(f"stage {meta.get('stage')!r} or extra is not as saved")
    manifest = meta.get("manifest")
    if not isinstance(manifest, dict) or set(manifest) != set(FILES):
        listed = sorted(manifest) if isinstance(manifest, dict) else manifest
        raise ValueError(f"its manifest lists {listed!r}, not the files {list(FILES)}")
    for name, entry in manifest.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        if not ok or isinstance(entry.get("bytes"), bool) or not isinstance(entry["bytes"], int):
            raise ValueError(f"its manifest entry for {name} is {entry!r}")


def verify(directory: str | os.PathLike) -> dict[str, Any]:
    """Check every file against config.json's manifest (size, then sha256); returns the config."""
    directory = Path(directory)
    meta = read_config(directory)
    verify_files(directory, meta["manifest"], CONFIG)
    return meta


def read(
    directory: str | os.PathLike,
    *,
    config: configs.CascadeConfig | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    """A verified checkpoint's contents: {model, ema, optimizer (state dicts), step, rng,
    extra, config, stage, diff}. With ``config``, the saved stage's U-Net and text encoder
    must match (``diff`` lists any other differences, e.g. a changed learning rate)."""
    directory = Path(directory)
    state = _checked(directory, config, stage)
    return state | {
        "model": read_tensors(directory / "model.safetensors"),
        "ema": read_tensors(directory / "ema.safetensors"),
        "optimizer": optimizer_join(
            read_tensors(directory / "optimizer.safetensors"), _optimizer_json(directory)
        ),
    }


def open_checkpoint(
    directory: str | os.PathLike,
    *,
    config: configs.CascadeConfig | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    """``read``, with the tensors left on disk: model, EMA and optimizer tensors as
    ``TensorFile`` (shapes known, tensors loaded one at a time), the optimizer's non-tensor
    state as ``optimizer_json``. Verified and checked like ``read``."""
    directory = Path(directory)
    return _checked(directory, config, stage) | {
        "model": TensorFile(directory / "model.safetensors"),
        "ema": TensorFile(directory / "ema.safetensors"),
        "optimizer": TensorFile(directory / "optimizer.safetensors"),
        "optimizer_json": _optimizer_json(directory),
    }


def _checked(
    directory: Path, config: configs.CascadeConfig | None, stage: str | None
) -> dict[str, Any]:
    """What ``read`` and ``open_checkpoint`` share: the manifest verified, the stage and (with
    ``config``) the architecture checked; {step, rng, extra, config, stage, diff}."""
    meta = verify(directory)
    stage = stage or meta["stage"]
    if stage != meta["stage"]:
        raise CheckpointError(f"{str(directory)!r} holds stage {meta['stage']!r}, not {stage!r}")
    diff = check_compatible(meta["config"], config, stage, str(directory)) if config else []
    return {
        "step": meta["step"],
        "rng": read_rng(directory),
        "extra": meta["extra"],
        "config": meta["config"],
        "stage": stage,
        "diff": diff,
    }


def _optimizer_json(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "optimizer.json").read_text())


def read_rng(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint's RNG states (every rank's, for a run of several processes)."""
    return read_tensors(Path(directory) / "rng.safetensors")


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
    state = read(directory, config=config, stage=stage)
    load_state_dict_strict(model, state.pop("model"), str(directory / "model.safetensors"))
    load_state_dict_strict(ema, state.pop("ema"), str(directory / "ema.safetensors"))
    try:
        optimizer.load_state_dict(state.pop("optimizer"))
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"{str(directory / 'optimizer.json')!r} does not fit: {err}"
        ) from None
    return state


# ---------------------------------------------------------------------------------------
# Shipped weights
# ---------------------------------------------------------------------------------------


def save_weights(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype | None = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write weights to one safetensors file, floats cast to ``dtype`` (fp16 to ship); atomic.

    Refuses non-finite weights, and weights that overflow ``dtype`` (|w| > 65504 in fp16).
    """
    check_finite(state_dict, str(path))
    cast = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        for k, v in state_dict.items()
    }
    check_finite(cast, f"{path} (after the cast to {dtype})")
    write_tensors(Path(path), cast, metadata)
    return Path(path)


def load_weights(
    path: str | os.PathLike, module: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Read a safetensors weights file; with ``module``, load it in (cast to its dtypes, strict).

    Non-finite weights raise ``NonFiniteError``: they would only ever sample NaN (black) videos.
    """
    state = read_tensors(Path(path))
    check_finite(state, str(path))
    if module is not None:
        load_state_dict_strict(module, state, str(path))
    return state
