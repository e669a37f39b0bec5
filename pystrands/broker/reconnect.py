"""Keep one connection up: connect, and after a failure or a loss wait a growing delay and connect again.

A cluster node's links to Redis use it. No I/O of its own: ``connect`` is
given, and returns a Deferred of the connection and of a Deferred that
fires when that connection is lost. Tested with a ``Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["Backoff", "Reconnector"]

_Connection = TypeVar("_Connection")


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``; :meth:`reset` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, not {initial} and {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt; the one after is twice as long (at most ``maximum``)."""
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """A connection worked: the next failure waits ``initial`` again."""
        self._next = self.initial


class Reconnector(Generic[_Connection]):
    """Connects with ``connect`` until stopped; ``on_up(connection)`` and ``on_down(why)`` tell the owner.

    ``on_down`` is called once per lost connection, and once for the first
    failed attempt of a series (so an owner can log an outage once).
    """

    def __init__(self, clock: IReactorTime,
                 connect: Callable[[], Deferred[tuple[_Connection, Deferred[None]]]],
                 on_up: Callable[[_Connection], None], on_down: Callable[[str], None],
                 backoff: Backoff) -> None:
        self.clock = clock
        self._connect = connect
        self._on_up = on_up
        self._on_down = on_down
        self.backoff = backoff
        #: The connection while it is up.
        self.connection: _Connection | None = None
        self._running = False
        self._attempt: Deferred[tuple[_Connection, Deferred[None]]] | None = None
        self._retry: IDelayedCall | None = None
        self._reported = False

    def start(self) -> None:
        """Connect now, and keep connecting until :meth:`stop`."""
        self._running = True
        self._try()

    def stop(self) -> None:
        """No more attempts; an attempt under way is cancelled. A live connection is the owner's to close."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()

    def _try(self) -> None:
        self._retry = None
        attempt = self._attempt = self._connect()
        attempt.addCallbacks(self._connected, self._failed)

    def _connected(self, result: tuple[_Connection, Deferred[None]]) -> None:
        self._attempt = None
        connection, lost = result
        self.connection = connection
        self.backoff.reset()
        self._reported = False
        lost.addBoth(self._lost)
        self._on_up(connection)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        if not self._reported:
            self._reported = True
            self._on_down(failure.getErrorMessage())
        self._schedule()

    def _lost(self, result: object) -> None:
        self.connection = None
        if not self._running:
            return  # closed by its owner after stop(): no outage to report
        why = result.getErrorMessage() if isinstance(result, Failure) else "connection closed"
        self._reported = True
        self._on_down(why)
        self._schedule()

    def _schedule(self) -> None:
        self._retry = self.clock.callLater(self.backoff.next(), self._try)
