"""The flags of an ``ivref train`` run (or ``ivref distill``) that its checkpoints do not hold,
kept for ``--resume``.

How often a run saves and evaluates, what it evaluates, what it does on a non-finite loss and
whether it shards its state between processes (``--fsdp``) are options of the command, not of
the model or its training config, so a checkpoint does not record them.
``<run>/run_flags.json`` does: the command that starts a run writes it, and each
``--resume`` writes it again. A resume takes every flag it is not given from that file (from
the defaults for a run made before the file existed), so ``ivref train --steps N --out RUN
--resume`` goes on as the run was going; a flag given on the resume replaces the run's, says
so, and is kept for later resumes. The word ``default`` given for a flag puts it back to the
fresh run's default (``--eval-samples default``: all captions again), which leaving the flag
out cannot do on a resume.

``ivref distill`` keeps its own two (``DISTILL``: how often each phase saves, and ``--fsdp``)
in ``<out>/run_flags.json`` the same way; its plan (``distill.json``) keeps the rest.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ivref import errors, files

FILE = "run_flags.json"
DEFAULTS: dict[str, Any] = {  # attribute of the parsed arguments: a fresh run's default
    "checkpoint_every": 500,
    "keep_checkpoints": 2,
    "eval_every": 0,
    "eval_steps": None,
    "eval_guidance": None,
    "eval_samples": None,
    "val_index": None,
    "on_nan": "stop",
    "fsdp": False,  # a stage that fits only sharded must stay sharded on a plain --resume
}
DISTILL: dict[str, Any] = {"checkpoint_every": 100, "fsdp": False}  # ivref distill's
SHOWN = {  # what a default of None (or 0) means, as the help and the notes say it
    "eval_every": "0, none",
    "eval_steps": "the stage's",
    "eval_guidance": "the stage's",
    "eval_samples": "all",
}
DEFAULT = "default"  # the value that puts a kept flag back to DEFAULTS on a resume
PATHS = ("val_index",)  # kept as absolute paths: a resume may run from another directory
EVALUATION = ("eval_steps", "eval_guidance", "eval_samples", "val_index")  # --eval-every's


def flag(name: str) -> str:
    """The command-line spelling of a setting: checkpoint_every -> --checkpoint-every."""
    return "--" + name.replace("_", "-")


def shown(name: str, defaults: dict[str, Any] = DEFAULTS) -> str:
    """A flag's default as the help says it: "500", "all", "the stage's"."""
    return SHOWN.get(name, str(defaults[name]))


def or_default(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that reads ``kind``, or the word ``default`` (kept as ``DEFAULT``
    for ``settle``)."""

    def parse(text: str) -> Any:
        if text == DEFAULT:
            return DEFAULT
        try:
            return kind(text)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err}; or 'default' for the default") from None

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse's "invalid <name> value"
    return parse


def _stored(name: str, value: Any) -> Any:
    return str(Path(value).resolve()) if name in PATHS and value is not None else value


def read(out: Path, defaults: dict[str, Any] = DEFAULTS) -> dict[str, Any]:
    """The flags saved in run folder ``out`` ({} where it has none: a run from before)."""
    path = out / FILE
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON object was expected, got {type(saved).__name__}")
    except (ValueError, UnicodeDecodeError) as err:
        raise errors.CLIError(
            f"--resume: {str(path)!r} is damaged ({err}); delete it to resume with the default "
            "flags, or with those you give"
        ) from None
    return {name: value for name, value in saved.items() if name in defaults}


def settle(args: argparse.Namespace, defaults: dict[str, Any] = DEFAULTS) -> list[str]:
    """Give every flag of ``defaults`` that the command line left out (None) its value: the
    run's own on ``--resume``, else the default; ``DEFAULT`` (the word ``default``) gives
    the default; with evaluation off (``--eval-every 0``), what it would evaluate takes the
    defaults. Returns, on a resume, one note per flag given with another value than the
    run's ("--eval-every: 3 -> 5", "--eval-samples: 4 -> the default (all)").
    ``args.flags_from_run`` names the flags that came from the run."""
    saved = read(args.out, defaults) if args.resume else {}
    notes = []
    args.flags_from_run = set()
    for name, default in defaults.items():
        given = getattr(args, name)
        if isinstance(given, str) and given == DEFAULT:
            setattr(args, name, default)
            if name in saved and saved[name] != default:
                shown_ = shown(name, defaults)
                notes.append(f"{flag(name)}: {saved[name]} -> the default ({shown_})")
        elif given is None:
            value = saved.get(name, default)
            setattr(args, name, Path(value) if name in PATHS and value is not None else value)
            if name in saved:
                args.flags_from_run.add(name)
        elif name in saved and _stored(name, given) != saved[name]:
            notes.append(f"{flag(name)}: {saved[name]} -> {_stored(name, given)}")
    if "eval_every" in defaults and not args.eval_every:  # nothing is evaluated: the run's
        # evaluation settings rest
        for name in EVALUATION:
            if name in args.flags_from_run:
                setattr(args, name, DEFAULTS[name])
                args.flags_from_run.discard(name)
    return notes


def write(out: Path, args: argparse.Namespace, defaults: dict[str, Any] = DEFAULTS) -> Path:
    """Save the run's flags (after ``settle``) in ``out``, atomically; a resume does so
    once its checkpoint has loaded (a resume that fails keeps the run's flags as they were)."""
    kept = {name: _stored(name, getattr(args, name)) for name in defaults}
    return files.atomic_write_text(out / FILE, json.dumps(kept, indent=1) + "\n")
