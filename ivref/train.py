"""The ``ivref train`` command: train one stage of the cascade with ``trainer.Trainer``.

Run: ``ivref train --scale toy --stage tsr --steps 3000 --out runs/tsr`` (``--resume`` to
continue), or ``python -m ivref.train ...`` with the same arguments. Data-parallel over N
processes (GPUs, or CPU processes with gloo): ``torchrun --nproc_per_node=N -m ivref.train
...``; ``--batch-size`` stays the global batch (distributed.py says what each process does).

The loop itself lives in trainer.py; its names are re-exported here (``train.Trainer``,
``train.read_log``, ...), where earlier code and the notebooks find them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ivref import (
    arguments,
    checkpoint,
    configs,
    devices,
    distill_plan,
    distributed,
    errors,
    evaluate,
    files,
    run_flags,
    train_videos,
    trainer_checkpoints,
)
from ivref.arguments import MAX_COUNT as MAX_COUNT  # re-exported: other code imports these
from ivref.arguments import check_count as check_count  # from here
from ivref.arguments import count as count
from ivref.arguments import fraction as fraction
from ivref.arguments import guidance_weight as guidance_weight
from ivref.arguments import positive_float as positive_float
from ivref.arguments import positive_int as positive_int
from ivref.arguments import sampler_steps as sampler_steps
from ivref.arguments import seed_int as seed_int
from ivref.trainer import LOG as LOG
from ivref.trainer import MAX_SEED as MAX_SEED
from ivref.trainer import MAX_SKIPPED as MAX_SKIPPED
from ivref.trainer import Evaluator as Evaluator
from ivref.trainer import NonFiniteLossError as NonFiniteLossError
from ivref.trainer import OnNonFinite as OnNonFinite
from ivref.trainer import TextCache as TextCache
from ivref.trainer import Trainer as Trainer
from ivref.trainer import caption_evaluator as caption_evaluator
from ivref.trainer import check_compile as check_compile
from ivref.trainer import compile_options as compile_options
from ivref.trainer import ema_decay_at as ema_decay_at
from ivref.trainer import ema_update as ema_update
from ivref.trainer import learning_rate as learning_rate
from ivref.trainer import read_log as read_log
from ivref.trainer import text_padding as text_padding
from ivref.trainer import warmup_lr as warmup_lr

# -- the ``ivref train`` command ----------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``ivref train`` (also ``python -m ivref.train``)."""
    p.add_argument("--scale", choices=configs.PRESETS, help="preset (default toy; resume: saved)")
    p.add_argument("--stage", help="stage name in the preset (default base; resume: saved)")
    p.add_argument(
        "--steps", type=arguments.positive_int, required=True, help="train until this step"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder: log + checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT's newest checkpoint")
    p.add_argument(
        "--new-streams",
        action="store_true",
        help="with --resume: new data and noise streams (to resume with another process count)",
    )
    p.add_argument("--force", action="store_true", help="start afresh in a non-empty OUT")
    p.add_argument(
        "--batch-size",
        type=arguments.positive_int,
        help="override the stage's TrainConfig; the global batch under torchrun",
    )
    p.add_argument("--lr", type=arguments.positive_float, help="override the stage's TrainConfig")
    p.add_argument(
        "--image-ratio",
        type=arguments.fraction,
        help="fraction of image samples (joint; the toy world's: 0 with --videos)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast on or off (default: the stage's setting, where the device computes "
        "bf16 natively: float32 on a CPU without AVX-512, AMX or Arm bf16)",
    )
    p.add_argument(
        "--seed",
        type=arguments.seed_int,
        help="initial weights and data of a fresh run (default: 0; a resume continues the "
        "run's own streams)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")

    # The flags a resume keeps (run_flags.DEFAULTS): each default, and "--resume: the run's
    # own", which the word "default" puts back (the only way to, for a default of "none")
    def kept(name: str, kind: Any, what: str) -> None:
        help_ = f"{what} (default: {run_flags.shown(name)}; --resume: the run's own, or 'default')"
        p.add_argument(run_flags.flag(name), type=run_flags.or_default(kind), help=help_)

    kept("checkpoint_every", arguments.positive_int, "save a checkpoint every K steps")
    kept("keep_checkpoints", arguments.positive_int, "checkpoints kept, the newest")
    kept(
        "eval_every",
        arguments.count,
        "evaluate every K steps (caption alignment; --videos: the --val-index loss)",
    )
    kept("eval_steps", arguments.sampler_steps, "sampler steps for evaluation")
    kept("eval_guidance", arguments.guidance_weight, "guidance w for evaluation")
    kept("eval_samples", arguments.positive_int, "captions (--videos: held-out clips) to evaluate")
    train_videos.add_arguments(p)
    p.add_argument(
        "--on-nan",
        choices=("stop", "skip"),
        help="on a non-finite loss: stop, or skip the step (default: "
        f"{run_flags.DEFAULTS['on_nan']}; --resume: the run's own)",
    )
    p.add_argument("--text-encoder", help="local T5 checkpoint folder (encoder 't5')")
    p.add_argument("--text-cache", type=Path, help="folder caching text embeddings on disk")
    p.add_argument("--threads", type=arguments.positive_int, help="torch CPU threads")
    p.add_argument(
        "--fsdp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="under torchrun: shard model, gradients, AdamW state and EMA between processes "
        "(default: off; --resume: the run's own, --no-fsdp to stop sharding)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (CUDA graphs on a GPU); the first step compiles",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "lr": args.lr,
        "image_ratio": args.image_ratio,
        "bf16": args.bf16,
        "batch_size": args.batch_size,
    }
    return {k: v for k, v in given.items() if v is not None}


def build_config(args: argparse.Namespace) -> tuple[configs.CascadeConfig, str, list[str]]:
    """(config, stage, notes): the preset or, with --resume, the run's saved config, plus the
    command line's overrides; ``notes`` says what was overridden on resume."""
    notes: list[str] = []
    if args.resume:
        meta = _newest_config(args.out)
        cfg, stage = meta["config"], meta["stage"]
        args.config_step = meta.get("step")  # the checkpoint whose config the notes compare
        args.bf16_saved = meta["extra"].get("bf16_given")  # for _given_bf16: read once
        for flag, given, saved in (
            ("--scale", args.scale, cfg.name),
            ("--stage", args.stage, stage),
        ):
            if given is not None and given != saved:
                raise errors.CLIError(f"--resume: {flag} {given!r}, but the run trains {saved!r}")
    else:
        cfg, stage = configs.preset(args.scale or "toy"), args.stage or "base"
        names = [s.name for s in cfg.stages]
        if stage not in names:
            raise errors.CLIError(
                f"unknown stage {stage!r} for scale {cfg.name!r}; stages: {names}"
            )
    old = cfg.stage(stage).train
    train_cfg = dataclasses.replace(old, **_overrides(args))
    if _on_videos(args):  # no stills to mix in
        if args.image_ratio:
            raise errors.CLIError(
                f"--image-ratio {args.image_ratio:g} with --videos: a folder of videos gives "
                "videos alone, no still images to train on jointly; drop --image-ratio"
            )
        train_cfg = dataclasses.replace(train_cfg, image_ratio=0.0)  # the config says so
    if args.resume:
        notes = [  # a value given again as it was is no override
            f"{k}: {getattr(old, k)} -> {v}"
            for k, v in _overrides(args).items()
            if getattr(old, k) != v
        ]
    stages = tuple(
        dataclasses.replace(s, train=train_cfg) if s.name == stage else s for s in cfg.stages
    )
    text_cfg = cfg.text
    if args.text_encoder:
        if text_cfg.encoder != "t5":
            raise errors.CLIError(
                f"--text-encoder is for encoder 't5'; this run's text encoder is "
                f"{text_cfg.encoder!r} (built in, no path needed): drop --text-encoder"
            )
        where = str(Path(args.text_encoder).expanduser().resolve())  # from any folder later
        if args.resume and text_cfg.path != where:  # a moved folder (its probe checks it)
            notes.append(f"text.path: {text_cfg.path} -> {where}")
        text_cfg = dataclasses.replace(text_cfg, path=where)
    return dataclasses.replace(cfg, text=text_cfg, stages=stages), stage, notes


def _given_bf16(args: argparse.Namespace) -> bool | None:
    """--bf16 / --no-bf16, or on --resume without either what forced the run's autocast when
    it started (kept in its checkpoints); None: the stage's setting, where bf16 is native."""
    if args.bf16 is not None or not args.resume:
        return args.bf16
    given = getattr(args, "bf16_saved", None)  # kept by build_config from the same config
    return given if isinstance(given, bool) else None


def _resume(trainer: Any, args: argparse.Namespace) -> int:
    """``trainer.resume`` without repeating, as a warning, the overrides noted above as
    flags; where it fell back to an older checkpoint than the one whose config they were
    compared with (the newest's weights damaged), its own config may differ otherwise (an
    override given on an earlier resume), and the warning says how."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = trainer.resume(new_streams=args.new_streams)
    fell_back = step != getattr(args, "config_step", step)
    for warning in caught:
        if fell_back or not issubclass(warning.category, trainer_checkpoints.ConfigChangedWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return step


def _on_videos(args: argparse.Namespace) -> bool:
    """Whether the run trains on a folder of videos: --videos, or (a resume) its record."""
    if getattr(args, "videos", None) is not None:
        return True
    if not args.resume:
        return False
    try:
        return train_videos.read(args.out) is not None
    except errors.CLIError:  # a damaged record: a run on videos; its resume says the rest
        return True


def _newest_config(run: Path) -> dict[str, Any]:
    """The saved config of a run's newest checkpoint whose config.json reads (for --resume).
    A damaged one is passed over in silence: the trainer's resume reads the same checkpoints
    and says, once and on rank 0 alone, which one it skipped and why (said here too, the line
    came three times from every process)."""
    found = checkpoint.run_checkpoints(run)
    if not found:
        raise _nothing_to_resume(run)
    for path in reversed(found):
        try:
            return checkpoint.read_config(path)
        except checkpoint.CheckpointError:
            if path == found[0]:
                raise
    raise AssertionError("unreachable")


def _nothing_to_resume(run: Path) -> errors.CLIError:
    """--resume of a folder without a checkpoint: why, and how to start anew."""
    anew = "drop --resume to start anew"
    if any(p.exists() for p in _ours(run)):  # a run that stopped before its first save
        anew = "drop --resume and add --force to start anew there (its log is deleted)"
    return errors.CLIError(f"--resume: {checkpoint.no_checkpoint_message(run)}; {anew}")


def _ours(out: Path) -> list[Path]:
    """What a run writes into its folder (what --force deletes)."""
    return checkpoint.run_parts(out)


def _check_out(out: Path, resume: bool, force: bool) -> None:
    """A fresh run needs an empty (or new) folder, or --force to clear a previous run; a
    record of videos alone (a run that failed before its first step) holds no run."""
    if resume or force or not out.is_dir() or not any(p.exists() for p in _ours(out)):
        return
    raise errors.CLIError(
        f"{str(out)!r} already holds a run; pass --resume to continue it, --force to "
        f"start afresh there (deleting its log, checkpoints and {train_videos.VIDEOS}), or "
        "a new --out"
    )


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    """A fresh run: the record of an earlier run's videos goes; with --force, its log and
    checkpoints too."""
    _check_out(out, resume, force)
    if resume:
        return
    (out / train_videos.VIDEOS).unlink(missing_ok=True)
    if not force:
        return
    for path in _ours(out):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run(args: argparse.Namespace) -> int:
    """``ivref train``: build or resume the run, train to --steps, exit 128 + N on a signal.

    Under ``torchrun`` every process runs this: each joins the process group and checks the
    arguments; rank 0 alone locks and prepares the folder, and prints.
    """
    device = devices.parse_command_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        raise errors.CLIError(f"--out {str(args.out)!r} is a file; give a folder for the run")
    files.check_writable(args.out, "--out")
    if (args.out / distill_plan.PLAN).is_file():  # its last phase would hide this run from export
        raise errors.CLIError(
            f"--out {str(args.out)!r} holds a distillation ({distill_plan.PLAN}); give the run a "
            "folder of its own"
        )
    if args.resume and args.force:
        raise errors.CLIError(
            "--resume continues the run in --out and --force deletes it to start afresh: "
            "give one of them"
        )
    if args.new_streams and not args.resume:
        raise errors.CLIError("--new-streams starts new random streams for --resume; add --resume")
    if args.resume and not args.out.is_dir():  # before the lock would make the folder
        raise errors.CLIError(
            f"--resume: {str(args.out)!r} does not exist; drop --resume to start a run there"
        )
    if args.resume and not any(p.exists() for p in _ours(args.out)):  # not a run folder (a
        raise _nothing_to_resume(args.out)  # mistyped --out): no lock file is left in it
    args.flag_notes = run_flags.settle(args)  # the run's own flags where none are given
    args.seed_note = args.resume and args.seed is not None
    args.seed = 0 if args.seed is None else args.seed
    if not args.resume:
        build_config(args)  # a bad stage or override fails before the folder is made
        train_videos.record(args)
    return distributed.run_in_group(device, lambda device, context: _train(args, device, context))


def _train(args: argparse.Namespace, device: torch.device, context: distributed.Context) -> int:
    from ivref import text

    if args.batch_size is not None:  # before the lock makes --out (the Trainer checks later)
        uneven = distributed.uneven_batch(
            args.batch_size, context.world_size, f"--batch-size {args.batch_size}"
        )
        if uneven:
            raise errors.CLIError(uneven)

    with distributed.main_only(context, files.RunLock(args.out)):
        _check_out(args.out, args.resume, args.force)  # on every rank: all fail alike
        videos, moved = (
            train_videos.resumed(args) if args.resume else (train_videos.record(args), None)
        )
        cfg, stage, notes = build_config(args)
        stream = distributed.stream_seed(args.seed, context.rank)  # this process's data
        probed = train_videos.known_probes(args.out, videos)  # a start before probed them
        dataset = train_videos.dataset(
            videos, cfg.stage(stage), stream, args.decode_workers, args.prefetch, probed
        )
        evaluator = None  # made here: bad held-out videos fail before --force deletes
        if args.eval_every and videos is not None:
            evaluator = train_videos.validation_evaluator(
                videos, args.val_index, cfg.stage(stage), args.eval_samples, probed
            )
        elif args.eval_every:
            evaluator = evaluate.stage_evaluator(
                prompts=evaluate.spread_prompts(args.eval_samples),
                steps=args.eval_steps,
                guidance_w=args.eval_guidance,
            )
        if args.threads:
            torch.set_num_threads(args.threads)
        trainer = Trainer(
            cfg,
            stage,
            args.out,
            text_encoder=text.build_encoder(cfg.text, cache_dir=args.text_cache),
            dataset=dataset,
            seed=args.seed,
            device=device,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            evaluate=evaluator,
            evaluate_every=args.eval_every,
            on_nonfinite=args.on_nan,
            compile=args.compile,
            fsdp=args.fsdp,
            bf16=_given_bf16(args),  # --bf16 / --no-bf16 force it; neither: the stage's, if native
        )  # nothing written yet: its text encoder and options are checked before --force
        if context.is_main:  # deletes (a bad folder of videos failed before it, too)
            _prepare_out(args.out, args.resume, args.force)
        distributed.barrier(context)  # the folder is ready before any rank writes in it
        if context.is_main:  # valid whatever becomes of this start: the next need not probe
            train_videos.keep_probes(args.out, dataset, evaluator)
        for note in notes + args.flag_notes if context.is_main else []:
            print(f"resume: override {note}", file=sys.stderr)
        if args.seed_note and context.is_main:
            print(
                f"resume: --seed {args.seed} is not used: a resume continues the run's own "
                "data, noise and dropout streams (--new-streams: new ones, seeded from the "
                "checkpoint)",
                file=sys.stderr,
            )
        if args.resume:
            step = _resume(trainer, args)
            if context.is_main:
                print(f"resuming {stage} from step {step}", file=sys.stderr)
            if context.is_main and step >= args.steps:
                print(
                    f"resume: the run is at step {step} already, --steps {args.steps}: nothing "
                    "to train (--steps is the total to reach, not a number to add)",
                    file=sys.stderr,
                )
        if context.is_main:
            run_flags.write(args.out, args)  # what the next --resume goes on with
        if context.is_main and videos is not None and (moved or not args.resume):
            train_videos.write(args.out, videos)  # once its files probed (and resumed) fine
            if moved:
                print(f"resume: {moved}", file=sys.stderr)
        trainer.fit(args.steps)
    where = f"{args.out}/{checkpoint.CHECKPOINTS}"
    if trainer.signal is not None:
        name = signal.Signals(trainer.signal).name
        raise errors.Interrupted(
            trainer.signal, f"stopped by {name} at step {trainer.step}; saved in {where}"
        )
    if context.is_main:
        log = args.out / LOG
        print(f"step {trainer.step}: checkpoint in {where}, log in {log}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ivref.train ...``: the same as ``ivref train ...``."""
    parser = arguments.Parser(prog="ivref train", description="train one cascade stage")
    add_arguments(parser)
    return errors.run_command("train", run, parser.parse_args(argv))


if __name__ == "__main__":  # python -m ivref.train ...
    sys.exit(main())
