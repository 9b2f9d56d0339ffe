"""``ivref train --videos FOLDER``: a run on a folder of captioned videos, not the toy world
(and ``ivref distill --videos FOLDER``, the distillation of a teacher trained on them).

The folder is a ``video_folder.VideoTextFolder`` (files plus an index, CSV ``path,caption``
or JSONL) at the stage's size and frame rate; each process draws from its own stream
(``distributed.stream_seed``), as it does in the toy world. The run folder records which
videos it trains on in ``ivref-videos.json``, so ``--resume`` needs no flags. A folder that
moved, or a record that was lost, is given again with ``--videos``: the checkpoint's data
state (which files are in use, and a digest of the index's relative paths, captions and
frame counts) checks that they are the same videos.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ivref import arguments, configs, errors, files, run_flags

if TYPE_CHECKING:
    from ivref.video_folder import VideoTextFolder

VIDEOS = "ivref-videos.json"  # in a run folder: the videos it trains on (absent: the toy world)
FIELDS = ("videos", "index", "fit")
VALIDATION_SEED = 12345  # any fixed number: every evaluation draws the same t and noise
KEPT_BYTES = 1 << 30  # held-out clips kept decoded, at most; the rest decode at each evaluation


def add_arguments(p: argparse.ArgumentParser, validation: bool = True) -> None:
    """The --videos options (``ivref train``; ``ivref distill`` without ``validation``, the
    held-out loss, which it does not log)."""
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
    p.add_argument(
        "--decode-workers",
        type=arguments.positive_int,
        default=1,
        help="with --videos: files probed and clips decoded at once (speed only: the clips "
        "stay the same)",
    )
    p.add_argument(
        "--prefetch",
        action="store_true",
        help="with --videos: decode the next batch while a step trains (the same clips)",
    )
    if not validation:
        return
    p.add_argument(
        "--val-index",
        type=Path,
        help="with --videos and --eval-every: held-out videos (paths under VIDEOS) whose "
        "loss is logged as eval_val_loss (--resume: the run's own)",
    )


def record(args: argparse.Namespace, saved_index: Path | None = None) -> dict[str, Any] | None:
    """The videos the flags name (absolute paths, so a resume works from any directory),
    checked before any folder is made; None: the toy world. ``saved_index``: the index to
    keep where --videos names a folder without one of its own (a resume)."""
    if args.videos is None:
        decode = None if args.decode_workers == 1 else args.decode_workers
        for flag, given in (
            ("--index", args.index),
            ("--fit", args.fit),
            ("--decode-workers", decode),
            ("--prefetch", args.prefetch or None),
            ("--val-index", getattr(args, "val_index", None)),
        ):
            if given is None:
                continue
            if flag == "--val-index" and "val_index" in getattr(args, "flags_from_run", ()):
                raise errors.CLIError(  # kept by the run, not given: the record of its videos
                    f"--resume: the run evaluates held-out videos (--val-index {given}, kept in "
                    f"its {run_flags.FILE}), yet names no videos of its own ({VIDEOS} is "
                    "gone): give them again with --videos FOLDER, or add --eval-every 0 to "
                    "stop evaluating"
                )
            raise errors.CLIError(f"{flag} is for --videos: add --videos FOLDER or drop it")
        return None
    if not args.videos.is_dir():
        what = "is a file, not a folder" if args.videos.exists() else "does not exist"
        raise errors.CLIError(f"--videos {str(args.videos)!r} {what}: give the folder of videos")
    check_validation(args, args.videos)
    return {
        "videos": str(args.videos.resolve()),
        "index": str(_index(args.videos, args.index, saved_index).resolve()),
        "fit": args.fit or "crop",
    }


def _index(
    videos: Path, index: Path | None, saved: Path | None = None, flag: str = "--index"
) -> Path:
    """--index, else the folder's own index.csv or index.jsonl (one of them), else ``saved``;
    ``flag`` names the option in messages."""
    if index is None:
        found = [videos / n for n in ("index.csv", "index.jsonl") if (videos / n).is_file()]
        if not found and saved is not None and saved.is_file():
            return saved
        if len(found) != 1:
            what = "neither" if not found else "both"
            raise errors.CLIError(
                f"--videos {str(videos)!r} holds {what} of index.csv and index.jsonl: "
                "give its index with --index FILE (columns path,caption)"
            )
        index = found[0]
    if index.suffix.lower() not in (".csv", ".jsonl"):
        raise errors.CLIError(f"{flag} {str(index)!r}: give a .csv (path,caption) or .jsonl")
    if not index.is_file():
        raise errors.CLIError(f"{flag} {str(index)!r} does not exist")
    return index


def read(out: Path) -> dict[str, Any] | None:
    """The videos a run folder trains on (its ivref-videos.json), or None: none recorded."""
    path = out / VIDEOS
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict) or not all(isinstance(saved.get(k), str) for k in FIELDS):
            raise ValueError(f"not an object of strings {list(FIELDS)}")
    except (ValueError, UnicodeDecodeError) as err:
        raise errors.CLIError(
            f"--resume: {str(path)!r} is damaged ({err}); it names the run's videos: give "
            "them again with --videos FOLDER (the checkpoint checks that they are the same)"
        ) from None
    return saved


def resumed(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """--resume: (the run's videos, what changed in their record: a note to print where it
    is to be written anew, else None). --videos / --index give a folder that moved, or a
    lost record; another --fit is refused. Which data the checkpoint was trained on is
    checked when it loads (``objectives.check_data_state``)."""
    try:
        saved = read(args.out)
    except errors.CLIError:
        if args.videos is None:
            raise
        saved = None  # replaced by the folder --videos names
    if saved is None:  # a toy-world run, or a lost record that --videos gives anew
        now = record(args)  # recorded anew: the run's own record was lost, or the run goes
        # on from the toy world onto videos (--new-streams; the checkpoint checks which)
        return now, None if now is None else f"the run reads the videos in {now['videos']!r}"
    kept = args.val_index if "val_index" in getattr(args, "flags_from_run", ()) else None
    if kept is not None and args.videos is not None:  # the run's held-out index, inside
        try:  # its videos' folder, which moved: it moved with them
            args.val_index = args.videos.resolve() / kept.relative_to(saved["videos"])
        except ValueError:  # kept elsewhere: where it was
            pass
    if args.fit is not None and args.fit != saved["fit"]:
        raise errors.CLIError(
            f"--resume: --fit {args.fit}, but the run trains with --fit {saved['fit']}: "
            "drop --fit, or start a new run"
        )
    now = dict(saved)
    if args.videos is not None:  # the folder moved: its own index, --index, or the saved one
        found = cast(dict[str, Any], record(args, Path(saved["index"])))  # videos: not None
        now |= found | {"fit": saved["fit"]}
    elif args.index is not None:
        now["index"] = str(_index(Path(saved["videos"]), args.index).resolve())
    elif not (Path(saved["index"]).is_file() and Path(saved["videos"]).is_dir()):
        raise errors.CLIError(
            f"--resume: the run's videos ({saved['videos']!r}, index {saved['index']!r}) are "
            "gone; if they moved, give their new place with --videos FOLDER (and --index "
            "FILE if the index moved on its own)"
        )
    if args.videos is None:  # (record() checked them against the folder --videos gives)
        check_validation(args, Path(now["videos"]))  # once the folder is known to be there
    if args.index is not None:
        _check_same_index(Path(saved["index"]), Path(now["index"]), args)
    changed = [
        f"{what} {now[key]!r}"
        for key, what in (("videos", "the videos are now in"), ("index", "their index is now"))
        if now[key] != saved[key]
    ]
    return now, "; ".join(changed) or None


def _check_same_index(saved: Path, given: Path, args: argparse.Namespace) -> None:
    """--index on a resume names the run's index, moved or copied (the same rows), unless
    --new-streams goes on with another. (Another index changes the run's data as surely as
    a changed folder does; saying so here names the flag, where the checkpoint's data check
    could only say that the folder changed. An index that is gone cannot be compared: that
    check stays.)"""
    if given == saved or not saved.is_file() or getattr(args, "new_streams", False):
        return
    from ivref.video_files import read_index

    try:
        same = read_index(saved) == read_index(given)
    except (OSError, ValueError):  # an unreadable index: the dataset names what is wrong
        return
    if not same:
        raise errors.CLIError(
            f"--resume: --index {str(args.index)!r} lists other files or captions than the "
            f"run's index {str(saved)!r}, so the run cannot go on with its clips: drop "
            "--index to go on with the run's own, or add --new-streams to go on with this "
            "one from here"
        )


def trained_on(run: Path) -> str | dict[str, str] | None:
    """What a train or distill run folder trained on, as a cascade records it
    (``Cascade.trained_on``): {"videos": folder} from its record, else "toy"; None for a
    folder that is not a run's own (a checkpoint folder given alone)."""
    saved = read(run)
    if saved is not None:
        return {"videos": saved["videos"]}
    ran = (run / "checkpoints").is_dir() or (run / "distill.json").is_file()
    return "toy" if ran else None


def check_validation(args: argparse.Namespace, videos: Path) -> None:
    """--eval-every on videos needs --val-index (the toy world's caption scores do not
    apply), and --val-index needs --eval-every; the index must exist. A command without
    evaluation (``ivref distill``) has nothing to check."""
    if not hasattr(args, "val_index"):
        return
    if args.eval_every and args.val_index is None:
        raise errors.CLIError(
            "--eval-every with --videos logs the loss of held-out videos: give their index "
            "with --val-index FILE (paths under the --videos folder), or drop --eval-every"
        )
    if args.val_index is not None and not args.eval_every:
        raise errors.CLIError("--val-index is read every --eval-every K steps: add it")
    for flag, given in (("--eval-steps", args.eval_steps), ("--eval-guidance", args.eval_guidance)):
        if given is not None:
            raise errors.CLIError(
                f"{flag} sets the toy world's caption scores; a run on videos logs the loss "
                "of --val-index's videos, which samples nothing: drop it"
            )
    if args.val_index is not None:
        _index(videos, args.val_index, flag="--val-index")  # a .csv or .jsonl that exists


def validation_evaluator(
    videos: dict[str, Any],
    val_index: Path,
    stage: configs.StageConfig,
    clips: int | None,
    probes: dict[str, Any] | None = None,
) -> Callable[[Any], dict[str, float]]:
    """``Trainer(evaluate=...)``: the stage's training loss of the EMA weights on held-out
    videos, logged as ``eval_val_loss``.

    The clips: the first ``clips`` files of ``val_index`` (default all), each from its first
    frame, decoded now (so a bad index fails before training, not at the first evaluation)
    and kept while they fit in ``KEPT_BYTES`` of memory; the rest are decoded again at each
    evaluation (at the paper's last stage one clip, 128 x 1280 x 768, is 1.5 GB of floats).
    Clip k's draws (t, noise, text dropout, SR augmentation and crop) come from its own
    generator, seeded ``VALIDATION_SEED + k`` at each evaluation, and each clip is
    a forward of its own: the number depends on the weights alone, not on batch size or
    process count, and the training streams are not touched. Rank 0 computes it; under
    FSDP, where the forward takes every rank, each computes the same number. Files also in
    the training index are reported (a loss on them is not held out). ``probes``: what
    earlier probing found (``probe_cache``); the function's ``probes`` attribute holds what
    this held-out folder's probing found, to keep for the next start.
    """
    from ivref import objectives
    from ivref.video_files import read_index
    from ivref.video_folder import VideoTextFolder

    try:
        folder = VideoTextFolder(
            videos["videos"], val_index, stage.num_frames, stage.width, stage.height, stage.fps,
            random_start=False, fit=videos["fit"], probes=probes,
        )  # fmt: skip
    except ValueError as err:
        raise ValueError(f"--val-index {str(val_index)!r}: {err}") from None
    held: list[tuple[torch.Tensor, str] | int] = []  # a clip, or its index to decode again
    size = 0
    for i in range(min(clips or len(folder), len(folder))):
        got = folder.load(i)
        if got is None:
            continue
        size += got[0].numel() * got[0].element_size()
        held.append(got if size <= KEPT_BYTES else i)
    if not held:
        raise ValueError(f"--val-index {str(val_index)!r}: none of its videos decodes")

    def clip(k: int) -> tuple[torch.Tensor, str]:
        kept = held[k]
        if not isinstance(kept, int):
            return kept
        got = folder.load(kept)
        if got is None:  # it decoded at the start: leaving it out would move the mean
            name = folder.index_name(folder.items[kept][0])  # as the index names it
            raise ValueError(
                f"--val-index {str(val_index)!r}: {name} decoded when training started and "
                "does not now; restore it (or resume with --val-index of the videos that "
                "remain)"
            )
        return got

    def spelt_alike(rel: str) -> str:  # ./a.mp4, a.mp4, sub/../a.mp4 and café in NFC or
        # NFD name one file (VideoTextFolder finds either spelling)
        return unicodedata.normalize("NFC", posixpath.normpath(str(rel).replace("\\", "/")))

    trained = {spelt_alike(path) for path, _ in read_index(Path(videos["index"]))}
    shared = sorted(trained & {spelt_alike(path) for path, _ in read_index(val_index)})
    if shared:
        warnings.warn(
            f"{len(shared)} held-out file(s) of {str(val_index)!r} are also in the training "
            f"index (e.g. {shared[0]!r}): their loss is not a held-out loss",
            stacklevel=2,
        )

    def evaluate(trainer: Any) -> dict[str, float]:
        total = 0.0
        with torch.no_grad():
            for k in range(len(held)):
                video, caption = clip(k)
                g = torch.Generator().manual_seed(VALIDATION_SEED + k)
                batch = objectives.Batch(video[None], [caption], torch.zeros(1, dtype=torch.bool))
                loss = trainer.objective.loss(trainer.ema, batch, g, trainer.device, trainer.bf16)
                total += float(loss)
        return {"val_loss": total / len(held)}

    evaluate.probes = folder.probes  # type: ignore[attr-defined]
    return evaluate


def keep_probes(out: Path, *folders: Any) -> None:
    """Keep what the run's folders of videos probed (None, a toy world, adds nothing) in
    ``<out>/video_probes.json`` for the next start (``probe_cache``)."""
    from ivref import probe_cache

    probes = {k: v for f in folders for k, v in (getattr(f, "probes", None) or {}).items()}
    if probes:
        probe_cache.write(out / probe_cache.FILE, probes)


def known_probes(out: Path, videos: dict[str, Any] | None) -> dict[str, Any]:
    """What an earlier start in ``out`` probed of its videos ({} for the toy world)."""
    from ivref import probe_cache

    return {} if videos is None else probe_cache.read(out / probe_cache.FILE)


def write(out: Path, videos: dict[str, Any]) -> None:
    files.atomic_write_text(out / VIDEOS, json.dumps(videos, indent=1) + "\n")


def dataset(
    videos: dict[str, Any] | None,
    stage: configs.StageConfig,
    stream: int,
    workers: int = 1,
    prefetch: bool = False,
    probes: dict[str, Any] | None = None,
) -> VideoTextFolder | None:
    """The run's dataset: None (the trainer's toy world) or its folder of videos, drawing
    from ``stream`` (this process's), decoding ``workers`` clips at once, and the next
    batch during a step if ``prefetch``; ``probes``: what earlier probing found
    (``probe_cache``)."""
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
        workers=workers,
        prefetch=prefetch,
        probes=probes,
    )
