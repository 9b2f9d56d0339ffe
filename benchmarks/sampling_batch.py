"""Many prompts through the cascade at several batch sizes: wall time and time in the kernel.

    python benchmarks/sampling_batch.py --distilled --prompts 16 --batch-sizes 16 4 2
    python benchmarks/sampling_batch.py --scale ci --prompts 4 --batch-sizes 4 1   # for CI

``Cascade.generate(prompts, batch_size=b)`` samples ``b`` prompts at a time; every video is
the same whatever ``b`` (up to float rounding). On the CPU a large batch at 64 x 64 makes
activations of hundreds of MiB: each one is fresh memory from the operating system, which
the kernel maps and zeroes page by page, then takes back when the tensor is freed. The
script times one ``generate`` of all ``--prompts`` per batch size, interleaved over
``--repeats`` rounds after a warm-up, and reports the medians of wall time and of the
process's kernel (system) time (``resource.getrusage``), with each batch size's wall-time
ratio to the first one. Run it once with ``THP_MEM_ALLOC_ENABLE=1`` in the environment and
once without to see what transparent huge pages change (torch reads it at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from ivref import cascade as cascade_lib
from ivref import configs, data, devices


def run_once(model: cascade_lib.Cascade, prompts: list[str], batch_size: int) -> dict:
    """One generate of ``prompts``: wall, user and kernel seconds, minor page faults."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    model.generate(prompts, seed=0, batch_size=batch_size)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "kernel_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }


def measure(model: cascade_lib.Cascade, prompts: list[str], sizes: list[int], repeats: int):
    """Interleaved repeats after one warm-up per batch size, each round starting one size
    later than the last (so no size always follows the same one); medians per batch size."""
    for b in sizes:
        run_once(model, prompts[:b], b)  # warm-up: one batch of this size
    runs: dict[int, list[dict]] = {b: [] for b in sizes}
    for round_ in range(repeats):
        shift = round_ % len(sizes)
        for b in sizes[shift:] + sizes[:shift]:
            runs[b].append(run_once(model, prompts, b))
    rows = {
        b: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for b, rs in runs.items()
    }
    first = rows[sizes[0]]["wall_s"]
    for row in rows.values():
        row["speed_vs_first"] = first / row["wall_s"]
    return rows


def random_ci_cascade() -> cascade_lib.Cascade:
    """The ci cascade with seeded random weights (timing only: the videos mean nothing)."""
    from ivref.unet3d import VideoUNet

    cfg = configs.preset("ci")
    torch.manual_seed(0)
    return cascade_lib.Cascade(cfg, {s.name: VideoUNet(s.unet).eval() for s in cfg.stages})


def table(rows: dict, prompts: int) -> str:
    """Markdown table: per batch size, wall and kernel seconds and the speed ratio."""
    lines = [
        f"| batch size | wall s ({prompts} prompts) | kernel s | minor page faults | "
        "speed vs the first |",
        "|---|---|---|---|---|",
    ]
    for b, row in rows.items():
        lines.append(
            f"| {b} | {row['wall_s']:.1f} | {row['kernel_s']:.1f} | "
            f"{row['minor_faults'] / 1e6:.1f}M | {row['speed_vs_first']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="cascade folder (default: the shipped one)")
    p.add_argument("--distilled", action="store_true", help="the distilled variant")
    p.add_argument("--scale", choices=("toy", "ci"), default="toy", help="ci: random weights")
    p.add_argument("--prompts", type=int, default=16, help="prompts per generate call")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 4])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    if args.prompts < 1 or args.repeats < 1 or min(args.batch_sizes) < 1:
        p.error("--prompts, --repeats and every --batch-sizes value must be at least 1")
    if max(args.batch_sizes) > args.prompts:
        p.error(f"--batch-sizes {max(args.batch_sizes)} is more than --prompts {args.prompts}")
    if len(set(args.batch_sizes)) < len(args.batch_sizes):
        p.error(f"--batch-sizes {args.batch_sizes} names a size twice")
    if args.scale == "ci" and (args.checkpoint or args.distilled):
        p.error("--scale ci samples random weights: it takes no --checkpoint or --distilled")
    if args.scale == "ci":
        model = random_ci_cascade()
    else:
        variant = "distilled" if args.distilled else None
        model = cascade_lib.Cascade.from_pretrained(args.checkpoint, variant=variant)
    prompts = [data.CAPTIONS[i % len(data.CAPTIONS)] for i in range(args.prompts)]
    rows = measure(model, prompts, args.batch_sizes, args.repeats)
    result = {
        "prompts": args.prompts,
        "device_name": devices.device_name("cpu"),
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "threads": torch.get_num_threads(),
        "default_batch_size": model.default_batch_size(),
        "rows": {str(b): row for b, row in rows.items()},
    }
    print(table(rows, args.prompts))
    print(f"default_batch_size() here: {result['default_batch_size']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
