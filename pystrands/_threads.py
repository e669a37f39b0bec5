"""Worker threads for blocking handlers, with the hand-offs batched both ways.

Twisted's ``deferToThreadPool`` costs a queue hand-off to a worker and a
``callFromThread`` back for every call. A stream of events then pays two
thread switches each, one event at a time. Here calls wait in one FIFO
(first come, first served: with one thread, handlers run in arrival order,
one at a time), and finished calls are handed back to the reactor in
batches, with one ``callFromThread`` per batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

__all__ = ["HandlerThreads"]


class HandlerThreads:
    """Up to ``size`` daemon threads running calls in arrival order; results fire on ``reactor``.

    A thread starts when a call finds every started one busy, so a large
    ``size`` (``concurrency``) costs threads only as the load needs them.
    """

    def __init__(self, reactor: Any, size: int, name: str) -> None:
        self.reactor = reactor
        self.running = 0
        self._size = size
        self._name = name
        self._started = 0
        self._lock = threading.Condition()
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = deque()
        self._finished: list[tuple[Deferred[Any], Any]] = []
        self._delivery_scheduled = False
        self._stopped = False

    def submit(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Queue ``function(*args)``; a Deferred of its result, fired on the reactor thread."""
        result: Deferred[Any] = Deferred()
        with self._lock:
            if self._stopped:
                raise RuntimeError("the handler threads are stopped")
            self._calls.append((function, args, result))
            self._lock.notify()
            number = self._started
            start = len(self._calls) > number - self.running and number < self._size  # more calls than free threads
            if start:
                self._started += 1
        if start:
            threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True).start()
        return result

    def stop(self) -> int:
        """Drop the calls not started and let the threads end; how many calls are still running.

        Called on the reactor thread: each dropped call's Deferred fails with
        CancelledError there, so whoever waits for it (the dispatcher's count
        of calls in flight) learns that it will never run.
        """
        with self._lock:
            self._stopped = True
            dropped = [result for _, _, result in self._calls]
            self._calls.clear()
            self._lock.notify_all()
            running = self.running
        for result in dropped:
            result.errback(CancelledError("the handler threads were stopped before this call started"))
        return running

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._calls:
                    if self._stopped:
                        return
                    self._lock.wait()
                function, args, result = self._calls.popleft()
                self.running += 1
            try:
                outcome = function(*args)
            except BaseException:
                outcome = Failure()
            with self._lock:
                self.running -= 1
                self._finished.append((result, outcome))
                schedule, self._delivery_scheduled = not self._delivery_scheduled, True
            if schedule:
                self.reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._delivery_scheduled = False
        for result, outcome in finished:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
