"""Reading a folder of videos' files: its index (CSV or JSONL of path and caption), a
video's frames from any start (ffmpeg seeks), and the centre crop to a clip's aspect ratio.
video_folder.py builds training clips from them."""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import logging
import os
import re
import subprocess
from collections.abc import Generator
from pathlib import Path

import numpy as np


class _SizeNoteFilter(logging.Filter):
    """Drops imageio-ffmpeg's note that the frames read differ in size from the stream's:
    they do on purpose for rotated and non-square-pixel videos (``decode_from``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is different from the source frame size" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_SizeNoteFilter())

# ffmpeg's output in square pixels: a video whose pixels are not square (sample aspect ratio,
# e.g. 1440 x 1080 shown as 1920 x 1080) is stretched to its display shape; others pass as is
SQUARE_PIXELS = ["-vf", "scale=iw*sar:ih,setsar=1"]


FFMPEG_MIN = (5, 1)  # the first FFmpeg with -fps_mode, which every read here passes


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg that imageio-ffmpeg finds (its own binary, or ``IMAGEIO_FFMPEG_EXE``),
    checked once to be FFmpeg 5.1 or newer; an older one raises, saying what to install.
    A version that does not start with numbers (a build from git) is taken as new."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    version = imageio_ffmpeg.get_ffmpeg_version()
    found = re.match(r"n?(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < FFMPEG_MIN:
        raise RuntimeError(
            f"ffmpeg {version} at {exe!r} is too old: ivref reads videos with FFmpeg "
            f"{'.'.join(map(str, FFMPEG_MIN))} or newer; install imageio-ffmpeg>=0.6 (which "
            "ships FFmpeg 7 or newer) or point IMAGEIO_FFMPEG_EXE at a newer ffmpeg"
        )
    return exe


def decode_from(path: Path, start: int, src_fps: float) -> Generator[np.ndarray, None, None]:
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
    rather than a frame count. Frames come rotated as the file says and in square pixels,
    as a player shows them (``SQUARE_PIXELS``). Stopping early (closing the generator) ends
    ffmpeg.
    """
    import imageio_ffmpeg

    ffmpeg_exe()  # new enough for -fps_mode
    seek = ["-ss", f"{(start - 0.5) / src_fps:.6f}"] if start > 0 else []
    reader = imageio_ffmpeg.read_frames(
        _ffmpeg_path(path),
        input_params=seek,
        output_params=["-map", "0:v:0", "-fps_mode", "passthrough", *SQUARE_PIXELS],
    )  # the first video stream, as ``probe`` counts (ffmpeg's default: the largest)
    process = None
    try:
        width, height = next(reader)["size"]
        suspended = getattr(reader, "gi_frame", None)  # the reader's frame holds its ffmpeg
        process = suspended.f_locals.get("process") if suspended is not None else None
        for buffer in reader:
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
    finally:
        reader.close()
        _close_pipes(process)


def _close_pipes(process: object) -> None:
    """Close what imageio-ffmpeg left open of its ffmpeg process: it closes the pipes of a
    process it stops, not of one that has ended (every whole decode), and each of them
    was a ResourceWarning when it was collected."""
    for pipe in (getattr(process, "stdin", None), getattr(process, "stdout", None)):
        if pipe is not None and not pipe.closed:
            pipe.close()


class VideoProbeError(RuntimeError):
    """ffmpeg could not read a video file's frame count or frame rate; says why."""


_FRAMES = re.compile(r"frame= *(\d+) ")  # ffmpeg's progress line; the last one is the total
_RATE = re.compile(r", ([\d.]+)(k?) fps")  # in the input's video stream line: "25 fps", "1k fps"
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")  # the input's, h:mm:ss.ss


def probe(path: Path) -> tuple[int, float]:
    """(frames, frame rate) of the first video stream of the file at ``path``.

    ffmpeg decodes every frame to nothing (``-f null``, ``-fps_mode passthrough``: each
    decoded frame counts once) and its last progress line gives the count; the rate is the
    one its header prints for that stream (two decimals, ``exact_fps`` makes it exact). A
    GIF whose header has no rate is read at 10 fps, the usual GIF default. A header with no
    rate for the stream (a variable-rate Matroska or WebM file, a screen recording: ffmpeg
    prints only its time base, "48 tbr, 1k tbn") gives the mean rate, frames / the file's
    duration. Raises ``VideoProbeError`` with ffmpeg's last line where it cannot read the
    file, and says how to re-encode one with neither rate nor duration.
    """
    command = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _ffmpeg_path(path),
        "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    err = done.stderr.replace("\r", "\n")
    if done.returncode != 0:
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        raise VideoProbeError(lines[-1] if lines else f"ffmpeg exited {done.returncode}")
    header = err.split("\nOutput #")[0]  # the input's description, before the output's
    streams = [line for line in header.splitlines() if "Stream #" in line and ": Video:" in line]
    rate = _RATE.search(streams[0]) if streams else None
    counts = _FRAMES.findall(err)
    frames = int(counts[-1]) if counts else 0
    duration = _DURATION.search(header)
    seconds = 0.0
    if duration is not None:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    if rate is not None:
        fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    elif streams and Path(path).suffix.lower() == ".gif":
        fps = 10.0
    elif streams and frames > 0 and seconds > 0:  # a variable rate: its mean
        fps = frames / seconds
    else:
        raise VideoProbeError(
            "no video stream with a frame rate or a duration in ffmpeg's description; "
            "re-encode it at a constant rate (ffmpeg -i IN -r 24 OUT.mp4)"
        )
    return frames, fps


def _ffmpeg_path(path: str | os.PathLike) -> str:
    """``path`` as ffmpeg must be given it: absolute, so that a name with a colon in it
    ("take:2.mp4", "10:30.mp4", relative to the working folder) is not read as a protocol."""
    return os.path.abspath(path)


def exact_fps(printed: float) -> float:
    """A frame rate as ffmpeg prints it (two decimals: 23.98 for 24000/1001) made exact:
    an integer, or n * 1000 / 1001 (the NTSC rates), where one lies within the printing's
    rounding; else as printed. Seeks and frame times use it: at 23.98 instead of 23.976 a
    seek lands one frame early from about frame 3,000 on (the error grows by a frame every
    ~6,000)."""
    for rate in (round(printed), round(printed * 1.001) * 1000 / 1001):
        if rate > 0 and abs(rate - printed) <= 0.00501:
            return float(rate)
    return printed


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


def read_index(index_file: Path) -> list[tuple[str, object]]:
    """(path, caption) rows from a CSV with a header path,caption or a JSONL of such objects,
    read as UTF-8 (with or without a byte-order mark). Errors name the file and line. A
    caption is as the index gives it, not checked: any JSON value, or None for a CSV row
    that lacks the field (``VideoTextFolder`` skips a row whose caption is not text)."""
    if not index_file.is_file():
        raise FileNotFoundError(f"index file {str(index_file)!r} does not exist")
    kind = index_file.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise ValueError(f"index file {str(index_file)!r} must be .csv or .jsonl")
    raw = index_file.read_bytes()
    try:  # no newline translation: a quoted CSV caption keeps its "\r\n" (folder digests)
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        at = err.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        line = raw[:at].count(b"\n") + 1
        raise ValueError(
            f"{str(index_file)!r} line {line} is not UTF-8 text "
            f"({err.reason} at byte {at}); save the index as UTF-8"
        ) from None
    rows = _jsonl_rows(index_file, text) if kind == ".jsonl" else _csv_rows(index_file, text)
    pairs: list[tuple[str, object]] = []
    for line, row in rows:
        if not isinstance(row, dict) or "path" not in row or "caption" not in row:
            raise ValueError(f"{str(index_file)!r} line {line}: needs fields 'path' and 'caption'")
        if not isinstance(row["path"], str) or not row["path"].strip():
            raise ValueError(
                f"{str(index_file)!r} line {line}: path {row['path']!r} must be a non-empty "
                "string (the video's file, relative to the folder)"
            )
        pairs.append((row["path"], row["caption"]))
    return pairs


def _jsonl_rows(index_file: Path, text: str) -> list[tuple[int, object]]:
    """(line number, object) per non-blank line. Lines end at "\n", "\r\n" or "\r" (a raw
    "\r" cannot be inside a JSON string), not at the other characters ``str.splitlines``
    breaks at (U+2028, U+0085, ...), which JSON strings may hold."""
    rows = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{str(index_file)!r} line {n} is not JSON ({err.msg}): {line[:80]!r}"
                ) from None
    return rows


def _csv_rows(index_file: Path, text: str) -> list[tuple[int, object]]:
    """(line number where the row ends, dict) per row of a CSV with a header."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, object]] = []
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 24))  # captions of any sensible length
    try:
        header = reader.fieldnames  # line 1 (None: an empty file)
        if header is not None and not {"path", "caption"} <= set(header):
            raise ValueError(
                f"{str(index_file)!r} line 1: the header names the columns {header}; a CSV "
                "index needs a header naming 'path' and 'caption' (other columns are ignored)"
            )
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise ValueError(f"{str(index_file)!r} line {reader.line_num}: not CSV ({err})") from None
    finally:
        csv.field_size_limit(limit)
    return rows
