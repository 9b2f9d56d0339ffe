"""Training steps/s and achieved FLOP/s of each toy stage, beside the machine's matmul rate.

    python benchmarks/train_throughput.py --json train_throughput.json   # every toy stage
    python benchmarks/train_throughput.py --stages base --repeats 9
    python benchmarks/train_throughput.py --stages base --compile       # eager vs compiled
    python benchmarks/train_throughput.py --device cuda
    python benchmarks/train_throughput.py --tiny                        # ci preset, for CI
    python benchmarks/train_throughput.py --device cuda --paper-base 16 --stages  # paper base only

Each stage runs ``Trainer.train_step`` as ``ivref train`` does (toy-world batch rendered on
the fly, its training batch size and crop, bf16 autocast where the config asks and the
device computes bf16 natively (``Trainer.bf16``), AdamW, EMA),
with a seeded random text encoder in place of MiniLM (the text cache makes the encoder's
cost vanish after the first steps either way). Achieved FLOP/s counts a training step as
3 x the forward FLOPs of ``unet3d.count_flops`` (forward + backward = 1 + 2) x batch size,
over the median step time. The reference is a square matmul (``--matmul-size``, 2048) in
bf16 and fp32 on the same device and threads: the fraction of it a step reaches is its
utilisation.

``--compile`` also times each stage with its model compiled as ``ivref train --compile``
does (``Trainer(compile=True)``: inductor, with CUDA graphs on a GPU) in the same rounds as
the eager step, and reports the first step (compilation included) apart.

``--paper-base B`` also times the paper preset's base stage (5.6B parameters, 16 x 24 x 40,
T5-XXL-width text of 128 tokens) as large models are trained: bf16 weights and AdamW
states, activation checkpointing per block (the preset's), a synthetic batch of B already
on the device, no EMA. Its model-FLOPs utilisation is 3 x forward FLOPs x B / step time
over ``--peak-tflops`` (the chip's dense bf16 rate; 989 for an H100 or H200 SXM), and over
the measured matmul rate. With ``--tiny`` the ci preset's base stands in for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import tempfile
import time

import torch

from ivref import configs, devices, unet3d
from ivref import train as train_lib


class RandomTextEncoder:
    """A frozen encoder stand-in: fixed random embeddings per prompt (seeded by its hash)."""

    def __init__(self, dim: int, max_length: int) -> None:
        self.name, self.dim, self.max_length = f"random-{dim}", dim, max_length

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little") >> 1
            g = torch.Generator().manual_seed(seed)
            rows.append(torch.randn(self.max_length, self.dim, generator=g))
        return torch.stack(rows), torch.ones(len(prompts), self.max_length, dtype=torch.bool)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, n: int, device: torch.device, repeats: int) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs), median over ``repeats`` after warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i:  # the first is warm-up
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def stage_flops(stage: configs.StageConfig, text_length: int) -> int:
    """Forward FLOPs of one training sample (at the training crop, if any)."""
    h = w = stage.train.crop_size or 0
    h, w = (h or stage.height), (w or stage.width)
    return unet3d.count_flops(stage.unet, stage.num_frames, h, w, text_length=text_length)


def measure(
    cfg: configs.CascadeConfig, stage: configs.StageConfig, device, warmup, repeats,
    compiled: bool = False,
):  # fmt: skip
    """Median ``train_step`` of a stage; with ``compiled`` also of a ``compile=True`` trainer
    (same seed), timed in the same rounds, eager and compiled alternating."""
    encoder = RandomTextEncoder(cfg.text.dim, cfg.text.max_length)
    with tempfile.TemporaryDirectory() as out:
        trainers = {"eager": train_lib.Trainer(
            cfg, stage.name, f"{out}/eager", text_encoder=encoder, device=device, progress=False
        )}  # fmt: skip
        compile_s = None
        if compiled:
            trainer = train_lib.Trainer(
                cfg, stage.name, f"{out}/compiled", text_encoder=encoder, device=device,
                progress=False, compile=True,
            )  # fmt: skip  # compiles on the first forward and backward
            sync(trainer.device)
            start = time.perf_counter()
            trainer.train_step()
            sync(trainer.device)
            compile_s = time.perf_counter() - start
            trainers["compiled"] = trainer
        times = {kind: [] for kind in trainers}
        for i in range(warmup + repeats):
            for kind, trainer in trainers.items():
                sync(trainer.device)
                start = time.perf_counter()
                trainer.train_step()
                sync(trainer.device)
                if i >= warmup:
                    times[kind].append(time.perf_counter() - start)
    batch = trainers["eager"].batch_size
    flops = 3 * stage_flops(stage, cfg.text.max_length) * batch
    step_s = statistics.median(times["eager"])
    row = {
        "batch": batch,
        "bf16": trainers["eager"].bf16,  # the stage's setting, where bf16 is native
        "params": unet3d.count_parameters(stage.unet),
        "step_ms": 1e3 * step_s,
        "steps_per_s": 1 / step_s,
        "step_gflop": flops / 1e9,
        "gflop_per_s": flops / step_s / 1e9,
    }
    if compiled:
        compiled_s = statistics.median(times["compiled"])
        row["compiled"] = {
            "first_step_s": compile_s,  # compilation + one step
            "step_ms": 1e3 * compiled_s,
            "gflop_per_s": flops / compiled_s / 1e9,
            "speedup": step_s / compiled_s,  # > 1: compiled is faster
        }
    return row


def measure_model_step(
    unet_cfg, frames, height, width, text_dim, text_length, batch, device, warmup, repeats
) -> dict:
    """One bf16 train step of a bare VideoUNet (forward, v-MSE, backward, AdamW) on random data."""
    torch.manual_seed(0)
    with torch.device(device):
        model = unet3d.VideoUNet(unet_cfg).to(torch.bfloat16).train()
        x = torch.randn(batch, 3, frames, height, width, dtype=torch.bfloat16)
        target = torch.randn_like(x)
        logsnr = torch.randn(batch) * 4
        emb = torch.randn(batch, text_length, text_dim, dtype=torch.bfloat16)
        mask = torch.ones(batch, text_length, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):  # fp32 embeddings meet bf16
            v = model(x, logsnr, emb, mask)
        loss = torch.nn.functional.mse_loss(v.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = 3 * unet3d.count_flops(unet_cfg, frames, height, width, text_length=text_length)
    row = {
        "batch": batch,
        "params": unet3d.count_parameters(unet_cfg),
        "checkpointing": unet_cfg.checkpointing,
        "step_ms": 1e3 * step_s,
        "samples_per_s": batch / step_s,
        "step_tflop": flops * batch / 1e12,
        "tflop_per_s": flops * batch / step_s / 1e12,
    }
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=("toy", "ci"), default="toy")
    p.add_argument("--stages", nargs="*", help="default: all; none given: only --paper-base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--paper-base", type=int, metavar="B", help="also the paper base at batch B")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak, for MFU")
    p.add_argument("--tiny", action="store_true", help="ci preset, 1 repeat, small matmul")
    p.add_argument(
        "--compile", action="store_true",
        help="also time each stage's step with the model compiled (torch.compile, inductor)",
    )  # fmt: skip
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.tiny:
        args.scale, args.warmup, args.repeats, args.matmul_size = "ci", 1, 1, 256
    cfg = configs.preset(args.scale)
    device = torch.device(args.device)
    names = [s.name for s in cfg.stages] if args.stages is None else args.stages
    n, reps = args.matmul_size, max(3, args.repeats)
    rates = {
        "bf16": matmul_rate(torch.bfloat16, n, device, reps),
        "fp32": matmul_rate(torch.float32, n, device, reps),
    }
    print(
        f"matmul {n}^3 on {device}: bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s, "
        f"fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s"
    )
    result = {
        "benchmark": "train_throughput",
        "scale": args.scale,
        "device": str(device),
        "device_name": devices.device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "matmul": {"size": n} | {f"{k}_gflop_per_s": v / 1e9 for k, v in rates.items()},
        "stages": {},
    }
    for name in names:
        stage = cfg.stage(name)
        row = measure(cfg, stage, device, args.warmup, args.repeats, args.compile)
        ref = rates["bf16" if row["bf16"] else "fp32"]
        row["fraction_of_matmul"] = row["gflop_per_s"] * 1e9 / ref
        row["fraction_of_bf16_matmul"] = row["gflop_per_s"] * 1e9 / rates["bf16"]
        result["stages"][name] = row
        print(
            f"{name:5s} batch {row['batch']:3d}  {row['steps_per_s']:6.2f} steps/s  "
            f"{row['step_gflop']:7.1f} GFLOP/step  {row['gflop_per_s']:7.1f} GFLOP/s  "
            f"= {row['fraction_of_bf16_matmul']:.0%} of the bf16 matmul rate"
        )
        if "compiled" in row:
            c = row["compiled"]
            print(
                f"      compiled: first step {c['first_step_s']:.0f} s, then "
                f"{c['step_ms']:.0f} ms/step ({c['gflop_per_s']:.1f} GFLOP/s): "
                f"{c['speedup']:.2f}x the eager step"
            )
    if args.paper_base:
        big = configs.preset("ci" if args.tiny else "paper")
        stage = big.stage("base")
        unet_cfg = dataclasses.replace(stage.unet, checkpointing=True)
        row = measure_model_step(
            unet_cfg, stage.num_frames, stage.height, stage.width, big.text.dim,
            big.text.max_length, args.paper_base, device, args.warmup, args.repeats,
        )  # fmt: skip
        row["preset"] = big.name
        row["mfu_of_peak"] = row["tflop_per_s"] * 1e12 / (args.peak_tflops * 1e12)
        row["fraction_of_bf16_matmul"] = row["tflop_per_s"] * 1e12 / rates["bf16"]
        row["peak_tflops"] = args.peak_tflops
        result["paper_base"] = row
        print(
            f"{big.name} base ({row['params'] / 1e9:.2f}B) batch {row['batch']}: "
            f"{row['step_ms']:.0f} ms/step, {row['samples_per_s']:.1f} samples/s, "
            f"{row['tflop_per_s']:.0f} TFLOP/s = {row['mfu_of_peak']:.0%} of "
            f"{args.peak_tflops:g} TFLOP/s, {row['fraction_of_bf16_matmul']:.0%} of the matmul"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
