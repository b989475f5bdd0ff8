"""The run's signal flag: Ctrl-C (SIGINT) and a scheduler's SIGTERM, deferred while the loop trains
or writes a checkpoint, at once anywhere else."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any


class StopFlag:
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM, for the whole of a run.

    While the loop trains or writes a checkpoint (``deferring``) a signal only sets the flag: the
    loop finishes the step, writes a checkpoint and raises TrainingInterrupted, so the checkpoint
    holds whole steps (a KeyboardInterrupt could land inside an optimizer update). Anywhere else
    (validation, evaluation, writing results) it raises KeyboardInterrupt at once, like Python's own
    SIGINT: the checkpoint written before those phases already holds all the training, and a
    validation or a sampling of a big model stops within one operation instead of minutes later.
    A second signal always stops at once. ``signal`` and ``phase`` name what was interrupted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.set = False
        self.signal: str | None = None  # "SIGINT" or "SIGTERM" once one arrived
        self.phase = "starting"  # what the run is doing, for the interruption message
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        first = not self.set
        self.set, self.signal = True, signal.Signals(signum).name
        if first and self._deferring:
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferring(self, phase: str):
        """Within the block a first signal only sets the flag; the block checks it."""
        previous = self._deferring, self.phase
        self._deferring, self.phase = True, phase
        try:
            yield
        finally:
            self._deferring, self.phase = previous

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
