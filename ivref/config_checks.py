"""The checks a config field goes through: its annotated type, then its allowed values.

Each raises ``ValueError`` naming the config class, the field and what is allowed
("StageConfig.sample_steps=0 is invalid: must be a positive integer"). config_types.py calls
them from every config dataclass's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def is_integer(value: object) -> bool:
    """An integer, NumPy's too, but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def fail(owner: str, name: str, value: Any, allowed: str) -> None:
    """Raise the one ValueError every check gives: owner.name=value is invalid: allowed."""
    raise ValueError(f"{owner}.{name}={value!r} is invalid: {allowed}")


def positive(owner: str, **fields: Any) -> None:
    """Each value must be an integer >= 1 (a bool is not an integer here)."""
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            fail(owner, name, value, "must be a positive integer")


def literal(owner: str, name: str, value: Any, choices: Any) -> None:
    """``value`` must be one of the ``Literal[...]`` type ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        fail(owner, name, value, f"allowed values are {list(allowed)}")


def finite(owner: str, **fields: float) -> None:
    """Each value must be finite: no NaN, no +-inf."""
    for name, value in fields.items():
        if not math.isfinite(value):
            fail(owner, name, value, "must be a finite number")


HINTS_CACHE: dict[type, dict[str, Any]] = {}  # each config class's field annotations, resolved once
TYPE_WORDS = {bool: "true or false (a bool)", int: "an integer", float: "a number", str: "a string"}


def annotated_types(config: Any, owner: str) -> None:
    """Every field of a config dataclass against its annotation, before any value check."""
    cls = type(config)
    if cls not in HINTS_CACHE:
        HINTS_CACHE[cls] = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotated_type(owner, f.name, getattr(config, f.name), HINTS_CACHE[cls][f.name], "")


def annotated_type(owner: str, name: str, value: Any, hint: Any, or_null: str) -> None:
    """bool: a bool; int: an int, not a bool; float: an int or float, not a bool; str; X | None;
    tuple[T, ...] (each element, named by index); a config class. A Literal passes here
    (``literal`` checks its value)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return
    if origin in (Union, types.UnionType):  # X | None
        if value is not None:
            (inner,) = (a for a in args if a is not type(None))
            annotated_type(owner, name, value, inner, " (or null)")
        return
    if origin is tuple:
        if not isinstance(value, tuple):
            what = f"a tuple (a list in JSON){or_null}"
            fail(owner, name, value, f"must be {what}, not {type(value).__name__}")
        for i, item in enumerate(value):
            annotated_type(owner, f"{name}[{i}]", item, args[0], "")
        return
    numeric = (int, float) if hint is float else hint
    if not isinstance(value, numeric) or (hint in (int, float) and isinstance(value, bool)):
        what = TYPE_WORDS.get(hint, f"a {hint.__name__}")
        fail(owner, name, value, f"must be {what}{or_null}, not {type(value).__name__}")
