"""Do two training runs of one stage follow the same loss curve and reach the same alignment?

    python benchmarks/compare_logs.py data/toy/base_log.jsonl runs/base/log.jsonl \
        --windows 250 500 1000 1500 2000 2500 3000 --json docs/bench/base_retrain.json

For each window of steps (lo, hi], the mean loss of each run over the steps both logs hold
(a shipped log keeps every 10th step), and each run's caption-alignment rows (``eval_*``).
Same seed and same data order: the two runs draw the same batches and noise, so their
losses differ only by what changed in the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ivref import train


def compare(a: list[dict], b: list[dict], windows: list[int]) -> dict:
    """Per window, mean losses over the common steps; both runs' evaluation rows."""
    by_step = [{r["step"]: r for r in rows if "loss" in r} for rows in (a, b)]
    common = sorted(set(by_step[0]) & set(by_step[1]))
    rows, lo = [], 0
    for hi in windows:
        steps = [s for s in common if lo < s <= hi]
        if steps:
            means = [statistics.fmean(run[s]["loss"] for s in steps) for run in by_step]
            rows.append({"steps": [lo + 1, hi], "common_steps": len(steps),
                         "loss_a": means[0], "loss_b": means[1]})  # fmt: skip
        lo = hi
    evals = [
        [{k: v for k, v in r.items() if k == "step" or k.startswith("eval_")}
         for r in run if any(k.startswith("eval_") for k in r)]
        for run in (a, b)
    ]  # fmt: skip
    return {"windows": rows, "evals_a": evals[0], "evals_b": evals[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path, help="a training log (log.jsonl) or run folder")
    p.add_argument("b", type=Path, help="the other")
    p.add_argument("--windows", type=int, nargs="+", required=True, help="window ends, rising")
    p.add_argument("--json", type=Path, help="also write the comparison here")
    args = p.parse_args(argv)
    if args.windows != sorted(set(args.windows)) or args.windows[0] < 1:
        p.error("--windows must be rising step numbers >= 1")
    result = compare(train.read_log(args.a), train.read_log(args.b), args.windows)
    result |= {"a": str(args.a), "b": str(args.b)}
    for w in result["windows"]:
        print(f"steps {w['steps'][0]}-{w['steps'][1]} ({w['common_steps']} common): "
              f"loss {w['loss_a']:.4f} vs {w['loss_b']:.4f}")  # fmt: skip
    for name in ("a", "b"):
        for r in result[f"evals_{name}"]:
            print(f"{name} {json.dumps(r)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
