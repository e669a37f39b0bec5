"""The warning for sends dropped because no connection is coming: the first at once, then a count per second."""

from __future__ import annotations

import time

from twisted.logger import Logger

from .ratelimit import Seconds, ThrottledWarning

__all__ = ["DroppedSends", "dropped_sends_of"]

log = Logger()


class _Monotonic:
    """Real time for the warning: a face drops sends before it has a reactor."""

    def seconds(self) -> float:
        return time.monotonic()


_MONOTONIC = _Monotonic()


class DroppedSends(ThrottledWarning):
    """The throttled warning of one face's (or app's) dropped sends.

    A send that cannot be made (before connect, after disconnect, after a
    failed single attempt) resolves to False, as in pystrands 1.0.0, rather
    than raising in the caller; this warning is how it shows. A loop sending
    into the void logs one line a second with the count since the last line;
    the face's disconnect() reports what is left of that count (:meth:`flush`).
    """

    def __init__(self, clock: Seconds = _MONOTONIC, interval: float = 1.0) -> None:
        super().__init__(log, clock, "A send to the broker was dropped ({reason}); its future gives False",
                         interval,
                         held_format="{held_back} more send(s) to the broker dropped since the last warning"
                                     " ({reason})")

    def dropped(self, reason: str) -> bool:
        """Count one dropped send (``reason`` says why), warn if it is time; False, the send's result."""
        self(reason=reason)
        return False


def dropped_sends_of(owner: object) -> DroppedSends:
    """The :class:`DroppedSends` of ``owner`` (a face or app), made on first use."""
    found: DroppedSends | None = owner.__dict__.get("_pystrands_dropped_sends")
    if found is None:  # setdefault: two threads' first drops get the same one
        found = owner.__dict__.setdefault("_pystrands_dropped_sends", DroppedSends())
    return found
