"""``ivref train --videos FOLDER``: a run on a folder of captioned videos, not the toy world.

The folder is a ``video_folder.VideoTextFolder`` (files plus an index, CSV ``path,caption``
or JSONL) at the stage's size and frame rate; each process draws from its own stream
(``distributed.stream_seed``), as it does in the toy world. The run folder records which
videos it trains on in ``data.json``, so ``--resume`` needs no flags: a folder that moved is
given again with ``--videos`` (the checkpoint's data state, keyed by the index's relative
paths, checks that its videos are the same).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ivref import configs, errors, files

DATA = "data.json"  # in a run folder: the videos it trains on (absent: the toy world)
FIELDS = ("videos", "index", "fit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--videos",
        type=Path,
        help="train on this folder of captioned videos, not the toy world (resume: saved)",
    )
    p.add_argument(
        "--index",
        type=Path,
        help="with --videos: CSV (path,caption) or JSONL (default: VIDEOS/index.csv or .jsonl)",
    )
    p.add_argument(
        "--fit",
        choices=("crop", "squash"),
        help="with --videos: frames to the stage's shape by centre crop (default) or squash",
    )


def record(args: argparse.Namespace) -> dict[str, Any] | None:
    """A fresh run's videos (absolute paths, so a resume works from any directory), checked
    before any folder is made; None: the toy world."""
    if args.videos is None:
        for flag, given in (("--index", args.index), ("--fit", args.fit)):
            if given is not None:
                raise errors.CLIError(f"{flag} is for --videos: add --videos FOLDER or drop it")
        return None
    if args.eval_every:
        raise errors.CLIError(
            "--eval-every scores toy-world captions, not a folder of videos: drop it with "
            "--videos (sample the run with ivref generate --checkpoint instead)"
        )
    return {
        "videos": str(_folder(args.videos).resolve()),
        "index": str(_index(args.videos, args.index).resolve()),
        "fit": args.fit or "crop",
    }


def _folder(videos: Path) -> Path:
    if not videos.is_dir():
        raise errors.CLIError(f"--videos {str(videos)!r} is not a folder of videos")
    return videos


def _index(videos: Path, index: Path | None) -> Path:
    """--index, else the folder's own index.csv or index.jsonl (one of them)."""
    if index is None:
        found = [videos / n for n in ("index.csv", "index.jsonl") if (videos / n).is_file()]
        if len(found) != 1:
            what = "neither" if not found else "both"
            raise errors.CLIError(
                f"--videos {str(videos)!r} holds {what} of index.csv and index.jsonl: "
                "give its index with --index FILE (columns path,caption)"
            )
        index = found[0]
    if not index.is_file():
        raise errors.CLIError(f"--index {str(index)!r} does not exist")
    return index


def read(out: Path) -> dict[str, Any] | None:
    """The videos a run folder trains on (its data.json), or None: the toy world."""
    path = out / DATA
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict) or not all(isinstance(saved.get(k), str) for k in FIELDS):
            raise ValueError(f"not an object of strings {list(FIELDS)}")
    except (ValueError, UnicodeDecodeError) as err:
        raise errors.CLIError(
            f"--resume: {str(path)!r} is damaged ({err}); it names the run's videos: restore "
            "it, or start afresh with --force"
        ) from None
    return saved


def resumed(args: argparse.Namespace) -> tuple[dict[str, Any] | None, bool]:
    """--resume: (the run's videos, whether --videos / --index moved them). A folder that
    moved is given anew; another --fit, or videos for a toy-world run, is refused."""
    saved = read(args.out)
    given = {"--videos": args.videos, "--index": args.index, "--fit": args.fit}
    if saved is None:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise errors.CLIError(
                f"--resume: {', '.join(named)} given, but this run trains on the toy world; "
                "drop them, or start a new run on the videos"
            )
        return None, False
    if args.eval_every:
        raise errors.CLIError(
            f"--eval-every scores toy-world captions; this run trains on {saved['videos']!r}"
        )
    if args.fit is not None and args.fit != saved["fit"]:
        raise errors.CLIError(
            f"--resume: --fit {args.fit}, but the run trains with --fit {saved['fit']}: "
            "drop --fit, or start a new run"
        )
    now = dict(saved)
    if args.videos is not None:  # the folder moved: its index there, or --index
        now["videos"] = str(_folder(args.videos).resolve())
        now["index"] = str(_index(args.videos, args.index).resolve())
    elif args.index is not None:
        now["index"] = str(_index(Path(saved["videos"]), args.index).resolve())
    elif not Path(saved["index"]).is_file():
        raise errors.CLIError(
            f"--resume: the run's videos index {saved['index']!r} is gone; if the folder "
            "moved, give its new place with --videos FOLDER (and --index FILE if needed)"
        )
    return now, now != saved


def write(out: Path, videos: dict[str, Any]) -> None:
    files.atomic_write_text(out / DATA, json.dumps(videos, indent=1) + "\n")


def dataset(videos: dict[str, Any] | None, stage: configs.StageConfig, stream: int):
    """The run's dataset: None (the trainer's toy world) or its folder of videos, drawing
    from ``stream`` (this process's)."""
    if videos is None:
        return None
    from ivref import video_folder

    return video_folder.VideoTextFolder(
        videos["videos"],
        videos["index"],
        stage.num_frames,
        stage.width,
        stage.height,
        stage.fps,
        seed=stream,
        fit=videos["fit"],
    )
