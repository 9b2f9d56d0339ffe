"""The ``ivref`` command: ``train``, ``distill``, ``generate``, ``export``, ``evaluate``, ``info``.

    ivref train --scale toy --stage base --steps 3000 --out runs/base [--resume]
    ivref distill --stage base --from data/toy --out runs/distill-base [--resume]
    ivref generate "a red circle moving left" --out out.mp4 [--checkpoint DIR] [--stages]
    ivref export runs/tsr --base data/toy --out my-cascade
    ivref evaluate --checkpoint data/toy --repeats 2
    ivref info --scale paper

Every long command shows a progress bar; ``train`` saves a checkpoint on Ctrl-C or SIGTERM
and continues from it with ``--resume``. Bad input fails before any work, in one line that
says what is allowed (errors.py lists the exit statuses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivref import arguments, configs, distill, errors, train, video

CLIError = errors.CLIError  # where earlier code found it
MAX_DISPLAY_SIZE = 4096  # --display-size: larger is a typo (100000 asked for ~30 GB of frames)


_seed, _steps = arguments.seed_int, arguments.sampler_steps


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train.add_arguments(sub.add_parser("train", help="train one stage of a cascade preset"))
    distill.add_arguments(sub.add_parser("distill", help="distil one stage to few sampling steps"))

    g = sub.add_parser("generate", help="text -> video with a trained cascade")
    g.add_argument("prompts", nargs="+", help="one or more prompts")
    g.add_argument("--out", type=Path, nargs="+", required=True, help=".mp4 / .gif file(s)")
    g.add_argument("--checkpoint", type=Path, help="cascade folder or a base-stage train run")
    g.add_argument("--seed", type=_seed, default=0, help="video i uses seed + i")
    g.add_argument("--steps", type=_steps, help="sampler steps (default: each stage's)")
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

    e = sub.add_parser("export", help="write train runs' EMA weights as a cascade folder (fp16)")
    e.add_argument("runs", type=Path, nargs="+", help="`ivref train` run folders")
    e.add_argument("--out", type=Path, required=True, help="cascade folder to write")
    e.add_argument("--base", type=Path, help="a cascade folder whose other stages to keep")
    e.add_argument("--force", action="store_true", help="replace a cascade already in --out")
    e.add_argument(
        "--sampling",
        choices=("run", "base", "preset"),
        default="run",
        help="a train run's sampling settings (steps, guidance, thresholding, ...): the run's "
        "own (default), the --base cascade's for that stage, or its preset's as of today",
    )

    v = sub.add_parser("evaluate", help="caption alignment of a cascade per guidance weight")
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
    v.add_argument("--steps", type=_steps, help="sampler steps (default: the stage's)")
    v.add_argument("--seed", type=_seed, default=0)
    v.add_argument("--cascade", action="store_true", help="score every stage at its own settings")
    v.add_argument(
        "--until", metavar="STAGE", help="sample the stages up to STAGE only (e.g. base)"
    )
    v.add_argument("--distilled", action="store_true", help="use distilled weights")
    v.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    v.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    v.add_argument("--text-encoder", help="local T5 checkpoint folder (a cascade on encoder t5)")

    i = sub.add_parser("info", help="per-stage table of a preset: sizes and parameters")
    i.add_argument("--scale", choices=configs.PRESETS, default="toy")
    i.add_argument("--flops", action="store_true", help="also count forward GFLOPs (slower)")
    return parser


# -- loading a cascade from what the user points at -------------------------------------------


def run_stage(path: Path):
    """(config, stage name, EMA model) from a train run folder or one checkpoint folder.

    A run's newest checkpoint that verifies is used; a damaged newer one is reported.
    """
    return run_checkpoint(path)[:3]


def run_checkpoint(path: Path):
    """``run_stage``'s (config, stage, EMA model) and the checkpoint's ``extra`` (its
    ``text_probe``, written by the Trainer)."""
    from ivref import checkpoint

    if not path.is_dir():
        raise CLIError(f"{str(path)!r} is not an `ivref train` run folder (no such folder)")
    if (path / distill.PLAN).is_file():  # a distillation: its last phase holds the student
        path = distill.final_phase(path)
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
    if not found:
        raise CLIError(f"{str(path)!r} is not an `ivref train` run folder (no checkpoints/)")
    for attempt in range(3):  # a run still training may prune the checkpoint being read
        try:
            return _newest_ema(found)
        except checkpoint.CheckpointError:
            if single or attempt == 2 or all(p.is_dir() for p in found):
                raise
            found = checkpoint.run_checkpoints(path) or found  # pruned meanwhile: list again
    raise AssertionError("unreachable")


def _newest_ema(found: list[Path]) -> tuple[configs.CascadeConfig, str, Any, dict[str, Any]]:
    """(config, stage, EMA model, extra) of the newest checkpoint in ``found`` that verifies."""
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
    model = VideoUNet(cfg.stage(stage).unet)
    checkpoint.load_weights(ckpt / "ema.safetensors", model)
    return cfg, stage, model.eval(), meta.get("extra", {})


def load_cascade(path: Path | None, distilled: bool = False, text_encoder: str | None = None):
    """A Cascade from a cascade folder, a base-stage train run (its EMA), or None (shipped).

    ``text_encoder`` is the local folder of a T5 checkpoint for a cascade on encoder "t5".
    """
    model = _load_cascade(path, distilled)
    if text_encoder is not None:
        if model.cfg.text.encoder != "t5":
            raise CLIError(
                f"--text-encoder is for encoder 't5'; this cascade's text encoder is "
                f"{model.cfg.text.encoder!r} (built in, no path needed): drop --text-encoder"
            )
        text_cfg = dataclasses.replace(model.cfg.text, path=text_encoder)
        model.cfg = dataclasses.replace(model.cfg, text=text_cfg)
    return model


def _load_cascade(path: Path | None, distilled: bool):
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
        return cascade.Cascade.from_pretrained(path, variant="distilled")
    if path is None or (path / cascade.MANIFEST).is_file():
        return cascade.Cascade.from_pretrained(path)
    cfg, stage, model, extra = run_checkpoint(path)
    if stage != cfg.stages[0].name:
        raise CLIError(
            f"{str(path)!r} trains stage {stage!r}, which needs the stages before it: "
            f"`ivref export {path} --base CASCADE --out DIR`, then --checkpoint DIR"
        )
    return cascade.Cascade(cfg, {stage: model}, text_probe=_probe(extra, path))


# -- generate ---------------------------------------------------------------------------------


def check_output(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written: suffix, folder, permissions."""
    from ivref import files

    if path.is_dir():
        raise CLIError(f"--out {str(path)!r} is a folder; give a file name such as out.mp4")
    if path.suffix.lower() not in video.VIDEO_SUFFIXES:
        raise CLIError(f"--out {str(path)!r}: suffix must be one of {video.VIDEO_SUFFIXES}")
    files.check_writable(path, "--out")


def cmd_generate(args: argparse.Namespace) -> int:
    from ivref import cascade as cascade_lib

    cascade_lib.check_prompts(args.prompts)  # all the cheap checks before loading a model
    for out in args.out:
        check_output(out)
    if not 0 <= args.display_size <= MAX_DISPLAY_SIZE:
        raise CLIError(
            f"--display-size {args.display_size} must be from 0 (native size) to "
            f"{MAX_DISPLAY_SIZE} pixels"
        )
    device = cascade_lib.parse_device(args.device)
    model = load_cascade(args.checkpoint, args.distilled, args.text_encoder).to(device)
    final, stages = model.generate(
        args.prompts,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        return_stages=True,
        progress=True,
        batch_size=args.batch_size,
    )
    last = model.trained_stages[-1]
    frames = video.stage_grid(stages) if args.stages else video.grid(final)
    if args.display_size:
        k = video.display_factor(last.height, last.width, args.display_size)
        frames = video.upscale(frames, k)
    for out in args.out:
        path = video.write_video(out, frames, fps=last.fps)
        print(f"wrote {path} ({tuple(final.shape)} at {last.fps:g} fps)", file=sys.stderr)
    for name, seconds in model.timings.items():
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr)
    return 0


# -- export -----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from ivref import cascade as cascade_lib
    from ivref import files

    for run in args.runs:  # the cheap checks first: inputs, then the output
        if not run.is_dir():
            raise CLIError(f"{str(run)!r} is not an `ivref train` run folder (no such folder)")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {str(args.out)!r} is a file; give a folder for the cascade")
    if (args.out / cascade_lib.MANIFEST).exists() and not args.force:
        raise CLIError(
            f"--out {str(args.out)!r} already holds a cascade ({cascade_lib.MANIFEST}); pass "
            "--force to replace it, or choose another folder"
        )
    files.check_writable(args.out, "--out")
    models, cfg, base_cfg, probes = {}, None, None, {}
    if args.base is not None:
        base = cascade_lib.Cascade.from_pretrained(args.base)
        cfg, models, base_cfg = base.cfg, dict(base.models.items()), base.cfg
        probes[f"--base {str(args.base)!r}"] = base.text_probe
    elif args.sampling == "base":
        raise CLIError("--sampling base takes the settings of the --base cascade: give --base")
    for run in args.runs:
        run_cfg, stage, model, extra = run_checkpoint(run)
        probes[repr(str(run))] = _probe(extra, run)
        if cfg is None:
            cfg = run_cfg
        for part in ("text", "diffusion"):
            if getattr(run_cfg, part) != getattr(cfg, part):
                raise CLIError(
                    f"{str(run)!r} was trained with another {part} config than the cascade it joins"
                )
        stage_cfg = export_sampling(run, run_cfg, stage, base_cfg, args.sampling)
        stages = tuple(stage_cfg if s.name == stage else s for s in cfg.stages)
        cfg, models[stage] = dataclasses.replace(cfg, stages=stages), model
    probe = _same_text(probes)
    joined = cascade_lib.Cascade(cfg, models, text_probe=probe)
    folder = joined.save_pretrained(args.out, overwrite=args.force)
    names = [s.name for s in cfg.stages if s.name in models]
    print(f"wrote {folder} (stages {names}, fp16 EMA weights)", file=sys.stderr)
    return 0


def _probe(extra: dict[str, Any], run: Path) -> list[float] | None:
    """A checkpoint's recorded ``text.probe`` (None if it has none: saved before it was)."""
    from ivref import text

    probe = extra.get("text_probe")
    if probe is not None and not text.is_probe(probe):
        raise CLIError(f"{str(run)!r}: its checkpoint's text_probe {probe!r} is damaged")
    return probe


def _same_text(probes: dict[str, list[float] | None]) -> list[float] | None:
    """The one text probe of every part of an export; parts trained with different text
    encoders are refused (their stages would each get text the others never saw)."""
    from ivref import text

    known = {where: p for where, p in probes.items() if p is not None}
    if not known:
        return None
    for where in (w for w, p in probes.items() if p is None):
        print(
            f"note: {where} records no text probe (saved before ivref recorded one, or its "
            "encoder could not encode the probe prompt): nothing checks that it was trained "
            "with the same text encoder as the rest",
            file=sys.stderr,
        )
    (first, probe), *rest = known.items()
    for where, other in rest:
        if text.probe_distance(probe, other) > text.PROBE_TOLERANCE:
            raise CLIError(
                f"{where} was trained with another text encoder than {first} (their text "
                "probes differ): a cascade's stages must share one encoder"
            )
    return probe


def export_sampling(run: Path, run_cfg, stage: str, base_cfg, source: str):
    """The stage config a train run exports with: its sampling settings from ``source``.

    A run keeps the sampling settings of the preset it started from; a preset or a --base
    cascade tuned since then differs silently. Every difference is reported (stderr), naming
    the value kept. A distilled student keeps its own (its steps and sampler are its training).
    """
    own = run_cfg.stage(stage)
    if own.guidance_w_max is not None:  # a distilled student
        return own
    preset = configs.preset(run_cfg.name) if run_cfg.name in configs.PRESETS else None
    others = {
        label: cfg.stage(stage)
        for label, cfg in (("base", base_cfg), ("preset", preset))
        if cfg is not None and stage in {s.name for s in cfg.stages}
    }
    if source != "run" and source not in others:
        where = "the --base cascade" if source == "base" else f"preset {run_cfg.name!r}"
        raise CLIError(f"--sampling {source}: {where} has no stage {stage!r} to take them from")
    chosen = own if source == "run" else configs.with_sampling(own, others[source])
    for label, other in others.items():
        if label == source:
            continue
        diff = configs.sampling_differences(chosen, other)
        if diff:
            fields = ", ".join(
                f"{f} {mine!r} (vs {theirs!r})" for f, (mine, theirs) in diff.items()
            )
            print(
                f"note: {str(run)!r} exports stage {stage!r} with sampling settings that differ "
                f"from the {label}'s: {fields}; --sampling {label} takes the {label}'s",
                file=sys.stderr,
            )
    return chosen


# -- evaluate ---------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ivref import cascade as cascade_lib
    from ivref import evaluate, files

    prompts = evaluate.split_prompts(args.split, args.repeats)
    if args.json is not None:
        if args.json.is_dir():
            raise CLIError(f"--json {str(args.json)!r} is a folder; give a file name")
        files.check_writable(args.json, "--json")
    device = cascade_lib.parse_device(args.device)
    model = load_cascade(args.checkpoint, args.distilled, args.text_encoder).to(device)
    if args.until is not None:
        model = _until(model, args.until)
    report: dict | list = {}
    if args.cascade:  # every stage at its own settings, sampled once
        report = {"cascade": evaluate.cascade_report(model, prompts, seed=args.seed)}
        print(evaluate.format_cascade_report(report["cascade"]))
    if args.guidance or not args.cascade:  # a sweep of w samples the cascade once per w
        guidances = args.guidance or [None]  # None: every stage at its own w
        rows = evaluate.guidance_sweep(model, prompts, guidances, steps=args.steps, seed=args.seed)
        print(f"caption alignment, split {args.split!r}, {len(prompts)} samples per w")
        print(evaluate.format_table(rows))
        report = {"sweep": rows} | report if args.cascade else rows
    if args.json:
        files.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def _until(model: Any, name: str) -> Any:
    """The cascade's trained stages up to ``name``, as a cascade of their own."""
    from ivref.cascade import Cascade

    names = [s.name for s in model.trained_stages]
    if name not in names:
        raise CLIError(f"--until {name!r}: the trained stages are {names}")
    kept = {n: model.models[n] for n in names[: names.index(name) + 1]}
    return Cascade(model.cfg, kept, model.encoder, text_probe=model.text_probe)


# -- info -------------------------------------------------------------------------------------


def info_rows(scale: str, flops: bool = False) -> list[dict[str, object]]:
    """One row per stage: name, kind, 'F x W x H @ fps', parameters (meta device, no memory)."""
    from ivref import unet3d

    cfg = configs.preset(scale)
    rows = []
    for s in cfg.stages:
        row = {
            "stage": s.name,
            "kind": s.kind,
            "size": f"{s.num_frames} x {s.width} x {s.height} @ {s.fps:g}",
            "params": unet3d.count_parameters(s.unet),
        }
        if flops:
            count = unet3d.count_flops(s.unet, s.num_frames, s.height, s.width)
            row["gflops"] = count / 1e9
        rows.append(row)
    return rows


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    rows = info_rows(args.scale, args.flops)
    cfg = configs.preset(args.scale)
    print(f"preset {args.scale!r}: text encoder {cfg.text.encoder} ({cfg.text.dim}-d)")
    head = f"{'stage':<8} {'kind':<5} {'F x W x H @ fps':<24} {'params':>9}"
    print(head + ("  GFLOPs/fwd" if args.flops else ""))
    for r in rows:
        line = f"{r['stage']:<8} {r['kind']:<5} {r['size']:<24} {_human(r['params']):>9}"
        print(line + (f"  {r['gflops']:>10.1f}" if args.flops else ""))
    total = sum(r["params"] for r in rows)
    print(f"{'total':<39} {_human(total):>9}")
    return 0


COMMANDS = {
    "train": train.run,
    "distill": distill.run,
    "generate": cmd_generate,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
    "info": cmd_info,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ivref`` console script; returns the exit status."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = _parser().parse_args(argv)
    return errors.run_command(args.command, COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
