"""A batch of a video folder decoded ahead, in a background thread, while a training step
runs (``VideoTextFolder(prefetch=True)``); its outcomes are used only if the draws and the
files are still the ones it was made for."""

from __future__ import annotations

import threading
from collections.abc import Callable

# what a DecodeAhead runs: read(stop) -> the outcomes, one per draw (VideoTextFolder._read_all)
Reader = Callable[[threading.Event], "list[tuple[str, object]] | None"]


class DecodeAhead:
    """A batch's first round decoding in a background thread (``VideoTextFolder.prefetch``):
    the draws it was made for, the files as they were, and the outcomes once ready."""

    def __init__(self, draws: list[tuple[int, int]], items: list, read: Reader) -> None:
        self.draws, self.items = draws, items
        self._outcomes: list[tuple[str, object]] | None = None
        self.stop = threading.Event()  # set when its batch is decoded anew instead
        # not a daemon: the interpreter waits for it at exit (one batch at most), where a
        # daemon thread stopped inside a torch call aborted the process
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=False)
        self._thread.start()

    def _run(self, read: Reader) -> None:
        try:
            self._outcomes = read(self.stop)
        except Exception:  # a bug or an interpreter shutting down: the batch decodes anew
            self._outcomes = None

    def outcomes_for(
        self, draws: list[tuple[int, int]], items: list
    ) -> list[tuple[str, object]] | None:
        """The outcomes, if made for these draws of these files (else None: decode anew,
        and the decoding ahead stops before its next clip)."""
        if draws != self.draws or [items[i] for i, _ in draws] != self.items:
            self.stop.set()
            return None
        self._thread.join()
        return self._outcomes
