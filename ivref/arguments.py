"""Checks of counts and seeds, and the argparse parser and types of ivref's commands.

Library calls (``Trainer(batch_size=...)``, ``distill_stage(to_steps=...)``) check their
counts with ``check_count``; command lines parse theirs with the types below, so both refuse
the same values with one clear line: counts from 1 (or 0) to 2**31 - 1, beyond which torch
cannot take them, and seeds from 0 to 2**63 - 1.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from ivref import cascade
from ivref.config_checks import is_integer

MAX_COUNT = 2**31 - 1  # counts, sizes and thread numbers: beyond it torch cannot take them
MAX_SEED = cascade.MAX_SEED


class Parser(argparse.ArgumentParser):
    """argparse that says a bad argument as every other refusal is said: one line, what was
    wrong and what is allowed, then where the options are listed (argparse's own usage
    block, printed above the error, ran to 10 lines for ``ivref train``). Subcommands'
    parsers are of this class too (argparse makes them of their parent's). ``commands``: the
    subcommands' parsers by name, where the caller keeps them."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        from ivref import errors  # under torchrun: which process says it

        errors.say(f"{self.prog}{errors.rank_suffix()}: error: {message}")
        self.exit(2, f"(`{self.prog} --help` lists the options)\n")


def check_count(name: str, value: Any, *, minimum: int = 1, none: str | None = None) -> int | None:
    """``value`` must be an integer (NumPy's too, not a bool) from ``minimum`` to 2**31 - 1
    (or None, where ``none`` says what None means); else a ValueError naming it and what is
    allowed. Returns it as a Python int (None as None), for JSON and torch alike."""
    if value is None and none is not None:
        return None
    if not is_integer(value) or not minimum <= value <= MAX_COUNT:
        allowed = f"an integer from {minimum} to 2**31 - 1"
        allowed = f"None ({none}) or {allowed}" if none is not None else allowed
        raise ValueError(f"{name}={value!r} must be {allowed}")
    return int(value)


def check_seed(name: str, value: Any) -> int:
    """``value`` must be an integer (NumPy's too, not a bool) from 0 to 2**63 - 1; returns it
    as a Python int."""
    if not is_integer(value) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name}={value!r} must be an integer from 0 to 2**63 - 1")
    return int(value)


def _integer(value: str, minimum: int, what: str, up_to: str) -> int:
    """``value`` as an integer from ``minimum`` to 2**31 - 1, or an ArgumentTypeError."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    if n > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected {up_to} up to 2**31 - 1, got {n}")
    return n


def positive_int(value: str) -> int:
    """argparse type: an integer from 1 to 2**31 - 1."""
    return _integer(value, 1, "a positive integer", "a positive integer")


def count(value: str) -> int:
    """argparse type: an integer from 0 to 2**31 - 1."""
    return _integer(value, 0, "an integer >= 0", "an integer")


def seed_int(value: str) -> int:
    """argparse type: a seed, an integer from 0 to 2**63 - 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if not 0 <= n <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {value} must be from 0 to 2**63 - 1")
    return n


def sampler_steps(value: str) -> int:
    """argparse type: sampler steps, an integer from 1 to cascade.MAX_STEPS."""
    try:
        return cascade.check_steps(positive_int(value), "steps")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def guidance_weight(value: str) -> float:
    """argparse type: a guidance weight w, from 0 to ``cascade.MAX_GUIDANCE``."""
    try:
        w = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}") from None
    try:
        return cascade.check_guidance(w, "w")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _per_stage(value: str, one: Callable[[str], Any], letter: str) -> Any:
    """One value for every stage, or ``NAME=V[,NAME=V...]``: those stages (each once)."""
    if "=" not in value:
        return one(value)
    setting: dict[str, Any] = {}
    spelled = f"{letter} or NAME={letter}[,NAME={letter}...]"
    for pair in value.split(","):
        name, _, v = pair.partition("=")
        if not pair:
            raise argparse.ArgumentTypeError(
                f"expected {spelled}, got {value!r}: an empty entry between commas"
            )
        if not name or name in setting:
            raise argparse.ArgumentTypeError(
                f"expected {spelled} with each stage NAME once, got {value!r}"
            )
        setting[name] = one(v)
    return setting


def guidance_setting(value: str) -> float | dict[str, float]:
    """argparse type: a guidance weight for every stage (``W``), or per stage
    (``NAME=W[,NAME=W...]``: those stages; the others sample at their own)."""
    return _per_stage(value, guidance_weight, "W")


def steps_setting(value: str) -> int | dict[str, int]:
    """argparse type: sampler steps for every stage (``N``), or per stage
    (``NAME=N[,NAME=N...]``: those stages; the others sample at their own)."""
    return _per_stage(value, sampler_steps, "N")


def fraction(value: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0 <= x <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return x


def positive_float(value: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return x
