"""The base stage's guidance weight against fine detail and caption alignment, per stage.

    python benchmarks/guidance_detail.py --json docs/bench/guidance_detail.json  # shipped toy
    python benchmarks/guidance_detail.py --scale ci --captions 2 --weights 1 0   # random, CI

Guidance hardens edges [CFG]; in the two-level toy world that shows as more fine detail
than the renders have. For each base weight w (the other stages at their own), the cascade
samples ``--captions`` captions spread over the vocabulary (``evaluate.spread_prompts``),
video i from seed ``seed + i``, so every w starts from the same noise. Per stage it records
the mean |Laplacian| of the samples over that of ground-truth renders of the same captions
at the stage's size (``metrics.laplacian_energy``; 100%: as much detail as the renders), and
the caption alignment (color, shape, motion) of the stage's videos.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ivref import cascade as cascade_lib
from ivref import configs, devices, evaluate, metrics
from ivref.unet3d import VideoUNet


@torch.no_grad()
def measure(
    model: cascade_lib.Cascade, prompts: list[str], weights: list[float], seed: int
) -> list[dict]:
    """One row per base weight: per stage, detail / renders and caption alignment."""
    stages = model.trained_stages
    renders = {s.name: evaluate.render_eval_clips(s, prompts, seed) for s in stages}
    energy = {name: float(metrics.laplacian_energy(v).mean()) for name, v in renders.items()}
    rows = []
    for w in weights:
        _, per_stage = model.generate(
            prompts, seed=seed, guidance={stages[0].name: w}, return_stages=True
        )
        row: dict = {"base_w": w, "stages": {}}
        for stage, videos in zip(stages, per_stage, strict=True):
            scores = metrics.caption_alignment(videos, prompts)
            row["stages"][stage.name] = {
                "size": [stage.num_frames, stage.height, stage.width],
                "detail_vs_renders": float(metrics.laplacian_energy(videos).mean())
                / energy[stage.name],
                **{key: float(scores[key]) for key in evaluate.ATTRIBUTES},
            }
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per base w, detail / renders of each stage, and the final alignment."""
    names = list(rows[0]["stages"])
    head = "| base w | " + " | ".join(f"{n} detail" for n in names) + " | final alignment |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for row in rows:
        cells = [f"{100 * row['stages'][n]['detail_vs_renders']:.0f}%" for n in names]
        last = row["stages"][names[-1]]
        aligned = " / ".join(f"{100 * last[a]:.0f}%" for a in evaluate.ATTRIBUTES)
        lines.append(f"| {row['base_w']:g} | " + " | ".join(cells) + f" | {aligned} |")
    return "\n".join(lines)


def random_ci_cascade() -> cascade_lib.Cascade:
    """The ci cascade with seeded random weights (CI runs the script at this size)."""
    cfg = configs.preset("ci")
    torch.manual_seed(0)
    return cascade_lib.Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="cascade folder (default: the shipped one)")
    p.add_argument("--scale", choices=("toy", "ci"), default="toy", help="ci: random weights")
    p.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0])
    p.add_argument("--captions", type=int, default=16, help="captions spread over the words")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    if args.captions < 1 or any(w < 0 for w in args.weights):
        p.error("--captions must be >= 1 and every --weights value >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale == "ci":
        model = random_ci_cascade()
    else:
        model = cascade_lib.Cascade.from_pretrained(args.checkpoint)
    prompts = evaluate.spread_prompts(args.captions) or evaluate.split_prompts("all")
    rows = measure(model, prompts, args.weights, args.seed)
    result = {
        "captions": prompts,
        "seed": args.seed,
        "cascade": str(args.checkpoint or "shipped") if args.scale == "toy" else "ci, random",
        "other_stages": {
            s.name: {"guidance_w": s.guidance_w, "steps": s.sample_steps, "sampler": s.sampler}
            for s in model.trained_stages[1:]
        },
        "rows": rows,
        "machine": {
            "device": "cpu",
            "device_name": devices.device_name(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
