"""How a training run stops without losing work (``Trainer.fit`` enters both).

``save_on_signal``: the first Ctrl-C or SIGTERM lets the step finish, then the trainer saves
and returns; a second Ctrl-C raises KeyboardInterrupt at once. ``name_last_good``: an
OSError while training (a full disk) says which checkpoint is intact and how to go on.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ivref import checkpoint, errors


@contextlib.contextmanager
def save_on_signal(trainer: Any) -> Iterator[None]:
    """First SIGINT/SIGTERM: set ``trainer.signal`` (the loop finishes the step, saves and
    stops). A second SIGINT: KeyboardInterrupt. Outside the main thread: signals left alone."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if trainer.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.signal = signum

    with errors.handling_signals(handler):
        yield


@contextlib.contextmanager
def name_last_good(trainer: Any) -> Iterator[None]:
    """An OSError in the block (a full disk) is raised again, of the same subclass, saying at
    which step it came and which of ``trainer.out``'s checkpoints is intact."""
    try:
        yield
    except OSError as err:
        last = checkpoint.latest(trainer.out)
        if last is None:
            keep = "before the first checkpoint: free some space and run it again"
        else:
            keep = (
                f"the last good checkpoint {str(last)!r} is intact: free some space, "
                "then --resume continues from it"
            )
        detail = f"{err.strerror or err} at step {trainer.step}; {keep}"
        raise OSError(err.errno, detail, err.filename) from err  # the same subclass
