"""The session both client faces share: connect() .. disconnect() cycles, as one explicit state machine.

A face (blocking or asyncio) owns one :class:`Session`. Each connect() from
``IDLE`` or ``CLOSED`` starts a *cycle*: a reactor, an IBackend adapter and a
``BrokerClientFactory`` that live until that cycle is closed. The states, and
what every public call does in each, are the tables below; the code follows
them (:meth:`Session._fire` raises :class:`InvalidSessionTransition`, a
:class:`~pystrands.lifecycle.InvalidTransition`, for a pair that is not listed).
The names say which machine: ``SessionEvent`` and ``SESSION_TRANSITIONS``
here, the connection's own ``Event`` and ``TRANSITIONS`` in
:mod:`pystrands.lifecycle`.

What is the face's own lives in its :class:`FaceRuntime`: where the reactor runs
(a thread of its own, or the caller's asyncio loop), what kind of future the
caller gets (``concurrent.futures.Future`` or ``asyncio.Future``), and what
must end with a cycle (worker threads, handler tasks, the reactor).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._adapter import FaceBackend
from ._endpoint import BrokerEndpoint
from .lifecycle import InvalidTransition
from .protocol import BrokerClientFactory
from .settings import BackendSettings

__all__ = [
    "CALLS",
    "SESSION_TRANSITIONS",
    "Cycle",
    "FaceRuntime",
    "InvalidSessionTransition",
    "Runtime",
    "Session",
    "SessionEvent",
    "SessionState",
]

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
    """Connected, or reconnecting on its own after a failure or a loss (without a retry to come, it closes)."""
    DRAINING = "draining"
    """disconnect() was called: handlers get until its deadline, then the connection closes."""
    CLOSED = "closed"
    """Nothing of the last cycle runs any more; connect() starts a new one."""


class SessionEvent(enum.Enum):
    """What moves a session: the public calls, and what a cycle reports."""

    CONNECT = "connect()"
    CONNECT_WHILE_CONNECTED = "connect() while connected"
    DISCONNECT = "disconnect()"
    CONNECTED = "the first attempt connected"
    RETRYING = "the first attempt failed, retries follow"
    GAVE_UP = "no connection is coming: an attempt failed or the connection was lost, and no retry follows"
    CLOSED = "the cycle's connection, threads and reactor are closed"
    WORLD_ENDED = "the face's asyncio loop was closed under the cycle"


IDLE, CONNECTING, SERVING, DRAINING, CLOSED = SessionState

#: (state, event) -> (next state, what happens). Every public call is defined in every state.
SESSION_TRANSITIONS: dict[tuple[SessionState, SessionEvent], tuple[SessionState, str]] = {
    (IDLE, SessionEvent.CONNECT): (CONNECTING, "start a cycle: a reactor, a factory, the first attempt"),
    (IDLE, SessionEvent.DISCONNECT): (IDLE, "nothing to close: done at once"),
    (CONNECTING, SessionEvent.CONNECT): (CONNECTING, "the same attempt's outcome"),
    (CONNECTING, SessionEvent.DISCONNECT): (DRAINING, "stop the attempt (connect() gets False), then close"),
    (CONNECTING, SessionEvent.CONNECTED): (SERVING, "connect() gets True"),
    (CONNECTING, SessionEvent.RETRYING): (SERVING, "connect() gets False; the factory keeps trying"),
    (CONNECTING, SessionEvent.GAVE_UP): (DRAINING, "connect() gets False; no connection is coming: close"),
    (SERVING, SessionEvent.CONNECT_WHILE_CONNECTED): (SERVING, "True at once"),
    (SERVING, SessionEvent.CONNECT): (CONNECTING, "not connected now: close this cycle at once, start a new one"),
    (SERVING, SessionEvent.DISCONNECT): (DRAINING, "stop reconnecting; handlers get until the deadline; close"),
    (SERVING, SessionEvent.GAVE_UP): (DRAINING, "lost, no retry to follow: close; run_forever() returns"),
    (DRAINING, SessionEvent.CONNECT): (CONNECTING, "the closing cycle ends alone; start a new one"),
    (DRAINING, SessionEvent.DISCONNECT): (DRAINING, "the same close: the first call's deadline holds"),
    (DRAINING, SessionEvent.CLOSED): (CLOSED, "nothing of the cycle runs any more"),
    (CLOSED, SessionEvent.CONNECT): (CONNECTING, "start a new cycle"),
    (CLOSED, SessionEvent.DISCONNECT): (CLOSED, "nothing to close: done at once"),
    **{(state, SessionEvent.WORLD_ENDED): (CLOSED, "the loop is gone, and the cycle with it")
       for state in (CONNECTING, SERVING, DRAINING)},
}

_CONNECT_AND_WAIT = ("connect(), then wait for disconnect(); return at once (after disconnect()) when no"
                     " connection is coming: the single attempt failed (auto_reconnect=False); return"
                     " too once the connection is lost without a retry to follow")

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
    (IDLE, "run_forever"): _CONNECT_AND_WAIT,
    (CONNECTING, "run_forever"): "wait for disconnect() (the attempt goes on)",
    (SERVING, "run_forever"): "wait for disconnect() (connected or retrying: no new attempt)",
    (DRAINING, "run_forever"): "connect() (a new cycle), then " + _CONNECT_AND_WAIT.removeprefix("connect(), then "),
    (CLOSED, "run_forever"): _CONNECT_AND_WAIT,
}

class _Future(Protocol):
    """What the session asks of a face's future."""

    def done(self) -> bool: ...


#: A face's future: ``concurrent.futures.Future`` (blocking face) or ``asyncio.Future`` (asyncio face).
FutureT = TypeVar("FutureT", bound=_Future)

#: How a session reaches the broker: an endpoint from (reactor, host, port, timeout).
EndpointMaker = Callable[[Any, str, int, float], IStreamClientEndpoint]


class InvalidSessionTransition(InvalidTransition):
    """An event a session cannot take in its state: a bug, caught as any InvalidTransition."""

    def __init__(self, state: SessionState, event: SessionEvent) -> None:
        RuntimeError.__init__(self, f"{event.value!r} cannot happen while the session is {state.value}")
        self.session_state = state
        self.session_event = event


class FaceRuntime(Protocol[FutureT]):
    """What a face's world gives its session: reactors, futures of its kind (``FutureT``), what ends with a cycle."""

    def open(self) -> Any:
        """A new reactor for a cycle, ready to run calls (``call``)."""

    def backend(self, reactor: Any) -> FaceBackend:
        """The face's IBackend adapter for a new cycle on ``reactor`` (made by ``new_backend_of``)."""

    def call(self, reactor: Any, function: Any, *args: Any) -> FutureT:
        """Run ``function(*args)`` on ``reactor``'s thread; its result (value or Deferred) as the face's future."""

    def bridge(self, reactor: Any, outcome: Deferred[Any]) -> FutureT:
        """On ``reactor``'s thread: ``outcome`` as the face's future."""

    def done(self, value: Any) -> FutureT:
        """The face's future, already done with ``value``."""

    def pending(self) -> FutureT:
        """A new, pending future of the face's kind, completed by :meth:`complete`."""

    def complete(self, future: FutureT) -> None:
        """Complete a future made by :meth:`pending` with None, unless it is done."""

    def release(self, cycle: Cycle) -> Deferred[None] | None:
        """On the cycle's reactor once its factory stopped: end what the face runs besides it."""

    def alive(self, reactor: Any) -> bool:
        """False once ``reactor`` can run nothing more (its asyncio loop is closed)."""


#: Any face's runtime, whatever its futures.
Runtime = FaceRuntime[Any]


class Cycle:
    """One cycle of a session: from the connect() that started it to its close.

    Its futures are the face's kind (see :class:`FaceRuntime`).
    """

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


class Session(Generic[FutureT]):
    """The life cycle of one face (see the module docstring); its calls are safe from any thread.

    ``endpoint`` makes the connection's client endpoint (a test gives one of
    in-memory transports); ``watch``, if given, sees every move as
    ``(old state, event, new state)``, made under the session's lock.
    """

    def __init__(self, runtime: FaceRuntime[FutureT], endpoint: EndpointMaker = BrokerEndpoint,
                 watch: Callable[[SessionState, SessionEvent, SessionState], object] | None = None) -> None:
        self.runtime = runtime
        #: Where the session is (see :class:`SessionState`).
        self.state = IDLE
        #: The current cycle (the last one, once closed); None before the first connect().
        self.cycle: Cycle | None = None
        #: The face's future completed by disconnect(), which run_forever() waits for.
        self.disconnected: FutureT | None = None
        self._endpoint = endpoint
        self._watch = watch
        self._lock = threading.RLock()

    def _fire(self, event: SessionEvent) -> None:
        """Move to the state that ``SESSION_TRANSITIONS`` gives for ``event`` in the current state."""
        old = self.state
        try:
            target, what = SESSION_TRANSITIONS[(old, event)]
        except KeyError:
            raise InvalidSessionTransition(old, event) from None
        log.debug("Session {old} -> {new} on {event}: {what}", old=old.value, new=target.value,
                  event=event.value, what=what)
        self.state = target
        if self._watch is not None:
            self._watch(old, event, target)

    def _check_world(self) -> None:
        cycle = self.cycle
        running = self.state in (CONNECTING, SERVING, DRAINING)
        if cycle is not None and running and not self.runtime.alive(cycle.reactor):
            self._fire(SessionEvent.WORLD_ENDED)
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

    def connect(self, settings: BackendSettings, host: str, port: int, timeout: float) -> FutureT:
        """Start connecting (or join the attempt under way); the face's future of the outcome (bool)."""
        with self._lock:
            self._check_world()
            if self.connected:
                self._fire(SessionEvent.CONNECT_WHILE_CONNECTED)
                return self.runtime.done(True)
            cycle = self.cycle
            if self.state is CONNECTING:
                assert cycle is not None  # a cycle is connecting
                self._fire(SessionEvent.CONNECT)
                joined: FutureT = cycle.attempt
                return joined
            reactor = self.runtime.open()
            if self.state is SERVING:
                assert cycle is not None  # a cycle is serving
                self._close(cycle, 0.0)
            self._fire(SessionEvent.CONNECT)
            cycle = self.cycle = Cycle(reactor, self.runtime.backend(reactor))
            if self.disconnected is None or self.disconnected.done():
                self.disconnected = self.runtime.pending()
            attempt = cycle.attempt = self.runtime.call(reactor, self._begin, cycle, settings, host, port, timeout)
            return attempt

    def _begin(self, cycle: Cycle, settings: BackendSettings, host: str, port: int,
               timeout: float) -> Deferred[bool]:
        """On the cycle's reactor: make the factory, connect; a Deferred of the first attempt's outcome."""
        factory = cycle.factory = BrokerClientFactory(cycle.backend, cycle.reactor, settings)
        attempt = factory.next_attempt().addCallback(self._attempted, cycle)
        factory.connect(self._endpoint(cycle.reactor, host, port, timeout), f"{host}:{port}")
        cycle.backend.flush()  # sends made while this call waited for the reactor: buffered or written now
        return attempt

    def _attempted(self, connected: bool, cycle: Cycle) -> bool:
        """On the cycle's reactor: the first attempt's outcome moves a connecting session."""
        with self._lock:
            if cycle is not self.cycle or self.state is not CONNECTING:
                return connected  # disconnect() or a new connect() came first
            if connected:
                self._fire(SessionEvent.CONNECTED)
            elif cycle.factory is not None and cycle.factory.retrying:
                self._fire(SessionEvent.RETRYING)
            else:
                self._give_up(cycle)
                return connected
        self._follow(cycle)
        return connected

    def _follow(self, cycle: Cycle) -> None:
        """On the cycle's reactor: learn of the factory's next outcome, to close a serving cycle it gives up."""
        factory = cycle.factory
        assert factory is not None  # made by _begin(), before any outcome
        factory.next_attempt().addCallback(self._outcome, cycle)

    def _outcome(self, connected: bool, cycle: Cycle) -> None:
        """On the cycle's reactor: a connection, a failed retry, a loss: still serving, unless none is coming."""
        factory = cycle.factory
        assert factory is not None  # made by _begin(), before any outcome
        with self._lock:
            if cycle is not self.cycle or self.state is not SERVING:
                return  # disconnect() or a new connect() moved on
            if connected or factory.connected or factory.retrying:
                self._follow(cycle)
                return
            if self.disconnected is not None:  # what run_forever() waits for: nothing will come
                self.runtime.complete(self.disconnected)
            self._give_up(cycle)

    def _give_up(self, cycle: Cycle) -> None:
        """No connection is coming for ``cycle`` (under the lock): close it at once."""
        self._fire(SessionEvent.GAVE_UP)
        cycle.deadline = time.monotonic()
        cycle.closed = self.runtime.bridge(cycle.reactor, self._stop(cycle, 0.0))

    def disconnect(self, timeout: float) -> tuple[FutureT, Cycle | None]:
        """Begin closing (or join the close under way); the face's future of the close, and the cycle closed.

        The cycle is the one this call closes, read under the lock: a
        connect() from another thread right after cannot swap it.
        """
        with self._lock:
            self._check_world()
            if self.disconnected is not None:
                self.runtime.complete(self.disconnected)
            cycle, state = self.cycle, self.state
            self._fire(SessionEvent.DISCONNECT)
            if state in (CONNECTING, SERVING):
                assert cycle is not None  # a cycle is connecting or serving
                self._close(cycle, timeout)
            if cycle is None or cycle.closed is None or state in (IDLE, CLOSED):
                return self.runtime.done(None), cycle
            closed: FutureT = cycle.closed
            return closed, cycle

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
                self._fire(SessionEvent.CLOSED)
