"""One process, N data-parallel processes (DDP) and N sharded ones (FSDP): the same training
run, memory per process and time per step, side by side.

    python benchmarks/data_parallel.py --json docs/bench/data_parallel.json   # 45M, 2 processes
    python benchmarks/data_parallel.py --size toy-base                        # the toy base
    python benchmarks/data_parallel.py --device cuda --processes 8            # 8 GPUs
    python benchmarks/data_parallel.py --tiny                                 # seconds, for CI

Each mode is one launch of this script's worker (``torchrun --nproc_per_node=N`` for DDP and
FSDP): ``ivref.train.Trainer`` on the toy base stage, its U-Net replaced by the chosen size,
the same global batch, a seeded random text encoder in place of MiniLM. After warm-up steps
the timed steps' median is reported. Peak memory per process: ``ru_maxrss`` above its level
just before the trainer is built (CPU), or ``torch.cuda.max_memory_allocated`` (GPU); the
largest over the processes. Also: the parameters each process holds (FSDP: its shards).
On a CPU the single process gets all N threads and each of the N processes one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ivref import configs, distributed, train

MODES = ("one", "ddp", "fsdp")
SIZES = ("45m", "toy-base")


def stage_config(size: str, tiny: bool) -> configs.CascadeConfig:
    """The toy preset (the ci preset with --tiny) whose base U-Net has the chosen size."""
    if tiny:
        return configs.preset("ci")
    cfg = configs.preset("toy")
    base = cfg.stage("base")
    unet = base.unet
    if size == "45m":  # the 45M U-Net of unet_step.py: width 96, two ResBlocks a level
        unet = dataclasses.replace(
            unet, base_channels=96, num_res_blocks=2, spatial_attention=(False, True, True)
        )
    stages = tuple(dataclasses.replace(s, unet=unet) if s.name == "base" else s for s in cfg.stages)
    return dataclasses.replace(cfg, stages=stages)


def held_parameters(model: torch.nn.Module) -> int:
    """Parameters this process stores (a sharded parameter counts its local shard)."""
    return sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())


def worker(args: argparse.Namespace) -> None:
    """One process of one mode: train ``--steps`` steps, rank 0 writes the results."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import RandomTextEncoder

    device = distributed.init_from_env(torch.device(args.device))
    context = distributed.current()
    cfg = stage_config(args.size, args.tiny)
    encoder = RandomTextEncoder(cfg.text.dim, cfg.text.max_length)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as out:
        trainer = train.Trainer(
            cfg, "base", out, text_encoder=encoder, batch_size=args.batch, device=device,
            progress=False, fsdp=args.worker == "fsdp",
        )  # fmt: skip
        times = []
        for i in range(args.warmup + args.steps):
            distributed.barrier(context)
            start = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # ru_maxrss is in KiB on Linux
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) * 1024
    mine = {"step_s": statistics.median(times), "peak_bytes": peak}
    mine["held_params"] = held_parameters(trainer.model)
    ranks = distributed.gather(mine, context)
    if context.is_main:
        result = {
            "mode": args.worker,
            "processes": context.world_size,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "step_ms": 1000 * max(r["step_s"] for r in ranks),
            "peak_mib_per_process": max(r["peak_bytes"] for r in ranks) / 2**20,
            "held_params_per_process": max(r["held_params"] for r in ranks),
            "threads_per_process": torch.get_num_threads(),
        }
        Path(args.result).write_text(json.dumps(result))
    del trainer  # collected before the group goes (distributed.shutdown)
    distributed.shutdown()


def launch(mode: str, args: argparse.Namespace, result: Path) -> dict:
    """Run one mode in fresh processes; returns rank 0's results."""
    cores = args.processes  # the same cores for every mode
    script = [str(Path(__file__).resolve()), "--worker", mode, "--result", str(result)]
    script += ["--size", args.size, "--batch", str(args.batch), "--device", args.device]
    script += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    script += ["--tiny"] if args.tiny else []
    env = os.environ.copy()
    if mode == "one":
        command = [sys.executable, *script]
        env["OMP_NUM_THREADS"] = str(cores if args.device == "cpu" else 1)
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={args.processes}", *script]
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="45m")
    p.add_argument("--processes", type=int, default=2, help="N for DDP and FSDP")
    p.add_argument("--batch", type=int, default=4, help="global batch (a multiple of N)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--tiny", action="store_true", help="the ci base stage, 1 + 1 steps")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.batch = 1, 1, 2 * args.processes
    if args.processes < 2 or args.batch % args.processes:
        p.error("--processes must be >= 2 and divide --batch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            rows.append(launch(mode, args, Path(tmp) / f"{mode}.json"))
            print(json.dumps(rows[-1]), flush=True)
    one, ddp, fsdp = rows
    ratios = {
        "ddp_memory_per_process_over_one": ddp["peak_mib_per_process"]
        / one["peak_mib_per_process"],
        "fsdp_memory_per_process_over_ddp": fsdp["peak_mib_per_process"]
        / ddp["peak_mib_per_process"],
        "fsdp_step_over_ddp": fsdp["step_ms"] / ddp["step_ms"],
        "ddp_step_over_one": ddp["step_ms"] / one["step_ms"],
    }
    print(" ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    report = {
        "size": "tiny" if args.tiny else args.size,
        "batch": args.batch,
        "processes": args.processes,
        "device": args.device,
        "torch": torch.__version__,
        "rows": rows,
        "ratios": ratios,
    }
    write_report(args.json, report)
    return 0


def write_report(path: Path | None, report: dict) -> None:
    """``report`` as indented JSON at ``path`` (its folder made), or nothing without one."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
