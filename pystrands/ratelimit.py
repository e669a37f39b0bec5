"""A warning that a flood cannot turn into a flood of log lines."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["ThrottledWarning"]


class ThrottledWarning:
    """Logs the first warning at once, then at most one per ``interval`` seconds, saying how many it held back.

    ``format`` gets the caller's fields plus ``held_back`` (the warnings not
    logged since the last one); the count is told on the next warning
    logged, so a burst that stops leaves its count for the next.
    """

    def __init__(self, log: Logger, clock: IReactorTime, format: str, interval: float = 1.0) -> None:
        self._log = log
        self._clock = clock
        self._format = format
        self._interval = interval
        self._last: float | None = None
        self._held_back = 0

    def __call__(self, **fields: Any) -> None:
        """Warn with ``fields``, unless one was logged less than ``interval`` seconds ago (then count it)."""
        now = self._clock.seconds()
        if self._last is not None and now - self._last < self._interval:
            self._held_back += 1
            return
        held_back, self._held_back, self._last = self._held_back, 0, now
        self._log.warn(self._format, held_back=held_back, **fields)
