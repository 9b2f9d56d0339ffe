"""``torch.compile`` for a training step: the options ``Trainer(compile=True)`` and
``ivref distill --compile`` use, and the text padding that keeps every batch one shape."""

from __future__ import annotations

from typing import Any

import torch

from ivref import configs


def check_compile(compile: Any) -> None:
    """The ``compile=`` option: True, False or a dict of ``torch.compile`` options."""
    if not isinstance(compile, bool | dict):
        raise TypeError(f"compile={compile!r}; allowed: True, False or a dict of options")


def compile_options(device: torch.device) -> dict[str, Any]:
    """``torch.compile`` options of ``Trainer(compile=True)``: static shapes, and CUDA graphs
    on a GPU (one replay per forward and per backward instead of ~1,000 kernel launches)."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return {"mode": mode, "dynamic": False}


def text_padding(config: configs.CascadeConfig, compile: bool | dict[str, Any]) -> int:
    """``TextCache(pad_multiple=...)`` for a step compiled or not: compiled, every batch is
    padded to the encoder's ``max_length`` tokens (captions never exceed it), one shape."""
    return config.text.max_length if compile is not False else 1
