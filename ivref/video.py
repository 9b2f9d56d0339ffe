"""Video I/O and display: uint8 frames, mp4/gif files (mediapy), grids, loss curves.

Videos inside ivref are float tensors in [-1, 1], laid out (B, C, F, H, W) or (C, F, H, W);
files and notebook widgets take uint8 frames (F, H, W, 3). Every writer goes through a
temporary file in the same directory and ``os.replace``, so a crash never leaves a
half-written video behind. mediapy writes (pointed at imageio-ffmpeg's binary); reading
goes through ``video_files``, which calls ffmpeg itself: mediapy's reader passes ``-vsync``,
an option that FFmpeg 9 (in imageio-ffmpeg 0.8) no longer accepts."""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from ivref import files
from ivref.config_checks import is_integer

VIDEO_SUFFIXES = (".mp4", ".gif")


@functools.cache
def ensure_ffmpeg() -> None:
    """Point mediapy's writer at imageio-ffmpeg's ffmpeg (no system ffmpeg needed). Writing
    takes any version; reading checks its own (``video_files.ffmpeg_exe``)."""
    import imageio_ffmpeg
    import mediapy

    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())


def _as_batch(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(C, F, H, W) or (B, C, F, H, W) -> (B, C, F, H, W) float tensor."""
    video = torch.as_tensor(video)
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(
            f"expected a video of shape (C, F, H, W) or (B, C, F, H, W), got {tuple(video.shape)}"
        )
    return video.float()


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """A video in [-1, 1] -> uint8 frames (F, H, W, 3): round((x + 1) / 2 * 255), clipped.

    Takes (C, F, H, W) or a batch (B, C, F, H, W); a batch must hold one video (use ``grid``
    to tile several). One channel is repeated to RGB.
    """
    if getattr(video, "dtype", None) in (torch.uint8, np.uint8):
        raise ValueError(
            f"to_uint8 takes a float video in [-1, 1]; got uint8 {tuple(video.shape)}, pixels "
            "already (write_video takes uint8 frames (F, H, W, 3) as they are)"
        )
    batch = _as_batch(video)
    if batch.shape[0] != 1:
        raise ValueError(f"to_uint8 takes one video, got a batch of {batch.shape[0]}; use grid()")
    frames = rearrange(batch[0], "c f h w -> f h w c")
    if frames.shape[-1] == 1:
        frames = frames.expand(-1, -1, -1, 3)
    if frames.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {frames.shape[-1]}")
    bad = int((~torch.isfinite(frames)).sum())
    if bad:  # NaN has no pixel value; writing it would show black and hide the fault
        raise ValueError(f"the video holds {bad} non-finite values (NaN or inf)")
    pixels = ((frames.clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).cpu().numpy()


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> a float32 video (3, F, H, W) in [-1, 1]; inverse of to_uint8."""
    video = torch.as_tensor(np.asarray(frames)).float() / 127.5 - 1
    return rearrange(video, "f h w c -> c f h w")


def grid(videos: torch.Tensor, ncols: int | None = None, pad: int = 1) -> torch.Tensor:
    """Tile a batch (B, C, F, H, W) into one video (C, F, rows*(H+pad)-pad, ncols*(W+pad)-pad).

    Empty cells and the ``pad`` gutters are black (-1). ``ncols`` defaults to ceil(sqrt(B)).
    """
    videos = _as_batch(videos)
    b = videos.shape[0]
    if b == 0:
        raise ValueError("grid() got an empty batch; give at least one video")
    if ncols is not None and (not is_integer(ncols) or ncols < 1):
        raise ValueError(f"ncols={ncols!r} must be None (square-ish) or an integer >= 1")
    if not is_integer(pad) or pad < 0:
        raise ValueError(f"pad={pad!r} must be an integer >= 0")
    ncols, pad = None if ncols is None else int(ncols), int(pad)  # NumPy's: Python ints
    nrows, ncols = grid_shape(b, ncols)
    empty = nrows * ncols - b
    if empty:
        videos = torch.cat([videos, videos.new_full((empty, *videos.shape[1:]), -1.0)])
    videos = torch.nn.functional.pad(videos, (0, pad, 0, pad), value=-1.0)
    tiled = rearrange(videos, "(r k) c f h w -> c f (r h) (k w)", r=nrows, k=ncols)
    return tiled[:, :, : tiled.shape[2] - pad, : tiled.shape[3] - pad]


def grid_shape(count: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, columns) of ``grid`` for ``count`` videos: ``ncols`` columns, by default
    ceil(sqrt(count)), and as many rows as they fill."""
    ncols = ncols or int(np.ceil(np.sqrt(count)))
    return -(-count // ncols), ncols


def upscale(videos: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling of (B, C, F, H, W) by an integer factor in space, for display."""
    if not is_integer(factor) or factor < 1:
        raise ValueError(f"upscale factor {factor!r} must be an integer >= 1")
    factor = int(factor)
    videos = _as_batch(videos)
    return videos.repeat_interleave(factor, dim=3).repeat_interleave(factor, dim=4)


def display_factor(height: int, width: int, size: int) -> int:
    """The smallest integer k >= 1 with max(H, W) * k >= size (nearest upscaling to view)."""
    return max(1, -(-size // max(height, width)))


def stage_grid(stages: Sequence[torch.Tensor], pad: int = 1) -> torch.Tensor:
    """Every stage's output side by side: one row per video, one column per stage.

    Each (B, C, F_k, H_k, W_k) is brought to the last stage's frames and size by nearest
    repetition (in time and space, so nothing is smoothed), then the columns are tiled.
    """
    last = _as_batch(stages[-1])
    _, _, f, h, w = last.shape
    cols = []
    for v in stages:
        v = _as_batch(v)
        if f % v.shape[2] or h % v.shape[3] or w % v.shape[4]:
            raise ValueError(f"stage output {tuple(v.shape)} does not divide the last {f, h, w}")
        v = v.repeat_interleave(f // v.shape[2], dim=2)
        v = v.repeat_interleave(h // v.shape[3], dim=3).repeat_interleave(w // v.shape[4], dim=4)
        cols.append(v)
    tiles = rearrange(torch.stack(cols, dim=1), "b k c f h w -> (b k) c f h w")
    return grid(tiles, ncols=len(stages), pad=pad)


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"cannot write {str(path)!r}: suffix must be one of {VIDEO_SUFFIXES}")
    return suffix


def write_video(path: str | os.PathLike, video: torch.Tensor | np.ndarray, fps: float) -> Path:
    """Write one video ((C, F, H, W) in [-1, 1], or uint8 (F, H, W, 3), a NumPy array or a
    torch tensor) as .mp4 or .gif, atomically.

    A batch is tiled with ``grid`` first. mp4 is h264 (width and height are padded to even
    sizes by ffmpeg's requirements: we pad with black); gif uses codec="gif". A symbolic
    link at ``path`` is written through: the file it points to is replaced, the link stays.
    """
    import mediapy

    ensure_ffmpeg()
    path = Path(path)
    suffix = _check_suffix(path)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise TypeError(f"fps={fps!r} must be a number (frames per second), e.g. 6")
    if not 0 < fps < math.inf:
        raise ValueError(f"fps={fps!r} must be a finite number > 0")
    if torch.is_tensor(video) and video.dtype == torch.uint8:
        video = video.detach().cpu().numpy()  # pixels, as a NumPy array of them would be
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"uint8 frames must be (F, H, W, 3), got {video.shape}; a float video in "
                "[-1, 1] is (C, F, H, W)"
            )
        frames = video
    else:
        batch = _as_batch(video)
        frames = to_uint8(grid(batch) if batch.shape[0] > 1 else batch)
    if 0 in frames.shape:
        raise ValueError(f"the video is empty: frames (F, H, W, 3) of {frames.shape}")
    if suffix == ".mp4" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
        frames = np.pad(frames, pad)
    codec = "gif" if suffix == ".gif" else "h264"
    write = lambda tmp: mediapy.write_video(tmp, frames, fps=fps, codec=codec)  # noqa: E731
    return files.atomic_write(path, write, suffix=suffix, follow_links=True)  # a named output


def read_video(path: str | os.PathLike) -> tuple[torch.Tensor, float]:
    """Read a video file -> (video (3, F, H, W) float32 in [-1, 1], fps).

    Every decoded frame, rotated as the file says and in square pixels, as a player shows
    it (``video_files.decode_from``); fps as ffmpeg reads the file's header. A GIF's frame
    delays are whole hundredths of a second: one written at 6 fps alternates delays of 16
    and 17 (6 fps on average), and ffmpeg reads its rate from the shorter, 6.25 fps.
    """
    from ivref.video_files import decode_from, ffmpeg_exe, probe

    ffmpeg_exe()  # too old an ffmpeg says so, not that the file is unreadable
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {str(path)!r}")
    try:
        _, fps = probe(path)
        frames = list(decode_from(path, 0, fps))
    except (OSError, RuntimeError, ValueError) as err:  # ffmpeg's ways to reject a file
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(err).__name__
        raise ValueError(f"{str(path)!r} is not a readable video (ffmpeg: {reason})") from None
    if not frames:
        raise ValueError(f"{str(path)!r} is not a readable video (ffmpeg: no frames decoded)")
    return from_uint8(np.stack(frames)), fps


def show(
    videos: torch.Tensor,
    captions: Sequence[str] | None = None,
    fps: float = 3.0,
    width: int = 128,
    columns: int | None = None,
    **kwargs: Any,
) -> str | None:
    """Show a batch (B, C, F, H, W) in a notebook, one captioned video each (mediapy)."""
    import mediapy

    ensure_ffmpeg()
    batch = _as_batch(videos)
    frames = [to_uint8(v) for v in batch]
    titles = list(captions) if captions is not None else None
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"{len(titles)} captions for {len(frames)} videos")
    return mediapy.show_videos(
        frames, titles, width=width, fps=fps, columns=columns, codec="gif", **kwargs
    )


def plot_losses(
    log: Sequence[dict[str, Any]] | str | os.PathLike,
    keys: Sequence[str] = ("loss",),
    smooth: int = 20,
    ax: Any = None,
) -> Any:
    """Plot training curves from a train log (a list of records or a JSONL path); returns the axes.

    Each key is drawn raw (faint) and as a running mean over ``smooth`` steps; records without
    a key (e.g. evaluation metrics logged every K steps) are simply skipped for that key.
    """
    import matplotlib.pyplot as plt

    if isinstance(log, (str, os.PathLike)):
        log = files.read_log(log)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        rows = [(r["step"], r[key]) for r in log if key in r and r[key] is not None]
        if not rows:
            continue
        steps, values = (np.asarray(v, dtype=float) for v in zip(*rows, strict=True))
        line = ax.plot(steps, values, alpha=0.3 if len(values) > smooth else 1.0)[0]
        if len(values) > smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(
                steps[smooth - 1 :],
                np.convolve(values, kernel, "valid"),
                color=line.get_color(),
                label=key,
            )
        else:
            line.set_label(key)
    ax.set_xlabel("step")
    ax.legend()
    return ax
