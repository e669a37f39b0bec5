"""PyStrandsClient: the blocking face, for code without an event loop (scripts, Flask, Django).

Each connect() starts a private Twisted reactor in a thread of its own (the
global reactor is neither installed nor needed), as the public client gives
each connection a receive thread. By default (``concurrency=1``) handlers
run on that thread, one at a time, as in pystrands 1.0.0: the shortest way
from a frame to its handler and back, but a handler that blocks holds this
client's I/O (sends from other threads included) until it returns.
``concurrency=N`` (N > 1) runs handlers in N worker threads instead, N
WebSocket clients' at once (each client's events in order), while I/O goes
on. Send methods may be called from any thread and return a
``concurrent.futures.Future``; one sent from another thread completes on the
I/O thread, so a handler there must not wait for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import wire
from ._faces import (
    BrokerEndpoint,
    Face,
    FaceBackend,
    Outgoing,
    backend_of,
    call_in_reactor,
    close_waker,
    in_handler_of,
    new_backend_of,
    register_face,
    run_as_handler,
)
from ._threads import HandlerThreads
from .context import Context
from .logbridge import bridge_to_stdlib
from .protocol import BrokerClientFactory
from .settings import BackendSettings, check_number

__all__ = ["PyStrandsClient"]

log = Logger()

#: Extra seconds, beyond a disconnect's handler timeout, allowed for closing the socket and threads.
_CLOSE_GRACE = 2.0
#: Events of different clients handed to the handler threads at once.
_EVENTS_IN_FLIGHT = 64


def _new_reactor() -> Any:
    """A fresh, uninstalled reactor of the best kind this platform has."""
    new_reactor: Callable[[], Any]
    try:
        from twisted.internet.epollreactor import EPollReactor as new_reactor
    except ImportError:
        try:
            from twisted.internet.pollreactor import PollReactor as new_reactor
        except ImportError:
            from twisted.internet.selectreactor import SelectReactor as new_reactor
    reactor = new_reactor()
    # Not the process's "I/O thread": an application reactor may own that title.
    reactor._registerAsIOThread = False
    return reactor


def _run_reactor(reactor: Any) -> None:
    """Run ``reactor`` until stopped, then close what it holds (Twisted leaves that to the process's end).

    That is the pipe it wakes itself with, and (epoll) its poll object.
    """
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        close_waker(reactor)
        close_poller = getattr(getattr(reactor, "_poller", None), "close", None)
        if close_poller is not None:
            close_poller()


def _start_reactor_thread() -> Any:
    """A new private reactor, running in a daemon thread of its own."""
    reactor = _new_reactor()
    running = threading.Event()
    reactor.callWhenRunning(running.set)
    thread = threading.Thread(target=_run_reactor, args=(reactor,), name="pystrands-reactor", daemon=True)
    thread.start()
    if not running.wait(10.0):
        raise RuntimeError("the PyStrands reactor thread did not start within 10s")
    return reactor


def _run_to_the_end(handler: Callable[..., Any], *args: Any) -> Any:
    """Call a handler in this thread; an ``async def`` one runs here to its end."""
    result = handler(*args)
    if result is not None and inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


class ThreadedBackend(FaceBackend):
    """A blocking face as an IBackend: each handler runs on the reactor thread or in a worker thread."""

    def __init__(self, face: Face[Any]) -> None:
        super().__init__(face)
        self.threads: HandlerThreads | None = None
        #: Run handlers on the reactor's own thread (a session with concurrency=1 sets it).
        self.inline = False
        #: True while a handler runs on the reactor's thread.
        self.handling = False

    def call(self, handler: Callable[..., Any], *args: Any) -> Any:
        if self.inline:
            self.handling = True
            try:
                return _run_to_the_end(handler, *args)  # on the I/O thread, which in_handler_of recognises
            finally:
                self.handling = False
        return self._threads().submit(run_as_handler, self.face, _run_to_the_end, handler, *args)

    def _threads(self) -> HandlerThreads:
        """The threads the face's session set, or (under twistd) ones stopped with the reactor."""
        if self.threads is None:
            self.threads = HandlerThreads(self.reactor, self.face._settings().concurrency, "pystrands-handler")
            self.reactor.addSystemEventTrigger("during", "shutdown", self.threads.stop)
        return self.threads


class _Session:
    """One connect() .. disconnect() cycle: a reactor thread, a core factory, handler threads if any."""

    def __init__(self, face: PyStrandsClient, settings: BackendSettings) -> None:
        self.backend = backend = new_backend_of(face)
        self.settings = settings
        self.reactor = _start_reactor_thread()
        backend.inline = settings.concurrency == 1
        if not backend.inline:
            backend.threads = HandlerThreads(self.reactor, settings.concurrency, "pystrands-handler")
        self.factory: BrokerClientFactory | None = None
        self.closed: concurrent.futures.Future[None] | None = None
        self._deadline = 0.0
        self._gave_up = False
        self._lock = threading.Lock()

    def start(self, host: str, port: int, timeout: float) -> concurrent.futures.Future[bool]:
        """Start connecting; a Future of the first attempt's outcome (bool)."""
        return call_in_reactor(self.reactor, self._start, host, port, timeout)

    def _start(self, host: str, port: int, timeout: float) -> Deferred[bool]:
        settings = self.settings
        if not self.backend.inline:
            # Events in flight at once, queued for the threads in arrival order; the
            # threads still run ``concurrency`` handlers at a time, and one client's
            # next event waits for the previous one, so every order holds.
            settings = dataclasses.replace(settings, concurrency=max(_EVENTS_IN_FLIGHT, settings.concurrency))
        self.backend.io_thread = threading.get_ident()
        self.factory = BrokerClientFactory(self.backend, self.reactor, settings)
        attempt = self.factory.next_attempt()
        self.factory.connect(BrokerEndpoint(self.reactor, host, port, timeout=timeout))
        return attempt

    @property
    def retrying(self) -> bool:
        """True while the factory keeps (re)connecting on its own."""
        return self.closed is None and self.factory is not None and bool(self.factory.continueTrying)

    def stop(self, timeout: float) -> None:
        """Stop the factory (handlers get ``timeout`` seconds), the threads, the reactor; idempotent.

        The first call's timeout holds: a later disconnect() waits no longer.
        """
        with self._lock:
            if self.closed is None:
                self.closed = concurrent.futures.Future()
                self._deadline = time.monotonic() + timeout
                call_in_reactor(self.reactor, self._stop_factory, timeout).add_done_callback(self._stop_threads)

    def wait_closed(self) -> None:
        """Wait for stop() to finish: up to its timeout, then the grace for closing; else give up (once).

        The reactor enforces the timeout itself unless a handler holds its
        thread: then, at the timeout, this thread shuts the socket down, as
        pystrands 1.0.0 closes its socket under a hung handler.
        """
        if self._closed_by(self._deadline):
            return
        held = self.backend.handling  # a handler holds the I/O thread (only ever so with inline handlers)
        if held:
            self._shut_socket()
        elif self._closed_by(self._deadline + _CLOSE_GRACE):
            return
        with self._lock:
            first, self._gave_up = not self._gave_up, True
        if first:
            log.warn("Handlers still running after disconnect()'s timeout; {what}",
                     what="the connection was closed under them" if held else "left to finish alone")

    def _closed_by(self, deadline: float) -> bool:
        assert self.closed is not None  # called after stop()
        try:
            self.closed.result(max(0.0, deadline - time.monotonic()))
            return True
        except concurrent.futures.TimeoutError:
            return False

    def _shut_socket(self) -> None:
        protocol = self.factory.current if self.factory is not None else None
        sock = getattr(getattr(protocol, "transport", None), "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def _stop_factory(self, timeout: float) -> Deferred[None] | None:
        return self.factory.stop(timeout) if self.factory is not None else None

    def _stop_threads(self, _: object) -> None:
        """Let the handler threads end (one running past the stop timeout is not waited for), then the reactor."""
        if self.backend.threads is not None:
            hung = self.backend.threads.stop()
            if hung:
                log.warn("{count} handler(s) still running after disconnect(); left to finish alone", count=hung)
        self.reactor.callFromThread(self.reactor.stop)
        self.backend.reactor_ended("the backend was stopped")
        assert self.closed is not None  # set by stop(), which scheduled this
        self.closed.set_result(None)


class PyStrandsClient(Face[ThreadedBackend]):
    """Blocking client: subclass it, override the ``on_*`` callbacks, call run_forever().

    Parameters are the documented ones (see the class signature) plus the
    core's settings as keywords (``concurrency``, ``idle_timeout``,
    ``max_line_length``, ``send_buffer_size``, ``backend_token``, ...).
    """

    _default_concurrency = 1
    _backend_class = ThreadedBackend

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._done = threading.Event()

    @property
    def connected(self) -> bool:
        """True while a TCP connection to the broker is open, and disconnect() was not called since."""
        session = self._session
        return session is not None and session.closed is None and super().connected

    def connect(self) -> bool:
        """Connect to the broker; True once connected, False if the attempt failed or timed out.

        With ``auto_reconnect`` a failed attempt is retried in the background.
        """
        bridge_to_stdlib()  # this face serves applications that use stdlib logging
        with self._lock:
            if self.connected:
                return True
            settings = self._settings()
            previous, self._session = self._session, None
            if previous is not None:
                previous.stop(0.0)
                if not in_handler_of(self):
                    previous.wait_closed()
            self._done.clear()
            session = self._session = _Session(self, settings)
            attempt = session.start(self.host, self.port, self.connect_timeout)
        try:
            return attempt.result(self.connect_timeout + _CLOSE_GRACE)
        except concurrent.futures.TimeoutError:
            log.warn("Connecting to {host}:{port} took more than {timeout}s", host=self.host,
                     port=self.port, timeout=self.connect_timeout)
            return False

    def disconnect(self, timeout: float = 5.0) -> None:
        """Stop reconnecting and close, after in-flight handlers finish (up to ``timeout`` seconds).

        From inside a handler it does not wait (the handler itself is in flight).
        """
        timeout = check_number("timeout", timeout, minimum=0)
        with self._lock:
            session = self._session
        if session is not None:
            session.stop(timeout)
            if not in_handler_of(self):
                session.wait_closed()
        self._done.set()

    def run_forever(self) -> None:
        """Connect (unless connected or reconnecting) and block until disconnect() or Ctrl-C."""
        try:
            session = self._session
            if not self.connected and not (session is not None and session.retrying):
                self.connect()
            self._done.wait()
        except KeyboardInterrupt:
            log.info("Interrupted: disconnecting from the broker")
        self.disconnect()

    def send_room_message(self, room_id: str, message: str) -> concurrent.futures.Future[None]:
        """Send ``message`` to every client in ``room_id``; done once written."""
        return self._send(wire.room_message_frame(room_id, message))

    def send_private_message(self, client_id: str, message: str) -> concurrent.futures.Future[None]:
        """Send ``message`` to the one client ``client_id``; done once written."""
        return self._send(wire.private_message_frame(client_id, message))

    def broadcast_message(self, message: str) -> concurrent.futures.Future[None]:
        """Send ``message`` to every connected client; done once written."""
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
        return backend_of(self).send(frame)


register_face(PyStrandsClient)
