"""The toy cascade shipped in ``data/toy``: where it is, and the commands that remake it.

``shipped_dir()`` is the folder ``Cascade.from_pretrained()`` loads by default (cascade.py);
``remake_commands`` are the ``ivref`` commands its error messages print when a stage's
weights are missing. cascade.py re-exports every name here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DISTILLED = "distilled"  # subfolder of a cascade folder holding its distilled variant
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "toy"


def shipped_dir() -> Path:
    """The folder of the shipped toy cascade: ``$IVREF_WEIGHTS`` if set, else ``data/toy``.
    Set but empty (``IVREF_WEIGHTS=``) counts as unset, as ``IVREF_SCALE=`` does: the empty
    path would be the current folder."""
    return Path(os.environ.get("IVREF_WEIGHTS") or SHIPPED_DIR)


# Training steps of the shipped toy stages (data/README.md gives each run's cost).
TOY_TRAIN_STEPS = {"base": 3000, "tsr": 2000, "ssr1": 2271, "ssr2": 12168}
# The options of the shipped toy distillations (batch and phase lengths, CPU-sized; the SR
# students in float32: under bf16 autocast SSR 64 kept 1.9 dB less, docs/benchmarks.md; the
# base student in float32 too: it was distilled on a CPU without native bf16).
TOY_DISTILL_ARGS = {
    "base": "--batch-size 16 --guided-steps 300 --halving-steps 300,300,600 --no-bf16",
    "tsr": "--batch-size 8 --halving-steps 400",
    "ssr1": "--batch-size 8 --halving-steps 600,1000 --no-bf16",
    "ssr2": "--batch-size 8 --halving-steps 600 --no-bf16",
}


def remake_commands(
    stages: Sequence[str],
    distilled: bool = False,
    folder: str | os.PathLike | None = None,
    replace: bool = False,
) -> str:
    """The ``ivref`` commands that make the toy ``stages`` and fold them into ``folder``
    (default: ``data/toy``). Students join a distilled folder that exists as its own
    ``--base``, so the students already in it are kept. ``replace``: the stages replace
    the folder's cascade without reading it (it is damaged): give every stage."""
    real = Path(folder) if folder is not None else SHIPPED_DIR
    home = "data/toy" if real.resolve() == SHIPPED_DIR else str(real)  # as run from the repo
    if distilled:
        runs = [f"runs/distill-{name}" for name in stages]
        make = [
            f"ivref distill --stage {n} --from {home} --out runs/distill-{n} "
            f"{TOY_DISTILL_ARGS.get(n, '')}".rstrip()
            for n in stages
        ]
        students = f"{home}/{DISTILLED}"
        if replace:
            fold = f"ivref export {' '.join(runs)} --out {students} --force"
        elif (real / DISTILLED / "cascade.json").is_file():  # keep its students: the --base
            fold = f"ivref export {' '.join(runs)} --base {students} --out {students} --force"
        else:
            fold = f"ivref export {' '.join(runs)} --base {home} --out {students}"
    else:
        runs = [f"runs/{name}" for name in stages]
        make = [
            f"ivref train --scale toy --stage {n} --steps {TOY_TRAIN_STEPS.get(n, 2000)} "
            f"--out runs/{n}"
            for n in stages
        ]
        base = "" if replace else f" --base {home}"
        fold = f"ivref export {' '.join(runs)}{base} --out {home} --force"
    return "\n".join(f"  {line}" for line in [*make, fold])
