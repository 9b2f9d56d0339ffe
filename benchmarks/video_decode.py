"""How fast a folder of videos gives training batches: ``VideoTextFolder.sample`` with one
decoder against several at once (``workers``, ``ivref train --decode-workers``).

    python benchmarks/video_decode.py --json docs/bench/video_decode.json   # the toy SSR 64 size
    python benchmarks/video_decode.py --tiny                                # seconds, for CI

The script writes its own clips (moving gradients, ``--files`` of ``--seconds`` at 24 fps,
``--size`` pixels square, H.264 by mediapy) to a temporary folder, then draws batches of
``--batch`` clips at the toy SSR 64 stage's shape (16 frames x 64 x 64 @ 6 fps: 2.7 s of
source each) with every worker count, in interleaved rounds after one warm-up batch each;
medians. Every worker count draws the same clips (checked: ``same_clips``), so the times
compare the same work. ffmpeg decodes in its own process, so threads decode in parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ivref import video
from ivref.video_folder import VideoTextFolder


def write_clips(folder: Path, files: int, seconds: float, size: int) -> Path:
    """``files`` videos of a gradient drifting across the frame, and their index.csv."""
    frames = round(seconds * 24)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rows = ["path,caption"]
    for k in range(files):
        shift = (np.arange(frames)[:, None] * (3 + k) + ramp[None, :]) % 256
        gray = np.broadcast_to(shift[:, None, :, None], (frames, size, size, 3))
        video.write_video(folder / f"clip{k}.mp4", gray.astype(np.uint8).copy(), fps=24.0)
        rows.append(f"clip{k}.mp4,a gradient drifting at speed {3 + k}")
    (folder / "index.csv").write_text("\n".join(rows) + "\n")
    return folder / "index.csv"


def time_batches(args: argparse.Namespace, index: Path) -> dict:
    """Seconds per batch for each worker count, and whether they drew the same clips."""
    folders = {
        w: VideoTextFolder(index.parent, index, 16, args.clip, args.clip, 6.0, workers=w)
        for w in args.workers
    }
    times: dict[int, list[float]] = {w: [] for w in args.workers}
    batches: dict[int, list[torch.Tensor]] = {w: [] for w in args.workers}
    generators = {w: torch.Generator().manual_seed(0) for w in args.workers}
    for w, folder in folders.items():  # warm-up: ffmpeg and the page cache
        batches[w].append(folder.sample(args.batch, generators[w])[0])
    for _ in range(args.repeats):
        for w, folder in folders.items():
            began = time.perf_counter()
            clips = folder.sample(args.batch, generators[w])[0]
            times[w].append(time.perf_counter() - began)
            batches[w].append(clips)
    first = args.workers[0]
    same = all(
        torch.equal(a, b)
        for w in args.workers[1:]
        for a, b in zip(batches[first], batches[w], strict=True)
    )
    medians = {w: statistics.median(t) for w, t in times.items()}
    return {
        "seconds_per_batch": {str(w): round(m, 4) for w, m in medians.items()},
        "speedup_vs_1": {str(w): round(medians[first] / m, 2) for w, m in medians.items()},
        "same_clips": same,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a few small clips (for CI)")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each source file")
    p.add_argument("--size", type=int, default=128, help="source frames, pixels square")
    p.add_argument("--clip", type=int, default=64, help="clip frames, pixels square")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.tiny:
        args.files, args.seconds, args.size, args.clip = 3, 3.0, 32, 16
        args.batch, args.repeats, args.workers = 4, 1, [1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        index = write_clips(Path(tmp), args.files, args.seconds, args.size)
        result = time_batches(args, index)
    report = {
        "what": "VideoTextFolder.sample: seconds per batch by decode workers",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        **result,
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if result["same_clips"] else 1


if __name__ == "__main__":
    sys.exit(main())
