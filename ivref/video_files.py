"""Reading a folder of videos' files: its index (CSV or JSONL of path and caption), a
video's frames from any start (ffmpeg seeks), and the centre crop to a clip's aspect ratio.
video_folder.py builds training clips from them."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def decode_from(path: Path, start: int, src_fps: float) -> Iterator[np.ndarray]:
    """The RGB frames (H, W, 3) uint8 of the video at ``path`` from frame ``start`` on.

    ffmpeg seeks with ``-ss`` before its input, half a frame before frame ``start``'s time,
    (start - 0.5) / src_fps: it jumps to the keyframe before and decodes, dropping the
    frames before that time, so the first frame out is frame ``start``. Frames pass
    through as decoded (``-fps_mode passthrough``): with an audio track, ffmpeg's default
    constant-rate output repeated the first frame after a seek. Checked frame-exact against
    decoding from the first frame: H.264 in MP4 (B-frames, keyframes every 5 to 250 frames,
    12 to 29.97 fps, with and without AAC audio; the tests cover 12 and 29.97 fps and audio)
    and VP9 in WebM. Where it is not (AVI with MPEG-4 part 2, a video stream starting
    after its file's audio), a seek lands a few frames from ``start``: still consecutive
    frames. At a variable frame rate, ``start`` is a time (``start / src_fps`` seconds)
    rather than a frame count. Stopping early (closing the generator) ends ffmpeg.
    """
    import imageio_ffmpeg

    seek = ["-ss", f"{(start - 0.5) / src_fps:.6f}"] if start > 0 else []
    reader = imageio_ffmpeg.read_frames(
        str(path), input_params=seek, output_params=["-fps_mode", "passthrough"]
    )
    try:
        width, height = next(reader)["size"]
        for buffer in reader:
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
    finally:
        reader.close()


def center_crop(frames: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred window of ``frames`` (F, H, W, C) whose width / height is
    ``aspect`` (to the nearest pixel)."""
    h, w = frames.shape[1:3]
    if w > h * aspect:  # too wide: cut the sides
        keep = max(1, round(h * aspect))
        left = (w - keep) // 2
        return frames[:, :, left : left + keep]
    keep = max(1, round(w / aspect))  # too tall (or exact): cut top and bottom
    top = (h - keep) // 2
    return frames[:, top : top + keep]


def read_index(index_file: Path) -> list[tuple[str, str]]:
    """(path, caption) rows from a CSV with a header path,caption or a JSONL of such objects."""
    if not index_file.is_file():
        raise FileNotFoundError(f"index file {str(index_file)!r} does not exist")
    if index_file.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(index_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{str(index_file)!r} line {n} is not JSON ({err.msg}): {line[:80]!r}"
                    ) from None
    elif index_file.suffix.lower() == ".csv":
        with open(index_file, newline="", encoding="utf-8-sig") as fh:  # with or without a BOM
            rows = list(csv.DictReader(fh))
    else:
        raise ValueError(f"index file {str(index_file)!r} must be .csv or .jsonl")
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or "path" not in row or "caption" not in row:
            raise ValueError(f"{str(index_file)!r} row {n}: needs fields 'path' and 'caption'")
    return [(row["path"], row["caption"]) for row in rows]
