"""A ``Trainer``'s checkpoints: saved whole or sharded, resumed exactly or with new streams.

``save`` writes the trainer's model, EMA, AdamW state and every rank's random states as one
checkpoint folder (checkpoint.py); under FSDP each tensor is gathered and written one at a
time (sharded_state.py). ``restore`` loads the newest checkpoint that verifies (a damaged
newer one is reported and renamed aside, never deleted) and continues the random streams
exactly, or, with ``new_streams``, seeds new ones from the checkpoint so that a run can go on
with another number of processes. ``Trainer.save`` and ``Trainer.resume`` call them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ivref import (
    checkpoint,
    configs,
    distributed,
    files,
    objectives,
    sharded_state,
    state_checks,
    text,
)
from ivref.model_rng import STATE_KEY, ModelRNG

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# ``trainer`` below is an ivref.trainer.Trainer (not imported here: trainer.py imports this).

# The names the loop saves its own random states under, beside the objective's (rng.safetensors)
LOOP_RNG_NAMES = ("torch", "train", STATE_KEY, distributed.WORLD_SIZE_KEY)


def check_objective_rng(objective: Any) -> None:
    """Refuse an objective whose ``rng_state()`` uses a name the loop saves its own state
    under: one would overwrite the other in the checkpoint, and resume would not be exact."""
    state = objective.rng_state()
    taken = [k for k in state if k in LOOP_RNG_NAMES or "/" in k]
    if taken:
        raise ValueError(
            f"{type(objective).__name__}.rng_state() names {taken}, which the training loop "
            f"saves its own random states under (or other processes' states, 'rank<r>/...'); "
            f"allowed: any other names without '/' (not {list(LOOP_RNG_NAMES)})"
        )
    loose = {k: type(v).__name__ for k, v in state.items() if not isinstance(v, torch.Tensor)}
    if loose:
        raise TypeError(
            f"{type(objective).__name__}.rng_state() gives {loose}: a checkpoint saves "
            "tensors only (a dataset's state_dict() too); turn them into tensors"
        )


def text_probe(trainer: Any) -> list[float] | None:
    """``text.probe`` of the objective's text encoder, computed once; None if it has none.

    Saved in each checkpoint's ``extra``; ``ivref export`` copies it into cascade.json, and
    ``restore`` checks it, so no run or cascade silently gets another encoder's text."""
    if not hasattr(trainer, "_text_probe"):
        trainer._text_probe = None
        cache = getattr(trainer.objective, "text", None)
        encoder = getattr(cache, "encoder", cache)  # past the trainer's cache: not a caption
        if encoder is not None and hasattr(encoder, "encode"):
            try:
                trainer._text_probe = text.probe(encoder)
            except Exception as err:  # a custom encoder may know its own captions only
                warnings.warn(
                    f"the text encoder could not encode {text.PROBE_PROMPT!r} ({err!r}): "
                    "checkpoints do not record its probe, and nothing checks that a resume "
                    "or an export uses the same encoder",
                    stacklevel=2,
                )
    return trainer._text_probe


def save(trainer: Any) -> Path | None:
    """Every rank calls it; rank 0 writes the folder (see ``Trainer.save``). The others get
    the run's newest checkpoint as they see it: None where they see none (a folder that is
    not shared between the machines)."""
    step, context = trainer.step, trainer.context
    rng = {"torch": torch.get_rng_state(), "train": trainer.generator.get_state()}
    rng |= trainer.objective.rng_state() | trainer.model_rng.state_dict()
    states = distributed.gather(rng, context)
    model, ema, optimizer = trainer.model, trainer.ema, trainer.optimizer
    if trainer.fsdp:  # one process's layout, gathered and written one tensor at a time
        model = sharded_state.streamed_state(model, f"model weights at step {step}")
        ema = sharded_state.streamed_state(ema, f"EMA weights at step {step}")
        optimizer = sharded_state.streamed_optimizer_state(optimizer)
        if not context.is_main:  # in step with rank 0's writes
            for streamed in (model, ema, optimizer):
                streamed.drain()
    if context.is_main:
        probe = text_probe(trainer)
        extra = {"skipped": trainer._skipped} | ({} if probe is None else {"text_probe": probe})
        if getattr(trainer, "bf16_given", None) is not None:  # forced: ``restore`` restores it
            extra["bf16_given"] = trainer.bf16_given
        row = getattr(trainer, "_row", None)
        if row is not None and row.get("step") == step:  # the log row of the step it saves
            extra["log_row"] = files.finite_row(row)
        with files.RunLock(trainer.out):  # held by fit; taken here for a save outside it
            checkpoint.remove_stale(trainer.out)
            path = checkpoint.save_run(
                trainer.out,
                extra=extra,
                step=step,
                keep=trainer.keep_checkpoints,
                config=trainer.config,
                stage=trainer.stage.name,
                model=model,
                ema=ema,
                optimizer=optimizer,
                rng=distributed.pack_rng(states),
            )
    distributed.barrier(context)  # the checkpoint is on disk for every rank
    return path if context.is_main else checkpoint.latest(trainer.out)


def on_main(context: distributed.Context, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result given to every rank; an exception it raises is raised
    on every rank (the others would wait for rank 0 at their next collective): on rank 0 as
    it is, on the others as sent (``portable``)."""
    result, failure = None, None
    if context.is_main:
        try:
            result = work()
        except Exception as err:
            failure = err
    sent = distributed.broadcast((result, portable(failure)), context)
    if failure is not None:
        raise failure
    if sent[1] is not None:
        raise sent[1]
    return sent[0]


def portable(err: BaseException | None) -> BaseException | None:
    """``err`` as it can travel to the other ranks: itself if it pickles and unpickles, else
    a RuntimeError naming its type and message (one holding a lock, say, would not)."""
    if err is None:
        return None
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def claim(trainer: Any, lock: Any, steps: int) -> None:
    """Rank 0's hold on the run folder for ``fit``: its lock, then (to train ``steps`` > 0)
    the check that the folder's newest checkpoint is the trainer's own: the one it saved or
    resumed last, or none for a fresh trainer. Checked under the lock: another trainer may
    have gone on with the run since."""
    _locked(lock, lambda: _check_own(trainer, steps))


def _locked(lock: Any, work: Callable[[], Any]) -> None:
    """Acquire ``lock``, then ``work()``; if that fails the lock is released again."""
    lock.acquire()
    try:
        work()
    except BaseException:
        lock.release()
        raise


def _check_own(trainer: Any, steps: int) -> None:
    """``claim``'s check: the folder's newest checkpoint is the one the trainer knows."""
    latest = checkpoint.latest(trainer.out) if steps > 0 else None
    seen = trainer._checkpoint_seen
    if latest is not None and seen is None:
        raise ValueError(
            f"{str(trainer.out)!r} holds another run's checkpoints (newest: {latest.name}); "
            "call resume() first to continue it, or train into a new folder (ivref train "
            "--force replaces a run)"
        )
    if latest is not None and checkpoint.step_name(latest) != seen:
        raise ValueError(
            f"{str(trainer.out)!r}: its newest checkpoint is {latest.name}, not {seen}, the "
            "last this trainer saved or resumed: another trainer went on with the run "
            "since; call resume() to continue from there, or train into a new folder"
        )


def take(trainer: Any, lock: Any) -> None:
    """Rank 0's hold on the run folder for a resume: its lock, and a killed re-save's copy
    put back (``checkpoint.remove_stale``). A folder that does not exist is not made, and one
    that holds nothing of a run (a mistyped path to another folder) gets no lock file; a run
    folder without a checkpoint yet is locked first (a trainer at work there is named)."""
    out = trainer.out
    if not out.is_dir() or not any(p.exists() for p in checkpoint.run_parts(out)):
        raise checkpoint.CheckpointError(
            f"nothing to resume: {checkpoint.no_checkpoint_message(trainer.out)}"
            if trainer.out.is_dir()
            else f"no checkpoint in {str(trainer.out)!r} to resume from"
        )
    _locked(lock, lambda: checkpoint.remove_stale(trainer.out))


class ConfigChangedWarning(UserWarning):
    """A run resumed under a training or diffusion config other than the one it saved
    (``ivref train --resume --lr`` says so in its own words, and silences this)."""


def _say_what_changed(trainer: Any, saved_cfg: Any) -> None:
    """Warn where the trainer's stage trains, diffuses or is sampled otherwise than the
    checkpoint's config (a new learning rate, batch size, schedule, clip size, frame rate,
    augmentation level, dropout or T5 folder): a resume takes the trainer's, which may be meant, but
    should not go unsaid. A U-Net of other shapes was refused when its weights loaded."""
    if not isinstance(saved_cfg, configs.CascadeConfig):
        return
    try:
        old = saved_cfg.stage(trainer.stage.name)
    except ValueError:
        return
    pairs: list[tuple[DataclassInstance, DataclassInstance, str, tuple[str, ...]]] = [
        (old.train, trainer.train_cfg, "", ()),
        (saved_cfg.diffusion, trainer.diffusion, "diffusion.", ()),
        (old, trainer.stage, "", ("name", "train", "unet")),  # the stage's own fields
        (old.unet, trainer.stage.unet, "unet.", ("checkpointing",)),  # memory, not the result
        (saved_cfg.text, trainer.config.text, "text.", ()),  # a moved T5 folder: its path
    ]
    changed = [
        f"{prefix}{f.name}: {getattr(a, f.name)!r} -> {getattr(b, f.name)!r}"
        for a, b, prefix, same_run in pairs
        for f in dataclasses.fields(a)
        if f.name not in same_run and getattr(a, f.name) != getattr(b, f.name)
    ]
    if changed:
        warnings.warn(
            f"resuming {str(trainer.out)!r} under another config than its checkpoint's: "
            f"{'; '.join(changed)} (the trainer's is used from here on)",
            ConfigChangedWarning,
            stacklevel=4,
        )


def absolute_text_path(config: configs.CascadeConfig) -> configs.CascadeConfig:
    """``config`` with its T5 folder (``text.path``) made absolute: the config is saved with
    every checkpoint, and a relative path would name another folder, or none, for a resume
    or an export run from elsewhere (``ivref train --text-encoder`` stores it absolute too).
    A resume reads a checkpoint's config this way too: runs saved before kept the path as
    given, resolved here from the current folder as the trainer resolves its own."""
    where = config.text.path
    if where is None or Path(where).expanduser().is_absolute():
        return config
    text_cfg = dataclasses.replace(config.text, path=str(Path(where).expanduser().resolve()))
    return dataclasses.replace(config, text=text_cfg)


def _check_same_t5_folder(saved_cfg: Any, config: Any, where: str) -> None:
    """Where no recorded probe can tell whether a T5 is the one a run trained with (a run
    saved before probes, or an encoder that could not encode the probe prompt), a T5 folder
    that is not the run's is refused, as it was before a moved folder was allowed."""
    if not isinstance(saved_cfg, configs.CascadeConfig):
        return
    old, new = saved_cfg.text.path, config.text.path
    if old != new:
        raise state_checks.ModelMismatchError(
            f"{where} was saved with text.path {old!r}, not {new!r}, and records no text probe "
            "that could tell whether the T5 there is the same one: give the folder it trained "
            "with"
        )


def restore(trainer: Any, new_streams: bool, announce: bool = True) -> int:
    """Load the newest good checkpoint into ``trainer`` and set its random streams; returns
    the checkpoint's step (see ``Trainer.resume``). With several processes rank 0 lists the
    checkpoints and picks one, and every rank follows it."""
    reseed = _reseeder(trainer.objective) if new_streams else None  # refused before loading
    found = checkpoint.run_checkpoints(trainer.out)
    path, state = _load_sharded(trainer, found) if trainer.fsdp else _load(trainer, found)
    where = repr(str(path / checkpoint.CONFIG))
    try:
        meta = checkpoint.read_config(path)
        extra = meta.get("extra", {})
        saved = text.recorded_probe(extra, where)
    except ValueError as err:
        raise checkpoint.CheckpointError(str(err)) from None
    saved_cfg = meta.get("config")
    if isinstance(saved_cfg, configs.CascadeConfig):  # a relative T5 path, as older runs kept
        saved_cfg = absolute_text_path(saved_cfg)
    if trainer.context.is_main and announce:  # a finished phase loaded for its weights: quiet
        _say_what_changed(trainer, saved_cfg)
    given = extra.get("bf16_given")  # what forced the run's autocast when it started
    if getattr(trainer, "bf16_given", None) is None and isinstance(given, bool):  # kept
        if given != trainer.bf16 and trainer.context.is_main:
            warnings.warn(
                f"bf16 autocast is {'on' if given else 'off'} for the rest of this run, as it "
                f"was started with bf16={given} (its checkpoints keep it); give bf16= to the "
                "Trainer to change it",
                stacklevel=3,
            )
        trainer.bf16 = trainer.bf16_given = given
    row = extra.get("log_row")  # the step's log row, for a log that lacks it (Trainer.resume)
    trainer._row = row if isinstance(row, dict) and row.get("step") == meta.get("step") else None
    skipped = extra.get("skipped", 0)  # non-finite steps in a row (--on-nan skip); 0 before
    trainer._skipped = skipped if isinstance(skipped, int) and skipped >= 0 else 0  # it was kept
    now = text_probe(trainer)
    if saved is not None and now is not None:
        cache = trainer.objective.text
        name = getattr(getattr(cache, "encoder", cache), "name", "the run's text encoder")
        text.check_probe(saved, now, name, f"run {str(trainer.out)!r}")
    else:  # no probe tells the encoder: its T5 folder must be the one the run trained with
        _check_same_t5_folder(saved_cfg, trainer.config, where)
    newer = found[found.index(path) + 1 :] if path in found else []  # rank 0's listing decides
    _set_aside_newer(trainer.context, distributed.broadcast(newer, trainer.context))
    data = getattr(trainer.objective, "data", None)
    if reseed is not None and data is not None:  # rank 0's names (others': rank<r>/...)
        objectives.check_data_state(data, state["rng"], new_streams=True)
    if reseed is not None:
        seed_new_streams(trainer, reseed, state["rng"], state["step"], announce)
    else:
        rng = distributed.unpack_rng(state["rng"], trainer.context)
        # rng["torch"] (the process's generator when it was saved) is not put back: training
        # draws only from the run's own streams (its generator, the objective's, and
        # model_rng's for dropout), and a resume must leave the caller's generator alone
        trainer.generator.set_state(rng["train"])
        trainer.objective.set_rng_state(rng)
        trainer.model_rng.load_state_dict(rng)
    # last: a resume refused on the way (another process count, other data) leaves the
    # trainer without a checkpoint it may train on from, so ``fit`` refuses the folder
    trainer._checkpoint_seen = checkpoint.step_name(path)
    return state["step"]


def _set_aside_newer(context: distributed.Context, damaged: list[Path]) -> None:
    """Rename the damaged checkpoints newer than the one resumed (``checkpoint.set_aside``):
    kept on disk, but no longer the run's newest, which the next save would keep while it
    pruned good ones, and a later resume would try first."""
    if not damaged:
        return
    distributed.barrier(context)  # every rank has finished reading before rank 0 renames
    if context.is_main:
        for path in damaged:
            moved = checkpoint.set_aside(path)
            print(f"resume: kept the damaged {path.name} as {moved.name}", file=sys.stderr)


def seed_new_streams(
    trainer: Any,
    reseed: Callable[[int], object],
    saved: dict[str, torch.Tensor],
    step: int,
    announce: bool = True,
) -> None:
    """Seed this rank's data (``reseed``), noise and dropout streams anew, as
    ``Trainer.__init__`` does but from seed = sha256(rank 0's saved noise-generator state,
    step) instead of ``seed``: the same for every resume of this checkpoint, and no stream
    the run has drawn from. ``announce``: rank 0 says so on stderr."""
    key = saved["train"].numpy().tobytes() + step.to_bytes(8, "little")
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % 2**63
    stream = distributed.stream_seed(seed, trainer.context.rank)
    reseed(stream)
    trainer.generator.manual_seed(stream + 1)
    trainer.model_rng = ModelRNG(trainer.model, stream + 2, trainer.device)
    if announce and trainer.context.is_main:
        print(
            f"resume: new data, noise and dropout streams for {trainer.context.world_size} "
            f"process(es) (the run was trained by {distributed.saved_world_size(saved)}); "
            "weights, EMA and optimizer state continue exactly",
            file=sys.stderr,
        )


def _reseeder(objective: Any) -> Callable[[int], object]:
    """How to seed ``objective``'s own streams anew: its ``reseed``, else its data generator's
    ``manual_seed``; an objective with neither cannot take new streams."""
    if callable(getattr(objective, "reseed", None)):
        return objective.reseed
    generator = getattr(getattr(objective, "data", None), "generator", None)
    if isinstance(generator, torch.Generator):
        return generator.manual_seed
    raise ValueError(
        f"new_streams=True seeds the objective's own random streams anew, and "
        f"{type(objective).__name__} has no reseed(seed) method nor a data.generator: give it "
        "one, or resume with the number of processes that trained the run"
    )


def _newest(
    context: distributed.Context, found: list[Path], read: Callable[[Path], Any], run: Path
) -> tuple[Path, Any]:
    """(path, read(path)) of the newest checkpoint of ``run`` that reads (``found``: its
    checkpoints); a damaged one is reported."""
    if not found:
        raise checkpoint.CheckpointError(f"no checkpoint in {str(run)!r} to resume from")
    for path in reversed(found):
        try:
            return path, read(path)
        except state_checks.ModelMismatchError:  # not damage: every older one is the same
            raise
        except checkpoint.CheckpointError as err:
            if path == found[0]:
                raise
            if context.is_main:
                print(f"resume: skipping {path.name}: {err}", file=sys.stderr)
    raise AssertionError("unreachable")


def _load(trainer: Any, found: list[Path]) -> tuple[Path, dict[str, Any]]:
    """Every rank loads the newest good checkpoint into its model, EMA and optimizer;
    returns (its path, its state). With several processes rank 0 picks it and the others
    load that one: each picking its own, a rank whose listing lagged (a shared file system)
    resumed from an older step than the others, and the replicas trained apart unseen."""
    read = functools.partial(
        checkpoint.load,
        model=trainer.model,
        ema=trainer.ema,
        optimizer=trainer.optimizer,
        config=trainer.config,
        stage=trainer.stage.name,
    )
    context = trainer.context
    if context.world_size == 1:
        return _newest(context, found, read, trainer.out)
    picked: dict[str, Any] = {}

    def pick() -> Path:
        path, picked["state"] = _newest(context, found, read, trainer.out)
        return path

    path, state, failure = on_main(context, pick), picked.get("state"), None
    if not context.is_main:
        try:
            state = read(path)
        except Exception as err:
            failure = checkpoint.CheckpointError(f"rank {context.rank}: {err}")
    failures = [f for f in distributed.gather(failure, context) if f is not None]
    if failures:  # every rank stops, none waits for the others at the next collective
        raise failures[0]
    return path, cast(dict[str, Any], state)  # read by every rank: rank 0 in ``pick``


def _load_sharded(trainer: Any, found: list[Path]) -> tuple[Path, dict[str, Any]]:
    """FSDP: rank 0 checks the newest good checkpoint and reads it a tensor at a time,
    each rank keeping its shards (sharded_state.py); the other ranks read the step and the
    RNG states themselves."""
    context = trainer.context
    opened: dict[str, Any] = {}

    def pick() -> Path:  # on rank 0
        open_checkpoint = functools.partial(
            checkpoint.open_checkpoint, config=trainer.config, stage=trainer.stage.name
        )
        path, state = _newest(context, found, open_checkpoint, trainer.out)
        for part in ("model", "ema"):
            where = str(state[part].path)
            checkpoint.check_fits(trainer.model, state[part].meta_tensors(), where)
        sharded_state.check_optimizer_fits(
            trainer.optimizer, state["optimizer"], state["optimizer_json"],
            str(path / "optimizer.safetensors"),
        )  # fmt: skip
        opened.update(state)
        return path

    path = on_main(context, pick)
    sharded_state.load_state(trainer.model, opened.get("model"))
    sharded_state.load_state(trainer.ema, opened.get("ema"))
    sharded_state.load_optimizer_state(
        trainer.optimizer, opened.get("optimizer"), opened.get("optimizer_json"), context
    )
    if not context.is_main:  # rank 0 read the step and the RNG states while checking
        opened = {"step": checkpoint.read_config(path)["step"], "rng": checkpoint.read_rng(path)}
    return path, {"step": opened["step"], "rng": opened["rng"]}
