"""Real captioned videos for training: a folder of files and an index of their captions.

``VideoTextFolder`` has the toy world's ``sample`` contract (data.py), so a ``Trainer`` takes
either as its ``dataset``. Decoding is ffmpeg's (imageio-ffmpeg's bundled binary; mediapy
reads the headers); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import unicodedata
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath, PureWindowsPath
from stat import S_ISREG
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F_nn
from einops import rearrange

from ivref.config_checks import is_integer
from ivref.decode_ahead import DecodeAhead
from ivref.text_cache import check_prompts
from ivref.video_files import center_crop as center_crop  # re-exported: video_folder.center_crop
from ivref.video_files import decode_from as decode_from  # looked up here, so tests patch it here
from ivref.video_files import exact_fps as exact_fps  # re-exported: video_folder.exact_fps
from ivref.video_files import ffmpeg_exe, probe, read_index


def reused_probe(entry: object, stat: os.stat_result) -> tuple[int, float] | None:
    """(frames, fps) of a ``probes`` entry for a file with this ``stat``, or None: no entry,
    one that is not {size, mtime_ns, ctime_ns, ino, frames, fps} (a damaged cache is
    re-probed, not trusted), or a file changed since: another size, modification time,
    status-change time or file (inode; a copy that kept the time, ``rsync -a`` or ``cp -p``
    of a re-encoded file, is another). The status-change time moves on any write, and no
    tool sets it back (``touch -d`` and ``os.utime`` set the modification time alone), so a
    file rewritten in place at the same size, its time restored, is probed again too."""
    if not isinstance(entry, Mapping):
        return None
    keys = ("size", "mtime_ns", "ctime_ns", "ino", "frames", "fps")
    size, mtime, ctime, ino, frames, fps = (entry.get(k) for k in keys)
    if not all(is_integer(v) for v in (size, mtime, ctime, ino, frames)):
        return None
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf:
        return None
    now = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    frames = cast(int, frames)  # an integer, NumPy's too (is_integer above)
    if (size, mtime, ctime, ino) != now or frames < 0:
        return None
    return int(frames), float(fps)


def _caption_reason(text: object) -> str | None:
    """Why an index row's caption cannot be trained on (None: it can). Such a row is
    skipped before its file is probed."""
    if not isinstance(text, str) or not text.strip():
        return f"caption {text!r}: give a non-empty string"
    try:  # text no encoder can read (a lone surrogate) would stop training when drawn
        check_prompts([text])
    except ValueError as err:
        return f"caption: {err}"
    return None


def stat_is_file(stat: os.stat_result) -> bool:
    """Whether a ``stat`` (followed through links) is of a regular file."""
    return S_ISREG(stat.st_mode)


OUTSIDE = ("an absolute path", "above the folder")  # how outside_reason's reasons begin


def outside_reason(rel: str) -> str | None:
    """Why an index's path does not name a file inside its folder (None where it does):
    absolute or rooted on any system (``/data/a.mp4``, ``C:\\a.mp4``, ``\\data\\a.mp4``,
    which Windows reads from the drive's root), or taken above the folder by ``..``
    (``../a.mp4``; ``x/../a.mp4`` stays inside)."""
    path = PurePath(rel)
    if path.is_absolute() or path.anchor or PureWindowsPath(rel).anchor or rel[:1] in "/\\":
        return f"{OUTSIDE[0]}: give it relative to the folder (runs follow a moved folder)"
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return f"{OUTSIDE[1]} ('..'): give a file inside it (runs follow a moved folder)"
    return None


class VideoTextFolder:
    """Real captioned videos: ``root`` plus an index (CSV with columns path,caption, or JSONL).

    A clip is num_frames / fps seconds of its file from a start frame s drawn uniformly over
    every start that fits (``random_start=False``: always the file's beginning), decoded
    from s (``decode_from``) up to the last frame it needs, frame-skipped to ``fps`` (frame
    k is source frame s + round(k * src_fps / fps)) and resized to (height, width) with
    antialiasing: ``fit="crop"`` first cuts the largest centred window of the clip's aspect
    ratio (a 16:9 source for a square stage loses its sides), ``fit="squash"`` resizes the
    whole frame (shapes are stretched). ffmpeg seeks to the keyframe before s and decodes on
    from there, so a late start in a long file costs up to one keyframe interval more than
    the clip. ``workers`` files are probed at once when the folder is made, and ``workers``
    clips of a batch are decoded at once (threads, each driving an ffmpeg process), and
    ``prefetch=True`` decodes the next batch in the background after
    each ``sample``; the clips depend on neither, nor does ``state_dict``.

    Probing decodes every file once (its frame count is what ffmpeg decodes, not what the
    header says), a process per file: for a large folder, minutes at every start. ``probes``
    takes an earlier folder's ``probes`` ({path: {size, mtime_ns, ctime_ns, ino, frames,
    fps}}, e.g. from ``probe_cache.read``) and reuses the entry of every file whose size,
    modification and status-change times (ns) and inode are unchanged (``reused_probe``);
    ``self.probes`` holds this folder's, to save for the next (``probe_cache.write``). A
    file rewritten in place at the same size within the file system's time resolution
    (2 s on FAT) would keep a stale entry: delete the cache to probe afresh.

    Paths are relative to ``root`` and inside it, so a folder that moves keeps its files and
    its digest (``state_dict``): an absolute path, or one that ``..`` takes above ``root``,
    is skipped with that reason. Files that are missing, unreadable, shorter than
    num_frames / fps seconds or of a lower
    frame rate than ``fps`` (their frames would repeat), and rows whose caption is not a
    non-empty string (or holds a lone surrogate: no tokenizer reads it), are reported with a
    warning, listed in ``self.skipped`` as (path,
    reason), and skipped: they never stop a run. A folder with no usable video is a
    ValueError.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        index_file: str | os.PathLike,
        num_frames: int,
        width: int,
        height: int,
        fps: float,
        seed: int = 0,
        random_start: bool = True,
        fit: Literal["crop", "squash"] = "crop",
        workers: int = 1,
        prefetch: bool = False,
        probes: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (("num_frames", num_frames), ("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer (the stage's)")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf:
            raise ValueError(f"fps={fps!r} must be a positive finite number (the stage's)")
        if fit not in ("crop", "squash"):
            raise ValueError(f"fit={fit!r}; allowed: 'crop' (centred window) or 'squash'")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} must be a positive integer (decoders at once)")
        if not is_integer(seed) or not 0 <= seed < 2**63:
            raise ValueError(f"seed={seed!r} must be an integer from 0 to 2**63 - 1")
        seed = int(seed)  # NumPy's too
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start={random_start!r}; allowed: True or False")
        self.workers = workers
        if not isinstance(prefetch, bool):
            raise ValueError(f"prefetch={prefetch!r}; allowed: True or False")
        self.prefetch = prefetch
        self._ahead: DecodeAhead | None = None  # the next batch's first round, decoding
        self.fit = fit
        if probes is not None and not isinstance(probes, Mapping):
            raise ValueError(
                f"probes={type(probes).__name__}: give a mapping {{path: entry}} (an earlier "
                "folder's .probes), or None"
            )
        self._known = dict(probes or {})  # entries are checked as they are used
        self.probes: dict[str, dict[str, Any]] = {}  # every file probed fine: its entry
        self.root = Path(root)
        if not self.root.is_dir():
            what = "a file" if self.root.exists() else "does not exist"
            raise ValueError(
                f"root {str(root)!r} {'is ' if self.root.exists() else ''}{what}: give the "
                "folder that the index's paths are relative to"
            )
        self.num_frames, self.width, self.height, self.fps = num_frames, width, height, fps
        self.random_start = random_start
        self.skipped: list[tuple[str, str]] = []
        self.items: list[tuple[Path, str, float, int]] = []  # (path, caption, src fps, frames)
        usable: list[list] = []  # as the index names them: the folder may move
        rows = read_index(Path(index_file))
        captioned = [(rel, _caption_reason(text)) for rel, text in rows]  # a row without a
        to_probe = [rel for rel, why in captioned if why is None]  # usable caption: no probe
        if workers == 1 or len(to_probe) < 2:
            found = [self._check(rel) for rel in to_probe]
        else:  # each probe is an ffmpeg process decoding its file: ``workers`` at once
            with ThreadPoolExecutor(min(workers, len(to_probe))) as pool:
                found = list(pool.map(self._check, to_probe))
        probed = iter(found)
        for (rel, text), (_, why) in zip(rows, captioned, strict=True):
            if why:  # no usable caption: not probed
                self._skip(rel, why)
                continue
            reason, src_fps, n, path = next(probed)
            if reason:
                self._skip(rel, reason)
            else:
                text = cast(str, text)  # a usable caption is a str (_caption_reason)
                self.items.append((path, text, exact_fps(src_fps), n))
                usable.append([str(rel), text, src_fps, n])  # the rate as probed: digests stay
        if not self.items:
            raise ValueError(
                f"no usable videos in {str(index_file)!r} under {str(self.root)!r} for "
                f"{num_frames} frames @ {fps:g} fps: {self.skipped or 'the index is empty'}"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self._usable = list(self.items)  # as probed: what ``state_dict`` numbers items by
        self._numbers = list(range(len(self.items)))  # each item's place in ``_usable``
        digest = hashlib.sha256(json.dumps(usable).encode()).digest()
        self._digest = int.from_bytes(digest[:8], "big", signed=True)

    def _skip(self, rel: str | Path, reason: str, stacklevel: int = 3) -> None:
        warnings.warn(f"VideoTextFolder: skipping {str(rel)!r}: {reason}", stacklevel=stacklevel)
        self.skipped.append((str(rel), reason))

    def _check(self, rel: str) -> tuple[str | None, float, int, Path]:
        """``_probe`` of an index's path, which must name a file inside ``root``, and the
        file's path. A name the index spells in another Unicode normalization than the file
        system (an index in NFC, files copied from macOS in NFD: "é" as e + accent) names
        the file that is there."""
        path = self.root / str(rel)
        reason = outside_reason(rel)
        if reason:
            return reason, 0.0, 0, path
        if not os.path.lexists(path):
            for form in ("NFC", "NFD"):
                other = self.root / unicodedata.normalize(form, str(rel))
                if other != path and os.path.lexists(other):
                    path = other
                    break
        return (*self._probe(path, rel), path)

    def _probe(self, path: Path, rel: str | None = None) -> tuple[str | None, float, int]:
        """Why the file cannot be used (None if it can), its frame rate and frame count;
        ``rel``: its path in the index, under which ``probes`` keeps what was probed."""
        ffmpeg_exe()  # too old an ffmpeg raises here, not as every file "unreadable"
        try:
            stat = path.stat()
        except (OSError, ValueError):  # ValueError: a NUL or a lone surrogate in the path
            stat = None
        if stat is None or not stat_is_file(stat):
            return "file not found", 0.0, 0
        known = reused_probe(self._known.get(rel), stat) if rel is not None else None
        if known is not None:
            n, src_fps = known
        else:
            try:
                n, src_fps = probe(path)
            except Exception as err:  # ffmpeg's many ways to reject a file
                return f"unreadable ({type(err).__name__}: {_last_line(err)})", 0.0, 0
        if rel is not None:  # one key per thread's file: safe to add to from the probers
            self.probes[rel] = {
                "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "ctime_ns": stat.st_ctime_ns, "ino": stat.st_ino, "frames": n, "fps": src_fps,
            }  # fmt: skip
        indices = self._source_indices(exact_fps(src_fps))
        if n < indices[-1] + 1:
            return f"too short: {n} frames @ {src_fps:g} fps, need {indices[-1] + 1}", src_fps, n
        if len(set(indices)) < len(indices):
            return (
                f"{src_fps:g} fps is below the clip's {self.fps:g} fps: frames would repeat",
                src_fps,
                n,
            )
        return None, src_fps, n

    def _source_indices(self, src_fps: float) -> list[int]:
        return [round(k * src_fps / self.fps) for k in range(self.num_frames)]

    def __len__(self) -> int:
        return len(self.items)

    def starts(self, i: int) -> int:
        """How many start frames clip i can have: 0 .. starts(i) - 1 keep it inside its file
        (0 or less: it holds no clip)."""
        _, _, src_fps, n = self.items[self._index(i)]
        return n - self._source_indices(src_fps)[-1]

    def _index(self, i: object) -> int:
        """``i`` as an index of ``items``, or a ValueError saying which are allowed."""
        if not is_integer(i) or not 0 <= cast(int, i) < len(self.items):
            raise ValueError(f"clip {i!r}: allowed 0 to {len(self.items) - 1} (len(folder) - 1)")
        return int(cast(int, i))  # an integer, NumPy's too (is_integer)

    def load(self, i: int, start: int = 0) -> tuple[torch.Tensor, str] | None:
        """Clip i from source frame ``start`` as ((3, F, H, W) in [-1, 1], caption), or None.

        None when it fails to decode. A file that ends before the frame count its header
        gave (a variable frame rate, a cut tail) keeps the frames it has: later clips start
        where they fit in those (``starts(i)`` shrinks); a file that cannot hold a clip any
        more, or fails otherwise, is skipped (``starts(i)`` becomes 0, and ``sample`` drops
        it)."""
        path, _, _, n = self.items[self._index(i)]
        i = int(i)
        if not is_integer(start):
            raise ValueError(f"start={start!r} must be an integer (a source frame of clip {i})")
        start = int(start)
        if self.starts(i) < 1:
            raise ValueError(
                f"clip {i} ({self.index_name(path)}) was skipped: {n} frames hold no clip"
            )
        if not 0 <= start < self.starts(i):
            raise ValueError(
                f"start={start} for {self.index_name(path)}: allowed 0 to "
                f"{self.starts(i) - 1} (the clip must end inside the file)"
            )
        return self._apply(i, self._read(self.items[i], start))

    def _read(self, item: tuple[Path, str, float, int], start: int) -> tuple[str, object]:
        """Decode ``item``'s clip from ``start`` and change nothing (threads call it):
        ("clip", (clip, caption)), ("ended", (frames the file holds, why)) when it ends
        before the clip does, or ("failed", why). A failed read, and a seek that ends before
        the clip, are read again from the first frame, which counts the file's frames
        exactly (a seek can pass the end of a file shorter than its header, or land late in
        one it is not exact for, ``decode_from``); a failure may also pass (a busy machine)."""
        outcome = self._read_from(item, start, seek=True)
        kind = outcome[0]
        if kind == "failed" or (kind == "ended" and start > 0):
            outcome = self._read_from(item, start, seek=False)
        return outcome

    def _read_from(
        self, item: tuple[Path, str, float, int], start: int, seek: bool
    ) -> tuple[str, object]:
        """``_read`` by a seek to ``start``, or by decoding from the first frame."""
        path, text, src_fps, _ = item
        wanted = [start + k for k in self._source_indices(src_fps)]  # increasing (_probe)
        needed = set(wanted)
        kept: list[np.ndarray] = []
        decoded = start if seek else 0  # a seek found the frames before the start
        try:  # decoded from the start up to the last frame it needs, only those kept
            with contextlib.closing(decode_from(path, start if seek else 0, src_fps)) as out:
                for k, frame in enumerate(out, start=start if seek else 0):
                    decoded = k + 1
                    if k in needed:
                        kept.append(frame)
                    if k == wanted[-1]:
                        break
        except Exception as err:  # ffmpeg's many ways to fail on a damaged file
            return "failed", f"{type(err).__name__}: {_last_line(err)}"
        if len(kept) < len(wanted):
            why = f"EOFError: ended with {len(kept)} of the {len(wanted)} frames needed"
            return "ended", (decoded, why)
        frames = np.stack(kept)
        if frames.ndim == 3:
            frames = np.repeat(frames[..., None], 3, axis=-1)
        if self.fit == "crop":
            frames = center_crop(frames, self.width / self.height)
        clip = torch.cat([_resized(part, self.height, self.width) for part in _parts(frames)])
        return "clip", (rearrange(clip, "f c h w -> c f h w"), text)

    def index_name(self, path: Path) -> str:
        """A file's path as the index gives it (under ``root``): two files of one name in two
        subfolders are told apart, as ``skipped`` names them when the folder is made."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    def _apply(self, i: int, outcome: tuple[str, object]) -> tuple[torch.Tensor, str] | None:
        """What a ``_read`` of item i means for the folder: a clip, or None after shrinking
        the file to the frames it holds (a warning) or skipping it (``starts(i)`` < 1)."""
        kind, value = outcome  # as ``_read`` tags it
        if kind == "clip":
            return cast("tuple[torch.Tensor, str]", value)
        path, text, src_fps, n = self.items[i]
        frames, why = cast("tuple[int, str]", value) if kind == "ended" else (0, cast(str, value))
        self.items[i] = (path, text, src_fps, frames)
        if self.starts(i) > 0:  # shorter than its header said; clips still fit
            warnings.warn(
                f"VideoTextFolder: {self.index_name(path)} ends after {frames} of the {n} "
                "frames its header gives; its clips now start where they fit in those",
                stacklevel=3,
            )
        else:
            why = f"decode failed ({why})"
            self._skip(self.index_name(path), why, stacklevel=4)  # load's caller
        return None

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Same contract as ``ToyVideos.sample``; is_image is all False.

        In rounds: draw a (file, start) for every clip still missing, decode them
        (``workers`` at once: ffmpeg runs in its own process, so threads decode in
        parallel), keep those that decoded, and drop the files that failed for good. The
        draws depend on the generator and the files alone, so ``workers`` changes the speed,
        never the clips.
        """
        if not is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        batch_size = int(batch_size)
        g = generator if generator is not None else self.generator
        clips: list[torch.Tensor] = []
        texts: list[str] = []
        ahead, self._ahead = self._ahead, None  # used below, or stopped
        try:
            while len(clips) < batch_size:
                draws = self._draw(batch_size - len(clips), g)
                outcomes = ahead.outcomes_for(draws, self.items) if ahead is not None else None
                ahead = None  # the first round only
                for got in self._decode(draws, outcomes):
                    if got is not None:  # None: skipped (dropped below), or shorter than said
                        clips.append(got[0])
                        texts.append(got[1])
                self._drop_skipped()
        finally:
            if ahead is not None:  # not reached: the first draw failed
                ahead.stop.set()
        if self.prefetch:
            self._prefetch(batch_size, g)
        return torch.stack(clips), texts, torch.zeros(batch_size, dtype=torch.bool)

    def _prefetch(self, batch_size: int, g: torch.Generator) -> None:
        """Start decoding the next batch's first round in the background: its draws made on
        a copy of ``g``, so the folder and ``g`` stay as they are (a checkpoint saved now is
        exact). The next ``sample`` draws for real and uses these decodes where its draws
        and files are the same (``DecodeAhead.outcomes_for``), else decodes anew."""
        if not self.items:
            return
        copy = torch.Generator().set_state(g.get_state())
        draws = self._pairs(batch_size, copy)
        items = [self.items[i] for i, _ in draws]
        self._ahead = DecodeAhead(draws, items, lambda stop: self._read_all(items, draws, stop))

    def _draw(self, n: int, g: torch.Generator) -> list[tuple[int, int]]:
        """n (item, start) pairs. Files skipped by an earlier load go first; nothing drops
        a file until the round is decoded, so no index drawn here moves."""
        self._drop_skipped()
        if not self.items:
            raise RuntimeError(
                f"no usable videos under {str(self.root)!r} any more (every file failed to "
                f"decode since the folder was made: {self.skipped}); mend or restore the files "
                "and resume the run from its last checkpoint (ivref train --resume, under "
                "torchrun as the run was started)"
            )
        return self._pairs(n, g)

    def _pairs(self, n: int, g: torch.Generator) -> list[tuple[int, int]]:
        """n (item, start) pairs drawn from ``g``, changing nothing else."""
        draws: list[tuple[int, int]] = []
        for _ in range(n):
            i = int(torch.randint(len(self.items), (1,), generator=g))
            start = 0
            if self.random_start:
                start = int(torch.randint(self.starts(i), (1,), generator=g))
            draws.append((i, start))
        return draws

    def _decode(
        self, draws: list[tuple[int, int]], outcomes: list[tuple[str, object]] | None = None
    ) -> list[tuple[torch.Tensor, str] | None]:
        """The clips of ``draws``, in order, None for a failed draw, and the same whatever
        ``workers`` and ``prefetch`` are. One by one: a draw whose start no longer fits its
        file (it turned out shorter, or failed, earlier in the round) is not decoded.
        Several at once (or ``outcomes`` decoded ahead): every draw is decoded from the files
        as they were (threads, changing nothing), then the outcomes are applied in draw
        order, skipping those one by one would not have decoded; a file's warning comes
        once, as one by one."""

        def fits(i: int, start: int) -> bool:
            return start < self.starts(i)

        if outcomes is None and (self.workers == 1 or len(draws) == 1):
            return [self._apply(i, self._read(self.items[i], s)) if fits(i, s) else None
                    for i, s in draws]  # fmt: skip
        if outcomes is None:
            outcomes = self._read_all([self.items[i] for i, _ in draws], draws)
        return [self._apply(i, outcome) if fits(i, s) else None
                for (i, s), outcome in zip(draws, outcomes, strict=True)]  # fmt: skip

    def _read_all(
        self,
        items: list[tuple[Path, str, float, int]],
        draws: list[tuple[int, int]],
        stop: threading.Event | None = None,
    ) -> list[tuple[str, object]]:
        """``_read`` of every draw (``workers`` at once), changing nothing; once ``stop`` is
        set (a decode ahead no longer wanted), the draws not begun are not decoded."""

        def read(item: tuple[Path, str, float, int], start: int) -> tuple[str, object]:
            if stop is not None and stop.is_set():
                return "failed", "stopped"  # never applied: its batch is decoded anew
            return self._read(item, start)

        starts = [s for _, s in draws]
        if self.workers == 1 or len(draws) == 1:
            return [read(item, s) for item, s in zip(items, starts, strict=True)]
        with ThreadPoolExecutor(min(self.workers, len(draws))) as pool:
            return list(pool.map(read, items, starts))

    def _drop_skipped(self) -> None:
        """Remove the files that hold no clip any more (``starts`` < 1) from ``items``."""
        for i in reversed(range(len(self.items))):
            if self.starts(i) < 1:
                del self.items[i]
                if len(self._numbers) > i:
                    del self._numbers[i]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resumed run needs besides ``generator`` to draw the clips an uninterrupted
        run would: the files still in use (one dropped mid-run stays dropped) and their frame
        counts (one found shorter stays so), and a digest of the folder as probed.

        ``items``: (k, 2) int64 rows (the file's place among the usable files, its frames);
        ``digest``: one int64 from every usable file's path in the index, caption, frame rate
        and frame count as probed (the folder itself may move); ``clips``: how clips are cut
        from them, (fit is "squash", random_start) as int64 0/1.
        A ``Trainer`` saves it in each checkpoint (``DiffusionObjective.rng_state``).
        """
        if len(self._numbers) != len(self.items):
            raise RuntimeError(
                f"VideoTextFolder.items holds {len(self.items)} files but the folder tracks "
                f"{len(self._numbers)}: items was resized by hand, so its state cannot be saved"
            )
        rows = [[number, item[3]] for number, item in zip(self._numbers, self.items, strict=True)]
        return {
            "items": torch.tensor(rows, dtype=torch.int64).reshape(-1, 2),
            "digest": torch.tensor([self._digest], dtype=torch.int64),
            "clips": self._clips(),
        }

    def _clips(self) -> torch.Tensor:
        return torch.tensor([self.fit == "squash", self.random_start], dtype=torch.int64)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Go back to a ``state_dict()``; a ValueError if the folder (its index, files or
        captions) changed since, or if ``state`` is not one."""
        items, digest = state.get("items"), state.get("digest")
        if (
            not isinstance(items, torch.Tensor)
            or not isinstance(digest, torch.Tensor)
            or items.dtype != torch.int64
            or items.ndim != 2
            or items.shape[1] != 2
        ):
            raise ValueError(
                "a VideoTextFolder state holds 'items' ((k, 2) int64) and 'digest'; got "
                f"{ {k: getattr(v, 'shape', type(v).__name__) for k, v in state.items()} }"
            )
        numbers = items[:, 0].tolist()
        in_range = all(0 <= n < len(self._usable) for n in numbers)
        if digest.numel() != 1 or int(digest) != self._digest or not in_range:
            outside = [rel for rel, why in self.skipped if why.startswith(OUTSIDE)]
            since = (  # the cause only for a run that started before then
                f". Note: {len(outside)} of its index paths lie outside the folder (e.g. "
                f"{outside[0]!r}); ivref skips such paths since 2026-12-07, so a run started "
                "before then trained on them and reads as changed: write them relative to the "
                "folder, then resume with new streams"
                if outside
                else ""
            )
            readable = [  # kinds of files skipped before 2026-12-07, read since
                self.index_name(path)
                for path, *_ in self._usable
                if path.suffix.lower() in (".mkv", ".webm")
                or ":" in path.name
                or unicodedata.normalize("NFC", path.name) != path.name
            ]
            since += (
                f". Note: since 2026-12-07 ivref reads files it skipped before (variable-rate "
                "MKV or WebM, names with a colon, names the index spells in another Unicode "
                f"normalization), and this folder holds {len(readable)} of their kinds (e.g. "
                f"{readable[0]!r}): a run started before then reads as changed; resume it "
                "with new streams"
                if readable
                else ""
            )
            raise ValueError(
                f"the saved data state is of another folder: the videos under "
                f"{str(self.root)!r} or their index changed since it was saved (files added, "
                "removed, renamed or re-captioned, or a file's frame count or rate changed: the "
                "digest does not read the pixels), so its clips cannot go on exactly; resume "
                "with new streams (Trainer.resume(new_streams=True); on the command line "
                f"--resume --new-streams) to go on with the folder as it is now{since}"
            )
        clips = state.get("clips")  # absent in states saved before it was kept
        if clips is not None and not (
            isinstance(clips, torch.Tensor)
            and clips.shape == (2,)
            and set(clips.tolist()) <= {0, 1}
        ):
            raise ValueError(f"a VideoTextFolder state's 'clips' is two 0/1 values; got {clips!r}")
        if clips is not None and not torch.equal(clips, self._clips()):
            saved = f"fit={['crop', 'squash'][int(clips[0])]!r}, random_start={bool(clips[1])}"
            raise ValueError(
                f"the saved data state cut its clips with {saved}; this folder cuts them with "
                f"fit={self.fit!r}, random_start={self.random_start}: resume with the same "
                "(--fit on the command line), or with new streams to go on with these"
            )
        self.items = [(*self._usable[n][:3], frames) for n, frames in items.tolist()]
        self._numbers = numbers
        if self._ahead is not None:  # decoding for the folder as it was
            self._ahead.stop.set()
        self._ahead = None


def _last_line(err: BaseException) -> str:
    """The last non-empty line of an error, where ffmpeg puts its reason ("... does not
    contain any stream"), at most 120 characters; the first lines are its version banner."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:120]


RESIZE_FRAMES = 8  # frames converted to float32 at once: 8 of 1080p are 200 MB, not 32's 800


def _parts(frames: np.ndarray) -> list[np.ndarray]:
    """``frames`` (F, H, W, C) in runs of at most ``RESIZE_FRAMES``."""
    return [frames[k : k + RESIZE_FRAMES] for k in range(0, len(frames), RESIZE_FRAMES)]


def _resized(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 frames (F, H, W, C) as (F, 3, height, width) in [-1, 1]: bilinear, antialiased."""
    clip = rearrange(torch.from_numpy(frames[..., :3]).float() / 127.5 - 1, "f h w c -> f c h w")
    return F_nn.interpolate(clip, size=(height, width), mode="bilinear", antialias=True).clamp(
        -1, 1
    )
