"""One figure from the benchmark JSONs: peers' step time over ivref's, and achieved FLOP/s.

python benchmarks/plot.py unet_step.json train_throughput.json --out docs/benchmarks.png
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(unet_step: dict | None, throughput: dict | None, out: str) -> None:
    """Left: time (train, sample) and peak memory of each peer / ivref per size (> 1: ivref
    wins). Right: each toy stage's training GFLOP/s against the bf16 and fp32 matmul rates."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if unet_step:
        sizes = list(unet_step["sizes"])
        bars = [
            (peer, metric)
            for peer in ("diffusers", "vdp")
            for metric in ("train_ratio", "sample_ratio")
        ]
        width = 0.8 / len(bars)
        for i, (peer, metric) in enumerate(bars):
            values = [
                unet_step["sizes"][s]["models"].get(peer, {}).get(metric, 0) or 0 for s in sizes
            ]
            xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(sizes))]
            left.bar(xs, values, width, label=f"{peer} {metric.split('_')[0]}")
        left.set_yscale("log")
        left.axhline(1.0, color="k", lw=0.8)
        left.axhline(3.0, color="gray", ls="--", lw=0.8, label="target 3x (vs diffusers)")
        left.set_xticks(range(len(sizes)), sizes)
        left.set_ylabel("peer time / ivref time")
        left.set_title(f"U-Net step at matched size ({unet_step['device_name']})", fontsize=9)
        left.legend(fontsize=7)
    if throughput:
        stages = list(throughput["stages"])
        rates = [throughput["stages"][s]["gflop_per_s"] for s in stages]
        right.bar(stages, rates, color="tab:green", label="training step")
        mm = throughput["matmul"]
        right.axhline(mm["bf16_gflop_per_s"], color="tab:red", label="bf16 matmul")
        right.axhline(0.6 * mm["bf16_gflop_per_s"], color="tab:red", ls="--", label="60% target")
        right.axhline(mm["fp32_gflop_per_s"], color="tab:blue", label="fp32 matmul")
        right.set_ylabel("GFLOP/s")
        right.set_title(f"toy training steps ({throughput['device_name']})", fontsize=9)
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jsons", nargs="+", help="outputs of unet_step.py / train_throughput.py")
    p.add_argument("--out", default="docs/benchmarks.png")
    args = p.parse_args(argv)
    found = {}
    for path in args.jsons:
        with open(path) as f:
            data = json.load(f)
        found[data["benchmark"]] = data
    plot(found.get("unet_step"), found.get("train_throughput"), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
