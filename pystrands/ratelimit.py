"""A warning that a flood cannot turn into a flood of log lines."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from twisted.logger import Logger

__all__ = ["Seconds", "ThrottledWarning"]


class Seconds(Protocol):
    """What the warning needs of a clock (a reactor, ``task.Clock``, or a real-time clock of one's own)."""

    def seconds(self) -> float:
        """The time now, in seconds."""


class ThrottledWarning:
    """Logs the first warning at once, then at most one per ``interval`` seconds, saying how many it held back.

    ``format`` gets the caller's fields plus ``held_back`` (the warnings not
    logged since the last one); when that count is not 0, the line ends with
    it. The count is told on the next warning logged, or by :meth:`flush`
    (with ``held_format``, same fields), so that the end of a burst is not
    lost when its owner stops. Safe to call from any thread.
    """

    def __init__(self, log: Logger, clock: Seconds, format: str, interval: float = 1.0,
                 held_format: str | None = None) -> None:
        self._log = log
        self._clock = clock
        self._format = format
        self._held_format = format if held_format is None else held_format
        self._interval = interval
        self._lock = threading.Lock()
        self._last: float | None = None
        self._held_back = 0
        self._fields: dict[str, Any] = {}

    @property
    def held_back(self) -> int:
        """The warnings not logged since the last one."""
        return self._held_back

    def __call__(self, **fields: Any) -> None:
        """Warn with ``fields``, unless one was logged less than ``interval`` seconds ago (then count it)."""
        with self._lock:
            now = self._clock.seconds()
            if self._last is not None and now - self._last < self._interval:
                self._held_back += 1
                self._fields = fields
                return
            held_back, self._held_back, self._last = self._held_back, 0, now
        held = f"; {held_back} more since the last warning" if held_back else ""
        self._log.warn(self._format + "{held}", held_back=held_back, held=held, **fields)

    def flush(self) -> None:
        """Log the count held back since the last warning now, if any (with the last held-back fields)."""
        with self._lock:
            held_back, self._held_back, fields = self._held_back, 0, self._fields
        if held_back:
            self._log.warn(self._held_format, held_back=held_back, **fields)
