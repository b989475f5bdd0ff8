"""Progress and information go through the standard ``logging`` module, under the "genbench" logger
(each module logs to ``logging.getLogger(__name__)``). A program that calls the API hears nothing
unless it configures logging itself; the `bench` command shows INFO and above on stderr (``-q``:
warnings and errors only, ``-v``: debug too). Progress bars are shown where INFO is. A command's
own output (tables, JSON, the line per finished run) is not logging: it goes to stdout as before.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

LOGGER = logging.getLogger("genbench")


class _Stderr(logging.Handler):
    """Writes each record to ``sys.stderr`` as it is at that moment (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging's contract: a failed write is reported, never raised
            self.handleError(record)


def show(level: int) -> Callable[[], None]:
    """Print genbench's records of ``level`` and above on stderr, as bare lines (the command line's
    way); returns the function that undoes it."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False  # printed once, here, whatever the root logger holds

    def undo() -> None:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(before[0])
        LOGGER.propagate = before[1]

    return undo


def progress_shown() -> bool:
    """Whether progress (bars, periodic lines) is wanted: INFO is on for genbench."""
    return LOGGER.isEnabledFor(logging.INFO)
