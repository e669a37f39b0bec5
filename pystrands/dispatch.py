"""Run handler calls in order per key, concurrently across keys, with a bound.

The key is a WebSocket client's id: one client's events run one after the
other, each once the previous one's result (value, Deferred or coroutine) is
done; different clients' events run at the same time, up to ``concurrency``.
The dispatcher counts what is waiting so that the protocol can stop reading
from the broker when handlers fall behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["KeyedDispatcher", "already_succeeded", "handler_name"]

log = Logger()

_Call = tuple[Callable[..., Any], tuple[Any, ...], int]


def handler_name(handler: Callable[..., Any]) -> str:
    """The name a failure report gives ``handler``: the user's method, not the adapter that called it.

    A face's IBackend adapter (a bound method of an object with a ``face``)
    calls the face's callback of the same name (a method, or the decorator
    app's function), so that one is named.
    """
    face = getattr(getattr(handler, "__self__", None), "face", None)
    if face is not None:
        handler = getattr(face, handler.__name__, handler)
    return getattr(handler, "__qualname__", repr(handler))


def already_succeeded(result: Deferred[Any]) -> bool:
    """True for a Deferred that already succeeded (as a send's has): fired, not paused, no Failure.

    A fired Deferred that is not paused has run all its callbacks. (``None``
    is tested first: isinstance against Deferred, an ABC, costs more.)
    """
    if not result.called or result.paused:
        return False
    value = result.result
    return value is None or not isinstance(value, (Failure, Deferred))


def _done(result: object) -> bool:
    """True for the usual results of a handler that finished: None (the thread and asyncio faces) or a
    send's Deferred, fired with None. Told apart by exact type, before iscoroutine and isinstance against
    an ABC, which cost more; anything else is followed by the dispatcher's general path."""
    return result is None or (type(result) is Deferred and result.called and result.result is None
                              and not result.paused)


class KeyedDispatcher:
    """Ordered per key, concurrent across keys, bounded by ``concurrency``.

    ``on_busy`` is called when the waiting events reach ``max_events`` or
    ``max_bytes``; ``on_idle`` once they are back under half of both.
    """

    def __init__(
        self,
        concurrency: int,
        max_events: int,
        max_bytes: int,
        on_busy: Callable[[], None],
        on_idle: Callable[[], None],
    ) -> None:
        self.concurrency = concurrency
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._on_busy = on_busy
        self._on_idle = on_idle
        # Per key with a call running or waiting: the calls waiting (None: none yet).
        self._queues: dict[Hashable, deque[_Call] | None] = {}
        self._ready: deque[Hashable] = deque()
        self._running = 0
        self._pumping = False
        self._busy = False
        #: Calls queued or running, and their frames' bytes; a call that is done when its handler
        #: returns is never counted (the protocol's backpressure is about calls that wait).
        self.pending_events = 0
        self.pending_bytes = 0
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def busy(self) -> bool:
        """True from reaching the high-water mark until back under the low one."""
        return self._busy

    def submit(self, key: Hashable, size: int, handler: Callable[..., Any], *args: Any) -> None:
        """Run ``handler(*args)`` now if ``key`` is idle and a slot is free, else queue it."""
        queues = self._queues
        if key in queues or self._running >= self.concurrency or self._ready or self._pumping:
            self._queue(key, size, handler, args)
            return
        # Run now. Most calls are done when they return (a None result, a send's fired Deferred): such a
        # call is never counted as waiting, and only the key's mark and the slot are given back.
        queues[key] = None
        self._running += 1
        try:
            result = handler(*args)
        except BaseException:
            self._report(Failure(), handler)
            result = None
        # _done(result), written out: a call here costs 2.5% of the whole per-message path
        if result is None or (type(result) is Deferred and result.called and result.result is None
                              and not result.paused):
            self._running -= 1
            waiting = queues.pop(key)
            if waiting is not None or self._ready or self._drain_waiters:
                self._caught_up(key, waiting)  # submitted or waited for meanwhile (from inside the handler)
            return
        self.pending_events += 1
        self.pending_bytes += size
        self._follow(result, key, size, handler)  # a coroutine's first step runs here, and may finish it
        self._check_busy()

    def _queue(self, key: Hashable, size: int, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Make the call wait behind ``key``'s calls, or for a free slot."""
        self.pending_events += 1
        self.pending_bytes += size
        queues = self._queues
        if key in queues:
            queue = queues[key]
            if queue is None:
                queue = queues[key] = deque()
            queue.append((handler, args, size))
        else:
            queues[key] = deque(((handler, args, size),))
            self._ready.append(key)
            self._pump()
        self._check_busy()

    def _caught_up(self, key: Hashable, waiting: deque[_Call] | None) -> None:
        """After a call done at once: start what was submitted meanwhile, and tell drain waiters."""
        if waiting:
            self._queues[key] = waiting
            self._ready.append(key)
        self._tell_drained()
        if self._ready:
            self._pump()

    def _check_busy(self) -> None:
        if not self._busy and (
            self.pending_events >= self._max_events or self.pending_bytes >= self._max_bytes
        ):
            self._busy = True
            self._on_busy()

    def drained(self) -> Deferred[None]:
        """A Deferred that fires once nothing is queued or running."""
        if not self.pending_events and not self._running:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def _pump(self) -> None:
        # Start calls while slots are free. A call that finishes synchronously
        # re-enters here through _finished; the flag turns that into iteration.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._ready and self._running < self.concurrency:
                key = self._ready.popleft()
                queue = self._queues[key]
                assert queue is not None  # a key is ready only with calls waiting
                handler, args, size = queue.popleft()
                self._running += 1
                self._start(key, handler, args, size)
        finally:
            self._pumping = False

    def _start(self, key: Hashable, handler: Callable[..., Any], args: tuple[Any, ...], size: int) -> None:
        """Run a call that waited (it is counted in ``pending_*``) and follow its result."""
        try:
            result = handler(*args)
        except BaseException:
            self._report(Failure(), handler)
            self._finished(key, size)
            return
        self._follow(result, key, size, handler)

    def _follow(self, result: Any, key: Hashable, size: int, handler: Callable[..., Any]) -> None:
        """Finish a counted call once its result (a value, a Deferred or a coroutine) is done."""
        if _done(result):
            self._finished(key, size)
            return
        if iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred) and not already_succeeded(result):
            result.addBoth(self._settled, key, size, handler)
        else:
            self._finished(key, size)

    def _settled(self, result: object, key: Hashable, size: int, handler: Callable[..., Any]) -> None:
        # One callback, not an errback plus a finisher: most results arrive already fired.
        if isinstance(result, Failure):
            self._report(result, handler)
        self._finished(key, size)

    def _report(self, failure: Failure, handler: Callable[..., Any]) -> None:
        log.failure("Backend handler {handler} failed", failure, LogLevel.error, handler=handler_name(handler))

    def _finished(self, key: Hashable, size: int) -> None:
        self._running -= 1
        self.pending_events -= 1
        self.pending_bytes -= size
        if self._queues[key]:
            self._ready.append(key)
        else:
            del self._queues[key]
        if self._busy and (
            self.pending_events <= self._max_events // 2
            and self.pending_bytes <= self._max_bytes // 2
        ):
            self._busy = False
            self._on_idle()
        self._tell_drained()
        if self._ready:
            self._pump()

    def _tell_drained(self) -> None:
        """Fire the drain waiters once nothing is queued or running."""
        if self._drain_waiters and not self.pending_events and not self._running:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)
