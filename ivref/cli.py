"""The ``ivref`` command: ``generate``, ``train`` and ``info``.

    ivref train --scale toy --stage base --steps 3000 --out runs/base [--resume]
    ivref generate "a red circle moving left" --out out.mp4 [--checkpoint DIR] [--seed S]
    ivref info --scale paper

Every long command shows a progress bar; ``train`` saves a checkpoint on Ctrl-C and
continues from it with ``--resume``. Bad input fails before any work, saying what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ivref import configs, video


class CLIError(ValueError):
    """Bad command-line input; printed as 'ivref: error: ...' with exit status 2."""


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one stage of a cascade preset")
    p.add_argument("--scale", choices=configs.PRESETS, default="toy")
    p.add_argument("--stage", default="base", help="stage name in the preset (e.g. base)")
    p.add_argument("--steps", type=_positive, required=True, help="train until this step")
    p.add_argument("--out", type=Path, required=True, help="run folder: log + checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--batch-size", type=_positive, help="default: the stage's TrainConfig")
    p.add_argument("--lr", type=float, help="default: the stage's TrainConfig")
    p.add_argument("--image-ratio", type=float, help="fraction of image samples (joint)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--checkpoint-every", type=_positive, default=500)
    p.add_argument("--eval-every", type=int, default=0, help="caption alignment every K steps")
    p.add_argument("--eval-steps", type=_positive, help="sampler steps for evaluation")
    p.add_argument("--eval-guidance", type=float, help="guidance w for evaluation")
    p.add_argument("--text-encoder", help="local T5 checkpoint folder (paper scale)")
    p.add_argument("--text-cache", type=Path, help="folder caching text embeddings on disk")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")

    g = sub.add_parser("generate", help="text -> video with a trained cascade")
    g.add_argument("prompts", nargs="+", help="one or more prompts")
    g.add_argument("--out", type=Path, required=True, help="output .mp4 or .gif (a grid if >1)")
    g.add_argument("--checkpoint", type=Path, help="cascade folder or a `train` run folder")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=_positive, help="sampler steps (default: each stage's)")
    g.add_argument("--guidance", type=float, help="guidance weight w (default: each stage's)")
    g.add_argument("--distilled", action="store_true", help="use distilled weights")

    e = sub.add_parser("export", help="write a `train` run's EMA weights as a cascade folder")
    e.add_argument("run", type=Path, help="an `ivref train` run folder (its checkpoint/)")
    e.add_argument("--out", type=Path, required=True, help="cascade folder to write (fp16)")

    v = sub.add_parser("evaluate", help="caption alignment of a cascade per guidance weight")
    v.add_argument("--checkpoint", type=Path, help="cascade folder or `train` run folder")
    v.add_argument("--split", default="all", help="toy captions to sample: train, heldout, all")
    v.add_argument("--repeats", type=_positive, default=1, help="samples per caption")
    v.add_argument("--guidance", type=float, nargs="+", help="weights w to sweep")
    v.add_argument("--steps", type=_positive, help="sampler steps (default: the stage's)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", type=Path, help="also write the rows to this JSON file")

    i = sub.add_parser("info", help="per-stage table of a preset: sizes and parameters")
    i.add_argument("--scale", choices=configs.PRESETS, default="toy")
    i.add_argument("--flops", action="store_true", help="also count forward GFLOPs (slower)")
    return parser


# -- train ------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> configs.CascadeConfig:
    """The preset with this command's overrides applied to the trained stage."""
    cfg = configs.preset(args.scale)
    names = [s.name for s in cfg.stages]
    if args.stage not in names:
        raise CLIError(f"unknown stage {args.stage!r} for scale {args.scale!r}; stages: {names}")
    stage = cfg.stage(args.stage)
    changes = {
        "lr": args.lr,
        "image_ratio": args.image_ratio,
        "bf16": args.bf16,
        "batch_size": args.batch_size,
    }
    train_cfg = dataclasses.replace(
        stage.train, **{k: v for k, v in changes.items() if v is not None}
    )
    stages = tuple(dataclasses.replace(s, train=train_cfg) if s is stage else s for s in cfg.stages)
    text_cfg = cfg.text
    if args.text_encoder:
        text_cfg = dataclasses.replace(text_cfg, path=args.text_encoder)
    return dataclasses.replace(cfg, text=text_cfg, stages=stages)


def cmd_train(args: argparse.Namespace) -> int:
    from ivref import checkpoint, text, train

    cfg = _train_config(args)
    ckpt = args.out / train.CHECKPOINT
    if args.resume and not (ckpt / checkpoint.CONFIG).is_file():
        raise CLIError(f"--resume: no checkpoint in {str(ckpt)!r}; drop --resume to start anew")
    if not args.resume and (ckpt / checkpoint.CONFIG).is_file():
        raise CLIError(f"{str(args.out)!r} already holds a run; pass --resume or a new --out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stage = cfg.stage(args.stage)
    evaluate = None
    if args.eval_every:
        evaluate = train.caption_evaluator(steps=args.eval_steps, guidance_w=args.eval_guidance)
    trainer = train.Trainer(
        cfg,
        stage.name,
        args.out,
        text_encoder=text.build_encoder(cfg.text, cache_dir=args.text_cache),
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        evaluate=evaluate,
        evaluate_every=args.eval_every,
    )
    if args.resume:
        print(f"resuming {stage.name} from step {trainer.resume()}", file=sys.stderr)
    trainer.fit(args.steps)
    print(f"step {trainer.step}: checkpoint and log.jsonl in {args.out}", file=sys.stderr)
    return 0


# -- generate ---------------------------------------------------------------------------


def load_cascade(path: Path | None, distilled: bool = False):
    """A Cascade from a cascade folder, a `ivref train` run folder (its EMA), or None (shipped)."""
    import inspect

    from ivref import checkpoint, train
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

    kwargs = {}
    if distilled:
        if "distilled" not in inspect.signature(Cascade.from_pretrained).parameters:
            raise CLIError("--distilled: no distilled weights yet (they come with distillation)")
        kwargs["distilled"] = True
    if path is not None and not path.is_dir():
        raise CLIError(f"--checkpoint {str(path)!r} is not a directory")
    run = None if path is None else path / train.CHECKPOINT
    if path is not None and (path / checkpoint.CONFIG).is_file():
        run = path
    if run is None or not (run / checkpoint.CONFIG).is_file():
        return Cascade.from_pretrained(path, **kwargs)
    meta = checkpoint.verify(run)
    cfg, stage = meta["config"], meta["stage"]
    if stage != cfg.stages[0].name:
        raise CLIError(f"{str(run)!r} trained stage {stage!r}; generate needs the base stage first")
    model = VideoUNet(cfg.stage(stage).unet)
    checkpoint.load_weights(run / "ema.safetensors", model)
    return Cascade(cfg, {stage: model.eval()})


def cmd_generate(args: argparse.Namespace) -> int:
    suffix = args.out.suffix.lower()
    if suffix not in video.VIDEO_SUFFIXES:
        raise CLIError(f"--out {str(args.out)!r}: suffix must be one of {video.VIDEO_SUFFIXES}")
    cascade = load_cascade(args.checkpoint, args.distilled)
    videos = cascade.generate(
        args.prompts, seed=args.seed, steps=args.steps, guidance=args.guidance, progress=True
    )
    fps = cascade.trained_stages[-1].fps
    path = video.write_video(args.out, videos.float(), fps=fps)
    print(f"wrote {path} ({tuple(videos.shape)} at {fps:g} fps)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if not (args.run / "checkpoint").is_dir() and not (args.run / "config.json").is_file():
        raise CLIError(f"{str(args.run)!r} is not an `ivref train` run folder (no checkpoint/)")
    cascade = load_cascade(args.run)
    path = cascade.save_pretrained(args.out)
    names = [s.name for s in cascade.trained_stages]
    print(f"wrote {path} (stages {names}, fp16 EMA weights)", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ivref import checkpoint, evaluate

    prompts = evaluate.split_prompts(args.split, args.repeats)
    cascade = load_cascade(args.checkpoint)
    guidances = args.guidance or [cascade.trained_stages[-1].guidance_w]
    rows = evaluate.guidance_sweep(cascade, prompts, guidances, steps=args.steps, seed=args.seed)
    print(f"caption alignment, split {args.split!r}, {len(prompts)} samples per w")
    print(evaluate.format_table(rows))
    if args.json:
        text_json = json.dumps(rows, indent=2)
        checkpoint.atomic_write(args.json, lambda tmp: Path(tmp).write_text(text_json))
    return 0


# -- info -------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ivref`` console script; returns the exit status."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = _parser().parse_args(argv)
    commands = {"train": cmd_train, "generate": cmd_generate, "export": cmd_export}
    commands["evaluate"] = cmd_evaluate
    command = {**commands, "info": cmd_info}[args.command]
    try:
        return command(args)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"ivref {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
