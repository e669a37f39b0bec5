"""A deterministic driver for the core: a Clock, an endpoint whose attempts the test resolves, memory transports.

    driver = Driver()                       # a Recorder backend and a BrokerClientFactory on a Clock
    driver.factory.connect(driver.endpoint)
    driver.succeed()                        # the pending attempt connects, over a MemoryTransport
    driver.feed(transcript_frame)           # the broker says something
    driver.sent()                           # the frames the backend wrote since the last look
    driver.lose()                           # the broker goes away; driver.fail() fails an attempt
    driver.clock.advance(1.0)               # time passes: retries, idle checks, timeouts

Nothing here sleeps or touches a socket: what it tests is logic.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from pystrands import Backend
from pystrands.protocol import BrokerClientFactory, BrokerProtocol
from tests.support import transcript

__all__ = ["Attempt", "Driver", "FakeEndpoint", "MemoryTransport", "Recorder", "frame_from_transcript", "outcome"]


class MemoryTransport(StringTransport):
    """A StringTransport whose close reaches the protocol as TCP's does: on the reactor's next turn."""

    def __init__(self, clock: Clock, protocol: IProtocol) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 8081))
        self.clock = clock
        self.protocol = protocol
        self.closed = False

    def loseConnection(self) -> None:
        self._close(Failure(ConnectionDone("closed cleanly")))

    def abortConnection(self) -> None:
        self._close(Failure(ConnectionLost("aborted")))

    def _close(self, reason: Failure) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.clock.callLater(0, self.drop, reason)

    def drop(self, reason: Failure | None = None) -> None:
        """The connection ends now (the peer closed it, or our close completed)."""
        if not self.closed:
            self.closed = True
            self.connected = False
            self.protocol.connectionLost(reason or Failure(ConnectionLost("the broker went away")))


@dataclass
class Attempt:
    """One ``endpoint.connect()`` call, waiting for the test to decide its outcome."""

    factory: IProtocolFactory
    deferred: Deferred[IProtocol]
    cancelled: bool = False


@implementer(IStreamClientEndpoint)
@dataclass
class FakeEndpoint:
    """Records connection attempts; the test makes each one succeed or fail."""

    clock: Clock
    host: str = "broker.test"
    port: int = 8081
    attempts: list[Attempt] = field(default_factory=list)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt: Attempt

        def cancel(_: Deferred[IProtocol]) -> None:
            attempt.cancelled = True

        attempt = Attempt(factory, Deferred(cancel))
        self.attempts.append(attempt)
        return attempt.deferred

    @property
    def pending(self) -> Attempt:
        """The attempt under way (AssertionError when there is none)."""
        waiting = [attempt for attempt in self.attempts if not attempt.deferred.called]
        assert len(waiting) == 1, f"{len(waiting)} attempts under way"
        return waiting[0]

    def succeed(self, transport: Any = None) -> tuple[BrokerProtocol, Any]:
        """The attempt under way connects, over ``transport`` (a new MemoryTransport if None)."""
        attempt = self.pending
        protocol = attempt.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        assert protocol is not None
        if transport is None:
            transport = MemoryTransport(self.clock, protocol)
        protocol.makeConnection(transport)
        attempt.deferred.callback(protocol)
        assert isinstance(protocol, BrokerProtocol)
        return protocol, transport

    def fail(self, reason: Exception | None = None) -> None:
        """The attempt under way fails (connection refused unless told otherwise)."""
        self.pending.deferred.errback(reason or ConnectionRefusedError("Connection refused"))


class Recorder(Backend):
    """Records every callback as (name, args)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.answer: Any = True

    def on_connection_request(self, request: Any) -> Any:
        self.events.append(("on_connection_request", (request,)))
        return self.answer

    def on_new_connection(self, context: Any) -> None:
        self.events.append(("on_new_connection", (context,)))

    def on_message(self, message: str, context: Any) -> Any:
        self.events.append(("on_message", (message, context)))

    def on_disconnect(self, context: Any) -> None:
        self.events.append(("on_disconnect", (context,)))

    def on_error(self, error: str, context: Any) -> None:
        self.events.append(("on_error", (error, context)))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def outcome(deferred: Deferred[Any]) -> Any:
    """What ``deferred`` fired with (a Failure for an error); AssertionError while it has not fired.

    ``Deferred.called`` is no answer: a Deferred chained to an unfired one is "called" yet waits.
    """
    results: list[Any] = []
    deferred.addBoth(lambda result: results.append(result))
    assert results, "the Deferred has not fired"
    return results[0]


def frame_from_transcript(action: str, **params: Any) -> dict[str, Any]:
    """The reference broker's first recorded frame of ``action``, with ``params`` replaced."""
    frame = copy.deepcopy(transcript.frames("broker", action)[0])
    frame["params"].update(params)
    return frame


class Driver:
    """A backend, a factory on a Clock and a FakeEndpoint; see the module docstring."""

    def __init__(self, backend: Backend | None = None, **settings: Any) -> None:
        self.clock = Clock()
        self.backend: Any = backend if backend is not None else Recorder()
        self.factory = BrokerClientFactory(self.backend, self.clock, **settings)
        self.endpoint = FakeEndpoint(self.clock)
        self.protocol: BrokerProtocol | None = None
        self.transport: Any = None

    def connect(self) -> Driver:
        self.factory.connect(self.endpoint)
        return self

    def succeed(self, transport: Any = None) -> Driver:
        self.protocol, self.transport = self.endpoint.succeed(transport)
        return self

    def fail(self, reason: Exception | None = None) -> Driver:
        self.endpoint.fail(reason)
        return self

    def lose(self) -> Driver:
        """The broker closes the open connection."""
        assert self.transport is not None
        self.transport.drop()
        return self

    def feed(self, *frames: dict[str, Any] | bytes) -> None:
        """The broker sends ``frames`` (dicts are encoded, bytes go as they are), in one read."""
        assert self.protocol is not None
        data = b"".join(f if isinstance(f, bytes) else json.dumps(f).encode() + b"\n" for f in frames)
        self.protocol.dataReceived(data)

    def sent(self) -> list[dict[str, Any]]:
        """The frames written since the last call."""
        assert self.transport is not None
        frames = [json.loads(line) for line in self.transport.value().splitlines()]
        self.transport.clear()
        return frames
