"""A toy stage's training step as shipped, beside variants of it, timed in one process.

    python benchmarks/train_step_variants.py --stages base tsr --rounds 12 --json variants.json
    python benchmarks/train_step_variants.py --tiny                  # ci preset, for CI

Machines here are noisy (the same step can take 30% longer a minute later), so separate
processes per variant cannot resolve a few percent. Here every variant gets its own
``Trainer`` (same seed, same batches), and each round runs one step of every variant, in an
order that alternates between rounds; a variant's figure is the median over rounds of its
step time divided by the shipped step's time in the same round (> 1: slower than shipped).

Variants:
- ``shipped``: ``Trainer.train_step`` as ``ivref train`` runs it (the stage's bf16 autocast
  where the device computes bf16 natively, ``devices.native_bf16``; float32 elsewhere);
- ``autograd-shifts``: ``TemporalConv``'s two frame shifts as sliced adds and concatenations
  through autograd, which is how ivref computed them before ``layers.ShiftSum``;
- ``channels-last``: the model's weights, and so its activations, in channels-last memory
  format (what oneDNN prefers for bf16 convolutions on CPUs with AMX);
- ``channels-last-convs``: only each 3x3 convolution's input in channels-last, its output
  back to the usual layout (the norms, attention and rearranges between stay as shipped);
- ``bf16-autocast`` and ``float32``: the step with bf16 autocast forced on, and off
  (``Trainer(bf16=...)``), whatever the device.
``benchmarks/train_throughput.py --compile`` compares ``torch.compile`` the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from einops import rearrange
from train_throughput import RandomTextEncoder, matmul_rate, sync  # this folder

from ivref import configs, devices, layers
from ivref import train as train_lib

VARIANTS = (
    "shipped", "autograd-shifts", "channels-last", "channels-last-convs", "bf16-autocast",
    "float32",
)  # fmt: skip
FORCED_BF16 = {"bf16-autocast": True, "float32": False}  # the others: as the trainer decides


def autograd_shifts_forward(self, x, num_frames, video_mask=None):
    """``TemporalConv.forward`` with the shifts written as slices and ``torch.cat``."""
    z = self.conv(F.silu(self.norm(x)))
    z = rearrange(z, "(b f) (k c) h w -> k b f c h w", f=num_frames, k=3)
    y = z[1] + rearrange(self.bias.to(z.dtype), "c -> c () ()")
    y = torch.cat([y[:, :1], y[:, 1:] + z[0][:, :-1]], dim=1)  # W_0 h[f-1]
    y = torch.cat([y[:, :-1] + z[2][:, 1:], y[:, -1:]], dim=1)  # W_2 h[f+1]
    if video_mask is not None:
        y = y * rearrange(video_mask.to(y.dtype), "b -> b () () () ()")
    return x + rearrange(y, "b f c h w -> (b f) c h w")


_conv_forward = torch.nn.Conv2d._conv_forward


def channels_last_conv_forward(self, x, weight, bias):
    """``Conv2d._conv_forward`` with a 3x3 (or larger) convolution run in channels-last."""
    if self.kernel_size == (1, 1):
        return _conv_forward(self, x, weight, bias)
    y = _conv_forward(self, x.contiguous(memory_format=torch.channels_last), weight, bias)
    return y.contiguous()


SWAPS = {  # variant: (class, method name, the variant's function)
    "autograd-shifts": (layers.TemporalConv, "forward", autograd_shifts_forward),
    "channels-last-convs": (torch.nn.Conv2d, "_conv_forward", channels_last_conv_forward),
}


@contextlib.contextmanager
def variant_code(name: str):
    """Swap in the variant's code for the length of one step (the model stays as built)."""
    if name not in SWAPS:
        yield
        return
    cls, method, function = SWAPS[name]
    shipped = getattr(cls, method)
    setattr(cls, method, function)
    try:
        yield
    finally:
        setattr(cls, method, shipped)


def measure(cfg, stage_name: str, device, warmup: int, rounds: int, variants=VARIANTS) -> dict:
    encoder = RandomTextEncoder(cfg.text.dim, cfg.text.max_length)
    variants = ("shipped", *(v for v in variants if v != "shipped"))  # the reference first
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            name: train_lib.Trainer(
                cfg,
                stage_name,
                f"{out}/{name}",
                text_encoder=encoder,
                device=device,
                progress=False,
                bf16=FORCED_BF16.get(name),
            )  # fmt: skip
            for name in variants
        }
        if "channels-last" in trainers:
            trainers["channels-last"].model.to(memory_format=torch.channels_last)
        times = {name: [] for name in variants}
        for i in range(warmup + rounds):
            for name in variants if i % 2 == 0 else reversed(variants):
                with variant_code(name):
                    sync(device)
                    start = time.perf_counter()
                    trainers[name].train_step()
                    sync(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    shipped = times["shipped"]
    row = {"batch": trainers["shipped"].batch_size, "bf16": trainers["shipped"].bf16}
    row["variants"] = {}
    for name in variants:
        ratios = [t / s for t, s in zip(times[name], shipped, strict=True)]
        row["variants"][name] = {
            "step_ms": 1e3 * statistics.median(times[name]),
            "time_ratio": statistics.median(ratios),  # variant / shipped, same round
            "time_ratio_range": [min(ratios), max(ratios)],
        }
    return row


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=("toy", "ci"), default="toy")
    p.add_argument("--stages", nargs="+", default=["base"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--tiny", action="store_true", help="ci preset, 2 rounds")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.tiny:
        args.scale, args.warmup, args.rounds = "ci", 1, 2
    cfg = configs.preset(args.scale)
    device = torch.device(args.device)
    rate = matmul_rate(torch.bfloat16, 256 if args.tiny else 2048, device, 3)
    fp32 = matmul_rate(torch.float32, 256 if args.tiny else 2048, device, 3)
    result = {
        "benchmark": "train_step_variants",
        "scale": args.scale,
        "device": str(device),
        "device_name": devices.device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "bf16_matmul_gflop_per_s": rate / 1e9,
        "fp32_matmul_gflop_per_s": fp32 / 1e9,
        "native_bf16": devices.native_bf16(device),
        "stages": {},
    }
    print(
        f"{result['device_name']}: bf16 matmul {rate / 1e9:.1f} GFLOP/s, fp32 "
        f"{fp32 / 1e9:.1f}; native bf16: {result['native_bf16']}"
    )
    for name in args.stages:
        row = measure(cfg, name, device, args.warmup, args.rounds, args.variants)
        result["stages"][name] = row
        for variant, v in row["variants"].items():
            low, high = v["time_ratio_range"]
            print(
                f"{name:5s} {variant:19s} {v['step_ms']:7.0f} ms/step  "
                f"{v['time_ratio']:.3f}x the shipped step (rounds: {low:.2f}-{high:.2f})"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
