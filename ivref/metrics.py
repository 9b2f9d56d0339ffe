"""Caption alignment: read a generated toy video back and score its color, shape and motion.

The toy world's stand-in for CLIP score [IV §3]: a video of "a red circle moving left" scores
on color if its foreground is nearest to red among the 7 palette colors, on shape if a circle
explains its foreground better than a square or triangle of the same area, and on motion if
its foreground's centroid travels leftwards. Sizes do not matter, so one reader serves every
stage of the cascade. Every frame must hold one shape: a video where the shape vanishes, or a
second one appears apart from it (``blobs``), has no shape and no motion to read; specks of
noise apart from the shape are left out of both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from ivref import data
from ivref.config_checks import is_integer

MIN_COVERAGE = 0.2  # per-pixel foreground below this is treated as background (noise floor)
MIN_AREA_PIXELS = 1.0  # a blob with less coverage than this (in pixels) is no shape
# A shape that travels less than this over the clip (a fraction of the shorter side) does not
# move: the toy world's shapes travel at least 0.25 (F - 1) / F (data.TRAVEL_RANGE over the
# F - 1 frame steps): 0.19 at 4 frames, 0.22 at 8.
MIN_TRAVEL = 0.1
# A blob of foreground holding at least this fraction of the coverage of the frame's largest
# blob is a second shape; smaller ones are specks of sampling noise, read with the shape.
SECOND_SHAPE = 0.25
# In-between frames whose shape misfit exceeds their key frames' by more than this are not
# solid shapes (``inbetween_misfit``): half of what a halfway cross-fade exceeds by for the
# toy world's slowest, largest shape. A cross-fade of key frames d apart, of a shape of size
# L, exceeds by about d / L: ~0.06 for the largest square, L = 0.52 of the frame, whose key
# frames lie MIN_KEY_STEP = 2 px apart (as in the toy and ci cascades' final videos). Over
# the renders of the 168 evaluation videos (84 captions x 2 seeds), at 16 x 64 x 64 the
# cross-fades exceed by 0.051 or more and the renders by at most 0.013; at 8 x 32 x 32,
# 0.072 or more and at most 0.023.
# (With k > 2 frames per key frame the blend at t = j / k misfits by 4 t (1 - t) d / L,
# 2 (k + 1) / (3 k) d / L on average: 0.75 d / L at k = 8.)
MAX_INBETWEEN_MISFIT = 0.03
# The check needs key frames this many pixels apart, for the slowest shape
# (``slowest_key_step``): closer, a cross-fade is near the shape drawn partway (anti-aliased
# edges already shade a sub-pixel shift), and renders' own excess is as large as a
# cross-fade's (at 16 x 16, 0.5 px apart: renders up to 0.048, cross-fades 0.029 on average).
MIN_KEY_STEP = 2.0


def foreground(videos: torch.Tensor) -> torch.Tensor:
    """Per-pixel foreground coverage c in [0, 1], (B, F, H, W): the brightest channel.

    Every palette color has a channel at 1 and the background is black, so an anti-aliased
    pixel with coverage a has max_c x = a (x in [0, 1]).
    """
    x = ((videos.float() + 1) / 2).clamp(0, 1)  # (B, C, F, H, W)
    c = reduce(x, "b c f h w -> b f h w", "max")
    return torch.where(c < MIN_COVERAGE, torch.zeros_like(c), c)


def read_color(videos: torch.Tensor, c: torch.Tensor) -> list[str | None]:
    """Nearest palette color to the mean chromaticity x / max_c x over well-covered pixels."""
    x = ((videos.float() + 1) / 2).clamp(0, 1)
    solid = (c > 0.5)[:, None]  # (B, 1, F, H, W)
    chroma = x / c[:, None].clamp_min(1e-6)
    count = reduce(solid.float(), "b 1 f h w -> b", "sum")
    mean = reduce(chroma * solid, "b c f h w -> b c", "sum") / count.clamp_min(1)[:, None]
    palette = torch.tensor(list(data.COLORS.values()))  # (7, 3)
    nearest = torch.cdist(mean, palette).argmin(-1).tolist()
    names = list(data.COLORS)
    return [names[k] if n > 0 else None for k, n in zip(nearest, count.tolist(), strict=True)]


def _centroids(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage-weighted centroids (B, F, 2) in pixels (x, y), and areas (B, F) in pixels."""
    _, _, h, w = c.shape
    ys = torch.arange(h, dtype=c.dtype) + 0.5
    xs = torch.arange(w, dtype=c.dtype) + 0.5
    area = reduce(c, "b f h w -> b f", "sum")
    cx = reduce(c * xs, "b f h w -> b f", "sum") / area.clamp_min(1e-6)
    cy = reduce(c * ys[:, None], "b f h w -> b f", "sum") / area.clamp_min(1e-6)
    return torch.stack([cx, cy], -1), area


def components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of a boolean mask (..., H, W): int64 labels, 0 off the mask.

    Each component of an image is labelled 1 + the largest flat index (within its H x W
    image) of its pixels. Found by propagation: every pixel on the mask takes the largest
    label of its 3 x 3 neighbourhood, then the value the pixel its new label names took in
    the same round (that pixel lies in the same component and took a label at least as
    large: the jump shortens long chains), until nothing changes (at most H W rounds; about
    7 for the toy world's shapes at 64 x 64).
    """
    h, w = mask.shape[-2:]
    on = mask.reshape(-1, 1, h, w)
    exact = torch.float32 if h * w < 2**24 else torch.float64  # labels are whole numbers
    index = torch.arange(1, h * w + 1, dtype=exact, device=mask.device).reshape(1, 1, h, w)
    labels = torch.where(on, index, 0.0)
    for _ in range(h * w):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1).view(len(on), h * w)
        grown = grown.gather(1, (grown.long() - 1).clamp_min(0)).view_as(labels)
        grown = torch.where(on, grown, 0.0)
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long().reshape(mask.shape)


def blobs(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shapes in each frame of foreground coverage c (B, F, H, W): how many (B, F), and
    the coverage of the largest blob alone (B, F, H, W), which the shape and motion are read
    from (specks of sampling noise apart from the shape do not move its centroid).

    A blob is 8-connected foreground (``components``); it counts as a shape if it holds at
    least ``MIN_AREA_PIXELS`` of coverage and ``SECOND_SHAPE`` of the frame's largest blob's.
    1 where a frame holds one shape; 0 where it holds none (or only specks); 2 or more where
    a second shape stands apart from the first (two shapes that touch are one blob).
    """
    b, f, h, w = c.shape
    labels = components(c > 0).reshape(b * f, h * w)  # label L: pixel L - 1 of its frame
    frame = torch.arange(b * f, device=c.device)[:, None] * (h * w + 1)
    mass = torch.bincount(  # each blob's coverage, at its label
        (frame + labels).flatten(), weights=c.flatten().double(), minlength=b * f * (h * w + 1)
    ).reshape(b * f, h * w + 1)[:, 1:]
    largest, where = mass.max(-1, keepdim=True)
    count = ((mass >= MIN_AREA_PIXELS) & (mass >= SECOND_SHAPE * largest)).sum(-1)
    main = torch.where(labels == where + 1, c.reshape(b * f, h * w), 0.0)
    return count.reshape(b, f), main.reshape(c.shape)


def shape_counts(c: torch.Tensor) -> torch.Tensor:
    """Shapes per frame (B, F) of foreground coverage c (B, F, H, W) (``blobs``)."""
    return blobs(c)[0]


def template_errors(
    c: torch.Tensor, found: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How well each toy shape explains each frame's largest blob of coverage c (B, F, H, W).

    Returns the L1 distance (B, F, 3) between the blob and the circle, square and triangle
    (``data.SHAPES`` order) of the blob's area and centroid, the blob's coverage in pixels
    (B, F), and which frames hold one shape (B, F; ``blobs``). For area A (units of the
    shorter side S): circle r = sqrt(A / pi), square r = sqrt(A) / 2, triangle r = sqrt(A / 2)
    with its center r / 3 above the centroid. ``found``: ``blobs(c)`` where already found.
    """
    b, f, h, w = c.shape
    s = min(h, w)
    count, main = blobs(c) if found is None else found
    centroid, area = _centroids(main)
    area_u = (area / s**2).double().flatten()
    center = (centroid / s).double().flatten(0, 1)  # (B*F, 2)
    target = rearrange(main, "b f h w -> (b f) h w")
    radius_and_lift = {
        "circle": (torch.sqrt(area_u / math.pi), 0.0),
        "square": (torch.sqrt(area_u) / 2, 0.0),
        "triangle": (torch.sqrt(area_u / 2), 1 / 3),
    }
    errors = []
    for shape in data.SHAPES:
        radius, lift = radius_and_lift[shape]
        shifted = center - torch.stack([torch.zeros_like(radius), radius * lift], -1)
        template = data.coverage(shape, shifted, radius, w, h)
        errors.append(reduce((template - target).abs(), "(b f) h w -> b f", "sum", b=b))
    return torch.stack(errors, -1), area, count == 1


def read_shape(c: torch.Tensor, found: tuple | None = None) -> list[str | None]:
    """The shape whose same-area, same-centroid rendering best matches the foreground's
    largest blob (L1, ``template_errors``), summed over the frames; the smallest wins.

    Scale-invariant by construction. None unless every frame holds one shape (``blobs``):
    the shape vanished, or a second one stands apart. Two shapes that touch are one blob,
    read as the template that fits their union best. ``found``: ``blobs(c)`` where already
    found.
    """
    errors, _, valid = template_errors(c, found)
    best = (errors * valid[..., None]).sum(1).argmin(-1).tolist()
    whole = valid.all(-1).tolist()  # a shape in every frame
    return [data.SHAPES[k] if ok else None for k, ok in zip(best, whole, strict=True)]


def read_motion(c: torch.Tensor, found: tuple | None = None) -> list[str | None]:
    """Direction of the largest blob's centroid's least-squares velocity over frames:
    left/right/up/down.

    v = sum_k (k - k_mean)(p_k - p_mean) / sum_k (k - k_mean)^2 over the frames; the larger
    of |v_x|, |v_y| names the axis, its sign the direction (y grows downwards). None where a
    frame holds no shape or two (``blobs``), or the shape travels less than ``MIN_TRAVEL``
    of the shorter side over the clip (|v| (F - 1)): a still shape has no direction,
    whatever noise says. ``found``: ``blobs(c)`` where already found.
    """
    count, main = blobs(c) if found is None else found
    centroid, _ = _centroids(main)
    valid = (count == 1).float()  # (B, F)
    k = torch.arange(c.shape[1], dtype=c.dtype)[None].expand_as(valid)
    n = valid.sum(-1).clamp_min(1)
    k_mean = (k * valid).sum(-1) / n
    p_mean = (centroid * valid[..., None]).sum(1) / n[:, None]
    dk = (k - k_mean[:, None]) * valid
    v = (dk[..., None] * (centroid - p_mean[:, None])).sum(1) / (dk**2).sum(-1).clamp_min(1e-6)[
        :, None
    ]
    out: list[str | None] = []
    frames, shortest = c.shape[1], min(c.shape[2:])
    for (vx, vy), m in zip(v.tolist(), valid.sum(-1).tolist(), strict=True):
        travel = max(abs(vx), abs(vy)) * (frames - 1)
        if m < frames or m < 2 or travel < MIN_TRAVEL * shortest:
            out.append(None)
        elif abs(vx) >= abs(vy):
            out.append("right" if vx > 0 else "left")
        else:
            out.append("down" if vy > 0 else "up")
    return out


def check_videos(videos: torch.Tensor) -> None:
    """Videos to read: floats (B >= 1, 3, F, H, W) in [-1, 1], as ``Cascade.generate`` returns
    (a uint8 or 0-255 video read silently wrong). A [0, 1] video passes this check and reads
    wrong (its black is 0): map it with x * 2 - 1 first."""
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] != 3:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"expected videos (B, 3, F, H, W), got {shape}")
    if not videos.shape[0]:
        raise ValueError("no videos to read (B = 0)")
    if not videos.is_floating_point():
        raise ValueError(f"videos must be floats in [-1, 1]; got {videos.dtype}")
    low, high = float(videos.min()), float(videos.max())
    if not (-1.001 <= low and high <= 1.001):  # (nan fails too)
        raise ValueError(
            f"videos must be in [-1, 1] (as Cascade.generate returns); got values in "
            f"[{low:g}, {high:g}]: map a 0-255 video with x / 127.5 - 1"
        )


def read_videos(videos: torch.Tensor) -> list[tuple[str | None, str | None, str | None]]:
    """(color, shape, motion) read from each video (B, 3, F, H, W) in [-1, 1]; None: unreadable."""
    check_videos(videos)
    videos = videos.detach().cpu()  # the palette and the pixel grids are on the CPU
    c = foreground(videos)
    found = blobs(c)
    return list(
        zip(read_color(videos, c), read_shape(c, found), read_motion(c, found), strict=True)
    )


def caption_alignment(videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, Any]:
    """Per-attribute and all-three accuracy of videos against their toy prompts.

    Returns {"color", "shape", "motion", "all": accuracies in [0, 1], "n": B, "predictions":
    one dict per video (prompt, read color/shape/motion, correct)}. Motion counts only prompts
    that name one (image prompts have none); "all" needs every attribute the prompt names.
    """
    check_videos(videos)
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {videos.shape[0]} videos")
    wanted = [data.parse_caption(p) for p in prompts]
    read = read_videos(videos.detach().cpu())
    predictions = []
    hits = {"color": 0, "shape": 0, "motion": 0, "all": 0}
    n_motion = 0
    for prompt, want, got in zip(prompts, wanted, read, strict=True):
        ok_color, ok_shape = got[0] == want[0], got[1] == want[1]
        ok_motion = want[2] is None or got[2] == want[2]
        n_motion += want[2] is not None
        hits["color"] += ok_color
        hits["shape"] += ok_shape
        hits["motion"] += ok_motion and want[2] is not None
        hits["all"] += ok_color and ok_shape and ok_motion
        predictions.append(
            dict(
                prompt=prompt,
                color=got[0],
                shape=got[1],
                motion=got[2],
                correct=ok_color and ok_shape and ok_motion,
            )
        )
    n = len(prompts)
    return {
        "color": hits["color"] / max(n, 1),
        "shape": hits["shape"] / max(n, 1),
        "motion": hits["motion"] / n_motion if n_motion else float("nan"),
        "all": hits["all"] / max(n, 1),
        "n": n,
        "predictions": predictions,
    }


def centroid_track(videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (B, F, 2) in pixels (x, y) of each frame's largest blob of foreground, and
    which frames hold one shape (B, F): a centroid tracks the shape only there (``blobs``)."""
    check_videos(videos)
    count, main = blobs(foreground(videos.detach().cpu()))
    centroid, _ = _centroids(main)
    return centroid, count == 1


def motion_progress(
    videos: torch.Tensor,
    prompts: Sequence[str],
    max_back: float = 1.0,
    min_step: float = 0.4,
    min_fraction: float = 0.8,
) -> list[bool | None]:
    """Whether the shape moves along the captioned direction frame after frame, per video.

    Steps d_k = (c_{k+1} - c_k) . u, with c the centroid in pixels and u the caption's unit
    direction. A video passes if no step goes back more than ``max_back`` pixels and at
    least ``min_fraction`` of steps advance ``min_step`` pixels or more: interpolation, not
    frame repetition (which stands still every other step). None for prompts without motion.
    The defaults are pixels of the toy cascade's final videos (64 px, 16 frames); at other
    sizes scale both by ``motion_step_scale``. A video fails where a frame holds no shape or
    two apart (``blobs``). A cross-fade of neighbouring frames passes: its two faint
    copies overlap (one blob) and its centroid lands halfway; ``inbetween_misfit`` tells
    the two apart.
    """
    check_videos(videos)
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {videos.shape[0]} videos")
    centroid, valid = centroid_track(videos)
    out: list[bool | None] = []
    for i, prompt in enumerate(prompts):
        motion = data.parse_caption(prompt)[2]
        if motion is None:
            out.append(None)
            continue
        if not bool(valid[i].all()):
            out.append(False)  # the shape vanished from a frame, or a second one appeared
            continue
        u = torch.tensor(data.MOTIONS[motion], dtype=centroid.dtype)
        steps = (centroid[i, 1:] - centroid[i, :-1]) @ u
        ok = bool((steps >= -max_back).all()) and float((steps >= min_step).float().mean()) >= (
            min_fraction
        )
        out.append(ok)
    return out


def shape_misfit(c: torch.Tensor, found: tuple | None = None) -> torch.Tensor:
    """How far each frame (B, F) of coverage c (B, F, H, W) is from one solid shape: the L1
    distance between its largest blob and the clip's best-fitting template (``read_shape``'s),
    over the blob's coverage. ~0.004 for renders at 64 x 64 (anti-aliased edges); NaN
    where a frame holds no shape or two (``blobs``). ``found``: ``blobs(c)`` where found."""
    errors, area, valid = template_errors(c, found)
    best = (errors * valid[..., None]).sum(1).argmin(-1)  # (B,): the clip's shape
    error = errors.gather(-1, best[:, None, None].expand(*errors.shape[:2], 1))[..., 0]
    misfit = error / area.double().clamp_min(1e-6)
    return torch.where(valid, misfit, torch.full_like(misfit, math.nan))


def inbetween_misfit(videos: torch.Tensor, key_every: int) -> torch.Tensor:
    """Mean ``shape_misfit`` of the in-between frames minus that of the key frames (B,).

    Key frames are frames 0, k, 2k, ... (k = ``key_every``): those a temporal SR stage was
    given; in-between frames are those it made between two of them (frames after the last
    key frame are extrapolated, and left out). A true interpolation makes in-between frames
    as solid as its key frames (about 0); a cross-fade of neighbouring key frames shows two
    faint overlapping copies, which no single shape explains: for a shape of size L whose
    key frames lie d apart, its halfway frame misfits by about d / L (exactly, for a
    pixel-aligned square moving an even number of pixels along an axis). Frame repetition
    scores 0: tell it from motion by ``motion_progress``. NaN where one of the key or
    in-between frames holds no shape or two.
    """
    check_videos(videos)
    frames = videos.shape[2]
    if not is_integer(key_every) or not 2 <= key_every < frames:
        raise ValueError(
            f"key_every={key_every!r} must be an integer from 2 to {frames - 1} (the videos "
            f"have {frames} frames): key frames are 0, k, 2k, ..., with frames between them"
        )
    misfit = shape_misfit(foreground(videos.detach().cpu()))
    index = torch.arange(frames)
    key = index % key_every == 0
    between = ~key & (index < (frames - 1) // key_every * key_every)  # before the last key
    return misfit[:, between].mean(1) - misfit[:, key].mean(1)


def slowest_key_step(width: int, height: int, num_frames: int, key_every: int) -> float:
    """Pixels between neighbouring key frames (every ``key_every``-th) of the toy world's
    slowest shape in a clip of this size: key_every x TRAVEL_RANGE[0] x S / F, with S the
    shorter side (a shape travels TRAVEL_RANGE[0] S or more over the clip's F frames)."""
    return key_every * data.TRAVEL_RANGE[0] * min(width, height) / num_frames


def motion_step_scale(width: int, height: int, num_frames: int) -> float:
    """How long a frame step of a toy-world shape is at this size, against one in the toy
    cascade's final videos (64 px, 16 frames): shapes cross the same fraction of the frame
    in every clip, so a step is (min(width, height) / num_frames) / (64 / 16) of one there."""
    return (min(width, height) / num_frames) / (64 / 16)


def laplacian_energy(videos: torch.Tensor) -> torch.Tensor:
    """Mean |Laplacian| per video (B,): detail at the finest scale, in [-1, 1] units.

    L = x[i-1, j] + x[i+1, j] + x[i, j-1] + x[i, j+1] - 4 x[i, j] on every channel and frame,
    over interior pixels. A blurred (upsampled) video has less of it than a sharp one.
    """
    x = videos.detach().float().cpu()
    lap = (
        x[..., :-2, 1:-1]
        + x[..., 2:, 1:-1]
        + x[..., 1:-1, :-2]
        + x[..., 1:-1, 2:]
        - 4 * x[..., 1:-1, 1:-1]
    )
    return lap.abs().flatten(1).mean(1)
