"""The warning for sends dropped because no connection is coming: the first at once, then a count per second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from twisted.logger import Logger

__all__ = ["DroppedSends", "dropped_sends_of"]

log = Logger()


class DroppedSends:
    """Counts dropped sends and warns: the first at once, then at most one line per ``interval``.

    A send that cannot be made (before connect, after disconnect, after a
    failed single attempt) resolves to False, as in pystrands 1.0.0, rather
    than raising in the caller; this warning is how it shows. A loop sending
    into the void logs one line a second with the count since the last line,
    written with the next drop once the interval has passed.
    """

    def __init__(self, seconds: Callable[[], float] = time.monotonic, interval: float = 1.0) -> None:
        self._seconds = seconds
        self._interval = interval
        self._lock = threading.Lock()
        self._last_line: float | None = None
        #: Sends dropped since the last line was logged.
        self.unreported = 0
        #: Sends dropped in all.
        self.total = 0

    def dropped(self, reason: str) -> bool:
        """Count one dropped send (``reason`` says why), log if it is time; False, the send's result."""
        with self._lock:
            self.total += 1
            self.unreported += 1
            now = self._seconds()
            if self._last_line is not None and now - self._last_line < self._interval:
                return False
            first, count = self._last_line is None, self.unreported
            self._last_line, self.unreported = now, 0
        if first:
            log.warn("A send to the broker was dropped ({reason}); its future gives False", reason=reason)
        else:
            log.warn("{count} send(s) to the broker dropped since the last warning ({reason})", count=count,
                     reason=reason)
        return False


def dropped_sends_of(owner: object) -> DroppedSends:
    """The :class:`DroppedSends` of ``owner`` (a face or app), made on first use."""
    found: DroppedSends | None = owner.__dict__.get("_pystrands_dropped_sends")
    if found is None:  # setdefault: two threads' first drops get the same one
        found = owner.__dict__.setdefault("_pystrands_dropped_sends", DroppedSends())
    return found
