"""AsyncPyStrandsClient: the asyncio face, running natively on the caller's event loop.

Twisted I/O runs on a private ``AsyncioSelectorReactor`` bound to the
running loop (no global reactor installed, no thread for I/O), so the
client lives inside any asyncio application (FastAPI, aiohttp, a script
under ``asyncio.run``). ``async def`` callbacks run as asyncio tasks on that
loop, different WebSocket clients' at the same time (each client's events in
order); a plain ``def`` callback runs on the loop too.

A callback's task takes its first step at once, within the read that brought
the event, and a send written at once returns a future that is already
done (True): a callback that does not wait for anything else finishes there,
and its replies go out with the others to that read.

The life cycle (connect, disconnect, run_forever) is the session both faces
share (:mod:`pystrands._session`); this module adds what an asyncio face's
world needs: a reactor on the caller's loop, asyncio futures, handler tasks
that disconnect() cancels at its deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import weakref
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, cast

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import wire
from ._adapter import (
    FaceBackend,
    Outgoing,
    backend_of,
    in_handler_of,
    issue,
    new_backend_of,
    register_face,
    run_as_handler,
    sender_of,
)
from ._bridges import awaitable_here, settle_on_loop
from ._endpoint import LoopResolver
from ._face import Face
from ._internals import loop_of_reactor, on_loop_thread, release_reactor
from ._session import CLOSE_GRACE, Cycle, Runtime
from ._tasks import start_task
from .backend import DefaultCallbacks
from .context import ConnectionRequestContext, Context
from .dispatch import already_succeeded
from .protocol import BrokerClientFactory
from .settings import check_number

__all__ = ["AsyncPyStrandsClient", "LoopResolver"]

log = Logger()

#: Seconds handler tasks cancelled at disconnect()'s deadline get to finish unwinding.
CANCEL_GRACE = 1.0

_NEEDS_ASYNCIO_REACTOR = (
    "AsyncPyStrandsClient runs on Twisted's asyncio reactor: add --reactor=asyncio"
    " (twistd --reactor=asyncio pystrands ...)"
)


def _require_asyncio_reactor() -> None:
    """A TypeError saying what to do unless the installed global reactor is the asyncio one."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if not isinstance(reactor, AsyncioSelectorReactor):
        raise TypeError(_NEEDS_ASYNCIO_REACTOR)


class AsyncioBackend(FaceBackend):
    """An asyncio face as an IBackend: awaitable results become tasks on the reactor's loop."""

    def __init__(self, face: Any) -> None:
        super().__init__(face)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._written: asyncio.Future[bool] | None = None
        #: Handler tasks not finished in their first step (and futures of other awaitables handlers
        #: returned); disconnect() cancels those left at its deadline.
        self.tasks: set[asyncio.Future[Any]] = set()
        #: The tasks disconnect() cancelled: their CancelledError is no failure.
        self._cancelled: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()

    def attach(self, broker: BrokerClientFactory) -> None:
        """Learn the loop behind ``broker``'s reactor, which must be an ``AsyncioSelectorReactor``."""
        if not isinstance(broker.reactor, AsyncioSelectorReactor):
            raise TypeError(_NEEDS_ASYNCIO_REACTOR)
        super().attach(broker)
        self.loop = loop = loop_of_reactor(broker.reactor)
        # What every send written at once returns: a done future never changes, so one serves all.
        self._written = loop.create_future()
        self._written.set_result(True)

    def call(self, handler: Callable[..., Any], *args: Any) -> Any:
        return run_as_handler(self, self._start, handler, *args)

    def _start(self, handler: Callable[..., Any], *args: Any) -> Any:
        """Call the handler; a coroutine runs as a task (inheriting the mark), its first step at once.

        A task done after that step gives its outcome at once, a value or a
        raised exception (retrieved, so asyncio does not log it again); a
        task still running becomes a Deferred, and is kept in :attr:`tasks`
        until done.
        """
        result = handler(*args)
        if result is None:
            return None
        loop = self.loop
        assert loop is not None  # set with the broker, before any event
        if isinstance(result, CoroutineType):
            task = start_task(loop, result)
            if task.done():
                try:
                    return task.result()
                except (KeyboardInterrupt, SystemExit):
                    return None  # start_task raises it again from the loop: not a handler failure to log too
            return self._track(task)
        if inspect.isawaitable(result):
            return self._track(asyncio.ensure_future(result, loop=loop))
        return result

    def _track(self, task: asyncio.Future[Any]) -> Deferred[Any]:
        """Keep a running handler's task (or awaitable's future) in :attr:`tasks`; its outcome as a Deferred.

        A CancelledError from disconnect()'s cancel is no failure: the task finished as asked.
        """
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return Deferred.fromFuture(task).addErrback(self._unless_cancelled_at_close, task)

    def _unless_cancelled_at_close(self, failure: Failure, task: asyncio.Future[Any]) -> Failure | None:
        if task in self._cancelled and failure.check(asyncio.CancelledError):
            log.debug("A handler task cancelled by disconnect() has finished")
            return None
        return failure

    def cancel_tasks(self) -> list[asyncio.Future[Any]]:
        """Cancel the handler tasks still running (disconnect()'s deadline has come); those tasks."""
        tasks = list(self.tasks)
        self._cancelled.update(tasks)
        for task in tasks:
            task.cancel()
        return tasks

    def send(self, item: Outgoing) -> Any:
        """On a loop: an asyncio Future (await it, or not); from a thread without one: a concurrent one.

        Its result is a send's True/False, or an extension request's reply.
        """
        loop = self.loop
        if loop is not None and on_loop_thread(loop):
            return self._send_on_loop(loop, item)
        return awaitable_here(super().send(item))

    def _send_on_loop(self, loop: asyncio.AbstractEventLoop, item: Outgoing) -> asyncio.Future[Any]:
        """Send on the face's own loop; a frame written at once gives the shared done future.

        Awaiting that does not suspend the handler, which then usually
        finishes in its first step.
        """
        broker, written = self._broker, self._written
        assert broker is not None and written is not None  # set with the loop
        handed = issue(broker, item)
        if isinstance(item, bytes) and already_succeeded(handed):
            return written
        return settle_on_loop(loop, self.outcome(item, handed))


def _backend_under_twistd(face: AsyncPyStrandsClient) -> AsyncioBackend:
    """The IBackend of ``face``; when no session of its own made it, the global reactor must suit."""
    backend: AsyncioBackend = backend_of(face)
    if backend.broker is None:
        _require_asyncio_reactor()
    return backend


class _LoopRuntime(Runtime):
    """The asyncio face's world: a reactor on the caller's loop per cycle, asyncio futures, tasks to cancel."""

    def __init__(self, face: AsyncPyStrandsClient) -> None:
        self.face = face

    def open(self) -> Any:
        loop = asyncio.get_running_loop()
        reactor = AsyncioSelectorReactor(loop)
        reactor.installNameResolver(LoopResolver(loop))
        return reactor

    def backend(self, reactor: Any) -> AsyncioBackend:
        backend: AsyncioBackend = new_backend_of(self.face, reactor)
        return backend

    def call(self, reactor: Any, function: Any, *args: Any) -> asyncio.Future[Any]:
        return settle_on_loop(loop_of_reactor(reactor), maybeDeferred(function, *args))

    def bridge(self, reactor: Any, outcome: Deferred[Any]) -> asyncio.Future[Any]:
        return settle_on_loop(loop_of_reactor(reactor), outcome)

    def done(self, value: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(value)
        return future

    def pending(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def complete(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def release(self, cycle: Cycle) -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(self._release(cycle), loop=loop_of_reactor(cycle.reactor)))

    async def _release(self, cycle: Cycle) -> None:
        """Cancel the handler tasks left at the deadline, give them a grace to unwind, release the reactor."""
        backend = cycle.backend
        assert isinstance(backend, AsyncioBackend)  # made by backend()
        tasks = backend.cancel_tasks()
        if tasks:
            _, unwinding = await asyncio.wait(tasks, timeout=CANCEL_GRACE)
            if unwinding:
                log.warn("{count} handler task(s) still running {grace}s after disconnect() cancelled them;"
                         " left to finish alone", count=len(unwinding), grace=CANCEL_GRACE)
        reactor = cycle.reactor
        factory = cycle.factory
        if factory is not None and factory.current is not None:
            factory.current.transport.abortConnection()
        for call in reactor.getDelayedCalls():
            call.cancel()
        release_reactor(reactor)

    def alive(self, reactor: Any) -> bool:
        return not loop_of_reactor(reactor).is_closed()


class AsyncPyStrandsClient(Face[AsyncioBackend]):
    """Asyncio client: subclass it, override the ``on_*`` callbacks (``async def``), await run_forever().

    Parameters are the documented ones (see the class signature) plus the
    core's settings as keywords (``concurrency``, ``idle_timeout``,
    ``max_line_length``, ``send_buffer_size``, ``backend_token``, ...).

    Sends give an awaitable of True, or of False when dropped for want of a
    connection, as in pystrands 1.0.0; the Twisted-native connection
    (``IBrokerConnection``, a ``Backend``'s ``self.broker``) fails its
    Deferreds with NotConnectedError instead.
    """

    _backend_class = AsyncioBackend

    def _runtime(self) -> Runtime:
        return _LoopRuntime(self)

    async def connect(self) -> bool:
        """Connect to the broker; True once connected, False if the attempt failed or timed out.

        With ``auto_reconnect`` a failed attempt is retried in the background;
        without, nothing is left running after it.
        """
        attempt = self._session.connect(*self._connect_args())
        # asyncio.wait, not wait_for: on 3.11 wait_for loses a cancel that comes as the attempt ends.
        done, _ = await asyncio.wait((attempt,), timeout=self.connect_timeout + CLOSE_GRACE)
        if not done:
            log.warn("Connecting to {host}:{port} took more than {timeout}s", host=self.host,
                     port=self.port, timeout=self.connect_timeout)
            return False
        connected: bool = attempt.result()
        return connected

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Stop reconnecting and close, after in-flight handlers finish (up to ``timeout`` seconds).

        Handler tasks still running at the deadline are cancelled, and this
        returns once they have finished unwinding (they get 1 second; one
        that takes longer is logged and left to finish alone). From inside a
        handler it does not wait (the handler itself is in flight).
        """
        timeout = check_number("timeout", timeout, minimum=0)
        closed, _ = self._session.disconnect(timeout)
        if not in_handler_of(self):
            await asyncio.shield(closed)
        self._report_dropped_sends()

    async def run_forever(self) -> None:
        """Connect (unless connected or reconnecting) and wait until disconnect() or cancellation.

        Returns at once when no connection is coming: the single attempt of
        ``auto_reconnect=False`` failed (logged as a warning). Cancelled
        (``task.cancel()``, ``asyncio.timeout()``, ``asyncio.wait_for()``),
        it disconnects cleanly, then raises the CancelledError again.
        """
        session = self._session
        try:
            if not (session.connected or session.retrying):
                await self.connect()
            if session.connected or session.retrying:
                assert session.disconnected is not None  # made by connect()
                await asyncio.shield(session.disconnected)
        except asyncio.CancelledError:
            log.info("Cancelled: disconnecting from the broker")
            await self.disconnect()
            raise
        await self.disconnect()

    def send_room_message(self, room_id: str, message: str) -> Awaitable[bool]:
        """Send ``message`` to every client in ``room_id``; await True once written, False if dropped.

        Dropped means no connection is coming (before connect(), after
        disconnect(), after a failed attempt without ``auto_reconnect``): it
        is logged as a warning, never raised. While reconnecting the send
        waits in a buffer; past ``send_buffer_size`` waiting sends it fails
        with :class:`~pystrands.SendBufferFull`. ``TypeError`` here for an
        argument that is not a str.
        """
        return self._send(wire.room_message_frame(room_id, message))

    def send_private_message(self, client_id: str, message: str) -> Awaitable[bool]:
        """Send ``message`` to the one client ``client_id``; await True once written, False if dropped."""
        return self._send(wire.private_message_frame(client_id, message))

    def broadcast_message(self, message: str) -> Awaitable[bool]:
        """Send ``message`` to every connected client; await True once written, False if dropped."""
        return self._send(wire.broadcast_frame(message))

    # Extension requests: the broker must announce them (else NotSupportedError); see IBrokerConnection.

    def room_members(self, room_id: str) -> Awaitable[list[Context]]:
        """The Contexts of the clients in ``room_id`` now, from the broker; await the list.

        Every request below fails with :class:`~pystrands.NotSupportedError`
        when the broker does not announce the feature,
        :class:`~pystrands.BrokerRefused` when it refuses, ``TimeoutError``
        after 10 s without a reply, or :class:`~pystrands.NotConnectedError`.
        """
        return self._send(wire.room_members_request(room_id))

    def disconnect_client(self, client_id: str, code: int = 1000, reason: str = "") -> Awaitable[bool]:
        """Close ``client_id``'s WebSocket with ``code`` and ``reason``; await True if it was connected.

        ``ValueError`` here for a code other than 1000 or 3000-4999 (4000-4999
        are the application's) or a reason over 123 bytes of UTF-8.
        """
        return self._send(wire.disconnect_client_request(client_id, code, reason))

    def join_room(self, client_id: str, room_id: str) -> Awaitable[bool]:
        """Put ``client_id`` in ``room_id`` too; await True if the client is connected."""
        return self._send(wire.join_room_request(client_id, room_id))

    def leave_room(self, client_id: str, room_id: str) -> Awaitable[bool]:
        """Take ``client_id`` out of ``room_id``; await True if the client is connected."""
        return self._send(wire.leave_room_request(client_id, room_id))

    def set_metadata(self, client_id: str, metadata: Any) -> Awaitable[bool]:
        """Give ``client_id`` new ``metadata`` (JSON values, checked here) for later events; await True if connected."""
        return self._send(wire.set_metadata_request(client_id, metadata))

    def _send(self, frame: Outgoing) -> Awaitable[Any]:
        """Hand an encoded frame (or an extension request) to the broker connection.

        Typed for its use on a loop, where it is an asyncio Future. From a
        thread without a loop it is a concurrent Future (``AsyncioBackend.send``).
        """
        return cast("Awaitable[Any]", sender_of(self).send(frame))

    async def on_connection_request(self, request: ConnectionRequestContext) -> Any:
        """Accept every WebSocket client unless overridden."""
        return DefaultCallbacks.on_connection_request(self, request)

    async def on_new_connection(self, context: Context) -> None:
        """Log a new WebSocket client."""
        DefaultCallbacks.on_new_connection(self, context)

    async def on_message(self, message: str, context: Context) -> None:
        """Log a message."""
        DefaultCallbacks.on_message(self, message, context)

    async def on_disconnect(self, context: Context) -> None:
        """Log a WebSocket client that left."""
        DefaultCallbacks.on_disconnect(self, context)

    async def on_error(self, error: str, context: Context) -> None:
        """Log an error the broker reported."""
        DefaultCallbacks.on_error(self, error, context)


register_face(AsyncPyStrandsClient, _backend_under_twistd)
