"""PyStrandsClient: the blocking face, for code without an event loop (scripts, Flask, Django).

I/O runs on a private Twisted reactor in a background thread that the
library owns (one per process, shared by every client; the global reactor
is neither installed nor needed). Handlers run in a pool of worker threads
per connection, one at a time by default (``concurrency=N`` allows N
WebSocket clients' handlers at once, each client's events still in order),
so a slow handler never delays heartbeats or other I/O. Send methods may be
called from any thread and return a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import wire
from ._faces import (BrokerEndpoint, Face, FaceBackend, backend_of, call_in_reactor, in_handler_of, register_face,
                     run_as_handler)
from ._threads import HandlerThreads
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
    try:
        from twisted.internet.epollreactor import EPollReactor as Reactor
    except ImportError:
        try:
            from twisted.internet.pollreactor import PollReactor as Reactor
        except ImportError:
            from twisted.internet.selectreactor import SelectReactor as Reactor
    return Reactor()


class _ReactorThread:
    """The process's private reactor, running in a daemon thread from first use on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reactor: Any = None
        self._thread: threading.Thread | None = None

    def get(self) -> Any:
        """The running private reactor (started on the first call)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                reactor = _new_reactor()
                # Not the process's "I/O thread": an application reactor may own that title.
                reactor._registerAsIOThread = False
                running = threading.Event()
                reactor.callWhenRunning(running.set)
                thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                          name="pystrands-reactor", daemon=True)
                thread.start()
                if not running.wait(10.0):
                    raise RuntimeError("the PyStrands reactor thread did not start within 10s")
                self._reactor, self._thread = reactor, thread
            return self._reactor


_reactor_thread = _ReactorThread()


def _run_to_the_end(handler: Callable[..., Any], *args: Any) -> Any:
    """Call a handler in this worker thread; an ``async def`` one runs here to its end."""
    result = handler(*args)
    return asyncio.run(result) if inspect.iscoroutine(result) else result


class ThreadedBackend(FaceBackend):
    """A blocking face as an IBackend: each handler runs in a worker thread."""

    def __init__(self, face: Face) -> None:
        super().__init__(face)
        self.threads: HandlerThreads | None = None

    def call(self, handler: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._threads().submit(run_as_handler, self.face, _run_to_the_end, handler, *args)

    def _threads(self) -> HandlerThreads:
        """The threads the face's session set, or (under twistd) ones stopped with the reactor."""
        if self.threads is None:
            self.threads = HandlerThreads(self.reactor, self.face._settings().concurrency, "pystrands-handler")
            self.reactor.addSystemEventTrigger("during", "shutdown", self.threads.stop)
        return self.threads


class _Session:
    """One connect() .. disconnect() cycle: a core factory and its handler pool."""

    def __init__(self, backend: ThreadedBackend, reactor: Any, settings: BackendSettings) -> None:
        self.backend = backend
        self.reactor = reactor
        self.settings = settings
        self.threads = backend.threads = HandlerThreads(reactor, settings.concurrency, "pystrands-handler")
        self.factory: BrokerClientFactory | None = None
        self.closed: concurrent.futures.Future | None = None
        self._lock = threading.Lock()

    def start(self, host: str, port: int, timeout: float) -> concurrent.futures.Future:
        """Start connecting; a Future of the first attempt's outcome (bool)."""
        return call_in_reactor(self.reactor, self._start, host, port, timeout)

    def _start(self, host: str, port: int, timeout: float) -> Deferred[bool]:
        # Events in flight at once, queued for the threads in arrival order; the
        # threads still run ``concurrency`` handlers at a time, and one client's
        # next event waits for the previous one, so every order holds.
        in_flight = max(_EVENTS_IN_FLIGHT, self.settings.concurrency)
        self.factory = BrokerClientFactory(self.backend, self.reactor,
                                           dataclasses.replace(self.settings, concurrency=in_flight))
        attempt = self.factory.next_attempt()
        self.factory.connect(BrokerEndpoint(self.reactor, host, port, timeout=timeout))
        return attempt

    @property
    def retrying(self) -> bool:
        """True while the factory keeps (re)connecting on its own."""
        return self.closed is None and self.factory is not None and self.factory.continueTrying

    def stop(self, timeout: float) -> concurrent.futures.Future:
        """Stop the factory (handlers get ``timeout`` seconds), then the threads; idempotent."""
        with self._lock:
            if self.closed is None:
                self.closed = concurrent.futures.Future()
                call_in_reactor(self.reactor, self._stop_factory, timeout).add_done_callback(self._stop_threads)
            return self.closed

    def _stop_factory(self, timeout: float) -> Deferred[None] | None:
        return self.factory.stop(timeout) if self.factory is not None else None

    def _stop_threads(self, _: object) -> None:
        """Let the handler threads end; one still running past the stop timeout is not waited for."""
        hung = self.threads.stop()
        if hung:
            log.warn("{count} handler(s) still running after disconnect(); left to finish alone", count=hung)
        self.closed.set_result(None)


class PyStrandsClient(Face):
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
                self._wait_closed(previous.stop(0.0), 0.0)
            self._done.clear()
            session = self._session = _Session(backend_of(self), _reactor_thread.get(), settings)
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
            closed = session.stop(timeout)
            if not in_handler_of(self):
                self._wait_closed(closed, timeout)
        self._done.set()

    def _wait_closed(self, closed: concurrent.futures.Future, timeout: float) -> None:
        try:
            closed.result(timeout + _CLOSE_GRACE)
        except concurrent.futures.TimeoutError:
            log.warn("Handlers still running {timeout}s after disconnect(); left to finish alone",
                     timeout=timeout + _CLOSE_GRACE)

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

    def send_room_message(self, room_id: str, message: str) -> concurrent.futures.Future:
        """Send ``message`` to every client in ``room_id``; done once written."""
        return self._send(wire.room_message_frame(room_id, message))

    def send_private_message(self, client_id: str, message: str) -> concurrent.futures.Future:
        """Send ``message`` to the one client ``client_id``; done once written."""
        return self._send(wire.private_message_frame(client_id, message))

    def broadcast_message(self, message: str) -> concurrent.futures.Future:
        """Send ``message`` to every connected client; done once written."""
        return self._send(wire.broadcast_frame(message))


register_face(PyStrandsClient)
