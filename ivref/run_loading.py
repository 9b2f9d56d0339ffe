"""Loading what a user points a command at: a train run's newest good checkpoint (its EMA
weights), or a cascade folder, as a ``Cascade`` (``ivref generate / evaluate --checkpoint``,
``ivref export``). A folder that lacks what is needed is a ``CLIError`` saying what; a damaged
checkpoint a ``CheckpointError``, a damaged text probe a ``ValueError``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ivref import configs, distill_plan, errors, files, text, train_videos

if TYPE_CHECKING:
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

CLIError = errors.CLIError


def run_stage(path: Path) -> tuple[configs.CascadeConfig, str, VideoUNet]:
    """(config, stage name, EMA model) from a train run folder or one checkpoint folder.

    A run's newest checkpoint that verifies is used; a damaged newer one is reported.
    """
    return run_checkpoint(path)[:3]


class RunWeights(NamedTuple):
    """A train run's EMA weights as loaded (``load_run``), and the checkpoint they came from."""

    config: configs.CascadeConfig
    stage: str
    model: VideoUNet  # in eval mode
    extra: dict[str, Any]  # the checkpoint's ``extra`` (its ``text_probe``)
    checkpoint: Path  # the checkpoint folder
    step: int  # the training step it was saved at


def run_checkpoint(
    path: Path, or_cascade: bool = False
) -> tuple[configs.CascadeConfig, str, VideoUNet, dict[str, Any]]:
    """``run_stage``'s (config, stage, EMA model) and the checkpoint's ``extra`` (its
    ``text_probe``, written by the Trainer). ``or_cascade``: a cascade folder would have
    done too (the error for a folder that is neither says so)."""
    return load_run(path, or_cascade)[:4]


def load_run(path: Path, or_cascade: bool = False) -> RunWeights:
    """The EMA weights of a train run folder, a distillation's folder (its last phase) or
    one checkpoint folder, with the checkpoint they came from (``RunWeights``).
    ``or_cascade``: the caller takes a cascade folder too, and a folder that is neither
    says so."""
    from ivref import checkpoint

    if not path.is_dir():
        what = "a file" if path.exists() else "no such folder"
        raise CLIError(f"{str(path)!r} is not an `ivref train` run folder ({what})")
    if (path / distill_plan.PLAN).is_file():  # a distillation: its last phase holds the student
        path = distill_plan.final_phase(path)
    elif (path.parent / distill_plan.PLAN).is_file():  # one of its phases: finished?
        distill_plan.check_phase_finished(path)
    single = checkpoint.is_checkpoint(path)
    found = [path] if single else checkpoint.run_checkpoints(path)
    if not found and checkpoint.incomplete_checkpoints(path):
        raise CLIError(checkpoint.no_checkpoint_message(path))
    if not found and path.parent.name == checkpoint.CHECKPOINTS:
        raise CLIError(
            f"checkpoint folder {str(path)!r} has no {checkpoint.CONFIG} (the manifest written "
            "last): it was never finished or was damaged; give its run folder to use the last "
            "complete one"
        )
    if not found and (path / checkpoint.RUN_LOG).is_file():  # a run before its first save
        holder = files.lock_holder(path)
        if holder is not None:
            raise CLIError(
                f"{str(path)!r} is an `ivref train` run with no checkpoint yet (in use by "
                f"{holder}: still training): a run saves every --checkpoint-every steps and "
                "at its last; try again once it has saved"
            )
        raise CLIError(
            f"{str(path)!r} is an `ivref train` run that stopped before its first checkpoint "
            "(nothing holds it now): there is nothing to load; train it again with "
            f"`ivref train ... --out {path} --force`, with a smaller --checkpoint-every"
        )
    if not found:
        if path.name == checkpoint.CHECKPOINTS and checkpoint.run_checkpoints(path.parent):
            raise CLIError(  # run/checkpoints given for the run
                f"{str(path)!r} is the checkpoints/ folder of a run: give the run folder "
                f"{str(path.parent)!r} (its newest good checkpoint is taken), or one "
                f"checkpoint in it ({checkpoint.CHECKPOINTS}/step-N)"
            )
        if or_cascade:
            raise CLIError(
                f"{str(path)!r} is neither a cascade folder (no cascade.json, which "
                "`ivref export` and Cascade.save_pretrained write) nor an `ivref train` run "
                "folder (no checkpoints/)"
            )
        raise CLIError(f"{str(path)!r} is not an `ivref train` run folder (no checkpoints/)")
    for attempt in range(3):  # a run still training may prune the checkpoint being read
        try:
            return _newest_ema(found)
        except checkpoint.CheckpointError:
            if single or attempt == 2 or all(p.is_dir() for p in found):
                raise
            found = checkpoint.run_checkpoints(path) or found  # pruned meanwhile: list again
    raise AssertionError("unreachable")


def _newest_ema(found: list[Path]) -> RunWeights:
    """The EMA weights of the newest checkpoint in ``found`` that verifies."""
    from ivref import checkpoint
    from ivref.unet3d import VideoUNet

    for ckpt in reversed(found):
        try:
            meta = checkpoint.verify(ckpt)
            break
        except checkpoint.CheckpointError as err:
            if ckpt == found[0]:
                raise
            if ckpt.is_dir():  # a vanished one was pruned, not damaged
                print(f"skipping damaged {ckpt.name}: {err}", file=sys.stderr)
    cfg, stage = meta["config"], meta["stage"]
    model = VideoUNet.to_load(cfg.stage(stage).unet)
    checkpoint.load_weights(ckpt / "ema.safetensors", model)
    return RunWeights(cfg, stage, model.eval(), meta.get("extra", {}), ckpt, int(meta["step"]))


def load_cascade(
    path: Path | None,
    distilled: bool = False,
    text_encoder: str | None = None,
    whole: bool = True,
) -> Cascade:
    """A Cascade from a cascade folder, a base-stage train run (its EMA), or None (shipped).

    ``text_encoder`` is the local folder of a T5 checkpoint for a cascade on encoder "t5".
    ``whole``: ``distilled`` students must cover every stage the cascade has (else its
    videos would stop at the last student's size, unsaid); False where only the first
    stages are sampled (``ivref evaluate --until``).
    """
    model = _load_cascade(path, distilled, whole)
    if text_encoder is not None:
        if model.cfg.text.encoder != "t5":
            raise CLIError(
                f"--text-encoder is for encoder 't5'; this cascade's text encoder is "
                f"{model.cfg.text.encoder!r} (built in, no path needed): drop --text-encoder"
            )
        text_cfg = dataclasses.replace(model.cfg.text, path=text_encoder)
        model.cfg = dataclasses.replace(model.cfg, text=text_cfg)
    return model


def _load_cascade(path: Path | None, distilled: bool, whole: bool = True) -> Cascade:
    from ivref import cascade, files

    if path is not None:
        files.finish_replace(path)  # an `export --force` killed between its two renames

    if path is not None and not path.is_dir():
        raise CLIError(f"--checkpoint {str(path)!r} is not a directory")
    if distilled:  # the cascade folder's distilled/ subfolder [IV §2.7]
        if path is not None and not (path / cascade.MANIFEST).is_file():
            raise CLIError(
                f"--distilled takes a cascade folder (with {cascade.MANIFEST}); "
                f"{str(path)!r} is not one"
            )
        students = cascade.Cascade.from_pretrained(path, variant="distilled")
        models = students.models.values()
        if not any(cast("VideoUNet", m).cfg.use_guidance_embedding for m in models):
            where = path if path is not None else cascade.shipped_dir()
            raise CLIError(  # it sampled teachers at their own steps, unlike what was asked
                f"{where}/{cascade.DISTILLED} holds no distilled student (no stage embeds w): "
                f"make one with `ivref distill`, then `ivref export RUN --base {where} --out "
                f"{where}/{cascade.DISTILLED} --force`"
            )
        where = path if path is not None else cascade.shipped_dir()
        try:  # the parent's stages, as its manifest lists them (it is loaded only if asked)
            teachers = json.loads((Path(where) / cascade.MANIFEST).read_text())["stages"]
            missing = [name for name in teachers if name not in students.models]
        except (OSError, ValueError, KeyError, TypeError):
            missing = []  # a damaged parent: its own loading says so, where it is loaded
        if whole and missing:
            have = [s.name for s in students.trained_stages]
            raise CLIError(
                f"--distilled: {str(Path(where) / cascade.DISTILLED)!r} holds students of {have} "
                f"only, while the cascade goes on to {missing}: its videos would stop at "
                f"{have[-1]}'s size. Distil those stages too (ivref distill --stage "
                f"{missing[0]} --from {where}) and export them there, or drop --distilled"
            )
        return students
    if path is None or (path / cascade.MANIFEST).is_file():
        return cascade.Cascade.from_pretrained(path)
    cfg, stage, model, extra = run_checkpoint(path, or_cascade=True)
    if stage != cfg.stages[0].name:
        raise CLIError(
            f"{str(path)!r} trains stage {stage!r}, which needs the stages before it: "
            f"`ivref export {path} --base CASCADE --out DIR`, then --checkpoint DIR"
        )
    data = train_videos.trained_on(path)
    return cascade.Cascade(
        cfg,
        {stage: model},
        text_probe=text.recorded_probe(extra, repr(str(path))),
        trained_on=None if data is None else {stage: data},
    )
