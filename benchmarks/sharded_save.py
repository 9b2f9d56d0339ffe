"""Rank 0's memory while a sharded (FSDP) run saves a checkpoint: ivref's streamed save
beside gathering the whole state first, as torch's state-dict helpers do.

    python benchmarks/sharded_save.py --json docs/bench/sharded_save.json   # 45M, 2 processes
    python benchmarks/sharded_save.py --tiny                                # seconds, for CI

Each mode is one ``torchrun --nproc_per_node=N`` launch of this script's worker: a
``Trainer(fsdp=True)`` on the toy base stage with the 45M U-Net of data_parallel.py takes
one step (so AdamW has its moments), then saves one checkpoint:

    streamed      ``Trainer.save``: one whole tensor at a time (ivref/sharded_state.py)
    gather-whole  ``torch.distributed.checkpoint.state_dict``'s ``get_model_state_dict`` and
                  ``get_optimizer_state_dict`` (full_state_dict, cpu_offload: whole on rank
                  0's CPU), then the same ``checkpoint.save`` of those dicts

Memory: rank 0's resident set, sampled every millisecond during the save, above its level
just before (after ``malloc_trim``, so memory freed by the step is not reused unseen).
Both modes write the same tensors (``digests``: the model, EMA and optimizer files' tensors,
hashed by name).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ivref import checkpoint, distributed, train

MODES = ("streamed", "gather-whole")
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakResident:
    """The largest resident set seen while inside, sampled every millisecond, minus the
    resident set on entry."""

    def __enter__(self) -> PeakResident:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start = self.peak = resident_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.start


def tensor_digest(path: Path) -> str:
    """sha256 of a safetensors file's tensors by name (whatever order the file stores them)."""
    h = hashlib.sha256()
    tensors = load_file(path)
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def gather_whole_save(trainer: train.Trainer, out: Path) -> None:
    """The checkpoint, its state gathered whole on rank 0's CPU first (every rank calls it)."""
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = dcp.get_model_state_dict(trainer.model, options=options)
    ema = dcp.get_model_state_dict(trainer.ema, options=options)
    optim = dcp.get_optimizer_state_dict(trainer.model, trainer.optimizer, options=options)
    if trainer.context.is_main:
        names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        index = {name: i for i, name in enumerate(names)}
        groups = [g | {"params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]
        state = {index[n]: v for n, v in optim["state"].items()}
        checkpoint.save(
            out, config=trainer.config, stage=trainer.stage.name, step=trainer.step,
            model=model, ema=ema, optimizer={"state": state, "param_groups": groups}, rng={},
        )  # fmt: skip
    distributed.barrier(trainer.context)


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from data_parallel import stage_config
    from train_throughput import RandomTextEncoder

    device = distributed.init_from_env(torch.device("cpu"))
    context = distributed.current()
    cfg = stage_config("45m", args.tiny)
    encoder = RandomTextEncoder(cfg.text.dim, cfg.text.max_length)
    with tempfile.TemporaryDirectory() as out:
        trainer = train.Trainer(
            cfg, "base", out, text_encoder=encoder, batch_size=context.world_size,
            device=device, progress=False, fsdp=True,
        )  # fmt: skip
        trainer.train_step()
        distributed.barrier(context)
        start = time.perf_counter()
        with PeakResident() as memory:
            if args.worker == "streamed":
                path = trainer.save()
            else:
                path = Path(out) / "whole"
                gather_whole_save(trainer, path)
        seconds = time.perf_counter() - start
        if context.is_main:
            size = sum(f.stat().st_size for f in Path(path).iterdir())
            params = sum(p.numel() for p in trainer.model.parameters())
            result = {
                "mode": args.worker, "processes": context.world_size, "params": params,
                "checkpoint_mib": size / 2**20, "save_s": seconds,
                "rank0_extra_mib": memory.extra_bytes / 2**20,
                "digests": {part: tensor_digest(Path(path) / f"{part}.safetensors")
                            for part in ("model", "ema", "optimizer")},
            }  # fmt: skip
            Path(args.result).write_text(json.dumps(result))
    del trainer  # collected before the group goes (distributed.shutdown)
    distributed.shutdown()


def launch(mode: str, args: argparse.Namespace, result: Path) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={args.processes}", str(Path(__file__).resolve())]
    command += ["--worker", mode, "--result", str(result)] + (["--tiny"] if args.tiny else [])
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="the ci base stage")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.processes < 2:
        p.error("--processes must be >= 2: FSDP shards between processes")
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from data_parallel import write_report

    with tempfile.TemporaryDirectory() as tmp:
        rows = [launch(mode, args, Path(tmp) / f"{mode}.json") for mode in MODES]
    for row in rows:
        print(json.dumps(row), flush=True)
    streamed, whole = rows
    ratio = streamed["rank0_extra_mib"] / whole["rank0_extra_mib"]
    print(f"rank 0's extra memory while saving: streamed / gather-whole = {ratio:.3f}")
    report = {"size": "tiny" if args.tiny else "45m", "processes": args.processes,
              "torch": torch.__version__, "rows": rows,
              "rank0_extra_memory_streamed_over_whole": ratio}  # fmt: skip
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
