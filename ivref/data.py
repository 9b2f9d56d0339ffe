"""Captioned training videos: the procedural moving-shapes world (real videos: video_folder.py).

The toy world (docs/design.md "Toy data"): one anti-aliased shape (7 colors x 3 shapes) on a dark
background, moving in a straight line (4 motions), captioned "a red circle moving left".
A scene is defined in continuous time (seconds) and in units of the frame's shorter side,
so the same scene renders to the same picture at every stage's size and frame rate: frame k
shows time t_k = k / fps. A base-stage clip (8 frames @ 3 fps) and a TSR clip (16 @ 6) of the
same scene agree on every base frame; an SSR clip is the same video at more pixels.

Images for joint image-video training [IV §2.6] follow [VDM §4]: an image sample is a
video-length pack of independent still frames. CHOICE: all frames of a pack share one
caption without motion ("a red circle") and differ in position and size; the U-Net is told
``is_image`` and keeps the frames from mixing in time.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import torch
from einops import rearrange

from ivref.video_folder import VideoTextFolder as VideoTextFolder  # data.VideoTextFolder stays

COLORS: dict[str, tuple[float, float, float]] = {  # RGB in [0, 1]
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
BACKGROUND = (0.0, 0.0, 0.0)  # dark background, -1 in model space
SHAPES = ("circle", "square", "triangle")
MOTIONS: dict[str, tuple[float, float]] = {  # unit direction (dx, dy); y grows downwards
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLORS, SHAPES, MOTIONS))
# Held out of the train split (8 of 84): every color, shape and motion still trains elsewhere.
# CHOICE: the README's example "a red circle moving left" stays in training.
HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("red", "square", "up"),
    ("green", "square", "right"),
    ("blue", "triangle", "up"),
    ("yellow", "circle", "down"),
    ("magenta", "square", "left"),
    ("cyan", "triangle", "right"),
    ("white", "circle", "up"),
    ("red", "triangle", "down"),
)
TRAIN_COMBOS = tuple(c for c in COMBOS if c not in HELDOUT)
SPLITS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "train": TRAIN_COMBOS,
    "heldout": HELDOUT,
    "all": COMBOS,
}
SIZE_RANGE = (0.16, 0.26)  # half-size r of the shape, in units of the shorter side
TRAVEL_RANGE = (0.25, 0.45)  # distance travelled over one clip (F / fps seconds), same units
SUPERSAMPLE = 4  # anti-aliasing: coverage from 4 x 4 sub-pixel samples


def caption(color: str, shape: str, motion: str | None) -> str:
    """The caption of a scene: "a red circle moving left", or "a red circle" for an image."""
    return f"a {color} {shape}" + (f" moving {motion}" if motion else "")


CAPTIONS: tuple[str, ...] = tuple(caption(*c) for c in COMBOS)


def parse_caption(text: str) -> tuple[str, str, str | None]:
    """ "a red circle moving left" -> ("red", "circle", "left"); "a red circle" -> (.., None)."""
    words = text.strip().lower().split()
    ok = len(words) in (3, 5) and words[0] == "a"
    ok = ok and words[1] in COLORS and words[2] in SHAPES
    if len(words) == 5:
        ok = ok and words[3] == "moving" and words[4] in MOTIONS
    if not ok:
        raise ValueError(
            f"caption {text!r} is outside the toy vocabulary: expected 'a COLOR SHAPE [moving "
            f"MOTION]' with COLOR in {list(COLORS)}, SHAPE in {list(SHAPES)}, "
            f"MOTION in {list(MOTIONS)}"
        )
    return words[1], words[2], words[4] if len(words) == 5 else None


@dataclass(frozen=True)
class Scene:
    """One toy clip in size-free units: the shape moves from ``start`` at ``velocity`` per s."""

    color: str
    shape: str
    motion: str | None  # None: a still image
    size: float  # half-size r (units of the shorter side)
    start: tuple[float, float]  # center (x, y) at t = 0
    velocity: tuple[float, float]  # (dx/dt, dy/dt) in units per second


def _extent(width: int, height: int) -> tuple[float, float]:
    """The frame's size in units of its shorter side: (W / S, H / S)."""
    s = min(width, height)
    return width / s, height / s


def random_scene(
    text: str,
    width: int,
    height: int,
    duration: float,
    generator: torch.Generator | None = None,
) -> Scene:
    """A random scene for a caption: size, start and speed drawn so the shape stays in frame.

    r ~ U(SIZE_RANGE), travel d ~ U(TRAVEL_RANGE), speed = d / duration; the start is uniform
    over positions that keep the whole shape inside the frame for the whole clip.
    """
    color, shape, motion = parse_caption(text)
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    lx, ly = _extent(width, height)
    r = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * u[0]
    d = 0.0 if motion is None else TRAVEL_RANGE[0] + (TRAVEL_RANGE[1] - TRAVEL_RANGE[0]) * u[1]
    dx, dy = MOTIONS[motion] if motion else (0.0, 0.0)
    start = []
    for extent, direction, uu in ((lx, dx, u[2]), (ly, dy, u[3])):
        room = max(extent - 2 * r - d * abs(direction), 0.0)
        low = r + (d if direction < 0 else 0.0)
        start.append(low + room * uu)
    return Scene(
        color, shape, motion, r, (start[0], start[1]), (dx * d / duration, dy * d / duration)
    )


class _Placement(TypedDict):
    """A tensor's dtype and device, as keywords of a factory (``torch.arange(n, **grid)``)."""

    dtype: torch.dtype
    device: torch.device


def coverage(
    shape: str, centers: torch.Tensor, sizes: torch.Tensor, width: int, height: int
) -> torch.Tensor:
    """Fraction of each pixel the shape covers, (F, H, W), from SUPERSAMPLE^2 sub-pixel samples.

    centers (F, 2) and sizes (F,) are in units of the shorter side S; pixel (i, j) spans
    [j, j+1] x [i, i+1] / S. Circle: |p - c| <= r; square: max |p - c| <= r; triangle: apex
    (cx, cy - r), base y = cy + r from cx - r to cx + r (fills half its bounding box).
    """
    s = min(width, height)
    k = SUPERSAMPLE
    # offsets in float64 (exact frame-rate consistency), the 2D tests in float32 (speed);
    # everything on ``centers``' device
    grid: _Placement = {"dtype": centers.dtype, "device": centers.device}
    xs = (torch.arange(width * k, **grid) + 0.5) / (k * s)
    ys = (torch.arange(height * k, **grid) + 0.5) / (k * s)
    x = (xs[None, None, :] - centers[:, 0, None, None]).float()  # (F, 1, W*k)
    y = (ys[None, :, None] - centers[:, 1, None, None]).float()  # (F, H*k, 1)
    r = sizes[:, None, None].float()
    if shape == "circle":
        inside = x**2 + y**2 <= r**2
    elif shape == "square":
        inside = (x.abs() <= r) & (y.abs() <= r)
    elif shape == "triangle":
        inside = (y <= r) & (2 * x.abs() <= y + r)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {list(SHAPES)}")
    inside = inside.to(torch.float32)
    return rearrange(inside, "f (h a) (w b) -> f h w (a b)", a=k, b=k).mean(-1)


def _motion_frames(scene: Scene, num_frames: int, fps: float) -> tuple[list, list]:
    """Per-frame centers and sizes of a scene: c_k = start + velocity * k / fps."""
    (x0, y0), (vx, vy) = scene.start, scene.velocity
    centers = [(x0 + vx * k / fps, y0 + vy * k / fps) for k in range(num_frames)]
    return centers, [scene.size] * num_frames


def _frames(
    text: str,
    num_frames: int,
    width: int,
    height: int,
    fps: float,
    generator: torch.Generator | None,
) -> tuple[list, list]:
    """Random per-frame (centers, sizes) for a caption: one moving scene, or F independent
    stills when the caption has no motion (an image pack)."""
    if parse_caption(text)[2] is not None:
        scene = random_scene(text, width, height, num_frames / fps, generator)
        return _motion_frames(scene, num_frames, fps)
    stills = [random_scene(text, width, height, 1.0, generator) for _ in range(num_frames)]
    return [sc.start for sc in stills], [sc.size for sc in stills]


def render_batch(
    texts: Sequence[str],
    centers: torch.Tensor,
    sizes: torch.Tensor,
    width: int,
    height: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Paint clips from per-frame geometry: centers (B, F, 2), sizes (B, F) -> (B, 3, F, H, W).

    One vectorised coverage call per shape; each pixel is background + (color - background)
    times its coverage, mapped to [-1, 1]. Painted on ``device`` (default: the geometry's):
    a training step on a GPU gets its batch without a host-side render and copy.
    """
    device = torch.device(device) if device is not None else centers.device
    if device.type == "mps":  # no float64 there: offsets in float32 (~1e-7 of the frame)
        centers, sizes = centers.float(), sizes.float()
    centers, sizes = centers.to(device), sizes.to(device)
    b, f = sizes.shape
    parsed = [parse_caption(t) for t in texts]
    cov = torch.zeros(b, f, height, width, device=device)
    for shape in SHAPES:
        rows = [i for i, p in enumerate(parsed) if p[1] == shape]
        if rows:
            flat = coverage(
                shape, centers[rows].flatten(0, 1), sizes[rows].flatten(), width, height
            )
            cov[rows] = rearrange(flat, "(b f) h w -> b f h w", f=f)
    fg = torch.tensor([COLORS[p[0]] for p in parsed], device=device)[..., None, None, None]
    bg = torch.tensor(BACKGROUND, device=device)[None, :, None, None, None]  # (1, 3, 1, 1, 1)
    return (bg + (fg - bg) * cov[:, None]) * 2 - 1


def render_scene(
    scene: Scene, num_frames: int, width: int, height: int, fps: float
) -> torch.Tensor:
    """Render a scene: (3, F, H, W) float32 in [-1, 1]; frame k at t_k = k / fps."""
    centers, sizes = _motion_frames(scene, num_frames, fps)
    text = caption(scene.color, scene.shape, scene.motion)
    geometry = (
        torch.tensor([centers], dtype=torch.float64),
        torch.tensor([sizes], dtype=torch.float64),
    )
    return render_batch([text], *geometry, width, height)[0]


def render(
    text: str,
    num_frames: int,
    width: int,
    height: int,
    fps: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render a caption as one clip (3, F, H, W) in [-1, 1]; deterministic given the generator.

    A caption without motion ("a red circle") renders an image pack: F independent stills.
    """
    centers, sizes = _frames(text, num_frames, width, height, fps, generator)
    geometry = (
        torch.tensor([centers], dtype=torch.float64),
        torch.tensor([sizes], dtype=torch.float64),
    )
    return render_batch([text], *geometry, width, height)[0]


class ToyVideos:
    """An endless stream of captioned toy clips for one stage's (num_frames, width, height, fps).

    ``sample`` draws uniformly over the split's (color, shape, motion) combinations; with
    probability ``image_ratio`` a sample is an image pack instead ([VDM §4], [IV §2.6]).
    All randomness comes from ``generator`` (default: ``self.generator``, seeded by ``seed``),
    a CPU generator, so a seed gives the same clips whichever ``device`` paints them.
    """

    def __init__(
        self,
        num_frames: int,
        width: int,
        height: int,
        fps: float = 3.0,
        split: Literal["train", "heldout", "all"] = "train",
        image_ratio: float = 0.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
        if not 0.0 <= image_ratio <= 1.0:
            raise ValueError(f"image_ratio={image_ratio} must be in [0, 1]")
        self.num_frames, self.width, self.height, self.fps = num_frames, width, height, fps
        self.split, self.image_ratio = split, image_ratio
        self.combos = SPLITS[split]
        self.captions = tuple(caption(*c) for c in self.combos)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """-> (videos (B, 3, F, H, W) float32 in [-1, 1] on ``device``, captions, is_image (B,)
        bool on the CPU)."""
        g = generator if generator is not None else self.generator
        index = torch.randint(len(self.combos), (batch_size,), generator=g).tolist()
        is_image = torch.rand(batch_size, generator=g) < self.image_ratio
        texts = [
            caption(c, s, None if img else m)
            for (c, s, m), img in zip(
                (self.combos[i] for i in index), is_image.tolist(), strict=True
            )
        ]
        frames = [_frames(t, self.num_frames, self.width, self.height, self.fps, g) for t in texts]
        centers = torch.tensor([c for c, _ in frames], dtype=torch.float64)
        sizes = torch.tensor([s for _, s in frames], dtype=torch.float64)
        videos = render_batch(texts, centers, sizes, self.width, self.height, self.device)
        return videos, texts, is_image
