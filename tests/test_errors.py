"""Every bad input gets one clear line: the table of cases, run end to end, and docs/errors.md.

Each row of ``CLI_CASES`` is an ``ivref`` command line run through ``cli.main`` (so the
argument parser, the command and ``errors.run_command`` all take part); each row of
``LIBRARY_CASES`` is a library call. A row names the exit status (or exception) and a piece
of the message that must appear. docs/errors.md is rendered from these tables:
``python tests/test_errors.py`` rewrites it, and a test fails while it is stale.

Placeholders in command lines: {X} a fresh folder, {RUN} a copy of a 2-step ci training run
(checkpoints at steps 1 and 2), {SHIPPED} the shipped toy cascade, {RO} a read-only file
system, {FULL} a nearly full one. The last two are tmpfs mounts made by the test; where
this process may not mount (CI without root), those rows are skipped with the reason, and
the monkeypatched full-disk rows still run.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ivref import checkpoint, files

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
BANNED = ("Traceback", "invalid _positive value", "Overflow when unpacking long long")
PROMPT = "a red circle moving left"


# -- the context a case's setup works in -------------------------------------------------------


def _shipped() -> Path:
    from ivref.shipped import shipped_dir

    return shipped_dir()


class Ctx:
    """What a case's setup may use: the case's folder, a trained run, mounts, monkeypatch."""

    def __init__(self, tmp: Path, trained: Path, monkeypatch, mounts: list[Path]) -> None:
        self.tmp, self.trained, self.monkeypatch, self.mounts = tmp, trained, monkeypatch, mounts
        self.paths: dict[str, Path] = {"X": tmp, "SHIPPED": _shipped()}
        self.child: subprocess.Popen | None = None  # a process the case started

    def run(self) -> Path:
        """A copy of the trained ci run at {RUN}."""
        run = shutil.copytree(self.trained, self.tmp / "run")
        self.paths["RUN"] = run
        return run

    def tmpfs(self, key: str, size: str, read_only: bool = False) -> Path:
        """A tmpfs of ``size`` mounted at {key}; skips the case if this process cannot mount."""
        point = self.tmp / key.lower()
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): the "
                "real read-only / full file system is untested; the simulated rows still run"
            )
        self.mounts.append(point)
        self.paths[key] = point
        return point


def unmount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


# -- setups -------------------------------------------------------------------------------------


def _touch_file(ctx: Ctx) -> None:
    (ctx.tmp / "file").write_text("not a folder")


def _no_cuda(ctx: Ctx) -> None:
    ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _without_manifests(ctx: Ctx) -> None:
    for path in (ctx.run() / "checkpoints").glob("step-*/config.json"):
        path.unlink()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _stepless_log_row(ctx: Ctx) -> None:
    log = ctx.run() / "log.jsonl"
    log.write_text(log.read_text().replace('"step"', '"stdp"', 1))


def _latin1_index(ctx: Ctx) -> None:
    ctx.run()
    (ctx.tmp / "videos").mkdir()
    (ctx.tmp / "videos" / "index.csv").write_bytes(
        "path,caption\na.mp4,caf\u00e9\n".encode("latin-1")
    )


def _unusable_videos(ctx: Ctx) -> None:
    """A folder of videos whose only file is not a video, beside a trained run at {RUN}."""
    ctx.run()
    (ctx.tmp / "videos").mkdir()
    (ctx.tmp / "videos" / "a.mp4").write_text("not a video")
    (ctx.tmp / "videos" / "index.csv").write_text("path,caption\na.mp4,a clip\n")


def _videos_beside_a_toy_run(ctx: Ctx) -> None:
    from tests.test_train_videos import _folder

    ctx.run()
    _folder(ctx.tmp / "videos")


def _damaged_newest(ctx: Ctx) -> None:
    _flip_byte(ctx.run() / "checkpoints" / "step-00000002" / "ema.safetensors")


def _garbage_newest_config(ctx: Ctx) -> None:
    (ctx.run() / "checkpoints" / "step-00000002" / "config.json").write_text('{"format": 1, "st')


def _nan_weights(ctx: Ctx) -> None:
    """Every checkpoint's EMA weights NaN, with a manifest that matches (an old ivref's save)."""
    from safetensors.torch import load_file, save_file

    from ivref import checkpoint

    for folder in (ctx.run() / "checkpoints").glob("step-*"):
        ema = folder / "ema.safetensors"
        save_file({k: v * float("nan") for k, v in load_file(ema).items()}, ema)
        meta = json.loads((folder / "config.json").read_text())
        meta["manifest"] = checkpoint.file_manifest(folder, list(meta["manifest"]))
        meta["digest"] = checkpoint.config_digest(meta)
        (folder / "config.json").write_text(json.dumps(meta))


def _tsr_run(ctx: Ctx) -> None:
    from ivref import cli

    argv = [*TRAIN, "--stage", "tsr", "--steps", "1", "--out", str(ctx.tmp / "tsr")]
    assert cli.main(argv) == 0


def _cascade(ctx: Ctx) -> Path:
    from ivref import cli

    cli.load_cascade(ctx.run()).save_pretrained(ctx.tmp / "cascade")
    ctx.paths["CASCADE"] = ctx.tmp / "cascade"
    return ctx.tmp / "cascade"


def _flipped_cascade(ctx: Ctx) -> None:
    _flip_byte(_cascade(ctx) / "base.safetensors")


def _path_stage_cascade(ctx: Ctx) -> None:
    manifest_path = _cascade(ctx) / "cascade.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["stages"][0]["name"] = "../../elsewhere/base"
    manifest["stages"] = ["../../elsewhere/base"]
    del manifest["digest"]  # edited by hand, the edit kept (the digest would refuse it)
    manifest_path.write_text(json.dumps(manifest))


def _newer_format_cascade(ctx: Ctx) -> None:
    manifest_path = _cascade(ctx) / "cascade.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = 3  # as a newer ivref might write it, with a field unknown here
    manifest["config"]["stages"][0]["a_field_of_ivref_3"] = 1
    manifest["digest"] = checkpoint.config_digest(manifest)
    manifest_path.write_text(json.dumps(manifest))


def _read_only(ctx: Ctx) -> None:
    ctx.tmpfs("RO", "64k", read_only=True)


def _tiny_disk(ctx: Ctx) -> None:
    ctx.run()
    ctx.tmpfs("FULL", "4k")


def _small_disk(ctx: Ctx) -> None:
    ctx.tmpfs("FULL", "1m")  # a ci checkpoint takes about 3.8 MB


def _video_writer_full(ctx: Ctx) -> None:
    import mediapy

    def full(path, *args, **kwargs):
        raise RuntimeError(
            f"Error writing '{path}': Error submitting a packet to the muxer: No space left on "
            "device\n[out#0/gif] Error muxing a packet\n[out#0/gif] Task finished with error"
        )

    ctx.run()
    ctx.monkeypatch.setattr(mediapy, "write_video", full)


def _safetensors_full(ctx: Ctx) -> None:
    from safetensors import SafetensorError

    from ivref import tensor_files

    def full(*args, **kwargs):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    ctx.monkeypatch.setattr(tensor_files, "save_file", full)


def _damaged_text_cache(ctx: Ctx) -> None:
    from ivref import cli

    argv = ["train", "--scale", "ci", "--steps", "1", "--batch-size", "2"]
    assert (
        cli.main([*argv, "--out", str(ctx.tmp / "first"), "--text-cache", str(ctx.tmp / "c")]) == 0
    )
    for entry in (ctx.tmp / "c").glob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:40])  # truncated


def _locked(ctx: Ctx) -> None:
    """Another process holds the run folder's lock (what a running trainer does)."""
    folder = ctx.tmp / "locked"
    code = (
        f"from ivref import files; files.RunLock({str(folder)!r}).acquire(); print('ok'); input()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "ok"
    ctx.child = child


def _torn_log_line(ctx: Ctx) -> None:
    log = ctx.run() / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0][:10], *lines[1:]]) + "\n")


# -- the tables ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    what: str  # the bad input, in words
    argv: tuple[str, ...]  # after `ivref`; placeholders {X}, {RUN}, ...
    status: int  # exit status (0: a warning, the work goes on)
    message: str  # a piece of the one line it must print
    setup: Callable[[Ctx], None] | None = None
    how: str = ""  # how the test makes the situation, if not obvious

    @property
    def id(self) -> str:
        return self.what


GEN = ("generate", PROMPT)
TRAIN = ("train", "--scale", "ci", "--batch-size", "2")
GEN_RUN = (*GEN, "--checkpoint", "{RUN}", "--steps", "1")
SEED_MSG = "must be from 0 to 2**63 - 1"
W_MSG = "must be a number from 0 (no guidance) to 1000"
STEPS_MSG = "must be an integer from 1 to 10000"
NO_MANIFEST = "lack config.json, the manifest written last"
T5 = "pass --text-encoder PATH"

CLI_CASES = [
    # where the video goes
    Case("--out is a folder", (*GEN, "--out", "{X}"), 2, "is a folder; give a file name"),
    Case(
        "--out .gif", (*GEN, "--out", "{X}/.gif"), 2, "has no name before its suffix: e.g. out.gif"
    ),
    Case(
        "a prompt after --out",
        (*GEN, "--out", "{X}/v.gif", "a blue square"),
        2,
        "a prompt given after --out is taken for a file: put the prompts before --out",
    ),
    Case("--out has another suffix", (*GEN, "--out", "{X}/v.avi"), 2, "suffix must be one of"),
    Case(
        "--out names one file twice",
        (*GEN, "--out", "{X}/v.gif", "{X}/./v.gif"),  # one file, spelt two ways
        2,
        "twice; give each file once",
    ),
    Case(
        "--out given twice (both are kept: the last alone was)",
        (*GEN, "--out", "{X}/v.gif", "--out", "{X}/v.gif"),
        2,
        "twice; give each file once",
    ),
    Case(
        "per-stage guidance weights given as two words",
        (*GEN, "--guidance", "tsr=1", "base=0", "--out", "{X}/v.gif"),  # evaluate's spelling
        2,
        "unrecognized arguments: base=0 (per-stage guidance weights are one word, joined by",
    ),
    Case(
        "--out names two files that differ only in case",
        (*GEN, "--out", "{X}/a.gif", "{X}/b.gif", "{X}/A.GIF", "{X}/B.GIF"),  # one pair named
        2,
        "A.GIF', which differ only in case: one file on file systems that ignore case",
    ),
    Case(
        "--out under a file",
        (*GEN, "--out", "{X}/file/v.mp4"),
        2,
        "is a file, not a folder",
        _touch_file,
    ),
    Case(
        "--out on a read-only file system",
        (*GEN, "--out", "{RO}/v.mp4"),
        2,
        "(Read-only file system); choose a writable place",
        _read_only,
        "a read-only tmpfs (os.access says yes to root; the check writes a probe file)",
    ),
    Case(
        "disk full while writing the video",
        (*GEN_RUN, "--out", "{FULL}/v.gif"),
        1,
        "no space left on the device writing",
        _tiny_disk,
        "a real 4 KiB tmpfs",
    ),
    Case(
        "disk full while writing the video (ffmpeg's error)",
        (*GEN_RUN, "--out", "{X}/v.gif"),
        1,
        "no space left on the device writing",
        _video_writer_full,
        "the writer monkeypatched to fail as ffmpeg does",
    ),
    # the model to sample
    Case(
        "--checkpoint is not a folder",
        (*GEN, "--out", "{X}/v.mp4", "--checkpoint", "{X}/none"),
        2,
        "is not a directory",
    ),
    Case(
        "--checkpoint is an empty folder",
        (*GEN, "--out", "{X}/v.mp4", "--checkpoint", "{X}/empty"),
        2,
        "is neither a cascade folder (no cascade.json, which `ivref export` and",
        lambda ctx: (ctx.tmp / "empty").mkdir(),
    ),
    Case(
        "a run whose checkpoints lack their manifest",
        (*GEN_RUN, "--out", "{X}/v.gif"),
        2,
        NO_MANIFEST,
        _without_manifests,
    ),
    Case(
        "a checkpoint folder without its manifest",
        (*GEN, "--out", "{X}/v.gif", "--checkpoint", "{RUN}/checkpoints/step-00000002"),
        2,
        "has no config.json (the manifest written last)",
        _without_manifests,
    ),
    Case(
        "the run's newest checkpoint is damaged",
        (*GEN_RUN, "--out", "{X}/v.gif"),
        0,
        "skipping damaged step-00000002",
        _damaged_newest,
        "a flipped byte; the previous checkpoint is used",
    ),
    Case(
        "a run with NaN weights",
        (*GEN_RUN, "--out", "{X}/v.gif"),
        2,
        "non-finite values (NaN or inf)",
        _nan_weights,
    ),
    Case(
        "a cascade file with flipped bytes",
        (*GEN, "--out", "{X}/v.gif", "--checkpoint", "{CASCADE}"),
        2,
        "its sha256 differs",
        _flipped_cascade,
    ),
    Case(
        "a cascade saved by a newer ivref (format 3)",
        (*GEN, "--out", "{X}/v.gif", "--checkpoint", "{CASCADE}"),
        2,
        "format 3; this ivref reads formats 1 and 2 (a newer ivref wrote it: upgrade ivref",
        _newer_format_cascade,
    ),
    Case(
        "a cascade whose stage name is a path",
        (*GEN, "--out", "{X}/v.gif", "--checkpoint", "{CASCADE}"),
        2,
        "plain identifier",
        _path_stage_cascade,
    ),
    Case(
        "--distilled on a cascade that has no distilled students",
        (*GEN, "--out", "{X}/v.gif", "--checkpoint", "{CASCADE}", "--distilled"),
        2,
        "holds a cascade but no distilled variant (no distilled/cascade.json): make one",
        _cascade,
    ),
    Case(
        "IVREF_WEIGHTS names a folder without the shipped cascade",
        (*GEN, "--out", "{X}/v.gif"),
        2,
        "IVREF_WEIGHTS names it: point it at a copy of the repository's data/toy",
        lambda ctx: ctx.monkeypatch.setenv("IVREF_WEIGHTS", str(ctx.tmp)),
        "IVREF_WEIGHTS set to an empty folder",
    ),
    # sampling numbers
    Case("--device foo", (*GEN, "--out", "{X}/v.mp4", "--device", "foo"), 2, "not a device name"),
    Case(
        "--device cuda without CUDA",
        (*GEN, "--out", "{X}/v.mp4", "--device", "cuda"),
        2,
        "CUDA is not available here",
        _no_cuda,
        "torch.cuda.is_available patched to False",
    ),
    Case("a huge --seed", (*GEN, "--out", "{X}/v.mp4", "--seed", str(2**70)), 2, SEED_MSG),
    Case("a negative --seed", (*GEN, "--out", "{X}/v.mp4", "--seed", "-1"), 2, SEED_MSG),
    Case("--guidance nan", (*GEN, "--out", "{X}/v.mp4", "--guidance", "nan"), 2, W_MSG),
    Case("--guidance inf", (*GEN, "--out", "{X}/v.mp4", "--guidance", "inf"), 2, W_MSG),
    Case("--guidance -1", (*GEN, "--out", "{X}/v.mp4", "--guidance", "-1"), 2, W_MSG),
    Case(
        "--guidance naming a stage twice",
        (*GEN, "--out", "{X}/v.mp4", "--guidance", "base=1,base=2"),
        2,
        "with each stage NAME once",
    ),
    Case(
        "--steps 1000000000",
        (*GEN, "--out", "{X}/v.mp4", "--steps", "1000000000"),
        2,
        STEPS_MSG,
    ),
    Case(
        "--steps abc",
        (*GEN, "--out", "{X}/v.mp4", "--steps", "abc"),
        2,
        "expected a positive integer, got 'abc'",
    ),
    Case(
        "--batch-size 0",
        (*GEN, "--out", "{X}/v.mp4", "--batch-size", "0"),
        2,
        "expected a positive integer, got 0",
    ),
    Case(
        "--display-size -1",
        (*GEN, "--out", "{X}/v.mp4", "--display-size", "-1"),
        2,
        "must be from 0 (native size) to 4096 pixels",
    ),
    Case(
        "--display-size 100000",
        (*GEN, "--out", "{X}/v.mp4", "--display-size", "100000"),
        2,
        "must be from 0 (native size) to 4096 pixels",
    ),
    Case(
        "an empty prompt",
        ("generate", "", "--out", "{X}/v.mp4"),
        2,
        "prompts[0]='' must be a non-empty string",
    ),
    Case(
        "--text-encoder for a built-in encoder",
        (*GEN_RUN, "--out", "{X}/v.gif", "--text-encoder", "{X}"),
        2,
        "--text-encoder is for encoder 't5'",
        lambda ctx: ctx.run(),
    ),
    # training
    Case(
        "train --stage that the preset lacks",
        (*TRAIN, "--stage", "nope", "--steps", "1", "--out", "{X}/r"),
        2,
        "unknown stage 'nope'",
    ),
    Case(
        "train --out is a file",
        (*TRAIN, "--steps", "1", "--out", "{X}/file"),
        2,
        "is a file; give a folder for the run",
        _touch_file,
    ),
    Case(
        "train --out on a read-only file system",
        (*TRAIN, "--steps", "1", "--out", "{RO}/run"),
        2,
        "(Read-only file system); choose a writable place",
        _read_only,
        "a read-only tmpfs",
    ),
    Case(
        "train --out in a used run folder",
        (*TRAIN, "--steps", "3", "--out", "{RUN}"),
        2,
        "already holds a run; pass --resume",
        lambda ctx: ctx.run(),
    ),
    Case(
        "train --resume with --force",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume", "--force"),
        2,
        "--resume continues the run in --out and --force deletes it",
        lambda ctx: ctx.run(),
    ),
    Case(
        "train --out in a distillation's folder",
        (*TRAIN, "--steps", "1", "--out", "{X}", "--force"),
        2,
        "holds a distillation (distill.json); give the run a folder of its own",
        lambda ctx: (ctx.tmp / "distill.json").write_text("{}"),
    ),
    Case(
        "distill --out in a train run's folder",
        ("distill", "--stage", "base", "--out", "{RUN}"),
        2,
        "holds an `ivref train` run (log.jsonl, checkpoints/)",
        lambda ctx: ctx.run(),
    ),
    Case(
        "generate with the prompts after --out",
        ("generate", "--out", "{X}/v.mp4", PROMPT),
        2,
        "give one or more prompts (--out took",
    ),
    Case(
        "generate --display-size whose frames would not fit",
        ("generate", *(PROMPT,) * 9, "--out", "{X}/v.mp4", "--stages", "--display-size", "4096"),
        2,
        "upscaled 64x (--display-size 4096), needs",
    ),
    Case(
        "train --resume of a folder that does not exist",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--resume"),
        2,
        "does not exist; drop --resume to start a run there",
    ),
    Case(
        "train --resume with no checkpoint",
        (*TRAIN, "--steps", "1", "--out", "{X}", "--resume"),
        2,
        "has no checkpoint",
    ),
    Case(
        "train --resume where every checkpoint lacks its manifest",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume"),
        2,
        NO_MANIFEST,
        _without_manifests,
    ),
    Case(
        "train --resume when the newest checkpoint's config.json is damaged",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume"),
        0,
        "resume: skipping step-00000002",
        _garbage_newest_config,
        "the previous checkpoint is resumed",
    ),
    Case(
        "train --resume with another --stage",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume", "--stage", "tsr"),
        2,
        "the run trains 'base'",
        lambda ctx: ctx.run(),
    ),
    Case(
        "train --resume with a damaged log line",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume"),
        2,
        "log.jsonl: line 1 is not a JSON object",
        _torn_log_line,
    ),
    Case(
        "train --resume with a log row that lost its step",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume"),
        2,
        "row 1 has no integer 'step'",
        _stepless_log_row,
        'a flipped bit turned the first row\'s key "step" into "stdp"',
    ),
    Case(
        "train --videos with an index that is not UTF-8",
        (*TRAIN, "--steps", "3", "--out", "{RUN}", "--force", "--videos", "{X}/videos"),
        2,
        "line 2 is not UTF-8 text",
        _latin1_index,
        "an index.csv saved as Latin-1, with an accented caption",
    ),
    Case(
        "train --videos of a folder with no index",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--videos", "{X}"),
        2,
        "holds neither of index.csv and index.jsonl: give its index with --index FILE",
    ),
    Case(
        "train --force --videos where no video is usable",
        (*TRAIN, "--steps", "3", "--out", "{RUN}", "--force", "--videos", "{X}/videos"),
        2,
        "no usable videos in",
        _unusable_videos,
        "an index whose only file is not a video",
    ),
    Case(
        "train --resume --videos of a run trained on the toy world",
        ("train", "--steps", "3", "--out", "{RUN}", "--resume", "--videos", "{X}/videos"),
        2,
        "holds no state of a dataset like this run's VideoTextFolder",
        _videos_beside_a_toy_run,
        "a folder of three 16-frame videos beside a trained toy-world run",
    ),
    Case(
        "a second trainer on one run folder",
        (*TRAIN, "--steps", "1", "--out", "{X}/locked"),
        2,
        "is in use by pid",
        _locked,
        "another process holds the run's lock",
    ),
    Case(
        "train --lr 1e6 (the loss turns NaN)",
        (*TRAIN, "--steps", "30", "--lr", "1e6", "--out", "{X}/r", "--checkpoint-every", "1"),
        1,
        "non-finite loss (nan) at step",
        how="stops naming the last good checkpoint; --on-nan skip skips such steps",
    ),
    Case(
        "disk full while saving a checkpoint",
        (*TRAIN, "--steps", "1", "--out", "{FULL}/r"),
        1,
        "no space left on the device writing",
        _small_disk,
        "a real 1 MiB tmpfs",
    ),
    Case(
        "disk full while saving a checkpoint (safetensors' error)",
        (*TRAIN, "--steps", "1", "--out", "{X}/r"),
        1,
        "no space left on the device writing",
        _safetensors_full,
        "safetensors' writer monkeypatched to fail with 'os error 28'",
    ),
    Case(
        "a damaged text-cache entry",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--text-cache", "{X}/c"),
        0,
        "is damaged (",
        _damaged_text_cache,
        "truncated entries: each is encoded again and rewritten",
    ),
    Case(
        "distill --seed 2**70",
        ("distill", "--stage", "base", "--out", "{X}/d", "--seed", str(2**70)),
        2,
        SEED_MSG,
    ),
    Case(
        "distill --to-steps that halvings cannot reach",
        ("distill", "--stage", "base", "--out", "{X}/d", "--to-steps", "6"),
        2,
        "to_steps=6: distillation halves the teacher's 64 steps; allowed:",
    ),
    Case(
        "distill --resume where nothing was distilled (a mistyped --out)",
        ("distill", "--stage", "base", "--out", "{X}/d", "--resume"),
        2,
        "holds no distillation (distill.json is missing); give the --out of the distillation",
    ),
    Case(
        "distill --stage that the cascade has not trained",
        ("distill", "--stage", "nope", "--out", "{X}/d"),
        2,
        "--stage 'nope': the cascade's trained stages are ['base', 'tsr', 'ssr1', 'ssr2']",
    ),
    Case(
        "train --new-streams without --resume",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--new-streams"),
        2,
        "--new-streams starts new random streams for --resume; add --resume",
    ),
    Case(
        "train --fsdp in one process",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--fsdp"),
        2,
        "fsdp=True shards the model between processes, and this is the only one",
    ),
    Case(
        "distill --fsdp in one process",
        ("distill", "--stage", "base", "--out", "{X}/d", "--fsdp"),
        2,
        "fsdp=True shards each student between processes, and this is the only one",
    ),
    Case(
        "distill --from a folder that holds no cascade",
        ("distill", "--stage", "base", "--from", "{X}", "--out", "{X}/d"),
        2,
        "cascade.json not found: a cascade folder holds cascade.json",
    ),
    Case(
        "train --batch-size 2**70",
        (*TRAIN[:-2], "--steps", "1", "--out", "{X}/r", "--batch-size", str(2**70)),
        2,
        f"expected a positive integer up to 2**31 - 1, got {2**70}",
    ),
    Case(
        "train --threads 2**70",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--threads", str(2**70)),
        2,
        "argument --threads: expected a positive integer up to 2**31 - 1",
    ),
    Case(
        "train --seed 2**70",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--seed", str(2**70)),
        2,
        SEED_MSG,
    ),
    Case(
        "train --steps 0",
        (*TRAIN, "--steps", "0", "--out", "{X}/r"),
        2,
        "expected a positive integer, got 0",
    ),
    Case(
        "train --image-ratio 2",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--image-ratio", "2"),
        2,
        "expected a number in [0, 1], got 2",
    ),
    Case(
        "train a TSR stage on images",
        (*TRAIN, "--stage", "tsr", "--steps", "1", "--out", "{X}/r", "--image-ratio", "0.3"),
        2,
        "train.image_ratio=0.3 is invalid: must be 0 for a TSR stage",
    ),
    Case(
        "train --eval-guidance nan",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--eval-guidance", "nan"),
        2,
        W_MSG,
    ),
    Case(
        "train --eval-steps 1000000000",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--eval-steps", "1000000000"),
        2,
        STEPS_MSG,
    ),
    Case(
        "train --device cuda without CUDA",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--device", "cuda"),
        2,
        "CUDA is not available here",
        _no_cuda,
    ),
    Case(
        "a T5 preset without --text-encoder",
        ("train", "--scale", "paper", "--steps", "1", "--out", "{X}/r"),
        2,
        f"needs a local T5 checkpoint; {T5}",
    ),
    Case(
        "--text-encoder names no folder",
        ("train", "--scale", "paper", "--steps", "1", "--out", "{X}/r", "--text-encoder", "{X}/no"),
        2,
        f"does not exist; {T5}",
    ),
    Case(
        "--text-encoder with a built-in encoder",
        (*TRAIN, "--steps", "1", "--out", "{X}/r", "--text-encoder", "{X}"),
        2,
        "--text-encoder is for encoder 't5'",
    ),
    # export and evaluate
    Case(
        "export a run whose newest checkpoint is damaged",
        ("export", "{RUN}", "--out", "{X}/c"),
        0,
        "skipping damaged step-00000002",
        _damaged_newest,
        "the previous checkpoint is exported",
    ),
    Case(
        "export a run with NaN weights",
        ("export", "{RUN}", "--out", "{X}/c"),
        2,
        "non-finite values (NaN or inf)",
        _nan_weights,
    ),
    Case(
        "export a run whose checkpoints lack their manifest",
        ("export", "{RUN}", "--out", "{X}/c"),
        2,
        NO_MANIFEST,
        _without_manifests,
    ),
    Case(
        "export --out on a read-only file system",
        ("export", "{RUN}", "--out", "{RO}/cascade"),
        2,
        "(Read-only file system); choose a writable place",
        lambda ctx: (ctx.run(), _read_only(ctx)),
        "a read-only tmpfs",
    ),
    Case(
        "export --out onto a cascade",
        ("export", "{RUN}", "--out", "{CASCADE}"),
        2,
        "already holds a cascade (cascade.json); pass --force",
        _cascade,
    ),
    Case(
        "export a run before its first checkpoint",
        ("export", "{X}/young", "--out", "{X}/c"),  # said it was no run folder at all
        2,
        "is an `ivref train` run that stopped before its first checkpoint (nothing holds it",
        lambda ctx: (
            (ctx.tmp / "young").mkdir()
            or (ctx.tmp / "young" / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
        ),
        "a run folder holding only its log",
    ),
    Case(
        "export --out into a training run's folder",
        ("export", "{RUN}", "--out", "{RUN}"),  # a mistyped --out made the run read as a cascade
        2,
        "is a training run's folder (it holds log.jsonl): a cascade there would be read in place",
        lambda ctx: ctx.run(),
    ),
    Case(
        "export --sampling base without --base",
        ("export", "{RUN}", "--out", "{X}/c", "--sampling", "base"),
        2,
        "--sampling base takes the settings of the --base cascade: give --base",
        lambda ctx: ctx.run(),
    ),
    Case(
        "export an SR stage's run alone",
        ("export", "{X}/tsr", "--out", "{X}/c"),
        2,
        "['base'] are missing: give their runs too, or --base CASCADE",
        _tsr_run,
        "a ci TSR run of 1 step",
    ),
    Case(
        "export a folder that is no run",
        ("export", "{X}", "--out", "{X}/c"),
        2,
        "not an `ivref train` run",
    ),
    Case("evaluate --seed 2**70", ("evaluate", "--seed", str(2**70)), 2, SEED_MSG),
    Case("evaluate --guidance nan", ("evaluate", "--guidance", "nan"), 2, W_MSG),
    Case("evaluate --steps 1000000000", ("evaluate", "--steps", "1000000000"), 2, STEPS_MSG),
    Case("evaluate --split test", ("evaluate", "--split", "test"), 2, "unknown split 'test'"),
    Case(
        "evaluate --json is a folder",
        ("evaluate", "--json", "{X}"),
        2,
        "is a folder; give a file name",
    ),
    Case(
        "evaluate --guidance for a stage that --until leaves out",
        ("evaluate", "--distilled", "--until", "base", "--guidance", "tsr=0"),
        2,
        "--guidance names ['tsr'], which --until base leaves out (it samples ['base'])",
    ),
    Case(
        "generate --distilled of a distilled cascade",
        (*GEN, "--checkpoint", "{SHIPPED}/distilled", "--distilled", "--out", "{X}/v.gif"),
        2,
        "is a distilled cascade itself: load it as it is",
    ),
    Case(
        "generate --checkpoint a run's checkpoints/ folder",
        (*GEN, "--checkpoint", "{RUN}/checkpoints", "--out", "{X}/v.gif"),
        2,
        "is the checkpoints/ folder of a run: give the run folder",
        Ctx.run,
    ),
    Case(
        "info --scale with a cascade folder",
        ("info", "--scale", "ci", "--distilled"),
        2,
        "--scale names a preset; a cascade folder (--checkpoint, --distilled) has its own",
    ),
]


CASE_SECONDS = 120  # a refusal takes seconds; a bad input let through starts real work


class CaseTimeout(BaseException):
    """Not an Exception (TimeoutError is an OSError): no handler in ivref swallows it."""


def _out_of_time(signum, frame):
    raise CaseTimeout(
        f"ran past {CASE_SECONDS} s: a bad input that is not refused starts real work (a "
        "toy-scale training or distillation), so this case fails here instead of hanging CI"
    )


def _cli(case: Case, ctx: Ctx) -> tuple[int, str]:
    from ivref import cli

    if case.setup:
        case.setup(ctx)
    argv = [a.format(**ctx.paths) for a in case.argv]
    before = signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(CASE_SECONDS)
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse: the error line, then where --help is; status 2
        status = exit.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    return status, argv


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-step ci base run with checkpoints at steps 1 and 2."""
    from ivref import cli

    run = tmp_path_factory.mktemp("trained") / "run"
    argv = ["train", "--scale", "ci", "--steps", "2", "--checkpoint-every", "1"]
    assert cli.main([*argv, "--batch-size", "2", "--out", str(run)]) == 0
    return run


@pytest.fixture
def ctx(tmp_path, trained, monkeypatch):
    mounts: list[Path] = []
    context = Ctx(tmp_path, trained, monkeypatch, mounts)
    yield context
    if context.child is not None:
        context.child.kill()
        context.child.wait()
        context.child.stdout.close()
    for point in mounts:
        unmount(point)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input_gets_one_clear_line(case, ctx, capsys, recwarn):
    status, argv = _cli(case, ctx)
    err = capsys.readouterr().err
    said = err + "\n".join(str(w.message) for w in recwarn)  # warnings go to stderr in a shell
    assert case.message in said, f"ivref {' '.join(argv)}\n{err}"
    assert status == case.status, err
    for banned in BANNED:
        assert banned not in err
    if status:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("ivref"), err


# -- library calls ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LibCase:
    what: str
    call: str  # what the docs show
    error: type[BaseException]
    message: str
    run: Callable[[Ctx], object]

    @property
    def id(self) -> str:
        return self.what


def _ci_cascade(ctx: Ctx):
    from ivref import cascade, configs
    from ivref.unet3d import VideoUNet

    cfg = configs.preset("ci")
    return cascade.Cascade(cfg, {"base": VideoUNet(cfg.stages[0].unet)})


def _another_text_encoder(ctx: Ctx):
    from ivref import text

    model = _ci_cascade(ctx)
    probe = text.probe(model.encoder)  # as cascade.json records it
    other = text.TinyT5Encoder(model.cfg.text, seed=1)  # as if another T5 were at the path
    swapped = type(model)(model.cfg, dict(model.models.items()), other, text_probe=probe)
    swapped.generate([PROMPT])


def _locked_by_another(ctx: Ctx):
    from ivref import files

    _locked(ctx)
    files.RunLock(ctx.tmp / "locked").acquire()


def _save_nan(ctx: Ctx):
    from ivref import checkpoint

    checkpoint.save_weights(ctx.tmp / "w.safetensors", {"w": torch.tensor([float("nan")])})


def _trainer_seed(ctx: Ctx):
    from ivref import configs, text, train

    cfg = configs.preset("ci")
    encoder = text.build_encoder(cfg.text)
    train.Trainer(cfg, "base", ctx.tmp, text_encoder=encoder, seed=2**64, progress=False)


def _trainer_batch(ctx: Ctx):
    from ivref import configs, text, train

    cfg = configs.preset("ci")
    encoder = text.build_encoder(cfg.text)
    train.Trainer(cfg, "base", ctx.tmp, text_encoder=encoder, batch_size=-2, progress=False)


def _bool_from_a_string(ctx: Ctx):
    from ivref import configs

    data = configs.preset("ci").to_dict()
    data["stages"][0]["oscillating_guidance"] = "false"
    configs.CascadeConfig.from_dict(data)


def _objective_rng_named_train(ctx: Ctx):
    from ivref import configs, text, train

    cfg = configs.preset("ci")
    encoder = text.build_encoder(cfg.text)
    objective = train.Trainer(cfg, "base", ctx.tmp / "a", text_encoder=encoder).objective
    objective.rng_state = lambda: {"train": torch.Generator().get_state()}
    train.Trainer(cfg, "base", ctx.tmp / "b", objective=objective)


def _sample_steps(ctx: Ctx):
    from ivref import samplers

    samplers.sample(lambda z, logsnr: z, (1, 3, 1, 2, 2), steps=10**9)


def _expand(ctx: Ctx):
    from ivref import schedules

    schedules.expand_to(torch.ones(2, 1), torch.zeros(3, 3, 2, 4, 4))


def _t5(ctx: Ctx):
    from ivref import configs, text

    text.build_encoder(configs.TextConfig(encoder="t5", dim=4096))


def _stray_text_path(ctx: Ctx):
    from ivref import configs

    configs.TextConfig(path="my_t5")  # encoder tiny-t5: built in, the path was ignored


def _t5_under_a_tiny_t5_config(ctx: Ctx):
    from ivref import configs, text, train

    cfg = configs.preset("ci")
    t5 = text.build_encoder(cfg.text)
    t5.model.save_pretrained(ctx.tmp / "t5")
    t5.tokenizer.save_pretrained(ctx.tmp / "t5")
    given = text.T5Encoder.from_pretrained(ctx.tmp / "t5", cfg.text.max_length)
    train.Trainer(cfg, "base", ctx.tmp / "run", text_encoder=given, progress=False)


def _tensor_of_weights(ctx: Ctx):
    from ivref import guidance

    emb, mask = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    guidance.guided_x_hat_fn(torch.nn.Identity(), emb, mask, torch.tensor([1.0, 5.0]))


def _untrained_stage_to_distil(ctx: Ctx):
    from ivref import configs, distill
    from ivref.cascade import Cascade
    from ivref.unet3d import VideoUNet

    cfg = configs.preset("ci")
    teacher = Cascade(cfg, {"base": VideoUNet(cfg.stage("base").unet)})
    distill.distill_stage(teacher, "tsr", ctx.tmp / "d", progress=False)


def _step_past_zero(ctx: Ctx):
    from ivref import distill

    z = torch.zeros(2, 3)
    distill.pd_target(lambda z, logsnr: z, z, torch.full((2,), 0.25), 0.5)


def _odd_embedding(ctx: Ctx):
    from ivref import layers

    layers.sinusoidal_embedding(torch.zeros(2), 7)


def _guided_unguided_student(ctx: Ctx):
    from ivref import cascade, distill

    c = _ci_cascade(ctx)
    base = dataclasses.replace(c.cfg.stage("base"), guidance_w=0.0)  # a stage sampled unguided
    unguided = dataclasses.replace(c.cfg, stages=(base, *c.cfg.stages[1:]))
    cfg = distill.student_config(unguided, "base", 4, w_max=0.0)  # learnt w = 0 only
    student = distill.with_guidance_embedding(c.models["base"]).eval()
    cascade.Cascade(cfg, {"base": student}, c.encoder).generate([PROMPT], guidance=1.0)


def _distil_below_own_guidance(ctx: Ctx):
    from ivref import cascade, configs, distill
    from ivref.unet3d import VideoUNet

    cfg = configs.preset("ci")  # its TSR samples at w = 2 (oscillating with 0.5)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, w_max=1.0))
    c = cascade.Cascade(cfg, {s.name: VideoUNet(s.unet) for s in cfg.stages[:2]})
    distill.distill_stage(c, "tsr", ctx.tmp / "d", progress=False)


def _overwrite(ctx: Ctx):
    c = _ci_cascade(ctx)
    c.save_pretrained(ctx.tmp / "c")
    c.save_pretrained(ctx.tmp / "c")


def _two_processes(ctx: Ctx) -> None:
    from ivref import distributed

    ctx.monkeypatch.setattr(distributed, "current", lambda: distributed.Context(0, 2, 0))


def _odd_global_batch(ctx: Ctx):
    from ivref import configs, train

    _two_processes(ctx)
    train.Trainer(configs.preset("ci"), "base", ctx.tmp / "r", batch_size=3, text_encoder=object())


def _resume_by_another_world(ctx: Ctx):
    from ivref import distributed

    saved = distributed.pack_rng([{"train": torch.zeros(2, dtype=torch.uint8)}] * 2)
    distributed.unpack_rng(saved, distributed.Context(0, 1, 0))


def _unreadable_video(ctx: Ctx):
    from ivref import video

    (ctx.tmp / "broken.mp4").write_bytes(b"not a video")
    video.read_video(ctx.tmp / "broken.mp4")


def _cascade_from_a_file(ctx: Ctx):
    from ivref.cascade import Cascade

    (ctx.tmp / "README.md").write_text("not a cascade")
    Cascade.from_pretrained(ctx.tmp / "README.md")


def _return_stages_as_a_word(ctx: Ctx):
    from ivref.cascade import Cascade

    Cascade.from_pretrained(variant="distilled").generate(["a red circle"], return_stages="no")


def _folder_without_videos(ctx: Ctx):
    from ivref import video_folder

    (ctx.tmp / "index.csv").write_text("path,caption\nmissing.mp4,a red circle\n")
    with pytest.warns(UserWarning, match="skipping 'missing.mp4': file not found"):
        video_folder.VideoTextFolder(ctx.tmp, ctx.tmp / "index.csv", 8, 16, 16, fps=3.0)


def _folder_whose_root_is_a_file(ctx: Ctx):
    from ivref import video_folder

    (ctx.tmp / "index.csv").write_text("path,caption\nclip.mp4,a red circle\n")
    video_folder.VideoTextFolder(ctx.tmp / "index.csv", ctx.tmp / "index.csv", 8, 16, 16, fps=3.0)


def _index_with_other_columns(ctx: Ctx):
    from ivref import video_folder

    (ctx.tmp / "index.csv").write_text("file,text\nclip.mp4,a red circle\n")
    video_folder.VideoTextFolder(ctx.tmp, ctx.tmp / "index.csv", 8, 16, 16, fps=3.0)


def _folder_for_no_frames(ctx: Ctx):
    from ivref import video_folder

    (ctx.tmp / "index.csv").write_text("path,caption\n")
    video_folder.VideoTextFolder(ctx.tmp, ctx.tmp / "index.csv", 0, 16, 16, fps=3.0)


def _nan_video(ctx: Ctx):
    from ivref import video

    video.write_video(ctx.tmp / "v.mp4", torch.full((3, 2, 8, 8), float("nan")), fps=6)


LIBRARY_CASES = [
    LibCase(
        "a cascade path of another type",
        "Cascade.from_pretrained(3)",
        TypeError,
        "dir=3 must be a folder's path (str or Path), or None",
        lambda ctx: __import__("ivref.cascade").cascade.Cascade.from_pretrained(3),
    ),
    LibCase(
        "a file given for a cascade folder",
        "Cascade.from_pretrained('README.md')",
        NotADirectoryError,
        "README.md' is a file; give the cascade folder (it holds cascade.json)",
        _cascade_from_a_file,
    ),
    LibCase(
        "a flag given as a word",
        "cascade.generate(prompts, return_stages='no')",
        TypeError,
        "return_stages='no' must be True or False",
        _return_stages_as_a_word,
    ),
    LibCase(
        "a global batch that does not split between the processes",
        "train.Trainer(cfg, 'base', out, batch_size=3) in each of 2 torchrun processes",
        ValueError,
        "batch_size=3 must be a multiple of the 2 processes: it is the global batch",
        _odd_global_batch,
    ),
    LibCase(
        "resuming with another number of processes",
        "Trainer.resume() (ivref train --resume) by 1 process, of a run 2 processes trained",
        ValueError,
        "this run was trained by 2 process(es) and is resumed by 1: each process has its own",
        _resume_by_another_world,
    ),
    LibCase(
        "a file ffmpeg cannot read",
        "video.read_video('broken.mp4')",
        ValueError,
        "is not a readable video (ffmpeg: ",
        _unreadable_video,
    ),
    LibCase(
        "a folder of training videos where none can be used",
        "video_folder.VideoTextFolder(root, 'index.csv', 8, 16, 16, fps=3) (files missing, "
        "unreadable, too short or too slow)",
        ValueError,
        "no usable videos in '",
        _folder_without_videos,
    ),
    LibCase(
        "a folder of training videos whose root is a file",
        "video_folder.VideoTextFolder('index.csv', 'index.csv', 8, 16, 16, fps=3)",
        ValueError,
        "index.csv' is a file: give the folder that the index's paths are relative to",
        _folder_whose_root_is_a_file,
    ),
    LibCase(
        "a CSV index whose header names other columns",
        "video_folder.VideoTextFolder(root, 'index.csv', 8, 16, 16, fps=3) (header file,text)",
        ValueError,
        "line 1: the header names the columns ['file', 'text']; a CSV index needs a header",
        _index_with_other_columns,
    ),
    LibCase(
        "a folder of training videos for clips of 0 frames",
        "video_folder.VideoTextFolder(root, 'index.csv', 0, 16, 16, fps=3)",
        ValueError,
        "num_frames=0 must be a positive integer (the stage's)",
        _folder_for_no_frames,
    ),
    LibCase(
        "a video with NaN in it",
        "video.write_video('v.mp4', video_with_nan, fps=6)",
        ValueError,
        "the video holds 384 non-finite values (NaN or inf)",
        _nan_video,
    ),
    LibCase(
        "distilling below the stage's own guidance",
        "distill.distill_stage(...) with DistillConfig.w_max = 1 for a stage sampled at w = 2",
        ValueError,
        "DistillConfig.w_max=1 is below the guidance weight 2 that stage 'tsr' samples at",
        _distil_below_own_guidance,
    ),
    LibCase(
        "guidance for a student distilled without it",
        "Cascade.generate(prompts, guidance=1.0) on a student with guidance_w_max = 0",
        ValueError,
        "this distilled student learnt guidance weights 0 <= w <= 0.0 only",
        _guided_unguided_student,
    ),
    LibCase(
        "guidance NaN",
        "Cascade.generate(prompts, guidance=float('nan'))",
        ValueError,
        "guidance=nan must be a number from 0 (no guidance) to 1000",
        lambda ctx: _ci_cascade(ctx).generate([PROMPT], guidance=float("nan")),
    ),
    LibCase(
        "another text encoder of the same width than the cascade was trained with",
        "Cascade.from_pretrained(dir).generate(prompts) with another T5 at the cascade's path",
        ValueError,
        "is not the one this cascade was trained with: its embedding of 'a red circle moving",
        _another_text_encoder,
    ),
    LibCase(
        "a billion sampler steps",
        "Cascade.generate(prompts, steps=10**9)",
        ValueError,
        "steps=1000000000 must be an integer from 1 to 10000",
        lambda ctx: _ci_cascade(ctx).generate([PROMPT], steps=10**9),
    ),
    LibCase(
        "a billion sampler steps, one level down",
        "samplers.sample(x_hat_fn, shape, steps=10**9)",
        ValueError,
        "allowed: an integer from 1 to 10000",
        _sample_steps,
    ),
    LibCase(
        "a seed past 2**63 - 1",
        "Cascade.generate(prompts, seed=2**64)",
        ValueError,
        "must be an integer from 0 to 2**63 - 1",
        lambda ctx: _ci_cascade(ctx).generate([PROMPT], seed=2**64),
    ),
    LibCase(
        "a seed past 2**63 - 1 for training",
        "train.Trainer(cfg, 'base', out, seed=2**64)",
        ValueError,
        "must be an integer from 0 to 2**63 - 1",
        _trainer_seed,
    ),
    LibCase(
        "a negative batch size for training",
        "train.Trainer(cfg, 'base', out, batch_size=-2)",
        ValueError,
        "batch_size=-2 must be None (the stage's) or an integer from 1 to 2**31 - 1",
        _trainer_batch,
    ),
    LibCase(
        "a bool config field given as a string (an edited config.json)",
        "CascadeConfig.from_dict(data) with stages[0].oscillating_guidance = 'false'",
        ValueError,
        "oscillating_guidance='false' is invalid: must be true or false (a bool), not str",
        _bool_from_a_string,
    ),
    LibCase(
        "an objective that saves its streams under the loop's names",
        "train.Trainer(cfg, 'base', out, objective=obj) where obj.rng_state() has 'train'",
        ValueError,
        "rng_state() names ['train'], which the training loop saves its own random states under",
        _objective_rng_named_train,
    ),
    LibCase(
        "one prompt as a string",
        "Cascade.generate('a red circle')",
        ValueError,
        "got one string; wrap it: [prompt]",
        lambda ctx: _ci_cascade(ctx).generate(PROMPT),
    ),
    LibCase(
        "a coefficient that does not broadcast per sample",
        "schedules.expand_to(torch.ones(2, 1), x)",
        ValueError,
        "does not broadcast per sample",
        _expand,
    ),
    LibCase(
        "encoder 't5' without a path",
        "text.build_encoder(TextConfig(encoder='t5', dim=4096))",
        ValueError,
        "TextConfig.path",
        _t5,
    ),
    LibCase(
        "a device name that is none",
        "cascade.parse_device('foo')",
        ValueError,
        "is not a device name",
        lambda ctx: __import__("ivref.cascade").cascade.parse_device("foo"),
    ),
    LibCase(
        "NaN weights to save",
        "checkpoint.save_weights(path, state_dict)",
        checkpoint.NonFiniteError,
        "non-finite values (NaN or inf)",
        _save_nan,
    ),
    LibCase(
        "save_pretrained onto a cascade",
        "Cascade.save_pretrained(folder)",
        FileExistsError,
        "already holds a cascade",
        _overwrite,
    ),
    LibCase(
        "a T5 folder for an encoder that takes none",
        "TextConfig(path='my_t5')",
        ValueError,
        "a checkpoint folder is for encoder 't5'; encoder 'tiny-t5' is built in",
        _stray_text_path,
    ),
    LibCase(
        "a text encoder the config does not describe",
        "train.Trainer(ci, 'base', out, text_encoder=a_t5)",
        ValueError,
        "a 't5' encoder, but the config's text says encoder='tiny-t5'",
        _t5_under_a_tiny_t5_config,
    ),
    LibCase(
        "guidance weights as a tensor",
        "guidance.guided_x_hat_fn(model, emb, mask, torch.tensor([1.0, 5.0]))",
        ValueError,
        "w is a tensor of shape (2,)",
        _tensor_of_weights,
    ),
    LibCase(
        "a stage the teacher cascade has not trained",
        "distill.distill_stage(teacher, 'tsr', out)",
        ValueError,
        "stage='tsr': the cascade's trained stages are ['base']",
        _untrained_stage_to_distil,
    ),
    LibCase(
        "a progressive step that lands before t = 0",
        "distill.pd_target(teacher, z_t, t=0.25, dt=0.5)",
        ValueError,
        "allowed: student times in [dt, 1]",
        _step_past_zero,
    ),
    LibCase(
        "an odd width of sinusoidal features",
        "layers.sinusoidal_embedding(x, 7)",
        ValueError,
        "dim=7 is invalid; allowed: an even int >= 2",
        _odd_embedding,
    ),
    LibCase(
        "a run folder locked by another process",
        "files.RunLock(folder).acquire()",
        files.RunLockedError,
        "is in use by pid",
        _locked_by_another,
    ),
]


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=lambda c: c.id)
def test_library_bad_input_raises_a_clear_error(case, ctx):
    with pytest.raises(case.error) as info:
        case.run(ctx)
    assert case.message in str(info.value)
    assert "\n" not in str(info.value)


# -- docs/errors.md -----------------------------------------------------------------------------

SHOWN = {"X": "out", "RUN": "runs/base", "RO": "/mnt/readonly", "FULL": "/mnt/full"}
SHOWN["CASCADE"] = "my-cascade"
SHOWN["SHIPPED"] = "data/toy"


def _shell(argv: tuple[str, ...]) -> str:
    import shlex

    words = [a.format(**SHOWN) for a in argv]
    return "ivref " + " ".join(shlex.quote(w) for w in words)


def render() -> str:
    """docs/errors.md from the two tables."""
    head = textwrap.dedent(
        """\
        # Errors: what ivref says about bad input

        Generated from `tests/test_errors.py` (run `python tests/test_errors.py` after changing
        the tables; a test fails while this file is stale). Every row is run by the tests: the
        command must print one line containing the message (no traceback) and exit with the
        status shown. Exit statuses: 0 done (a warning was printed), 1 the work failed, 2 bad
        input; 130 / 143 after Ctrl-C / SIGTERM, with the checkpoint saved.

        `runs/base` is an `ivref train` run folder (checkpoints at steps 1 and 2), `out` any
        folder, `/mnt/readonly` a read-only file system and `/mnt/full` a full one.

        ## The `ivref` command

        | bad input | command | exit | the message contains | how the test makes it |
        |---|---|---|---|---|
        """
    )
    rows = [
        f"| {c.what} | `{_shell(c.argv)}` | {c.status} | {_md(c.message)} | {c.how} |"
        for c in CLI_CASES
    ]
    lib = textwrap.dedent(
        """
        ## The library

        | bad input | call | raises | the message contains |
        |---|---|---|---|
        """
    )
    lib_rows = [
        f"| {c.what} | `{c.call}` | {c.error.__name__} | {_md(c.message)} |" for c in LIBRARY_CASES
    ]
    return head + "\n".join(rows) + "\n" + lib + "\n".join(lib_rows) + "\n"


def _md(text: str) -> str:
    """``text`` as a code span in a table cell (two backticks where it holds one)."""
    fence, pad = ("``", " ") if "`" in text else ("`", "")
    return fence + pad + text.replace("|", "\\|") + pad + fence


def test_docs_errors_md_is_up_to_date():
    assert DOC.is_file() and DOC.read_text() == render(), (
        "docs/errors.md is stale: run `python tests/test_errors.py`"
    )


def test_every_row_is_documented_once():
    names = [c.what for c in CLI_CASES] + [c.what for c in LIBRARY_CASES]
    assert len(names) == len(set(names))


def test_os_errors_of_other_writers_become_one_clear_line(tmp_path):
    from ivref import errors, files

    def ffmpeg_full(tmp):
        raise RuntimeError("Error writing: No space left on device\nmore\nlog")

    with pytest.raises(OSError) as info:
        files.atomic_write(tmp_path / "v.gif", ffmpeg_full)
    assert info.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
    message, status = errors.describe(info.value)
    assert status == 1 and message.startswith("no space left on the device writing")
    assert errors.describe(RuntimeError("one\ntwo")) == ("RuntimeError: one [...]", 1)
    message, status = errors.describe(KeyError("x"))
    assert status == 1 and "internal error, KeyError" in message and "IVREF_DEBUG=1" in message


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")
