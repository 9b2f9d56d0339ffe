"""How fast a folder of videos gives training batches: ``VideoTextFolder.sample`` with one
decoder against several at once (``workers``, ``ivref train --decode-workers``), and ffmpeg's
seek to a clip's start against decoding every frame before it (ivref before the seek).

    python benchmarks/video_decode.py --json docs/bench/video_decode.json   # the toy SSR 64 size
    python benchmarks/video_decode.py --tiny                                # seconds, for CI

The script writes its own clips (moving gradients, ``--files`` of ``--seconds`` at 24 fps,
``--size`` pixels square, H.264 by mediapy with a keyframe every second, ``-g 24``) to a
temporary folder, then draws batches of ``--batch`` clips at the toy SSR 64 stage's shape
(16 frames x 64 x 64 @ 6 fps: 2.7 s of source each) with every worker count and with the
decode-from-the-first-frame peer (one worker), in interleaved rounds after one warm-up batch
each; medians. Every configuration draws the same clips (checked: ``same_clips``), so the
times compare the same work. ffmpeg decodes in its own process, so threads decode in
parallel. Last, ``prefetch``: batches between stood-in training steps that leave the CPU
free (a sleep, as while a GPU computes), with the next batch decoded during the step or not.
And ``probe``: making the folder, where ffmpeg counts every file's frames, ``workers`` files
at once, against a folder given the probes an earlier one kept (``probes=``, what ``ivref
train --resume`` reads from ``video_probes.json``: no file is decoded), ``--parts`` picking
what to time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mediapy
import numpy as np
import torch

from ivref import video, video_folder
from ivref.video_folder import VideoTextFolder

FROM_FIRST = "from-first"  # the peer: every frame before the start decoded and dropped
PARTS = ("batches", "prefetch", "probe")


def write_clips(folder: Path, files: int, seconds: float, size: int) -> Path:
    """``files`` videos of a gradient drifting across the frame, and their index.csv."""
    video.ensure_ffmpeg()
    frames = round(seconds * 24)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rows = ["path,caption"]
    for k in range(files):
        shift = (np.arange(frames)[:, None] * (3 + k) + ramp[None, :]) % 256
        gray = np.broadcast_to(shift[:, None, :, None], (frames, size, size, 3))
        path, frames_u8 = folder / f"clip{k}.mp4", gray.astype(np.uint8).copy()
        mediapy.write_video(path, frames_u8, fps=24.0, ffmpeg_args=["-g", "24"])
        rows.append(f"clip{k}.mp4,a gradient drifting at speed {3 + k}")
    (folder / "index.csv").write_text("\n".join(rows) + "\n")
    return folder / "index.csv"


_SEEKING = video_folder.decode_from  # ivref's decoder, before any swap below


def _from_first(path: Path, start: int, src_fps: float) -> Iterator[np.ndarray]:
    """The peer: decode from the first frame and drop the frames before ``start``."""
    for k, frame in enumerate(_SEEKING(path, 0, src_fps)):
        if k >= start:
            yield frame


@contextlib.contextmanager
def _decoder(name: str) -> Iterator[None]:
    """``VideoTextFolder`` decoding as ``name`` says while inside."""
    video_folder.decode_from = _from_first if name == FROM_FIRST else _SEEKING
    try:
        yield
    finally:
        video_folder.decode_from = _SEEKING


def time_batches(args: argparse.Namespace, index: Path) -> dict:
    """Seconds per batch for each configuration (a worker count, or the peer), and whether
    they all drew the same clips."""
    configs = {str(w): w for w in args.workers} | {FROM_FIRST: 1}
    folders = {
        name: VideoTextFolder(index.parent, index, 16, args.clip, args.clip, 6.0, workers=w)
        for name, w in configs.items()
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    batches: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    generators = {name: torch.Generator().manual_seed(0) for name in configs}
    for round_ in range(args.repeats + 1):  # round 0 warms up ffmpeg and the page cache
        for name, folder in folders.items():
            with _decoder(name):
                began = time.perf_counter()
                clips = folder.sample(args.batch, generators[name])[0]
                seconds = time.perf_counter() - began
            times[name] += [seconds] if round_ else []
            batches[name].append(clips)
    one = str(args.workers[0])
    same = all(
        torch.equal(a, b)
        for name in configs
        for a, b in zip(batches[one], batches[name], strict=True)
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "seconds_per_batch": {name: round(m, 4) for name, m in medians.items()},
        "speedup_vs_from_first": {
            name: round(medians[FROM_FIRST] / m, 2) for name, m in medians.items()
        },
        "same_clips": same,
    }


def time_prefetch(args: argparse.Namespace, index: Path) -> dict:
    """Seconds per training iteration (a batch, then a step that leaves the CPU free, as
    a GPU step does, stood in for by ``time.sleep(--step-seconds)``), without and with
    ``prefetch``; both with the largest worker count, and checked to draw the same clips."""
    workers = max(args.workers)
    rows, clips = {}, {}
    for prefetch in (False, True):
        folder = VideoTextFolder(index.parent, index, 16, args.clip, args.clip, 6.0,
                                 workers=workers, prefetch=prefetch)  # fmt: skip
        g = torch.Generator().manual_seed(1)
        folder.sample(args.batch, g)  # warm-up (and, with prefetch, the first batch ahead)
        began, drawn = time.perf_counter(), []
        for _ in range(args.repeats):
            drawn.append(folder.sample(args.batch, g)[0])
            time.sleep(args.step_seconds)
        rows[str(prefetch).lower()] = round((time.perf_counter() - began) / args.repeats, 4)
        clips[prefetch] = drawn
    same = all(torch.equal(a, b) for a, b in zip(clips[False], clips[True], strict=True))
    return {
        "step_seconds": args.step_seconds,
        "workers": workers,
        "seconds_per_iteration": {"no prefetch": rows["false"], "prefetch": rows["true"]},
        "speedup": round(rows["false"] / rows["true"], 2),
        "same_clips": same,
    }


CACHED = "cached"  # a folder given an earlier one's probes: it decodes nothing


def time_probe(args: argparse.Namespace, index: Path) -> dict:
    """Seconds to make the folder (ffmpeg counts every file's frames: ``_probe``) with each
    worker count, and with the probes an earlier folder kept (one worker), in interleaved
    rounds after a warm-up; and whether all agree (items and digest)."""
    kinds: list[int | str] = [*args.workers, CACHED]
    made: dict[int | str, list[float]] = {k: [] for k in kinds}
    found = {}
    kept = None
    for round_ in range(args.repeats + 1):
        for kind in kinds:
            workers, probes = (1, kept) if kind == CACHED else (kind, None)
            began = time.perf_counter()
            folder = VideoTextFolder(
                index.parent, index, 16, args.clip, args.clip, 6.0, workers=workers, probes=probes
            )
            made[kind] += [time.perf_counter() - began] if round_ else []
            found[kind] = (folder.items, int(folder.state_dict()["digest"]))
            kept = json.loads(json.dumps(folder.probes))  # as video_probes.json keeps them
    medians = {k: statistics.median(t) for k, t in made.items()}
    one = args.workers[0]
    return {
        "seconds_to_probe": {str(k): round(m, 4) for k, m in medians.items()},
        "speedup": {str(k): round(medians[one] / m, 2) for k, m in medians.items()},
        "same_items": all(found[k] == found[one] for k in kinds),
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
    p.add_argument(
        "--step-seconds", type=float, default=0.3, help="the stood-in training step (prefetch)"
    )
    p.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to time (all)"
    )
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.tiny:
        args.files, args.seconds, args.size, args.clip = 3, 3.0, 32, 16
        args.batch, args.repeats, args.workers, args.step_seconds = 4, 1, [1, 2], 0.05
    with tempfile.TemporaryDirectory() as tmp:
        index = write_clips(Path(tmp), args.files, args.seconds, args.size)
        result = time_batches(args, index) if "batches" in args.parts else {}
        if "prefetch" in args.parts:
            result["prefetch"] = time_prefetch(args, index)
        if "probe" in args.parts:
            result["probe"] = time_probe(args, index)
    report = {
        "what": "VideoTextFolder.sample: seconds per batch by decode workers (seeking), "
        "and decoding from the first frame (one worker); prefetch; the folder's probe of "
        "every file by workers",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        **result,
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    agree = [result.get("same_clips", True), result.get("prefetch", {}).get("same_clips", True)]
    agree.append(result.get("probe", {}).get("same_items", True))
    return 0 if all(agree) else 1


if __name__ == "__main__":
    sys.exit(main())
