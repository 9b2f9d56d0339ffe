"""Fast sampling: guided then progressive distillation of one cascade stage [GD, PD, IV §2.7].

Phase 1, guided distillation [GD]: a student copies the teacher and gains an embedding of
the guidance weight w (zero-initialised, so it starts as the teacher). It learns, in one
forward pass, what guidance makes from two:
    x~_w = (1 + w) x_hat(z_t, c) - w x_hat(z_t),    w ~ U(0, w_max)
Phase 2, progressive distillation [PD Alg. 2]: with N student steps, t = i / N, a student
step t -> t - 1/N must land where two teacher DDIM steps t -> t - 1/(2N) -> t - 1/N land
(``pd_target``); then teacher <- student, N <- N / 2, down to ``to_steps``. The targets, the
loss and the student are in distill_objective.py; this module runs the phases of a stage.
A stage whose teacher samples unguided (w = 0, no oscillation; the toy SR stages) skips
phase 1: its student keeps the zero-initialised w embedding, learns w = 0 only, and says
so in its config (``guidance_w_max = 0``), so a guided call fails instead of being ignored.
Both phases minimise max(SNR_t, 1) ||x~ - x_hat||^2 (truncated SNR weighting, [PD §4]) with
lr annealed linearly to 0 and no EMA [PD]; every phase is an objective in ``trainer.Trainer``,
so it checkpoints, resumes and stops on Ctrl-C like training. Targets use no dynamic
thresholding: clipping inside the targets biases every student's brightness.

    ivref distill --stage base --from data/toy --out runs/distill-base [--resume]
    ivref export runs/distill-base --base data/toy --out my-cascade/distilled

The data the phases draw z_t from is the teacher's: the toy world, or (``videos=``,
``ivref distill --videos FOLDER``) the folder of captioned videos it was trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from ivref import (
    arguments,
    cascade,
    checkpoint,
    compiling,
    configs,
    devices,
    distributed,
    errors,
    files,
    objectives,
    run_flags,
    sharded_state,
    train_videos,
    trainer,
    trainer_checkpoints,
)
from ivref.distill_objective import (  # the phases' math, re-exported: distill.pd_target etc.
    DistillObjective,
    XHatFn,
    pd_target,
    with_guidance_embedding,
    x_loss,
)
from ivref.distill_plan import (  # the plan and its checks, re-exported: distill.PLAN etc.
    ADDED_LATER,
    PLAN,
    check_resumable,
    check_same_data,
    check_same_plan,
    continues,
    data_digest,
    final_phase,
    given_bf16,
    halving_lengths,
    phase_folders,
    phase_plan,
    plan,
    read_plan,
    recipe,
    refuse_phases,
    resume_arguments,
    student_config,
    teacher_digest,
)
from ivref.unet3d import VideoUNet

__all__ = [
    "DistillObjective", "XHatFn", "pd_target", "with_guidance_embedding", "x_loss",  # the math
    "PLAN", "ADDED_LATER", "read_plan", "final_phase", "check_resumable", "check_same_plan",
    "check_same_data", "data_digest", "teacher_digest", "halving_lengths", "plan",
    "student_config",  # the plan and its checks (distill_plan.py)
    "Distilled", "distill_stage", "add_arguments", "step_counts", "run",
]  # fmt: skip

# -- the phases of one stage -------------------------------------------------------------------


@dataclasses.dataclass
class Distilled:
    """The result of ``distill_stage``: the student's cascade config and model, and the
    signal that stopped it early (None when every phase finished)."""

    config: configs.CascadeConfig
    model: VideoUNet
    signal: int | None = None


def distill_stage(
    teacher_cascade: Any,
    stage: str,
    out: str | Path,
    *,
    to_steps: int | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    guided_steps: int | None = None,
    halving_steps: int | Sequence[int] | None = None,
    bf16: bool | None = None,
    checkpoint_every: int = 100,
    seed: int = 0,
    progress: bool = True,
    compile: bool | dict[str, Any] = False,
    fsdp: bool = False,
    new_streams: bool = False,
    videos: Any = None,
    source: str | os.PathLike | None = None,
) -> Distilled:
    """Distil one stage of a trained cascade (``teacher_cascade``: a ``cascade.Cascade``).

    Writes ``out/distill.json`` and one ``train`` run folder per phase; with ``resume`` a
    finished phase is loaded and an unfinished one continues from its checkpoint (an ``out``
    without ``distill.json`` is an error: there is nothing to resume). A resume keeps the
    plan, except that a smaller ``to_steps`` goes on past it: the planned phases stay as they
    are, and more halvings follow.
    ``halving_steps``: training steps of every halving, or one count per halving in order
    (default: the distill config's). ``bf16``: autocast for the student (default: the stage's
    training setting, where the device computes bf16 natively; a resume without it keeps
    what the distillation was started with). ``compile``: ``torch.compile`` the student's
    step (``trainer.Trainer``'s option: CUDA graphs on a GPU) and the teacher's forward with
    the same options; text is padded to the encoder's ``max_length`` so every batch has one
    shape. In a process group of N (``torchrun ... ivref distill``) every process calls it:
    each phase trains data-parallel (``trainer.Trainer``'s DDP, ``batch_size`` the global
    batch), the teacher is replicated, rank 0 writes the files. ``fsdp=True`` shards each
    phase's student, its gradients, AdamW state and EMA instead
    (``trainer.Trainer(fsdp=True)``); the teacher stays whole on every rank (it has no
    gradients nor optimizer state, a quarter of a student's memory), so a phase's sharded
    EMA is gathered whole on every rank to teach the next one.
    The returned model is whole on every rank. ``new_streams``: a resumed phase starts new
    random streams (``trainer.Trainer.resume``), e.g. to resume with another number of
    processes. ``videos``: a ``video_folder.VideoTextFolder`` at the stage's size and frame
    rate to draw the clips from (default: the toy world), for a teacher trained on real
    videos; each phase draws from it afresh, on this rank's stream. The plan records which
    folder it is (a digest of its files and captions), so a resume on other data is refused.
    ``source``: the folder the teacher cascade was loaded from (None: the shipped one),
    recorded in the plan so that ``ivref distill --resume`` needs no flags (a teacher
    loaded from elsewhere with ``source=None`` resumes only with ``--from`` its folder).
    ``teacher_cascade`` is left as it was: its stage is moved to ``device`` and put in eval
    mode for the distillation, then back to its own device and mode.
    """
    if not isinstance(teacher_cascade, cascade.Cascade):
        raise TypeError(
            f"teacher_cascade={teacher_cascade!r:.60} must be a trained cascade: "
            "cascade.Cascade.from_pretrained(FOLDER) (and source=FOLDER, for the plan)"
        )
    trained = [s.name for s in teacher_cascade.trained_stages]
    if stage not in trained:
        raise ValueError(f"stage={stage!r}: the cascade's trained stages are {trained}")
    if isinstance(halving_steps, str | bytes):  # a Sequence: each character would be a count
        raise TypeError(
            f"halving_steps={halving_steps!r} must be an int, or a list of one int per halving"
        )
    compiling.check_compile(compile)
    trainer.check_bf16(bf16)
    seed = arguments.check_seed("seed", seed)  # a Python int from here (NumPy's are taken)
    to_steps = arguments.check_count("to_steps", to_steps, none="the distill config's")
    guided_steps = arguments.check_count("guided_steps", guided_steps, none="the distill config's")
    if not isinstance(halving_steps, Sequence):  # a list is checked by halving_lengths
        halving_steps = arguments.check_count(
            "halving_steps", halving_steps, none="the distill config's"
        )
    batch_size = arguments.check_count("batch_size", batch_size, none="the stage's")
    checkpoint_every = cast(int, arguments.check_count("checkpoint_every", checkpoint_every))
    device = cascade.parse_device(device)
    context = distributed.current()  # several processes: each phase's trainer is DDP or FSDP
    distributed.check_fsdp(fsdp, context, "each student")
    out = Path(out)
    config = teacher_cascade.cfg
    if resume and bf16 is None and (out / PLAN).is_file():  # as the run started: every phase
        bf16 = given_bf16(read_plan(out))  # alike (ivref distill --resume does the same)
        trainer.check_bf16(bf16)
    phases, lengths, record = checked_plan(
        teacher_cascade, stage, out, to_steps=to_steps, guided_steps=guided_steps,
        halving_steps=halving_steps, bf16=bf16, batch_size=batch_size, seed=seed,
        videos=videos, source=source, resume=resume, new_streams=new_streams,
    )  # fmt: skip
    forced_bf16 = bf16  # given: used on any device; None: the plan's, where bf16 is native
    record["bf16_given"] = forced_bf16  # a resume without the flag restores it
    w_max, bf16 = record["w_max"], record["bf16"]
    guided = phases[0][1] == "guided"  # the plan decides: an unguided teacher starts halving
    d = config.distill
    distributed.barrier(context)  # every rank has checked the folder before rank 0 writes
    if context.is_main:
        files.atomic_write_text(out / PLAN, json.dumps(record, indent=2) + "\n")
    stream = distributed.stream_seed(seed, context.rank)  # this rank's data
    first_state = None if videos is None else videos.state_dict()  # every phase starts here
    with _borrowed(_unet(teacher_cascade.models[stage]), device) as teacher:
        if not guided:  # the teacher of the first halving embeds w as well (at zero: unchanged)
            teacher = with_guidance_embedding(teacher).eval()
        for (folder, phase, steps), length in zip(phases, lengths, strict=True):
            cfg = student_config(config, stage, steps, batch_size, w_max, bf16, videos is not None)
            student = with_guidance_embedding(teacher, seed)
            pad = compiling.text_padding(config, compile)
            text = objectives.TextCache(teacher_cascade.encoder, pad_multiple=pad)
            if videos is None:
                dataset = objectives.toy_dataset(cfg.stage(stage), stream, device)
            else:
                videos.load_state_dict(first_state)
                videos.generator.manual_seed(stream)
                dataset = videos
            base = objectives.DiffusionObjective(cfg, cfg.stage(stage), dataset, text)
            objective = DistillObjective(base, _compiled(teacher, compile, device), phase, steps, d)
            loop = trainer.Trainer(
                cfg, stage, out / folder, objective=objective, model=student, device=device,
                checkpoint_every=checkpoint_every, seed=seed, compile=compile,
                progress=f"{stage} {folder}" if progress else False,  # which phase it is
                fsdp=fsdp, bf16=forced_bf16,
            )  # fmt: skip
            finished = trainer_checkpoints.on_main(  # rank 0's listing decides for every rank
                context, functools.partial(_phase_finished, out / folder, length)
            )  # None: not started
            if finished is not None:  # a finished phase is loaded for its student alone: its
                # streams are not used (nor its data checked), so new ones go unannounced; the
                # one phase that trains on says so (once, not once per phase before it)
                step = loop.resume(new_streams=new_streams or finished, announce=not finished)
                if not finished and progress and context.is_main:
                    print(f"resuming {stage} {folder} from step {step}", file=sys.stderr)
                if finished and step < length:  # its last checkpoint was damaged (set aside):
                    # it trains its last steps again on the streams it trained them on, so
                    # they come out as they did, and so does every later phase
                    loop.resume(new_streams=new_streams)
            loop.fit(length)
            ema = _whole(loop.ema, cfg.stage(stage).unet, device) if fsdp else _unet(loop.ema)
            if loop.interrupted:
                return Distilled(cfg, ema, loop.signal)
            teacher = ema.eval()
        return Distilled(cfg, teacher)


_Module = TypeVar("_Module", bound=torch.nn.Module)


def _unet(model: torch.nn.Module) -> VideoUNet:
    """A module known to be a VideoUNet: a cascade's stage, a trainer's copy of a student."""
    return cast(VideoUNet, model)


@contextlib.contextmanager
def _borrowed(model: _Module, device: torch.device) -> Iterator[_Module]:
    """``model`` on ``device`` in eval mode while inside; then back on its own device and in
    its own mode: the caller's cascade is used as the teacher, not changed."""
    training, where = model.training, {p.device for p in model.parameters()}
    try:
        yield model.to(device).eval()
    finally:
        model.train(training)
        if len(where) == 1:  # one device (a model spread over several is left on ``device``)
            model.to(where.pop())


def _phase_finished(folder: Path, length: int) -> bool | None:
    """Whether a phase's run folder has trained its ``length`` steps (None: not started). A
    newest checkpoint whose config does not read is not finished: the resume falls back."""
    latest = checkpoint.latest(folder)
    if latest is None:
        return None
    try:
        return checkpoint.read_config(latest)["step"] >= length
    except checkpoint.CheckpointError:
        return False


def checked_plan(
    teacher_cascade: Any,
    stage: str,
    out: Path,
    *,
    to_steps: int | None,
    guided_steps: int | None,
    halving_steps: int | Sequence[int] | None,
    bf16: bool | None,
    batch_size: int | None,
    seed: int,
    videos: Any,
    source: str | os.PathLike | None,
    resume: bool,
    new_streams: bool,
) -> tuple[list[tuple[str, str, int]], list[int], dict[str, Any]]:
    """``distill_stage``'s (phases, training steps per phase, plan record), checked against
    ``out``: a fresh start needs a folder without a plan or phases, a resume the same plan
    and data. Nothing is written (``ivref distill`` checks this before its record of videos)."""
    seed = arguments.check_seed("seed", seed)
    config, world = teacher_cascade.cfg, distributed.current().world_size
    global_batch = config.stage(stage).train.batch_size if batch_size is None else batch_size
    uneven = distributed.uneven_batch(global_batch, world, f"batch_size={global_batch}")
    if uneven:  # each phase's trainer checks it too: too late for the plan
        raise ValueError(uneven)
    phases, lengths, record = phase_plan(config, stage, to_steps, guided_steps, halving_steps, bf16)
    record["data_digest"] = data_digest(videos)
    record["data_fit"] = None if videos is None else [videos.fit, videos.random_start]
    record["batch_size"] = global_batch
    record["seed"] = seed
    record["source"] = None if source is None else str(Path(source).resolve())
    record["teacher"] = teacher_digest(teacher_cascade.models[stage])
    record["recipe"] = recipe(config, stage)
    if (out / PLAN).is_file() and not resume:
        raise errors.CLIError(
            f"{str(out)!r} already holds a distillation; pass --resume or a new --out"
        )
    if resume:
        check_resumable(out)
    else:  # any phase folder left without its plan would be adopted unchecked (a later
        # continuation took a finished one, trained from another teacher, for its own)
        refuse_phases(out, phase_folders(out), f"a distillation whose {PLAN} is gone")
    if (out / PLAN).is_file():
        check_same_data(out, videos, new_streams)
        check_same_plan(out / PLAN, record)
        saved = read_plan(out)
        if continues(saved, record):  # its new phases start now: none may be there yet
            new = [out / f for f in record["phases"][len(saved["phases"]) :]]
            refuse_phases(out, new, "another distillation (this plan ends before them)")
    return phases, lengths, record


def _whole(sharded: torch.nn.Module, unet: configs.UNetConfig, device: torch.device) -> VideoUNet:
    """A sharded EMA's weights, whole, in a plain ``VideoUNet`` on every rank."""
    plain = VideoUNet.to_load(unet).to(device)
    sharded_state.unsharded(sharded, plain)  # loads the whole weights into ``plain``
    return plain.requires_grad_(False)


def _compiled(
    teacher: VideoUNet, compile: bool | dict[str, Any], device: str | torch.device
) -> torch.nn.Module:
    """The teacher as the objective calls it: itself, or compiled with the student's options
    (a wrapper that shares its parameters; the eager module goes on to seed the next phase)."""
    if compile is False:
        return teacher
    options = (
        compile if isinstance(compile, dict) else compiling.compile_options(torch.device(device))
    )
    return torch.compile(teacher, **options)  # type: ignore[return-value]  # an OptimizedModule


# -- the ``ivref distill`` command -------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``ivref distill``."""
    p.add_argument("--stage", help="stage to distil (e.g. base, tsr); --resume: the plan's")
    p.add_argument(
        "--from", dest="source", type=Path, help="teacher cascade folder (default: shipped)"
    )
    p.add_argument(
        "--to-steps",
        type=arguments.positive_int,
        help="student steps (default: the teacher cascade's distill.to_steps); with --resume, "
        "fewer than planned goes on",
    )
    p.add_argument("--out", type=Path, required=True, help="folder: one run folder per phase")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation")
    p.add_argument(
        "--new-streams",
        action="store_true",
        help="with --resume: new data and noise streams (to resume with another process count)",
    )
    p.add_argument("--batch-size", type=arguments.positive_int, help="default: the stage's")
    p.add_argument("--guided-steps", type=arguments.positive_int, help="training steps, phase 1")
    p.add_argument(
        "--halving-steps",
        type=step_counts,
        help="training steps per halving: one count, or one per halving (e.g. 600,1000)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for the student (default: the stage's training setting, where "
        "the device computes bf16 natively)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=run_flags.or_default(arguments.positive_int),
        help=f"steps (default: {run_flags.shown('checkpoint_every', run_flags.DISTILL)}; "
        "--resume: the distillation's own, or 'default')",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile student and teacher (CUDA graphs on a GPU); each phase compiles",
    )
    p.add_argument(
        "--seed",
        type=arguments.seed_int,
        help="data, noise and the w embedding's initial weights (default 0; --resume: the plan's)",
    )
    p.add_argument("--threads", type=arguments.positive_int, help="torch CPU threads")
    p.add_argument(
        "--fsdp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="under torchrun: shard each student, its AdamW state and EMA between processes "
        "(default: off; --resume: the distillation's own, --no-fsdp to stop sharding)",
    )
    train_videos.add_arguments(p, validation=False)  # --videos: the teacher's training data


def step_counts(value: str) -> int | list[int]:
    """argparse type: a positive integer, or positive integers separated by commas."""
    counts = [arguments.positive_int(part) for part in value.split(",")]
    return counts[0] if len(counts) == 1 else counts


def run(args: argparse.Namespace) -> int:
    """``ivref distill``: all phases of one stage, resumable; exits 128 + N on a signal.
    Under torchrun every process runs it, data-parallel (``trainer.Trainer`` with DDP, or
    with FSDP under ``--fsdp``)."""
    device = devices.parse_command_device(args.device)
    return distributed.run_in_group(device, lambda device, context: _distill(args, device, context))


def _check_out(out: Path) -> None:
    """--out is a folder of the distillation's own (checked before the teacher loads)."""
    if out.exists() and not out.is_dir():
        raise errors.CLIError(f"--out {str(out)!r} is a file; give a folder for the distillation")
    files.check_writable(out, "--out")
    if (out / trainer.LOG).exists() or (out / checkpoint.CHECKPOINTS).exists():
        raise errors.CLIError(
            f"--out {str(out)!r} holds an `ivref train` run ({trainer.LOG}, "
            f"{checkpoint.CHECKPOINTS}/): give the distillation a folder of its own (one run "
            "folder per phase is made inside it)"
        )


def _check_unnamed_teacher(out: Path, stage: str, shipped: cascade.Cascade) -> None:
    """A plan whose source is None was distilled from the shipped cascade, or from Python
    from a cascade it was not told the folder of (``distill_stage(source=None)``): the
    second resumes only with ``--from``, which the plan's long list of differences from the
    shipped stage did not say."""
    saved = read_plan(out).get("teacher")
    if saved is not None and saved != teacher_digest(shipped.models[stage]):
        raise errors.CLIError(
            f"{str(out)!r} was distilled from a teacher that is not the shipped cascade's "
            f"{stage!r}, and its plan names no folder for it (a distillation started from "
            "Python, distill.distill_stage(..., source=None)): give that cascade with --from "
            "DIR (and pass source=DIR to distill_stage next time)"
        )


def _distill(args: argparse.Namespace, device: torch.device, context: distributed.Context) -> int:
    _check_out(args.out)
    if args.resume:  # a resume needs no flags: the plan has them
        check_resumable(args.out)
        resume_arguments(args, read_plan(args.out))
    flag_notes = run_flags.settle(args, run_flags.DISTILL)  # --resume: the run's own
    if args.stage is None:
        raise errors.CLIError("--stage NAME is required (the stage to distil, e.g. base)")
    args.seed = 0 if args.seed is None else args.seed
    teacher = cascade.Cascade.from_pretrained(args.source)
    names = [s.name for s in teacher.trained_stages]
    if args.stage not in names:
        raise errors.CLIError(f"--stage {args.stage!r}: the cascade's trained stages are {names}")
    if _unet(teacher.models[args.stage]).cfg.use_guidance_embedding:
        above = Path(args.source or "").parent  # the layout export writes: DIR/distilled
        hint = f" (e.g. --from {above})" if (above / cascade.MANIFEST).is_file() else ""
        raise errors.CLIError(
            f"stage {args.stage!r} of {args.source} is already distilled (it embeds w): give "
            f"--from the undistilled cascade it was distilled from{hint}"
        )
    if args.new_streams and not args.resume:
        raise errors.CLIError("--new-streams starts new random streams for --resume; add --resume")
    if args.resume and args.source is None:  # the plan names no folder: the shipped cascade
        _check_unnamed_teacher(args.out, args.stage, teacher)
    seen = cascade.video_stages(teacher.trained_on).get(args.stage)
    if seen is not None and args.videos is None and not args.resume and context.is_main:
        print(
            f"note: stage {args.stage!r} of {args.source or 'the shipped cascade'} was trained "
            f"on the videos in {seen!r}; without --videos it is distilled on the toy world "
            f"(--videos {seen} distils it on its own data, with the --index and --fit it was "
            "trained with, which the cascade does not record)",
            file=sys.stderr,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    # every check before the lock makes --out: step counts that cannot be planned first
    phase_plan(teacher.cfg, args.stage, args.to_steps, args.guided_steps, args.halving_steps, None)
    videos, moved = train_videos.resumed(args) if args.resume else (train_videos.record(args), None)
    folder = train_videos.dataset(  # its draws are reseeded per phase by distill_stage
        videos, teacher.cfg.stage(args.stage), 0, args.decode_workers, args.prefetch,
        train_videos.known_probes(args.out, videos),
    )  # fmt: skip
    distributed.check_fsdp(args.fsdp, context, "each student")  # before anything is written
    checked_plan(  # a plan or data a resume may not change: refused before the record is
        teacher, args.stage, args.out, to_steps=args.to_steps, guided_steps=args.guided_steps,
        halving_steps=args.halving_steps, bf16=args.bf16, batch_size=args.batch_size,
        seed=args.seed, videos=folder, source=args.source, resume=args.resume,
        new_streams=args.new_streams,
    )  # fmt: skip
    with distributed.main_only(context, files.RunLock(args.out)):
        if context.is_main and videos is None and not args.resume:  # a record left by a
            (args.out / train_videos.VIDEOS).unlink(missing_ok=True)  # start that failed
        if context.is_main and videos is not None and (moved or not args.resume):
            train_videos.write(args.out, videos)  # so --resume needs no flags
            if moved:
                print(f"resume: {moved}", file=sys.stderr)
        if context.is_main:  # the next start need not probe them again
            train_videos.keep_probes(args.out, folder)
        for note in flag_notes if context.is_main else []:
            print(f"resume: override {note}", file=sys.stderr)
        if context.is_main and not args.resume:  # a resume writes them once it has gone on
            run_flags.write(args.out, args, run_flags.DISTILL)
        result = distill_stage(
            teacher, args.stage, args.out, to_steps=args.to_steps, resume=args.resume,
            device=device, batch_size=args.batch_size, guided_steps=args.guided_steps,
            halving_steps=args.halving_steps, bf16=args.bf16,
            checkpoint_every=args.checkpoint_every, seed=args.seed, compile=args.compile,
            fsdp=args.fsdp, new_streams=args.new_streams, videos=folder, source=args.source,
        )  # fmt: skip
        if context.is_main and args.resume:  # it went on: a refused resume (another process
            run_flags.write(args.out, args, run_flags.DISTILL)  # count) kept the run's flags
    if result.signal is not None:
        again = f"ivref distill --out {args.out} --resume"
        if context.world_size > 1:  # the same number of processes continues it exactly
            again = distributed.torchrun_command(
                context, f"-m ivref.cli distill --out {args.out} --resume"
            )
        raise errors.Interrupted(result.signal, f"stopped early; continue with: {again}")
    steps = result.config.stage(args.stage).sample_steps
    if not context.is_main:
        return 0
    print(
        f"distilled {args.stage} to {steps} steps in {args.out}; export it with: "
        + _export_hint(args.out, args.source),
        file=sys.stderr,
    )
    return 0


def _export_hint(out: Path, source: Path | None) -> str:
    """The ``ivref export`` that puts a finished distillation beside its teacher: into the
    teacher's ``distilled/`` folder, joining the students already there (``--base`` that
    folder, ``--force``); for the shipped teacher, into a folder of the user's."""
    if source is None:
        return f"ivref export {out} --base {cascade.shipped_dir()} --out DIR"
    students = Path(source) / cascade.DISTILLED
    if (students / cascade.MANIFEST).is_file():  # keeps the students there
        return f"ivref export {out} --base {students} --out {students} --force"
    return f"ivref export {out} --base {source} --out {students}"
