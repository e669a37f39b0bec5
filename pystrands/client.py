"""PyStrandsClient: the blocking face, for code without an event loop (scripts, Flask, Django).

Each connect() starts a private Twisted reactor in a thread of its own (the
global reactor is neither installed nor needed), as the public client gives
each connection a receive thread. By default (``concurrency=1``) handlers
run on that thread, one at a time, as in pystrands 1.0.0: the shortest way
from a frame to its handler and back, but a handler that blocks holds this
client's I/O (sends from other threads included) until it returns.
``concurrency=N`` (N > 1) runs handlers in N worker threads instead, N
WebSocket clients' at once (each client's events in order), while I/O goes
on (``twistd pystrands --concurrency N`` runs N worker threads too). Send
methods may be called from any thread and return a
``concurrent.futures.Future`` of True once written, False when dropped (no
connection coming; logged, never raised); one sent from another thread
completes on the I/O thread, so a handler there must not wait for it.

The life cycle (connect, disconnect, run_forever) is the session both faces
share (:mod:`pystrands._session`); this module adds what a blocking face's
world needs: the reactor thread, worker threads, concurrent Futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import wire
from ._adapter import (
    FaceBackend,
    Outgoing,
    in_handler_of,
    mark_thread,
    new_backend_of,
    register_face,
    run_as_handler,
    sender_of,
)
from ._bridges import call_in_reactor, done_future, settle_concurrent
from ._face import Face
from ._reactors import start_reactor_thread
from ._session import CLOSE_GRACE, Cycle, FaceRuntime, Runtime
from ._threads import HandlerThreads
from .context import Context
from .logbridge import bridge_to_stdlib
from .protocol import BrokerClientFactory
from .settings import check_number

__all__ = ["PyStrandsClient"]

log = Logger()


def _run_to_the_end(handler: Callable[..., Any], *args: Any) -> Any:
    """Call a handler in this thread; an ``async def`` one runs here to its end."""
    result = handler(*args)
    if result is not None and inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


class ThreadedBackend(FaceBackend):
    """A blocking face as an IBackend: each handler runs on the reactor thread or in a worker thread.

    Handlers of ``concurrency`` WebSocket clients run at once, the
    concurrency of the connection (its factory's settings), whoever made it:
    a session of the face, or ``twistd pystrands --concurrency N``.
    """

    def __init__(self, face: Any) -> None:
        super().__init__(face)
        self.threads: HandlerThreads | None = None
        #: True when the reactor is the face's own (a session's), whose thread may run handlers.
        self.private_reactor = False
        #: Run handlers on the reactor's own thread: a private reactor with concurrency=1.
        self.inline = False
        #: True while a handler runs on the reactor's thread.
        self.handling = False

    def attach(self, broker: BrokerClientFactory) -> None:
        """Handlers inline (private reactor, concurrency=1), else as many worker threads as the concurrency."""
        super().attach(broker)
        if self.private_reactor:  # attached on the reactor's thread, the one sends from need no hand-over
            self.io_thread = threading.get_ident()
            mark_thread(self)  # the thread is this cycle's: what runs there sends through this adapter
        concurrency = broker.settings.concurrency
        self.inline = self.private_reactor and concurrency == 1
        if not self.inline:
            self.threads = HandlerThreads(self.reactor, concurrency, "pystrands-handler")
            if not self.private_reactor:  # a session stops its own; an application's reactor, at shutdown
                self.reactor.addSystemEventTrigger("during", "shutdown", self.threads.stop)

    def call(self, handler: Callable[..., Any], *args: Any) -> Any:
        if self.inline:
            self.handling = True
            try:
                return _run_to_the_end(handler, *args)  # on the I/O thread, marked by attach()
            finally:
                self.handling = False
        assert self.threads is not None  # made by attach(), before any event
        return self.threads.submit(run_as_handler, self, _run_to_the_end, handler, *args)


class _ThreadRuntime(FaceRuntime[concurrent.futures.Future[Any]]):
    """The blocking face's world: a reactor thread per cycle, concurrent Futures, threads to stop."""

    def __init__(self, face: PyStrandsClient) -> None:
        self.face = face

    def open(self) -> Any:
        return start_reactor_thread()

    def backend(self, reactor: Any) -> ThreadedBackend:
        backend: ThreadedBackend = new_backend_of(self.face, reactor)
        backend.private_reactor = True
        return backend

    def call(self, reactor: Any, function: Any, *args: Any) -> concurrent.futures.Future[Any]:
        return call_in_reactor(reactor, function, *args)

    def bridge(self, reactor: Any, outcome: Deferred[Any]) -> concurrent.futures.Future[Any]:
        return settle_concurrent(concurrent.futures.Future(), outcome)

    def done(self, value: Any) -> concurrent.futures.Future[Any]:
        return done_future(value)

    def pending(self) -> concurrent.futures.Future[None]:
        return concurrent.futures.Future()

    def complete(self, future: concurrent.futures.Future[None]) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # another thread completed it
            future.set_result(None)

    def release(self, cycle: Cycle) -> None:
        """Let the handler threads end (one running past the deadline is left to finish alone), stop the reactor."""
        backend = cycle.backend
        assert isinstance(backend, ThreadedBackend)  # made by backend()
        if backend.threads is not None:
            hung = backend.threads.stop()
            if hung:
                log.warn("{count} handler thread(s) still running after disconnect()'s timeout; left to"
                         " finish alone (a thread cannot be cancelled)", count=hung)
        backend.reactor_ended("the backend was stopped")
        cycle.reactor.stop()

    def alive(self, reactor: Any) -> bool:
        return True


def _done_by(future: concurrent.futures.Future[Any], deadline: float) -> bool:
    try:
        future.result(max(0.0, deadline - time.monotonic()))
        return True
    except concurrent.futures.TimeoutError:
        return False


def _shut_socket(cycle: Cycle) -> None:
    """Shut the cycle's socket down from this thread, under a handler that holds the I/O thread."""
    protocol = cycle.factory.current if cycle.factory is not None else None
    sock = getattr(getattr(protocol, "transport", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class PyStrandsClient(Face[ThreadedBackend]):
    """Blocking client: subclass it, override the ``on_*`` callbacks, call run_forever().

    Parameters are the documented ones (see the class signature) plus the
    core's settings as keywords (``concurrency``, ``idle_timeout``,
    ``max_line_length``, ``send_buffer_size``, ``backend_token``, ...).

    Sends give a Future of True, or of False when dropped for want of a
    connection, as in pystrands 1.0.0; the Twisted-native connection
    (``IBrokerConnection``, a ``Backend``'s ``self.broker``) fails its
    Deferreds with NotConnectedError instead.
    """

    _default_concurrency = 1
    _backend_class = ThreadedBackend

    def _init_state(self) -> None:
        super()._init_state()
        self._warned_lock = threading.Lock()
        #: The cycle whose handlers were last reported as outliving a disconnect().
        self._warned_about: Cycle | None = None

    def _runtime(self) -> Runtime:
        return _ThreadRuntime(self)

    def connect(self) -> bool:
        """Connect to the broker; True once connected, False if the attempt failed or timed out.

        With ``auto_reconnect`` a failed attempt is retried in the background;
        without, nothing is left running after it.
        """
        bridge_to_stdlib()  # this face serves applications that use stdlib logging
        attempt = self._session.connect(*self._connect_args())
        try:
            connected: bool = attempt.result(self.connect_timeout + CLOSE_GRACE)
        except concurrent.futures.TimeoutError:
            log.warn("Connecting to {host}:{port} took more than {timeout}s", host=self.host,
                     port=self.port, timeout=self.connect_timeout)
            return False
        return connected

    def disconnect(self, timeout: float = 5.0) -> None:
        """Stop reconnecting and close, after in-flight handlers finish (up to ``timeout`` seconds).

        A handler still running at the deadline cannot be cancelled (Python
        threads cannot be): a worker thread (``concurrency=N``) is left to
        finish alone; a handler on the I/O thread (``concurrency=1``) has the
        socket shut down under it. Either way its later sends are dropped
        (False), even after a new connect(), and this returns within
        ``timeout`` plus a grace of 2 seconds, with a warning. From inside a
        handler it does not wait (the handler itself is in flight).
        """
        timeout = check_number("timeout", timeout, minimum=0)
        closed, cycle = self._session.disconnect(timeout)
        if cycle is not None and not in_handler_of(self):
            self._wait_closed(closed, cycle)
        self._report_dropped_sends()

    def _wait_closed(self, closed: concurrent.futures.Future[None], cycle: Cycle) -> None:
        """Wait for the close: up to its deadline, then the grace (a handler on the I/O thread: shut the socket).

        The reactor enforces the deadline itself unless a handler holds its
        thread: then, at the deadline, this thread shuts the socket down, as
        pystrands 1.0.0 closes its socket under a hung handler.
        """
        if _done_by(closed, cycle.deadline):
            return
        backend = cycle.backend
        held = isinstance(backend, ThreadedBackend) and backend.handling
        if held:
            backend.reactor_ended("disconnect()'s timeout passed: the connection was closed under the handler")
            _shut_socket(cycle)
        elif _done_by(closed, cycle.deadline + CLOSE_GRACE):
            return
        with self._warned_lock:  # a second disconnect() of the same cycle (run_forever's) says it again
            first, self._warned_about = self._warned_about is not cycle, cycle
        if first:
            log.warn("Handlers still running after disconnect()'s timeout; {what}",
                     what="the connection was closed under them" if held else "left to finish alone")

    def run_forever(self) -> None:
        """Connect (unless connected or reconnecting) and block until disconnect() or Ctrl-C.

        Returns at once when no connection is coming: the single attempt of
        ``auto_reconnect=False`` failed (logged as a warning).
        """
        session = self._session
        try:
            if not (session.connected or session.retrying):
                self.connect()
            if session.connected or session.retrying:
                assert session.disconnected is not None  # made by connect()
                session.disconnected.result()
        except KeyboardInterrupt:
            log.info("Interrupted: disconnecting from the broker")
        self.disconnect()

    def send_room_message(self, room_id: str, message: str) -> concurrent.futures.Future[bool]:
        """Send ``message`` to every client in ``room_id``; a Future of True once written, False if dropped.

        Dropped means no connection is coming (before connect(), after
        disconnect(), after a failed attempt without ``auto_reconnect``): it
        is logged as a warning, never raised. While reconnecting the send
        waits in a buffer; past ``send_buffer_size`` waiting sends it fails
        with :class:`~pystrands.SendBufferFull`. ``TypeError`` here for an
        argument that is not a str.
        """
        return self._send(wire.room_message_frame(room_id, message))

    def send_private_message(self, client_id: str, message: str) -> concurrent.futures.Future[bool]:
        """Send ``message`` to the one client ``client_id``; a Future of True once written, False if dropped."""
        return self._send(wire.private_message_frame(client_id, message))

    def broadcast_message(self, message: str) -> concurrent.futures.Future[bool]:
        """Send ``message`` to every connected client; a Future of True once written, False if dropped."""
        return self._send(wire.broadcast_frame(message))

    # Extension requests: the broker must announce them (else NotSupportedError); see IBrokerConnection.

    def room_members(self, room_id: str) -> concurrent.futures.Future[list[Context]]:
        """The Contexts of the clients in ``room_id`` now, from the broker; a Future of the list.

        Like every request below it may be called from any thread. The Future
        fails with :class:`~pystrands.NotSupportedError` when the broker does
        not announce the feature, :class:`~pystrands.BrokerRefused` when it
        refuses, ``TimeoutError`` after 10 s without a reply, or
        :class:`~pystrands.NotConnectedError`. A handler on the I/O thread
        (``concurrency=1``) must not wait for it: chain a callback instead.
        """
        return self._send(wire.room_members_request(room_id))

    def disconnect_client(self, client_id: str, code: int = 1000,
                          reason: str = "") -> concurrent.futures.Future[bool]:
        """Close ``client_id``'s WebSocket with ``code`` and ``reason``; a Future of True if it was connected.

        ``ValueError`` here for a code other than 1000 or 3000-4999 (4000-4999
        are the application's) or a reason over 123 bytes of UTF-8.
        """
        return self._send(wire.disconnect_client_request(client_id, code, reason))

    def join_room(self, client_id: str, room_id: str) -> concurrent.futures.Future[bool]:
        """Put ``client_id`` in ``room_id`` too; a Future of True if the client is connected."""
        return self._send(wire.join_room_request(client_id, room_id))

    def leave_room(self, client_id: str, room_id: str) -> concurrent.futures.Future[bool]:
        """Take ``client_id`` out of ``room_id``; a Future of True if the client is connected."""
        return self._send(wire.leave_room_request(client_id, room_id))

    def set_metadata(self, client_id: str, metadata: Any) -> concurrent.futures.Future[bool]:
        """Give ``client_id`` new ``metadata`` (JSON, checked here) for later events; a Future of True if connected."""
        return self._send(wire.set_metadata_request(client_id, metadata))

    def _send(self, frame: Outgoing) -> concurrent.futures.Future[Any]:
        """Hand an encoded frame (or an extension request) to the broker connection, from any thread."""
        return sender_of(self).send(frame)


register_face(PyStrandsClient)
