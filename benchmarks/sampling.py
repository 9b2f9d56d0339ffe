"""Prompts through the cascade, per stage: wall time and model evaluations, teacher vs distilled.

    python benchmarks/sampling.py                       # the shipped toy cascade (+ distilled)
    python benchmarks/sampling.py --prompt P1 P2 P3 P4  # several prompts in one generate call
    python benchmarks/sampling.py --checkpoint DIR --repeats 5 --json out.json
    python benchmarks/sampling.py --scale ci            # seeded random weights, for CI

The undistilled cascade (each stage's default steps and guidance, two U-Net passes per
guided step) and its distilled variant (8 steps per stage, one pass each) [IV §2.7] sample
the same prompts with the same seed, in one ``generate`` call (as ``make demo`` does with
its four), interleaved, after a warm-up run; the medians over ``--repeats`` are reported per
stage with the number of U-Net evaluations per video (a guided step counts two), and the
teacher / distilled ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ivref import cascade as cascade_lib
from ivref import configs, devices


def count_evaluations(model: cascade_lib.Cascade) -> dict[str, int]:
    """Attach counters: U-Net evaluations (batch rows) per stage, reset by the caller."""
    counts = {name: 0 for name in model.models}

    def hook(name):
        def pre(module, args, kwargs):
            counts[name] += int(args[0].shape[0])

        return pre

    for name, unet in model.models.items():
        unet.register_forward_pre_hook(hook(name), with_kwargs=True)
    return counts


def run_once(model, counts, prompts, seed):
    """One generate: per-stage seconds and evaluations per video."""
    for key in counts:
        counts[key] = 0
    start = time.perf_counter()
    model.generate(prompts, seed=seed)
    total = time.perf_counter() - start
    evals = {name: n // len(prompts) for name, n in counts.items()}  # per video
    return {"total_s": total, "stages_s": dict(model.timings), "evals": evals}


def measure(
    models: dict[str, cascade_lib.Cascade], prompts: list[str], repeats: int, seed: int
) -> dict:
    """Interleaved repeats after one warm-up of each; medians per cascade and stage."""
    counters = {k: count_evaluations(m) for k, m in models.items()}
    for key, model in models.items():
        run_once(model, counters[key], prompts, seed)  # warm-up: caches, allocator, threads
    runs = {k: [] for k in models}
    for _ in range(repeats):
        for key, model in models.items():
            runs[key].append(run_once(model, counters[key], prompts, seed))
    result = {}
    for key, rows in runs.items():
        model = models[key]
        result[key] = {
            "total_s": statistics.median(r["total_s"] for r in rows),
            "stages": {
                s.name: {
                    "seconds": statistics.median(r["stages_s"][s.name] for r in rows),
                    "evaluations": rows[-1]["evals"][s.name],
                    "steps": s.sample_steps,
                    "guidance_w": s.guidance_w,
                    "distilled": model.models[s.name].cfg.use_guidance_embedding,
                }
                for s in model.trained_stages
            },
        }
    if len(models) == 2:
        teacher, student = result["teacher"], result["distilled"]
        result["ratio_total"] = teacher["total_s"] / student["total_s"]
        teacher_evals = sum(s["evaluations"] for s in teacher["stages"].values())
        student_evals = sum(s["evaluations"] for s in student["stages"].values())
        result["ratio_evaluations"] = teacher_evals / student_evals
    return result


def random_ci_cascades() -> dict[str, cascade_lib.Cascade]:
    """The ci cascade with seeded random weights, and a 'distilled' copy (w-embedding, 4 steps)."""
    from ivref import distill
    from ivref.unet3d import VideoUNet

    cfg = configs.preset("ci")
    torch.manual_seed(0)
    teacher = cascade_lib.Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages})
    student_cfg, models = cfg, {}
    for s in cfg.stages:
        student_cfg = distill.student_config(student_cfg, s.name, cfg.distill.to_steps)
        models[s.name] = distill.with_guidance_embedding(teacher.models[s.name]).eval()
    return {"teacher": teacher, "distilled": cascade_lib.Cascade(student_cfg, models)}


def table(result: dict) -> str:
    """Markdown table: per stage, seconds and evaluations, teacher vs distilled."""
    keys = [k for k in ("teacher", "distilled") if k in result]
    head = "| stage | " + " | ".join(f"{k} s | {k} evals" for k in keys) + " |"
    lines = [head, "|---" * (1 + 2 * len(keys)) + "|"]
    for name in result[keys[0]]["stages"]:
        cells = []
        for k in keys:
            row = result[k]["stages"][name]
            cells += [f"{row['seconds']:.2f}", str(row["evaluations"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = []
    for k in keys:
        evals = sum(row["evaluations"] for row in result[k]["stages"].values())
        totals += [f"{result[k]['total_s']:.2f}", str(evals)]
    lines.append("| total | " + " | ".join(totals) + " |")
    if "ratio_total" in result:
        lines.append(
            f"\nteacher / distilled: {result['ratio_total']:.1f}x wall clock, "
            f"{result['ratio_evaluations']:.1f}x U-Net evaluations"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="cascade folder (default: the shipped one)")
    p.add_argument("--scale", choices=("toy", "ci"), default="toy", help="ci: random weights")
    p.add_argument("--prompt", nargs="+", default=["a red circle moving left"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = cascade_lib.parse_device(args.device)
    if args.scale == "ci":
        models = random_ci_cascades()
    else:
        models = {"teacher": cascade_lib.Cascade.from_pretrained(args.checkpoint)}
        folder = cascade_lib.shipped_dir() if args.checkpoint is None else args.checkpoint
        if (folder / cascade_lib.DISTILLED / cascade_lib.MANIFEST).is_file():
            models["distilled"] = cascade_lib.Cascade.from_pretrained(
                args.checkpoint, variant="distilled"
            )
        else:
            print(f"no distilled cascade in {folder}: timing the teacher only", file=sys.stderr)
    models = {k: m.to(device) for k, m in models.items()}
    result = measure(models, args.prompt, args.repeats, args.seed)
    result["prompts"] = args.prompt
    result["machine"] = {
        "device": str(device),
        "device_name": devices.device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
