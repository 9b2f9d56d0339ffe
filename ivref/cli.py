"""The ``ivref`` command: ``train``, ``distill``, ``generate``, ``export``, ``evaluate``, ``info``.

    ivref train --scale toy --stage base --steps 3000 --out runs/base [--resume]
    ivref distill --stage base --from data/toy --out runs/distill-base [--resume]
    ivref generate "a red circle moving left" --out out.mp4 [--checkpoint DIR] [--stages]
    ivref export runs/tsr --base data/toy --out my-cascade
    ivref evaluate --checkpoint data/toy --repeats 2
    ivref info --scale paper

Every long command shows a progress bar; ``train`` saves a checkpoint on Ctrl-C or SIGTERM
and continues from it with ``--resume``. Bad input fails before any work, in one line that
says what is allowed; exit status 2 for bad input, 1 when the work fails, 130 or 143 after
Ctrl-C or SIGTERM (with the checkpoint saved).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

from ivref import arguments, configs, devices, distill, errors, export, train, video
from ivref.export import export_sampling as export_sampling  # re-exported: earlier code
from ivref.run_loading import load_cascade as load_cascade  # and the notebooks find them here
from ivref.run_loading import run_checkpoint as run_checkpoint
from ivref.run_loading import run_stage as run_stage

CLIError = errors.CLIError  # where earlier code found it
MAX_DISPLAY_SIZE = 4096  # --display-size: larger is a typo (100000 asked for ~30 GB of frames)
MAX_DISPLAY_BYTES = 2**31  # the upscaled frames (float32) of one written video


_seed = arguments.seed_int


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (the examples keep their lines), and each option's default
    after its help where it has one that the help does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            text
            and "default" not in text
            and not any(default is nothing for nothing in (None, False, argparse.SUPPRESS))
            and action.option_strings  # an option, not a positional
        ):
            shown = getattr(default, "name", None) if isinstance(default, Path) else None
            text += f" (default: {shown or '%(default)s'})"
        return text


def _description() -> str:
    """The module doc as plain text for ``ivref --help`` (no reST markup)."""
    return __doc__.replace("``", "")


def _parser() -> arguments.Parser:
    parser = arguments.Parser(
        prog="ivref", description=_description(), formatter_class=_HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=summary, description=summary, formatter_class=_HelpFormatter
        )

    train.add_arguments(command("train", "train one stage of a cascade preset"))
    distill.add_arguments(command("distill", "distil one stage to few sampling steps"))
    export.add_arguments(
        command("export", "write train runs' EMA weights as a cascade folder (fp16)")
    )

    g = command("generate", "text -> video with a trained cascade")
    g.add_argument("prompts", nargs="*", help="one or more prompts")
    g.add_argument(  # extend: --out a.gif --out b.mp4 writes both (the last alone was kept)
        "--out", type=Path, nargs="+", action="extend", required=True, help=".mp4 / .gif file(s)"
    )
    g.add_argument("--checkpoint", type=Path, help="cascade folder or a base-stage train run")
    g.add_argument("--seed", type=_seed, default=0, help="video i uses seed + i")
    g.add_argument(
        "--steps",
        type=arguments.steps_setting,
        metavar="N | NAME=N[,NAME=N...]",
        help="sampler steps for every stage, or per stage (default: each stage's own)",
    )
    g.add_argument(
        "--until", metavar="STAGE", help="sample the stages up to STAGE only (e.g. base)"
    )
    g.add_argument(
        "--guidance",
        type=arguments.guidance_setting,
        metavar="W | NAME=W[,NAME=W...]",
        help="guidance weight w for every stage, or per stage (default: each stage's own)",
    )
    g.add_argument("--distilled", action="store_true", help="use distilled weights")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--stages", action="store_true", help="write every stage side by side")
    g.add_argument(
        "--display-size", type=int, default=256, help="upscale (nearest) to this; 0: off"
    )
    g.add_argument("--batch-size", type=arguments.positive_int, help="prompts sampled together")
    g.add_argument("--text-encoder", help="local T5 checkpoint folder (a cascade on encoder t5)")

    v = command("evaluate", "caption alignment of a cascade per guidance weight")
    v.add_argument("--checkpoint", type=Path, help="cascade folder or base-stage train run")
    v.add_argument("--split", default="all", help="toy captions to sample: train, heldout, all")
    v.add_argument("--repeats", type=arguments.positive_int, default=1, help="samples per caption")
    v.add_argument(
        "--guidance",
        type=arguments.guidance_setting,
        nargs="+",
        metavar="W | NAME=W[,NAME=W...]",
        help="guidance settings to sweep: w for every stage, or per stage (e.g. base=0 base=1; "
        "the other stages at their own); default: each stage's own, once",
    )
    v.add_argument(
        "--steps",
        type=arguments.steps_setting,
        metavar="N | NAME=N[,NAME=N...]",
        help="sampler steps for every stage, or per stage (default: each stage's own)",
    )
    v.add_argument("--seed", type=_seed, default=0, help="video i uses seed + i")
    v.add_argument(
        "--cascade", action="store_true", help="score every stage (at its own w; --steps applies)"
    )
    v.add_argument(
        "--until", metavar="STAGE", help="sample the stages up to STAGE only (e.g. base)"
    )
    v.add_argument("--distilled", action="store_true", help="use distilled weights")
    v.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    v.add_argument(
        "--batch-size",
        type=arguments.positive_int,
        help="videos sampled together (default: the cascade's; each video is the same "
        "whatever the batch, up to float rounding)",
    )
    v.add_argument(
        "--json",
        type=Path,
        help="also write the report to this JSON file: the settings, and the sweep's rows "
        "and/or the --cascade report",
    )
    v.add_argument("--text-encoder", help="local T5 checkpoint folder (a cascade on encoder t5)")

    i = command(
        "info", "per-stage table of a preset, or of a cascade folder: sizes, parameters, sampling"
    )
    i.add_argument("--scale", choices=configs.PRESETS, help="the preset (default: toy)")
    i.add_argument(
        "--checkpoint",
        type=Path,
        help="describe this cascade folder instead: its trained stages, their steps, sampler "
        "and guidance (read from its manifest; no weights are loaded)",
    )
    i.add_argument(
        "--distilled",
        action="store_true",
        help="describe the distilled cascade (the shipped one's, or --checkpoint's)",
    )
    i.add_argument("--flops", action="store_true", help="also count forward GFLOPs (slower)")
    # each command's parser, to say an error as that command (Parsers; dict is invariant)
    parser.commands = cast("dict[str, argparse.ArgumentParser]", sub.choices)
    return parser


# -- generate ---------------------------------------------------------------------------------


def check_output(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written: suffix, folder, permissions."""
    from ivref import files

    if path.is_dir():
        raise CLIError(f"--out {str(path)!r} is a folder; give a file name such as out.mp4")
    if path.name.lower() in video.VIDEO_SUFFIXES:  # ".gif": a hidden name without a suffix
        raise CLIError(f"--out {str(path)!r} has no name before its suffix: e.g. out{path.name}")
    if path.suffix.lower() not in video.VIDEO_SUFFIXES:
        hint = (  # --out takes every word up to the next option: a prompt after it too
            "; a prompt given after --out is taken for a file: put the prompts before --out"
            if not path.suffix
            else ""
        )
        raise CLIError(f"--out {str(path)!r}: suffix must be one of {video.VIDEO_SUFFIXES}{hint}")
    files.check_writable(path, "--out")


def cmd_generate(args: argparse.Namespace) -> int:
    from ivref import cascade as cascade_lib

    if not args.prompts:  # --out takes every word up to the next option: prompts too
        taken = [str(o) for o in args.out if o.suffix.lower() not in video.VIDEO_SUFFIXES]
        raise CLIError(
            "give one or more prompts"
            + (f" (--out took {taken[0]!r}: put the prompts before --out)" if taken else "")
        )
    cascade_lib.check_prompts(args.prompts)  # all the cheap checks before loading a model
    for out in args.out:
        check_output(out)
    resolved = [os.path.realpath(out) for out in args.out]
    twice = [str(o) for o, p in zip(args.out, resolved, strict=True) if resolved.count(p) > 1]
    if twice:  # every file gets the same video: a second copy in one place is a typo
        raise CLIError(f"--out names {twice[0]!r} twice; give each file once")
    folded = [p.lower() for p in resolved]  # a.mp4 and A.mp4: one file on macOS, Windows
    clash = next((p for p in folded if folded.count(p) > 1), None)  # (lower, not casefold:
    alike = [str(o) for o, p in zip(args.out, folded, strict=True) if p == clash]  # ß is no ss)
    if alike:  # refused everywhere: where case counts, the names still only differ by it
        raise CLIError(
            f"--out names {alike[0]!r} and {alike[1]!r}, which differ only in case: one file "
            "on file systems that ignore case (macOS, Windows), so one video would overwrite "
            "the other; give names that differ in more than case"
        )
    if not 0 <= args.display_size <= MAX_DISPLAY_SIZE:
        raise CLIError(
            f"--display-size {args.display_size} must be from 0 (native size) to "
            f"{MAX_DISPLAY_SIZE} pixels"
        )
    device = devices.parse_command_device(args.device)
    whole = args.until is None  # students of the first stages suffice up to --until
    model = load_cascade(args.checkpoint, args.distilled, args.text_encoder, whole).to(device)
    model = _cut_at(model, args)
    last = model.trained_stages[-1]
    k = video.display_factor(last.height, last.width, args.display_size or 1)
    n = len(model.trained_stages) if args.stages else 1  # stage_grid: a column per stage
    rows, cols = video.grid_shape(len(args.prompts) * n, n if args.stages else None)
    size = 4 * 3 * last.num_frames * (rows * (last.height + 1) * k) * (cols * (last.width + 1) * k)
    if size > MAX_DISPLAY_BYTES:  # the frames written: checked before sampling
        fixes = ["a smaller --display-size (0: native size)"] * (k > 1) + ["fewer prompts"]
        fixes += ["no --stages"] * args.stages
        upscaled = f", upscaled {k}x (--display-size {args.display_size})," if k > 1 else ""
        raise CLIError(
            f"the {rows} x {cols} grid of {last.width} x {last.height} videos{upscaled} needs "
            f"{size / 2**30:.1f} GiB of frames (at most {MAX_DISPLAY_BYTES / 2**30:.0f}); give "
            + ", or ".join(fixes)
        )
    _note_student_steps(model, args.steps)
    result = model.generate(
        args.prompts,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        return_stages=args.stages,  # without --stages the earlier stages are not kept
        progress=True,
        batch_size=args.batch_size,
    )
    final, stages = result if args.stages else (result, [])
    frames = video.stage_grid(stages) if args.stages else video.grid(final)
    if k > 1:
        frames = video.upscale(frames, k)
    for out in args.out:
        path = video.write_video(out, frames, fps=last.fps)
        print(f"wrote {path} ({tuple(final.shape)} at {last.fps:g} fps)", file=sys.stderr)
    for name, seconds in model.timings.items():
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr)
    return 0


# -- evaluate ---------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ivref import evaluate, files

    prompts = evaluate.split_prompts(args.split, args.repeats)
    if args.json is not None:
        if args.json.is_dir():
            raise CLIError(f"--json {str(args.json)!r} is a folder; give a file name")
        files.check_writable(args.json, "--json")
    device = devices.parse_command_device(args.device)
    whole = args.until is None  # students of the first stages suffice up to --until
    model = load_cascade(args.checkpoint, args.distilled, args.text_encoder, whole).to(device)
    model = _cut_at(model, args)
    from ivref.cascade import video_stages

    on_videos = video_stages(model.trained_on)
    if on_videos:  # the scores below read the toy world's shapes, colours and motions
        print(
            f"note: stage(s) {list(on_videos)} were trained on videos ({on_videos}): caption "
            "alignment samples and scores the toy world's captions, which they may never have "
            "seen; their held-out loss (ivref train --val-index) measures them on their own data",
            file=sys.stderr,
        )
    report: dict[str, Any] = {"settings": _evaluate_settings(args, model, prompts, device)}
    sampling = dict(seed=args.seed, batch_size=args.batch_size, steps=args.steps, progress=True)
    if args.cascade:  # every stage at its own settings, sampled once
        report["cascade"] = evaluate.cascade_report(model, prompts, **sampling)
        print(evaluate.format_cascade_report(report["cascade"]))
    if args.guidance or not args.cascade:  # a sweep of w samples the cascade once per w
        guidances = args.guidance or [None]  # None: every stage at its own w
        rows = evaluate.guidance_sweep(model, prompts, guidances, **sampling)
        print(f"caption alignment, split {args.split!r}, {len(prompts)} samples per w")
        print(evaluate.format_table(rows))
        report["sweep"] = rows
    if args.json:
        files.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n", follow_links=True)
    return 0


def _note_student_steps(model: Any, steps: int | dict[str, int] | None) -> None:
    """Say where ``--steps`` samples a distilled student at other steps than it learnt: it
    does as asked, but the student was taught to sample in its own N (the one step of
    each pair its teacher took two for), so more steps need not sample better."""
    named = steps if isinstance(steps, dict) else {}
    for stage in model.trained_stages:
        asked = named.get(stage.name) or (steps if isinstance(steps, int) else None)
        student = model.models[stage.name].cfg.use_guidance_embedding
        if student and asked is not None and asked != stage.sample_steps:
            print(
                f"note: stage {stage.name!r} is a student distilled to sample in "
                f"{stage.sample_steps} steps; --steps samples it in {asked}",
                file=sys.stderr,
            )


def _evaluate_settings(
    args: argparse.Namespace, model: Any, prompts: list[str], device: Any
) -> dict[str, Any]:
    """What ``ivref evaluate --json`` ran with, so that a report says how to make it again:
    the cascade, the prompts, the seed, and every sampled stage's steps, sampler and own w
    (the steps as run: --steps where it names the stage, else the stage's own)."""
    import ivref

    named = args.steps if isinstance(args.steps, dict) else {}  # --steps NAME=N,...
    every = args.steps if isinstance(args.steps, int) else None  # --steps N
    return {
        "ivref_version": ivref.__version__,
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),  # None: shipped
        "distilled": args.distilled,
        "until": args.until,
        "split": args.split,
        "repeats": args.repeats,
        "samples": len(prompts),
        "seed": args.seed,
        "batch_size": args.batch_size,  # None: the cascade's default
        "device": str(device),
        "guidance": args.guidance,  # the sweep's settings; None: each stage's own w, once
        "stages": {
            s.name: {
                "steps": named.get(s.name) or every or s.sample_steps,
                "sampler": s.sampler,
                "guidance_w": s.guidance_w,
            }
            for s in model.trained_stages
        },
    }


def _cut_at(model: Any, args: argparse.Namespace) -> Any:
    """The cascade up to ``--until`` (the whole of it without), refusing a per-stage --steps
    or --guidance that names a stage it leaves out."""
    if args.until is None:
        return model
    trained = [s.name for s in model.trained_stages]
    model = _until(model, args.until)
    kept = [s.name for s in model.trained_stages]
    guidance = args.guidance if isinstance(args.guidance, list) else [args.guidance]
    settings = [("--guidance", "W", g) for g in guidance] + [("--steps", "N", args.steps)]
    for flag, letter, setting in settings:
        cut = (
            [n for n in setting if n in trained and n not in kept]
            if isinstance(setting, dict)
            else []
        )
        if cut:
            raise CLIError(
                f"{flag} names {cut}, which --until {args.until} leaves out (it samples "
                f"{kept}): drop {', '.join(f'{n}={letter}' for n in cut)}, or sample further"
            )
    return model


def _until(model: Any, name: str) -> Any:
    """The cascade's trained stages up to ``name``, as a cascade of their own."""
    from ivref.cascade import Cascade

    names = [s.name for s in model.trained_stages]
    if name not in names:
        raise CLIError(f"--until {name!r}: the trained stages are {names}")
    kept = {n: model.models[n] for n in names[: names.index(name) + 1]}
    trained_on = {n: d for n, d in model.trained_on.items() if n in kept}
    teachers = {n: sha for n, sha in model.teachers.items() if n in kept}
    return Cascade(
        model.cfg, kept, model.encoder, text_probe=model.text_probe, trained_on=trained_on,
        teachers=teachers,
    )  # fmt: skip


# -- info -------------------------------------------------------------------------------------


class _InfoRowParts(TypedDict):
    """The keys every ``InfoRow`` has."""

    stage: str
    kind: configs.StageKind
    size: str  # "F x W x H @ fps"
    params: int


class InfoRow(_InfoRowParts, total=False):
    """A row of ``ivref info``: a stage's name, kind, size and parameters (``info_rows``)."""

    gflops: float  # forward GFLOPs, where they were asked for


def info_rows(scale: str, flops: bool = False) -> list[InfoRow]:
    """One row per stage: name, kind, 'F x W x H @ fps', parameters (meta device, no memory)."""
    cfg = configs.preset(scale)
    return [_stage_row(cfg, s, flops) for s in cfg.stages]


def _stage_row(cfg: configs.CascadeConfig, s: configs.StageConfig, flops: bool) -> InfoRow:
    """A stage's name, kind, 'F x W x H @ fps', parameters and (``flops``) forward GFLOPs."""
    from ivref import unet3d

    row: InfoRow = {
        "stage": s.name,
        "kind": s.kind,
        "size": f"{s.num_frames} x {s.width} x {s.height} @ {s.fps:g}",
        "params": unet3d.count_parameters(s.unet),
    }
    if flops:
        length = cfg.text.max_length  # the tokens its cross-attention reads
        row["gflops"] = unet3d.count_flops(s.unet, s.num_frames, s.height, s.width, length) / 1e9
    return row


def _cascade_info(folder: Path | None, distilled: bool, flops: bool) -> int:
    """``ivref info --checkpoint DIR [--distilled]``: a cascade folder's trained stages as it
    samples them, from its manifest (the weights are neither loaded nor verified)."""
    from ivref import cascade as cascade_lib

    directory = cascade_lib.shipped_dir() if folder is None else folder
    if distilled:
        directory = directory / cascade_lib.DISTILLED
    if folder is not None and not folder.is_dir():
        raise CLIError(f"--checkpoint {str(folder)!r} is not a folder (a cascade folder)")
    read = cascade_lib.read_manifest(directory, shipped=folder is None)
    cfg = read.cfg
    print(
        f"cascade {str(directory)!r} (preset {cfg.name!r}): text encoder {cfg.text.encoder} "
        f"({cfg.text.dim}-d)" + (", distilled" if read.teachers else "")
    )
    head = f"{'stage':<6} {'kind':<5} {'F x W x H @ fps':<20} {'params':>7} {'steps':>5}"
    print(head + f" {'sampler':<10} {'guidance w':<22} trained on" + "  GFLOPs/fwd" * flops)
    for name in read.stages:
        s = cfg.stage(name)
        w = f"{s.guidance_w:g}"
        if s.oscillating_guidance:
            w += f" / {min(s.guidance_low_w, s.guidance_w):g} (oscillating)"
        if s.guidance_w_max is not None:  # a student takes the weights it learnt
            w += " (w = 0 only)" if s.guidance_w_max == 0 else f" (w <= {s.guidance_w_max:g})"
        on = read.trained_on.get(name)
        on = on.get("videos", on) if isinstance(on, dict) else on or "unrecorded"
        r = _stage_row(cfg, s, flops)
        line = f"{name:<6} {s.kind:<5} {r['size']:<20} {_human(r['params']):>7} "
        line += f"{s.sample_steps:>5} {s.sampler or cfg.diffusion.sampler:<10} {w:<22} {on}"
        print(line + (f"  {r['gflops']:>10.4g}" if flops else ""))
    untrained = [s.name for s in cfg.stages if s.name not in read.stages]
    if untrained:
        print(f"not trained in this folder: {', '.join(untrained)}")
    copies = [n for n in read.teachers if not cfg.stage(n).unet.use_guidance_embedding]
    if copies:  # --base C --out C/distilled copies C's undistilled stages beside the students
        print(f"copied from the cascade above, not distilled: {', '.join(copies)}")
    if directory.resolve().name == cascade_lib.DISTILLED:
        stale = cascade_lib.stale_students(directory.resolve().parent, read.teachers)
        if stale:
            print(
                f"stale: {', '.join(stale)} (distilled from, or copied from, weights the "
                "cascade above no longer holds: distil them again and export them here)"
            )
    return 0


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    if args.checkpoint is not None or args.distilled:
        if args.scale is not None:
            raise CLIError(
                "--scale names a preset; a cascade folder (--checkpoint, --distilled) has its "
                "own config: give one or the other"
            )
        return _cascade_info(args.checkpoint, args.distilled, args.flops)
    args.scale = args.scale or "toy"
    rows = info_rows(args.scale, args.flops)
    cfg = configs.preset(args.scale)
    print(f"preset {args.scale!r}: text encoder {cfg.text.encoder} ({cfg.text.dim}-d)")
    head = f"{'stage':<8} {'kind':<5} {'F x W x H @ fps':<24} {'params':>9}"
    print(head + ("  GFLOPs/fwd" if args.flops else ""))
    for r in rows:
        line = f"{r['stage']:<8} {r['kind']:<5} {r['size']:<24} {_human(r['params']):>9}"
        print(line + (f"  {r['gflops']:>10.4g}" if args.flops else ""))  # ci: 0.04
    total = sum(r["params"] for r in rows)
    print(f"{'total':<39} {_human(total):>9}")
    return 0


COMMANDS = {
    "train": train.run,
    "distill": distill.run,
    "generate": cmd_generate,
    "export": export.run,
    "evaluate": cmd_evaluate,
    "info": cmd_info,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ivref`` console script; returns the exit status."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # what parse_args does, with a hint added
    if extra:
        staged = args.command == "generate" and any("=" in word for word in extra)
        hint = (
            " (per-stage guidance weights are one word, joined by commas: --guidance "
            "tsr=1,base=0)" * staged
        )
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return errors.run_command(args.command, COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
