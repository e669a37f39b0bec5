"""Events kept while no backend is connected: bounded, oldest dropped, flushed oldest first."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["EventQueue"]

_Event = TypeVar("_Event")


class EventQueue(Generic[_Event]):
    """A FIFO of at most ``size`` events (0 keeps none); ``dropped`` counts the losses."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.dropped = 0
        self._events: deque[_Event] = deque(maxlen=size)  # a full deque drops its oldest on append

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: _Event) -> None:
        """Keep ``event``; when full, the oldest event is dropped to make room."""
        if len(self._events) == self.size:
            self.dropped += 1
        self._events.append(event)

    def drain(self) -> Iterator[_Event]:
        """Take the events out, oldest first."""
        while self._events:
            yield self._events.popleft()
