"""Deferreds (the core's results) as the futures each face hands out: one bridge per kind of future.

The blocking face hands out ``concurrent.futures.Future`` objects, the
asyncio face ``asyncio.Future`` objects on its loop. Both bridges leave the
Deferred alone when the future is cancelled: what was handed to the
connection is on its way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._internals import running_loop

__all__ = ["SENT", "ReplyFuture", "awaitable_here", "call_in_reactor", "done_future", "settle_concurrent",
           "settle_on_loop"]

log = Logger()

_T = TypeVar("_T")


def settle_concurrent(future: concurrent.futures.Future[_T], outcome: Deferred[_T]) -> concurrent.futures.Future[_T]:
    """Complete ``future`` (running, or pending: then it is set running) as ``outcome`` fires; ``future``.

    A future cancelled before ``outcome`` fired stays cancelled.
    """

    def succeeded(value: _T) -> None:
        if future.running() or future.set_running_or_notify_cancel():
            future.set_result(value)

    def failed(failure: Failure) -> None:
        if future.running() or future.set_running_or_notify_cancel():
            future.set_exception(failure.value)

    outcome.addCallbacks(succeeded, failed)
    return future


def settle_on_loop(loop: asyncio.AbstractEventLoop, outcome: Deferred[_T]) -> asyncio.Future[_T]:
    """An asyncio future on ``loop`` (the reactor's own) completed as ``outcome`` fires.

    Unlike ``Deferred.asFuture``, cancelling the future does not cancel ``outcome``.
    """
    future: asyncio.Future[_T] = loop.create_future()

    def succeeded(value: _T) -> None:
        if not future.done():
            future.set_result(value)

    def failed(failure: Failure) -> None:
        if not future.done():
            future.set_exception(failure.value)  # type: ignore[arg-type]  # Twisted infers value optional

    outcome.addCallbacks(succeeded, failed)
    return future


def awaitable_here(future: concurrent.futures.Future[_T]) -> concurrent.futures.Future[_T] | asyncio.Future[_T]:
    """``future`` as the caller can wait for it: on a running loop an asyncio Future (awaitable), else itself."""
    loop = running_loop()
    return future if loop is None else asyncio.wrap_future(future, loop=loop)


def done_future(value: _T) -> concurrent.futures.Future[_T]:
    """A concurrent Future already done with ``value``."""
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()
    future.set_result(value)
    return future


#: The result of every send handed to the connection at once: a done Future never changes, so one serves all.
SENT: concurrent.futures.Future[bool] = done_future(True)


def call_in_reactor(reactor: Any, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    """Run ``function`` on ``reactor``'s thread from any thread; its result (a value or Deferred) as a Future.

    A reactor that runs no more (its asyncio loop closed) gives a RuntimeError.
    """
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            settle_concurrent(future, maybeDeferred(function, *args))

    reactor.callFromThread(run)
    return future


class ReplyFuture(concurrent.futures.Future[Any]):
    """The Future of an extension request: waiting for it on the I/O thread raises instead of hanging.

    The reply is read on that thread, so a handler there that waited would
    wait for itself (and the request's timeout, also on that thread, would
    never fire).

    A request made and forgotten (``client.join_room(...)`` with the Future
    dropped) that fails is logged as a warning once the Future is let go:
    unless its ``result()`` or ``exception()`` was asked for or a done
    callback added, which see the failure themselves.
    """

    def __init__(self, io_thread: int | None, action: str = "") -> None:
        super().__init__()
        self._io_thread = io_thread
        self._action = action
        #: True once the outcome was asked for: its failure is then the caller's, not logged.
        self._retrieved = False

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        """As ``Future.add_done_callback``; the callback sees a failure, so it is not logged."""
        self._retrieved = True
        super().add_done_callback(fn)

    def __del__(self) -> None:
        if self._retrieved or not self.done() or self.cancelled():
            return
        error = concurrent.futures.Future.exception(self, 0)
        if error is not None:
            log.warn("A {action} request to the broker failed and nobody asked for its result: {why}",
                     action=self._action or "broker", why=error)

    def _check_thread(self) -> None:
        if not self.done() and self._io_thread is not None and threading.get_ident() == self._io_thread:
            raise RuntimeError(
                "waiting for a request's reply on the I/O thread would wait forever (the reply is read"
                " there): use add_done_callback, or handlers in worker threads (concurrency=N)")

    def result(self, timeout: float | None = None) -> Any:
        """The reply's result, as ``Future.result``; RuntimeError on the I/O thread before it came."""
        self._retrieved = True
        self._check_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The request's exception, as ``Future.exception``; RuntimeError on the I/O thread before it came."""
        self._retrieved = True
        self._check_thread()
        return super().exception(timeout)
