"""The session both client faces share: connect() .. disconnect() cycles, as one explicit state machine.

A face (blocking or asyncio) owns one :class:`Session`. Each connect() from
``IDLE`` or ``CLOSED`` starts a *cycle*: a reactor, an IBackend adapter and a
``BrokerClientFactory`` that live until that cycle is closed. The states, and
what every public call does in each, are the tables below; the code follows
them (:meth:`Session._fire` refuses a transition that is not listed).

What is the face's own lives in its :class:`Runtime`: where the reactor runs
(a thread of its own, or the caller's asyncio loop), what kind of future the
caller gets (``concurrent.futures.Future`` or ``asyncio.Future``), and what
must end with a cycle (worker threads, handler tasks, the reactor).
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._adapter import FaceBackend
from .protocol import BrokerClientFactory
from .settings import BackendSettings

__all__ = ["CALLS", "TRANSITIONS", "Cycle", "Event", "Runtime", "Session", "SessionState"]

log = Logger()

#: Extra seconds, beyond a disconnect's handler timeout, allowed for closing the connection.
CLOSE_GRACE = 2.0


class SessionState(enum.Enum):
    """Where a face's session is."""

    IDLE = "idle"
    """Never connected."""
    CONNECTING = "connecting"
    """A cycle's first attempt is under way; connect() waits for it."""
    SERVING = "serving"
    """Connected, or reconnecting on its own after a failure or a loss."""
    DRAINING = "draining"
    """disconnect() was called: handlers get until its deadline, then the connection closes."""
    CLOSED = "closed"
    """Nothing of the last cycle runs any more; connect() starts a new one."""


class Event(enum.Enum):
    """What moves a session: the public calls, and what a cycle reports."""

    CONNECT = "connect()"
    CONNECT_WHILE_CONNECTED = "connect() while connected"
    DISCONNECT = "disconnect()"
    CONNECTED = "the first attempt connected"
    RETRYING = "the first attempt failed, retries follow"
    GAVE_UP = "the first attempt failed, no retry (auto_reconnect=False)"
    CLOSED = "the cycle's connection, threads and reactor are closed"
    WORLD_ENDED = "the face's asyncio loop was closed under the cycle"


IDLE, CONNECTING, SERVING, DRAINING, CLOSED = SessionState

#: (state, event) -> (next state, what happens). Every public call is defined in every state.
TRANSITIONS: dict[tuple[SessionState, Event], tuple[SessionState, str]] = {
    (IDLE, Event.CONNECT): (CONNECTING, "start a cycle: a reactor, a factory, the first attempt"),
    (IDLE, Event.DISCONNECT): (IDLE, "nothing to close: done at once"),
    (CONNECTING, Event.CONNECT): (CONNECTING, "the same attempt's outcome"),
    (CONNECTING, Event.DISCONNECT): (DRAINING, "stop the attempt (connect() gets False), then close"),
    (CONNECTING, Event.CONNECTED): (SERVING, "connect() gets True"),
    (CONNECTING, Event.RETRYING): (SERVING, "connect() gets False; the factory keeps trying"),
    (CONNECTING, Event.GAVE_UP): (DRAINING, "connect() gets False; no connection is coming: close"),
    (SERVING, Event.CONNECT_WHILE_CONNECTED): (SERVING, "True at once"),
    (SERVING, Event.CONNECT): (CONNECTING, "not connected now: close this cycle at once, start a new one"),
    (SERVING, Event.DISCONNECT): (DRAINING, "stop reconnecting; handlers get until the deadline; close"),
    (DRAINING, Event.CONNECT): (CONNECTING, "the closing cycle ends alone; start a new one"),
    (DRAINING, Event.DISCONNECT): (DRAINING, "the same close: the first call's deadline holds"),
    (DRAINING, Event.CLOSED): (CLOSED, "nothing of the cycle runs any more"),
    (CLOSED, Event.CONNECT): (CONNECTING, "start a new cycle"),
    (CLOSED, Event.DISCONNECT): (CLOSED, "nothing to close: done at once"),
    **{(state, Event.WORLD_ENDED): (CLOSED, "the loop is gone, and the cycle with it")
       for state in (CONNECTING, SERVING, DRAINING)},
}

#: The calls that do not move a session, in each state: what they do there.
CALLS: dict[tuple[SessionState, str], str] = {
    (IDLE, "send"): "False, and a warning: no connection is coming",
    (CONNECTING, "send"): "buffered: True once written on connecting, False if then dropped",
    (SERVING, "send"): "True once written (at once, or after the reconnect: SendBufferFull past the buffer)",
    (DRAINING, "send"): "True while handlers finish on the open connection; False (a warning) once closed",
    (CLOSED, "send"): "False, and a warning: no connection is coming",
    (IDLE, "request"): "fails with NotConnectedError",
    (CONNECTING, "request"): "fails with NotConnectedError (requests are not buffered)",
    (SERVING, "request"): "sent when connected, else fails with NotConnectedError",
    (DRAINING, "request"): "fails with NotConnectedError",
    (CLOSED, "request"): "fails with NotConnectedError",
    (IDLE, "run_forever"): "connect(), then wait for disconnect()",
    (CONNECTING, "run_forever"): "wait for disconnect() (the attempt goes on)",
    (SERVING, "run_forever"): "wait for disconnect() (connected or retrying: no new attempt)",
    (DRAINING, "run_forever"): "connect() (a new cycle), then wait for disconnect()",
    (CLOSED, "run_forever"): "connect(), then wait for disconnect()",
}


class Runtime(Protocol):
    """What a face's world gives its session: reactors, futures of its kind, what ends with a cycle."""

    def open(self) -> Any:
        """A new reactor for a cycle, ready to run calls (``call``)."""

    def backend(self) -> FaceBackend:
        """The face's IBackend adapter for a new cycle."""

    def endpoint(self, reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
        """The client endpoint to the broker on ``reactor``."""

    def call(self, reactor: Any, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` on ``reactor``'s thread; its result (value or Deferred) as the face's future."""

    def bridge(self, reactor: Any, outcome: Deferred[Any]) -> Any:
        """On ``reactor``'s thread: ``outcome`` as the face's future."""

    def done(self, value: Any) -> Any:
        """The face's future, already done with ``value``."""

    def pending(self) -> Any:
        """A new, pending future of the face's kind, completed by :meth:`complete`."""

    def complete(self, future: Any) -> None:
        """Complete a future made by :meth:`pending` with None, unless it is done."""

    def release(self, cycle: Cycle) -> Deferred[None] | None:
        """On the cycle's reactor once its factory stopped: end what the face runs besides it."""

    def alive(self, reactor: Any) -> bool:
        """False once ``reactor`` can run nothing more (its asyncio loop is closed)."""


class Cycle:
    """One cycle of a session: from the connect() that started it to its close."""

    def __init__(self, reactor: Any, backend: FaceBackend) -> None:
        #: The reactor the cycle runs on.
        self.reactor = reactor
        #: The face's IBackend adapter for this cycle.
        self.backend = backend
        #: The connection, once made on the reactor.
        self.factory: BrokerClientFactory | None = None
        #: The face's future of the first attempt's outcome (a bool).
        self.attempt: Any = None
        #: The face's future of the close, once it began.
        self.closed: Any = None
        #: ``time.monotonic()`` by which handlers must have finished, once the close began.
        self.deadline = 0.0


class Session:
    """The life cycle of one face (see the module docstring); its calls are safe from any thread."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.state = IDLE
        #: The current cycle (the last one, once closed); None before the first connect().
        self.cycle: Cycle | None = None
        #: The face's future completed by disconnect(), which run_forever() waits for.
        self.disconnected: Any = None
        self._lock = threading.RLock()

    def _fire(self, event: Event) -> None:
        """Move to the state that ``TRANSITIONS`` gives for ``event`` in the current state."""
        target, what = TRANSITIONS[(self.state, event)]
        log.debug("Session {old} -> {new} on {event}: {what}", old=self.state.value, new=target.value,
                  event=event.value, what=what)
        self.state = target

    def _check_world(self) -> None:
        cycle = self.cycle
        running = self.state in (CONNECTING, SERVING, DRAINING)
        if cycle is not None and running and not self.runtime.alive(cycle.reactor):
            self._fire(Event.WORLD_ENDED)
            self.disconnected = None  # a future of the closed loop: the next cycle makes its own
            cycle.backend.reactor_ended("the asyncio loop it ran on is closed")

    @property
    def connected(self) -> bool:
        """True while serving on an open connection."""
        cycle = self.cycle
        return (self.state is SERVING and cycle is not None and cycle.factory is not None
                and cycle.factory.connected and self.runtime.alive(cycle.reactor))

    @property
    def retrying(self) -> bool:
        """True while a connection is coming: the first attempt, or the factory's retries."""
        cycle = self.cycle
        if self.state is CONNECTING:
            return True
        return (self.state is SERVING and cycle is not None and cycle.factory is not None
                and cycle.factory.retrying and self.runtime.alive(cycle.reactor))

    def connect(self, settings: BackendSettings, host: str, port: int, timeout: float) -> Any:
        """Start connecting (or join the attempt under way); the face's future of the outcome (bool)."""
        with self._lock:
            self._check_world()
            if self.connected:
                self._fire(Event.CONNECT_WHILE_CONNECTED)
                return self.runtime.done(True)
            cycle = self.cycle
            if self.state is CONNECTING:
                assert cycle is not None  # a cycle is connecting
                self._fire(Event.CONNECT)
                return cycle.attempt
            reactor = self.runtime.open()
            if self.state is SERVING:
                assert cycle is not None  # a cycle is serving
                self._close(cycle, 0.0)
            self._fire(Event.CONNECT)
            cycle = self.cycle = Cycle(reactor, self.runtime.backend())
            if self.disconnected is None or self.disconnected.done():
                self.disconnected = self.runtime.pending()
            cycle.attempt = self.runtime.call(reactor, self._begin, cycle, settings, host, port, timeout)
            return cycle.attempt

    def _begin(self, cycle: Cycle, settings: BackendSettings, host: str, port: int,
               timeout: float) -> Deferred[bool]:
        """On the cycle's reactor: make the factory, connect; a Deferred of the first attempt's outcome."""
        factory = cycle.factory = BrokerClientFactory(cycle.backend, cycle.reactor, settings)
        attempt = factory.next_attempt().addCallback(self._attempted, cycle)
        factory.connect(self.runtime.endpoint(cycle.reactor, host, port, timeout), f"{host}:{port}")
        return attempt

    def _attempted(self, connected: bool, cycle: Cycle) -> bool:
        """On the cycle's reactor: the first attempt's outcome moves a connecting session."""
        with self._lock:
            if cycle is not self.cycle or self.state is not CONNECTING:
                return connected  # disconnect() or a new connect() came first
            if connected:
                self._fire(Event.CONNECTED)
            elif cycle.factory is not None and cycle.factory.retrying:
                self._fire(Event.RETRYING)
            else:
                self._fire(Event.GAVE_UP)
                cycle.deadline = time.monotonic()
                cycle.closed = self.runtime.bridge(cycle.reactor, self._stop(cycle, 0.0))
        return connected

    def disconnect(self, timeout: float) -> Any:
        """Begin closing (or join the close under way); the face's future of the close."""
        with self._lock:
            self._check_world()
            if self.disconnected is not None:
                self.runtime.complete(self.disconnected)
            cycle, state = self.cycle, self.state
            self._fire(Event.DISCONNECT)
            if state in (CONNECTING, SERVING):
                assert cycle is not None  # a cycle is connecting or serving
                self._close(cycle, timeout)
            if cycle is None or cycle.closed is None or state in (IDLE, CLOSED):
                return self.runtime.done(None)
            return cycle.closed

    def _close(self, cycle: Cycle, timeout: float) -> None:
        cycle.deadline = time.monotonic() + timeout
        cycle.closed = self.runtime.call(cycle.reactor, self._stop, cycle, timeout)

    def _stop(self, cycle: Cycle, timeout: float) -> Deferred[None]:
        """On the cycle's reactor: stop the factory (handlers get ``timeout`` seconds), then what the face runs."""
        factory = cycle.factory
        if factory is None:
            stopping: Deferred[None] = succeed(None)
        else:
            stopping = factory.stop(timeout).addTimeout(timeout + CLOSE_GRACE, cycle.reactor)
        stopping.addErrback(lambda _: log.warn("The broker connection did not close within {seconds}s;"
                                               " releasing it anyway", seconds=timeout + CLOSE_GRACE))
        stopping.addCallback(lambda _: self.runtime.release(cycle))
        return stopping.addBoth(self._closed, cycle)

    def _closed(self, result: object, cycle: Cycle) -> None:
        if isinstance(result, Failure):
            log.failure("Closing the session failed", result)
        with self._lock:
            if cycle is self.cycle and self.state is DRAINING:
                self._fire(Event.CLOSED)
